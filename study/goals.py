"""
The study's question, goal by goal: do routed skill experts keep what a
fine-tune forgets, at the cost of a mixed LoRA? Each goal is answered from the
runs of a `make experiment` folder that decide it (study/report.py puts the
answers in REPORT.md and goals.json, run by `python -m study report`):

1. a full fine-tune of one skill, and fine-tunes skill after skill, lose at
   least 5 points on the skills they leave behind;
2. the routed mixture loses at most 1 point on any skill against the base;
3. the best router keeps 90% of each expert's own-skill gain and is level with
   the mixed LoRA at equal trainable parameters;
4. adding a skill (the eighth) costs the old ones at most 1 point, at a
   fraction of retraining the mixed LoRA;
5. cluster experts, assigned without labels, come within 2 points of the
   skill experts.

Before the goals, the configurations they build on are compared with each
other (the mixed LoRA and each expert against the base, the experts against the
mixed LoRA, ...), without a verdict.

Every comparison is one row: the second run against the first on the
questions both answered, pooled over the skills named (pooled()): the change in
points, the paired bootstrap's 95% interval, wins : losses with the sign test,
the worst skill, and the change in answer NLL. For example, 40 wins and 25
losses over 1,600 questions is +0.9 points, interval -0.1 to +1.9: level.

Left out: corrections for many comparisons (each row is one test), and goals
the runs cannot decide (a missing run leaves its row out, it is not guessed).
"""
import glob
import math
import os
import re

from data.score import accuracy
from formats.pictures import pyplot, save_figure
from study.stats import bootstrap_interval, load, logged_seconds, paired, read_records, sign_test

# The study's configurations (out/eval/NAME.json) and how the report names them.
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
# The base with shots of the question's own submodule (eval/submodule/), and the same
# configurations with the nearest train questions as shots (eval/nearest/)
SHOTS_ROWS = [("submodule/base-4shot", "base, 4-shot, shots of its own submodule (an oracle)")] + \
    [(f"nearest/{name}", f"{label}, nearest shots") for name, label in ROWS if name != "base-0shot"]


# ---------------------------------------------------------------------------
# 1. One comparison, one row
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
    """One row of a goal's table (GOAL_HEAD): a pooled() comparison and its verdict."""
    lo, hi = c["interval"]
    worst, (change, p) = c["worst"], c["per_skill"][c["worst"]]
    nll = "-" if c["answer_nll_change"] is None else f"{round(c['answer_nll_change'], 3) + 0.0:+.3f}"  # no -0.000
    return (f"| {label} | {c['questions']} | {c['change']:+.1f} | {lo:+.1f} to {hi:+.1f} | {c['wins']} : "
            f"{c['losses']} | {c['p']:.2g} | {worst} {change:+.1f} (p {p:.2g}) | {nll} | {verdict} |")


def eval_records(out, *parts):
    """The records of out/eval/parts..., or None where the run or its records are missing."""
    report = load(out, "eval", *parts)          # checked, records included, as it is read
    return report["records"] if report and "records" in report else None


# ---------------------------------------------------------------------------
# 2. The five goals
# ---------------------------------------------------------------------------

def own_skill(out, folder, skills):
    """Each skill's questions as that skill's run in eval/FOLDER/ answered them
    (the forgetting matrix's diagonal), or None."""
    recs = [r for s in sorted(skills) for r in eval_records(out, folder, f"{s}.json") or [] if r["skill"] == s]
    return recs or None


def the_configurations(out, base, skills, router):
    """Before the goals: each configuration that the goals build on against its
    reference, over all skills (no verdict); router: best_router()'s records."""
    runs = {"base": base, "base-0shot": eval_records(out, "base-0shot.json"), "mixed": eval_records(out, "mixed.json"),
            "mixed-r64": eval_records(out, "mixed-r64.json"), "experts": own_skill(out, "experts", skills),
            "full": own_skill(out, "full", skills), "router": router}
    pairs = [("the base 0-shot against 4-shot", "base", "base-0shot"),
             ("the mixed LoRA against the base", "base", "mixed"),
             ("the mixed LoRA at rank 64 against rank 8", "mixed", "mixed-r64"),
             ("each skill's expert on its own skill against the base", "base", "experts"),
             ("each skill's expert on its own skill against the mixed LoRA", "mixed", "experts"),
             ("each skill's full fine-tune on its own skill against the base", "base", "full"),
             ("each skill's full fine-tune on its own skill against its expert", "experts", "full"),
             ("the best router against each skill's expert on its own skill", "experts", "router")]
    rows = [(label, pooled(runs[a], runs[b], skills), "-") for label, a, b in pairs if runs[a] and runs[b]]
    return [row for row in rows if row[1]]          # None: no question in common


def the_strongest_prompt(out, skills):
    """The base with each source of shots, and what the fine-tunes add over the
    strongest prompt that reads no label: each configuration with the nearest shots
    against the base with them, and against itself with skill shots (no verdict).
    Returns (rows, the records of the base with the nearest shots)."""
    near = eval_records(out, "nearest", "base-4shot.json")
    if near is None:
        return [], None
    best = best_router(out, near, skills, "nearest")
    runs = {"skill": eval_records(out, "base-4shot.json"), "0-shot": eval_records(out, "base-0shot.json"),
            "nearest": near, "submodule": eval_records(out, "submodule", "base-4shot.json"),
            "mixed": eval_records(out, "mixed.json"), "mixed, nearest": eval_records(out, "nearest", "mixed.json"),
            "r64, nearest": eval_records(out, "nearest", "mixed-r64.json"),
            "experts": own_skill(out, "experts", skills), "experts, nearest": own_skill(out, "nearest/experts", skills),
            "submodule rows, nearest": own_skill(out, "nearest/experts-submodule-rows", skills),
            "router, nearest": best[1]}
    pairs = [("the base: nearest shots against random shots of the skill", "skill", "nearest"),
             ("the base: nearest shots against 0-shot", "0-shot", "nearest"),
             ("the base: shots of its own submodule (an oracle) against nearest shots", "nearest", "submodule"),
             ("the mixed LoRA against the base, both with nearest shots", "nearest", "mixed, nearest"),
             ("the mixed LoRA at rank 64 against the base, both with nearest shots", "nearest", "r64, nearest"),
             ("each skill's expert on its own skill against the base, both with nearest shots", "nearest",
              "experts, nearest"),
             (f"the best router ({best[0]}) against the base, both with nearest shots", "nearest", "router, nearest"),
             ("the best router against each skill's expert on its own skill, both with nearest shots",
              "experts, nearest", "router, nearest"),
             ("each skill's expert trained on rows of one submodule, on its own skill, against the base, both "
              "with nearest shots", "nearest", "submodule rows, nearest"),
             ("each skill's expert: rows of one submodule against rows of the skill, both with nearest shots",
              "experts, nearest", "submodule rows, nearest"),
             ("the mixed LoRA: nearest shots against skill shots", "mixed", "mixed, nearest"),
             ("each skill's expert on its own skill: nearest shots against skill shots", "experts",
              "experts, nearest")]
    rows = [(label, pooled(runs[a], runs[b], skills), "-") for label, a, b in pairs if runs[a] and runs[b]]
    for path in sorted(glob.glob(os.path.join(out, "eval", "nearest", "longer", "expert-*steps.json"))):
        steps = os.path.basename(path)[len("expert-"):-len("steps.json")]
        recs = read_records(path)
        rows.append((f"the {recs[0]['skill']} expert at {steps} steps against the base, both with nearest shots",
                     pooled(near, recs, skills), "-"))
    return [row for row in rows if row[1]], near


def goal_forgetting(out, base, skills, shots=""):
    """Goal 1: a full fine-tune of one skill, and a fine-tune skill after skill,
    lose at least 5 points on the skills they leave behind. Shown too, marked as
    such: each LoRA expert on the other skills (what routing must keep it from),
    and every run of the one-skill sweeps, learning rates and longer training (how
    forgetting grows with the rate and the steps). shots: "" for the runs with
    skill shots, "nearest" for those under eval/nearest/ (judged against base, the
    same prompt's). Returns [(label, numbers, verdict)]."""
    rows = []

    def add(label, c, verdict=None):
        if c:
            rows.append((label, c, verdict or ("met" if c["change"] <= -5 else "not met")))
    for folder, what, verdict in (("full", "full fine-tune", None), ("experts", "LoRA expert", "(expert)")):
        for path in sorted(glob.glob(os.path.join(out, "eval", shots, folder, "*.json")) if not shots else []):
            skill = os.path.basename(path)[:-5]
            add(f"{what} of {skill}: the other skills, against the base",
                pooled(base, read_records(path), skills - {skill}), verdict)
    for kind, what in (("lora", "one LoRA"), ("full", "the whole model")):
        stages = sorted(glob.glob(os.path.join(out, "eval", shots, f"sequential-{kind}", "*-*.json")),
                        key=lambda p: int(os.path.basename(p).partition("-")[0]))
        if len(stages) < 2:
            continue
        trained = {os.path.basename(p)[:-5].partition("-")[2]: p for p in stages[:-1]}
        before = [r for s, p in trained.items() for r in read_records(p) if r["skill"] == s]
        add(f"{what} skill after skill: each skill right after its stage, against after the last",
            pooled(before, read_records(stages[-1]), set(trained)))
    sweeps = [(os.path.basename(os.path.dirname(p))[len("sweep-"):], p,     # sweep-SKILL/FAMILY-LR[-Nsteps]
               *re.fullmatch(r"(\w+)-(.+?)(?:-(\d+)steps)?", os.path.basename(p)[:-5]).groups())
              for p in glob.glob(os.path.join(out, "eval", shots, "sweep-*", "*-*.json"))]
    for skill, path, family, lr, steps in sorted(sweeps, key=lambda r: (r[0], r[2], float(r[3]), int(r[4] or 0))):
        what = "full fine-tune" if family == "full" else "LoRA expert"    # a longer run names its steps
        add(f"{what} of {skill} at lr {lr}{f', {steps} steps' if steps else ''}: the other skills, against the base",
            pooled(base, read_records(path), skills - {skill}), "(sweep)")
    return rows


def goal_routing(out, base, skills, shots=""):
    """Goal 2: the routed mixture loses at most 1 point on any skill against the base."""
    rows = []
    for name, label in ROWS:
        recs = eval_records(out, shots, f"{name}.json") if name.startswith("moe-") else None
        if recs:
            c = pooled(base, recs, skills)
            rows.append((f"{label}, against the base", c, "met" if c["per_skill"][c["worst"]][0] >= -1 else "not met"))
    return rows


def best_router(out, base, skills, shots=""):
    """The routed configuration with the highest accuracy: (label, records)."""
    found = [(label, eval_records(out, shots, f"{name}.json")) for name, label in ROWS if name.startswith("moe-")]
    found = [(label, recs) for label, recs in found if recs]
    return max(found, key=lambda lr: pooled(base, lr[1], skills)["change"]) if found else (None, None)


def goal_experts_kept(out, base, skills, best):
    """Goal 3: the best routed configuration keeps at least 90% of each expert's
    own-skill gain, and is level with or above the mixed LoRA at equal trainable
    parameters: the interval of (router - mixed LoRA) reaches zero or above.
    best: best_router()'s (label, records). Returns (rows, the markdown table of gains kept)."""
    label, recs = best
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
    base_acc, router_acc = ({s: c / n for s, (c, n) in accuracy(r).items()} for r in (base, recs))
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
    seconds = logged_seconds(os.path.join(out, run, "log.json"))
    return None if seconds is None else seconds / 60


def goal_add_skill(out, skills, shots=""):
    """Goal 4: adding a skill to the mixture (its expert, and the router trained
    again) costs the old skills (seven in the study) at most 1 point, at a fraction of
    the mixed LoRA's retraining cost. Returns (rows, the cost line, the chart's
    per-skill changes)."""
    then = sorted(glob.glob(os.path.join(out, "eval", shots, "add-skill", "mixed7-then-*.json")))
    if not then:
        return [], None, {}
    new = os.path.basename(then[0])[len("mixed7-then-"):-len(".json")]
    r7, m7 = (eval_records(out, shots, "add-skill", f"{n}.json") for n in ("router7", "mixed7"))
    rows, chart = [], {}
    for what, before, after, goal in (
            (f"the {new} expert added, the router trained again", r7,
             eval_records(out, shots, "moe-centroid-token.json"), True),
            ("the mixed LoRA retrained on all skills", m7, eval_records(out, shots, "mixed.json"), False),
            (f"the old skills' mixed LoRA trained on {new} alone", m7, read_records(then[0]), False)):
        if before and after:
            old, added = pooled(before, after, skills - {new}), pooled(before, after, {new})
            rows.append((f"{what}: the old skills", old, ("met" if old["change"] >= -1 else "not met")
                         if goal else "-"))
            rows.append((f"{what}: {new}", added, "-"))
            chart[what] = {s: v[0] for c in (old, added) if c for s, v in c["per_skill"].items()}
    added = [minutes(out, f"experts/{new}"), minutes(out, "routers/centroid-token")]
    retrain = minutes(out, "mixed")
    cost = None
    if None not in added and retrain:
        cost = (f"Cost: the {new} expert ({added[0]:.1f} min) and the router trained again ({added[1]:.1f} "
                f"min) took {sum(added):.1f} min, {100 * sum(added) / retrain:.0f}% of retraining the mixed "
                f"LoRA on all skills ({retrain:.1f} min), as logged.")
    return rows, cost, chart


def add_skill_chart(chart, path):
    """Bars: each skill's change (points) when a skill is added, one bar per way of adding it.
    Returns whether it drew them (not without matplotlib, nor without runs that add a skill)."""
    plt = pyplot() if chart else None
    if plt is None:
        return False
    skills = sorted({s for per in chart.values() for s in per})
    fig, ax = plt.subplots(figsize=(2 + 0.9 * len(skills), 4))
    width = 0.8 / len(chart)
    for i, (what, per) in enumerate(chart.items()):
        ax.bar([j + i * width for j in range(len(skills))], [per.get(s, math.nan) for s in skills], width, label=what)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(skills))], skills, rotation=45, ha="right")
    ax.set_ylabel("accuracy change (points)")
    ax.set_title("adding a skill: each skill's change", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return True


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


# ---------------------------------------------------------------------------
# 3. All of them, for REPORT.md
# ---------------------------------------------------------------------------

def goals(out):
    """The study's goals, each from the runs that decide it: (markdown, {goal: {comparison: numbers}})."""
    base = eval_records(out, "base-4shot.json")
    if base is None:
        return None, {}
    skills = {r["skill"] for r in base}
    best = best_router(out, base, skills)      # read once, used by two sections
    kept_rows, kept_table = goal_experts_kept(out, base, skills, best)
    add_rows, cost, chart = goal_add_skill(out, skills)
    drawn = add_skill_chart(chart, os.path.join(out, "add-skill.png"))
    sections = [
        ("The configurations against each other, over all skills", the_configurations(out, base, skills, best[1]),
         None),
        ("1. Fine-tunes forget: at least 5 points lost on the skills left behind",
         goal_forgetting(out, base, skills), None),
        ("2. The routed mixture loses at most 1 point on any skill against the base",
         goal_routing(out, base, skills), None),
        ("3. The best router keeps 90% of each expert's gain, level with the mixed LoRA", kept_rows, kept_table),
        ("4. Adding a skill costs the old ones at most 1 point", add_rows,
         "\n\n".join(t for t in (cost, "![adding a skill](add-skill.png)" if drawn else None) if t)),
        ("5. Cluster experts, found without labels, within 2 points of the skill experts",
         goal_clusters(out, skills), None)]
    prompt_rows, near = the_strongest_prompt(out, skills)
    if near:
        again = (goal_forgetting(out, near, skills, "nearest") + goal_routing(out, near, skills, "nearest")
                 + goal_add_skill(out, skills, "nearest")[0])
        sections += [("6. The strongest prompt without labels: the base with the nearest shots, and what the "
                      "fine-tunes add over it", prompt_rows, None),
                     ("7. Goals 1, 2 and 4 judged again with the nearest shots", again, None)]
    parts, numbers = [], {}
    for title, rows, extra in sections:
        if rows or extra:
            parts += [f"### {title}", ""] + ((GOAL_HEAD + [goal_row(*r) for r in rows] + [""]) if rows else [])
            parts += [extra, ""] if extra else []
            numbers[title] = {label: c for label, c, _ in rows}
    return "\n".join(parts), numbers


