"""
The plateau study's report: every choice as it was made on dev questions, then
every final configuration on the test split, with its seeds pooled and Holm's
correction across the configurations compared with the base.

    python -m study plateau checkpoints/phi-tiny-plateau --data data/lila   # OUT/REPORT.md, OUT/results.json
    python -m study plateau checkpoints/phi-tiny-plateau --docs docs/plateau  # and REPORT.md, its pictures in docs/

It reads the folder study/plateau.sh writes, and a study under way gets a
report of what it has so far (a section whose runs are missing says so).
Sections:

  1. the sizing    the dev curves' table and picture, and the (rank, lr, steps) chosen
  2. the choices   each expert's kept step and dev accuracy per seed, and a picture
                   of every expert's and mixed LoRA's dev curve; the longer curves
                   (seed 1, up to 1,000 steps or 3 passes) beside the experts; the
                   mixed LoRA's rate; the router variants, each by its best dev accuracy
  3. the test      one row per configuration: its accuracy per seed (the mean over
                   skills of each skill's accuracy), the mean and range over the
                   seeds, and the paired comparison with the base (4 nearest shots):
                   the points it gains over all test questions pooled, with their
                   paired bootstrap interval; every question's verdicts pooled over
                   the seeds, the sign test's p, and p after Holm's correction over
                   the rows compared; and what the points are made of: answers of
                   the right kind (a number, an expression...) or the right value
  4. the rest      what each expert does to every skill (seed 1), the data curve,
                   the clusters' k, and the test questions phi-tiny saw in pretraining

Columns that average over skills say so; "wins : losses" count questions, pooled
over all skills, and so do the points against the base. Left out: pictures of
the test results (the tables carry them).
"""
import glob
import io
import json
import math
import os
import pickle
import sys
import zipfile
from typing import NamedTuple

from data.lila import load as load_examples, same_question
from formats.files import UserError, write_json, write_text
from formats.pictures import pyplot, save_figure
from study.curves import dev_questions, plateau_step
from study.report import best_checkpoint, best_run, pct, to_docs
from study.stats import form_markdown, holm, per_skill, pooled_verdicts, read_log, read_records

BASE = "base"          # eval/base.json: the base with 4 nearest shots, the reference of every paired test

# ---------------------------------------------------------------------------
# 1. What the runs wrote
# ---------------------------------------------------------------------------


def seeds_of(out, folder):
    """The seeds N of out/folder/seed-N (a run's folder, or an evaluation's seed-N.json), in order."""
    names = [os.path.basename(f).removesuffix(".json")[5:] for f in glob.glob(os.path.join(out, folder, "seed-*"))]
    return sorted(int(n) for n in names if n.isdigit())


def records(out, name, skill=None):
    """The records of out/eval/NAME.json (only those of `skill` if given), or None."""
    path = os.path.join(out, "eval", f"{name}.json")
    if not os.path.exists(path):
        return None
    found = read_records(path)
    return [r for r in found if r["skill"] == skill] if skill else found


def mean_over_skills(recs):
    """The mean over skills of each skill's accuracy, as the tables' columns average."""
    acc = per_skill(recs)[0]
    return sum(acc.values()) / len(acc)


class Kept(NamedTuple):
    """What kept(run) reads of a train.py run."""
    step: int | None        # the kept step (the best dev accuracy's), None if no check kept one
    last: int               # the last step logged
    steps: int | None       # the steps the run was started for (OUT/train_state.pt), None if unknown
    best: float             # the best dev accuracy
    questions: int | None   # the dev questions a check read, None if the log does not say
    plateau: int | None     # where the plateau starts, None without `questions`


def kept(run):
    """Kept(...) of a train.py run, or None before its first check; the plateau's
    start is study.curves.plateau_step's."""
    log = read_log(os.path.join(run, "log.json"))
    checks = [e for e in log if "dev_accuracy" in e]
    if not checks:
        return None
    marked = [e["step"] for e in checks if "kept" in e]
    n = dev_questions(checks)
    return Kept(marked[-1] if marked else None, max(e["step"] for e in log), planned_steps(run),
                best_checkpoint(run)[0], n, plateau_step(checks, n) if n else None)


class _Record(pickle.Unpickler):
    """Unpickles a train_state.pt's record without torch: every torch object (a
    tensor, its storage, a dtype) is read as None, and nothing else is built."""

    def find_class(self, module, name):
        if module == "torch" or module.startswith("torch."):
            return lambda *args, **kwargs: None
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a train.py state")

    def persistent_load(self, pid):
        return None


def planned_steps(run):
    """The steps a train.py run was started for, from its train_state.pt (a
    torch.save zip whose data.pkl holds the record: formats/state.py), or None
    without one. Read without torch, as the rest of python -m study."""
    path = os.path.join(run, "train_state.pt")
    if not os.path.exists(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            return _Record(io.BytesIO(z.read(pkl))).load()["steps"]
    except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a train.py state ({type(e).__name__}: {e})") from None


def unfinished(k):
    """Whether a run stopped before its last step (it resumes with --resume)."""
    return k.steps is not None and k.last < k.steps


def steps_of(k):
    """A table's cell of kept(run): "600 of 600 (the last), plateau from 300", or
    for a run stopped mid-way "800 so far, at step 801 of 1000"."""
    if unfinished(k):
        return f"{k.step} so far, at step {k.last} of {k.steps}"
    return (f"{k.step} of {k.last}{' (the last)' if k.step == k.last else ''}"
            + (f", plateau from {k.plateau}" if k.plateau is not None else ""))


def configurations(out, skills):
    """{row name: [records of each seed]} of the final configurations found: the
    experts (each on its own skill, every seed), the mixed LoRA and the router
    chosen on dev (every seed), the base's other prompts and the cluster router."""
    rows = {"base, 0-shot": [records(out, "base-0shot")],
            "base, 4 random shots of the skill": [records(out, "base-skill-shots")]}
    experts = []
    for seed in seeds_of(out, "eval/experts"):
        own = [records(out, f"experts/seed-{seed}/{s}", s) for s in skills]
        if all(own):
            experts.append([r for rs in own for r in rs])
    rows["experts, each on its own skill"] = experts
    rows["mixed LoRA, rank 8"] = [records(out, f"mixed/seed-{s}") for s in seeds_of(out, "eval/mixed")]
    rows["router chosen on dev"] = [records(out, f"routers/seed-{s}") for s in seeds_of(out, "eval/routers")]
    rows["router over cluster experts (no labels)"] = [records(out, "routers/clusters")]
    return {name: [r for r in runs if r] for name, runs in rows.items() if any(runs)}


# ---------------------------------------------------------------------------
# 2. The tables
# ---------------------------------------------------------------------------


def test_table(base, rows):
    """Markdown and {row: figures} of every configuration against the base."""
    found = {}
    for name, seeds in rows.items():
        accs = [mean_over_skills(r) for r in seeds]
        found[name] = {"seeds": len(seeds), "accuracy": accs, "mean": sum(accs) / len(accs),
                       **pooled_verdicts(base, seeds)}
    for name, p in zip(found, holm([f["p"] for f in found.values()])):
        found[name]["p_holm"] = p
    lines = ["| configuration | seeds | accuracy per seed (%) | mean (range) | points against the base, pooled "
             "(95% interval) | wins : losses | p | p, Holm |",
             "|---|---:|---|---|---|---:|---:|---:|",
             f"| base, 4 nearest shots (the reference) | 1 | {pct(mean_over_skills(base))} | | | | | |"]
    for name, f in found.items():
        spread = f" ({pct(min(f['accuracy']))} to {pct(max(f['accuracy']))})" if f["seeds"] > 1 else ""
        lo, hi = f["interval"]
        lines.append(f"| {name} | {f['seeds']} | {', '.join(map(pct, f['accuracy']))} | {pct(f['mean'])}{spread} "
                     f"| {f['points']:+.1f} ({lo:+.1f} to {hi:+.1f}) | {f['wins']} : {f['losses']} | {f['p']:.2g} "
                     f"| {f['p_holm']:.2g} |")
    return "\n".join(lines), found


def experts_table(out, skills):
    """Each expert's kept step of its steps and its best dev accuracy, per seed."""
    seeds = seeds_of(out, "experts")
    lines = ["| skill | " + " | ".join(f"seed {s}: kept step, dev accuracy (%)" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for skill in skills:
        cells = []
        for seed in seeds:
            run = os.path.join(out, "experts", f"seed-{seed}", skill)
            k = kept(run) if os.path.exists(os.path.join(run, "log.json")) else None
            cells.append("-" if k is None else f"{steps_of(k)}, {pct(k.best)}")
        lines.append(f"| {skill} | " + " | ".join(cells) + " |")
    lines.append("\nPlateau from: the first check within one standard error of the run's best dev accuracy "
                 "(sqrt(p (1 - p) / n) over its n dev questions); later gains are within the dev set's noise.")
    return "\n".join(lines) if seeds else None


def curves_picture(out, skills, path):
    """Dev accuracy against steps of every expert (a panel per skill, a line per
    seed and one for the longer curve) and of the mixed LoRA (a last panel, a line
    per seed); the path, or None if none is drawn."""
    panels = [(s, {**{f"seed {seed}": os.path.join(out, "experts", f"seed-{seed}", s)
                      for seed in seeds_of(out, "experts")}, "seed 1, longer": os.path.join(out, "long", s)})
              for s in skills]
    panels.append(("mixed LoRA, all skills", {f"seed {seed}": os.path.join(out, "mixed", f"seed-{seed}")
                                              for seed in seeds_of(out, "mixed")}))
    checks = [(title, {label: [e for e in read_log(os.path.join(run, "log.json")) if "dev_accuracy" in e]
                       for label, run in runs.items() if os.path.exists(os.path.join(run, "log.json"))})
              for title, runs in panels]
    checks = [(title, by_seed) for title, by_seed in checks if any(by_seed.values())]
    plt = pyplot() if checks else None
    if plt is None:
        return None
    cols = 3
    rows = -(-len(checks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, (title, by_seed) in zip(axes.flat, checks):
        for label, entries in by_seed.items():
            ax.plot([e["step"] for e in entries], [100 * e["dev_accuracy"] for e in entries], marker=".",
                    label=label, linestyle=":" if label.endswith("longer") else "-")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("dev accuracy (%)", fontsize=8)
    for ax in axes.flat[len(checks):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def beats(run, other):
    """Whether other's best dev accuracy beats run's p by more than one standard
    error, sqrt(p (1 - p) / n) over run's n dev questions: a change from what the
    study planned (a longer schedule for a skill's experts, more rows for the
    data curve) needs more than the dev set's noise.

        expert 58.3%, longer run 62.0% of 300 questions: 3.7 > 2.8 points -> True"""
    a, b = kept(run), kept(other)
    if a.questions is None:
        raise UserError(f"{run}/log.json: no kept check says how many dev questions it read")
    return b.best - a.best > math.sqrt(a.best * (1 - a.best) / a.questions)


def longer_table(out, skills):
    """Each longer curve (seed 1, out/long/SKILL) beside seed 1's expert of the same
    skill, whether the skill's experts train that long, and those of other seeds."""
    rows = []
    for skill in skills:
        runs = [os.path.join(out, "experts", "seed-1", skill), os.path.join(out, "long", skill)]
        if not all(os.path.exists(os.path.join(r, "log.json")) for r in runs):
            continue
        found = [kept(r) for r in runs]
        if all(found):
            others = [kept(r) for r in sorted(glob.glob(os.path.join(out, "longer", "seed-*", skill)))
                      if os.path.exists(os.path.join(r, "log.json"))]
            rows.append(f"| {skill} | " + " | ".join(f"{steps_of(k)}, {pct(k.best)}" for k in found)
                        + f" | {'yes' if beats(*runs) else 'no'} | "
                        + "; ".join(f"{steps_of(k)}, {pct(k.best)}" for k in others if k) + " |")
    return "\n".join(["| skill | seed 1's expert: kept step, dev accuracy (%) | the longer run: kept step, dev "
                      "accuracy (%) | its length kept | the other seeds at that length |", "|---|---|---|---|---|"]
                     + rows + [
        "\nThe longer runs go to 1,000 steps or 3 passes over the skill's rows, whichever comes first, at the "
        "experts' rank and rate (a schedule of their own length); the swept skills' longer curves are the "
        "sizing's runs (section 1). A skill's experts train that long where the longer run's best dev accuracy "
        "beats seed 1's expert by more than one standard error; the other seeds' runs are in longer/."]) \
        if rows else None


def dev_choice(runs, what):
    """A table of runs by their best dev accuracy, the one study/plateau.sh chose
    marked (study.report.best_run: a tie goes to the lower dev loss); while a run
    is unfinished the mark says the choice is not made yet."""
    found = {r: kept(r) for r in runs if os.path.exists(os.path.join(r, "log.json"))}
    scored = {os.path.basename(r): k for r, k in found.items() if k}
    if not scored:
        return None
    best = os.path.basename(best_run([r for r, k in found.items() if k]))
    mark = "leads so far" if any(unfinished(k) for k in scored.values()) else "chosen"
    return "\n".join([f"| {what} | best dev accuracy (%) | kept step | |", "|---|---:|---:|---|"] + [
        f"| {n} | {pct(k.best)} | {steps_of(k)} | {mark if n == best else ''} |" for n, k in scored.items()])


def kept_table(out, *patterns):
    """Every run of out/PATTERN... (globs): its kept step of its steps and its best dev accuracy."""
    runs = [r for p in patterns for r in sorted(glob.glob(os.path.join(out, p)))
            if os.path.exists(os.path.join(r, "log.json"))]
    found = {os.path.relpath(r, out): kept(r) for r in runs}
    rows = [f"| {name} | {steps_of(k)} | {pct(k.best)} |" for name, k in found.items() if k]
    return "\n".join(["| run | kept step | best dev accuracy (%) |", "|---|---:|---:|"] + rows) if rows else None


def forgetting_table(out, base, skills):
    """Seed 1's experts on every skill, minus the base, in points."""
    base_acc = per_skill(base)[0]
    lines = ["| expert | " + " | ".join(skills) + " |", "|---|" + "---:|" * len(skills)]
    for expert in skills:
        recs = records(out, f"experts/seed-1/{expert}")
        if recs is None:
            return None
        acc = per_skill(recs)[0]
        lines.append(f"| {expert} | " + " | ".join(f"{100 * (acc[s] - base_acc[s]):+.1f}" for s in skills) + " |")
    return "\n".join(lines)


def data_curve(out):
    """The swept skills' experts (seed 1) on 1/4, 1/2, all and, where the curve
    still rose on dev, twice their rows: test accuracy on their skill."""
    parts = sorted(glob.glob(os.path.join(out, "eval", "rows", "*.json")))
    skills = sorted({os.path.basename(p).rsplit("-", 1)[0] for p in parts})
    lines = ["| skill | 1/4 of the rows | 1/2 | all | twice |", "|---|---:|---:|---:|---:|"]
    for s in skills:
        cells = [records(out, f"rows/{s}-{f}", s) for f in ("0.25", "0.5")] + [
            records(out, f"experts/seed-1/{s}", s), records(out, f"rows/{s}-2", s)]
        lines.append(f"| {s} | " + " | ".join(pct(mean_over_skills(c)) if c else "-" for c in cells) + " |")
    return "\n".join(lines + [
        "\nEvery run trains the experts' steps, seed 1. Twice the rows (the fresh draw continued with its own "
        "seed: its rows and as many again) is trained only where the expert on all the rows beat the run on "
        "half of them on dev by more than one standard error (python -m study beats); \"-\": not trained."]) \
        if skills else None


def seen_in_pretraining(base, data):
    """The test questions of the base's records that are also in `data`'s train
    split (phi-tiny's pretraining rows), whitespace-normalised."""
    train = {same_question(e) for e in load_examples(data, split="train")}
    return sorted(r["question"] for r in base if (r["skill"], " ".join(r["question"].split())) in train)


# ---------------------------------------------------------------------------
# 3. REPORT.md
# ---------------------------------------------------------------------------


def section(title, body, missing="not run yet"):
    """A section of REPORT.md (numbered when the report is written)."""
    return [f"## {title}", "", body if body else f"({missing})", ""]


def numbered(lines):
    """The sections' titles numbered in order: "## Test" -> "## 3. Test"."""
    n = iter(range(1, len(lines) + 1))
    return [f"## {next(n)}. {line[3:]}" if line.startswith("## ") else line for line in lines]


def test_sections(out, base, skills, data):
    """({row: figures}, REPORT.md's lines) of the test stage: every configuration
    against the base, what its points are made of, what each expert does to every
    skill, and the test questions in phi-tiny's pretraining rows."""
    rows = configurations(out, skills)
    table, found = test_table(base, rows)
    lines = section(f"Test: {len(base)} questions ({len(skills)} skills)", table)
    lines += section("What the points are made of: the kind of answer, or its value", form_markdown(
        "the base, 4 nearest shots", base, rows) + "\n\nThe kind of an answer: a number, an expression, a "
        "list, a time, true/false or anything else (data.score.answer_form). A question won counts to the "
        "kind where the base's answer was of another kind than the gold answer, and a question lost where "
        "the configuration's was; every other question won or lost had an answer of the right kind and "
        "the wrong value. Pooled over the seeds, as the test's points.")
    lines += section("What each expert does to every skill (seed 1, points against the base)",
                     forgetting_table(out, base, skills))
    seen = seen_in_pretraining(base, data)
    lines += section("Test questions in phi-tiny's pretraining rows",
                     f"{len(seen)} of the {len(base)}" + (": " + "; ".join(seen[:5]) if seen else ""))
    return found, lines


def report(out, data, docs=None):
    """OUT/REPORT.md and OUT/results.json of a plateau study folder, from what it
    holds; with docs, REPORT.md and its pictures also go there."""
    if not os.path.exists(os.path.join(out, "data.sha256")):
        raise UserError(f"{out}: no data.sha256 here; expected a study folder that study/plateau.sh wrote")
    base = records(out, BASE)
    skills = sorted({r["skill"] for r in base} if base else     # before the test: the experts trained so far
                    {os.path.basename(p) for p in glob.glob(os.path.join(out, "experts", "seed-*", "*"))})
    curves = os.path.join(out, "curves", "curves.md")
    lines = ["# The plateau study", "",
             "Every choice below was made on dev questions (data/plateau's dev split, 4 nearest shots); the "
             "test split was read once per final configuration. Accuracy columns are means over skills of each "
             "skill's accuracy; points against the base are the seeds' mean accuracy minus the base's over "
             "all test questions pooled (so they differ slightly from the difference of the columns), with a "
             "paired bootstrap interval; wins : losses count test questions over all skills, each question's "
             "verdicts pooled over the seeds; p is the two-sided sign test, then Holm's correction over the "
             "rows.", ""]
    lines += section("Sizing: dev learning curves", open(curves).read() + "\n\n![dev curves](curves/curves.png)"
                     if os.path.exists(curves) else None)
    table = experts_table(out, skills) if skills else None
    if table and curves_picture(out, skills, os.path.join(out, "experts", "curves.png")):
        table += "\n\n![every expert's and mixed LoRA's dev curve](experts/curves.png)"
    lines += section("Experts: kept step and dev accuracy", table)
    lines += section("Experts trained longer: the longer curves (seed 1) and the lengths kept",
                     longer_table(out, skills))
    lines += section("Mixed LoRA: learning rate", dev_choice(sorted(glob.glob(f"{out}/mixed-lr/lr*")), "rate"))
    lines += section("Mixed LoRA: each seed, as many steps as the experts together",
                     kept_table(out, "mixed/seed-*"))
    lines += section("Router variants (over seed 1's experts)",
                     dev_choice(sorted(glob.glob(f"{out}/routers/seed-1/*")), "variant"))
    lines += section("The other runs: the chosen router of each seed, the data curve, the cluster experts",
                     kept_table(out, "routers/seed-[!1]*/*", "routers/clusters", "rows/*-*", "cluster-experts/*"))
    found, tested = test_sections(out, base, skills, data) if base else ({}, section("Test", None))
    lines += tested
    lines += section("The data curve (seed 1, test accuracy on the skill, %)", data_curve(out))
    sweep = os.path.join(out, "clusters", "sweep.json")
    if os.path.exists(sweep):
        s = json.load(open(sweep))
        lines += section("Clusters: k by silhouette", "| k | silhouette |\n|---:|---:|\n" + "\n".join(
            f"| {r['k']} | {r['silhouette']:.3f} |" for r in s["runs"]) + f"\n\nkept: k = {s['k']}" + (
            " (the top of the range: the silhouette still rises there, and the range's top caps the number of "
            "cluster experts)" if s["k"] == max(r["k"] for r in s["runs"]) else ""))
    lines = numbered(lines)
    write_text(os.path.join(out, "REPORT.md"), "\n".join(lines))
    write_json(os.path.join(out, "results.json"), {"test": found})
    if docs:
        to_docs("\n".join(lines), out, docs)
    print(f"wrote {out}/REPORT.md and {out}/results.json", file=sys.stderr)
