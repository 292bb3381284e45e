"""model.load's peak memory: about one copy of the weights in the target dtype.

load() builds the model on the meta device (no memory, no random init), reads
each tensor once with pread and converts it, and assigns it into the model. A
fresh process loads a ~230 MB fp16 checkpoint as fp32 (460 MB) and reports the
growth of its peak RSS (VmHWM), which must stay within 1.2x the fp32 weights.
Reading through mmap instead would count the file's pages too (1.5x here)."""
import json
import subprocess
import sys

import pytest
import torch

import model as M
from conftest import ROOT, make_tokenizer

CHILD = """
import json, sys, torch
sys.path.insert(0, {root!r})
import model as M

def peak():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) * 1024

before = peak()
model, _ = M.load({ckpt!r}, dtype=torch.float32, verbose=False)
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({{"growth": peak() - before, "weights": weights}}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_load_peak_memory_is_one_copy_of_the_weights(tmp_path):
    torch.manual_seed(0)
    cfg = M.PhiConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096,
                      num_hidden_layers=4, num_attention_heads=16, max_position_embeddings=512,
                      partial_rotary_factor=0.5)
    M.save(M.PhiForCausalLM(cfg), make_tokenizer(), str(tmp_path), dtype=torch.float16)
    code = CHILD.format(root=ROOT, ckpt=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["weights"] > 400e6
    assert r["growth"] <= 1.2 * r["weights"], r
