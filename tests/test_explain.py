"""eval.py --route and explain.py: route specs by hand, a forced
expert equals --adapter, a soft route replaces the task level, and explain.py
runs end to end on a tiny base with two experts, a router and clusters, or
asks one question of one expert or of the base alone, without data."""
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

import cluster as C
import eval as E
import explain
import model as M
import train
from data.prompts import prompt_ids
from formats import adapters
from conftest import ROOT
from test_experts import base_dir, expert_argv  # noqa: F401  (fixture)
from test_train_eval import FIXTURE, tokenizer_path  # noqa: F401  (fixture)

CFG = SimpleNamespace(experts=["algebra", "arithmetic", "calculus"], groups=[[0, 2], [1]])


def test_route_specs_by_hand():
    assert E.parse_route("algebra=0.7,arithmetic=0.3", CFG).tolist() == pytest.approx([0.7, 0.3, 0.0])
    assert E.parse_route("algebra+calculus=1, arithmetic=1", CFG).tolist() == [0.25, 0.5, 0.25]
    forced = E.parse_route("calculus", CFG)
    assert forced.tolist() == [0.0, 0.0, 1.0] and E.forced_expert(forced) == 2
    assert E.forced_expert(E.parse_route("algebra=2,calculus=2", CFG)) is None


@pytest.mark.parametrize("spec, message", [
    ("geometry=1", "unknown name 'geometry'; experts: algebra, arithmetic, calculus; "
                   "groups: algebra+calculus, arithmetic"),
    ("algebra=lots", "must be a number, got 'lots'"),
    ("algebra=-1", "must be a finite number >= 0"), ("algebra=nan", "must be a finite number >= 0"),
    ("algebra=0", "sum to 0"),
])
def test_bad_route_specs(spec, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        E.parse_route(spec, CFG)


def test_text_heatmap_blocks():
    text = explain.text_heatmap([[0.0, 1.0], [0.5, 0.25]], ["layer 0", "layer 1"], ["a", "b"])
    assert text.splitlines()[1].split()[-2:] == ["0%", "█100%"]
    assert "▄ 50%" in text and "▂ 25%" in text


@pytest.fixture(scope="module")
def routed(tmp_path_factory, base_dir):  # noqa: F811
    """Two experts (algebra, numbers), a router over them, and clusters of the fixture."""
    root = tmp_path_factory.mktemp("routed")
    for skill in ("algebra", "numbers"):
        argv = expert_argv(base_dir, root / "experts" / skill)
        argv[argv.index("algebra")] = skill
        train.train(train.config(argv + ["--steps", "2"]))
    C.main(["--k", "2", "--out", str(root / "clusters"), "--model", base_dir, "--data", FIXTURE,
            "--split", "train", "--n-init", "2", "--no-raw", "--label-trials", "1"])
    train.train(train.config([
        "--router", "--experts", str(root / "experts"), "--clusters", str(root / "clusters"),
        "--model", base_dir, "--data", FIXTURE, "--steps", "2", "--batch-size", "4", "--seq-len", "64",
        "--warmup", "1", "--eval-every", "2", "--eval-batches", "1", "--eval-questions", "4",
        "--n-groups", "2", "--seed", "0", "--device", "cpu", "--out", str(root / "routers" / "two-level")]))
    return root


def run_eval(base, *argv, script="eval.py"):
    cmd = [sys.executable, script, "--model", base, "--data", FIXTURE, "--shots", "2", *argv]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_forced_route_equals_the_adapter(routed, base_dir, tmp_path):  # noqa: F811
    run_eval(base_dir, "--moe", str(routed / "routers" / "two-level"), "--route", "numbers", "--json", str(tmp_path / "r.json"))
    run_eval(base_dir, "--adapter", str(routed / "experts" / "numbers"), "--json", str(tmp_path / "a.json"))
    routed_recs = json.load(open(tmp_path / "r.json"))["records"]
    adapter_recs = json.load(open(tmp_path / "a.json"))["records"]
    assert [r["prediction"] for r in routed_recs] == [r["prediction"] for r in adapter_recs]
    assert {r["routing"]["expert"] for r in routed_recs} == {"numbers"}


def test_soft_route_replaces_the_task_level(routed, base_dir, tmp_path):  # noqa: F811
    out = run_eval(base_dir, "--moe", str(routed / "routers" / "two-level"), "--route", "algebra=0.7,numbers=0.3",
                   "--json", str(tmp_path / "s.json"), "--out", str(tmp_path / "routing"))
    assert "route algebra=0.7,numbers=0.3" in out
    for r in json.load(open(tmp_path / "s.json"))["records"]:
        assert r["routing"]["prior"] == pytest.approx([0.7, 0.3])
    bad = subprocess.run([sys.executable, "eval.py", "--model", base_dir, "--data", FIXTURE,
                          "--moe", str(routed / "routers" / "two-level"), "--route", "geometry"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown name 'geometry'; experts: algebra, numbers" in bad.stderr


def test_explain_one_question(routed, base_dir):  # noqa: F811
    out = run_eval(base_dir, "--moe", str(routed / "routers" / "two-level"), "Solve 3*y - 1 = -13 for y.",
                   script="explain.py")
    assert f"meta-question  {C.meta_question('Solve 3*y - 1 = -13 for y.')}\n" in out
    assert f"of {routed / 'clusters'}: majority skill" in out          # the router's clusters_dir
    assert "task level (centroid task router)" in out
    # every distribution printed sums to 100%: the groups of the task level, and each
    # layer's row of group weights and of expert weights (rounding moves a row by <= 2)
    groups = [float(l.split()[-1][:-1]) for l in out.splitlines() if l.startswith("  group ")]
    assert len(groups) == 2 and sum(groups) == pytest.approx(100, abs=0.2)
    rows = [l for l in out.splitlines() if l.startswith("layer ")]
    assert len(rows) == 2 * 2                          # 2 layers, groups then experts
    for row in rows:
        assert abs(sum(int(p) for p in re.findall(r"(\d+)%", row)) - 100) <= 2, row
    assert re.search(r"\nanswer +\S", out)
    assert "shots (2, nearest by meta-question embedding)" in out and out.count("  ->  ") == 2
    forced = run_eval(base_dir, "--moe", str(routed / "routers" / "two-level"), "What is 2 + 3?",
                      "--route", "numbers", script="explain.py")
    assert "--route numbers" in forced and "expert numbers" in forced and "100.0%" in forced


def test_one_question_of_one_expert_or_of_the_base_without_data(routed, base_dir, tmp_path, monkeypatch,  # noqa: F811
                                                                capsys):
    """explain.py --adapter answers with that expert merged, --no-router with the
    base alone; without a data folder the prompt has no shots, and says so. Each
    answer is the merged expert's (or the base's) own 0-shot answer."""
    question, expert = "Solve 3*y - 1 = -13 for y.", str(routed / "experts" / "algebra")
    answers = {}
    for who in (["--adapter", expert], ["--no-router"]):
        monkeypatch.setattr(sys, "argv", ["explain.py", question, *who, "--model", base_dir,
                                          "--data", str(tmp_path / "no-data"), "--clusters", str(routed / "clusters")])
        explain.main()
        out = capsys.readouterr().out
        assert "(no shots: " in out and "shots (0, none: no train questions)" in out
        assert "cluster        " in out and "task level" not in out and "layer 0" not in out
        answers[who[0]] = out
    assert f"adapter        {expert}, merged into the base\n" in answers["--adapter"]
    assert "adapter        none: the base alone (--no-router)\n" in answers["--no-router"]
    model, tok = M.load(base_dir, verbose=False)
    ids = prompt_ids(tok, [], question)[0]
    merged = adapters.with_adapter(model, expert, lambda: M.complete(model, tok, [ids], 32)[0].strip())
    assert answers["--adapter"].endswith(f"\nanswer         {merged}\n")
    assert answers["--no-router"].endswith(f"\nanswer         {M.complete(model, tok, [ids], 32)[0].strip()}\n")


def test_heldout_evaluates_every_configuration(routed, base_dir, tmp_path):  # noqa: F811
    """python -m study.heldout: every configuration of a study folder on the same questions."""
    cmd = [sys.executable, "-m", "study.heldout", str(routed), "--model", base_dir, "--data", FIXTURE,
           "--shots", "2", "--limit", "2", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    table = json.load(open(tmp_path / "results.json"))["accuracy"]
    assert list(table) == ["base, 0-shot", "base, 2-shot (nearest shots)", "each skill's expert on its own skill",
                           "router two-level (full)", "router two-level (task-soft)",
                           "router two-level (task-hard)"]
    assert all(set(accs) == {"algebra", "numbers"} for accs in table.values())
    assert "| router two-level (task-hard) |" in open(tmp_path / "results.md").read() and "mean" in out


def test_explain_the_shipped_router_from_a_fresh_clone(tmp_path):
    """checkpoints/phi-tiny-moe works without generated data (zero-shot then)."""
    out = subprocess.run([sys.executable, "explain.py", "What is 12 + 30?",
                          "--data", str(tmp_path / "no-data")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "meta-question  What is N + N?" in text
    assert "of checkpoints/phi-tiny-moe/clusters: majority skill" in text
    assert "group arithmetic" in text and "(no shots:" in text and "(0-shot prompt)" in text
    assert "layer 3" in text and "\nanswer " in text
