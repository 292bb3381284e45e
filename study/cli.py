"""
The study's command line: what the experts, the mixed LoRA and the routers do
to every skill, compared question by question.

    python -m study paired out/eval/base-4shot.json out/eval/mixed.json   # wins, losses, sign test
    python -m study forgetting out/eval/base-4shot.json out/eval/experts/*.json   # every expert on every skill
    python -m study curve out/eval/base-4shot.json out/eval/sequential-lora/*.json   # skill after skill
    python -m study best out/lr/mixed-*                                 # the run with the best dev accuracy
    python -m study curves out/plateau/curves/*/*                       # dev curves; the rank, lr and steps they choose
    python -m study beats out/experts/seed-1/numbers out/long/numbers   # the second, if better on dev by > 1 SE
    python -m study plateau checkpoints/phi-tiny-plateau                # that study's REPORT.md, so far
    python -m study subset data/plateau --skills calculus --fraction 0.25 --out out/quarter   # the data curve's rows
    python -m study report out                                          # out/results.md and out/REPORT.md

eval.py evaluates one configuration and writes its records (--json); this file
puts configurations side by side, with the paired statistics of study/stats.py.
It reads only what the runs wrote, so it imports neither torch nor eval.py.

- paired: two runs on the same questions, per skill. Differences of a few
  questions are common, so a question only one run gets right is a win or a
  loss, and an exact sign test says how likely so uneven a split is by chance.
  A second table says what the difference is made of: questions won or lost
  with an answer of another kind than the gold answer's (a list for a number),
  and the rest, right-kind answers with the right or wrong value.
- forgetting: every expert (eval.py --adapter) on every skill, minus the base.
  The diagonal is what an expert gains on its own skill; the rest is what
  fine-tuning on one skill does to the others ("catastrophic forgetting" when
  negative). In accuracy and in answer NLL, with a heatmap of each.
- curve: one model fine-tuned skill after skill (train.py --adapter, or --full
  on the previous stage's model), evaluated on every skill after each stage:
  the forgetting curve, and whether each skill survives the stages after its own
  (and, as in paired, what it loses: the kind of answer or its value).
- best: of runs that differ in one setting (a learning-rate sweep), the one
  with the highest dev accuracy as train.py logged it (a tie: the lower dev loss).
- curves: dev learning curves over steps, learning rates and ranks, and the
  (rank, lr) and steps they choose (study/curves.py).
- beats: whether a run beats another on dev by more than the dev set's noise
  (study/plateau.py): a longer curve sets its skill's length, and the data
  curve goes on past all the rows, only where it does.
- plateau: the report of study/plateau.sh's folder (study/plateau.py).
- subset: task files with a fraction of their train questions, for the data
  curve (study/curves.py).
- report: the tables and the goals of a finished `make experiment` (study/report.py).

Every configuration of a study folder evaluated again on other questions is
study/heldout.py's (`python -m study.heldout`), the one module of the study
that loads a model.

Left out: corrections for many comparisons; each test is for one pair of runs.
"""
import os
import sys

from cli import Parser, nonempty, random_seed, share, writable_dir
from formats.files import UserError, write_json, write_text
from formats.pictures import heatmap, pyplot, save_figure
from study import curves, plateau, report
from study.stats import config_rows, form_markdown, paired, paired_markdown, per_skill, read_records, sign_test

# ---------------------------------------------------------------------------
# 1. Runs against a reference
# ---------------------------------------------------------------------------

def compare(base_json, others):
    """python -m study paired: each run of `others` against base_json, side by side:
    per skill, correct answers, wins : losses and the sign test's p; the last row
    pools every skill's questions."""
    base = read_records(base_json)
    tables = {}
    for path in others:
        records = read_records(path)
        only = len({(r["skill"], r["question"]) for r in records} ^ {(r["skill"], r["question"]) for r in base})
        if only:
            print(f"note: {only} questions are in only one of {base_json} and {path}; the table compares "
                  "the questions in both", file=sys.stderr)
        tables[path] = paired(base, records)
        if not tables[path]:
            raise UserError(f"{path}: none of its questions is in {base_json}; evaluate both "
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
    lines += ["", "### What the differences are made of: answers of the right kind (a number, an expression, a "
              "list...) won or lost, and right or wrong values", "",
              form_markdown(names[0], base, {n: [read_records(p)] for n, p in zip(names[1:], others)})]
    print("\n".join(lines))
    return tables


# ---------------------------------------------------------------------------
# 2. Forgetting: every expert on every skill
# ---------------------------------------------------------------------------

def forgetting(base_json, experts, out):
    """python -m study forgetting: the base and each expert evaluated on every skill
    (experts: eval.py --json files, one per expert, each named after its expert,
    e.g. algebra.json for `eval.py --adapter out/experts/algebra`), all on the
    base's questions. Writes forgetting.md, .json and two heatmaps under out, and
    says so on stderr; returns the JSON dict."""
    base_records = read_records(base_json)
    base, base_nll = per_skill(base_records)
    acc, nll, own = {}, {}, {}
    for path in experts:
        name = os.path.splitext(os.path.basename(path))[0]
        records = read_records(path)
        _check_expert_run(path, records, base_json, base_records, seen=acc)
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
    result = {"skills": skills, "base": base, "accuracy": acc, "delta": delta,
              "base_nll": base_nll, "nll": nll, "nll_delta": nll_delta, "own_skill": own}
    write_json(os.path.join(out, "forgetting.json"), result)
    pictures = [heatmap([[100 * delta[e][s] for s in skills] for e in acc], list(acc), skills,
                        "expert accuracy - base accuracy (points)", os.path.join(out, "forgetting.png")),
                heatmap([[-nll_delta[e][s] for s in skills] for e in nll], list(nll), skills,
                        "base answer NLL - expert answer NLL (nats; > 0: expert better)",
                        os.path.join(out, "forgetting_nll.png"), fmt="{:+.2f}")]
    say_wrote(out, ["forgetting.md", "forgetting.json", *(os.path.basename(p) for p in pictures if p)])
    return result


def say_wrote(out, names):
    """The last line of a command that wrote files into out: which, and where (stderr)."""
    print(f"wrote {', '.join(names)} to {out}", file=sys.stderr)


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
    """python -m study curve: one model fine-tuned skill after skill, evaluated on every
    skill after each stage (stages: eval.py --json files in training order, named
    N-SKILL.json for the skill of stage N). Writes curve.md, .json and .png under
    out: accuracy and answer NLL per skill after each stage, and for each trained skill its
    accuracy right after its own stage against after the last one, question by
    question: what the later stages made the model forget. Says what it wrote on stderr."""
    runs = {"base": read_records(base_json)}
    for path in stages:
        runs[os.path.splitext(os.path.basename(path))[0]] = read_records(path)
    _check_stages(stages, per_skill(runs["base"])[0])
    acc, nll = {}, {}
    for name, records in runs.items():
        acc[name], nll[name] = per_skill(records)
    skills = list(acc["base"])
    names, last = list(runs), list(runs)[-1]
    kept, own, then = {}, [], []
    for name in names[1:-1]:
        skill = name.partition("-")[2]
        if skill in skills:    # its stage's skill, right after its stage -> after the last stage
            kept[f"{skill} (stage {name})"] = paired(runs[name], runs[last])[skill]
            own += [r for r in runs[name] if r["skill"] == skill]
            then += [r for r in runs[last] if r["skill"] == skill]
    rows = {n: {s: 100 * acc[n][s] if s in acc[n] else None for s in skills} for n in names}
    nll_rows = {n: {s: nll[n].get(s) for s in skills} for n in names}
    text = "\n".join(["### Accuracy (%) after each stage of the sequential fine-tune", "",
                      *config_rows(rows, skills, "{:.1f}"), "",
                      "### Answer NLL (nats per answer token) after each stage", "",
                      *config_rows(nll_rows, skills, "{:.3f}"), "",
                      paired_markdown(kept, f"Each skill right after its own stage (base) against after the "
                                            f"last stage, {last} (wins: only the last is right)", "skill"), "",
                      "### What the forgetting is made of: answers of another kind, or the wrong value", "",
                      form_markdown("each skill right after its own stage", own, {f"after {last}": [then]})])
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
        save_figure(fig, os.path.join(out, "curve.png"))
    say_wrote(out, ["curve.md", "curve.json", *(["curve.png"] if plt is not None else [])])
    return {"accuracy": acc, "kept": kept}


# ---------------------------------------------------------------------------
# 4. The command line
# ---------------------------------------------------------------------------

def parser():
    p = Parser(prog="python -m study", description="Compare the study's configurations: paired tests, forgetting, the "
                           "forgetting curve, the report (held-out questions: python -m study.heldout).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    s = sub.add_parser("paired", help="eval.py --json runs against a reference, question by question")
    s.add_argument("base", help="eval.py --json of the reference run (e.g. the base model)")
    s.add_argument("others", nargs="+", help="eval.py --json of the runs compared with it, on the same questions")
    s = sub.add_parser("forgetting", help="every expert on every skill, minus the base")
    s.add_argument("base", help="eval.py --json of the base model")
    s.add_argument("experts", nargs="+", help="eval.py --json of each expert (eval.py --adapter) on the base's "
                   "questions, named after its expert, e.g. algebra.json")
    s.add_argument("--out", type=writable_dir, default="out/forgetting", help="where forgetting.md/.json/.png go "
                   "(default out/forgetting)")
    s = sub.add_parser("curve", help="a sequential fine-tune: every skill after each stage")
    s.add_argument("base", help="eval.py --json of the model before the first stage")
    s.add_argument("stages", nargs="+", help="eval.py --json after each stage, in training order, named "
                   "N-SKILL.json (N the stage, SKILL what it trained on)")
    s.add_argument("--out", type=writable_dir, default="out/sequential", help="where curve.md/.json/.png go "
                   "(default out/sequential)")
    s = sub.add_parser("best", help="print the train.py run with the highest dev accuracy (ties: the lower "
                       "dev loss, then the first named)")
    s.add_argument("runs", nargs="+", help="train.py output folders, e.g. one per learning rate")
    s = sub.add_parser("beats", help="print OTHER if its best dev accuracy beats RUN's by more than one "
                       "standard error over RUN's dev questions, else RUN")
    s.add_argument("run", help="a train.py output folder, e.g. seed 1's expert of a skill")
    s.add_argument("other", help="a run on the same dev questions, e.g. the same expert trained longer")
    s = sub.add_parser("curves", help="dev learning curves of runs that differ in rank and learning rate, "
                       "and the (rank, lr) chosen on dev and the experts' steps, printed as RANK LR STEPS")
    s.add_argument("runs", nargs="+", help="train.py --expert output folders named SKILL/rRANK-lrLR")
    s.add_argument("--out", type=writable_dir, default="out/curves", help="where curves.md/.json/.png go "
                   "(default out/curves)")
    s = sub.add_parser("plateau", help="REPORT.md and results.json of a study/plateau.sh folder, so far")
    s.add_argument("root", help="the study folder (study/plateau.sh's OUT)")
    s.add_argument("--data", type=nonempty, default="data/lila", help="the evaluation's task files; their train "
                   "split is phi-tiny's pretraining rows (default data/lila)")
    s.add_argument("--docs", type=writable_dir, default=None, help="also write REPORT.md and its pictures to "
                   "this folder, e.g. docs/plateau (default: only under ROOT)")
    s = sub.add_parser("subset", help="task files with a fraction of their train questions (the data curve)")
    s.add_argument("data", help="a folder of LiLA task files, one per skill")
    s.add_argument("--skills", type=nonempty, required=True, help="comma-separated skills to take (required)")
    s.add_argument("--fraction", type=share, required=True, help="the share of each submodule's train "
                   "questions kept, in (0, 1] (required)")
    s.add_argument("--seed", type=random_seed, default=0, help="seed of the draw (default 0)")
    s.add_argument("--out", type=writable_dir, required=True, help="where the task files go (required)")
    s = sub.add_parser("report", help="out/REPORT.md from a finished make experiment")
    s.add_argument("root", nargs="?", default="out", help="the study folder (study/experiment.sh's OUT) (default out)")
    s.add_argument("--docs", type=writable_dir, default=None, help="also write REPORT.md and its pictures to "
                   "this folder, e.g. docs/study (default: only under ROOT)")
    return p


def main():
    args = parser().parse_args()
    if args.command == "report" and not os.path.isdir(args.root):
        raise UserError(f"{args.root}: no such study folder (study/experiment.sh's OUT)")
    if args.command == "paired":
        compare(args.base, args.others)
    elif args.command == "report":
        report.report(args.root, args.docs)
    elif args.command == "best":
        print(report.best_run(args.runs))
    elif args.command == "beats":
        print(args.other if plateau.beats(args.run, args.other) else args.run)
    elif args.command == "curve":
        curve(args.base, args.stages, args.out)
    elif args.command == "curves":
        print(*curves.curves(args.runs, args.out))
    elif args.command == "plateau":
        plateau.report(args.root, args.data, args.docs)
    elif args.command == "subset":
        curves.subset(args.data, args.skills.split(","), args.fraction, args.seed, args.out)
    else:
        forgetting(args.base, args.experts, args.out)


# ---------------------------------------------------------------------------
# 5. Checks
# ---------------------------------------------------------------------------

def _check_stages(stages, skills):
    """curve's stage files are named N-SKILL.json: N its place in training order
    (1, 2, ...), SKILL one of the base report's skills."""
    for n, path in enumerate(stages, 1):
        name = os.path.splitext(os.path.basename(path))[0]
        number, _, skill = name.partition("-")
        if number != str(n) or skill not in skills:
            raise UserError(f"{path}: expected stage {n} to be named {n}-SKILL.json, SKILL one of the base "
                             f"report's skills {sorted(skills)} (stages in training order)")


def _check_expert_run(path, records, base_json, base_records, seen):
    """forgetting's expert runs: each expert once, each on exactly the base's questions."""
    name = os.path.splitext(os.path.basename(path))[0]
    if name in seen:
        raise UserError(f"{path}: a second run named {name!r}; name each expert's eval.py --json after its expert")
    mine, theirs = ({(r["skill"], r["question"]) for r in rs} for rs in (records, base_records))
    if mine != theirs:
        raise UserError(f"{path}: {len(mine - theirs)} of its questions are not in {base_json} and "
                         f"{len(theirs - mine)} of that run's are missing; evaluate both with the same "
                         "--data, --split, --limit and --seed")
