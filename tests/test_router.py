"""router.py: the grouped gate's algebra, the single-expert reduction, and
train.py --router / eval.py --moe end to end on a tiny base."""
import glob
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from formats import adapters
import lora
from formats import routers
import model as M
import router as R
import train
from conftest import ROOT
from test_experts import base_dir, expert_argv  # noqa: F401  (fixture)
from test_train_eval import FIXTURE, tokenizer_path  # noqa: F401  (fixture)


def test_centroid_prior_by_hand():
    """Two centroids on a line; questions at distance 1 and 3 from them: squared
    distances (1, 9) and (9, 1), so the scale s (median squared distance to the
    nearest centroid) is 1 and the prior is softmax(-d^2 / tau)."""
    task = R.TaskRouter(np.array([[0.0, 0.0], [4.0, 0.0]], np.float32), "centroid", tau=2.0)
    X = np.array([[1.0, 0.0], [3.0, 0.0]], np.float32)
    task.fit(X, np.array([0, 1]))
    assert task.scale.item() == 1.0
    p = 1 / (1 + math.exp(-(9 - 1) / 2.0))
    assert task.prior(X).flatten().tolist() == pytest.approx([p, 1 - p, 1 - p, p])


def test_learned_prior_folds_the_standardisation():
    """The classifier trains on standardised embeddings and folds mu and sd into
    its weights, so fitting on X, or on X with each dimension shifted and scaled,
    gives the same prior for the same (shifted and scaled) questions; it also
    separates separable training questions."""
    g = np.random.default_rng(0)
    X = np.concatenate([g.normal(0, 1, (40, 6)), g.normal(0, 1, (40, 6)) + 3]).astype(np.float32)
    y = np.array([0] * 40 + [1] * 40)
    shift, scale = g.normal(0, 50, 6).astype(np.float32), np.exp(g.normal(0, 2, 6)).astype(np.float32)
    priors = []
    for data in (X, X * scale + shift):
        torch.manual_seed(0)
        task = R.TaskRouter(np.zeros((2, 6), np.float32), "learned")
        task.fit(data, y)
        priors.append(task.prior(data))
    assert (priors[0].argmax(-1).numpy() == y).all()
    assert torch.allclose(priors[0], priors[1], atol=1e-3)


def test_grouped_gate_is_the_product_form():
    torch.manual_seed(0)
    groups = [[0, 2], [1], [3, 4, 5]]
    gate = R.GroupedGate(8, R.membership(groups, 6), temperature=0.7)
    for lin in (gate.U, gate.V):
        torch.nn.init.normal_(lin.weight)
        torch.nn.init.normal_(lin.bias)
    h = torch.randn(2, 5, 8)
    w = gate(h)                                                    # (2, 5, 6)
    assert torch.allclose(w.sum(-1), torch.ones(2, 5), atol=1e-6)
    g = torch.softmax(gate.U(h) / 0.7, -1)                         # by hand, group by group
    v = gate.V(h) / 0.7
    for gi, members in enumerate(groups):
        inside = torch.softmax(v[..., members], -1)
        assert torch.allclose(w[..., members], g[..., gi:gi + 1] * inside, atol=1e-6)
        assert torch.allclose(w[..., members].sum(-1), g[..., gi], atol=1e-6)   # the group's share


def test_grouped_gate_is_stable_for_far_apart_groups():
    """A group whose scores are all far below another group's must not underflow to 0/0."""
    gate = R.GroupedGate(2, R.membership([[0, 1], [2, 3]], 4))
    with torch.no_grad():
        gate.V.bias.copy_(torch.tensor([0.0, 1.0, -200.0, -199.0]))
    w = gate(torch.zeros(3, 2))
    assert torch.isfinite(w).all()
    inside = torch.softmax(torch.tensor([0.0, 1.0]), -1) / 2        # U = 0: each group gets 1/2
    torch.testing.assert_close(w[0], torch.cat([inside, inside]))


def test_groups_must_partition_the_experts():
    with pytest.raises(ValueError, match="partition"):
        R.membership([[0, 1], [1, 2]], 3)


def cfg(E, groups, **kw):
    return R.RouterConfig(**{"experts": [f"e{i}" for i in range(E)], "groups": groups, "hidden_size": 64,
                             "n_layers": 2, **kw})


def test_top_k_renormalises():
    router = R.Router(cfg(4, [[0, 1, 2, 3]], top_k=2, prior="none"), torch.zeros(4, 64).numpy())
    torch.nn.init.normal_(router.gates[0].V.weight)
    w = router.weights(0, torch.randn(3, 7, 64))
    assert ((w > 0).sum(-1) == 2).all() and torch.allclose(w.sum(-1), torch.ones(3, 7))


def test_one_expert_one_group_equals_that_expert(tiny_ckpt, tmp_path):
    path = tiny_ckpt[0]
    single, _ = M.load(path)
    lora.add_lora(single, r=4, alpha=8)
    for m in lora.lora_modules(single).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    adapters.save_adapter(single, str(tmp_path / "e0"), path)
    routed, _ = M.load(path)
    adapters.load_experts(routed, [str(tmp_path / "e0")])
    router = R.Router(cfg(1, [[0]]), torch.zeros(1, 64).numpy()).attach(routed)
    torch.nn.init.normal_(router.gates[1].U.weight)                # any gate: one expert gets weight 1
    router.set_prior(torch.ones(3, 1))
    idx = torch.randint(1, 300, (3, 9))
    with torch.no_grad():
        assert (routed(idx) - single(idx)).abs().max() < 1e-5


def test_router_trains_resumes_and_evaluates(tmp_path, base_dir, monkeypatch):  # noqa: F811
    experts = tmp_path / "experts"
    for skill in ("algebra", "numbers"):
        argv = expert_argv(base_dir, experts / skill)
        argv[argv.index("algebra")] = skill
        train.train(train.config(argv + ["--steps", "2"]))
    argv = ["--router", "--experts", str(experts), "--model", base_dir, "--data", FIXTURE,
            "--steps", "4", "--batch-size", "4", "--seq-len", "64", "--warmup", "2", "--eval-every", "2",
            "--eval-batches", "1", "--eval-questions", "4", "--n-groups", "2", "--entropy-weight", "0.01",
            "--balance-weight", "0.01", "--seed", "0", "--device", "cpu"]
    runs, setup = [], train.setup          # each run's router, as trained to its last step
    monkeypatch.setattr(train, "setup", lambda cfg, state=None: runs.append(setup(cfg, state)) or runs[-1])
    dev_rows, handed, dev_loss, set_priors = [], [], train.dev_loss, R.TaskPriors.set
    def dev_loss_(run, fwd):               # the dev loss hands the router each dev batch's own priors
        dev_rows.append(run.dev_ex)
        try:
            return dev_loss(run, fwd)
        finally:
            dev_rows.pop()
    monkeypatch.setattr(train, "dev_loss", dev_loss_)
    monkeypatch.setattr(R.TaskPriors, "set", lambda self, ex: (dev_rows and handed.append(
        all(e in dev_rows[-1] for e in ex))) or set_priors(self, ex))
    train.train(train.config(argv + ["--out", str(tmp_path / "full")]))
    assert handed and all(handed)
    train.train(train.config(argv + ["--out", str(tmp_path / "cut"), "--stop-at", "2"]))
    train.train(train.config(argv + ["--out", str(tmp_path / "cut"), "--resume"]))
    a, b = runs[0].learner.state_dict(), runs[2].learner.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["gates.0.U.weight"].abs().sum() > 0          # the group gate learned (one expert per group)
    saved = routers.load_router(str(tmp_path / "full"))
    assert saved.cfg.experts == ["algebra", "numbers"]
    named = json.load(open(tmp_path / "full" / "router.json"))["expert_dirs"]      # from the router's folder
    assert named == {"algebra": "../experts/algebra", "numbers": "../experts/numbers"}
    os.makedirs(experts / "geometry")         # an expert still training beside them: not this router's
    out = tmp_path / "moe.json"
    cmd = [sys.executable, "eval.py", "--model", base_dir, "--data", FIXTURE, "--moe", str(tmp_path / "full"),
           "--shots", "2", "--limit", "2", "--json", str(out), "--out", str(tmp_path / "routing")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.load(open(out))
    rec = report["records"][0]["routing"]
    assert len(rec["experts"]) == 2 and abs(sum(rec["experts"][0]) - 1) < 1e-4   # (L, E), rows sum to 1
    assert set(report["routing"]["per_skill"]) == {"algebra", "numbers"}
    assert os.path.exists(tmp_path / "routing" / "routing.json")


def test_a_router_names_its_experts_and_moves_with_them(tmp_path):
    """A study folder moved whole keeps its router working (router.json names each
    expert's folder from the router's own), whatever else lies beside the experts;
    a router moved alone is refused naming its first expert, and finds them by
    name in the folder given (eval.py and explain.py's --experts DIR)."""
    moved = shutil.copytree(os.path.join(ROOT, "checkpoints", "phi-tiny-moe"), tmp_path / "moe")
    os.makedirs(moved / "experts" / "geometry")                     # e.g. an expert still training
    cfg = routers.read_config(str(moved / "router"))
    dirs = routers.router_experts(str(moved / "router"), cfg)
    assert dirs == {name: str(moved / "experts" / name) for name in cfg.experts} and len(dirs) == 8
    alone = shutil.move(str(moved / "router"), str(tmp_path / "router"))
    with pytest.raises(ValueError, match=f"{tmp_path}/experts/algebra/adapter_model.safetensors not found: "
                                         f"{alone} routes over the expert 'algebra' there; give the folder that "
                                         "holds its experts with --experts DIR"):
        routers.router_experts(alone, routers.read_config(alone))
    assert routers.router_experts(alone, routers.read_config(alone), str(moved / "experts")) == dirs


@pytest.mark.parametrize("router_dir", sorted(glob.glob(os.path.join(ROOT, "checkpoints", "*", "routers", "*")))
                         + [os.path.join(ROOT, "checkpoints", "phi-tiny-moe", "router"),
                            os.path.join(ROOT, "checkpoints", "phi-tiny-study", "add-skill", "router7")],
                         ids=lambda d: os.path.relpath(d, os.path.join(ROOT, "checkpoints")))
def test_every_kept_router_finds_its_experts(router_dir):
    """The routers kept in checkpoints/ load, and find the very adapters they were trained over."""
    cfg = routers.read_config(router_dir)
    base = M.load(os.path.join(ROOT, "checkpoints", "phi-tiny"), verbose=False)[0] if cfg.rank1 else None
    assert routers.load_router(router_dir, base).cfg == cfg
    assert list(routers.router_experts(router_dir, cfg)) == ([] if cfg.rank1 else cfg.experts)


def test_rank1_experts_train_with_the_router_and_reload(tmp_path, base_dir):  # noqa: F811
    argv = ["--router", "--rank1", "4", "--n-groups", "2", "--model", base_dir, "--data", FIXTURE,
            "--steps", "3", "--batch-size", "4", "--seq-len", "64", "--warmup", "1", "--eval-every", "3",
            "--eval-batches", "1", "--eval-questions", "4", "--seed", "0", "--device", "cpu",
            "--out", str(tmp_path / "r1")]
    trained = train.train(train.config(argv))
    saved = load_file(str(tmp_path / "r1" / "router.safetensors"))
    Bs = [v for k, v in saved.items() if k.startswith("rank1.") and v.shape[-1] == 1 and v.dim() == 3
          and v.shape[1] > 1]
    assert Bs and all(b.abs().sum() > 0 for b in Bs)          # B started at zero and learned
    assert not any(k.startswith("model.") for k in saved)     # no base weights in the router file
    base = M.load(base_dir)[0]
    assert all(torch.equal(p, q) for p, q in zip(base.state_dict().values(),
               {k: v for k, v in trained.state_dict().items() if ".lora_" not in k}.values()))
    fresh = M.load(base_dir)[0]
    router = routers.load_router(str(tmp_path / "r1"), fresh).attach(fresh).eval()
    assert router.cfg.groups == [[0, 1], [2, 3]] and router.cfg.prior == "none"
    trained.eval()
    idx = torch.randint(0, trained.config.vocab_size, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx), trained(idx))
    with pytest.raises(ValueError, match="needs the model"):
        routers.load_router(str(tmp_path / "r1"))
    cmd = [sys.executable, "eval.py", "--model", base_dir, "--data", FIXTURE, "--moe", str(tmp_path / "r1"),
           "--shots", "2", "--limit", "2", "--out", str(tmp_path / "routing")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "r1 (full)" in run.stdout
    config = tmp_path / "r1" / "router.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), targets=["foo"])))
    with pytest.raises(ValueError, match=r"router.json: field 'targets': targets \['foo'\] match no nn.Linear"):
        routers.load_router(str(tmp_path / "r1"), M.load(base_dir)[0])


def test_regularisers_on_hand_made_distributions():
    router = R.Router(cfg(4, [[0, 1], [2, 3]], entropy_weight=0.5, balance_weight=2.0),
                      torch.zeros(4, 64).numpy())
    uniform = torch.full((3, 4), 0.25)
    entropy, balance = router.regularisers(uniform)
    assert entropy.item() == pytest.approx(0.5 * math.log(4))
    # every token's top-1 is expert 0 (ties go to the first): f = (1, 0, 0, 0), P = 1/4 each
    assert balance.item() == pytest.approx(2.0 * 4 * 0.25)
    one_hot = torch.eye(4)                                     # perfectly balanced, certain
    entropy, balance = router.regularisers(one_hot)
    assert entropy.item() == pytest.approx(0.0, abs=1e-6)
    assert balance.item() == pytest.approx(2.0 * 4 * (4 * 0.25 * 0.25))   # = 2.0, the minimum


def test_only_router_parameters_get_gradients(tiny_ckpt, tmp_path):
    path = tiny_ckpt[0]
    model, _ = M.load(path)
    for e in range(2):
        lora.add_lora(model, r=2, alpha=4)
        adapters.save_adapter(model, str(tmp_path / f"e{e}"), path)
        lora.remove_lora(model)
    adapters.load_experts(model, [str(tmp_path / "e0"), str(tmp_path / "e1")])
    for p in model.parameters():
        p.requires_grad_(False)
    router = R.Router(cfg(2, [[0], [1]], entropy_weight=0.1), torch.zeros(2, 64).numpy()).attach(model)
    router.set_prior(torch.tensor([[0.3, 0.7]]))
    router.train()
    idx = torch.randint(1, 300, (1, 6))
    (model(idx).logsumexp(-1).mean() + router.aux_loss()).backward()
    assert all(p.grad is None for p in model.parameters())
    got = {n for n, p in router.named_parameters() if p.grad is not None}
    assert got and all(n.startswith(("gates.", "mix")) for n in got)


def with_random_experts(path, tmp_path, n, std):
    """The base at path with n random rank-2 experts (B ~ N(0, std)) stacked in."""
    model, _ = M.load(path, verbose=False)
    dirs = []
    for e in range(n):
        torch.manual_seed(e)
        lora.add_lora(model, r=2, alpha=4)
        for m in lora.lora_modules(model).values():
            torch.nn.init.normal_(m.lora_B.weight, std=std)
        dirs.append(str(tmp_path / f"e{e}"))
        adapters.save_adapter(model, dirs[-1], path)
        lora.remove_lora(model)
    adapters.load_experts(model, dirs)
    return model


def test_hard_merged_route_equals_soft_one_hot(tiny_ckpt, tmp_path):
    model = with_random_experts(tiny_ckpt[0], tmp_path, 3, std=0.1)
    idx = torch.randint(1, 300, (2, 5))
    with torch.no_grad():
        lora.set_expert_weights(model, torch.tensor([[0.0, 1.0, 0.0]] * 2))    # soft, per sequence
        soft = model(idx)
        lora.set_expert_weights(model, torch.tensor([0.0, 1.0, 0.0]))          # hard: merged into W
        lora.merge_lora(model)
        torch.testing.assert_close(model(idx), soft, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("level, top_k", [("token", 0), ("token", 2), ("sequence", 0)])
def test_hooks_equal_the_written_out_routing(tiny_ckpt, tmp_path, level, top_k):
    """Router.attach's hooks and MultiLoRALinear's stacked matmuls, inside a model
    forward, give one layer's fc1 the output that routed_linear() computes by hand
    (gate, lambda-mix with the prior, top-k, experts). The test has teeth: with
    lambda applied the other way round (sigmoid(-mix) = 1 - lambda) the output differs."""
    model = with_random_experts(tiny_ckpt[0], tmp_path, 3, std=0.2)
    router = R.Router(cfg(3, [[0, 2], [1]], level=level, top_k=top_k, hidden_size=model.config.hidden_size,
                          n_layers=model.config.num_hidden_layers), torch.zeros(3, 320).numpy())
    router.attach(model).eval()
    torch.manual_seed(5)
    for gate in router.gates:
        for lin in (gate.U, gate.V):
            torch.nn.init.normal_(lin.weight, std=0.5)
            torch.nn.init.normal_(lin.bias, std=0.5)
    with torch.no_grad():
        router.mix.copy_(torch.tensor([0.8, -1.3]))                # lambda = 0.69, 0.21
    prior = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    router.set_prior(prior)
    layer, seen = 1, {}
    model.model.layers[layer].register_forward_pre_hook(lambda m, args: seen.update(h=args[0]))
    fc1 = model.model.layers[layer].mlp.fc1
    fc1.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    with torch.no_grad():
        model(torch.randint(1, 300, (2, 7), generator=torch.Generator().manual_seed(1)))
        ref = R.routed_linear(router, layer, seen["h"], seen["x"], fc1, prior)
        torch.testing.assert_close(seen["y"].double(), ref, atol=1e-5, rtol=1e-5)
        router.mix.neg_()                                          # lambda the other way round
        flipped = R.routed_linear(router, layer, seen["h"], seen["x"], fc1, prior)
    assert (flipped - ref).abs().max() > 1e-3


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_routed_answers_do_not_depend_on_the_batch(tiny_ckpt, tmp_path, level):
    """A routed question gets the same answer and routing alone as in a left-padded
    batch, at token and at sequence level: padding never reaches the gate."""
    model = with_random_experts(tiny_ckpt[0], tmp_path, 2, std=0.2)
    router = R.Router(cfg(2, [[0], [1]], level=level, hidden_size=model.config.hidden_size,
                          n_layers=model.config.num_hidden_layers), torch.zeros(2, 320).numpy())
    router.attach(model).eval()
    torch.manual_seed(3)
    for gate in router.gates:
        torch.nn.init.normal_(gate.U.weight, std=0.5)
        torch.nn.init.normal_(gate.V.weight, std=0.5)
    prompts = [[5, 9, 30, 41, 7, 12, 60], [8, 3], [100, 101, 102, 103]]
    prior = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    for i, p in enumerate(prompts):
        router.set_prior(prior[i:i + 1])
        with router.record() as alone:
            one = M.generate(model, [p], 6)[0]
        router.set_prior(prior)
        with router.record() as batched:
            batch = M.generate(model, prompts, 6)
        assert batch[i] == one
        torch.testing.assert_close(batched.weights()[i], alone.weights()[0], atol=1e-5, rtol=1e-5)


def test_from_experts_worked_example():
    """Centroids are the mean embedding of each expert's labelled questions; the
    groups are a k-means of the centroids (two far-apart pairs make two groups);
    unlabelled questions (-1) count for no expert; an expert without questions is refused."""
    X = np.array([[0, 0], [0, 2], [1, 0], [9, 9], [9, 11], [10, 9], [5, 5]], np.float32)
    labels = np.array([0, 0, 1, 2, 2, 3, -1])
    cfg = R.RouterConfig(experts=["a", "b", "c", "d"], groups=[], hidden_size=2, n_layers=1)
    router, loss = R.from_experts(cfg, X, labels, n_groups=2)
    assert router.task.centroids.tolist() == [[0, 1], [1, 0], [9, 10], [10, 9]]
    assert sorted(sorted(g) for g in router.cfg.groups) == [[0, 1], [2, 3]] and loss < 0.5   # 4 classes start at ln 4 = 1.39
    with pytest.raises(ValueError, match=r"no training questions for the experts \['d'\]"):
        R.from_experts(cfg, X, np.array([0, 0, 1, 2, 2, 2, -1]), n_groups=2)


def test_router_fields_worked_example():
    """formats/router_fields.py's opening example, as written there."""
    from dataclasses import fields
    from formats.files import UserError
    from formats.router_fields import check_config
    values = {"experts": ["algebra"], "groups": [[0]], "hidden_size": 8, "n_layers": 2, "top_k": 3}
    with pytest.raises(UserError, match=r"^router.json: field 'top_k' is 3, expected 0..1 \(the number of experts\)$"):
        check_config(values, fields(R.RouterConfig), "router.json")
