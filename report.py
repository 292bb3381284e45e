"""
The report of a finished `make experiment`: every table of the study folder
(experiment.sh's OUT), and the study's question answered goal by goal.

    python study.py report out          # out/REPORT.md, results.md, results.json, goals.json
    python study.py report out --docs docs/study    # and REPORT.md with its pictures to docs/study
    python study.py best out/lr/mixed-1e-3 out/lr/mixed-2e-3   # the best learning rate's run

Everything comes from what eval.py, study.py, cluster.py and train.py wrote;
nothing is recomputed, and a missing piece is reported missing, not invented.

- the tables: accuracy and answer NLL of every configuration, composed
  questions, routing accuracy, steering, adding a skill, training times and the
  learning-rate sweeps;
- goals(): each goal of the study from the runs that decide it, with its paired
  test (stats.py): what the fine-tunes forget, what the routers cost each skill,
  how much of the experts' gain the best router keeps, what adding a skill costs,
  and how close cluster experts come to skill experts.

Left out: plots beyond those study.py and eval.py draw (forgetting matrix and
curve, routing heatmaps) and the add-a-skill chart drawn here.
"""
import glob
import json
import math
import os
import re
import shutil
from collections import defaultdict

import eval as E
from data.files import pyplot, write_atomic, write_json, write_text
from stats import (bootstrap_interval, check_eval_json, check_forgetting_json, config_rows, paired,
                   paired_markdown, read_records, sign_test)

# ---------------------------------------------------------------------------
# 1. The study folder's pieces
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
    eval.py's reports (under eval/) are checked (check_eval_json)."""
    path = os.path.join(out, *parts)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if "eval" in parts:
        check_eval_json(path, obj)
    if "forgetting" in parts:
        check_forgetting_json(path, obj)
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


# ---------------------------------------------------------------------------
# 2. Training: times and learning rates
# ---------------------------------------------------------------------------

def read_log(path):
    """train.py's log.json: a list of entries, each with a 'step' and a 'time'
    (and, at each checkpoint, 'dev_loss' and 'dev_accuracy')."""
    log = load(path)
    if log is None:
        raise FileNotFoundError(f"{path}: no such file; expected the log of a train.py run")
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)  # noqa: E731
    if not (isinstance(log, list) and all(isinstance(e, dict) and number(e.get("step")) and number(e.get("time"))
                                          and number(e.get("dev_accuracy", 0)) and number(e.get("dev_loss", 0))
                                          for e in log)):
        raise ValueError(f"{path}: expected train.py's log, a list of entries with a 'step' and a 'time'")
    return log


def compute_time(out):
    """Job time per part of the study: each train.py run's logged wall time
    (log.json; a resumed run counts the steps it kept, not those lost) and each
    eval.py run's (the 'seconds' of its JSON), summed by the folder it sits in."""
    parts, seen = {}, set()
    logs = glob.glob(os.path.join(out, "*", "log.json")) + glob.glob(os.path.join(out, "*", "*", "log.json"))
    evals = glob.glob(os.path.join(out, "eval", "**", "*.json"), recursive=True)
    for path in sorted(logs) + sorted(evals):
        if os.path.realpath(path) in seen:            # out/mixed links to its learning-rate run
            continue
        seen.add(os.path.realpath(path))
        rel = os.path.relpath(path, out).split(os.sep)
        if rel[0] == "eval":
            seconds = load(out, *rel).get("seconds")
            part = "evaluation: " + (rel[1] if len(rel) > 2 else "the rest")
        else:
            log = read_log(path)
            seconds = log[-1]["time"] if log else None
            part = "training: " + rel[0]
        if seconds is not None:
            runs, total = parts.get(part, (0, 0.0))
            parts[part] = (runs + 1, total + seconds)
    if not parts:
        return None
    hours = sum(t for _, t in parts.values()) / 3600
    rows = [f"| {part} | {runs} | {t / 60:.0f} |" for part, (runs, t) in parts.items()]
    return "\n".join(["| part | runs | job minutes |", "|---|---:|---:|", *rows,
                      f"| **all** | {sum(r for r, _ in parts.values())} | **{60 * hours:.0f}** |", "",
                      f"{hours:.1f} job-hours in all. experiment.sh runs JOBS of them at a time (2 on a CPU), "
                      f"so on 2 cores the study's wall time is about {hours / 2:.1f} h, plus the waits at the "
                      "end of each stage and the clustering runs, which log no time."])


def best_checkpoint(folder):
    """(dev accuracy, dev loss) of a train.py run's best checkpoint in its log.json:
    the highest accuracy, a tie going to the lower loss; None before the first."""
    marks = [(e["dev_accuracy"], e.get("dev_loss", math.inf)) for e in read_log(os.path.join(folder, "log.json"))
             if "dev_accuracy" in e]
    return max(marks, key=lambda m: (m[0], -m[1])) if marks else None


def best_run(runs):
    """Of train.py runs on the same dev questions (e.g. one per learning rate), the
    one whose best checkpoint has the highest dev accuracy; on a tie, the lower dev
    loss (a few hundred dev questions often tie), then the run named first."""
    scores = {r: best_checkpoint(r) for r in runs}
    for r, score in scores.items():
        if score is None:
            raise ValueError(f"{r}/log.json: no dev accuracy yet; expected a finished train.py run")
    return max(runs, key=lambda r: (scores[r][0], -scores[r][1]))


def lr_table(out):
    """The learning-rate sweeps of experiment.sh (OUT/lr/FAMILY-LR): each run's dev
    accuracy, and the one each family kept."""
    families = defaultdict(dict)       # family -> {learning rate: run}
    for path in glob.glob(os.path.join(out, "lr", "*-*", "log.json")):
        family, _, lr = os.path.basename(os.path.dirname(path)).partition("-")
        families[family][lr] = os.path.dirname(path)
    rows = []
    for family, runs in sorted(families.items()):
        lrs = sorted(runs, key=float)  # lowest first, as experiment.sh names them (a full tie keeps the first)
        chosen = best_run([runs[lr] for lr in lrs])
        for lr in lrs:
            acc, loss = best_checkpoint(runs[lr])
            rows.append(f"| {family} | {lr} | {pct(acc)} | {loss:.4f} | {'kept' if runs[lr] == chosen else ''} |")
    return "\n".join(["| runs | learning rate | dev accuracy (%) | dev loss | |", "|---|---:|---:|---:|---|"]
                     + rows) if rows else None


# ---------------------------------------------------------------------------
# 3. The question, goal by goal
# ---------------------------------------------------------------------------

GOAL_HEAD = ["| comparison | questions | change (points) | 95% interval | wins : losses | sign-test p "
             "| worst skill (points, p) | answer NLL change | goal |", "|---|---:|---:|---|---:|---:|---|---:|---|"]


def pooled(before, after, skills):
    """`after` against `before` on the questions of `skills` that both answered:
    the change in accuracy (points), wins : losses (questions only `after` /
    only `before` gets right), the sign test, the paired bootstrap interval, and
    each skill's own change and p. None when no question is shared."""
    table = {s: t for s, t in paired(before, after).items() if s in skills}
    if not table:
        return None
    n, w, l = (sum(t[k] for t in table.values()) for k in ("questions", "wins", "losses"))
    per = {s: (100 * (t["model"] - t["base"]) / t["questions"], t["p"]) for s, t in table.items()}
    return {"questions": n, "change": 100 * (w - l) / n, "wins": w, "losses": l, "p": sign_test(w, l),
            "interval": bootstrap_interval(w, l, n), "per_skill": per, "worst": min(per, key=lambda s: per[s][0]),
            "answer_nll_change": nll_change(before, after, skills)}


def nll_change(before, after, skills):
    """Mean of (after - before) answer NLL over the questions of `skills` in both
    runs (negative: `after` is surer of the gold answers); None where a record has none."""
    nll = lambda r: r.get("answer_nll")   # noqa: E731
    first = {(r["skill"], r["question"]): nll(r) for r in before if r["skill"] in skills}
    pairs = [(first[r["skill"], r["question"]], nll(r)) for r in after if (r["skill"], r["question"]) in first]
    if not pairs or not all(isinstance(v, (int, float)) and math.isfinite(v) for pair in pairs for v in pair):
        return None
    return sum(b - a for a, b in pairs) / len(pairs)


def goal_row(label, c, verdict):
    lo, hi = c["interval"]
    worst, (change, p) = c["worst"], c["per_skill"][c["worst"]]
    nll = "-" if c["answer_nll_change"] is None else f"{round(c['answer_nll_change'], 3) + 0.0:+.3f}"  # no -0.000
    return (f"| {label} | {c['questions']} | {c['change']:+.1f} | {lo:+.1f} to {hi:+.1f} | {c['wins']} : "
            f"{c['losses']} | {c['p']:.2g} | {worst} {change:+.1f} (p {p:.2g}) | {nll} | {verdict} |")


def eval_records(out, *parts):
    """The records of out/eval/parts..., or None where the run or its records are missing."""
    report = load(out, "eval", *parts)          # checked, records included, as it is read
    return report["records"] if report and "records" in report else None


def goal_forgetting(out, base, skills):
    """Goal 1: a full fine-tune of one skill, and a fine-tune skill after skill,
    lose at least 5 points on the skills they leave behind. Every learning rate of
    the one-skill sweeps is shown too, marked as such: how forgetting grows with
    the rate. Returns [(label, numbers, verdict)]."""
    rows = []

    def add(label, c, verdict=None):
        if c:
            rows.append((label, c, verdict or ("met" if c["change"] <= -5 else "not met")))
    for path in sorted(glob.glob(os.path.join(out, "eval", "full", "*.json"))):
        skill = os.path.basename(path)[:-5]
        add(f"full fine-tune of {skill}: the other skills, against the base",
            pooled(base, read_records(path), skills - {skill}))
    for kind, what in (("lora", "one LoRA"), ("full", "the whole model")):
        stages = sorted(glob.glob(os.path.join(out, "eval", f"sequential-{kind}", "*-*.json")),
                        key=lambda p: int(os.path.basename(p).partition("-")[0]))
        if len(stages) < 2:
            continue
        trained = {os.path.basename(p)[:-5].partition("-")[2]: p for p in stages[:-1]}
        before = [r for s, p in trained.items() for r in read_records(p) if r["skill"] == s]
        add(f"{what} skill after skill: each skill right after its stage, against after the last",
            pooled(before, read_records(stages[-1]), set(trained)))
    for path in sorted(glob.glob(os.path.join(out, "eval", "sweep-*", "*-*.json"))):   # sweep-SKILL/FAMILY-LR
        skill = os.path.basename(os.path.dirname(path))[len("sweep-"):]
        family, _, lr = os.path.basename(path)[:-5].partition("-")
        what = "full fine-tune" if family == "full" else "LoRA expert"
        add(f"{what} of {skill} at lr {lr}: the other skills, against the base",
            pooled(base, read_records(path), skills - {skill}), "(sweep)")
    return rows


def goal_routing(out, base, skills):
    """Goal 2: the routed mixture loses at most 1 point on any skill against the base."""
    rows = []
    for name, label in ROWS:
        recs = eval_records(out, f"{name}.json") if name.startswith("moe-") else None
        if recs:
            c = pooled(base, recs, skills)
            rows.append((f"{label}, against the base", c, "met" if c["per_skill"][c["worst"]][0] >= -1 else "not met"))
    return rows


def best_router(out, base, skills):
    """The routed configuration with the highest accuracy: (label, records)."""
    found = [(label, eval_records(out, f"{name}.json")) for name, label in ROWS if name.startswith("moe-")]
    found = [(label, recs) for label, recs in found if recs]
    return max(found, key=lambda lr: pooled(base, lr[1], skills)["change"]) if found else (None, None)


def goal_experts_kept(out, base, skills):
    """Goal 3: the best routed configuration keeps at least 90% of each expert's
    own-skill gain, and is level with or above the mixed LoRA at equal trainable
    parameters: the interval of (router - mixed LoRA) reaches zero or above.
    Returns (rows, the markdown table of gains kept)."""
    label, recs = best_router(out, base, skills)
    if label is None:
        return [], None
    rows = []
    for name, what in (("mixed-r64", "rank 64 (equal trainable parameters)"), ("mixed", "rank 8 (equal steps)")):
        mixed = eval_records(out, f"{name}.json")
        if mixed:
            c = pooled(mixed, recs, skills)
            rows.append((f"best router ({label}) against the mixed LoRA, {what}", c,
                         "met" if c["interval"][1] >= 0 else "not met"))
    forg = load(out, "forgetting", "forgetting.json")
    if not forg:
        return rows, None
    base_acc, router_acc = ({s: c / n for s, (c, n) in E.accuracy(r).items()} for r in (base, recs))
    lines = [f"| skill | expert's gain (points) | {label}: gain | kept | goal |", "|---|---:|---:|---:|---|"]
    for s in sorted(skills & set(forg["accuracy"])):
        if s not in forg["accuracy"][s]:
            continue
        expert, router = 100 * (forg["accuracy"][s][s] - base_acc[s]), 100 * (router_acc[s] - base_acc[s])
        kept = f"{100 * router / expert:.0f}%" if expert > 0 else "-"
        verdict = ("met" if router >= 0.9 * expert else "not met") if expert > 0 else "no gain to keep"
        lines.append(f"| {s} | {expert:+.1f} | {router:+.1f} | {kept} | {verdict} |")
    return rows, "\n".join(lines)


def minutes(out, run):
    """A train.py run's logged wall time in minutes, or None."""
    path = os.path.join(out, run, "log.json")
    log = read_log(path) if os.path.exists(path) else []
    return log[-1]["time"] / 60 if log else None


def goal_add_skill(out, skills):
    """Goal 4: adding the eighth skill to the mixture (its expert, and the router
    trained again) costs the seven old skills at most 1 point, at a fraction of
    the mixed LoRA's retraining cost. Returns (rows, the cost line, the chart's
    per-skill changes)."""
    then = sorted(glob.glob(os.path.join(out, "eval", "add-skill", "mixed7-then-*.json")))
    if not then:
        return [], None, {}
    new = os.path.basename(then[0])[len("mixed7-then-"):-len(".json")]
    r7, m7 = eval_records(out, "add-skill", "router7.json"), eval_records(out, "add-skill", "mixed7.json")
    rows, chart = [], {}
    for what, before, after, goal in (
            ("the eighth expert added, the router trained again", r7,
             eval_records(out, "moe-centroid-token.json"), True),
            ("the mixed LoRA retrained on all eight", m7, eval_records(out, "mixed.json"), False),
            (f"the seven-skill mixed LoRA trained on {new} alone", m7, read_records(then[0]), False)):
        if before and after:
            old, added = pooled(before, after, skills - {new}), pooled(before, after, {new})
            rows.append((f"{what}: the seven old skills", old, ("met" if old["change"] >= -1 else "not met")
                         if goal else "-"))
            rows.append((f"{what}: {new}", added, "-"))
            chart[what] = {s: v[0] for c in (old, added) if c for s, v in c["per_skill"].items()}
    added = [minutes(out, f"experts/{new}"), minutes(out, "routers/centroid-token")]
    retrain = minutes(out, "mixed")
    cost = None
    if None not in added and retrain:
        cost = (f"Cost: the {new} expert ({added[0]:.1f} min) and the router trained again ({added[1]:.1f} "
                f"min) took {sum(added):.1f} min, {100 * sum(added) / retrain:.0f}% of retraining the mixed "
                f"LoRA on all eight skills ({retrain:.1f} min), as logged.")
    return rows, cost, chart


def add_skill_chart(chart, path):
    """Bars: each skill's change (points) when the eighth skill is added, one bar per way of adding it."""
    plt = pyplot()
    if plt is None or not chart:
        return
    skills = sorted({s for per in chart.values() for s in per})
    fig, ax = plt.subplots(figsize=(2 + 0.9 * len(skills), 4))
    width = 0.8 / len(chart)
    for i, (what, per) in enumerate(chart.items()):
        ax.bar([j + i * width for j in range(len(skills))], [per.get(s, math.nan) for s in skills], width, label=what)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(skills))], skills, rotation=45, ha="right")
    ax.set_ylabel("accuracy change (points)")
    ax.set_title("adding the eighth skill: each skill's change", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def goal_clusters(out, skills):
    """Goal 5: experts of clusters found without labels (and seeded by a few)
    come within 2 points of the skill experts, each under the same router recipe."""
    skill_router = eval_records(out, "moe-centroid-token.json")
    rows = []
    for name, what in (("moe-clusters-token", "cluster experts, no labels"),
                       ("moe-seeded-token", "cluster experts, seeded by 10 labels a skill")):
        recs = eval_records(out, f"{name}.json")
        if skill_router and recs:
            c = pooled(skill_router, recs, skills)
            rows.append((f"{what}, against the skill experts", c, "met" if c["change"] >= -2 else "not met"))
    return rows


def goals(out):
    """The study's goals, each from the runs that decide it: (markdown, {goal: {comparison: numbers}})."""
    base = eval_records(out, "base-4shot.json")
    if base is None:
        return None, {}
    skills = {r["skill"] for r in base}
    kept_rows, kept_table = goal_experts_kept(out, base, skills)
    add_rows, cost, chart = goal_add_skill(out, skills)
    add_skill_chart(chart, os.path.join(out, "add-skill.png"))
    sections = [
        ("1. Fine-tunes forget: at least 5 points lost on the skills left behind",
         goal_forgetting(out, base, skills), None),
        ("2. The routed mixture loses at most 1 point on any skill against the base",
         goal_routing(out, base, skills), None),
        ("3. The best router keeps 90% of each expert's gain, level with the mixed LoRA", kept_rows, kept_table),
        ("4. Adding the eighth skill costs the old ones at most 1 point", add_rows,
         "\n\n".join(t for t in (cost, "![adding a skill](add-skill.png)" if chart else None) if t)),
        ("5. Cluster experts, found without labels, within 2 points of the skill experts",
         goal_clusters(out, skills), None)]
    parts, numbers = [], {}
    for title, rows, extra in sections:
        if rows or extra:
            parts += [f"### {title}", ""] + ((GOAL_HEAD + [goal_row(*r) for r in rows] + [""]) if rows else [])
            parts += [extra, ""] if extra else []
            numbers[title] = {label: c for label, c, _ in rows}
    return "\n".join(parts), numbers


# ---------------------------------------------------------------------------
# 4. REPORT.md
# ---------------------------------------------------------------------------

def report(out, docs=None):
    """out/results.md, results.json and REPORT.md of a finished study folder; with
    docs, REPORT.md and every picture it shows also go to that folder (the same
    relative paths, so its links hold)."""
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
    answers, numbers = goals(out)
    if answers:
        parts += ["## The question, goal by goal", "", "Each change is the second run's accuracy minus the "
                  "first's on the questions both answered, pooled over the skills named; wins are questions "
                  "only the second run gets right. The interval is the paired bootstrap's 95% (stats.py).", "",
                  answers]
        write_json(os.path.join(out, "goals.json"), numbers)
    for folder, title, picture in (("forgetting/forgetting.md", "Forgetting", "forgetting/forgetting.png"),
                                   ("sequential-lora/curve.md", "One LoRA trained skill after skill",
                                    "sequential-lora/curve.png"),
                                   ("sequential-full/curve.md", "The whole model fine-tuned skill after skill",
                                    "sequential-full/curve.png"),
                                   ("clusters-test/report.md", "Clusters of meta-questions (test split)",
                                    "clusters-test/clusters.png")):
        if os.path.exists(os.path.join(out, folder)):    # its own headings go below this section's
            text = re.sub(r"^#{1,2} ", "### ", open(os.path.join(out, folder)).read(), flags=re.M)
            parts += [f"## {title}", "", text, f"![{title}]({picture})", ""]
    for title, text in (("Composed questions (two skills chained) beside plain ones of the same skills",
                         composed_table(out)),
                        ("Routing accuracy: the largest weight on the question's own skill (%)",
                         routing_accuracy(out)),
                        ("Steering with --route (router centroid-token)", steering_table(out)),
                        ("Adding a skill to seven (accuracy, %)", add_skill_table(out)),
                        ("Learning rates, each family's chosen on dev questions", lr_table(out)),
                        ("Compute: the time of every run, as logged", compute_time(out))):
        if text:
            parts += [f"## {title}", "", text, ""]
    for folder, title in (("routing", "plain questions"), ("routing-composed", "composed questions")):
        pictures = sorted(glob.glob(os.path.join(out, folder, "*", "routing_*.png")))
        if pictures:
            parts += [f"## Routing on {title}: mean expert weight per layer, per skill", ""]
            parts += [f"![{os.path.relpath(h, out)}]({os.path.relpath(h, out)})" for h in pictures] + [""]
    text = "\n".join(parts)
    write_text(os.path.join(out, "REPORT.md"), text)
    if docs:
        for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            if os.path.exists(os.path.join(out, picture)):
                write_atomic(os.path.join(docs, picture),
                             lambda p, src=os.path.join(out, picture): shutil.copyfile(src, p))
        write_text(os.path.join(docs, "REPORT.md"), text)
        print(f"wrote {docs}/REPORT.md and its pictures")
    print(acc)
    print(f"wrote {out}/REPORT.md, results.md, results.json" + (", goals.json" if answers else ""))
