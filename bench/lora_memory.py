"""
Peak memory of LoRA training at phi-2's width, measured with a few layers and
extrapolated to phi-2's 32: what `train.py --expert ... --dtype D` needs.

    python bench/lora_memory.py                              # CPU, bf16 base, layers 1 and 2
    python bench/lora_memory.py --device cuda --layers 2 4   # on a GPU

Each layer count runs in a fresh process: a random phi-2-width model (hidden
2560, MLP 10240, 32 heads, vocabulary 51200) with L layers, the frozen base in
--dtype, train.py's LoRA defaults (rank 8 on q/k/v/dense/fc1/fc2, fp32 LoRA
weights and AdamW), and two training steps of model.lm_loss under
autocast at train.py's LoRA batch (16 x 256 tokens). The peak is
torch.cuda.max_memory_allocated on a GPU and the growth of the process's peak
RSS (VmHWM) on the CPU. Memory is linear in the layer count (every layer holds
the same weights and activations), so peak(L) = a + b L, fitted through the
measured points, gives peak(32).

Left out: the CUDA context (several hundred MB, the same for every model), and
gradient checkpointing (train.py does not use it).
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys, torch
sys.path.insert(0, {root!r})
import lora, model as M

def peak():
    if {device!r}.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) * 1024

torch.manual_seed(0)
dtype = M.DTYPES[{dtype!r}]
cfg = M.PhiConfig(num_hidden_layers={layers}, hidden_size={width}, intermediate_size=4 * {width},
                 num_attention_heads={width} // 80)        # phi-2's head size; fewer layers
before = peak()
with torch.device("meta"):
    model = M.PhiForCausalLM(cfg)
model = model.to_empty(device={device!r}).to(dtype)
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.02)
model.init_rope({device!r})
lora.add_lora(model, r=8, alpha=16)
lora.mark_only_lora_trainable(model)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
x = torch.randint(0, 50000, ({batch}, {seq}), device={device!r})
for _ in range(2):   # the second step holds the AdamW states too
    with torch.autocast({device!r}.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
        loss = M.lm_loss(model, x, x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({{"layers": {layers}, "peak": peak() - before, "weights": weights}}))
"""


def measure(layers, args):
    code = CHILD.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), layers=layers,
                        width=args.hidden_size, device=args.device, dtype=args.dtype,
                        batch=args.batch_size, seq=args.seq_len)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {layers}-layer run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description="Peak memory of LoRA training at phi-2 width, "
                                            "extrapolated to 32 layers.")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="layer counts to measure (>= 2 of them)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the frozen base and of autocast")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (train.py's LoRA default)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (train.py's LoRA default)")
    p.add_argument("--hidden-size", type=int, default=2560, help="hidden size, a multiple of phi-2's head "
                   "size 80 (default 2560, phi-2's; smaller only to try the script quickly)")
    args = p.parse_args()
    if args.hidden_size % 80:
        p.error(f"--hidden-size {args.hidden_size}: expected a multiple of 80 (phi-2's head size)")
    if len(set(args.layers)) < 2:
        p.error("--layers needs at least two different layer counts to fit a line")
    rows = [measure(L, args) for L in args.layers]
    n = len(rows)
    mx = sum(r["layers"] for r in rows) / n
    my = sum(r["peak"] for r in rows) / n
    b = sum((r["layers"] - mx) * (r["peak"] - my) for r in rows) / sum((r["layers"] - mx) ** 2 for r in rows)
    a = my - b * mx
    print(f"LoRA training at width {args.hidden_size}, base {args.dtype}, {args.batch_size} x {args.seq_len} "
          f"tokens, {args.device}")
    print("| layers | weights (GiB) | peak (GiB) |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r['layers']} | {r['weights'] / 2**30:.2f} | {r['peak'] / 2**30:.2f} |")
    print(f"| 32 (fit: {a / 2**30:.2f} + {b / 2**30:.3f} x layers) | | **{(a + 32 * b) / 2**30:.1f}** |")


if __name__ == "__main__":
    main()
