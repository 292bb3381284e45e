"""bench/gpu.sh, the one script a GPU machine runs, runs every step end to end on
a CPU at a tiny size (DEVICE=cpu TINY=1), so that it works the day a GPU is at hand."""
import os
import subprocess

from conftest import ROOT


def test_gpu_script_runs_every_step_on_a_cpu(tmp_path):
    env = dict(os.environ, DEVICE="cpu", TINY="1", OUT=str(tmp_path))
    run = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu.sh")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (tmp_path / "gpu.md").read_text()
    for heading in ["## 1. CUDA and bf16 tests", "## 2. LoRA training memory", "## 3. LoRA training against PEFT",
                    "## 4. Prefill and decode against transformers", "## 5. Routed decode against the base",
                    "## 6. Batched evaluation", "## done in"]:
        assert heading in report, heading
    for table in ["| 32 (fit:", "ours / peft tokens/s:", "| phi-tiny | 11M |", "| grouped gate (2, per token", "| batch | questions/s | x batch 1 |"]:
        assert table in report, table
