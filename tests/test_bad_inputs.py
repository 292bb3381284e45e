"""Bad input on the command line and in the files a user points the CLIs at:
every case is refused with exit status 2 and one line on stderr that names the
flag, file or field, never a traceback and never a silent wrong result.
The adapter and router files have their own table in test_bad_files.py."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from formats import adapters
import cluster
import eval as E
import explain
import model as M
import study.cli
import study.heldout
import train
from conftest import ROOT
from cli import run
from formats.clusters import read_centroids

PHI_TINY = os.path.join(ROOT, "checkpoints", "phi-tiny")
ROUTER = os.path.join(ROOT, "checkpoints", "phi-tiny-moe", "router")
EXPERTS = os.path.join(ROOT, "checkpoints", "phi-tiny-moe", "experts")
DATA = os.path.join(ROOT, "tests", "fixtures", "ours")


def cli(main, argv, capsys, monkeypatch):
    """Run a CLI's main() as `python script.py argv` would: (exit status, stderr from
    its first "script.py: error" on). The status lines and progress bars before it
    (what was loaded, read from a cache) are left out; whatever follows it is kept."""
    monkeypatch.setattr(sys, "argv", ["script.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        run(main)
    err = capsys.readouterr().err
    return exit_.value.code, err[max(err.find("script.py: error"), 0):]


EVAL = [   # (arguments, what the one-line message must say)
    (["--limit", "-1"], "--limit: expected an integer >= 1, got '-1'"),
    (["--limit", "0"], "--limit: expected an integer >= 1"),
    (["--limit", "2.5"], "--limit: expected an integer >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens: expected an integer >= 1"),
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["--shots", "-1"], "--shots: expected an integer >= 0"),
    (["--shots-from", "cluster"], "--shots-from: invalid choice: 'cluster'"),
    (["--shot-pool", "0"], "--shot-pool: expected an integer >= 1"),
    (["--shots-from", "skill", "--shot-pool", "500"], "--shot-pool needs --shots-from nearest"),
    (["--shots-from", "submodule", "--shot-text", "question"], "--shot-text needs --shots-from nearest"),
    (["--route", ""], "--route: expected a non-empty string"),
    (["--route", "algebra=1"], "--route needs --moe"),
    (["--variant", "task-hard"], "--variant needs --moe"),
    (["--experts", "x"], "--experts needs --moe"),
    (["--json", "/tmp"], "--json: expected a file name to write, got '/tmp' (a directory)"),
    (["--moe", ROUTER, "--route", "algebra=nan", "--data", DATA], "the weight of 'algebra' must be a finite number"),
    (["--moe", ROUTER, "--route", "algebra=inf", "--data", DATA], "the weight of 'algebra' must be a finite number"),
    (["--moe", ROUTER, "--route", "algebra=-1", "--data", DATA], "the weight of 'algebra' must be a finite number"),
    (["--moe", ROUTER, "--route", "algebra=0", "--data", DATA], "the weights sum to 0"),
    (["--moe", ROUTER, "--route", "geometry", "--data", DATA], "unknown name 'geometry'"),
    (["--model", "/nonexistent"], "/nonexistent: checkpoint directory not found"),
    (["--data", "/nonexistent", "--model", PHI_TINY], "/nonexistent"),
    (["--data", DATA, "--skills", "geometry"], "geometry"),
    (["--dtype", "fp8"], "--dtype: invalid choice: 'fp8'"),
    (["--split", "validation"], "--split: invalid choice"),
    (["--moe", ROUTER, "--adapter", ROUTER], "--adapter merges one expert; --moe brings its own"),
    (["--device", "cuda:x"], "--device: expected cpu, cuda or cuda:N"),
    (["--out", "somewhere"], "--out needs --moe"),
    (["--variant", "full"], "--variant needs --moe"),            # given, though it is the default
    (["--out", "out/routing"], "--out needs --moe"),
    (["--json", ""], "--json: expected a file name to write, got ''"),
    (["--model", ""], "--model: expected a non-empty string"),
    (["--moe", ROUTER, "--out", os.path.join(ROOT, "README.md")], "--out: expected a folder to write into"),
]


@pytest.mark.parametrize("argv, message", EVAL, ids=[" ".join(a)[:40] for a, _ in EVAL])
def test_eval_refuses(argv, message, capsys, monkeypatch):
    code, err = cli(E.main, argv, capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


MISSING = [   # a folder that holds no adapter or router: refused before the model loads
    (E.main, ["--adapter", "/nonexistent"], "/nonexistent: no such adapter folder (train.py --expert writes one"),
    (E.main, ["--adapter", EXPERTS], f"{EXPERTS}/adapter_config.json not found (an adapter directory holds"),
    (E.main, ["--moe", "/nonexistent"], "/nonexistent/router.json not found (train.py --router writes it)"),
    (explain.main, ["What is 2+2?", "--moe", "/nonexistent"], "/nonexistent/router.json not found"),
    (explain.main, ["What is 2+2?", "--adapter", "/nonexistent"], "/nonexistent: no such adapter folder"),
]


@pytest.mark.parametrize("main, argv, message", MISSING, ids=[" ".join(a)[-40:] for _, a, _ in MISSING])
def test_a_missing_folder_is_refused_before_the_model_loads(main, argv, message, capsys, monkeypatch):
    monkeypatch.setattr(M, "load", lambda *a, **k: pytest.fail("the model loaded before the folder was checked"))
    code, err = cli(main, argv, capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


EXPLAIN = [   # explain.py: one question, printed, so no question-set flags
    (["What is 2+2?", "--shots-from", "submodule"], "--shots-from submodule reads the question's label"),
    ([""], "question: expected a non-empty string"),
    (["   "], "question: expected a non-empty string"),
    (["What is 2+2?", "--clusters", ROOT], f"--clusters: {ROOT} holds no cluster.py output"),
    (["What is 2+2?", "--json", "x.json"], "unrecognized arguments: --json x.json"),
    (["What is 2+2?", "--limit", "3"], "unrecognized arguments: --limit 3"),
    (["What is 2+2?", "--shots-from", "skill", "--shot-pool", "9"], "--shot-pool needs --shots-from nearest"),
    (["What is 2+2?", "--adapter", EXPERTS, "--route", "algebra"], "--route goes with a router (--moe), not with --adapter"),
    (["What is 2+2?", "--no-router", "--experts", EXPERTS], "--experts goes with a router (--moe), not with --no-router"),
    (["What is 2+2?", "--moe", ROUTER, "--no-router"], "argument --no-router: not allowed with argument --moe"),
]


@pytest.mark.parametrize("argv, message", EXPLAIN, ids=[" ".join(a)[:40] for a, _ in EXPLAIN])
def test_explain_refuses(argv, message, capsys, monkeypatch):
    code, err = cli(explain.main, argv, capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


TRAIN = [
    (["--steps", "0"], "--steps: expected an integer >= 1"),
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["--lr", "nan"], "--lr: expected a finite number > 0, got 'nan'"),
    (["--lr", "0"], "--lr: expected a finite number > 0"),
    (["--alpha", "nan"], "--alpha: expected a finite number > 0"),
    (["--alpha", "inf"], "--alpha: expected a finite number > 0"),
    (["--dropout", "1"], "--dropout: expected a number in [0, 1)"),
    (["--dropout", "-0.1"], "--dropout: expected a number in [0, 1)"),
    (["--temperature", "0"], "--temperature: expected a finite number > 0"),
    (["--tau", "nan"], "--tau: expected a finite number > 0"),
    (["--rank", "0"], "--rank: expected an integer >= 1"),
    (["--warmup", "-1"], "--warmup: expected an integer >= 0"),
    (["--entropy-weight", "inf"], "--entropy-weight: expected a finite number"),
    (["--weight-decay", "nan"], "--weight-decay: expected a finite number >= 0"),
    (["--eval-every", "0"], "--eval-every: expected an integer >= 1"),
    (["--top-k", "-1"], "--top-k: expected an integer >= 0"),
    (["--seq-len", "100000", "--data", DATA], "--seq-len 100000 is longer than the model's context (1024 positions)"),
    (["--model", "/nonexistent"], "/nonexistent: checkpoint directory not found"),
    (["--data", DATA, "--expert", "geometry"], "geometry"),
    (["--expert", "cluster:x"], "--expert cluster:x: expected cluster:K with K a cluster number"),
    (["--device", "gpu"], "--device: expected cpu, cuda or cuda:N, got 'gpu'"),
    (["--out", os.path.join(ROOT, "README.md")], "--out: expected a folder to write into"),
    (["--full", "--rank", "4"], "--rank goes with a fresh LoRA"),
    (["--adapter", ROUTER, "--targets", "q_proj"], "--targets goes with a fresh LoRA or --router --rank1"),
    (["--n-layer", "2"], "--n-layer goes with --base"),
    (["--n-layer", "8"], "--n-layer goes with --base"),         # given, though it is the default
    (["--base", "--model", PHI_TINY], "--model goes with --expert, --mixed or --router"),
    (["--router", "--top-k", "99", "--experts", EXPERTS, "--data", DATA], "--top-k 99: more than the 8 experts"),
    (["--router", "--rank1", "2", "--top-k", "3", "--data", DATA], "--top-k 3: more than the 2 experts"),
    (["--tau", "2"], "--tau goes with --router"),
    (["--steps-per-skill", "3"], "--steps-per-skill goes with --mixed"),
    (["--clusters", "out/c"], "--clusters goes with --expert cluster:K or --router"),
    (["--steps", "5", "--stop-at", "6"], "--stop-at 6 is after the last step (--steps 5)"),
    (["--steps", "5", "--warmup", "6"], "--warmup 6 is longer than the run (--steps 5)"),
    (["--mixed", "--steps", "5", "--steps-per-skill", "2"], "--steps-per-skill goes with --mixed, without --steps"),
    (["--router", "--rank1", "2", "--prior", "learned"], "--prior goes with --router without --rank1"),
    (["--router", "--rank1", "2", "--n-groups", "3", "--data", DATA], "--n-groups 3: more groups than the 2 experts"),
    (["--seed", "1180591620717411303424"], "--seed: expected an integer in [0, 2**63)"),
    (["--out", ""], "--out: expected a folder to write into, got ''"),
    (["--data", ""], "--data: expected a non-empty string"),
    (["--targets", "q_proj,nosuchmod", "--data", DATA], "--targets: ['nosuchmod'] select no Linear of the model"),
    (["--base", "--rotary", "0.01"], "--rotary 0.01: 0 of the head's 80 dims"),
    (["--base", "--rotary", "1.5"], "--rotary: expected a number in (0, 1]"),
    (["--seq-len", "4", "--steps", "1", "--data", DATA], "no token of the batch carries the loss (--loss answer)"),
]


@pytest.mark.parametrize("argv, message", TRAIN, ids=[" ".join(a)[:40] for a, _ in TRAIN])
def test_train_refuses(argv, message, capsys, monkeypatch, tmp_path):
    argv = ["--expert", "algebra", "--out", str(tmp_path / "out"), *argv]
    if argv.count("--expert") == 2 or {"--mixed", "--router", "--base"} & set(argv):   # another mode
        del argv[:2]
    code, err = cli(train.main, argv, capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_train_expert_empty_name_is_refused(capsys, monkeypatch):
    code, err = cli(train.main, ["--expert", ""], capsys, monkeypatch)
    assert code == 2 and "--expert: expected a non-empty string" in err


CLUSTER = [
    (["--k", "0"], "--k: expected an integer >= 1"),
    (["--limit", "0"], "--limit: expected an integer >= 1"),
    (["--n-init", "0"], "--n-init: expected an integer >= 1"),
    (["--layer", "-1"], "--layer: expected an integer >= 0"),
    (["--layer", "99", "--data", DATA], "layer 99 out of range"),
    (["--seeded", "1000", "--data", DATA], "--seeded 1000: "),
    (["--groups", "50", "--k", "2", "--data", DATA], "--groups 50: more groups than the 2 clusters"),
    (["--k", "35", "--data", DATA], "--k 35: the 42 train questions have 31 distinct meta-questions"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 2**63)"),
    (["--cache-dir", os.path.join(ROOT, "README.md")], "--cache-dir: expected a folder to write into"),
]


@pytest.mark.parametrize("argv, message", CLUSTER, ids=[" ".join(a) for a, _ in CLUSTER])
def test_cluster_refuses(argv, message, capsys, monkeypatch, tmp_path):
    code, err = cli(lambda: cluster.main(argv + ["--out", str(tmp_path / "c")]), [], capsys, monkeypatch)
    assert code == 2 and message in err, err


def test_cluster_never_replaces_a_folder_of_other_files(capsys, monkeypatch, tmp_path):
    (tmp_path / "mine.txt").write_text("a user's file")
    code, err = cli(lambda: cluster.main(["--data", DATA, "--out", str(tmp_path)]), [], capsys, monkeypatch)
    assert code == 2 and "holds files that cluster.py did not write (['mine.txt'])" in err
    assert (tmp_path / "mine.txt").read_text() == "a user's file"


# --- files: a model directory and a LiLA task file -------------------------------

def broken_copy(tmp_path, config=None, tensor=None):
    """phi-tiny copied, with config.json fields replaced or one tensor replaced."""
    d = tmp_path / "model"
    shutil.copytree(PHI_TINY, d)
    if config:
        cfg = json.load(open(d / "config.json"))
        cfg.update(config)
        json.dump(cfg, open(d / "config.json", "w"))
    if tensor:
        state = load_file(str(d / "model.safetensors"))
        name, make = tensor
        state[name] = make(state[name])
        save_file(state, str(d / "model.safetensors"))
    return str(d)


def with_nan(t):
    t = t.clone()
    t.view(-1)[3] = float("nan")
    return t


FILES = [
    ({"config": {"hidden_size": "320"}}, "config field 'hidden_size' is '320'; expected an integer >= 1"),
    ({"config": {"num_hidden_layers": 8.0}}, "config field 'num_hidden_layers' is 8.0"),
    ({"config": {"max_position_embeddings": True}}, "config field 'max_position_embeddings' is True"),
    ({"config": {"rope_theta": "nan"}}, "config field 'rope_theta'"),
    ({"config": {"layer_norm_eps": -1e-5}}, "config field 'layer_norm_eps' is -1e-05"),
    ({"config": {"partial_rotary_factor": 1.5}}, "expected a finite number > 0 and <= 1"),
    ({"config": {"max_position_embeddings": 10**9}}, "expected an integer >= 1 and <= 1048576"),
    ({"config": {"layer_norm_eps": 1e10}}, "config field 'layer_norm_eps' is 10000000000.0"),
    ({"config": {"rope_theta": 1e-30}}, "config field 'rope_theta' is 1e-30"),
    ({"config": {"num_hidden_layers": 10**9}}, "holds 8 layers (model.layers.N), but config.json says "
     "num_hidden_layers=1000000000"),
    ({"config": {"tie_word_embeddings": True}}, "tie_word_embeddings is True; only False (as phi-2)"),
    ({"tensor": ("model.layers.3.mlp.fc1.weight", with_nan)}, "model.layers.3.mlp.fc1.weight is torch.float16 with NaN"),
    ({"tensor": ("lm_head.bias", lambda t: torch.full_like(t, float("inf")))}, "lm_head.bias is torch.float16 with NaN or inf"),
    ({"tensor": ("model.final_layernorm.weight", lambda t: t.to(torch.int32))}, "is torch.int32; expected finite"),
]


@pytest.mark.parametrize("broken, message", FILES, ids=[str(b)[:50] for b, _ in FILES])
def test_model_directory_refused(broken, message, capsys, monkeypatch, tmp_path):
    ckpt = broken_copy(tmp_path, **broken)
    code, err = cli(E.main, ["--model", ckpt, "--data", DATA], capsys, monkeypatch)
    assert code == 2 and message in err and ckpt in err, err


def test_task_file_that_is_not_utf8_is_named(capsys, monkeypatch, tmp_path):
    bad = tmp_path / "algebra.json"
    bad.write_bytes(b'{"Instances": ["\xff\xfe"]}')
    code, err = cli(E.main, ["--data", str(bad)], capsys, monkeypatch)
    assert code == 2 and f"{bad}: not UTF-8 text" in err


def test_a_question_too_long_for_the_context_is_an_error_not_cut(capsys, monkeypatch, tmp_path):
    task = json.load(open(os.path.join(DATA, os.listdir(DATA)[0])))
    task["Instances"] = [dict(x, Input="What is " + " + ".join(["1"] * 600) + f" + {i}?") if x["split"] == "test"
                         else x for i, x in enumerate(task["Instances"])]
    path = tmp_path / "long.json"
    json.dump(task, open(path, "w"))
    code, err = cli(E.main, ["--data", str(path), "--shots", "0"], capsys, monkeypatch)
    assert code == 2 and "do not fit the model's 1024-token context" in err


def test_nonfinite_loss_stops_training_without_saving(capsys, monkeypatch, tmp_path):
    """A run whose loss turns NaN stops with a message and writes no adapter."""
    monkeypatch.setattr(train.M, "lm_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    code, err = cli(train.main, ["--expert", "algebra", "--data", DATA, "--steps", "2", "--out",
                                 str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 2 and "step 0: the loss is nan; stopped" in err
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_model_files_from_two_saves_are_refused(tmp_path):
    """model.save writes the weights and tokenizer, then config.json with their
    sha256: weights from another save (a crash between the writes) are refused."""
    m, tok = M.load(PHI_TINY, verbose=False)
    M.save(m, tok, str(tmp_path / "a"))
    M.load(str(tmp_path / "a"), verbose=False)                       # the set loads
    with torch.no_grad():
        m.lm_head.bias += 1
    M.save(m, tok, str(tmp_path / "b"))
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors: not the file that config.json was saved with"):
        M.load(str(tmp_path / "a"), verbose=False)


def test_adapter_files_from_two_saves_are_refused(tmp_path):
    """save_adapter writes the weights (their metadata records lora_alpha), then
    adapter_config.json: weights of another save with another alpha are refused;
    other settings of the config stay free to edit by hand."""
    import lora
    m, _ = M.load(PHI_TINY, verbose=False)
    lora.add_lora(m, r=2, alpha=4, targets=["q_proj"])
    adapters.save_adapter(m, str(tmp_path / "a"))
    lora.remove_lora(m)
    lora.add_lora(m, r=2, alpha=8, targets=["q_proj"])
    adapters.save_adapter(m, str(tmp_path / "b"))
    lora.remove_lora(m)
    config = json.load(open(tmp_path / "a" / "adapter_config.json"))
    config["lora_dropout"] = 0.05                                     # a hand edit: still loads
    json.dump(config, open(tmp_path / "a" / "adapter_config.json", "w"))
    adapters.load_adapter(m, str(tmp_path / "a"))
    lora.remove_lora(m)
    shutil.copy(tmp_path / "b" / "adapter_model.safetensors", tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="adapter_model.safetensors: saved with lora_alpha 8, but "
                                         "adapter_config.json says 4"):
        adapters.load_adapter(m, str(tmp_path / "a"))


STUDY = [   # python -m study: refused in one line before any model is loaded
    (["report", "/nonexistent"], "/nonexistent: no such study folder"),
    (["forgetting", "/nonexistent.json", "/nonexistent.json"], "/nonexistent.json: expected the JSON that "
                                                                 "`eval.py --json` writes"),
    (["paired", "/nonexistent.json", "/nonexistent.json"], "/nonexistent.json: expected the JSON that "
                                                             "`eval.py --json` writes"),
    (["paired", "base.json"], "the following arguments are required: others"),
    (["forgetting", "base.json"], "the following arguments are required: experts"),
]


@pytest.mark.parametrize("argv, message", STUDY, ids=[" ".join(a)[:40] for a, _ in STUDY])
def test_study_refuses(argv, message, capsys, monkeypatch):
    code, err = cli(study.cli.main, argv, capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_heldout_refuses_a_missing_study_folder(capsys, monkeypatch):
    """python -m study.heldout: refused in one line before any model is loaded."""
    code, err = cli(study.heldout.main, ["/nonexistent"], capsys, monkeypatch)
    assert code == 2 and "/nonexistent: no such study folder" in err and len(err.strip().splitlines()) == 1, err


def test_route_weights_too_large_or_small_for_float32_still_normalise():
    from formats import routers
    cfg = routers.read_config(ROUTER)
    w = E.parse_route("algebra=1e39,arithmetic=1e39", cfg)              # 1e39 overflows float32
    assert w.dtype == torch.float32 and w[:2].tolist() == [0.5, 0.5] and w.sum().item() == 1.0
    assert E.parse_route("algebra=1e-50", cfg)[0].item() == 1.0       # underflows float32
    with pytest.raises(ValueError, match="a name comes more than once"):
        E.parse_route("algebra=0.5,algebra=0.5", cfg)


def test_paired_refuses_a_report_whose_accuracy_disagrees_with_its_records(tmp_path, capsys, monkeypatch):
    good = {"skill": "algebra", "question": "q", "prediction": "1", "answers": ["1"], "correct": True,
            "answer_nll": 0.5}
    path = tmp_path / "edited.json"
    path.write_text(json.dumps({"accuracy": {"algebra": 0.0}, "answer_nll": {"algebra": 0.5}, "records": [good]}))
    code, err = cli(study.cli.main, ["paired", str(path), str(path)], capsys, monkeypatch)
    assert code == 2 and "accuracy of 'algebra' is 0.0, but its records give 1/1" in err, err


def test_study_refuses_bad_records_and_reports(tmp_path, capsys, monkeypatch):
    good = {"skill": "algebra", "question": "q", "prediction": "1", "answers": ["1"], "correct": True}
    cases = [({"records": "x"}, "'records' is str, expected a list"),
             ({"records": [{"skill": "algebra", "question": "q"}]}, "record 0 is not one of eval.py's"),
             ({"records": [dict(good, correct="yes")]}, "record 0 is not one of eval.py's"),
             ({"records": [dict(good, answers="1")]}, "record 0 is not one of eval.py's"),
             ({"records": [good, good]}, "record 1 repeats a algebra question")]
    for i, (obj, message) in enumerate(cases):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps(obj))
        code, err = cli(study.cli.main, ["paired", str(path), str(path)], capsys, monkeypatch)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "s" / "eval").mkdir(parents=True)
    for obj, message in [([1, 2], "expected a JSON object"), ({"accuracy": [1], "answer_nll": {}}, "'accuracy' is list"),
                         ({"accuracy": {"algebra": 5}, "answer_nll": {}}, "accuracy of 'algebra' is 5, expected a fraction"),
                         ({"accuracy": {"algebra": 0.5}, "answer_nll": {"algebra": "x"}}, "answer_nll of 'algebra' is 'x'")]:
        (tmp_path / "s" / "eval" / "mixed.json").write_text(json.dumps(obj))
        code, err = cli(study.cli.main, ["report", str(tmp_path / "s")], capsys, monkeypatch)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "s" / "eval" / "mixed.json").write_text(json.dumps({"accuracy": {"algebra": 0.5},
                                                                    "answer_nll": {"algebra": 1.0}}))
    (tmp_path / "s" / "forgetting").mkdir()
    for obj, message in [({"accuracy": [1], "nll": {}}, "'accuracy' is list, expected an object of expert"),
                         ({"accuracy": {"algebra": {"algebra": 0.5}}, "nll": {"algebra": {"algebra": -1}}},
                          "nll of 'algebra' of 'algebra' is -1, expected a finite number >= 0")]:
        (tmp_path / "s" / "forgetting" / "forgetting.json").write_text(json.dumps(obj))
        code, err = cli(study.cli.main, ["report", str(tmp_path / "s")], capsys, monkeypatch)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "empty").mkdir()
    code, err = cli(study.cli.main, ["report", str(tmp_path / "empty")], capsys, monkeypatch)
    assert code == 2 and "no eval/*.json here" in err and not os.listdir(tmp_path / "empty")


# --- the embedding cache, and cluster.py's output, read back ------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong shape"])
def test_a_damaged_embedding_cache_is_a_miss(damage, tmp_path, capsys):
    """cluster.embed_cached: a cache file that does not read back whole is said in
    one line on stderr, embedded again and written anew, never a traceback."""
    model, tok = M.load(PHI_TINY, verbose=False)
    texts = ["Solve x + N = N for x.", "What is N + N?"]            # sorted: the file holds them in this order
    X = cluster.embed_cached(texts, model, tok, 4, cache_dir=str(tmp_path))
    [path] = tmp_path.glob("*.npy")
    if damage == "wrong shape":
        np.save(path, X[:1])
    else:
        data = path.read_bytes()
        path.write_bytes({"truncated": data[:len(data) // 2], "garbage": b"garbage", "empty": b""}[damage])
    capsys.readouterr()
    assert np.array_equal(cluster.embed_cached(texts, model, tok, 4, cache_dir=str(tmp_path)), X)
    out, err = capsys.readouterr()
    assert not out and err.count("\n") == 1 and err.startswith(f"{path}: a damaged embedding cache"), err
    assert np.array_equal(np.load(path), X)                                       # written anew
    cluster.embed_cached(texts, model, tok, 4, cache_dir=str(tmp_path))
    assert capsys.readouterr().err == f"embeddings from cache {path}\n"

CLUSTERS = os.path.join(ROOT, "checkpoints", "phi-tiny-moe", "clusters")
CLUSTER_FILES = [
    ("groups.json", "[1]", "groups.json: expected an object with an integer 'layer'"),
    ("groups.json", '{"layer": "4"}', "groups.json: expected an object with an integer 'layer'"),
    ("groups.json", '{"layer": 99}', "groups.json: layer 99, but the base model has 8 layers"),
    ("groups.json", "{not json", "groups.json: not valid JSON"),
    ("centroids.npy", np.zeros(4, np.float32), "centroids.npy: expected a (clusters, hidden size) array"),
    ("centroids.npy", np.full((2, 320), np.nan, np.float32), "with NaN or inf"),
    ("centroids.npy", b"garbage", "centroids.npy: not a .npy array"),
    ("assignments.json", '[{"cluster": 0}]', "assignments.json: expected a non-empty list"),
    ("assignments.json", '{"q": 0}', "assignments.json: expected a non-empty list"),
    ("assignments.json", '[{"question": "q", "cluster": -5}]', "assignments.json: expected a non-empty list"),
    ("assignments.json", '[{"question": "q", "cluster": "0"}]', "assignments.json: expected a non-empty list"),
]


@pytest.mark.parametrize("name, content, message", CLUSTER_FILES, ids=[f"{n}-{i}" for i, (n, _, _) in
                                                                       enumerate(CLUSTER_FILES)])
def test_cluster_output_is_checked_when_read(name, content, message, tmp_path):
    folder = tmp_path / "clusters"
    shutil.copytree(CLUSTERS, folder)
    if isinstance(content, np.ndarray):
        np.save(folder / name, content)
    else:
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    config = M.PhiConfig.from_json(os.path.join(PHI_TINY, "config.json"))
    with pytest.raises(ValueError, match=re.escape(message)):
        if name == "assignments.json":
            cluster.clusters_of(str(folder), [])
        else:
            read_centroids(str(folder), config)


ONE = {"skill": "algebra", "question": "q", "prediction": "1", "answers": ["1"], "correct": True}   # an eval.py record


@pytest.mark.parametrize("path, content, message", [
    ("experts/algebra/log.json", {"step": 1}, "experts/algebra/log.json: expected train.py's log"),
    ("experts/algebra/log.json", [{"step": 1}], "experts/algebra/log.json: expected train.py's log"),
    ("eval/steer/own-algebra.json", {"accuracy": {"numbers": 0.5}, "answer_nll": {}},
     "own-algebra.json: no accuracy for 'algebra'"),
    ("eval/moe-centroid-token.json", {"accuracy": {"algebra": 1.0}, "answer_nll": {}, "routing": {"experts": ["algebra"]},
                                      "records": [ONE]},
     "moe-centroid-token.json: a record has no 'routing'"),
    ("eval/mixed-r64.json", {"accuracy": {}, "answer_nll": {"algebra": 0.5}}, "mixed-r64.json: 'accuracy' is empty"),
    ("eval/mixed-r64.json", {"accuracy": {"algebra": 0.99}, "answer_nll": {},
                             "counts": {"algebra": {"correct": 1, "total": 2}}},
     "mixed-r64.json: accuracy of 'algebra' is 0.99, but its counts give 1/2"),
    ("eval/mixed-r64.json", {"accuracy": {"algebra": 0.5}, "answer_nll": {},
                             "records": [ONE]},
     "mixed-r64.json: accuracy of 'algebra' is 0.5, but its records give 1/1"),
])
def test_study_report_names_a_malformed_piece(path, content, message, tmp_path, capsys, monkeypatch):
    good = {"accuracy": {"algebra": 0.5}, "answer_nll": {"algebra": 1.0}}
    for name, obj in {"eval/mixed.json": good, "eval/steer/wrong-algebra.json": good, path: content}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(obj))
    code, err = cli(study.cli.main, ["report", str(tmp_path)], capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_experts_swapped_between_folders_are_refused(tmp_path, capsys, monkeypatch):
    """router.json holds each expert's sha256: an algebra folder that holds the
    arithmetic adapter is named, in eval --moe and in explain.py."""
    experts = shutil.copytree(EXPERTS, str(tmp_path / "experts"))
    os.rename(os.path.join(experts, "algebra"), os.path.join(experts, "tmp"))
    os.rename(os.path.join(experts, "arithmetic"), os.path.join(experts, "algebra"))
    os.rename(os.path.join(experts, "tmp"), os.path.join(experts, "arithmetic"))
    message = os.path.join(experts, "algebra", "adapter_model.safetensors") + ": not the adapter that"
    for main, argv in ((E.main, ["--moe", ROUTER, "--data", DATA]), (explain.main, ["Solve 3*y = 6 for y.", "--moe", ROUTER])):
        code, err = cli(main, [*argv, "--experts", experts, "--model", PHI_TINY], capsys, monkeypatch)
        assert code == 2 and message in err and "expert 'algebra'" in err, err


def test_a_router_moved_without_its_experts_names_the_first_one(tmp_path, capsys, monkeypatch):
    """router.json names its experts' folders from its own: moved alone, the router
    is refused before the model loads, naming the expert and the flag that finds it."""
    router = shutil.copytree(ROUTER, str(tmp_path / "router"))
    monkeypatch.setattr(M, "load", lambda *a, **k: pytest.fail("the model loaded before the experts were checked"))
    message = (f"{tmp_path}/experts/algebra/adapter_model.safetensors not found: {router} routes over the expert "
               "'algebra' there; give the folder that holds its experts with --experts DIR")
    for main, argv in ((E.main, ["--moe", router, "--data", DATA]), (explain.main, ["What is 2+2?", "--moe", router])):
        code, err = cli(main, argv, capsys, monkeypatch)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_one_writer_per_output_folder_of_cluster_and_eval(tmp_path, capsys, monkeypatch):
    """cluster.py --out and eval.py --moe's --out (the routing report) are refused,
    naming the holder, while another process writes them (formats.files.lock);
    before the model loads."""
    from formats.files import lock
    monkeypatch.setattr(M, "load", lambda *a, **k: pytest.fail("the model loaded into a held folder"))
    out = str(tmp_path / "out")
    for main, argv in ((lambda: cluster.main(["--data", DATA, "--out", out]), []),
                       (E.main, ["--moe", ROUTER, "--data", DATA, "--out", out])):
        with lock(out):                  # another open file: refused as another process would be
            code, err = cli(main, argv, capsys, monkeypatch)
        assert code == 2 and f"{out} is being written by process {os.getpid()} on " in err, err


@pytest.mark.parametrize("limit", [[], ["--limit", "1"]])
def test_eval_of_a_repeated_test_question(tmp_path, capsys, monkeypatch, limit):
    """Refused whether or not --limit would draw both copies: the file is broken."""
    q = {"Input": "What is 2 + 3?", "Output Answer": ["5"], "split": "test"}
    (tmp_path / "algebra.json").write_text(json.dumps({"Instances": [q, {**q, "Input": "What is 1 + 1?"}, q]}))
    code, err = cli(E.main, ["--data", str(tmp_path), "--model", PHI_TINY, "--shots", "0", *limit], capsys,
                    monkeypatch)
    assert code == 2 and f"{tmp_path}, test split: the algebra question 'What is 2 + 3?' comes more than once" \
        in err, err


@pytest.mark.parametrize("shots, copy", [
    (["--shots", "1", "--shots-from", "nearest"], "What is 2 + 3?"),
    (["--shots", "1", "--shots-from", "skill"], "What is 2 + 3?"),
    (["--shots", "0"], "What is 2 + 3?"),                              # no shots drawn, and still checked
    (["--shots", "1", "--shots-from", "skill"], " What is  2 +\t3?\n"),    # the same question, spaced otherwise
], ids=["nearest", "skill", "0-shot", "whitespace"])
def test_eval_of_a_test_question_that_is_also_a_train_question(tmp_path, capsys, monkeypatch, shots, copy):
    """Refused, --limit or not: a shot could be the question, and a model trained on the split saw it."""
    def q(text, split):
        return {"Input": text, "Output Answer": ["5"], "split": split, "submodule": "algebra__x"}
    (tmp_path / "algebra.json").write_text(json.dumps({"Instances": [
        q("What is 2 + 3?", "test"), q("What is 1 + 1?", "test"), q(copy, "train"),
        q("What is 4 + 4?", "train"), q("What is 7 + 4?", "train")]}))
    code, err = cli(E.main, ["--data", str(tmp_path), "--model", PHI_TINY, "--limit", "1", *shots],
                    capsys, monkeypatch)
    assert code == 2 and f"{tmp_path}: 1 test question(s) are also train questions of their skill, e.g. the " \
        "algebra question 'What is 2 + 3?'; expected disjoint splits" in err, err


def test_submodule_shots_need_the_submodule_field(tmp_path, capsys, monkeypatch):
    """Without the field a question's submodule is its skill: --shots-from submodule
    would silently give --shots-from skill's prompts, so it is refused."""
    def q(text, split):
        return {"Input": text, "Output Answer": ["5"], "split": split}
    (tmp_path / "algebra.json").write_text(json.dumps({"Instances": [
        q("What is 2 + 3?", "test"), q("What is 1 + 1?", "train"), q("What is 4 + 4?", "train")]}))
    code, err = cli(E.main, ["--data", str(tmp_path), "--model", PHI_TINY, "--shots", "1",
                             "--shots-from", "submodule"], capsys, monkeypatch)
    assert code == 2 and f"{tmp_path}, test split: the algebra questions have no 'submodule' field" in err \
        and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("instances, message", [
    ([], "algebra.json: field 'Instances': empty, expected at least one question"),
    ([{"Input": "What is 2 + 3?", "Output Answer": ["5"], "split": "train"}],
     "skill(s) ['algebra'] have no test examples")])
def test_eval_of_a_task_file_without_test_questions(tmp_path, capsys, monkeypatch, instances, message):
    (tmp_path / "algebra.json").write_text(json.dumps({"Instances": instances}))
    code, err = cli(E.main, ["--data", str(tmp_path), "--model", PHI_TINY], capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_fresh_run_does_not_overwrite_another_runs_state(tmp_path, capsys, monkeypatch):
    """Without --resume, an --out that holds train_state.pt is refused before anything
    runs; with --resume it is the run to continue."""
    (tmp_path / "train_state.pt").write_bytes(b"an earlier run")
    code, err = cli(train.main, ["--expert", "algebra", "--out", str(tmp_path)], capsys, monkeypatch)
    assert code == 2 and f"--out {tmp_path} holds the train_state.pt of an earlier run" in err, err
    assert (tmp_path / "train_state.pt").read_bytes() == b"an earlier run"


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """run() turns a UserError into one line, and nothing else: a ValueError from
    a bug (numpy raises one for a shape mismatch) is not dressed as the user's
    mistake; its traceback is printed and the exit status is 1."""
    def bug(*args, **kwargs):
        return np.ones(2) @ np.ones(3)                  # ValueError: matmul shapes do not match
    monkeypatch.setattr(E.Evaluator, "build", bug)
    monkeypatch.setattr(E.M, "load", lambda *a, **k: (None, None))
    monkeypatch.setattr(sys, "argv", ["eval.py", "--model", PHI_TINY, "--data", DATA])
    with pytest.raises(ValueError, match="matmul"):
        run(E.main)
    code = "import cli, numpy as np; cli.run(lambda: np.ones(2) @ np.ones(3))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr and "matmul" in done.stderr
    code = "import cli; from formats.files import UserError\ndef f(): raise UserError('x.json: expected a list')\ncli.run(f)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == "-c: error: x.json: expected a list\n", done.stderr


def test_dtype_flags_name_every_dtype_of_the_model():
    """cli.py declares --dtype's choices without importing model.py (python -m study loads no torch)."""
    import cli
    assert cli.DTYPE_NAMES == sorted(M.DTYPES)
