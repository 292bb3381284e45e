"""
The report of a finished `make experiment`: every table of the study folder
(study/experiment.sh's OUT) and the study's question answered goal by goal
(study/goals.py), in one REPORT.md.

    python -m study report out          # out/REPORT.md, results.md, results.json, goals.json
    python -m study report out --docs docs/study    # and REPORT.md with its pictures to docs/study
    python -m study best out/lr/mixed-1e-3 out/lr/mixed-2e-3   # the best learning rate's run

Everything comes from what eval.py, python -m study, cluster.py and train.py wrote;
nothing is recomputed, and a missing piece is reported missing, not invented.
The tables: accuracy and answer NLL of every configuration, composed questions,
routing accuracy, steering, adding a skill, the learning-rate sweeps, and the
time of every run.

Left out: plots beyond those study/cli.py, eval.py and study/goals.py draw (forgetting
matrix and curve, routing heatmaps, the add-a-skill chart).
"""
import glob
import math
import os
import re
import shutil
import sys
from collections import defaultdict

from formats.files import UserError, write_atomic, write_json, write_text
from study.goals import ROWS, SHOTS_ROWS, goals
from study.stats import config_rows, load, logged_seconds, paired, paired_markdown, read_log, read_records

# ---------------------------------------------------------------------------
# 1. The study folder's pieces
# ---------------------------------------------------------------------------

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
        for name, label in ROWS + SHOTS_ROWS:
            report = load(out, "eval", f"{name}.json")
            if report is not None and metric in report:
                rows[label] = report[metric]
            for folder, what in (("experts", "each skill's expert on its own skill, nearest shots"),
                                 ("experts-submodule-rows", "each skill's expert trained on rows of one submodule, "
                                  "on its own skill, nearest shots")):
                own = own_skill_runs(out, f"nearest/{folder}", metric) if name == "nearest/mixed-r64" else None
                if own:
                    rows[what] = own
            if name == "mixed-r64" and forg_key in forg:
                rows["each skill's expert on its own skill"] = {e: v[e] for e, v in forg[forg_key].items()
                                                                 if e in v}
            own = own_skill_runs(out, "full", metric) if name == "mixed-r64" else None
            if own:
                rows["each skill's full fine-tune on its own skill"] = own
        tables[metric] = rows
    return tables


def own_skill_runs(out, folder, metric):
    """{skill: metric} of each run eval/FOLDER/SKILL.json on its own skill."""
    runs = {os.path.basename(p)[:-5]: load(out, "eval", folder, os.path.basename(p))
            for p in sorted(glob.glob(os.path.join(out, "eval", folder, "*.json")))}
    return {s: r[metric][s] for s, r in runs.items() if s in r.get(metric, {})}


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
                raise UserError(f"{os.path.join(out, 'eval', 'steer', f'{kind}-{s}.json')}: no accuracy "
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
    """A skill added to a mixture of the other skills' experts and to a mixed LoRA on them:
    accuracy per skill before and after, then each addition against its
    start on the old skills, question by question."""
    then = sorted(glob.glob(os.path.join(out, "eval", "add-skill", "mixed7-then-*.json")))
    paths = {"router over the old skills' experts": ("add-skill", "router7.json"),
             "new expert added, router trained again": ("moe-centroid-token.json",),
             "mixed LoRA on the old skills": ("add-skill", "mixed7.json"),
             "... then trained on the new skill alone": ("add-skill", os.path.basename(then[0])) if then else (),
             "mixed LoRA retrained on all skills": ("mixed.json",)}
    found = {name: (os.path.join(out, "eval", *p), load(out, "eval", *p)) for name, p in paths.items() if p}
    paths = {name: path for name, (path, report) in found.items() if report is not None}
    if "router over the old skills' experts" not in paths:
        return None
    acc = {name: found[name][1]["accuracy"] for name in paths}
    skills = sorted({s for per in acc.values() for s in per})
    parts = config_rows({name: {s: 100 * v for s, v in per.items()} for name, per in acc.items()}, skills, "{:.1f}")
    for before, after in (("router over the old skills' experts", "new expert added, router trained again"),
                          ("mixed LoRA on the old skills", "... then trained on the new skill alone"),
                          ("mixed LoRA on the old skills", "mixed LoRA retrained on all skills")):
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
            raise UserError(f"{os.path.join(out, 'eval', name + '.json')}: a record has no 'routing', "
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
            seconds = logged_seconds(path)
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
            raise UserError(f"{r}/log.json: no dev accuracy yet; expected a finished train.py run")
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
# 3. REPORT.md
# ---------------------------------------------------------------------------

def to_docs(text, out, docs):
    """A report's text as docs/REPORT.md, with every picture it links copied from
    out to the same relative path under docs (so the links hold)."""
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        if os.path.exists(os.path.join(out, picture)):
            write_atomic(os.path.join(docs, picture), lambda p, src=os.path.join(out, picture): shutil.copyfile(src, p))
    write_text(os.path.join(docs, "REPORT.md"), text)
    print(f"wrote {docs}/REPORT.md and its pictures", file=sys.stderr)


def report(out, docs=None):
    """out/results.md, results.json and REPORT.md of a finished study folder; with
    docs, REPORT.md and every picture it shows also go to that folder (the same
    relative paths, so its links hold)."""
    if not glob.glob(os.path.join(out, "eval", "*.json")):
        raise UserError(f"{out}: no eval/*.json here; expected a study folder (experiment.sh's OUT)")
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
            drawn = os.path.exists(os.path.join(out, picture))    # no matplotlib, no picture: no link
            parts += [f"## {title}", "", text, *([f"![{title}]({picture})"] if drawn else []), ""]
    for title, text in (("Composed questions (two skills chained) beside plain ones of the same skills",
                         composed_table(out)),
                        ("Routing accuracy: the largest weight on the question's own skill (%)",
                         routing_accuracy(out)),
                        ("Steering with --route (router centroid-token)", steering_table(out)),
                        ("Adding a skill to the others (accuracy, %)", add_skill_table(out)),
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
        to_docs(text, out, docs)
    print(acc)
    print(f"wrote {out}/REPORT.md, results.md, results.json" + (", goals.json" if answers else ""), file=sys.stderr)
