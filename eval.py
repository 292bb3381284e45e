"""
Few-shot evaluation of a phi checkpoint on LiLA math questions, per skill.

    python eval.py --shots 4                         # phi-tiny on the generated test split
    python eval.py --model /path/to/phi-2 --data /path/to/lila --limit 100 --json out/eval.json
    python eval.py --adapter out/experts/algebra     # base + one LoRA expert, merged
    python eval.py --forgetting out/experts          # every expert on every skill, minus base

For every question: k solved questions of the same skill from the train split,
then the question (data/prompts.py); greedy decoding with the KV cache, batched,
stopping at the first newline (model.py); exact match after normalisation
(data/score.py). The result is a markdown table of accuracy per skill and per
submodule, and optionally a JSON file with every prediction.

An expert (--adapter) is merged into the base weights before evaluation, so it
costs nothing at inference. The forgetting matrix (--forgetting) evaluates every
expert on every skill and subtracts the base model's accuracy: the diagonal is
what an expert gains on its own skill, the rest is what fine-tuning on one skill
does to the others ("catastrophic forgetting" when negative).

Reference: the conventions of lm-evaluation-harness for generative QA
(few-shot "Question:/Answer:" prompts, greedy, stop at newline, exact match).

Left out: log-likelihood (multiple-choice) scoring, chain-of-thought, and
sampling-based metrics such as pass@k.
"""
import argparse
import json
import os
import random
import time
from collections import defaultdict

import torch
from tqdm import tqdm

import lora
import model as M
from data.lila import by_skill, load as load_examples
from data.prompts import few_shot_prompt
from data.score import is_correct

DEFAULT_MODEL = "checkpoints/phi-tiny"
DEFAULT_DATA = "data/lila"


def select(examples, limit, seed):
    """At most `limit` questions per skill: a seeded shuffle, then the first ones,
    so every submodule of a skill is represented in proportion."""
    if limit is None:
        return examples
    rng = random.Random(seed)
    out = []
    for skill, group in by_skill(examples).items():
        group = list(group)
        rng.shuffle(group)
        out += group[:limit]
    return out


@torch.no_grad()
def evaluate(model, tok, examples, pool, shots=4, batch_size=32, seed=1234,
             max_new_tokens=32, desc="eval"):
    """Answer every example k-shot; return one record per example (input order).

    Prompts are sorted by length before batching, so a batch holds prompts of
    similar length and little compute goes to padding. A prompt too long for the
    model keeps its last tokens (the oldest shots are cut)."""
    pool = by_skill(pool) if isinstance(pool, list) else pool
    limit = model.config.max_position_embeddings - max_new_tokens
    prompts = [few_shot_prompt(e, pool, shots, seed) if shots else f"Question: {e.question}\nAnswer:"
               for e in examples]
    ids = [tok.encode(p).ids[-limit:] for p in prompts]
    order = sorted(range(len(examples)), key=lambda i: len(ids[i]))
    eot, newline = tok.token_to_id(M.EOT), "\n"
    predictions = [None] * len(examples)
    bar = tqdm(total=len(examples), desc=desc, unit="q", leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        new = M.generate(model, [ids[i] for i in chunk], max_new_tokens, eos_id=eot,
                         stop_fn=lambda n: newline in tok.decode(n))
        for i, n in zip(chunk, new):
            predictions[i] = tok.decode(n).split(newline)[0].strip()
        bar.update(len(chunk))
    bar.close()
    return [{"question": e.question, "prediction": p, "answers": list(e.answers),
             "skill": e.skill, "submodule": e.submodule, "correct": is_correct(p, e.answers)}
            for e, p in zip(examples, predictions)]


def accuracy(records, key="skill"):
    """{group: (correct, total)} by skill or submodule, plus 'mean' over groups."""
    counts = defaultdict(lambda: [0, 0])
    for r in records:
        counts[r[key]][0] += r["correct"]
        counts[r[key]][1] += 1
    table = {k: tuple(v) for k, v in sorted(counts.items())}
    return table


def mean_accuracy(records):
    """Unweighted mean over skills of the per-skill accuracy."""
    table = accuracy(records)
    return sum(c / n for c, n in table.values()) / max(len(table), 1)


def markdown(records, title):
    lines = [f"### {title}", "", "| skill | submodule | correct | total | accuracy |",
             "|---|---|---:|---:|---:|"]
    subs = accuracy(records, "submodule")
    for skill, (c, n) in accuracy(records).items():
        lines.append(f"| **{skill}** | (all) | {c} | {n} | **{100 * c / n:.1f}%** |")
        for sub, (sc, sn) in subs.items():
            if sub.split("__")[0] == skill and sub != skill:
                lines.append(f"| | {sub.split('__', 1)[-1]} | {sc} | {sn} | {100 * sc / sn:.1f}% |")
    lines.append(f"| **mean over skills** | | | {len(records)} | **{100 * mean_accuracy(records):.1f}%** |")
    return "\n".join(lines)


def expert_dirs(root):
    """{name: dir} of the adapter directories directly under root."""
    found = {d: os.path.join(root, d) for d in sorted(os.listdir(root))
             if os.path.exists(os.path.join(root, d, lora.CONFIG_NAME))}
    if not found:
        raise FileNotFoundError(f"{root}: no adapter directories (with {lora.CONFIG_NAME}) inside")
    return found


def forgetting(model, tok, examples, pool, args):
    """Accuracy of base and of each expert (merged, then removed) on every skill;
    writes forgetting.md/.json/.png under args.out. Returns the JSON dict."""
    run = lambda desc: accuracy(evaluate(model, tok, examples, pool, args.shots, args.batch_size,
                                         args.seed, args.max_new_tokens, desc=desc))
    base = {k: c / n for k, (c, n) in run("base").items()}
    skills = list(base)
    acc = {}
    for name, path in expert_dirs(args.forgetting).items():
        lora.load_adapter(model, path)
        lora.merge_lora(model)
        acc[name] = {k: c / n for k, (c, n) in run(name).items()}
        lora.remove_lora(model, merge=False)          # back to the base weights
    delta = {e: {s: acc[e][s] - base[s] for s in skills} for e in acc}
    lines = ["### Forgetting: expert accuracy minus base accuracy (points), "
             f"{args.shots}-shot, {args.split} split", "",
             "| expert \\ skill | " + " | ".join(skills) + " | mean |",
             "|---|" + "---:|" * (len(skills) + 1),
             "| *base accuracy* | " + " | ".join(f"{100 * base[s]:.1f}" for s in skills)
             + f" | {100 * sum(base.values()) / len(skills):.1f} |"]
    for e in acc:
        row = [f"**{100 * delta[e][s]:+.1f}**" if s == e else f"{100 * delta[e][s]:+.1f}" for s in skills]
        lines.append(f"| {e} | " + " | ".join(row) + f" | {100 * sum(delta[e].values()) / len(skills):+.1f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    report = {"skills": skills, "base": base, "accuracy": acc, "delta": delta}
    with open(os.path.join(args.out, "forgetting.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "forgetting.json"), "w") as f:
        json.dump(report, f, indent=1)
    heatmap([[100 * delta[e][s] for s in skills] for e in acc], list(acc), skills,
            "expert accuracy - base accuracy (points)", os.path.join(args.out, "forgetting.png"))
    return report


def heatmap(values, rows, cols, title, path):
    """A PNG heatmap (matplotlib is optional: without it, say so and go on)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping {path}")
        return
    fig, ax = plt.subplots(figsize=(1 + 0.9 * len(cols), 1 + 0.5 * len(rows)))
    lim = max(1e-9, max(abs(v) for row in values for v in row))
    im = ax.imshow(values, cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:+.0f}", ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main():
    p = argparse.ArgumentParser(description="Few-shot evaluation of a phi checkpoint on LiLA math questions.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF-layout phi checkpoint directory")
    p.add_argument("--data", default=DEFAULT_DATA, help="LiLA task file(s) or directory")
    p.add_argument("--shots", type=int, default=4, help="solved examples in each prompt (0 = zero-shot)")
    p.add_argument("--skills", default=None, help="comma-separated skills (default: all in the data)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"], help="split to evaluate")
    p.add_argument("--limit", type=int, default=None, help="at most this many questions per skill")
    p.add_argument("--batch-size", type=int, default=32, help="questions decoded together")
    p.add_argument("--seed", type=int, default=1234, help="seed for shot selection and --limit")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer generated")
    p.add_argument("--dtype", default="float32", choices=sorted(M.DTYPES), help="model dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--json", default=None, help="write accuracies and every prediction to this JSON file")
    p.add_argument("--adapter", default=None, help="a LoRA expert (PEFT layout) merged into the base")
    p.add_argument("--forgetting", default=None, metavar="DIR_OF_EXPERTS",
                   help="evaluate every expert under this directory on every skill (forgetting matrix)")
    p.add_argument("--out", default="out/forgetting", help="where --forgetting writes .md/.json/.png")
    args = p.parse_args()

    skills = args.skills.split(",") if args.skills else None
    model, tok = M.load(args.model, dtype=args.dtype, device=args.device)
    examples = select(load_examples(args.data, split=args.split, skills=skills), args.limit, args.seed)
    pool = load_examples(args.data, split="train", skills=skills) if args.shots else []
    print(f"evaluating {len(examples)} {args.split} questions, {args.shots}-shot")
    if args.forgetting:
        forgetting(model, tok, examples, pool, args)
        return
    if args.adapter:
        lora.load_adapter(model, args.adapter)
        lora.merge_lora(model)
        print(f"merged the adapter {args.adapter} into the base weights")
    t0 = time.time()
    records = evaluate(model, tok, examples, pool, args.shots, args.batch_size, args.seed,
                       args.max_new_tokens)
    seconds = time.time() - t0
    name = os.path.basename(os.path.normpath(args.adapter or args.model))
    title = f"{name}, {args.shots}-shot, {args.split} split"
    print(markdown(records, title))
    print(f"\n{len(records)} questions in {seconds:.1f}s ({len(records) / seconds:.1f} questions/s)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        report = {"model": args.model, "shots": args.shots, "split": args.split,
                  "accuracy": {k: c / n for k, (c, n) in accuracy(records).items()},
                  "counts": {k: {"correct": c, "total": n} for k, (c, n) in accuracy(records).items()},
                  "mean_accuracy": mean_accuracy(records), "records": records}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
