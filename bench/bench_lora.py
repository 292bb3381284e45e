"""
LoRA training speed: lora.py on model.py against PEFT on transformers'
PhiForCausalLM, same checkpoint (phi-tiny), batch, rank, alpha and targets, in
one run; plus merged against unmerged inference with our LoRA.

    python bench/bench_lora.py              # phi-tiny, batch 8 x 256, rank 8
    python bench/bench_lora.py --steps 5    # quicker
    python bench/bench_lora.py --profile    # also: where each library spends a step
    python bench/bench_lora.py --phi2-width 4 --device cuda --dtype bfloat16 --batch-size 16

Each number is the median step time over --steps timed steps after 2 warm-up
steps; ours and PEFT's steps alternate, so a slow spell hits both. A step is
forward, answer-free full-sequence loss, backward and an AdamW update of the
LoRA parameters only. With --dtype bfloat16 or float16 both libraries hold the
frozen base in that dtype and the LoRA weights in fp32 (PEFT's default
autocast_adapter_dtype), and run the step under autocast, as train.py does. On
a GPU the table also gives each library's peak memory during a step, above the
memory held before it. transformers and peft are the reference, never a
dependency of lora.py.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lora  # noqa: E402
import model as M  # noqa: E402


def step_fn(forward, params, dtype):
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step(x):
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = forward(x)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def timed(fn, x, memory):
    """Seconds of fn(x); on a GPU, its peak memory above what was held before goes to memory."""
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
    t = time.perf_counter()
    fn(x)
    if cuda:
        torch.cuda.synchronize()
        memory.append(torch.cuda.max_memory_allocated() - held)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="checkpoints/phi-tiny", help="HF-layout phi checkpoint "
                   "(default checkpoints/phi-tiny)")
    p.add_argument("--phi2-width", type=int, default=0, metavar="LAYERS", help="instead of --model: a random "
                   "checkpoint of phi-2's widths with LAYERS layers (default 0: use --model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the frozen base and of autocast; LoRA weights stay fp32 (default float32)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--steps", type=int, default=10, help="timed steps per library")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--profile", action="store_true",
                   help="also run 3 steps of each under torch.profiler and print the top ops")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model
    from transformers import PhiForCausalLM

    targets, dtype = list(lora.DEFAULT_TARGETS), M.DTYPES[args.dtype]
    if args.phi2_width:
        from bench_model import PHI2_WIDTH, write_checkpoint
        args.model = os.path.join(tempfile.mkdtemp(), "phi2-width")
        write_checkpoint(args.model, dict(PHI2_WIDTH, num_hidden_layers=args.phi2_width), torch.float32)
    ours, _ = M.load(args.model, dtype=dtype, device=args.device, verbose=False)
    lora.add_lora(ours, r=args.rank, alpha=2 * args.rank, targets=targets)
    lora.mark_only_lora_trainable(ours)
    ours.train()
    hf = PhiForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device)
    theirs = get_peft_model(hf, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets,
                                           lora_dropout=0.0))
    theirs.train()
    steps = {"ours": step_fn(ours, [p for p in ours.parameters() if p.requires_grad], dtype),
             "peft": step_fn(lambda x: theirs(x).logits, [p for p in theirs.parameters() if p.requires_grad],
                             dtype)}
    x = torch.randint(1, ours.config.vocab_size, (args.batch_size, args.seq_len),
                      generator=torch.Generator().manual_seed(0)).to(args.device)
    print(f"LoRA training, {ours.num_params() / 1e6:.0f}M-parameter base in {args.dtype} on {args.device}, "
          f"{args.batch_size} x {args.seq_len} tokens, rank {args.rank}, targets {targets}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    times, memory = {k: [] for k in steps}, {k: [] for k in steps}
    for i in range(args.steps + 2):
        for name, fn in steps.items():
            t = timed(fn, x, memory[name])
            if i >= 2:
                times[name].append(t)
    tok = args.batch_size * args.seq_len
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| library | s/step | tokens/s | peak step memory (GiB) |\n|---|---:|---:|---:|")
    for k in med:
        peak = f"{max(memory[k]) / 2**30:.2f}" if memory[k] else "-"
        print(f"| {k} | {med[k]:.3f} | {tok / med[k]:.0f} | {peak} |")
    print(f"ours / peft tokens/s: {med['peft'] / med['ours']:.2f}x")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        for name, fn in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    fn(x)
            print(f"\n{name}, 3 steps, by self CPU time:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    ours.eval()
    xi = x[:, :64]
    infer = {}
    with torch.no_grad():
        for state in ("unmerged", "merged"):
            if state == "merged":
                lora.merge_lora(ours)
            ts = [timed(ours, xi, []) for _ in range(args.steps + 2)][2:]
            infer[state] = statistics.median(ts)
    print(f"| inference (forward, {xi.shape[0]} x {xi.shape[1]}) | s |\n|---|---:|")
    for k, v in infer.items():
        print(f"| {k} | {v:.4f} |")
    print(f"merged speed-up: {infer['unmerged'] / infer['merged']:.2f}x")


if __name__ == "__main__":
    main()
