"""README.md's command-line cheat-sheet, run as written and in order, so that the
README and the code cannot drift apart.

Each line runs in a scratch copy of the repository (its files linked, out/, runs/
and the data it writes its own), so every command reads only what the repository
ships and what a line above it wrote. Sizes are made tiny by flags appended per
program (tiny(); argparse keeps the last value of a repeated flag): the fixture
questions (two skills, algebra and numbers), two steps, one question per skill,
and conftest's tiny phi as the model (explain.py keeps phi-tiny, which the
shipped router it explains was trained on). A comment that ends in ": out/PATH"
names the folder its line writes; the test checks that it does."""
import glob
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

from conftest import ROOT, TINY, write_hf_checkpoint

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "ours")
GEN_PYTHON = ".venv-gen/bin/python"
SKIPPED = {   # lines a test cannot run, and why
    "bash study/experiment.sh": "the whole study: tests/test_hub.py runs it with a stub python",
}


def cheatsheet():
    """The lines of README.md's cheat-sheet block, comment lines left out."""
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"^## Command-line cheat-sheet\n.*?^```\n(.*?)^```", text, re.S | re.M).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def scratch_repository(path):
    """path: the repository's files linked, except what runs write (out/, runs/) and
    data/, a folder of its own holding links to the package's files only."""
    for name in os.listdir(ROOT):
        if name not in ("out", "runs", "data", ".git"):
            os.symlink(os.path.join(ROOT, name), os.path.join(path, name))
    os.mkdir(os.path.join(path, "data"))
    for name in os.listdir(os.path.join(ROOT, "data")):
        if name.endswith(".py"):
            os.symlink(os.path.join(ROOT, "data", name), os.path.join(path, "data", name))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def command(line, cwd, model):
    """The line's argv, run by this python, with its program's tiny() flags appended;
    a glob is expanded in cwd, as the shell would."""
    words = []
    for word in shlex.split(line, comments=True):
        found = sorted(glob.glob(word, root_dir=cwd)) if "*" in word else []
        words += found or [word]
    program, rest = words[0], words[1:]
    if program == "torchrun":            # the same launcher, on a free port (two tests may run at once)
        return [sys.executable, "-m", "torch.distributed.run", "--master-port", free_port(),
                *rest, *tiny("train.py", rest, model)]
    if program == GEN_PYTHON:
        return [program, *rest, *tiny("data/generate.py", rest, model)]
    assert program == "python", f"{line!r}: a program the test does not know"
    name = rest[1] if rest[0] == "-m" else rest[0]
    return [sys.executable, *rest, *tiny(name, rest, model)]


def tiny(name, argv, model):
    """The flags that make a program's run tiny, on the CPU."""
    data, few = ["--data", FIXTURE, "--device", "cpu"], ["--max-new-tokens", "4"]
    if name == "train.py":
        steps = ["--steps-per-skill", "1"] if "--steps-per-skill" in argv else ["--steps", "2"]   # --mixed's own
        router = ["--router-questions", "4"] if "--router" in argv else []
        return ["--model", model, *data, *steps, "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1",
                "--eval-questions", "2", *router]
    return {"eval.py": ["--model", model, *data, "--limit", "1", *few],
            "explain.py": [*data, *few],                     # phi-tiny: the shipped router was trained on it
            "cluster.py": ["--model", model, *data, "--n-init", "1", "--label-trials", "1", "--no-raw",
                           *(["--sample", "20"] if "--sample" in argv else [])],   # the fixture's train split: 42
            "study.clusters": ["--model", model, *data, "--n-init", "1", "--label-trials", "1", "--no-raw"],
            "study": [],
            "study.heldout": ["--model", model, "--device", "cpu", "--limit", "1", *few],   # the questions drawn
            "data/generate.py": ["--skills", "algebra,numbers", "--train", "2", "--test", "1", "--exclude", FIXTURE],
            }[name]


def test_the_cheatsheet_runs_in_order(tmp_path):
    model = str(tmp_path / "tiny-phi")    # a context long enough for 4-shot prompts of its small tokenizer
    write_hf_checkpoint(model, **{**TINY, "max_position_embeddings": 1024})
    scratch_repository(tmp_path)
    lines = cheatsheet()
    assert len(lines) > 20 and set(SKIPPED) <= set(line.split("#")[0].strip() for line in lines)
    for line in lines:
        if line.split("#")[0].strip() in SKIPPED:
            continue
        argv = command(line, tmp_path, model)
        if argv[0] == GEN_PYTHON and not os.path.exists(os.path.join(ROOT, GEN_PYTHON)):
            # no generator environment (make data makes it): the fixture stands in for its questions
            shutil.copytree(FIXTURE, tmp_path / argv[argv.index("--out") + 1])
            continue
        run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{line}\n{run.stderr[-3000:]}"
        wrote = re.search(r": (out/\S+)$", line)
        if wrote:
            assert os.path.isdir(tmp_path / wrote.group(1)), f"{line}: no {wrote.group(1)}"
