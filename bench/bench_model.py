"""
model.py against transformers' PhiForCausalLM, on the same weights, on this CPU.

    python bench/bench_model.py            # everything (about 5 minutes on 2 idle cores)
    python bench/bench_model.py --quick    # smaller, fewer repeats (about 2 minutes)

Speed (one table row per config; batch 1, fp32, both models in this process):
  prefill tok/s   prompt tokens / time to the first new token, i.e. generate()
                  with max_new_tokens=1 (ours: model.generate; theirs: hf.generate,
                  do_sample=False, their default attention)
  decode tok/s    N / (time for 1+N new tokens - time for 1 new token): greedy
                  steps through each library's own KV cache
Each time is the median of --repeats runs after one warm-up; ours and theirs
alternate, so a slow spell on the machine hits both. Random weights: speed does
not depend on them, and "same tokens" shows both pick the same greedy tokens.

Memory (one row per loader): a fresh subprocess loads a phi-2-width checkpoint
of more than 1 GB and reports its peak RSS (VmHWM),
before and after the load, against the bytes of the loaded weights.

transformers is the reference here, never a dependency of model.py.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model as M  # noqa: E402

PHI_TINY = dict(vocab_size=1024, hidden_size=320, intermediate_size=1280, num_hidden_layers=8,
                num_attention_heads=4, max_position_embeddings=1024, partial_rotary_factor=0.4)
PHI2_WIDTH = dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240,
                  num_attention_heads=32, max_position_embeddings=2048, partial_rotary_factor=0.4)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="phi-tiny and phi-2 width with 2 layers only, 128-token prompts, "
                        "32 decode steps, 3 repeats")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens for prefill")
    p.add_argument("--new-tokens", type=int, default=64, help="greedy decode steps timed")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both models")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of both models in the speed tests (default float32)")
    p.add_argument("--phi2-layers", type=int, nargs="*", default=[2, 4],
                   help="layer counts of the random phi-2-width models in the speed tests, after "
                        "phi-tiny (default 2 4; none: phi-tiny only)")
    p.add_argument("--load-layers", type=int, default=4,
                   help="layers of the phi-2-width checkpoint for the load-memory test")
    p.add_argument("--load-dtype", default="fp16", choices=["fp16", "bf16", "fp32"],
                   help="dtype of that checkpoint on disk; it is loaded both as this dtype and as fp32")
    p.add_argument("--load-shard", default="50GB",
                   help="max shard size when writing it (default: one model.safetensors file)")
    p.add_argument("--skip-speed", action="store_true", help="only the load-memory test")
    p.add_argument("--skip-load", action="store_true", help="only the speed tests")
    p.add_argument("--workdir", default=None,
                   help="where to write the checkpoints (default: a temporary directory, removed after)")
    p.add_argument("--measure-load", nargs=3, metavar=("LOADER", "CKPT", "DTYPE"),
                   help=argparse.SUPPRESS)   # internal: the child process of the memory test
    return p.parse_args()


def write_checkpoint(path, cfg, dtype, shard="50GB"):
    """A random transformers PhiForCausalLM saved with save_pretrained, and a
    one-token tokenizer.json (model.load wants one; speed tests feed ids)."""
    from tokenizers import Tokenizer, models
    from transformers import PhiConfig, PhiForCausalLM
    torch.manual_seed(0)
    hf = PhiForCausalLM(PhiConfig(**cfg, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0))
    hf.to(dtype).save_pretrained(path, max_shard_size=shard)
    del hf
    Tokenizer(models.WordLevel({M.EOT: 0}, unk_token=M.EOT)).save(os.path.join(path, "tokenizer.json"))


def load_average():
    """The 1-minute load average: above ~0.5, something else shares the CPU."""
    try:
        return f"load average {open('/proc/loadavg').read().split()[0]}"
    except OSError:
        return "load average unknown"


def sync():
    """Wait for the GPU's queued work, so that wall time measures it (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_times(fns, repeats):
    """{name: median seconds} for each zero-argument fn; one warm-up each, then
    the fns take turns, so drift in machine speed is shared."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_speed(name, cfg, ckpt, args):
    from transformers import PhiForCausalLM
    print(f"\n[{name}] writing a random checkpoint to {ckpt}", flush=True)
    write_checkpoint(ckpt, cfg, torch.float32)
    dtype = M.DTYPES[args.dtype]
    ours, _ = M.load(ckpt, dtype=dtype, device=args.device, verbose=False)
    hf = PhiForCausalLM.from_pretrained(ckpt, dtype=dtype).to(args.device).eval()
    shutil.rmtree(ckpt)                               # both hold their own copy now
    hf.generation_config.eos_token_id = None          # always run all the steps
    L, N = args.prompt_len, args.new_tokens
    prompt = torch.randint(1, cfg["vocab_size"], (1, L), generator=torch.Generator().manual_seed(0))
    ids = prompt[0].tolist()
    prompt = prompt.to(args.device)
    mask = torch.ones_like(prompt)

    def run_ours(n):
        return M.generate(ours, [ids], n)[0]

    def run_hf(n):
        with torch.no_grad():
            out = hf.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)
        return out[0, L:].tolist()

    a, b = run_ours(1 + N), run_hf(1 + N)
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    print(f"[{name}] {ours.num_params() / 1e6:.0f}M parameters; greedy tokens agree on "
          f"{same}/{len(a)}", flush=True)
    print(f"[{name}] prefill: generate {L} prompt tokens -> 1 new token, "
          f"{args.repeats} repeats", flush=True)
    t1 = median_times({"ours": lambda: run_ours(1), "hf": lambda: run_hf(1)}, args.repeats)
    print(f"[{name}] decode: generate {L} prompt tokens -> {1 + N} new tokens, "
          f"{args.repeats} repeats", flush=True)
    tN = median_times({"ours": lambda: run_ours(1 + N), "hf": lambda: run_hf(1 + N)}, args.repeats)
    row = {"config": name, "params": ours.num_params(), "same": f"{same}/{len(a)}"}
    for k in ("ours", "hf"):
        row[f"prefill_{k}"] = L / t1[k]
        row[f"decode_{k}"] = N / max(tN[k] - t1[k], 1e-9)
    print(f"[{name}] prefill tok/s ours {row['prefill_ours']:.0f}, transformers {row['prefill_hf']:.0f}; "
          f"decode tok/s ours {row['decode_ours']:.1f}, transformers {row['decode_hf']:.1f}", flush=True)
    del ours, hf
    return row


def peak_rss():
    """Peak resident memory of this process in bytes (VmHWM). Not getrusage's
    ru_maxrss: on Linux that survives fork+exec, so a child would report the
    parent's peak (here: the parent that just wrote the checkpoint)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib * 1024


def measure_load(loader, ckpt, dtype):
    """Child process: load ckpt with one loader; print peak RSS as JSON, before the
    load, after it, and after reading every weight once (a loader may hand back
    tensors that still point into the memory-mapped file: those pages count only
    once they are read, as they will be by the first forward pass)."""
    if loader == "transformers":
        from transformers import PhiForCausalLM
    before = peak_rss()
    t0 = time.perf_counter()
    if loader == "ours":
        model, _ = M.load(ckpt, dtype=dtype, verbose=False)
    else:
        model = PhiForCausalLM.from_pretrained(ckpt, dtype=dtype)
    seconds = time.perf_counter() - t0
    loaded = peak_rss()
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
    touched = peak_rss()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"before": before, "loaded": loaded, "touched": touched,
                      "weights": weights, "seconds": seconds}))


def bench_load(ckpt, args):
    dtype = M.DTYPES[args.load_dtype]
    cfg = dict(PHI2_WIDTH, num_hidden_layers=args.load_layers)
    print(f"\n[load] writing a phi-2-width, {args.load_layers}-layer {args.load_dtype} "
          f"checkpoint to {ckpt}", flush=True)
    write_checkpoint(ckpt, cfg, dtype, shard=args.load_shard)
    on_disk = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt)
                  if f.endswith(".safetensors"))
    if on_disk < 1e9:
        print(f"[load] warning: only {on_disk / 1e9:.2f} GB of weights; use more --load-layers")
    rows = []
    for as_dtype in dict.fromkeys([args.load_dtype, "fp32"]):
        for loader in ("ours", "transformers"):
            print(f"[load] {loader}: peak RSS of loading {on_disk / 1e9:.2f} GB ({args.load_dtype}) "
                  f"as {as_dtype}, in a fresh process", flush=True)
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
                                  "--measure-load", loader, ckpt, as_dtype],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(loader=loader, dtype=as_dtype)
            rows.append(r)
    return rows


def print_tables(speed, load, args):
    if speed:
        print(f"\n### Speed: batch 1, {args.dtype}, {args.device}, {args.threads} threads, "
              f"prompt {args.prompt_len} tokens, "
              f"{args.new_tokens} greedy decode steps, median of {args.repeats}\n")
        print("| config | params | prefill tok/s ours | transformers | ours/tf "
              "| decode tok/s ours | transformers | ours/tf | same tokens |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in speed:
            print(f"| {r['config']} | {r['params'] / 1e6:.0f}M "
                  f"| {r['prefill_ours']:.0f} | {r['prefill_hf']:.0f} | {r['prefill_ours'] / r['prefill_hf']:.2f}x "
                  f"| {r['decode_ours']:.1f} | {r['decode_hf']:.1f} | {r['decode_ours'] / r['decode_hf']:.2f}x "
                  f"| {r['same']} |")
    if load:
        print(f"\n### Load: phi-2 width, {args.load_layers} layers, {args.load_dtype} on disk, "
              f"fresh process each, peak RSS = VmHWM\n")
        print("| loader | loaded as | weights GB | seconds | peak RSS before load GB | after load GB "
              "| after reading all weights GB | (peak - before) / weights | peak / weights |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in load:
            w = r["weights"]
            print(f"| {r['loader']} | {r['dtype']} | {w / 1e9:.2f} | {r['seconds']:.1f} | {r['before'] / 1e9:.2f} "
                  f"| {r['loaded'] / 1e9:.2f} | {r['touched'] / 1e9:.2f} "
                  f"| {(r['touched'] - r['before']) / w:.2f}x | {r['touched'] / w:.2f}x |")


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.measure_load:
        loader, ckpt, dtype = args.measure_load
        measure_load(loader, ckpt, M.DTYPES[dtype])
        return
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.quick:
        args.phi2_layers = args.phi2_layers[:1]
        args.prompt_len, args.new_tokens, args.repeats = 128, 32, 3
    configs = [("phi-tiny", PHI_TINY)] + [(f"phi-2 width, {n} layers", dict(PHI2_WIDTH, num_hidden_layers=n))
                                          for n in args.phi2_layers]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} threads, {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        speed = [] if args.skip_speed else [
            bench_speed(name, cfg, os.path.join(work, f"speed{i}"), args)
            for i, (name, cfg) in enumerate(configs)]
        load = [] if args.skip_load else bench_load(os.path.join(work, "load"), args)
    print_tables(speed, load, args)
    print(f"\n{load_average()} at the end (timings are only clean on an otherwise idle machine)")


if __name__ == "__main__":
    main()
