"""
The study: what the experts, the mixed LoRA and the routers do to every skill,
compared question by question.

    python study.py paired out/eval/base-4shot.json out/eval/mixed.json   # wins, losses, sign test
    python study.py forgetting out/experts --out out/forgetting         # every expert on every skill
    python study.py curve out/eval/base-4shot.json out/eval/sequential-lora/*.json   # skill after skill
    python study.py heldout out --data data/heldout                     # every configuration, new questions
    python study.py best out/lr/mixed-*                                 # the run with the best dev accuracy
    python study.py report out                                          # out/results.md and out/REPORT.md

eval.py evaluates one configuration and writes its records (--json); this file
puts configurations side by side.

- paired: two runs on the same questions, per skill. Differences of a few
  questions are common, so a question only one run gets right is a win or a
  loss, and an exact sign test says how likely so uneven a split is by chance.
- forgetting: every expert (merged, then removed) on every skill, minus the base.
  The diagonal is what an expert gains on its own skill; the rest is what
  fine-tuning on one skill does to the others ("catastrophic forgetting" when
  negative). In accuracy and in answer NLL, with a heatmap of each.
- curve: one model fine-tuned skill after skill (train.py --adapter, or --full
  on the previous stage's model), evaluated on every skill after each stage:
  the forgetting curve, and whether each skill survives the stages after its own.
- heldout: every configuration of a study folder (experiment.sh's OUT) on the
  same questions in one call, e.g. on questions drawn apart from all training.
- best: of runs that differ in one setting (a learning-rate sweep), the one
  with the highest dev accuracy, as train.py logged it.
- report: the tables of a finished `make experiment`, from what eval.py,
  cluster.py and train.py wrote; nothing is recomputed and a missing piece is
  reported missing, not invented.

Left out: bootstrap intervals and corrections for many comparisons; the sign
test is exact for one pair of runs.
"""
import glob
import json
import math
import os
from collections import defaultdict

import adapters
import eval as E
import flags
import mixture
from data.cli import Parser, run, writable_dir
from data.files import heatmap, pyplot, write_json, write_text

# ---------------------------------------------------------------------------
# 1. Two runs, question by question
# ---------------------------------------------------------------------------


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


def paired_markdown(table, title, row_name="skill"):
    lines = [f"### {title}", "", f"| {row_name} | questions | base correct | correct | wins | losses "
             "| sign-test p |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, t in table.items():
        lines.append(f"| {name} | {t['questions']} | {t['base']} | {t['model']} | {t['wins']} "
                     f"| {t['losses']} | {t['p']:.2g} |")
    return "\n".join(lines)


def read_records(path):
    """The records of an `eval.py --json` run, each with a skill, a question and
    whether it was answered correctly, no question twice; a clear error otherwise."""
    try:
        with open(path) as f:
            report = json.load(f)
        records = report["records"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected the JSON that `eval.py --json` writes, with a "
                         f"'records' list ({type(e).__name__}: {e})") from None
    _check_records(path, records)
    _check_eval_json(path, report)      # its accuracy and NLL, and their agreement with the records
    return records


def compare(base_json, others):
    """study.py paired: each run of `others` against base_json, side by side:
    per skill, correct answers, wins : losses and the sign test's p; the last row
    pools every skill's questions."""
    base = read_records(base_json)
    tables = {}
    for path in others:
        records = read_records(path)
        only = len({(r["skill"], r["question"]) for r in records} ^ {(r["skill"], r["question"]) for r in base})
        if only:
            print(f"note: {only} questions are in only one of {base_json} and {path}; the table compares "
                  "the questions in both")
        tables[path] = paired(base, records)
        if not tables[path]:
            raise ValueError(f"{path}: none of its questions is in {base_json}; evaluate both "
                             "with the same --data, --split, --limit and --seed")
    names = [os.path.splitext(os.path.basename(p))[0] for p in [base_json, *others]]
    lines = [f"### Correct answers, and wins : losses against {names[0]} (sign-test p)", "",
             "| skill | questions | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    first = tables[others[0]]
    rows = {skill: {p: t.get(skill) for p, t in tables.items()} for skill in first}
    pooled = {p: {k: sum(t[s][k] for s in t) for k in ("questions", "base", "model", "wins", "losses")}
              for p, t in tables.items()}
    for p in pooled.values():
        p["p"] = sign_test(p["wins"], p["losses"])
    for skill, per in [*rows.items(), ("**all**", pooled)]:
        cells = ["-" if t is None else f"{t['model']} ({t['wins']} : {t['losses']}, p {t['p']:.2g})"
                 for t in per.values()]
        ref = per[others[0]]
        lines.append(f"| {skill} | {ref['questions']} | {ref['base']} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return tables


# ---------------------------------------------------------------------------
# 2. Forgetting: every expert on every skill
# ---------------------------------------------------------------------------


def per_skill(records):
    """({skill: accuracy}, {skill: mean answer NLL}) of eval.py's records."""
    return {k: c / n for k, (c, n) in E.accuracy(records).items()}, E.answer_nlls(records)


def forgetting(ev, experts_dir, out):
    """Accuracy and answer NLL of the base and of each expert in experts_dir on
    every skill; ev(desc) evaluates the model as it is. Writes forgetting.md,
    .json and two heatmaps under out; returns the JSON dict."""
    experts = adapters.expert_dirs(experts_dir)                    # refused now, not after the base's run
    base_records = ev("base")
    base, base_nll = per_skill(base_records)
    acc, nll, own = {}, {}, {}
    for name, path in experts.items():
        records = adapters.with_adapter(ev.model, path, lambda: ev(name))
        acc[name], nll[name] = per_skill(records)
        if name in base:   # an expert named after a skill: is it better there, question by question?
            own[name] = paired(base_records, records)[name]
    skills = list(base)
    delta = {e: {s: acc[e][s] - base[s] for s in skills} for e in acc}
    nll_delta = {e: {s: nll[e][s] - base_nll[s] for s in skills} for e in nll}
    text = "\n".join([
        "### Forgetting: expert accuracy minus base accuracy (points)", "",
        *delta_rows(skills, "base accuracy", {s: 100 * base[s] for s in skills},
                    {e: {s: 100 * d for s, d in row.items()} for e, row in delta.items()}, "{:+.1f}", "{:.1f}"),
        "", "### Forgetting in answer NLL: expert minus base (nats per answer token; "
        "negative = the expert is better)", "",
        *delta_rows(skills, "base NLL", base_nll, nll_delta, "{:+.3f}", "{:.3f}"),
        *(["", paired_markdown(own, "Each expert on its own skill, question by question "
                                    "(wins: only the expert is right; losses: only the base)", "expert")]
          if own else [])])
    print(text)
    os.makedirs(out, exist_ok=True)
    write_text(os.path.join(out, "forgetting.md"), text)
    report = {"skills": skills, "base": base, "accuracy": acc, "delta": delta,
              "base_nll": base_nll, "nll": nll, "nll_delta": nll_delta, "own_skill": own}
    write_json(os.path.join(out, "forgetting.json"), report)
    heatmap([[100 * delta[e][s] for s in skills] for e in acc], list(acc), skills,
            "expert accuracy - base accuracy (points)", os.path.join(out, "forgetting.png"))
    heatmap([[-nll_delta[e][s] for s in skills] for e in nll], list(nll), skills,
            "base answer NLL - expert answer NLL (nats; > 0: expert better)",
            os.path.join(out, "forgetting_nll.png"), fmt="{:+.2f}")
    return report


def delta_rows(skills, base_label, base, delta, fmt, base_fmt):
    """Markdown rows: the base's values, then each expert's change; an expert's
    own skill in bold."""
    mean = lambda row: sum(row.values()) / len(skills)   # noqa: E731
    lines = ["| expert \\ skill | " + " | ".join(skills) + " | mean |", "|---|" + "---:|" * (len(skills) + 1),
             f"| *{base_label}* | " + " | ".join(base_fmt.format(base[s]) for s in skills)
             + f" | {base_fmt.format(mean(base))} |"]
    for e, row in delta.items():
        cells = [f"**{fmt.format(row[s])}**" if s == e else fmt.format(row[s]) for s in skills]
        lines.append(f"| {e} | " + " | ".join(cells) + f" | {fmt.format(mean(row))} |")
    return lines


# ---------------------------------------------------------------------------
# 3. The forgetting curve of a sequential fine-tune
# ---------------------------------------------------------------------------


def curve(base_json, stages, out):
    """study.py curve: one model fine-tuned skill after skill, evaluated on every
    skill after each stage (stages: eval.py --json files in training order, named
    N-SKILL.json for the skill of stage N). Writes curve.md, .json and .png under
    out: accuracy and answer NLL per skill after each stage, and for each trained skill its
    accuracy right after its own stage against after the last one, question by
    question: what the later stages made the model forget."""
    runs = {"base": read_records(base_json)}
    for path in stages:
        runs[os.path.splitext(os.path.basename(path))[0]] = read_records(path)
    _check_stages(stages, per_skill(runs["base"])[0])
    acc, nll = {}, {}
    for name, records in runs.items():
        acc[name], nll[name] = per_skill(records)
    skills = list(acc["base"])
    names, last = list(runs), list(runs)[-1]
    kept = {}
    for name in names[1:-1]:
        skill = name.partition("-")[2]
        if skill in skills:    # its stage's skill, right after its stage -> after the last stage
            kept[f"{skill} (stage {name})"] = paired(runs[name], runs[last])[skill]
    rows = {n: {s: 100 * acc[n][s] if s in acc[n] else None for s in skills} for n in names}
    nll_rows = {n: {s: nll[n].get(s) for s in skills} for n in names}
    text = "\n".join(["### Accuracy (%) after each stage of the sequential fine-tune", "",
                      *config_rows(rows, skills, "{:.1f}"), "",
                      "### Answer NLL (nats per answer token) after each stage", "",
                      *config_rows(nll_rows, skills, "{:.3f}"), "",
                      paired_markdown(kept, f"Each skill right after its own stage (base) against after the "
                                            f"last stage, {last} (wins: only the last is right)", "skill")])
    print(text)
    os.makedirs(out, exist_ok=True)
    write_text(os.path.join(out, "curve.md"), text)
    write_json(os.path.join(out, "curve.json"), {"stages": names, "skills": skills, "accuracy": acc,
                                                 "answer_nll": nll, "after_own_stage_vs_last": kept})
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(names), 4))
        for s in skills:
            ax.plot(range(len(names)), [rows[n][s] if rows[n][s] is not None else float("nan") for n in names],
                    marker="o", label=s)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy on every skill after each stage", fontsize=9)
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "curve.png"), dpi=120)
        plt.close(fig)
        print(f"wrote {os.path.join(out, 'curve.png')}")
    return {"accuracy": acc, "kept": kept}


# ---------------------------------------------------------------------------
# 4. Every configuration of a study folder on the same questions
# ---------------------------------------------------------------------------


def heldout(ev, root, shots, out):
    """Base 0-shot and k-shot, the mixed LoRA, each skill's expert on its own
    skill, and every router under root/routers (two-level, and the task level
    alone, soft and hard), all on ev's questions. Writes results.md and
    results.json under out; returns {"accuracy", "answer_nll"}."""
    table, nlls = {}, {}

    def add(label, records):
        table[label], nlls[label] = per_skill(records)
        print(f"{label}: mean {100 * E.mean_accuracy(records):.1f}%")

    add("base, 0-shot", ev("base 0-shot", shots=0))
    add(f"base, {shots}-shot", ev("base"))
    mixed = os.path.join(root, "mixed")
    if os.path.exists(os.path.join(mixed, adapters.CONFIG_NAME)):
        add("mixed LoRA", adapters.with_adapter(ev.model, mixed, lambda: ev("mixed")))
    experts = os.path.join(root, "experts")
    own = []
    for name, path in (adapters.expert_dirs(experts) if os.path.isdir(experts) else {}).items():
        mine = [e for e in ev.examples if e.skill == name]
        own += adapters.with_adapter(ev.model, path, lambda: ev(name, examples=mine)) if mine else []
    if own:
        add("each skill's expert on its own skill", own)
    for path in sorted(glob.glob(os.path.join(root, "routers", "*", "router.json"))):
        router_dir = os.path.dirname(path)
        cfg = mixture.load_config(router_dir)
        for variant in ["full"] + ([] if cfg.rank1 or cfg.prior == "none" else ["task-soft", "task-hard"]):
            records, _ = E.moe(ev, router_dir, variant)
            add(f"router {os.path.basename(router_dir)} ({variant})", records)
    skills = sorted({s for accs in table.values() for s in accs})
    lines = [f"### Every configuration of {root} ({len(ev.examples)} questions)"]
    for what, values, fmt in (("accuracy (%)", {k: {s: 100 * v for s, v in a.items()} for k, a in table.items()},
                               "{:.1f}"), ("answer NLL", nlls, "{:.3f}")):
        lines += ["", f"{what}:", "", *config_rows(values, skills, fmt)]
    text = "\n".join(lines)
    print(text)
    os.makedirs(out, exist_ok=True)
    write_text(os.path.join(out, "results.md"), text)
    result = {"accuracy": table, "answer_nll": nlls}
    write_json(os.path.join(out, "results.json"), result)
    print(f"wrote {out}/results.md and results.json")
    return result


def config_rows(values, skills, fmt):
    """Markdown rows: one configuration per row, its value per skill (- where it
    has none) and the mean over the skills it has, in bold."""
    lines = ["| configuration | " + " | ".join(skills) + " | mean |", "|---|" + "---:|" * (len(skills) + 1)]
    for label, per in values.items():
        known = [per[s] for s in skills if per.get(s) is not None]
        cells = ["-" if per.get(s) is None else fmt.format(per[s]) for s in skills]
        mean = f"**{fmt.format(sum(known) / len(known))}**" if known else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} |")
    return lines


# ---------------------------------------------------------------------------
# 5. The report of a finished `make experiment`
# ---------------------------------------------------------------------------

ROWS = [("base-0shot", "base, 0-shot"), ("base-4shot", "base, 4-shot"), ("mixed", "mixed LoRA"),
        ("mixed-r64", "mixed LoRA, rank 64 (the experts' parameters)"),
        ("moe-task-hard", "router: task level, top-1 expert merged"),
        ("moe-task-soft", "router: task level, soft weights"),
        ("moe-centroid-token", "router: two-level, centroid prior, token gate"),
        ("moe-learned-token", "router: two-level, learned prior, token gate"),
        ("moe-centroid-sequence", "router: two-level, centroid prior, sequence gate"),
        ("moe-clusters-token", "router over cluster experts, two-level, token gate"),
        ("moe-seeded-token", "router over seeded-cluster experts (10 labels per skill), two-level, token gate"),
        ("moe-rank1", "64 rank-1 experts trained jointly with the gate (MoR1E)")]


def load(out, *parts):
    """The JSON at out/parts..., or None where that piece of the study is missing;
    eval.py's reports (under eval/) are checked (_check_eval_json)."""
    path = os.path.join(out, *parts)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if "eval" in parts:
        _check_eval_json(path, obj)
    if "forgetting" in parts:
        _check_forgetting_json(path, obj)
    return obj


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def results_tables(out):
    """{metric: {row: {skill: value}}} over ROWS, with each expert and each full
    fine-tune on its own skill (the forgetting matrix's diagonal) after the mixed LoRAs."""
    forg = load(out, "forgetting", "forgetting.json") or {}
    tables = {}
    for metric, forg_key in (("accuracy", "accuracy"), ("answer_nll", "nll")):
        rows = {}
        for name, label in ROWS:
            report = load(out, "eval", f"{name}.json")
            if report is not None and metric in report:
                rows[label] = report[metric]
            if name == "mixed-r64" and forg_key in forg:
                rows["each skill's expert on its own skill"] = {e: v[e] for e, v in forg[forg_key].items()
                                                                 if e in v}
            if name == "mixed-r64":   # eval/full/SKILL.json: each full fine-tune on its own skill
                full = {os.path.basename(p)[:-5]: load(out, "eval", "full", os.path.basename(p))
                        for p in sorted(glob.glob(os.path.join(out, "eval", "full", "*.json")))}
                own = {s: r[metric][s] for s, r in full.items() if s in r.get(metric, {})}
                if own:
                    rows["each skill's full fine-tune on its own skill"] = own
        tables[metric] = rows
    return tables


def routing_stats(report, skills):
    """(mean group entropy, mean number of groups above 10%) over the skills, or Nones."""
    per = (report or {}).get("routing", {}).get("per_skill", {})
    rows = [per[s] for s in skills if s in per]
    if not rows:
        return None, None
    return mean(r["group_entropy"] for r in rows), mean(r["groups_above_10pct"] for r in rows)


def composed_table(out):
    """Composed questions beside plain questions of the same skills, per configuration."""
    lines = ["| configuration | plain acc. | composed acc. | plain NLL | composed NLL | plain: group entropy "
             "| composed: group entropy | plain: groups > 10% | composed: groups > 10% |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda x: "-" if x is None else f"{x:.2f}"   # noqa: E731
    for key, label in ROWS:
        comp, plain = load(out, "eval", "composed", f"{key}.json"), load(out, "eval", f"{key}.json")
        if comp is None or plain is None:
            continue
        skills = sorted(comp["accuracy"])
        (pe, pg), (ce, cg) = routing_stats(plain, skills), routing_stats(comp, skills)
        lines.append(f"| {label} | {pct(mean(plain['accuracy'].get(s) for s in skills))} | "
                     f"{pct(mean(comp['accuracy'].values()))} | "
                     f"{f(mean(plain['answer_nll'].get(s) for s in skills))} | "
                     f"{f(mean(comp['answer_nll'].values()))} | {f(pe)} | {f(ce)} | {f(pg)} | {f(cg)} |")
    return "\n".join(lines) if len(lines) > 2 else None


def steering_table(out):
    """Each skill's questions steered to its own expert, to the next skill's, and routed."""
    routed = load(out, "eval", "moe-centroid-token.json")
    lines = ["| skill | steered to own expert | steered to a wrong expert | the router decides |",
             "|---|---:|---:|---:|"]
    cols = [[], [], []]
    for path in sorted(glob.glob(os.path.join(out, "eval", "steer", "own-*.json"))):
        s = os.path.basename(path)[len("own-"):-len(".json")]
        own, wrong = load(out, "eval", "steer", f"own-{s}.json"), load(out, "eval", "steer", f"wrong-{s}.json")
        if wrong is None:
            continue
        for kind, r in (("own", own), ("wrong", wrong)):
            if s not in r["accuracy"]:
                raise ValueError(f"{os.path.join(out, 'eval', 'steer', f'{kind}-{s}.json')}: no accuracy "
                                 f"for {s!r}, the skill it was steered on")
        vals = [own["accuracy"][s], wrong["accuracy"][s], routed["accuracy"].get(s) if routed else None]
        for c, v in zip(cols, vals):
            c.append(v)
        lines.append(f"| {s} | " + " | ".join(pct(v) for v in vals) + " |")
    if len(lines) == 2:
        return None
    lines.append("| **mean** | " + " | ".join(f"**{pct(mean(c))}**" for c in cols) + " |")
    return "\n".join(lines)


def add_skill_table(out):
    """A skill added to a seven-skill mixture and to a seven-skill mixed LoRA:
    accuracy per skill before and after, then each addition against its
    seven-skill start, question by question."""
    then = sorted(glob.glob(os.path.join(out, "eval", "add-skill", "mixed7-then-*.json")))
    paths = {"router over seven experts": ("add-skill", "router7.json"),
             "eighth expert added, router trained again": ("moe-centroid-token.json",),
             "mixed LoRA on seven skills": ("add-skill", "mixed7.json"),
             "... then trained on the eighth skill alone": ("add-skill", os.path.basename(then[0])) if then else (),
             "mixed LoRA retrained on all eight": ("mixed.json",)}
    found = {name: (os.path.join(out, "eval", *p), load(out, "eval", *p)) for name, p in paths.items() if p}
    paths = {name: path for name, (path, report) in found.items() if report is not None}
    if "router over seven experts" not in paths:
        return None
    acc = {name: found[name][1]["accuracy"] for name in paths}
    skills = sorted({s for per in acc.values() for s in per})
    parts = config_rows({name: {s: 100 * v for s, v in per.items()} for name, per in acc.items()}, skills, "{:.1f}")
    for before, after in (("router over seven experts", "eighth expert added, router trained again"),
                          ("mixed LoRA on seven skills", "... then trained on the eighth skill alone"),
                          ("mixed LoRA on seven skills", "mixed LoRA retrained on all eight")):
        if before in paths and after in paths:
            table = paired(read_records(paths[before]), read_records(paths[after]))
            parts += ["", paired_markdown(table, f"{after} against {before} (wins: only after is right)")]
    return "\n".join(parts)


def routing_accuracy(out):
    """Share of test questions whose largest weight goes to their own skill's
    expert: of the task-level prior, and of the final weights (mean over layers)."""
    lines = ["| router | task level (prior) | final weights, mean over layers |", "|---|---:|---:|"]
    for name, label in ROWS:
        report = load(out, "eval", f"{name}.json")
        if not name.startswith("moe-") or report is None or "routing" not in report:
            continue
        experts = report["routing"]["experts"]
        top = lambda w: experts[max(range(len(experts)), key=w.__getitem__)]   # noqa: E731
        recs = [r for r in report["records"] if r["skill"] in experts]
        if not all(isinstance(r.get("routing"), dict) for r in recs):
            raise ValueError(f"{os.path.join(out, 'eval', name + '.json')}: a record has no 'routing', "
                             "although the report holds the router's")
        hit_prior = mean(float(top(r["routing"]["prior"]) == r["skill"]) for r in recs if r["routing"].get("prior"))
        hit_final = mean(float(top([sum(col) for col in zip(*r["routing"]["experts"])]) == r["skill"])
                         for r in recs if "experts" in r["routing"])
        if hit_prior is not None or hit_final is not None:
            lines.append(f"| {label} | {pct(hit_prior)} | {pct(hit_final)} |")
    return "\n".join(lines) if len(lines) > 2 else None


def read_log(path):
    """train.py's log.json: a list of entries, each with a 'step' and a 'time'
    (and, at each checkpoint, 'dev_loss' and 'dev_accuracy')."""
    log = load(path)
    if log is None:
        raise FileNotFoundError(f"{path}: no such file; expected the log of a train.py run")
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)  # noqa: E731
    if not (isinstance(log, list) and all(isinstance(e, dict) and number(e.get("step")) and number(e.get("time"))
                                          and number(e.get("dev_accuracy", 0)) for e in log)):
        raise ValueError(f"{path}: expected train.py's log, a list of entries with a 'step' and a 'time'")
    return log


def training_times(out):
    """Minutes of training per expert and for the mixed LoRA and routers (log.json)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "*", "log.json")) + glob.glob(os.path.join(out, "*", "*", "log.json"))):
        log = read_log(path)
        if log:
            rows.append(f"| {os.path.relpath(os.path.dirname(path), out)} | {log[-1]['step']} "
                        f"| {log[-1]['time'] / 60:.1f} |")
    return "\n".join(["| run | steps | minutes |", "|---|---:|---:|"] + rows) if rows else None


def dev_accuracy(folder):
    """The best dev accuracy in a train.py run's log.json, or None before its first checkpoint."""
    accs = [e["dev_accuracy"] for e in read_log(os.path.join(folder, "log.json")) if "dev_accuracy" in e]
    return max(accs) if accs else None


def best_run(runs):
    """Of train.py runs on the same dev questions (e.g. one per learning rate), the
    one with the highest dev accuracy; a tie goes to the run named first."""
    scores = {r: dev_accuracy(r) for r in runs}
    for r, acc in scores.items():
        if acc is None:
            raise ValueError(f"{r}/log.json: no dev accuracy yet; expected a finished train.py run")
    return max(runs, key=scores.get)


def lr_table(out):
    """The learning-rate sweeps of experiment.sh (OUT/lr/FAMILY-LR): each run's dev
    accuracy, and the one each family kept."""
    families = defaultdict(dict)       # family -> {learning rate: run}
    for path in glob.glob(os.path.join(out, "lr", "*-*", "log.json")):
        family, _, lr = os.path.basename(os.path.dirname(path)).partition("-")
        families[family][lr] = os.path.dirname(path)
    rows = []
    for family, runs in sorted(families.items()):
        lrs = sorted(runs, key=float)  # as experiment.sh names them: lowest first, so a tie keeps the lowest
        chosen = best_run([runs[lr] for lr in lrs])
        rows += [f"| {family} | {lr} | {pct(dev_accuracy(runs[lr]))} | {'kept' if runs[lr] == chosen else ''} |"
                 for lr in lrs]
    return "\n".join(["| runs | learning rate | dev accuracy (%) | |", "|---|---:|---:|---|"] + rows) if rows else None


def report(out):
    """out/results.md, results.json and REPORT.md of a finished study folder."""
    if not glob.glob(os.path.join(out, "eval", "*.json")):
        raise FileNotFoundError(f"{out}: no eval/*.json here; expected a study folder (experiment.sh's OUT)")
    tables = results_tables(out)
    skills = sorted({s for rows in tables.values() for per in rows.values() for s in per})
    pcts = {label: {s: 100 * v for s, v in per.items()} for label, per in tables["accuracy"].items()}
    acc = "\n".join(config_rows(pcts, skills, "{:.1f}"))
    nll = "\n".join(config_rows(tables["answer_nll"], skills, "{:.3f}"))
    write_text(os.path.join(out, "results.md"), acc)
    write_json(os.path.join(out, "results.json"), tables)
    parts = ["# Study report", "", "Accuracy (%) on the test split, 4-shot unless named; every "
             "configuration sees the same questions (see experiment.sh for the sizes).", "", acc, "",
             "Answer NLL (nats per answer token, teacher-forced after the same prompt; lower is "
             "better): it moves even where almost no answer is exactly right.", "", nll, ""]
    for folder, title, picture in (("forgetting/forgetting.md", "Forgetting", "forgetting/forgetting.png"),
                                   ("sequential-lora/curve.md", "One LoRA trained skill after skill",
                                    "sequential-lora/curve.png"),
                                   ("sequential-full/curve.md", "The whole model fine-tuned skill after skill",
                                    "sequential-full/curve.png"),
                                   ("clusters-test/report.md", "Clusters of meta-questions (test split)",
                                    "clusters-test/clusters.png")):
        if os.path.exists(os.path.join(out, folder)):
            parts += [f"## {title}", "", open(os.path.join(out, folder)).read(), f"![{title}]({picture})", ""]
    for title, text in (("Composed questions (two skills chained) beside plain ones of the same skills",
                         composed_table(out)),
                        ("Routing accuracy: the largest weight on the question's own skill (%)",
                         routing_accuracy(out)),
                        ("Steering with --route (router centroid-token)", steering_table(out)),
                        ("Adding a skill to seven (accuracy, %)", add_skill_table(out)),
                        ("Learning rates, each family's chosen on dev questions", lr_table(out)),
                        ("Training time (wall, as logged)", training_times(out))):
        if text:
            parts += [f"## {title}", "", text, ""]
    for folder, title in (("routing", "plain questions"), ("routing-composed", "composed questions")):
        pictures = sorted(glob.glob(os.path.join(out, folder, "*", "routing_*.png")))
        if pictures:
            parts += [f"## Routing on {title}: mean expert weight per layer, per skill", ""]
            parts += [f"![{os.path.relpath(h, out)}]({os.path.relpath(h, out)})" for h in pictures] + [""]
    write_text(os.path.join(out, "REPORT.md"), "\n".join(parts))
    print(acc)
    print(f"wrote {out}/REPORT.md, results.md, results.json")


# ---------------------------------------------------------------------------
# 6. The command line
# ---------------------------------------------------------------------------


def parser():
    p = Parser(description="Compare the study's configurations: paired tests, forgetting, held-out "
                           "questions, the report.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    s = sub.add_parser("paired", help="eval.py --json runs against a reference, question by question")
    s.add_argument("base", help="eval.py --json of the reference run (e.g. the base model)")
    s.add_argument("others", nargs="+", help="eval.py --json of the runs compared with it, on the same questions")
    s = sub.add_parser("forgetting", help="every expert on every skill, minus the base")
    s.add_argument("experts", help="a folder of expert folders (train.py --expert outputs)")
    s.add_argument("--out", type=writable_dir, default="out/forgetting", help="where forgetting.md/.json/.png go")
    flags.add_question_flags(s)
    s = sub.add_parser("curve", help="a sequential fine-tune: every skill after each stage")
    s.add_argument("base", help="eval.py --json of the model before the first stage")
    s.add_argument("stages", nargs="+", help="eval.py --json after each stage, in training order, named "
                   "N-SKILL.json (N the stage, SKILL what it trained on)")
    s.add_argument("--out", type=writable_dir, default="out/sequential", help="where curve.md/.json/.png go "
                   "(default out/sequential)")
    s = sub.add_parser("heldout", help="every configuration of a study folder on the same questions")
    s.add_argument("root", help="a study folder (experiment.sh's OUT)")
    s.add_argument("--out", type=writable_dir, default=None, help="where results.md/.json go (default ROOT/heldout)")
    flags.add_question_flags(s)
    s = sub.add_parser("best", help="print the train.py run with the highest dev accuracy (ties: the first)")
    s.add_argument("runs", nargs="+", help="train.py output folders, e.g. one per learning rate")
    s = sub.add_parser("report", help="out/REPORT.md from a finished make experiment")
    s.add_argument("root", nargs="?", default="out", help="the study folder (experiment.sh's OUT)")
    return p


def main():
    args = parser().parse_args()
    if args.command in ("heldout", "report") and not os.path.isdir(args.root):
        raise FileNotFoundError(f"{args.root}: no such study folder (experiment.sh's OUT)")
    if args.command == "paired":
        compare(args.base, args.others)
    elif args.command == "report":
        report(args.root)
    elif args.command == "best":
        print(best_run(args.runs))
    elif args.command == "curve":
        curve(args.base, args.stages, args.out)
    elif args.command == "forgetting":
        forgetting(E.Evaluator.from_args(args), args.experts, args.out)
    else:
        heldout(E.Evaluator.from_args(args), args.root, args.shots, args.out or os.path.join(args.root, "heldout"))


# ---------------------------------------------------------------------------
# 7. Checks
# ---------------------------------------------------------------------------


def _check_stages(stages, skills):
    """curve's stage files are named N-SKILL.json: N its place in training order
    (1, 2, ...), SKILL one of the base report's skills."""
    for n, path in enumerate(stages, 1):
        name = os.path.splitext(os.path.basename(path))[0]
        number, _, skill = name.partition("-")
        if number != str(n) or skill not in skills:
            raise ValueError(f"{path}: expected stage {n} to be named {n}-SKILL.json, SKILL one of the base "
                             f"report's skills {sorted(skills)} (stages in training order)")


def _check_records(path, records):
    """eval.py's records: a list of objects with a string skill and question and
    a true/false correct, each (skill, question) once."""
    if not isinstance(records, list):
        raise ValueError(f"{path}: 'records' is {type(records).__name__}, expected a list")
    seen = set()
    for i, r in enumerate(records):
        if not (isinstance(r, dict) and isinstance(r.get("skill"), str) and isinstance(r.get("question"), str)
                and isinstance(r.get("correct"), bool)):
            raise ValueError(f"{path}: record {i} is not one of eval.py's (a skill, a question and a "
                             "true/false 'correct')")
        if (r["skill"], r["question"]) in seen:
            raise ValueError(f"{path}: record {i} repeats a {r['skill']} question: {r['question'][:60]!r}")
        seen.add((r["skill"], r["question"]))


def _check_eval_json(path, report):
    """An eval.py --json report: accuracy (fractions in [0, 1], at least one skill)
    and answer NLL (finite numbers >= 0) per skill; the accuracy agrees with the
    report's counts and records, where it has them (an edited report does not)."""
    if not isinstance(report, dict):
        raise ValueError(f"{path}: expected a JSON object as eval.py --json writes, got {type(report).__name__}")
    _check_per_skill(path, "accuracy", report.get("accuracy"), ACCURACY)
    _check_per_skill(path, "answer_nll", report.get("answer_nll"), NLL)
    if not report["accuracy"]:
        raise ValueError(f"{path}: 'accuracy' is empty, expected one entry per skill evaluated")
    tallies = {}
    if isinstance(report.get("counts"), dict):
        tallies["counts"] = {k: (c.get("correct"), c.get("total")) if isinstance(c, dict) else (None, None)
                             for k, c in report["counts"].items()}
    if "records" in report:
        _check_records(path, report["records"])
        tallies["records"] = E.accuracy(report["records"])
    for source, tally in tallies.items():
        for skill, v in report["accuracy"].items():
            correct, total = tally.get(skill, (None, None))
            if not (isinstance(total, int) and total > 0 and isinstance(correct, int) and correct / total == v):
                raise ValueError(f"{path}: accuracy of {skill!r} is {v!r}, but its {source} give "
                                 f"{correct}/{total}; expected the report as eval.py wrote it")


def _check_forgetting_json(path, report):
    """study.py forgetting's report: accuracy and nll per expert, per skill."""
    if not isinstance(report, dict):
        raise ValueError(f"{path}: expected a JSON object as study.py forgetting writes, "
                         f"got {type(report).__name__}")
    for key, rule in (("accuracy", ACCURACY), ("nll", NLL)):
        per_expert = report.get(key)
        if not isinstance(per_expert, dict):
            raise ValueError(f"{path}: '{key}' is {type(per_expert).__name__}, expected an object of "
                             "expert -> skill -> value")
        for expert, per in per_expert.items():
            _check_per_skill(path, f"{key} of {expert!r}", per, rule)


ACCURACY = (lambda v: 0 <= v <= 1, "a fraction in [0, 1]")
NLL = (lambda v: v >= 0, "a finite number >= 0")


def _check_per_skill(path, key, per, rule):
    """{skill: number}, each number finite and passing rule = (test, what was expected)."""
    ok, want = rule
    if not isinstance(per, dict):
        raise ValueError(f"{path}: '{key}' is {type(per).__name__}, expected an object of skill -> value")
    for skill, v in per.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            raise ValueError(f"{path}: {key} of {skill!r} is {v!r}, expected {want}")


if __name__ == "__main__":
    run(main)
