"""
Few-shot evaluation of a phi checkpoint on LiLA math questions, per skill.

    python eval.py --shots 4                         # phi-tiny on the generated test split
    python eval.py --model /path/to/phi-2 --data /path/to/lila --limit 100 --json out/eval.json
    python eval.py --adapter out/experts/algebra     # base + one LoRA expert, merged
    python eval.py --json base.json; python eval.py --adapter out/experts/algebra --paired base.json
    python eval.py --forgetting out/experts          # every expert on every skill, minus base
    python eval.py --study out --data /path/to/lila  # every configuration of the study, one table
    python eval.py --moe out/routers/centroid-token --route "algebra=0.7,arithmetic=0.3"   # steered
    python eval.py --explain "Solve 3*y - 1 = -13 for y."                                 # explained

For every question: k solved questions of the same skill from the train split,
then the question (data/prompts.py); greedy decoding with the KV cache, batched,
stopping at the first newline (model.py); exact match after normalisation
(data/score.py). The result is a markdown table of accuracy per skill and per
submodule, and optionally a JSON file with every prediction.

The routed mixture (--moe) is evaluated here too; steering (--route) and the
explanation of one question (--explain) live in explain.py.

An expert (--adapter) is merged into the base weights before evaluation, so it
costs nothing at inference. The forgetting matrix (--forgetting) evaluates every
expert on every skill and subtracts the base model's accuracy: the diagonal is
what an expert gains on its own skill, the rest is what fine-tuning on one skill
does to the others ("catastrophic forgetting" when negative).

Differences of a few questions are common between experts and the base, so
--paired (and --forgetting, on each expert's own skill) compares two runs
question by question: wins, losses, and an exact sign test on them.

Reference: the conventions of lm-evaluation-harness for generative QA
(few-shot "Question:/Answer:" prompts, greedy, stop at newline, exact match).

Left out: log-likelihood (multiple-choice) scoring, chain-of-thought, and
sampling-based metrics such as pass@k.
"""
import argparse
import glob
import json
import math
import os
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import explain
import lora
import model as M
import router as R
from data.cli import Parser, nonempty, nonneg_int, positive_int, run, writable_file
from data.lila import by_skill, load as load_examples
from data.prompts import draw_shots, prompt_ids, select
from data.score import is_correct

DEFAULT_MODEL = "checkpoints/phi-tiny"
DEFAULT_DATA = "data/lila"
SHIPPED = "checkpoints/phi-tiny-moe"     # experts, router and clusters for phi-tiny, in the repository


def encode(tok, example, pool, shots, seed, context, max_new_tokens):
    """(prompt ids, gold answer ids) of one question, by data.prompts.prompt_ids,
    the function that builds train.py's rows too. A prompt that leaves less than
    max_new_tokens of the context free loses its oldest shots, one at a time; with
    none left, the gold answer must still fit (generation stops at the context)."""
    solved = [(s.question, s.answers[0]) for s in draw_shots(example, pool, shots, seed)]
    while True:
        prompt, gold = prompt_ids(tok, solved, example.question, example.answers[0])
        if len(prompt) + max(max_new_tokens, len(gold)) <= context:
            return prompt, gold
        if not solved:
            if len(prompt) + len(gold) <= context:
                return prompt, gold
            raise ValueError(f"a {example.skill} question of {len(prompt)} tokens and its "
                             f"{len(gold)}-token answer do not fit the model's {context}-token "
                             f"context: {example.question[:60]!r}...")
        solved = solved[1:]


@torch.no_grad()
def answer_nll(model, prompts, answers):
    """Mean negative log-likelihood per token (nats) of each gold answer after its
    prompt, by teacher forcing: a continuous score that still moves when a weak
    model gets almost nothing exactly right. prompts and answers are token-id
    lists; the batch is right-padded, so causal attention never sees the padding."""
    seqs = [p + a for p, a in zip(prompts, answers)]
    device = model.lm_head.weight.device
    idx = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    for r, s in enumerate(seqs):
        idx[r, :len(s)] = torch.tensor(s)
    logits = model(idx.to(device))                                      # (B, T, V)
    out = []
    for r, (p, a) in enumerate(zip(prompts, answers)):
        pred = logits[r, len(p) - 1:len(p) + len(a) - 1].float()      # (len(a), V): the positions before each answer token
        out.append(F.cross_entropy(pred, torch.tensor(a, device=device)).item())
    return out


@torch.no_grad()
def evaluate(model, tok, examples, pool, shots=4, batch_size=32, seed=1234,
             max_new_tokens=32, desc="eval", on_batch=None):
    """Answer every example k-shot; return one record per example (input order).
    on_batch(indices), if given, runs before each batch is generated (the router
    sets its task-level weights there); it may return after(j), called once the
    batch is generated, giving a dict of extra fields for the batch's row j.

    Prompts are sorted by length before batching, so a batch holds prompts of
    similar length and little compute goes to padding."""
    pool = by_skill(pool) if isinstance(pool, list) else pool
    ids, gold = zip(*(encode(tok, e, pool, shots, seed, model.config.max_position_embeddings,
                             max_new_tokens) for e in examples))
    order = sorted(range(len(examples)), key=lambda i: len(ids[i]))
    eot, newline = tok.token_to_id(M.EOT), "\n"
    predictions, extra = [None] * len(examples), [{} for _ in examples]
    nll = [None] * len(examples)
    bar = tqdm(total=len(examples), desc=desc, unit="q", leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        after = on_batch(chunk) if on_batch else None
        new = M.generate(model, [ids[i] for i in chunk], max_new_tokens, eos_id=eot,
                         stop_fn=lambda n: newline in tok.decode(n), n_tokens=tok.get_vocab_size())
        for j, (i, n) in enumerate(zip(chunk, new)):
            predictions[i] = tok.decode(n).split(newline)[0].strip()
            if after:
                extra[i] = after(j)
        for i, v in zip(chunk, answer_nll(model, [ids[i] for i in chunk], [gold[i] for i in chunk])):
            nll[i] = v
        bar.update(len(chunk))
    bar.close()
    return [{"question": e.question, "prediction": p, "answers": list(e.answers),
             "skill": e.skill, "submodule": e.submodule, "correct": is_correct(p, e.answers),
             "answer_nll": v, **x}
            for e, p, x, v in zip(examples, predictions, extra, nll)]


def accuracy(records, key="skill"):
    """{group: (correct, total)} by skill or submodule."""
    counts = defaultdict(lambda: [0, 0])
    for r in records:
        counts[r[key]][0] += r["correct"]
        counts[r[key]][1] += 1
    return {k: tuple(v) for k, v in sorted(counts.items())}


def answer_nlls(records):
    """{skill: mean answer NLL}."""
    per = defaultdict(list)
    for r in records:
        per[r["skill"]].append(r["answer_nll"])
    return {k: sum(v) / len(v) for k, v in sorted(per.items())}


def mean_accuracy(records):
    """Unweighted mean over skills of the per-skill accuracy."""
    table = accuracy(records)
    return sum(c / n for c, n in table.values()) / max(len(table), 1)


def sign_test(wins, losses):
    """Two-sided exact sign test on paired answers: if two models were equally
    good, each question that only one of them gets right is a fair coin. The
    p-value is the chance of a split at least as uneven as wins : losses.
    Worked example: 9 wins, 1 loss -> 2 * (C(10,0) + C(10,1)) / 2**10 = 0.021."""
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(base_records, records):
    """Question-by-question comparison per skill, over the questions in both:
    {skill: {"questions", "base", "model", "wins", "losses", "p"}}. base and model
    count correct answers; wins are questions only the model gets right, losses
    the reverse; p is sign_test(wins, losses)."""
    base = {(r["skill"], r["question"]): r["correct"] for r in base_records}
    pairs = defaultdict(list)                      # skill -> [(base correct, model correct)]
    for r in records:
        if (r["skill"], r["question"]) in base:
            pairs[r["skill"]].append((base[r["skill"], r["question"]], r["correct"]))
    table = {}
    for skill, ab in sorted(pairs.items()):
        wins, losses = sum(m and not b for b, m in ab), sum(b and not m for b, m in ab)
        table[skill] = {"questions": len(ab), "base": sum(b for b, _ in ab), "model": sum(m for _, m in ab),
                        "wins": wins, "losses": losses, "p": sign_test(wins, losses)}
    return table


def read_records(path):
    """The records of an earlier `eval.py --json` run, with a clear error if the
    file is not one."""
    try:
        with open(path) as f:
            records = json.load(f)["records"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected the JSON that `eval.py --json` writes, with a "
                         f"'records' list ({type(e).__name__}: {e})") from None
    return records


def paired_markdown(table, title, row_name="skill"):
    lines = [f"### {title}", "", f"| {row_name} | questions | base correct | correct | wins | losses "
             "| sign-test p |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, t in table.items():
        lines.append(f"| {name} | {t['questions']} | {t['base']} | {t['model']} | {t['wins']} "
                     f"| {t['losses']} | {t['p']:.2g} |")
    return "\n".join(lines)


def markdown(records, title):
    lines = [f"### {title}", "", "| skill | submodule | correct | total | accuracy | answer NLL |",
             "|---|---|---:|---:|---:|---:|"]
    subs, nll = accuracy(records, "submodule"), answer_nlls(records)
    for skill, (c, n) in accuracy(records).items():
        lines.append(f"| **{skill}** | (all) | {c} | {n} | **{100 * c / n:.1f}%** | {nll[skill]:.3f} |")
        for sub, (sc, sn) in subs.items():
            if sub.split("__")[0] == skill and sub != skill:
                lines.append(f"| | {sub.split('__', 1)[-1]} | {sc} | {sn} | {100 * sc / sn:.1f}% | |")
    lines.append(f"| **mean over skills** | | | {len(records)} | **{100 * mean_accuracy(records):.1f}%** "
                 f"| {sum(nll.values()) / len(nll):.3f} |")
    return "\n".join(lines)


def with_adapter(model, path, run):
    """run() with the LoRA adapter at `path` merged into the weights (zero overhead);
    the base weights are restored afterwards. Returns what run() returns."""
    lora.load_adapter(model, path)
    lora.merge_lora(model)
    try:
        return run()
    finally:
        lora.remove_lora(model, merge=False)


def forgetting(model, tok, examples, pool, args):
    """Accuracy of base and of each expert (merged, then removed) on every skill;
    writes forgetting.md/.json/.png under args.out. Returns the JSON dict."""
    def run(desc):
        return evaluate(model, tok, examples, pool, args.shots, args.batch_size, args.seed,
                        args.max_new_tokens, desc=desc)

    def scores(records):
        return {k: c / n for k, (c, n) in accuracy(records).items()}, answer_nlls(records)
    base_records = run("base")
    base, base_nll = scores(base_records)
    skills = list(base)
    acc, nll, own = {}, {}, {}
    for name, path in R.expert_dirs(args.forgetting).items():
        records = with_adapter(model, path, lambda: run(name))
        acc[name], nll[name] = scores(records)
        if name in skills:   # an expert named after a skill: is it better there, question by question?
            own[name] = paired(base_records, records)[name]
    delta = {e: {s: acc[e][s] - base[s] for s in skills} for e in acc}
    nll_delta = {e: {s: nll[e][s] - base_nll[s] for s in skills} for e in nll}
    lines = ["### Forgetting: expert accuracy minus base accuracy (points), "
             f"{args.shots}-shot, {args.split} split", "",
             "| expert \\ skill | " + " | ".join(skills) + " | mean |",
             "|---|" + "---:|" * (len(skills) + 1),
             "| *base accuracy* | " + " | ".join(f"{100 * base[s]:.1f}" for s in skills)
             + f" | {100 * sum(base.values()) / len(skills):.1f} |"]
    for e in acc:
        row = [f"**{100 * delta[e][s]:+.1f}**" if s == e else f"{100 * delta[e][s]:+.1f}" for s in skills]
        lines.append(f"| {e} | " + " | ".join(row) + f" | {100 * sum(delta[e].values()) / len(skills):+.1f} |")
    lines += ["", "### Forgetting in answer NLL: expert minus base (nats per answer token; "
              "negative = the expert is better)", "",
              "| expert \\ skill | " + " | ".join(skills) + " | mean |", "|---|" + "---:|" * (len(skills) + 1),
              "| *base NLL* | " + " | ".join(f"{base_nll[s]:.3f}" for s in skills)
              + f" | {sum(base_nll.values()) / len(skills):.3f} |"]
    for e in nll:
        row = [f"**{nll_delta[e][s]:+.3f}**" if s == e else f"{nll_delta[e][s]:+.3f}" for s in skills]
        lines.append(f"| {e} | " + " | ".join(row) + f" | {sum(nll_delta[e].values()) / len(skills):+.3f} |")
    if own:
        lines += ["", paired_markdown(own, "Each expert on its own skill, question by question "
                                      "(wins: only the expert is right; losses: only the base)", "expert")]
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    report = {"skills": skills, "base": base, "accuracy": acc, "delta": delta,
              "base_nll": base_nll, "nll": nll, "nll_delta": nll_delta, "own_skill": own}
    with open(os.path.join(args.out, "forgetting.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "forgetting.json"), "w") as f:
        json.dump(report, f, indent=1)
    heatmap([[100 * delta[e][s] for s in skills] for e in acc], list(acc), skills,
            "expert accuracy - base accuracy (points)", os.path.join(args.out, "forgetting.png"))
    heatmap([[-nll_delta[e][s] for s in skills] for e in nll], list(nll), skills,
            "base answer NLL - expert answer NLL (nats; > 0: expert better)",
            os.path.join(args.out, "forgetting_nll.png"), fmt="{:+.2f}")
    return report


def heatmap(values, rows, cols, title, path, fmt="{:+.0f}", diverging=True):
    """A PNG heatmap (matplotlib is optional: without it, say so and go on).
    diverging: red/blue around 0 (differences); else one colour from 0 (weights)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping {path}")
        return
    fig, ax = plt.subplots(figsize=(1 + 0.9 * len(cols), 1 + 0.5 * len(rows)))
    lim = max(1e-9, max(abs(v) for row in values for v in row))
    im = ax.imshow(values, cmap="RdBu" if diverging else "Blues", vmin=-lim if diverging else 0, vmax=lim)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def moe(model, tok, examples, pool, args):
    """Evaluate base + experts + router (--moe DIR). Variants (--variant):
    full      the two-level router: task prior mixed with the per-layer grouped gate
    task-soft the task-level prior alone, as fixed expert weights per question
    task-hard each question's top task-level expert, merged into the weights
    Records get a `routing` field: per layer, the expert and group weights at
    the positions that produced the answer (full), or the task weights."""
    router = R.load_router(args.moe, model)          # rank-1 experts come inside the router
    cfg = router.cfg
    if cfg.rank1 and args.variant != "full":
        raise ValueError(f"{args.moe} holds rank-1 experts without a task prior: only --variant full")
    if not cfg.rank1:
        dirs = R.expert_dirs(args.experts or cfg.extra["experts_dir"])
        if list(dirs) != cfg.experts:
            raise ValueError(f"{args.moe} routes over {cfg.experts}, but the experts found are {list(dirs)}")
    priors, forced = None, None
    if args.route:                     # steering: the user's weights replace the task level
        if cfg.rank1 or cfg.prior == "none":
            raise ValueError(f"--route: {args.moe} has no task level to replace (rank-1 experts or --prior none)")
        route = explain.parse_route(args.route, cfg)
        priors, forced = route.expand(len(examples), -1), explain.forced_expert(route)   # (N, E)
        print(f"--route {args.route}: expert weights {dict(zip(cfg.experts, route.tolist()))}")
    elif cfg.prior != "none" or args.variant != "full":
        X = R.meta_embeddings(examples, model, tok, cfg.embed_layer)
        priors = router.task.prior(X)                                    # (N, E)
    M_ = router.M
    if args.variant == "task-hard" or forced is not None:   # one expert per question, merged
        records = [None] * len(examples)
        top = priors.argmax(-1).tolist()
        for e, path in enumerate(dirs.values()):
            idx = [i for i, t in enumerate(top) if t == e]
            if not idx:
                continue
            chosen = with_adapter(model, path, lambda: evaluate(
                model, tok, [examples[i] for i in idx], pool, args.shots, args.batch_size, args.seed,
                args.max_new_tokens, desc=cfg.experts[e]))
            for i, r in zip(idx, chosen):
                r["routing"] = {"expert": cfg.experts[e], "prior": priors[i].tolist()}
                records[i] = r
        return records, router
    if not cfg.rank1:
        lora.load_experts(model, list(dirs.values()))
    if args.variant == "full":
        router.to(args.device).attach(model).eval()

    def on_batch(idx):
        p = None if priors is None else priors[idx].to(args.device)
        if args.variant == "task-soft":
            lora.set_expert_weights(model, p)
            return lambda j: {"routing": {"prior": priors[idx[j]].tolist()}}
        router.set_prior(p if cfg.prior != "none" else None)
        router.trace = []
        summary = {}

        def after(j):
            if "w" not in summary:
                summary["w"] = R.trace_summary(router.trace, cfg.n_layers, len(idx))   # (B, L, E)
                router.trace = None
            w = summary["w"][j]
            return {"routing": {"experts": w.tolist(), "groups": (w @ M_).tolist(),
                                "prior": None if priors is None else priors[idx[j]].tolist()}}
        return after

    records = evaluate(model, tok, examples, pool, args.shots, args.batch_size, args.seed,
                       args.max_new_tokens, desc=f"moe ({args.variant})", on_batch=on_batch)
    return records, router


def routing_report(records, router, out_dir):
    """Per skill: mean expert and group weights per layer -> routing.json and a
    heatmap PNG per skill (layers x experts)."""
    cfg = router.cfg
    os.makedirs(out_dir, exist_ok=True)
    report = {"experts": cfg.experts, "groups": R.group_names(cfg), "per_skill": {}}
    for skill in sorted({r["skill"] for r in records}):
        rs = [r["routing"] for r in records if r["skill"] == skill and "experts" in r["routing"]]
        if not rs:
            continue
        experts = np.mean([r["experts"] for r in rs], axis=0)             # (L, E)
        groups = np.mean([r["groups"] for r in rs], axis=0)               # (L, G)
        per_question = [np.mean(r["groups"], 0) for r in rs]               # (G,) each: mean over layers
        report["per_skill"][skill] = {
            "experts": experts.tolist(), "groups": groups.tolist(), "questions": len(rs),
            "group_entropy": float(np.mean([R.entropy(g) for g in per_question])),
            "groups_above_10pct": float(np.mean([(g > 0.1).sum() for g in per_question]))}
        heatmap(experts.tolist(), [f"layer {l}" for l in range(len(experts))], cfg.experts,
                f"{skill}: mean expert weight per layer", os.path.join(out_dir, f"routing_{skill}.png"),
                fmt="{:.2f}", diverging=False)
    with open(os.path.join(out_dir, "routing.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out_dir}/routing.json")
    return report


def study(model, tok, examples, pool, args):
    """Every configuration of a study directory (experiment.sh's OUT) on the same
    questions, in one call: base 0-shot and k-shot, the mixed LoRA, each skill's
    expert on its own skill, and every router under OUT/routers (two-level, and
    the task level alone, soft and hard). Writes one table (markdown + JSON)."""
    root, table, nlls = args.study, {}, {}

    def run(label, records):
        table[label] = {k: c / n for k, (c, n) in accuracy(records).items()}
        nlls[label] = answer_nlls(records)
        print(f"{label}: mean {100 * mean_accuracy(records):.1f}%")

    ev = lambda shots, desc, exs=examples: evaluate(model, tok, exs, pool, shots, args.batch_size, args.seed,
                                                    args.max_new_tokens, desc=desc)
    run("base, 0-shot", ev(0, "base 0-shot"))
    run(f"base, {args.shots}-shot", ev(args.shots, "base"))
    merged = lambda path, exs: with_adapter(model, path, lambda: ev(args.shots, os.path.basename(path), exs))
    mixed = os.path.join(root, "mixed")
    if os.path.exists(os.path.join(mixed, lora.CONFIG_NAME)):
        run("mixed LoRA", merged(mixed, examples))
    experts = R.expert_dirs(os.path.join(root, "experts")) if os.path.isdir(os.path.join(root, "experts")) else {}
    own_records = []
    for name, path in experts.items():
        exs = [e for e in examples if e.skill == name]
        own_records += merged(path, exs) if exs else []
    if own_records:
        run("each skill's expert on its own skill", own_records)
    routers = sorted(glob.glob(os.path.join(root, "routers", "*", "router.json")))
    for path in routers:
        cfg = R.load_config(os.path.dirname(path))
        variants = ["full"] + ([] if cfg.rank1 or cfg.prior == "none" else ["task-soft", "task-hard"])
        for variant in variants:
            sub = argparse.Namespace(**{**vars(args), "moe": os.path.dirname(path), "variant": variant,
                                        "route": None, "experts": None})
            records, router = moe(model, tok, examples, pool, sub)
            router.detach()
            lora.remove_lora(model, merge=False)
            run(f"router {os.path.basename(os.path.dirname(path))} ({variant})", records)
    skills = sorted({s for accs in table.values() for s in accs})
    header = ["| configuration | " + " | ".join(skills) + " | mean |", "|---|" + "---:|" * (len(skills) + 1)]
    lines = [f"### Every configuration of {root} on {args.data} ({args.split} split, {len(examples)} questions)"]
    for what, values, scale, digits in (("accuracy (%)", table, 100, 1), ("answer NLL", nlls, 1, 3)):
        lines += ["", f"{what}:", "", *header]
        for label, per_skill in values.items():
            vals = [per_skill.get(s) for s in skills]
            cells = ["-" if v is None else f"{scale * v:.{digits}f}" for v in vals]
            known = [v for v in vals if v is not None]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | **{scale * sum(known) / len(known):.{digits}f}** |")
    text = "\n".join(lines)
    print(text)
    out = args.out or os.path.join(root, "heldout")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"data": args.data, "split": args.split, "accuracy": table, "answer_nll": nlls}, f, indent=1)
    print(f"wrote {out}/results.md and results.json")


def main():
    p = Parser(description="Few-shot evaluation of a phi checkpoint on LiLA math questions.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF-layout phi checkpoint directory, "
                   "or a Hugging Face id, e.g. microsoft/phi-2")
    p.add_argument("--revision", default=None, help="--model id: branch, tag or commit "
                   "(default: the repository's main branch)")
    p.add_argument("--data", default=DEFAULT_DATA, help="LiLA task file(s) or directory")
    p.add_argument("--shots", type=nonneg_int, default=4, help="solved examples in each prompt (0 = zero-shot)")
    p.add_argument("--skills", type=nonempty, default=None, help="comma-separated skills (default: all in the data)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"], help="split to evaluate")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many questions per skill")
    p.add_argument("--batch-size", type=positive_int, default=32, help="questions decoded together")
    p.add_argument("--seed", type=int, default=1234, help="seed for shot selection and --limit")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="longest answer generated")
    p.add_argument("--dtype", default="float32", choices=sorted(M.DTYPES), help="model dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--json", type=writable_file, default=None, help="write accuracies and every prediction to this JSON file")
    p.add_argument("--adapter", default=None, help="a LoRA expert (PEFT layout) merged into the base")
    p.add_argument("--paired", default=None, metavar="JSON", help="compare with another run's --json "
                   "(e.g. the base's) question by question: wins, losses and a sign test per skill")
    p.add_argument("--forgetting", default=None, metavar="DIR_OF_EXPERTS",
                   help="evaluate every expert under this directory on every skill (forgetting matrix)")
    p.add_argument("--moe", default=None, metavar="ROUTER_DIR", help="evaluate the routed mixture "
                   "(train.py --router output) over its experts")
    p.add_argument("--experts", default=None, help="--moe: the experts directory (default: the one it was trained on)")
    p.add_argument("--variant", default="full", choices=["full", "task-soft", "task-hard"],
                   help="--moe: two-level routing, task prior alone as weights, or top-1 expert merged")
    p.add_argument("--study", default=None, metavar="OUT", help="evaluate every configuration of a "
                   "study directory (make experiment's out/) on --data, in one call, into one table")
    p.add_argument("--route", type=nonempty, default=None, metavar="SPEC", help="--moe: replace the task-level weights "
                   "by these, e.g. 'algebra=0.7,arithmetic=0.3' (expert or group names); one name forces "
                   "that expert")
    p.add_argument("--explain", type=nonempty, default=None, metavar="QUESTION", help="explain the routing of one "
                   f"question (router --moe, default {SHIPPED}/router) and answer it")
    p.add_argument("--clusters", default=None, help="--explain: cluster.py output for the meta-question's "
                   "cluster (default: the one the router was trained with)")
    p.add_argument("--out", default=None, help="where --forgetting / --moe write tables and heatmaps "
                   "(default out/forgetting, out/routing)")
    args = p.parse_args()
    for flag, needs in (("route", "moe"), ("variant", "moe"), ("experts", "moe"), ("clusters", "explain")):
        if getattr(args, flag) != p.get_default(flag) and not (getattr(args, needs) or args.explain):
            p.error(f"--{flag} needs --{needs}")

    skills = args.skills.split(",") if args.skills else None
    model, tok = M.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    if args.explain:
        args.moe = args.moe or os.path.join(SHIPPED, "router")
        args.clusters = args.clusters or R.load_config(args.moe).extra.get("clusters_dir", "out/clusters")
        explain.explain(model, tok, args)
        return
    examples = select(load_examples(args.data, split=args.split, skills=skills), args.limit, args.seed)
    pool = load_examples(args.data, split="train", skills=skills) if args.shots else []
    print(f"evaluating {len(examples)} {args.split} questions, {args.shots}-shot")
    if args.study:
        study(model, tok, examples, pool, args)
        return
    if args.forgetting:
        args.out = args.out or "out/forgetting"
        forgetting(model, tok, examples, pool, args)
        return
    if args.adapter:
        lora.load_adapter(model, args.adapter)
        lora.merge_lora(model)
        print(f"merged the adapter {args.adapter} into the base weights")
    earlier = read_records(args.paired) if args.paired else None    # read before the long run
    t0 = time.time()
    if args.moe:
        records, router = moe(model, tok, examples, pool, args)
    else:
        records = evaluate(model, tok, examples, pool, args.shots, args.batch_size, args.seed,
                           args.max_new_tokens)
    seconds = time.time() - t0
    name = os.path.basename(os.path.normpath(args.moe or args.adapter or args.model))
    if args.moe:
        name += f" (route {args.route})" if args.route else f" ({args.variant})"
    title = f"{name}, {args.shots}-shot, {args.split} split"
    print(markdown(records, title))
    print(f"\n{len(records)} questions in {seconds:.1f}s ({len(records) / seconds:.1f} questions/s)")
    against = None
    if args.paired:
        against = paired(earlier, records)
        if not against:
            raise ValueError(f"--paired {args.paired}: none of its questions is among these "
                             f"{len(records)}; evaluate both with the same --data, --split, --limit and --seed")
        print(paired_markdown(against, f"{name} against {args.paired}, question by question "
                                       "(wins: only this model is right; losses: only the other)"))
    routing = None
    if args.moe and args.variant == "full":
        routing = routing_report(records, router, args.out or "out/routing")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        report = {"model": args.model, "shots": args.shots, "split": args.split,
                  "accuracy": {k: c / n for k, (c, n) in accuracy(records).items()},
                  "counts": {k: {"correct": c, "total": n} for k, (c, n) in accuracy(records).items()},
                  "mean_accuracy": mean_accuracy(records), "answer_nll": answer_nlls(records),
                  "records": records}
        if routing is not None:
            report["routing"] = routing
        if against is not None:
            report["paired"] = {"against": args.paired, **against}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run(main)
