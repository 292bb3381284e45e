"""The study (python -m study): the sign test against scipy, paired counts by
hand, the report of a made-up study folder, cell by cell, and the study reading
records without torch."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from formats.files import UserError
from study.report import best_run, report
from study.stats import paired, per_skill, sign_test


def test_the_study_imports_no_torch():
    """python -m study reads what the runs wrote: its modules load neither torch nor
    eval.py (only study/heldout.py, which evaluates models, does)."""
    code = ("import study.cli, study.stats, study.goals, study.report, study.curves, study.plateau, sys; "
            "assert 'torch' not in sys.modules and 'eval' not in sys.modules, "
            "sorted(m for m in sys.modules if m in ('torch', 'eval'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # the check can fail: the evaluation of study/heldout.py does load torch
    code = "import study.heldout, sys; assert 'torch' in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_sign_test_matches_scipy():
    from scipy.stats import binomtest
    assert sign_test(9, 1) == pytest.approx(2 * 11 / 1024)          # the docstring's worked example
    assert sign_test(0, 0) == 1.0 and sign_test(3, 3) == 1.0
    for wins, losses in [(10, 4), (6, 10), (17, 7), (0, 5), (40, 25)]:
        assert sign_test(wins, losses) == pytest.approx(binomtest(wins, wins + losses).pvalue, rel=1e-9)


def record(skill, question, correct, **more):
    """One of eval.py's records: the answer is "1", the prediction "1" when correct, else "2"."""
    return {"skill": skill, "question": question, "prediction": "1" if correct else "2", "answers": ["1"],
            "correct": correct, **more}


def test_paired_counts_question_by_question():
    rec = lambda q, ok, skill="algebra": {"question": q, "skill": skill, "correct": ok}  # noqa: E731
    base = [rec("a", True), rec("b", False), rec("c", True), rec("d", False), rec("e", False, "numbers")]
    new = [rec("a", True), rec("b", True), rec("c", False), rec("d", True), rec("z", True)]  # z: not in base
    assert paired(base, new) == {"algebra": {"questions": 4, "base": 2, "model": 3, "wins": 2, "losses": 1,
                                             "p": 1.0}}


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def test_report_reads_what_the_study_wrote(tmp_path):
    """Each row comes from its eval.py JSON, the experts' row from the forgetting
    matrix's diagonal; missing pieces stay missing ("-"), nothing is invented."""
    out = str(tmp_path)
    ev = lambda acc, nll: {"accuracy": acc, "answer_nll": nll}   # noqa: E731
    write(f"{out}/eval/base-4shot.json", ev({"algebra": 0.5, "numbers": 0.25}, {"algebra": 1.0, "numbers": 2.0}))
    write(f"{out}/eval/mixed.json", ev({"algebra": 0.5, "numbers": 0.5}, {"algebra": 0.5, "numbers": 1.5}))
    write(f"{out}/forgetting/forgetting.json", {"accuracy": {"algebra": {"algebra": 0.75, "numbers": 0.0}},
                                                "nll": {"algebra": {"algebra": 0.25, "numbers": 3.0}}})
    write(f"{out}/eval/steer/own-algebra.json", ev({"algebra": 0.6}, {}))
    write(f"{out}/eval/steer/wrong-algebra.json", ev({"algebra": 0.1}, {}))
    write(f"{out}/experts/algebra/log.json", [{"step": 60, "time": 90.0}])
    write(f"{out}/eval/full/numbers.json", ev({"algebra": 0.0, "numbers": 1.0}, {"algebra": 4.0, "numbers": 0.5}))
    os.makedirs(f"{out}/clusters-test")
    with open(f"{out}/clusters-test/report.md", "w") as f:                # cluster.py's own top-level headings
        f.write("# Clusters of 16 test questions\n\n## Clusters\n\n| cluster |\n")
    report(out)
    assert open(f"{out}/results.md").read().splitlines() == [
        "| configuration | algebra | numbers | mean |", "|---|---:|---:|---:|",
        "| base, 4-shot | 50.0 | 25.0 | **37.5** |",
        "| mixed LoRA | 50.0 | 50.0 | **50.0** |",
        "| each skill's expert on its own skill | 75.0 | - | **75.0** |",
        "| each skill's full fine-tune on its own skill | - | 100.0 | **100.0** |"]
    text = open(f"{out}/REPORT.md").read()
    assert "| each skill's expert on its own skill | 0.250 | - | **0.250** |" in text
    assert "| algebra | 60.0 | 10.0 | - |" in text              # steering: no routed run to compare
    assert "| training: experts | 1 | 2 |" in text              # 90 s, in whole minutes
    assert "## Composed" not in text and "## Forgetting" not in text   # no forgetting.md, no composed runs
    assert "## Clusters of meta-questions (test split)\n\n### Clusters of 16 test questions\n\n### Clusters\n" in text
    tables = json.load(open(f"{out}/results.json"))
    assert tables["answer_nll"]["base, 4-shot"] == {"algebra": 1.0, "numbers": 2.0}


def test_curve_follows_each_skill_through_the_stages(tmp_path, capsys):
    """A model trained on algebra, then on numbers: the table holds every skill
    after each stage, and algebra's answers after its own stage are compared,
    question by question, with those after the last stage. The table goes to
    stdout, and the last line on stderr says what was written where."""
    from study.cli import curve
    rec = lambda q, skill, ok: record(skill, q, ok, answer_nll=2.0 - ok)  # noqa: E731
    runs = {"base": [1, 0, 0, 0], "1-algebra": [1, 1, 0, 0], "2-numbers": [0, 0, 1, 1]}
    paths = []
    for name, ok in runs.items():
        records = [rec(q, s, bool(c)) for (q, s), c in zip([("a1", "algebra"), ("a2", "algebra"),
                                                            ("n1", "numbers"), ("n2", "numbers")], ok)]
        paths.append(str(tmp_path / f"{name}.json"))
        acc, nll = per_skill(records)
        write(paths[-1], {"accuracy": acc, "answer_nll": nll, "records": records})
    result = curve(paths[0], paths[1:], str(tmp_path / "out"))
    table, status = capsys.readouterr()
    assert table.startswith("### Accuracy (%) after each stage") and "wrote" not in table
    assert status.endswith(f"wrote curve.md, curve.json, curve.png to {tmp_path / 'out'}\n")
    assert sorted(os.listdir(tmp_path / "out")) == ["curve.json", "curve.md", "curve.png"]
    assert result["kept"] == {"algebra (stage 1-algebra)": {"questions": 2, "base": 2, "model": 0, "wins": 0,
                                                            "losses": 2, "p": 0.5}}
    text = open(tmp_path / "out" / "curve.md").read()
    for row in ["| base | 50.0 | 0.0 | **25.0** |", "| 1-algebra | 100.0 | 0.0 | **50.0** |",
                "| 2-numbers | 0.0 | 100.0 | **50.0** |", "| 1-algebra | 1.000 | 2.000 | **1.500** |",
                "| algebra (stage 1-algebra) | 2 | 2 | 0 | 0 | 2 | 0.5 |"]:
        assert row in text, row


@pytest.mark.parametrize("names", [["stageX", "2-numbers"], ["2-algebra", "1-numbers"], ["1-geometry", "2-numbers"]])
def test_curve_refuses_stages_not_named_in_training_order(tmp_path, names):
    """Stage files are N-SKILL.json, numbered 1, 2, ... in the order given: another
    name would silently drop its skill's 'kept' row. Here the first stage is misnamed."""
    from study.cli import curve
    records = [record("algebra", "a1", True, answer_nll=1.0), record("numbers", "n1", False, answer_nll=2.0)]
    paths = [str(tmp_path / f"{name}.json") for name in ["base", *names]]
    for path in paths:
        acc, nll = per_skill(records)
        write(path, {"accuracy": acc, "answer_nll": nll, "records": records})
    with pytest.raises(ValueError, match=re.escape(paths[1]) + ": expected stage 1 to be named 1-SKILL.json"):
        curve(paths[0], paths[1:], str(tmp_path / "out"))


def test_report_adds_a_skill_to_seven(tmp_path):
    """The seven-skill router and mixed LoRA against their eight-skill successors,
    per skill and question by question."""
    out = str(tmp_path)
    rec = lambda q, skill, ok: record(skill, q, ok, answer_nll=1.0)  # noqa: E731

    def run(path, a, n):   # a, n: correct answers of the two algebra and two numbers questions
        records = [rec("a1", "algebra", a[0]), rec("a2", "algebra", a[1]),
                   rec("n1", "numbers", n[0]), rec("n2", "numbers", n[1])]
        write(f"{out}/eval/{path}", {"accuracy": {"algebra": sum(a) / 2, "numbers": sum(n) / 2},
                                     "answer_nll": {"algebra": 1.0, "numbers": 1.0}, "records": records})
    run("add-skill/router7.json", (True, True), (False, False))
    run("moe-centroid-token.json", (True, False), (True, True))
    run("add-skill/mixed7.json", (True, True), (False, False))
    run("add-skill/mixed7-then-numbers.json", (False, False), (True, True))
    report(out)
    text = open(f"{out}/REPORT.md").read()
    assert "## Adding a skill to the others (accuracy, %)" in text
    assert "| router over the old skills' experts | 100.0 | 0.0 | **50.0** |" in text
    assert "| ... then trained on the new skill alone | 0.0 | 100.0 | **50.0** |" in text
    assert "| numbers | 2 | 0 | 2 | 2 | 0 | 0.5 |" in text           # the new skill, router 7 -> 8
    assert "| algebra | 2 | 2 | 0 | 0 | 2 | 0.5 |" in text           # forgotten by the mixed LoRA


@pytest.mark.parametrize("matplotlib", [True, False])
def test_the_report_links_only_pictures_that_exist(tmp_path, monkeypatch, matplotlib):
    """Every picture REPORT.md links is there: forgetting.md without its heatmap gets
    no link, and without matplotlib the chart of adding a skill is neither drawn nor linked."""
    import study.goals
    if not matplotlib:
        monkeypatch.setattr(study.goals, "pyplot", lambda: None)
    out = str(tmp_path)
    for name, skills in {"base-4shot": dict(algebra=[1, 0], numbers=[1, 0]),
                         "add-skill/router7": dict(algebra=[1, 1], numbers=[0, 0]),
                         "add-skill/mixed7-then-numbers": dict(algebra=[0, 0], numbers=[1, 1]),
                         "moe-centroid-token": dict(algebra=[1, 0], numbers=[1, 1])}.items():
        write(f"{out}/eval/{name}.json", eval_json(**skills))
    os.makedirs(f"{out}/forgetting")
    with open(f"{out}/forgetting/forgetting.md", "w") as f:      # python -m study forgetting, no heatmap
        f.write("| expert \\ skill | algebra |\n")
    report(out)
    text = open(f"{out}/REPORT.md").read()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "## Forgetting" in text and all(os.path.exists(os.path.join(out, link)) for link in links)
    assert links == (["add-skill.png"] if matplotlib else [])


def test_best_run_is_the_best_dev_accuracy_and_the_report_lists_the_sweep(tmp_path):
    """Each run's best checkpoint counts, not its last; a tie in accuracy goes to
    the lower dev loss, then to the run named first; a run without a dev accuracy
    yet is refused."""
    out = str(tmp_path)
    log = lambda *marks: [{"step": 10 * i, "time": 1.0, "dev_accuracy": a, "dev_loss": l}  # noqa: E731
                          for i, (a, l) in enumerate(marks, 1)]
    write(f"{out}/lr/mixed-1e-3/log.json", log((0.30, 0.9), (0.40, 0.8)))
    write(f"{out}/lr/mixed-2e-3/log.json", log((0.45, 0.7), (0.35, 0.6)))    # best at its first checkpoint
    write(f"{out}/lr/mixed-4e-3/log.json", log((0.45, 0.75)))
    runs = [f"{out}/lr/mixed-{lr}" for lr in ("1e-3", "2e-3", "4e-3")]
    assert best_run(runs) == runs[1] and best_run(runs[::-1]) == runs[1]   # 0.45 at loss 0.7 beats 0.45 at 0.75
    write(f"{out}/lr/mixed-4e-3/log.json", log((0.45, 0.7)))
    assert best_run(runs) == runs[1] and best_run(runs[::-1]) == runs[2]   # a full tie: the first named
    write(f"{out}/lr/full-1e-4/log.json", [{"step": 0, "time": 1.0}])
    with pytest.raises(ValueError, match="full-1e-4/log.json: no dev accuracy yet"):
        best_run([f"{out}/lr/full-1e-4"])
    with pytest.raises(UserError, match="full-3e-4/log.json: no such file"):
        best_run([f"{out}/lr/full-3e-4"])
    write(f"{out}/lr/full-1e-4/log.json", log((0.2, 1.0)))
    write(f"{out}/eval/base-4shot.json", {"accuracy": {"algebra": 0.5}, "answer_nll": {"algebra": 1.0}})
    report(out)
    text = open(f"{out}/REPORT.md").read()
    assert "| mixed | 2e-3 | 45.0 | 0.7000 | kept |" in text and "| mixed | 4e-3 | 45.0 | 0.7000 |  |" in text
    assert "| mixed | 1e-3 | 40.0 | 0.8000 |  |" in text and "| full | 1e-4 | 20.0 | 1.0000 | kept |" in text


def test_curves_keep_the_first_best_step_and_choose_on_the_mean_over_skills(tmp_path):
    """Worked example: two skills, two settings. r8-lr1e-3 is best on average
    (mean best 0.50 against 0.45), though r32-lr2e-3 is best on calculus; the
    kept step is the first with the best accuracy, train.py's "kept" mark. The
    plateau starts within one standard error of the best (100 questions at 0.6:
    0.049, so 0.58 at step 100 is on it). The experts' steps: twice the setting's
    latest plateau step (100), at most its longest run (300)."""
    mark = "best dev accuracy so far, mean over skills of 100 dev questions with 4 nearest shots"
    log = lambda *marks: [{"step": 100 * i, "time": 1.0, "dev_accuracy": a, "dev_loss": l,   # noqa: E731
                           **({"kept": mark} if k else {})} for i, (a, l, k) in enumerate(marks, 1)]
    write(f"{tmp_path}/arithmetic/r8-lr1e-3/log.json", log((0.58, 0.9, 1), (0.6, 0.8, 1), (0.6, 0.7, 0)))
    write(f"{tmp_path}/calculus/r8-lr1e-3/log.json", log((0.38, 0.9, 1), (0.4, 0.8, 1)))
    write(f"{tmp_path}/arithmetic/r32-lr2e-3/log.json", log((0.5, 0.9, 1), (0.4, 0.8, 0)))
    write(f"{tmp_path}/calculus/r32-lr2e-3/log.json", log((0.4, 0.6, 1), (0.3, 0.9, 0)))
    runs = sorted(str(p.parent) for p in tmp_path.glob("*/*/log.json"))
    done = subprocess.run([sys.executable, "-m", "study", "curves", *runs, "--out", str(tmp_path / "c")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "8 1e-3 200\n", (done.stdout, done.stderr)
    found = json.load(open(tmp_path / "c" / "curves.json"))
    kept = {(r["skill"], r["rank"]): (r["kept"], r["lowest_loss"]) for r in found["runs"]}
    assert kept == {("arithmetic", 8): (200, 300), ("calculus", 8): (200, 200), ("arithmetic", 32): (100, 200),
                    ("calculus", 32): (100, 100)}
    assert "| 8 | 1e-3 | 58.0 | **60.0** | 60.0 | 200 | 100 | 300 |" in open(tmp_path / "c" / "curves.md").read()
    assert found["choice"] == {"rank": 8, "lr": "1e-3", "steps": 200}
    assert "the experts train 200 steps" in open(tmp_path / "c" / "curves.md").read()
    os.remove(f"{tmp_path}/calculus/r32-lr2e-3/log.json")
    os.rmdir(f"{tmp_path}/calculus/r32-lr2e-3")
    with pytest.raises(UserError, match=r"rank 32, lr 2e-3 has no run on \['calculus'\]"):
        from study.curves import curves
        curves(runs[:2] + runs[3:], str(tmp_path / "c"))


def test_best_run_refuses_a_log_with_a_nan_accuracy(tmp_path):
    write(f"{tmp_path}/run/log.json", [{"step": 1, "time": 1.0, "dev_accuracy": float("nan")}])
    with pytest.raises(ValueError, match="run/log.json: expected train.py's log"):
        best_run([f"{tmp_path}/run"])


def eval_json(nll=1.0, **skills):
    """An eval.py --json report of one run: skills as name=[correct per question], questions q0, q1, ...,
    every answer NLL nll."""
    records = [record(s, f"q{i}", bool(c), answer_nll=nll) for s, cs in skills.items() for i, c in enumerate(cs)]
    return {"accuracy": {s: sum(cs) / len(cs) for s, cs in skills.items()},
            "answer_nll": {s: nll for s in skills}, "records": records}


def test_compute_time_sums_each_part_of_the_study_once(tmp_path):
    """Logged training time and evaluation seconds, summed per folder; out/mixed is
    a link to its learning-rate run and counts once; a report without seconds
    adds nothing; a NaN time is refused."""
    from study.report import compute_time
    out = str(tmp_path)
    write(f"{out}/lr/mixed-1e-3/log.json", [{"step": 100, "loss": 1.0, "time": 600.0}])
    os.symlink("lr/mixed-1e-3", f"{out}/mixed")
    write(f"{out}/experts/algebra/log.json", [{"step": 50, "time": 60.0}, {"step": 100, "time": 120.0}])
    write(f"{out}/experts/numbers/log.json", [{"step": 100, "time": 180.0}])
    write(f"{out}/eval/experts/algebra.json", {**eval_json(algebra=[1, 0]), "seconds": 90.0})
    write(f"{out}/eval/base-4shot.json", {**eval_json(algebra=[1, 0]), "seconds": 30.0})
    write(f"{out}/eval/base-0shot.json", eval_json(algebra=[0, 0]))                    # written before 'seconds'
    text = compute_time(out)
    for row in ["| training: experts | 2 | 5 |", "| training: lr | 1 | 10 |", "| evaluation: experts | 1 | 2 |",
                "| evaluation: the rest | 1 | 0 |", "| **all** | 5 | **17** |"]:
        assert row in text, row
    assert "0.3 job-hours in all" in text and "about 0.1 h" in text
    write(f"{out}/eval/base-0shot.json", {**eval_json(algebra=[0, 0]), "seconds": float("nan")})
    with pytest.raises(ValueError, match=r"base-0shot.json: 'seconds' is nan, expected the run's time"):
        compute_time(out)


def test_forgetting_is_each_expert_minus_the_base_on_every_skill(tmp_path, capsys):
    """Two experts on two skills, four questions each: the matrix is accuracy minus
    the base's, cell by cell, and the own-skill row counts wins and losses. The
    tables go to stdout, and the last line on stderr says what was written where."""
    from study.cli import forgetting
    runs = {"base": eval_json(algebra=[1, 0, 0, 0], numbers=[1, 1, 0, 0]),
            "algebra": eval_json(0.5, algebra=[1, 1, 1, 0], numbers=[1, 0, 0, 0]),
            "numbers": eval_json(2.0, algebra=[0, 0, 0, 0], numbers=[1, 1, 1, 1])}
    for name, obj in runs.items():
        write(str(tmp_path / f"{name}.json"), obj)
    result = forgetting(str(tmp_path / "base.json"), [str(tmp_path / "algebra.json"), str(tmp_path / "numbers.json")],
                        str(tmp_path / "out"))
    table, status = capsys.readouterr()
    assert table.startswith("### Forgetting") and "wrote" not in table
    written = ["forgetting.md", "forgetting.json", "forgetting.png", "forgetting_nll.png"]
    assert status.endswith(f"wrote {', '.join(written)} to {tmp_path / 'out'}\n")
    assert sorted(os.listdir(tmp_path / "out")) == sorted(written)
    assert result["delta"] == {"algebra": {"algebra": 0.5, "numbers": -0.25},
                               "numbers": {"algebra": -0.25, "numbers": 0.5}}
    assert result["nll_delta"]["algebra"] == {"algebra": -0.5, "numbers": -0.5}
    assert result["own_skill"]["algebra"] == {"questions": 4, "base": 1, "model": 3, "wins": 2, "losses": 0, "p": 0.5}
    text = open(tmp_path / "out" / "forgetting.md").read()
    assert "| *base accuracy* | 25.0 | 50.0 | 37.5 |" in text and "| algebra | **+50.0** | -25.0 | +12.5 |" in text


def test_forgetting_refuses_runs_on_other_questions_or_named_twice(tmp_path):
    from study.cli import forgetting
    write(str(tmp_path / "base.json"), eval_json(algebra=[1, 0], numbers=[1, 1]))
    write(str(tmp_path / "algebra.json"), eval_json(algebra=[1, 1], numbers=[1]))        # one numbers question short
    with pytest.raises(ValueError, match=r"algebra.json: 0 of its questions are not in .*base.json and 1 of that "
                                         r"run's are missing"):
        forgetting(str(tmp_path / "base.json"), [str(tmp_path / "algebra.json")], str(tmp_path / "out"))
    write(str(tmp_path / "a" / "numbers.json"), eval_json(algebra=[1, 1], numbers=[1, 1]))
    write(str(tmp_path / "b" / "numbers.json"), eval_json(algebra=[0, 1], numbers=[1, 1]))
    with pytest.raises(ValueError, match="b/numbers.json: a second run named 'numbers'"):
        forgetting(str(tmp_path / "base.json"), [str(tmp_path / "a" / "numbers.json"),
                                                 str(tmp_path / "b" / "numbers.json")], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_goals_are_answered_from_the_runs_that_decide_them(tmp_path):
    """A made-up study of two skills, four questions each; every number below is
    worked out by hand from the correct answers."""
    out = str(tmp_path)
    runs = {"base-4shot": dict(algebra=[1, 0, 0, 0], numbers=[1, 1, 0, 0]),
            "full/algebra": dict(algebra=[1, 1, 1, 0], numbers=[0, 0, 0, 0], nll=1.5),
            "sequential-lora/1-algebra": dict(algebra=[1, 1, 1, 1], numbers=[1, 1, 0, 0]),
            "sequential-lora/2-numbers": dict(algebra=[1, 0, 0, 0], numbers=[1, 1, 1, 1]),
            "moe-centroid-token": dict(algebra=[1, 1, 0, 0], numbers=[1, 1, 0, 0]),
            "moe-clusters-token": dict(algebra=[1, 0, 0, 0], numbers=[1, 1, 0, 0]),
            "mixed-r64": dict(algebra=[1, 0, 0, 0], numbers=[1, 1, 1, 0]),
            "mixed": dict(algebra=[1, 1, 0, 0], numbers=[1, 0, 0, 0]),
            "add-skill/router7": dict(algebra=[1, 1, 0, 0], numbers=[0, 0, 0, 0]),
            "add-skill/mixed7": dict(algebra=[1, 0, 0, 0], numbers=[0, 0, 0, 0]),
            "add-skill/mixed7-then-numbers": dict(algebra=[0, 0, 0, 0], numbers=[1, 1, 1, 1]),
            "sweep-algebra/full-1e-4": dict(algebra=[1, 1, 1, 1], numbers=[1, 0, 0, 0]),
            "sweep-algebra/full-1e-4-400steps": dict(algebra=[1, 1, 1, 1], numbers=[0, 0, 0, 0]),
            "experts/numbers": dict(algebra=[0, 1, 0, 0], numbers=[1, 1, 1, 0])}
    for name, skills in runs.items():
        write(f"{out}/eval/{name}.json", eval_json(**skills))
    write(f"{out}/forgetting/forgetting.json", {"accuracy": {"algebra": {"algebra": 0.75, "numbers": 0.5},
                                                             "numbers": {"algebra": 0.25, "numbers": 0.5}},
                                                "nll": {"algebra": {"algebra": 1.0}, "numbers": {"numbers": 1.0}}})
    write(f"{out}/experts/numbers/log.json", [{"step": 60, "time": 60.0}])
    write(f"{out}/routers/centroid-token/log.json", [{"step": 100, "time": 120.0}])
    write(f"{out}/lr/mixed-2e-3/log.json", [{"step": 480, "time": 600.0, "dev_accuracy": 0.5}])
    os.symlink("lr/mixed-2e-3", f"{out}/mixed")
    report(out, docs=f"{out}/docs")
    text = open(f"{out}/REPORT.md").read()
    assert open(f"{out}/docs/REPORT.md").read() == text     # the copy for the docs, with its picture
    assert open(f"{out}/docs/add-skill.png", "rb").read() == open(f"{out}/add-skill.png", "rb").read()
    row = lambda label: next(l for l in text.splitlines() if l.startswith(f"| {label} |"))  # noqa: E731
    # before the goals, the configurations against each other
    assert "| 8 | +0.0 | " in row("the mixed LoRA against the base") and "| 1 : 1 | 1 |" in text
    assert "| 8 | +12.5 | " in row("the mixed LoRA at rank 64 against rank 8")     # numbers q2, q3 : algebra q2
    assert row("each skill's full fine-tune on its own skill against the base").startswith(
        "| each skill's full fine-tune on its own skill against the base | 4 | +50.0 |")   # algebra 1 -> 3 of 4
    # numbers' expert on numbers: 3 right against the base's 2 (1 : 0) and the mixed LoRA's 1 (2 : 0)
    assert "| 4 | +25.0 | +0.0 to +75.0 | 1 : 0 |" in row("each skill's expert on its own skill against the base")
    assert "| 4 | +50.0 |" in row("each skill's expert on its own skill against the mixed LoRA")
    assert "| 4 | -25.0 |" in row("the best router against each skill's expert on its own skill")
    assert "against its expert" not in text          # algebra's full fine-tune, numbers' expert: no shared skill
    # the numbers expert on algebra: q2 won, q1 lost; shown, not a verdict
    assert row("LoRA expert of numbers: the other skills, against the base").endswith(
        "| 4 | +0.0 | -75.0 to +75.0 | 1 : 1 | 1 | algebra +0.0 (p 1) | +0.000 | (expert) |")
    # numbers: 2 right -> 0 after the full fine-tune of algebra: -50 points, 0 : 2, p = 0.5
    assert row("full fine-tune of algebra: the other skills, against the base").startswith(
        "| full fine-tune of algebra: the other skills, against the base | 4 | -50.0 |")
    assert "| 0 : 2 | 0.5 | numbers -50.0 (p 0.5) | +0.500 | met |" in row("full fine-tune of algebra: the other "
                                                                   "skills, against the base")
    # the sweep's full fine-tune of algebra at 1e-4: numbers 2 right -> 1, marked as a sweep, not a verdict
    assert row("full fine-tune of algebra at lr 1e-4: the other skills, against the base").endswith(
        "| 4 | -25.0 | -75.0 to +0.0 | 0 : 1 | 1 | numbers -25.0 (p 1) | +0.000 | (sweep) |")
    # the same rate trained longer names its steps: numbers 2 right -> 0
    assert "| 4 | -50.0 |" in row("full fine-tune of algebra at lr 1e-4, 400 steps: the other skills, against the base")
    # algebra right after its stage (4 of 4) against after the last stage (1 of 4)
    assert "| 4 | -75.0 |" in row("one LoRA skill after skill: each skill right after its stage, against "
                                  "after the last") and "| 0 : 3 |" in text
    routed = row("router: two-level, centroid prior, token gate, against the base")
    assert "| 8 | +12.5 |" in routed and "| 1 : 0 | 1 | numbers +0.0 (p 1) | +0.000 | met |" in routed
    assert row("router over cluster experts, two-level, token gate, against the base").endswith(
        "| algebra +0.0 (p 1) | +0.000 | met |")
    # the best router (centroid-token) against rank 64: one win (algebra q1), one loss (numbers q2)
    best = row("best router (router: two-level, centroid prior, token gate) against the mixed LoRA, rank 64 "
               "(equal trainable parameters)")
    assert "| 8 | +0.0 |" in best and "| 1 : 1 | 1 |" in best and best.endswith("| met |")
    assert "| algebra | +50.0 | +25.0 | 50% | not met |" in text          # 0.75 - 0.25 against 0.5 - 0.25
    assert "| numbers | +0.0 | +0.0 | - | no gain to keep |" in text
    assert row("the numbers expert added, the router trained again: the old skills").endswith(
        "| 4 | +0.0 | +0.0 to +0.0 | 0 : 0 | 1 | algebra +0.0 (p 1) | +0.000 | met |")
    assert "| +50.0 |" in row("the numbers expert added, the router trained again: numbers")
    assert "| -25.0 |" in row("the old skills' mixed LoRA trained on numbers alone: the old skills")
    assert "took 3.0 min, 30% of retraining the mixed LoRA on all skills (10.0 min)" in text
    assert row("cluster experts, no labels, against the skill experts").endswith("| -12.5 | -37.5 to +0.0 "
                                                                                  "| 0 : 1 | 1 | algebra -25.0 (p 1) | +0.000 | not met |")
    numbers = json.load(open(f"{out}/goals.json"))
    assert [len(v) for v in numbers.values()] == [6, 5, 2, 2, 6, 1]
    assert os.path.exists(f"{out}/add-skill.png")


def test_the_strongest_prompt_and_the_goals_judged_again_with_it(tmp_path):
    """Runs with the nearest shots (eval/nearest/) against the base with them; the
    base's sources of shots against each other. Worked out by hand."""
    out = str(tmp_path)
    runs = {"base-4shot": dict(algebra=[1, 0, 0, 0], numbers=[1, 0, 0, 0]),
            "base-0shot": dict(algebra=[0, 0, 0, 0], numbers=[1, 0, 0, 0]),
            "nearest/base-4shot": dict(algebra=[1, 1, 0, 0], numbers=[1, 1, 1, 0]),
            "submodule/base-4shot": dict(algebra=[1, 1, 1, 0], numbers=[1, 1, 1, 0]),
            "mixed": dict(algebra=[1, 1, 0, 0], numbers=[1, 0, 0, 0]),
            "nearest/mixed": dict(algebra=[1, 1, 1, 0], numbers=[1, 1, 1, 0]),
            "nearest/experts/algebra": dict(algebra=[1, 1, 1, 1], numbers=[0, 0, 0, 0]),
            "nearest/experts/numbers": dict(numbers=[1, 1, 0, 0]),
            "nearest/moe-centroid-token": dict(algebra=[1, 1, 0, 0], numbers=[0, 1, 1, 0]),
            "nearest/sequential-lora/1-algebra": dict(algebra=[1, 1, 1, 1], numbers=[1, 1, 1, 0]),
            "nearest/sequential-lora/2-numbers": dict(algebra=[1, 0, 0, 0], numbers=[1, 1, 1, 1]),
            "nearest/experts-submodule-rows/algebra": dict(algebra=[1, 1, 1, 0]),
            "nearest/longer/expert-400steps": dict(numbers=[0, 1, 1, 1])}
    for name, skills in runs.items():
        write(f"{out}/eval/{name}.json", eval_json(**skills))
    report(out)
    text = open(f"{out}/REPORT.md").read()
    row = lambda label: next(l for l in text.splitlines() if l.startswith(f"| {label} |"))  # noqa: E731
    assert "| base, 4-shot, nearest shots | 50.0 | 75.0 | **62.5** |" in text          # the tables
    assert "| each skill's expert on its own skill, nearest shots | 100.0 | 50.0 | **75.0** |" in text
    assert "| 8 | +37.5 | " in row("the base: nearest shots against random shots of the skill")   # 2 -> 5 of 8
    assert "| 3 : 0 |" in row("the base: nearest shots against random shots of the skill")
    assert "| 8 | +12.5 | " in row("the base: shots of its own submodule (an oracle) against nearest shots")
    assert "| 8 | +12.5 | " in row("the mixed LoRA against the base, both with nearest shots")
    assert "| 8 | +12.5 | " in row("each skill's expert on its own skill against the base, both with nearest shots")
    assert "| 8 | +37.5 | " in row("the mixed LoRA: nearest shots against skill shots")        # 3 -> 6 of 8
    best = row("the best router (router: two-level, centroid prior, token gate) against the base, both with "
               "nearest shots")
    assert "| 8 | -12.5 | " in best and "| 0 : 1 |" in best
    # goal 1 again: algebra right after its stage (4 of 4) against after the last (1 of 4)
    assert "| 4 | -75.0 |" in row("one LoRA skill after skill: each skill right after its stage, against "
                                  "after the last")
    # goal 2 again: numbers q0 lost against the nearest base: -25 points on numbers, not met
    assert row("router: two-level, centroid prior, token gate, against the base").endswith(
        "| numbers -25.0 (p 1) | +0.000 | not met |")
    assert "### 7. Goals 1, 2 and 4 judged again with the nearest shots" in text
    # algebra's expert on rows of one submodule: 3 of 4 against the base's 2 and the skill-row expert's 4
    assert "| 4 | +25.0 | " in row("each skill's expert trained on rows of one submodule, on its own skill, against "
                                   "the base, both with nearest shots")
    assert "| 4 | -25.0 | " in row("each skill's expert: rows of one submodule against rows of the skill, both with "
                                   "nearest shots")
    assert "| 4 | +0.0 | " in row("the numbers expert at 400 steps against the base, both with nearest shots")


def test_holm_and_pooled_seeds_by_hand():
    """Holm: the docstring's example, and one worked by hand (sorted p times
    m - i, a running maximum, capped at 1). Seeds pooled per question: a question
    is a win where the seeds' mean correctness beats the base."""
    from study.stats import holm, pooled_verdicts
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001, 0.9, 0.02]) == pytest.approx([1.0, 0.004, 1.0, 0.06])
    base = [{"skill": "a", "question": f"q{i}", "correct": c} for i, c in enumerate([0, 1, 1, 0])]
    seed = lambda *cs: [{"skill": "a", "question": f"q{i}", "correct": c} for i, c in enumerate(cs)]  # noqa: E731
    got = pooled_verdicts(base, [seed(1, 0, 1, 0), seed(1, 1, 1, 0), seed(0, 0, 1, 1)])
    interval = got.pop("interval")
    assert got == pytest.approx({"questions": 4, "wins": 2, "losses": 1, "p": 1.0,    # q0 2/3 > 0, q3 1/3 > 0; q1 1/3 < 1
                                 "points": 100 * (2 / 3 - 2 / 3 + 1 / 3) / 4})   # = 7/12 right, less the base's 1/2
    assert interval[0] < got["points"] < interval[1]


def test_the_points_split_into_the_kind_of_answer_and_its_value():
    """form_and_value's worked example: of 100 questions one seed wins 4 (on one
    the base answered "seconds" where a number was due) and loses 2 (on one it
    answered "the answer is 5"). The kind's wins and losses cancel: +2 points,
    all from values. With a second seed the parts still sum to pooled_verdicts'."""
    from study.stats import form_and_value, pooled_verdicts
    base = [record("a", f"q{i}", i >= 4) for i in range(100)]
    base[0]["prediction"] = "seconds"
    seed = [record("a", f"q{i}", i < 4 or i >= 6) for i in range(100)]
    seed[4]["prediction"] = "the answer is 5"
    assert form_and_value(base, [seed]) == pytest.approx({"in_form": 99.0, "form": 0.0, "value": 2.0})
    other = [record("a", f"q{i}", i % 3 > 0) for i in range(100)]
    other[6]["prediction"] = "True"      # a question lost with an answer of another kind
    split = form_and_value(base, [seed, other])
    assert split["form"] == pytest.approx(100 * (1 - 1 - 1) / 200)   # per seed's answer: seed's q0 and q4, other's q6
    assert split["form"] + split["value"] == pytest.approx(pooled_verdicts(base, [seed, other])["points"])


def test_bootstrap_of_pooled_differences_matches_resampling_questions():
    """bootstrap_mean's one multinomial draw is the same as resampling questions one
    by one (worked example: 30 questions at +1/3, 10 at -1/3, 60 at 0); with +1 and
    -1 alone it is bootstrap_interval."""
    from study.stats import bootstrap_interval, bootstrap_mean
    lo, hi = bootstrap_mean({1 / 3: 30, -1 / 3: 10, 0.0: 60})
    diffs = np.array([1 / 3] * 30 + [-1 / 3] * 10 + [0.0] * 60)
    means = 100 * np.random.default_rng(5).choice(diffs, (20000, 100)).mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=0.7)
    assert (lo, hi) == pytest.approx((2.67, 10.67), abs=0.01)
    assert bootstrap_mean({1.0: 40, -1.0: 25, 0.0: 1535}) == bootstrap_interval(40, 25, 1600)


def test_subset_keeps_a_nested_share_of_each_submodule(tmp_path):
    """The data curve's rows: 1/4 and 1/2 of each submodule's train questions, the
    quarter inside the half; dev and test questions whole."""
    from study.curves import subset
    inst = [{"Input": f"q{s}{i}", "Output Answer": ["1"], "split": "train", "submodule": f"m{s}"}
            for s in range(2) for i in range(8)] + [{"Input": "d", "Output Answer": ["1"], "split": "dev"}]
    write(f"{tmp_path}/data/calculus.json", {"Definition": ["x"], "Instances": inst})
    kept = {}
    for f in (0.25, 0.5):
        subset(f"{tmp_path}/data", ["calculus"], f, 3, f"{tmp_path}/{f}")
        rows = json.load(open(f"{tmp_path}/{f}/calculus.json"))["Instances"]
        kept[f] = {r["Input"] for r in rows if r["split"] == "train"}
        assert [r["Input"] for r in rows if r["split"] == "dev"] == ["d"]
        assert sorted(sum(q.startswith(f"q{s}") for q in kept[f]) for s in range(2)) == [8 * f, 8 * f]
    assert kept[0.25] < kept[0.5]
    done = subprocess.run([sys.executable, "-m", "study", "subset", f"{tmp_path}/data", "--skills", "calculus",
                           "--fraction", "0", "--out", f"{tmp_path}/x"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "--fraction" in done.stderr


@pytest.mark.parametrize("matplotlib", [True, False])
def test_plateau_report_shows_the_experts_before_the_test_stage(tmp_path, monkeypatch, matplotlib):
    """A study under way: its experts' kept steps are reported before any test
    evaluation, the longer curve beside seed 1's expert, and their picture where
    matplotlib draws it."""
    import study.plateau
    from study.plateau import report as plateau_report
    if not matplotlib:
        monkeypatch.setattr(study.plateau, "pyplot", lambda: None)
    out = str(tmp_path / "study")
    os.makedirs(out)
    open(f"{out}/data.sha256", "w").close()
    mark = "best dev accuracy so far, mean over skills of 300 dev questions"
    write(f"{out}/experts/seed-1/algebra/log.json", [{"step": 100, "time": 1.0, "dev_accuracy": 0.25,
                                                       "dev_loss": 1.0, "kept": mark}, {"step": 110, "time": 2.0, "loss": 1.0}])
    write(f"{out}/long/algebra/log.json", [{"step": s, "time": 1.0, "dev_accuracy": a, "dev_loss": 1.0,
                                            **({"kept": mark} if k else {})}
                                           for s, a, k in ((100, 0.2, 1), (200, 0.3, 1), (300, 0.25, 0))])
    write(f"{out}/longer/seed-2/algebra/log.json", [{"step": 300, "time": 1.0, "dev_accuracy": 0.28,
                                                     "dev_loss": 1.0, "kept": mark}])
    plateau_report(out, f"{tmp_path}/data")
    text = open(f"{out}/REPORT.md").read()
    assert "| algebra | 100 of 110, plateau from 100, 25.0 |" in text
    # the longer run (seed 1) beats the expert by 5 points, more than sqrt(0.25 x 0.75 / 300) = 2.5: kept
    assert ("| algebra | 100 of 110, plateau from 100, 25.0 | 200 of 300, plateau from 200, 30.0 | yes "
            "| 300 of 300 (the last), plateau from 300, 28.0 |") in text
    assert ("![every expert's and mixed LoRA's dev curve](experts/curves.png)" in text) == bool(matplotlib)
    assert os.path.exists(f"{out}/experts/curves.png") == bool(matplotlib)


def test_plateau_report_pools_the_seeds_and_corrects_for_the_rows(tmp_path):
    """Worked example, two skills of 10 questions. The experts' seeds get 3 + 2 and
    2 + 4 right on their own skills (25.0 and 30.0); pooled over the seeds they win
    6 questions from the base and lose none (sign test 2/64 = 0.031). The mixed
    LoRA wins one and loses one (p = 1). Holm over the two rows: 0.031 x 2 = 0.062."""
    from study.plateau import report as plateau_report
    out, z = str(tmp_path / "study"), [0] * 10
    os.makedirs(out)
    open(f"{out}/data.sha256", "w").close()
    hits = lambda n: [1] * n + [0] * (10 - n)   # noqa: E731
    write(f"{out}/eval/base.json", eval_json(a=hits(1), b=z))
    write(f"{out}/eval/experts/seed-1/a.json", eval_json(a=hits(3), b=z))
    write(f"{out}/eval/experts/seed-1/b.json", eval_json(a=z, b=hits(2)))
    write(f"{out}/eval/experts/seed-2/a.json", eval_json(a=hits(2)))
    write(f"{out}/eval/experts/seed-2/b.json", eval_json(b=hits(4)))
    write(f"{out}/eval/mixed/seed-1.json", eval_json(a=z, b=hits(1)))
    write(f"{out}/mixed/seed-1/log.json", [{"step": 100, "time": 1.0, "dev_accuracy": 0.25, "dev_loss": 1.0,
                                            "kept": "best"}, {"step": 200, "time": 2.0, "dev_accuracy": 0.2,
                                                              "dev_loss": 1.0}])
    for seed in (1, 2):
        for s in "ab":
            write(f"{out}/experts/seed-{seed}/{s}/log.json", [{"step": 100, "time": 1.0, "dev_accuracy": 0.5,
                                                                "dev_loss": 1.0, "kept": "best"}])
    mark = "best dev accuracy so far, mean over skills of 100 dev questions"   # the plateau: from 0.5 - 0.05
    write(f"{out}/experts/seed-2/b/log.json", [{"step": s, "time": 1.0, "dev_accuracy": a, "dev_loss": 1.0,
                                                 **({"kept": mark} if k else {})}
                                                for s, a, k in ((100, 0.40, 1), (200, 0.47, 1), (300, 0.50, 1))])
    write(f"{tmp_path}/data/a.json", {"Definition": ["x"], "Categories": [{"Math category": "a"}],
                                       "Instances": [{"Input": "q0", "Output Answer": ["1"], "split": "train"}]})
    for lr, loss in (("1e-3", 0.9), ("2e-3", 0.8)):     # level on accuracy: the lower dev loss is chosen
        write(f"{out}/mixed-lr/lr{lr}/log.json", [{"step": 100, "time": 1.0, "dev_accuracy": 0.5, "dev_loss": loss,
                                                   "kept": "best"}, {"step": 200, "time": 2.0, "loss": 1.0}])
    os.makedirs(f"{out}/curves")
    open(f"{out}/curves/curves.md", "w").write("the curves' table")
    open(f"{out}/curves/curves.png", "wb").write(b"png")
    plateau_report(out, f"{tmp_path}/data", docs=f"{tmp_path}/docs")
    text = open(f"{out}/REPORT.md").read()
    assert open(f"{tmp_path}/docs/REPORT.md").read() == text and "![dev curves](curves/curves.png)" in text
    assert open(f"{tmp_path}/docs/curves/curves.png", "rb").read() == b"png"
    # pooled: the seeds get 5 and 6 of the 20 right, the base 1: (5 + 6) / 2 / 20 - 1 / 20 = +22.5 points
    assert ("| experts, each on its own skill | 2 | 25.0, 30.0 | 27.5 (25.0 to 30.0) | +22.5 (+7.5 to +40.0) | 6 : 0 "
            "| 0.031 | 0.062 |") in text
    assert "| mixed LoRA, rank 8 | 1 | 5.0 | 5.0 | +0.0 (-15.0 to +15.0) | 1 : 1 | 1 | 1 |" in text
    assert "| experts, each on its own skill | 2 | 100.0 | +22.5 | +0.0 | +22.5 |" in text   # every answer a number
    assert "| a | +20.0 | +0.0 |" in text and "| b | -10.0 | +20.0 |" in text     # seed 1 on every skill
    assert "| lr1e-3 | 50.0 | 100 of 200 |  |" in text and "| lr2e-3 | 50.0 | 100 of 200 | chosen |" in text
    assert "| mixed/seed-1 | 100 of 200 | 25.0 |" in text
    assert "1 of the 20: q0" in text and "| a | 100 of 100 (the last), 50.0 | 100 of 100 (the last), 50.0 |" in text
    assert "| b | 100 of 100 (the last), 50.0 | 300 of 300 (the last), plateau from 200, 50.0 |" in text
    with pytest.raises(UserError, match="no data.sha256"):
        plateau_report(str(tmp_path), f"{tmp_path}/data")


def test_plateau_report_says_which_runs_are_under_way(tmp_path):
    """A run stopped mid-way (its train_state.pt at step 200 of 1,000) is reported
    as such, and the rate sweep names its leader, not a choice, until every run is
    finished (step == steps). The record is read without torch."""
    from formats.state import write_state
    from study.plateau import report as plateau_report
    out = str(tmp_path / "study")
    os.makedirs(out)
    open(f"{out}/data.sha256", "w").close()
    for lr, acc, step, steps in (("1e-3", 0.5, 200, 1000), ("2e-3", 0.4, 1000, 1000)):
        run = f"{out}/mixed-lr/lr{lr}"
        write(f"{run}/log.json", [{"step": 100, "time": 1.0, "dev_accuracy": acc, "dev_loss": 1.0, "kept": "best"},
                                  {"step": step, "time": 2.0, "loss": 1.0}])
        write_state(f"{run}/train_state.pt", {"step": step, "steps": steps, "best": acc, "log": [], "run": {}})
    plateau_report(out, f"{tmp_path}/data")
    text = open(f"{out}/REPORT.md").read()
    assert "| lr1e-3 | 50.0 | 100 so far, at step 200 of 1000 | leads so far |" in text
    assert "| lr2e-3 | 40.0 | 100 of 1000 |  |" in text
    write_state(f"{out}/mixed-lr/lr1e-3/train_state.pt", {"step": 1000, "steps": 1000, "best": 0.5, "log": [],
                                                          "run": {}})
    write(f"{out}/mixed-lr/lr1e-3/log.json", [{"step": 100, "time": 1.0, "dev_accuracy": 0.5, "dev_loss": 1.0,
                                               "kept": "best"}, {"step": 1000, "time": 2.0, "loss": 1.0}])
    plateau_report(out, f"{tmp_path}/data")
    assert "| lr1e-3 | 50.0 | 100 of 1000 | chosen |" in open(f"{out}/REPORT.md").read()
    open(f"{out}/mixed-lr/lr1e-3/train_state.pt", "w").write("not a zip")      # read without torch, checked
    with pytest.raises(UserError, match="lr1e-3/train_state.pt: not a train.py state"):
        plateau_report(out, f"{tmp_path}/data")


def test_plateau_report_draws_the_data_curve_with_twice_the_rows_where_trained(tmp_path):
    """The data curve: each swept skill's test accuracy at 1/4, 1/2 and all of its
    rows (seed 1's expert), and twice the rows only where that run exists."""
    from study.plateau import report as plateau_report
    out = str(tmp_path / "study")
    os.makedirs(out)
    open(f"{out}/data.sha256", "w").close()
    hits = lambda n: [1] * n + [0] * (10 - n)   # noqa: E731
    for skill, runs in (("a", {"rows/a-0.25": 2, "rows/a-0.5": 4, "experts/seed-1/a": 5, "rows/a-2": 7}),
                        ("b", {"rows/b-0.25": 3, "rows/b-0.5": 3, "experts/seed-1/b": 3})):
        for name, n in runs.items():
            write(f"{out}/eval/{name}.json", eval_json(**{skill: hits(n)}))
    plateau_report(out, f"{tmp_path}/data")
    text = open(f"{out}/REPORT.md").read()
    assert "| a | 20.0 | 40.0 | 50.0 | 70.0 |" in text and "| b | 30.0 | 30.0 | 30.0 | - |" in text


@pytest.mark.parametrize("kept", [3, 4])
def test_plateau_report_shows_the_k_sweep_and_says_when_k_is_the_range_top(tmp_path, kept):
    """The clusters' k sweep (study.clusters' sweep.json) is reported with its pick;
    a pick at the top of the range is named as the range's cap, not as a peak."""
    from study.plateau import report as plateau_report
    out = str(tmp_path / "study")
    os.makedirs(out)
    open(f"{out}/data.sha256", "w").close()
    runs = [{"k": k, "silhouette": 0.1 + (0.2 if k == kept else 0.0) + 0.01 * k, "inertia": 1.0} for k in (2, 3, 4)]
    write(f"{out}/clusters/sweep.json", {"k": kept, "runs": runs})
    plateau_report(out, f"{tmp_path}/data")
    text = open(f"{out}/REPORT.md").read()
    assert f"| {kept} | {runs[kept - 2]['silhouette']:.3f} |" in text and f"kept: k = {kept}" in text
    assert ("the top of the range" in text) == (kept == 4)


def test_beats_by_more_than_one_standard_error(tmp_path):
    """The docstring's example: 58.3% against 62.0% of 300 dev questions is 3.7 points,
    more than one standard error (2.8); 60.0% is not. A log that does not say how many
    dev questions it read is refused."""
    from study.plateau import beats
    mark = "best dev accuracy so far, mean over skills of 300 dev questions"
    for name, acc in (("expert", 0.583), ("long", 0.62), ("near", 0.60)):
        write(f"{tmp_path}/{name}/log.json", [{"step": 100, "time": 1.0, "dev_accuracy": acc, "dev_loss": 1.0,
                                               "kept": mark}])
    assert beats(f"{tmp_path}/expert", f"{tmp_path}/long")
    assert not beats(f"{tmp_path}/expert", f"{tmp_path}/near")
    write(f"{tmp_path}/bare/log.json", [{"step": 100, "time": 1.0, "dev_accuracy": 0.5, "dev_loss": 1.0, "kept": "best"}])
    with pytest.raises(UserError, match="how many dev questions"):
        beats(f"{tmp_path}/bare", f"{tmp_path}/long")
