"""data/generate.py, run as users run it: in .venv-gen (made by `make data`), as a
subprocess, for two small skills. Skipped when .venv-gen is missing."""
import collections
import json
import os
import subprocess

import pytest

from data.lila import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN_PYTHON = os.path.join(ROOT, ".venv-gen", "bin", "python")
SIZES = {"train": 20, "dev": 5, "test": 5}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two runs of the generator with the same arguments: (folder 1, folder 2)."""
    if not os.path.exists(GEN_PYTHON):
        pytest.skip(f"{GEN_PYTHON} not found: the generator needs its own environment "
                    "(mathematics-dataset with old sympy/numpy pins); `make data` creates it")
    outs = []
    for run in ("a", "b"):
        out = str(tmp_path_factory.mktemp(f"gen_{run}"))
        subprocess.run([GEN_PYTHON, "data/generate.py", "--skills", "comparison,numbers",
                        "--train", "20", "--dev", "5", "--test", "5", "--workers", "2",
                        "--out", out], cwd=ROOT, check=True, capture_output=True, text=True)
        outs.append(out)
    return outs


def test_same_arguments_give_identical_bytes(generated):
    a, b = generated
    assert sorted(os.listdir(a)) == sorted(os.listdir(b)) == ["comparison.json", "numbers.json"]
    for name in os.listdir(a):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


def test_splits_sizes_submodules_and_no_leaks(generated):
    for name in os.listdir(generated[0]):
        with open(os.path.join(generated[0], name)) as f:
            instances = json.load(f)["Instances"]
        assert all(x["submodule"].startswith(name[:-len(".json")] + "__") for x in instances)
    examples = load(generated[0])
    assert sorted({e.skill for e in examples}) == ["comparison", "numbers"]
    counts = collections.Counter((e.submodule, e.split) for e in examples)
    for (submodule, split), n in counts.items():
        assert submodule.split("__")[0] in ("comparison", "numbers")
        assert n == SIZES[split], (submodule, split, n)
    assert len({s for s, _ in counts}) == 4 + 9  # comparison and numbers submodules
    split_of = collections.defaultdict(set)
    for e in examples:
        split_of[e.question].add(e.split)
    assert all(len(splits) == 1 for splits in split_of.values())


def test_exclude_gives_a_draw_without_those_questions(generated, tmp_path):
    """The same seed with --exclude of its own output: not one question repeats."""
    out = str(tmp_path / "fresh")
    run = subprocess.run([GEN_PYTHON, "data/generate.py", "--skills", "comparison", "--train", "20",
                          "--dev", "5", "--test", "0", "--workers", "2", "--exclude", generated[0],
                          "--out", out], cwd=ROOT, check=True, capture_output=True, text=True)
    assert f"excluding the {len(load(generated[0]))} questions of {generated[0]}" in run.stderr and not run.stdout
    before = {e.question for e in load(generated[0])}
    fresh = load(out)
    assert fresh and not before & {e.question for e in fresh}
    bad = subprocess.run([GEN_PYTHON, "data/generate.py", "--exclude", str(tmp_path / "nothing"),
                          "--out", out], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "no LiLA task files" in bad.stderr


def test_splits_are_disjoint_across_a_skill_and_train_keeps_its_positions():
    """Worked example: submodule a holds "q" in test, submodule b draws it for train
    and "r" for dev, and a repeats "r" in train. b's train "q" and a's train "r"
    are replaced in place by spares the skill does not hold ("q" and "s" are
    skipped); a train question shared by a and b ("t") stays in both."""
    from data.generate import disjoint_across_skill

    def inst(sub, q, split):
        return {"Input": q, "Output Program": [], "Output Answer": [q.upper()], "split": split,
                "submodule": f"x__{sub}"}
    a = [inst("a", "q", "test"), inst("a", "r", "train"), inst("a", "t", "train")]
    b = [inst("b", "r", "dev"), inst("b", "u", "train"), inst("b", "q", "train"), inst("b", "t", "train")]
    out = disjoint_across_skill([(a, [("s", "S"), ("v", "V")]), (b, [("q", "Q"), ("s", "S"), ("w", "W")])])
    assert [(x["submodule"][-1], x["Input"], x["split"], x["Output Answer"]) for x in out] == [
        ("a", "q", "test", ["Q"]), ("a", "s", "train", ["S"]), ("a", "t", "train", ["T"]),
        ("b", "r", "dev", ["R"]), ("b", "u", "train", ["U"]), ("b", "w", "train", ["W"]), ("b", "t", "train", ["T"])]
