"""train.py --expert / --mixed on a tiny base: exact resume, torchrun data
parallel equals one process, clear errors."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import ROOT
from test_train_eval import FIXTURE, base_args, tokenizer_path  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer_path):  # noqa: F811
    out = tmp_path_factory.mktemp("base")
    train.train(base_args(out, tokenizer_path, steps=3))
    return str(out)


def expert_argv(base, out, *extra):
    return ["--expert", "algebra", "--model", base, "--data", FIXTURE, "--out", str(out),
            "--steps", "6", "--batch-size", "4", "--seq-len", "64", "--warmup", "2",
            "--eval-every", "3", "--eval-batches", "1", "--eval-questions", "4", "--seed", "0",
            "--device", "cpu", "--rank", "4", *extra]


def adapter(out):
    """The LoRA weights of the final step (the saved adapter is the best-dev one)."""
    return torch.load(os.path.join(out, "train_state.pt"))["model"]


def test_expert_resume_reaches_the_same_adapter(tmp_path, base_dir):
    train.train(train.parser().parse_args(expert_argv(base_dir, tmp_path / "full")))
    train.train(train.parser().parse_args(expert_argv(base_dir, tmp_path / "cut", "--stop-at", "3")))
    train.train(train.parser().parse_args(expert_argv(base_dir, tmp_path / "cut", "--resume")))
    a, b = adapter(tmp_path / "full"), adapter(tmp_path / "cut")
    assert a.keys() == b.keys() and all("lora_" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    saved = load_file(os.path.join(tmp_path / "full", "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.model.layers.") for k in saved)


def test_two_processes_equal_one(tmp_path, base_dir):
    """Same global batch (4 rows) on 1 process or split 2+2 over torchrun: the
    summed gradients differ only by float summation order, so after 6 AdamW
    steps the adapters agree to 1e-5."""
    argv = expert_argv(base_dir, tmp_path / "one")
    subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, check=True, capture_output=True)
    argv = expert_argv(base_dir, tmp_path / "two")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "train.py", *argv],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = adapter(tmp_path / "one"), adapter(tmp_path / "two")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max())


def test_unknown_skill_lists_the_known_ones(tmp_path, base_dir):
    argv = expert_argv(base_dir, tmp_path)
    argv[argv.index("algebra")] = "geometry"
    with pytest.raises(ValueError, match="geometry.*algebra"):
        train.train(train.parser().parse_args(argv))


def test_mixed_gets_the_steps_of_all_experts(tmp_path, base_dir):
    argv = expert_argv(base_dir, tmp_path, "--steps-per-skill", "2")
    argv[:2] = ["--mixed"]
    args = train.parser().parse_args(argv)
    train.train(args)
    assert args.steps == 4      # two skills in the fixture, 2 steps each
