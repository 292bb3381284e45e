"""
Routing overhead: prefill and decode latency of the routed model against the
base model, on the shipped phi-tiny (checkpoints/phi-tiny), in one run.

    python bench/bench_router.py               # batch 1 and 8, 256-token prompts
    python bench/bench_router.py --repeats 3   # quicker
    python bench/bench_router.py --phi2-width  # a random 2-layer model of phi-2's widths
    python bench/bench_router.py --phi2-width 4 --device cuda --dtype bfloat16   # on a GPU

Configurations (E = --experts random rank-8 experts on q,k,v,dense,fc1,fc2,
B non-zero so no work can be skipped; speed does not depend on the values):
  base                  the plain model
  task-hard (merged)    one expert merged into the weights: task-level hard routing
  task-soft (E, seq)    MultiLoRALinear with one weight vector per sequence
  grouped gate (token)  the two-level Router: a grouped gate in every layer, per token,
                        mixed with a task prior (router.py), E experts in 3 groups

prefill ms: time to the first new token (generate with 1 new token); decode
ms/token: (time for 1+N new tokens - time for 1) / N, greedy, KV cache. Each
time is the median over --repeats runs after a warm-up, configurations taking
turns, so a slow spell hits all. The ratio is against base (lower is better;
targets: task-hard <= 1.05x, grouped gate over 8 experts <= 1.3x). PEFT's X-LoRA
reports about 8x the base for its layer-wise token mixing (its README and
paper), which needs a full extra forward pass to compute the gate.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from formats import adapters  # noqa: E402
import lora  # noqa: E402
import model as M  # noqa: E402
import router as R  # noqa: E402
from bench_model import sync  # noqa: E402


def random_experts(model, n, workdir):
    """n adapter directories with random A and B, in the PEFT layout."""
    dirs = []
    for e in range(n):
        torch.manual_seed(e)
        lora.add_lora(model, r=8, alpha=16)
        for m in lora.lora_modules(model).values():
            torch.nn.init.normal_(m.lora_B.weight, std=0.02)
        dirs.append(os.path.join(workdir, f"expert{e}"))
        adapters.save_adapter(model, dirs[-1])
        lora.remove_lora(model)
    return dirs


def timed(model, prompts, new_tokens):
    sync()
    t0 = time.perf_counter()
    M.generate(model, prompts, new_tokens)
    sync()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description="Latency of routed phi-tiny against the base model.")
    p.add_argument("--model", default=os.path.join(ROOT, "checkpoints", "phi-tiny"), help="base checkpoint")
    p.add_argument("--phi2-width", type=int, nargs="?", const=2, default=0, metavar="LAYERS",
                   help="instead of --model: a random checkpoint of phi-2's widths with LAYERS layers "
                   "(default 2), written with transformers as bench_model.py does")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the base weights (default float32)")
    p.add_argument("--experts", type=int, default=8, help="random experts to route over")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=32, help="decode steps timed")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.2f}, {args.experts} experts, "
          f"{args.dtype} on {args.device}")

    workdir = tempfile.mkdtemp()
    if args.phi2_width:
        from bench_model import PHI2_WIDTH, write_checkpoint
        args.model = os.path.join(workdir, "phi2-width")
        write_checkpoint(args.model, dict(PHI2_WIDTH, num_hidden_layers=args.phi2_width), torch.float32)
    load = lambda: M.load(args.model, dtype=args.dtype, device=args.device)[0]   # noqa: E731
    base = load()
    dirs = random_experts(base, args.experts, workdir)
    E, C, L = args.experts, base.config.hidden_size, base.config.num_hidden_layers

    hard = load()
    adapters.load_adapter(hard, dirs[0])
    lora.merge_lora(hard)
    soft = load()
    adapters.load_experts(soft, dirs)
    gated = load()
    adapters.load_experts(gated, dirs)
    groups = [list(g) for g in np.array_split(np.arange(E), min(3, E))]
    cfg = R.RouterConfig(experts=[f"e{e}" for e in range(E)], groups=[[int(e) for e in g] for g in groups],
                         hidden_size=C, n_layers=L)
    router = R.Router(cfg, np.random.default_rng(0).normal(size=(E, C)).astype(np.float32))
    router = router.to(args.device).attach(gated).eval()
    for gate in router.gates:      # non-trivial gates (they start at zero)
        torch.nn.init.normal_(gate.U.weight, std=0.05)
        torch.nn.init.normal_(gate.V.weight, std=0.05)

    configs = {"base": base, "task-hard (merged)": hard, f"task-soft ({E}, per sequence)": soft,
               f"grouped gate ({E}, per token, two-level)": gated}
    print("| batch | configuration | prefill ms | x base | decode ms/token | x base |")
    print("|---:|---|---:|---:|---:|---:|")
    for B in map(int, args.batch_sizes.split(",")):
        g = torch.Generator().manual_seed(B)
        prompts = torch.randint(0, base.config.vocab_size, (B, args.prompt_len), generator=g).tolist()
        prior = torch.softmax(torch.randn(B, E, generator=g), -1).to(args.device)
        lora.set_expert_weights(soft, prior)
        router.set_prior(prior)
        times = {name: ([], []) for name in configs}
        with torch.no_grad():
            for name, m in configs.items():                      # warm-up
                timed(m, prompts, 2)
            for _ in range(args.repeats):
                for name, m in configs.items():
                    one = timed(m, prompts, 1)
                    many = timed(m, prompts, 1 + args.new_tokens)
                    times[name][0].append(one)
                    times[name][1].append((many - one) / args.new_tokens)
        pre0, dec0 = (statistics.median(t) for t in times["base"])
        for name, (pre, dec) in times.items():
            pre, dec = statistics.median(pre), statistics.median(dec)
            print(f"| {B} | {name} | {1000 * pre:.1f} | {pre / pre0:.2f}x | {1000 * dec:.2f} | {dec / dec0:.2f}x |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
