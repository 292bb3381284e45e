"""The same model on a GPU: fp32 CUDA equals CPU, bf16 stays close, batched
greedy decoding still equals one-at-a-time. Skipped where there is no GPU (CI);
run on the lent GPU machine with `python -m pytest -q tests/test_cuda.py`."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from formats import adapters
import model as M
from conftest import ROOT
from test_experts import base_dir, expert_argv  # noqa: F401  (base_dir: a fixture)
from test_train_eval import tokenizer_path  # noqa: F401  (a fixture that base_dir uses)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_fp32_matches_cpu(tiny_ckpt):
    cpu, _ = M.load(tiny_ckpt[0])
    gpu, _ = M.load(tiny_ckpt[0], device="cuda")
    idx = torch.randint(1, 320, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (gpu(idx.cuda()).cpu() - cpu(idx)).abs().max() < 1e-4   # TF32 is off by default


def test_cuda_bf16_close_to_fp32(tiny_ckpt):
    """bf16 rounds to 8 mantissa bits (~4e-3 relative) per op; scores and softmax
    stay fp32, so through 2 layers logits move by a few 1e-2 at most."""
    ref, _ = M.load(tiny_ckpt[0], device="cuda")
    bf, _ = M.load(tiny_ckpt[0], dtype="bf16", device="cuda")
    idx = torch.randint(1, 320, (3, 40), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        a, b = ref(idx), bf(idx).float()
    assert (a - b).abs().max() < 0.05
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_cuda_batched_greedy_equals_one_at_a_time(tiny_ckpt):
    model, _ = M.load(tiny_ckpt[0], device="cuda")
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 320, (n,), generator=g).tolist() for n in (3, 11, 6, 1)]
    assert M.generate(model, prompts, 20) == [M.generate(model, [p], 20)[0] for p in prompts]


def test_cuda_adapter_saved_on_cpu_loads_on_gpu(tiny_ckpt, tmp_path):
    """An adapter made on the CPU loads onto a CUDA base (the base check compares
    a probe of the weights on the CPU) and gives the CPU's logits."""
    import lora
    cpu, _ = M.load(tiny_ckpt[0])
    lora.add_lora(cpu, r=4, alpha=8)
    for n, p in cpu.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(n)))
    adapters.save_adapter(cpu, str(tmp_path), tiny_ckpt[0])
    gpu, _ = M.load(tiny_ckpt[0], device="cuda")
    adapters.load_adapter(gpu, str(tmp_path))
    idx = torch.randint(1, 320, (2, 17), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (gpu(idx.cuda()).cpu() - cpu(idx)).abs().max() < 1e-4


# --- data parallel on GPUs: torchrun over nccl ---------------------------------------

@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_cuda_two_processes_equal_one(tmp_path, base_dir):  # noqa: F811
    """test_experts' 2-processes-equal-1 on GPUs: cli.processes() gives
    rank r the device cuda:r and all-reduces the gradients over nccl (gloo on the
    CPU). fp32 (--dtype float32; the GPU default is bf16 autocast), so the two
    runs differ only by summation order, as on the CPU."""
    argv = lambda out: [*expert_argv(base_dir, out, "--eval-every", "6"), "--device", "cuda",
                        "--dtype", "float32"]
    subprocess.run([sys.executable, "train.py", *argv(tmp_path / "one")], cwd=ROOT, check=True,
                   capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29518", "train.py", *argv(tmp_path / "two")],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 process(es)" in run.stdout
    a, b = (load_file(os.path.join(tmp_path / run, "adapter_model.safetensors")) for run in ("one", "two"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max())
