"""
eval.py's evaluate() at several batch sizes, on the same questions, in one run.

    python bench/bench_eval.py                       # phi-tiny, 64 test questions, 4-shot
    python bench/bench_eval.py --questions 32 --batch-sizes 1 32
    python bench/bench_eval.py --device cuda --dtype bfloat16   # on a GPU (bench/gpu.sh runs it)

For each batch size: questions/s, and where the time goes: prefill (forwards over
whole prompts), answers (the gold answers scored through the prompts' KV cache
for the answer NLL), decode (one-token forwards through the KV cache; a batch
whose answers are all one token long counts here too) and the rest (Python:
prompts, stop tests, decoding text, scoring). In float32 the predictions must be the same at
every batch size, or the run fails; in half precision it counts those that differ.
The reference is batch size 1: a ratio above 1 is faster.
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cli  # noqa: E402
import eval as E  # noqa: E402
import model as M  # noqa: E402
from data.lila import by_skill, load  # noqa: E402
from data.prompts import select  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--model", default=cli.DEFAULT_MODEL, help=f"checkpoint (default {cli.DEFAULT_MODEL})")
    p.add_argument("--data", default=os.path.join(ROOT, "data", "lila"), help="LiLA folder (default data/lila)")
    p.add_argument("--questions", type=int, default=64, help="test questions in all, spread over the skills "
                   "(default 64)")
    p.add_argument("--shots", type=int, default=4, help="shots per prompt (default 4)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="(default 1 8 32)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=sorted(M.DTYPES), help="model dtype (default float32)")
    return p.parse_args()


class Timer:
    """Wall time of the model's forwards: prefill (from slot 0), decode (one token
    through the cache) and answers (several tokens through the cache)."""

    def __init__(self, model):
        self.seconds = {"prefill": 0.0, "answers": 0.0, "decode": 0.0}
        self.forward = model.forward
        model.forward = self

    def __call__(self, idx, *args, **kw):
        sync(idx.device)
        t0 = time.perf_counter()
        out = self.forward(idx, *args, **kw)
        sync(idx.device)
        kind = "prefill" if kw.get("start", 0) == 0 else "decode" if idx.shape[1] == 1 else "answers"
        self.seconds[kind] += time.perf_counter() - t0
        return out


def sync(device):
    """Wait for the GPU, so that a forward's time is its own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, tok = M.load(args.model, dtype=args.dtype, device=args.device)
    test = load(args.data, split="test")
    per_skill = max(1, args.questions // len({e.skill for e in test}))
    questions = select(test, per_skill, seed=0)
    pool = by_skill(load(args.data, split="train"))
    E.evaluate(model, tok, questions[:4], pool, args.shots, batch_size=4)          # warm-up
    rows, reference = [], None
    for B in args.batch_sizes:
        timer = Timer(model)
        t0 = time.perf_counter()
        records = E.evaluate(model, tok, questions, pool, args.shots, batch_size=B)
        wall = time.perf_counter() - t0
        del model.forward                                                         # the class's forward again
        preds = [r["prediction"] for r in records]
        reference = reference or preds
        differ = sum(p != q for p, q in zip(preds, reference))
        if differ and args.dtype == "float32":
            sys.exit(f"batch size {B}: {differ} predictions differ from batch size {args.batch_sizes[0]}")
        if differ:   # half precision: padding changes the rounding, and a close call may flip
            print(f"batch size {B}: {differ} of {len(preds)} predictions differ from batch size "
                  f"{args.batch_sizes[0]} ({args.dtype})")
        rows.append((B, len(questions) / wall, [s / wall for s in timer.seconds.values()]))
    print(f"\n{len(questions)} test questions, {args.shots}-shot, {args.model}, {args.device}, {args.dtype}, "
          f"{args.threads} threads\n")
    print("| batch | questions/s | x batch " + str(rows[0][0]) + " | prefill | answers | decode | rest (Python) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for B, qps, shares in rows:
        print(f"| {B} | {qps:.1f} | {qps / rows[0][1]:.2f}x | " + " | ".join(f"{100 * s:.0f}%" for s in shares)
              + f" | {100 * (1 - sum(shares)):.0f}% |")


if __name__ == "__main__":
    main()
