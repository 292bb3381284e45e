"""
Dev learning curves: where each LoRA run's dev accuracy stops rising, and the
learning rate and rank that the study keeps, read from train.py's log.json.

    python -m study curves out/plateau/curves/*/* --out out/plateau/curves

Each run is a folder SKILL/rRANK-lrLR (train.py --expert SKILL --rank RANK --lr LR),
checked on the dev split every --eval-every steps. A run's kept step is the
first with its best dev accuracy (train.py keeps that adapter); the step of its
lowest dev loss is shown beside it. A run's plateau starts at the first check
within one standard error of its best accuracy p (sqrt(p (1 - p) / n) over its
n dev questions): later gains are within the noise of the dev set. The choice
is the (rank, lr) whose best dev accuracy, averaged over the skills swept, is
highest; a tie goes to the lower mean dev loss at the kept steps, then to the
smaller rank and rate. The experts then train for twice the latest plateau
step of the chosen setting over the skills swept (room for each expert's own
curve to show its plateau), at most the longest of its runs; each keeps its
own best dev step.

Writes curves.md (a table per skill: dev accuracy at every check), curves.json
(the curves, the kept steps and the choice) and curves.png (dev accuracy and dev
loss against steps, one panel per skill and rank) into --out, and prints the
choice as "RANK LR STEPS" for study/plateau.sh. Reads only what the runs wrote.

The data curve's questions (python -m study subset): a skill's task file with a
fraction of its train questions, to train the same expert on 1/4, 1/2 and all
of its rows.

Left out: smoothing and early stopping rules; the curves are shown as measured.
"""
import math
import os
import random
import re
import sys

from formats.files import UserError, read_object, write_json, write_text
from formats.pictures import pyplot, save_figure
from study.stats import read_log

NAME = re.compile(r"r(\d+)-lr([0-9.e+-]+)")
QUESTIONS = re.compile(r"of (\d+) dev questions")   # in train.py's "kept" mark: how many the accuracy is over


def read_curve(folder):
    """{"skill", "rank", "lr", "steps", "accuracy", "loss", "kept", "lowest_loss"} of
    one run folder SKILL/rRANK-lrLR; the curve's lists are in step order."""
    m = NAME.fullmatch(os.path.basename(os.path.normpath(folder)))
    if not m:
        raise UserError(f"{folder}: expected a run folder named rRANK-lrLR inside its skill's folder, "
                        "e.g. arithmetic/r8-lr1e-3")
    checks = [e for e in read_log(os.path.join(folder, "log.json")) if "dev_accuracy" in e]
    if not checks:
        raise UserError(f"{folder}/log.json: no dev evaluation yet")
    kept = [e["step"] for e in checks if "kept" in e]
    best = max(e["dev_accuracy"] for e in checks)
    lowest = min(checks, key=lambda e: e["dev_loss"])["step"]
    n = dev_questions(checks)
    if n is None:
        raise UserError(f"{folder}/log.json: no kept check says how many dev questions it read; expected "
                        "train.py's mark, e.g. 'best dev accuracy so far, mean over skills of 300 dev questions'")
    return {"skill": os.path.basename(os.path.dirname(os.path.normpath(folder))), "rank": int(m[1]), "lr": m[2],
            "steps": [e["step"] for e in checks], "accuracy": [e["dev_accuracy"] for e in checks],
            "loss": [e["dev_loss"] for e in checks], "best": best,
            "kept": kept[-1] if kept else next(e["step"] for e in checks if e["dev_accuracy"] == best),
            "lowest_loss": lowest, "dev_questions": n,
            "plateau": plateau_step(checks, n)}


def dev_questions(checks):
    """How many dev questions a run's checks read, as train.py's kept mark says
    ("... mean over skills of 300 dev questions ..."), or None."""
    counted = [QUESTIONS.search(e["kept"]) for e in checks if "kept" in e]
    return int(next(c for c in counted if c)[1]) if any(counted) else None


def plateau_step(checks, n):
    """The step of the first check within one standard error of the best dev
    accuracy p, sqrt(p (1 - p) / n) over n dev questions: where the plateau starts."""
    best = max(e["dev_accuracy"] for e in checks)
    se = math.sqrt(best * (1 - best) / n)
    return next(e["step"] for e in checks if e["dev_accuracy"] >= best - se)


def choose(curves):
    """(rank, lr) with the highest best dev accuracy averaged over the skills;
    ties: the lower mean dev loss at the kept steps, then the smaller rank and lr.
    Every (rank, lr) must have run on every skill."""
    skills = sorted({c["skill"] for c in curves})
    by = {}
    for c in curves:
        by.setdefault((c["rank"], c["lr"]), {})[c["skill"]] = c
    incomplete = {k: sorted(set(skills) - set(v)) for k, v in by.items() if set(v) != set(skills)}
    if incomplete:
        (rank, lr), missing = next(iter(incomplete.items()))
        raise UserError(f"rank {rank}, lr {lr} has no run on {missing}; every setting needs one per skill")

    def score(key):
        runs = by[key].values()
        loss = sum(c["loss"][c["steps"].index(c["kept"])] for c in runs) / len(runs)
        return -sum(c["best"] for c in runs) / len(runs), loss, key[0], float(key[1])
    return min(by, key=score)


def steps_for(curves, choice):
    """The experts' steps: twice the latest plateau step of the chosen (rank, lr)
    over the skills, at most the longest of its runs.

        plateaus at 200 and 100, runs of 1000 and 400 steps -> 400"""
    runs = [c for c in curves if (c["rank"], c["lr"]) == choice]
    return min(2 * max(c["plateau"] for c in runs), max(c["steps"][-1] for c in runs))


def markdown(curves, choice, expert_steps):
    lines = []
    for skill in sorted({c["skill"] for c in curves}):
        runs = sorted((c for c in curves if c["skill"] == skill), key=lambda c: (c["rank"], float(c["lr"])))
        steps = sorted({s for c in runs for s in c["steps"]})
        lines += [f"### {skill}: dev accuracy (%) at each check", "",
                  "| rank | lr | " + " | ".join(map(str, steps)) + " | kept step | plateau from | lowest dev loss at |",
                  "|---:|---:|" + "---:|" * (len(steps) + 3)]
        for c in runs:
            at = dict(zip(c["steps"], c["accuracy"]))
            cells = [("**%.1f**" if s == c["kept"] else "%.1f") % (100 * at[s]) if s in at else "" for s in steps]
            lines.append(f"| {c['rank']} | {c['lr']} | " + " | ".join(cells) + f" | {c['kept']} | {c['plateau']} "
                         f"| {c['lowest_loss']} |")
        lines.append("")
    lines.append("Bold: the kept step (the first with the run's best dev accuracy). Plateau from: the first check "
                 "within one standard error of that best, sqrt(p (1 - p) / n) over the run's n dev questions.")
    lines.append("")
    lines.append(f"Chosen on dev: rank {choice[0]}, learning rate {choice[1]} (the highest best dev accuracy "
                 f"averaged over these skills); the experts train {expert_steps} steps (twice the latest plateau step of "
                 "that setting, at most its longest run) and each keeps its own best dev step.")
    return "\n".join(lines)


def picture(curves, path):
    """Dev accuracy (top) and dev loss (bottom) against steps: a column per
    (skill, rank), a line per learning rate."""
    plt = pyplot()
    if plt is None:
        return
    panels = sorted({(c["skill"], c["rank"]) for c in curves})
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 5.5), squeeze=False, sharex="col")
    for j, (skill, rank) in enumerate(panels):
        for c in sorted((c for c in curves if (c["skill"], c["rank"]) == (skill, rank)), key=lambda c: float(c["lr"])):
            axes[0][j].plot(c["steps"], [100 * a for a in c["accuracy"]], marker=".", label=f"lr {c['lr']}")
            axes[1][j].plot(c["steps"], c["loss"], marker=".", label=f"lr {c['lr']}")
        axes[0][j].set_title(f"{skill}, rank {rank}", fontsize=9)
        axes[1][j].set_xlabel("step")
    axes[0][0].set_ylabel("dev accuracy (%)")
    axes[1][0].set_ylabel("dev loss")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def curves(runs, out):
    """python -m study curves: the table, the picture and the choice of runs' curves."""
    found = [read_curve(r) for r in runs]
    choice = choose(found)
    steps = steps_for(found, choice)
    os.makedirs(out, exist_ok=True)
    write_text(os.path.join(out, "curves.md"), markdown(found, choice, steps))
    write_json(os.path.join(out, "curves.json"), {"runs": found, "choice": {"rank": choice[0], "lr": choice[1],
                                                                            "steps": steps}})
    picture(found, os.path.join(out, "curves.png"))
    print(f"wrote {out}/curves.md and {out}/curves.json", file=sys.stderr)
    return (*choice, steps)


def subset(data, skills, fraction, seed, out):
    """python -m study subset: each skill's task file of `data` with `fraction`
    of its train questions, drawn within each submodule (the mix of submodules
    stays) by a seeded shuffle whose prefixes nest, so the 1/4 is part of the
    1/2. Dev and test questions are kept whole; the files go to `out`. An
    expert trained on them draws its dev checks' shots from the same part (the
    shot pool of train.py is its --data's train split); its test evaluation
    (eval.py --data DATA) uses the same shots as every other run.

        0.25 of a skill with 4,000 train questions in each of 3 submodules
        -> 1,000 of each, 3,000 in all"""
    os.makedirs(out, exist_ok=True)
    for skill in skills:
        path = os.path.join(data, f"{skill}.json")
        task = read_object(path, "data/generate.py writes one task file per skill")
        instances = task.get("Instances")
        if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
            raise UserError(f"{path}: field 'Instances' is not a list of objects; expected a LiLA task file")
        by_submodule = {}
        for i, inst in enumerate(instances):
            if inst.get("split") == "train":
                by_submodule.setdefault(str(inst.get("submodule")), []).append(i)
        if not by_submodule:
            raise UserError(f"{path}: no instance has split 'train'; expected train questions to take a part of")
        keep = set()
        for name, rows in sorted(by_submodule.items()):
            random.Random(f"{seed}-{skill}-{name}").shuffle(rows)
            keep.update(rows[:max(1, round(fraction * len(rows)))])
        task["Instances"] = [inst for i, inst in enumerate(instances) if inst.get("split") != "train" or i in keep]
        write_json(os.path.join(out, f"{skill}.json"), task)
        print(f"{out}/{skill}.json: {len(keep)} of its {sum(map(len, by_submodule.values()))} train questions",
              file=sys.stderr)
