"""lora.py and formats/adapters.py: LoRA invariants, the multi-expert layer, and adapter files that PEFT
reads and writes the same way we do. Tiny models only (2 layers, 64 wide)."""
import copy
import json
import os
import shutil
import warnings

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from formats import adapters
from formats.files import UserError
import lora
from model import PhiConfig, PhiForCausalLM, load

TARGETS = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
IDX = torch.tensor([[5, 17, 42, 3, 99, 7], [1, 2, 3, 4, 5, 6]])


def randomise_lora(model, seed=1, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def ours(path):
    return load(path, verbose=False)[0]


@pytest.fixture(scope="module")
def our_adapter(tiny_ckpt, tmp_path_factory):
    """(adapter dir, our model with that adapter attached), r=4, alpha=8, non-zero B."""
    path, _ = tiny_ckpt
    model = ours(path)
    lora.add_lora(model, r=4, alpha=8, targets=TARGETS)
    randomise_lora(model)
    out = str(tmp_path_factory.mktemp("adapter"))
    adapters.save_adapter(model, out, base_model_name_or_path=path)
    return out, model


# ---------------------------------------------------------------------------
# LoRALinear
# ---------------------------------------------------------------------------


def test_merge_equals_w_plus_sBA_and_unmerge_restores():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    W0 = base.weight.detach().clone()
    m = lora.LoRALinear(base, r=3, alpha=6)
    nn.init.normal_(m.lora_B.weight)
    x = torch.randn(2, 5, 12)
    y_unmerged = m(x)
    m.merge()
    m.merge()                                                  # a second merge is a no-op
    assert torch.allclose(m.weight, W0 + 2.0 * m.lora_B.weight @ m.lora_A.weight, atol=1e-6)
    assert torch.allclose(m(x), y_unmerged, atol=1e-5)
    m.unmerge()
    assert torch.equal(m.weight, W0)                           # restored bit for bit
    assert base.weight is m.weight                             # the same Parameter, never copied


def test_a_merge_that_overflows_is_refused_and_w_restored():
    """An adapter whose s*B@A is out of range of W's dtype would leave inf in W (NaN logits)."""
    model = nn.Sequential(nn.Linear(4, 4)).half()
    W0 = model[0].weight.detach().clone()
    lora.add_lora(model, r=2, alpha=4, targets=["0"])
    with torch.no_grad():
        model[0].lora_A.weight.fill_(1e3)
        model[0].lora_B.weight.fill_(1e3)                      # s*B@A = 4e6 > fp16's 65504
    with pytest.raises(ValueError, match="overflows the base weights' torch.float16"):
        lora.merge_lora(model)
    assert not model[0].merged and torch.equal(model[0].weight, W0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_eight_experts_merged_and_removed_in_half_precision_restore_the_base(tiny_ckpt, dtype):
    """study.py heldout and task-hard routing merge one expert after another into the
    same base. In half precision W + sBA - sBA is not W, so the original weights
    are kept and put back: after 8 experts the base is bit-identical."""
    model = load(tiny_ckpt[0], dtype=dtype, verbose=False)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for e in range(8):
        lora.add_lora(model, r=4, alpha=8, targets=TARGETS)
        randomise_lora(model, seed=e)
        lora.merge_lora(model)
        assert not torch.equal(model.model.layers[0].mlp.fc1.weight, before["model.layers.0.mlp.fc1.weight"])
        lora.remove_lora(model, merge=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lora_on_a_bf16_base_is_fp32_and_matches_the_fp32_model(tiny_ckpt):
    """LoRA weights stay fp32 on a bf16 base (what train.py --dtype bfloat16
    trains), with or without autocast, and the output is the fp32 one up to bf16
    rounding."""
    ref, half = ours(tiny_ckpt[0]), load(tiny_ckpt[0], dtype="bfloat16", verbose=False)[0]
    for m in (ref, half):
        lora.add_lora(m, r=4, alpha=8, targets=TARGETS)
        randomise_lora(m)
    assert {p.dtype for n, p in half.named_parameters() if "lora_" in n} == {torch.float32}
    with torch.no_grad():
        want = ref(IDX)
        plain = half(IDX).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = half(IDX).float()
    for got in (plain, auto):
        assert (got - want).abs().max() < 0.1 and (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8


def test_fresh_lora_changes_nothing(tiny_ckpt):
    model = ours(tiny_ckpt[0])
    with torch.no_grad():
        before = model(IDX)
        names = lora.add_lora(model)
        after = model(IDX)
    assert len(names) == 2 * 6
    assert torch.equal(before, after)                          # B = 0 at init


def test_only_lora_trainable_and_remove_restores_keys(tiny_ckpt):
    model = ours(tiny_ckpt[0])
    keys = set(model.state_dict())
    lora.add_lora(model, r=2, targets=("q_proj", "fc1"))
    n = lora.mark_only_lora_trainable(model)
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in k or ".lora_B." in k for k in trainable)
    assert n == 2 * (2 * (64 + 64) + 2 * (64 + 256))          # 2 layers x (q_proj + fc1)
    assert set(model.state_dict()) - keys == {k for k in lora.lora_state_dict(model)}
    lora.remove_lora(model)
    assert set(model.state_dict()) == keys
    assert not lora.lora_modules(model)


def test_remove_lora_merge_keeps_the_adapter(tiny_ckpt):
    model = ours(tiny_ckpt[0])
    with torch.no_grad():
        base_out = model(IDX)
        lora.add_lora(model, r=2, alpha=4)
        randomise_lora(model)
        lora_out = model(IDX)
        lora.merge_lora(model)
        assert torch.allclose(model(IDX), lora_out, atol=1e-4)
        with pytest.raises(ValueError, match="adapters are merged into W; unmerge_lora"):
            adapters.save_adapter(model, "/nonexistent")                   # refused before any write
        lora.unmerge_lora(model)
        assert torch.equal(model(IDX), lora_out)                    # W restored bit for bit
        lora.merge_lora(model)
        lora.remove_lora(model, merge=True)
        assert type(model.model.layers[0].mlp.fc1) is nn.Linear
        assert torch.allclose(model(IDX), lora_out, atol=1e-4)
        assert (lora_out - base_out).abs().max() > 1e-3        # the adapter does something


# ---------------------------------------------------------------------------
# MultiLoRALinear
# ---------------------------------------------------------------------------


def make_experts(E=3, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(8, 6)
    experts = [lora.LoRALinear(base, r=2 + e % 2, alpha=4.0 + e) for e in range(E)]   # ranks 2, 3, 2
    for m in experts:
        nn.init.normal_(m.lora_B.weight)
    return base, experts


def test_multi_one_expert_equals_its_lora():
    _, experts = make_experts(E=1)
    multi = lora.MultiLoRALinear.from_loras(experts)
    x = torch.randn(2, 4, 8)
    lora.set_expert_weights(multi, torch.ones(2, 4, 1))
    assert torch.allclose(multi(x), experts[0](x), atol=1e-6)
    lora.set_expert_weights(multi, torch.ones(2, 1))
    assert torch.allclose(multi(x), experts[0](x), atol=1e-6)


def test_multi_per_token_weights_equal_python_loop():
    base, experts = make_experts(E=3)
    multi = lora.MultiLoRALinear.from_loras(experts)
    x = torch.randn(2, 4, 8)
    w = torch.rand(2, 4, 3).softmax(-1)                        # (B, T, E)
    ref = base(x) + sum(w[..., e:e + 1] * (m(x) - base(x)) for e, m in enumerate(experts))
    assert torch.allclose(multi(x, w), ref, atol=1e-5)         # weights as an input
    multi.weights = w                                          # the router's way in: forward(x) reads them
    assert torch.equal(multi(x), multi(x, w))
    w_seq = torch.rand(2, 3)                                   # (B, E): one mix per sequence
    lora.set_expert_weights(multi, w_seq[:, None, :].expand(2, 4, 3))
    ref_seq = multi(x)
    lora.set_expert_weights(multi, w_seq)
    assert torch.allclose(multi(x), ref_seq, atol=1e-6)
    multi.weights = torch.tensor([0.2, 0.5, 0.3])              # (E,): a fixed mix can be merged
    y = multi(x)
    multi.merge()
    assert torch.allclose(multi(x), y, atol=1e-5)
    multi.unmerge()
    assert multi.merged is None and torch.allclose(multi(x), y, atol=1e-6)


def test_multi_inference_cache_follows_in_place_changes():
    """Under no_grad the stacked B is cached; an in-place change to lora_B (an
    optimizer step, set_expert, load_state_dict) must be seen at once, and so must
    new data put in its place (module.to(), .half(), `.data =`: _version unchanged)."""
    base, experts = make_experts(E=2)
    multi = lora.MultiLoRALinear.from_loras(experts)
    x = torch.randn(2, 4, 8)
    lora.set_expert_weights(multi, torch.tensor([0.0, 1.0]))
    with torch.no_grad():
        before = multi(x)
        multi.set_expert(1, experts[0].lora_A.weight, experts[0].lora_B.weight, experts[0].scaling)
        torch.testing.assert_close(multi(x), experts[0](x))
        expert0_B = multi.lora_B.clone()
        multi.lora_B.mul_(0)
        torch.testing.assert_close(multi(x), base(x))
        version = multi.lora_B._version
        multi.lora_B.data = expert0_B                           # new data, not an in-place write
        assert multi.lora_B._version == version
        torch.testing.assert_close(multi(x), experts[0](x))
        multi.lora_B.mul_(0)
    assert not torch.allclose(before, base(x))
    y = multi(x)                                                # with autograd: built each call
    assert y.requires_grad and torch.allclose(y, base(x))


def test_load_experts_one_hot_equals_single_adapter(tiny_ckpt, our_adapter, tmp_path):
    adapter_dir, with_adapter = our_adapter
    other = ours(tiny_ckpt[0])                                 # a second expert: rank 2, fc1 only
    lora.add_lora(other, r=2, alpha=2, targets=("fc1",))
    randomise_lora(other, seed=7)
    adapters.save_adapter(other, str(tmp_path))
    model = ours(tiny_ckpt[0])
    names = adapters.load_experts(model, [adapter_dir, str(tmp_path)])
    assert len(names) == 12
    with torch.no_grad():
        lora.set_expert_weights(model, torch.tensor([1.0, 0.0]))
        assert torch.allclose(model(IDX), with_adapter(IDX), atol=1e-5)
        lora.set_expert_weights(model, torch.tensor([0.0, 1.0]))
        assert torch.allclose(model(IDX), other(IDX), atol=1e-5)


# ---------------------------------------------------------------------------
# PEFT interoperability
# ---------------------------------------------------------------------------


def test_our_adapter_loads_in_peft(tiny_ckpt, our_adapter):
    from peft import PeftModel
    path, hf = tiny_ckpt
    adapter_dir, model = our_adapter
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(copy.deepcopy(hf), adapter_dir).eval()
    assert not [w for w in caught if "nexpected" in str(w.message)]
    with torch.no_grad():
        theirs, mine, base = peft_model(IDX).logits, model(IDX), hf(IDX).logits
    assert (theirs - mine).abs().max() <= 1e-4
    assert (theirs - base).abs().max() > 1e-2                  # PEFT really applied our weights


def test_peft_adapter_loads_in_ours(tiny_ckpt, tmp_path):
    from peft import LoraConfig, get_peft_model
    path, hf = tiny_ckpt
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(copy.deepcopy(hf), cfg).eval()
    randomise_lora(peft_model, seed=3)
    peft_model.save_pretrained(str(tmp_path))
    model = ours(path)
    names = adapters.load_adapter(model, str(tmp_path))
    assert len(names) == 12
    with torch.no_grad():
        theirs, mine, base = peft_model(IDX).logits, model(IDX), hf(IDX).logits
    assert (theirs - mine).abs().max() <= 1e-4
    assert (theirs - base).abs().max() > 1e-2                  # the adapter is not a no-op


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def copy_adapter(src, dst, **config_changes):
    shutil.copytree(src, dst)
    cfg_path = os.path.join(dst, adapters.CONFIG_NAME)
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update(config_changes)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return str(dst)


def test_missing_file(tiny_ckpt, our_adapter, tmp_path):
    d = copy_adapter(our_adapter[0], tmp_path / "a")
    os.remove(os.path.join(d, adapters.WEIGHTS_NAME))
    with pytest.raises(UserError, match="adapter_model.safetensors"):
        adapters.load_adapter(ours(tiny_ckpt[0]), d)


def test_wrong_rank_names_the_tensor(tiny_ckpt, our_adapter, tmp_path):
    d = copy_adapter(our_adapter[0], tmp_path / "a", r=8)
    with pytest.raises(ValueError, match=r"tensor base_model\.model\.model\.layers\.0\..*lora_A\.weight "
                                         r"has shape \(4, 64\), expected \(8, 64\)"):
        adapters.load_adapter(ours(tiny_ckpt[0]), d)


def test_non_lora_peft_type(tiny_ckpt, our_adapter, tmp_path):
    d = copy_adapter(our_adapter[0], tmp_path / "a", peft_type="IA3")
    with pytest.raises(ValueError, match="peft_type is 'IA3', expected 'LORA'"):
        adapters.load_adapter(ours(tiny_ckpt[0]), d)


def test_unsupported_setting(tiny_ckpt, our_adapter, tmp_path):
    d = copy_adapter(our_adapter[0], tmp_path / "a", use_dora=True)
    with pytest.raises(ValueError, match="use_dora"):
        adapters.load_adapter(ours(tiny_ckpt[0]), d)


def test_adapter_for_another_base(our_adapter):
    small = dict(vocab_size=320, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=64, partial_rotary_factor=0.5)
    torch.manual_seed(0)
    wider = PhiForCausalLM(PhiConfig(hidden_size=128, **small))
    with pytest.raises(ValueError, match="another base model: hidden_size 64 \\(this model: 128\\)"):
        adapters.load_adapter(wider, our_adapter[0])
    same_shape = PhiForCausalLM(PhiConfig(hidden_size=64, **small))   # same shapes, other weights
    with pytest.raises(ValueError, match="another base model.*model.embed_tokens.weight differs"):
        adapters.load_adapter(same_shape, our_adapter[0])
    names = adapters.load_adapter(same_shape, our_adapter[0], check_base=False)    # the check skipped: loads
    saved = load_file(os.path.join(our_adapter[0], adapters.WEIGHTS_NAME))
    mine = lora.lora_state_dict(same_shape)
    assert len(names) == 12 and {adapters.PEFT_PREFIX + k for k in mine} == set(saved)
    assert all(torch.equal(v, saved[adapters.PEFT_PREFIX + k]) for k, v in mine.items())
