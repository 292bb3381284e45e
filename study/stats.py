"""
Paired statistics over eval.py's records: two runs on the same questions,
compared question by question.

    paired(base_records, records)      # per skill: correct, wins, losses, sign-test p
    pooled_verdicts(base_records, [seed1_records, seed2_records, seed3_records])   # seeds pooled per question
    form_and_value(base_records, [seed1_records])   # the points from the answer's kind, and from its value
    holm([0.01, 0.04, 0.03])           # [0.03, 0.06, 0.06]: corrected for comparing three with one base
    sign_test(9, 1)                    # 0.021: how likely so uneven a split is by chance
    bootstrap_interval(40, 25, 1600)   # 95% interval of the accuracy difference, in points
    bootstrap_mean({1/3: 30, -1/3: 10, 0: 60})   # the same for differences pooled over seeds

eval.py --json writes each question's record (skill, question, correct); two runs
on the same questions differ only where one of them is right and the other is
not. Those questions decide every comparison here:

- sign_test: if the two runs were equally good, each such question is a fair
  coin. Exact, for one skill or for all questions pooled.
- bootstrap_interval: the paired bootstrap interval of the difference in
  accuracy, resampling questions; what "level with, within the interval" means.
- pooled_verdicts: a configuration trained with several seeds, each question's
  verdicts pooled over the seeds before the sign test.
- form_and_value: whether a configuration's gain over the base comes from
  answering in the right kind (a number, an expression, a list...) or from the
  right value.
- holm: Holm's correction, for several configurations compared with one base.
- read_records and the checks refuse a report that eval.py did not write
  (edited counts, a repeated question, a NaN), naming the file; load and
  read_log read any piece of a study folder and train.py's logs the same way.

A library, not a command: python -m study (study/cli.py, goals.py, report.py)
and python -m study.heldout call it. It reads JSON and imports numpy, not torch.
Left out: corrections other than Holm's (it holds under any dependence between
the tests, which share the base's answers).
"""
import json
import math
import os
from collections import Counter, defaultdict

import numpy as np

from data.score import accuracy, answer_form, answer_nlls
from formats.files import UserError

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


def bootstrap_interval(wins, losses, n, level=0.95, samples=20000, seed=0):
    """Paired bootstrap interval of (model accuracy - base accuracy), in points,
    over n questions of which the model alone gets `wins` right and the base alone
    `losses`: bootstrap_mean({+1: wins, -1: losses, 0: ties}).
    Worked example: 40 wins, 25 losses of 1,600 -> +0.94 points, interval about
    (-0.06, +1.94): level within the interval."""
    if n <= 0 or wins < 0 or losses < 0 or wins + losses > n:
        raise UserError(f"expected 0 <= wins + losses <= n questions, got {wins} + {losses} of {n}")
    return bootstrap_mean({1.0: wins, -1.0: losses, 0.0: n - wins - losses}, level, samples, seed)


def bootstrap_mean(counts, level=0.95, samples=20000, seed=0):
    """Bootstrap interval, in points, of the mean per-question difference, given as
    {difference: how many questions have it} (each difference in [-1, 1]). A
    resample draws the questions with replacement, so the counts of a resample are
    one multinomial draw over the differences, and 20,000 resamples cost one call.
    Worked example: {+1/3: 30, -1/3: 10, 0: 60} -> +6.7 points, about (+2.7, +10.7)."""
    values, k = np.array(list(counts), dtype=float), np.array(list(counts.values()), dtype=float)
    n = k.sum()
    draws = np.random.default_rng(seed).multinomial(int(n), k / n, samples)
    diff = 100 * draws @ values / n
    lo, hi = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


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


def pooled_verdicts(base_records, seeds):
    """A configuration trained with several seeds against one base, question by
    question: each question's verdicts are pooled over the seeds (its mean
    correctness), a win where that mean is above the base's answer and a loss
    where it is below. Returns {"questions", "wins", "losses", "p", "points",
    "interval"} over the questions that the base and every seed answered: points
    is the mean over them of (the seeds' mean correctness - the base's), the
    seeds' mean accuracy minus the base's, with its paired bootstrap interval.
    Worked example: a question two of three seeds get right and the base does
    not is a win (+2/3); one seed of three right against a right base is a loss
    (-2/3)."""
    base = {(r["skill"], r["question"]): r["correct"] for r in base_records}
    runs = [{(r["skill"], r["question"]): r["correct"] for r in records} for records in seeds]
    common = [q for q in base if all(q in run for run in runs)]
    diff = Counter(round(sum(run[q] for run in runs) / len(runs) - base[q], 9) for q in common)
    wins, losses = sum(k for d, k in diff.items() if d > 0), sum(k for d, k in diff.items() if d < 0)
    return {"questions": len(common), "wins": wins, "losses": losses, "p": sign_test(wins, losses),
            "points": 100 * sum(d * k for d, k in diff.items()) / len(common), "interval": bootstrap_mean(diff)}


def form_and_value(base_records, seeds):
    """What a configuration's points against the base are made of, over the
    questions that the base and every seed answered (seeds: each seed's
    records): {"in_form": % of the seeds' answers of a gold answer's kind
    (data.score.answer_form), "form": points from questions won where the base's
    answer was of another kind, less those lost with an answer of another kind,
    "value": the rest, won or lost with an answer of the right kind}. form +
    value is pooled_verdicts' points.
    Worked example: of 100 questions, one seed wins 4 (on one of them the base
    answered "seconds" where a number was due) and loses 2 (on one of them
    answering "the answer is 5"): form (1 - 1) = +0.0 points, value (3 - 1) =
    +2.0 points."""
    base = {(r["skill"], r["question"]): r for r in base_records}
    runs = [{(r["skill"], r["question"]): r for r in records} for records in seeds]
    common = [q for q in base if all(q in run for run in runs)]
    in_form = lambda r: answer_form(r["prediction"]) in {answer_form(a) for a in r["answers"]}  # noqa: E731
    total = form = 0
    for run in runs:
        for q in common:
            b, r = base[q], run[q]
            total += r["correct"] - b["correct"]
            form += (r["correct"] and not b["correct"] and not in_form(b)) - (
                b["correct"] and not r["correct"] and not in_form(r))
    n = len(common) * len(runs)
    return {"in_form": 100 * sum(in_form(run[q]) for run in runs for q in common) / n,
            "form": 100 * form / n, "value": 100 * (total - form) / n}


def holm(pvalues):
    """Holm's step-down adjustment of the p-values of several comparisons against
    one base (each test at level alpha after adjustment keeps the family-wise
    error at alpha). The i-th smallest p (from 0) is multiplied by (m - i), and
    the adjusted values are made non-decreasing in that order, capped at 1.
    Worked example: [0.01, 0.04, 0.03] -> [0.03, 0.06, 0.06]."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_markdown(table, title, row_name="skill"):
    lines = [f"### {title}", "", f"| {row_name} | questions | base correct | correct | wins | losses "
             "| sign-test p |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, t in table.items():
        lines.append(f"| {name} | {t['questions']} | {t['base']} | {t['model']} | {t['wins']} "
                     f"| {t['losses']} | {t['p']:.2g} |")
    return "\n".join(lines)


def form_markdown(base_name, base_records, rows):
    """A table of form_and_value for each row of {name: [each seed's records]},
    the base's own share of answers of the right kind first."""
    lines = [f"| configuration | seeds | answers of the right kind (%) | points against {base_name} "
             "| from the kind of answer | from its value |", "|---|---:|---:|---:|---:|---:|",
             f"| {base_name} | 1 | {form_and_value(base_records, [base_records])['in_form']:.1f} | | | |"]
    for name, seeds in rows.items():
        f = form_and_value(base_records, seeds)
        lines.append(f"| {name} | {len(seeds)} | {f['in_form']:.1f} | {f['form'] + f['value']:+.1f} "
                     f"| {f['form']:+.1f} | {f['value']:+.1f} |")
    return "\n".join(lines)


def read_records(path):
    """The records of an `eval.py --json` run, each with a skill, a question, the
    model's prediction, the accepted answers and whether it was answered
    correctly, no question twice; a clear error otherwise."""
    try:
        with open(path) as f:
            report = json.load(f)
        records = report["records"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: expected the JSON that `eval.py --json` writes, with a "
                         f"'records' list ({type(e).__name__}: {e})") from None
    check_records(path, records)
    check_eval_json(path, report)      # its accuracy and NLL, and their agreement with the records
    return records


def per_skill(records):
    """({skill: accuracy}, {skill: mean answer NLL}) of eval.py's records."""
    return {k: c / n for k, (c, n) in accuracy(records).items()}, answer_nlls(records)


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
# 2. Checks: reports as eval.py and python -m study write them
# ---------------------------------------------------------------------------

def check_records(path, records):
    """eval.py's records: a list of objects with a string skill, question and
    prediction, a list of answers (strings) and a true/false correct, each
    (skill, question) once."""
    if not isinstance(records, list):
        raise UserError(f"{path}: 'records' is {type(records).__name__}, expected a list")
    seen = set()
    for i, r in enumerate(records):
        if not (isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("skill", "question", "prediction"))
                and isinstance(r.get("answers"), list) and r["answers"] and all(isinstance(a, str) for a in r["answers"])
                and isinstance(r.get("correct"), bool)):
            raise UserError(f"{path}: record {i} is not one of eval.py's (a skill, a question, a prediction, "
                             "a list of answers and a true/false 'correct')")
        if (r["skill"], r["question"]) in seen:
            raise UserError(f"{path}: record {i} repeats a {r['skill']} question: {r['question'][:60]!r}")
        seen.add((r["skill"], r["question"]))


def check_eval_json(path, report):
    """An eval.py --json report: accuracy (fractions in [0, 1], at least one skill)
    and answer NLL (finite numbers >= 0) per skill, and the run's seconds (a finite
    number >= 0) where it has them; the accuracy agrees with the report's counts
    and records, where it has them (an edited report does not)."""
    if not isinstance(report, dict):
        raise UserError(f"{path}: expected a JSON object as eval.py --json writes, got {type(report).__name__}")
    _check_per_skill(path, "accuracy", report.get("accuracy"), ACCURACY)
    _check_per_skill(path, "answer_nll", report.get("answer_nll"), NLL)
    if not report["accuracy"]:
        raise UserError(f"{path}: 'accuracy' is empty, expected one entry per skill evaluated")
    seconds = report.get("seconds", 0)
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < math.inf):
        raise UserError(f"{path}: 'seconds' is {seconds!r}, expected the run's time, a number >= 0")
    tallies = {}
    if isinstance(report.get("counts"), dict):
        tallies["counts"] = {k: (c.get("correct"), c.get("total")) if isinstance(c, dict) else (None, None)
                             for k, c in report["counts"].items()}
    if "records" in report:
        check_records(path, report["records"])
        tallies["records"] = accuracy(report["records"])
    for source, tally in tallies.items():
        for skill, v in report["accuracy"].items():
            correct, total = tally.get(skill, (None, None))
            if not (isinstance(total, int) and total > 0 and isinstance(correct, int) and correct / total == v):
                raise UserError(f"{path}: accuracy of {skill!r} is {v!r}, but its {source} give "
                                 f"{correct}/{total}; expected the report as eval.py wrote it")


def check_forgetting_json(path, report):
    """python -m study forgetting's report: accuracy and nll per expert, per skill."""
    if not isinstance(report, dict):
        raise UserError(f"{path}: expected a JSON object as python -m study forgetting writes, "
                         f"got {type(report).__name__}")
    for key, rule in (("accuracy", ACCURACY), ("nll", NLL)):
        per_expert = report.get(key)
        if not isinstance(per_expert, dict):
            raise UserError(f"{path}: '{key}' is {type(per_expert).__name__}, expected an object of "
                             "expert -> skill -> value")
        for expert, per in per_expert.items():
            _check_per_skill(path, f"{key} of {expert!r}", per, rule)


ACCURACY = (lambda v: 0 <= v <= 1, "a fraction in [0, 1]")
NLL = (lambda v: v >= 0, "a finite number >= 0")


def _check_per_skill(path, key, per, rule):
    """{skill: number}, each number finite and passing rule = (test, what was expected)."""
    ok, want = rule
    if not isinstance(per, dict):
        raise UserError(f"{path}: '{key}' is {type(per).__name__}, expected an object of skill -> value")
    for skill, v in per.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            raise UserError(f"{path}: {key} of {skill!r} is {v!r}, expected {want}")


# ---------------------------------------------------------------------------
# 3. Reading a study folder, checked
# ---------------------------------------------------------------------------

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
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if "eval" in parts:
        check_eval_json(path, obj)
    if "forgetting" in parts:
        check_forgetting_json(path, obj)
    return obj


def read_log(path):
    """train.py's log.json: a list of entries, each with a 'step' and a 'time'
    (and, at each checkpoint, 'dev_loss' and 'dev_accuracy')."""
    log = load(path)
    if log is None:
        raise UserError(f"{path}: no such file; expected the log of a train.py run")
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)  # noqa: E731
    if not (isinstance(log, list) and all(isinstance(e, dict) and number(e.get("step")) and number(e.get("time"))
                                          and number(e.get("dev_accuracy", 0)) and number(e.get("dev_loss", 0))
                                          for e in log)):
        raise UserError(f"{path}: expected train.py's log, a list of entries with a 'step' and a 'time'")
    return log


def logged_seconds(path):
    """A train.py run's wall time as its log.json last logged it (the steps it
    kept, across resumptions), or None where there is no log or no entry yet."""
    log = read_log(path) if os.path.exists(path) else []
    return log[-1]["time"] if log else None
