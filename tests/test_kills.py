"""Random kills: train.py, cluster.py, eval.py --json and python -m study report
are each killed with SIGKILL at a few seeded random moments of a small fixture
run (one output folder killed into again and again; train.py's, a fresh one
each time). After every kill, whatever the folder holds either loads or is
refused in one line that names it (a UserError), never a traceback or a
silently wrong file; the next run (train.py: --resume) then finishes with
exactly the output of a run that was never killed.

A kill comes a seeded random delay after the run's first write (a lock file
aside), shorter than the time from the first write to the end of a whole run
of the same command, so that kills land among the writes."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import cluster as C
import eval as E
import model as M
import train
from conftest import ROOT
from data.score import mean_accuracy
from formats import adapters
from formats.clusters import read_assignments, read_centroids, read_cluster_skills
from formats.files import UserError, read_json, read_object
from formats.state import read_state
from study.report import report
from test_experts import base_dir, expert_argv  # noqa: F401  (fixture)
from test_train_eval import FIXTURE, tokenizer_path  # noqa: F401  (fixture)

MOMENTS = 3            # kills per command
LOCK = ".lock"         # formats.files.lock's file: a holder's name, not an output


def written(folder):
    """{path under folder: bytes} of its files, lock and temporary files aside."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name != LOCK and not name.endswith(".tmp"):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    found[os.path.relpath(path, folder)] = f.read()
    return found


def stamps(folder):
    """{(path, modification time)} of the files under folder, locks and temporary
    files aside. A file can vanish between the listing and the stat (a .tmp file
    or a whole .tmp folder renamed into place); it is left out."""
    found = set()
    for root, _, names in os.walk(folder):
        for name in names:
            if name == LOCK or name.endswith(".tmp"):
                continue
            try:
                found.add((os.path.join(root, name), os.stat(os.path.join(root, name)).st_mtime_ns))
            except FileNotFoundError:
                pass
    return found


def first_write(proc, folder):
    """Wait until proc writes a file under folder (a new one, or one rewritten), or ends."""
    before = stamps(folder)
    while proc.poll() is None and stamps(folder) <= before:
        time.sleep(0.005)


def whole_run(cmd, folder, log):
    """Run cmd to its end, which must be exit 0 without a traceback; returns the
    seconds from its first write under folder to its end."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        first_write(proc, folder)
        start = time.monotonic()
        proc.wait()
    text = open(log).read()
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    return time.monotonic() - start


def moments(name, window):
    """MOMENTS seeded random delays in [0, window) seconds."""
    rng = random.Random(f"kills-{name}")
    return [rng.random() * window for _ in range(MOMENTS)]


def killed(cmd, folder, delay):
    """Run cmd and SIGKILL it `delay` seconds after its first write under folder
    (unless it ended before)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_write(proc, folder)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def loads_or_refused(read, folder):
    """read() of a folder's files, or its UserError: one line that names the folder or a file in it."""
    try:
        return read()
    except UserError as e:
        assert str(folder) in str(e) and "\n" not in str(e), str(e)
        return None


def test_train(base_dir, tmp_path):  # noqa: F811
    """A LoRA expert, its state saved every step, killed into fresh folders: after
    each kill the adapter loads onto the base or is refused by name, and so are
    train_state.pt and log.json; --resume then ends with the adapter of the run
    never killed, byte for byte."""
    argv = lambda out: expert_argv(base_dir, out, "--steps", "4", "--eval-every", "2",  # noqa: E731
                                   "--save-every", "1", "--resume")
    whole = tmp_path / "whole"
    window = whole_run([sys.executable, "train.py", *argv(whole)], whole, tmp_path / "log")
    for i, delay in enumerate(moments("train", window)):
        out = tmp_path / f"killed-{i}"
        killed([sys.executable, "train.py", *argv(out)], out, delay)
        loads_or_refused(lambda: adapters.load_adapter(M.load(base_dir, verbose=False)[0], str(out)), out)
        if os.path.exists(out / "train_state.pt"):
            loads_or_refused(lambda: read_state(str(out / "train_state.pt"), train.config(argv(out)).flags), out)
        if os.path.exists(out / "log.json"):
            loads_or_refused(lambda: read_json(str(out / "log.json"), "train.py writes it"), out)
        train.train(train.config(argv(out)))
        for name in (adapters.WEIGHTS_NAME, adapters.CONFIG_NAME):
            assert (out / name).read_bytes() == (whole / name).read_bytes(), name


def test_cluster(base_dir, tmp_path):  # noqa: F811
    """cluster.py replaces its --out folder as a whole: after each kill the folder
    holds the whole set or is refused by name (no folder, or only its lock); the
    next run clears what the killed one left beside it."""
    cmd = lambda out, cache: [sys.executable, "cluster.py", "--k", "2", "--out", str(out), "--model",  # noqa: E731
                              base_dir, "--data", FIXTURE, "--n-init", "2", "--no-raw", "--label-trials", "1",
                              "--cache-dir", str(cache)]
    whole, out = tmp_path / "whole" / "clusters", tmp_path / "killed" / "clusters"
    window = whole_run(cmd(whole, tmp_path / "cache-whole"), whole.parent, tmp_path / "log")
    reference = written(whole)
    config = M.load(base_dir, verbose=False)[0].config
    for delay in moments("cluster", window):
        killed(cmd(out, tmp_path / "cache"), out.parent, delay)
        assert written(out) in ({}, reference), sorted(written(out))     # none of it, or all of it
        for read in (lambda: read_centroids(str(out), config), lambda: read_assignments(str(out)),
                     lambda: read_cluster_skills(str(out), 2)):
            loads_or_refused(read, out)
    C.main(cmd(out, tmp_path / "cache")[2:])
    assert written(out) == reference and sorted(os.listdir(out.parent)) == ["clusters"]


def test_eval_json(base_dir, tmp_path, monkeypatch):  # noqa: F811
    """eval.py --json: after each kill the report is absent or whole, the same as
    a whole run's (but its time)."""
    cmd = lambda path: [sys.executable, "eval.py", "--model", base_dir, "--data", FIXTURE, "--shots", "1",  # noqa: E731
                        "--limit", "2", "--max-new-tokens", "4", "--json", str(path)]
    whole, out = tmp_path / "whole" / "eval.json", tmp_path / "killed" / "eval.json"
    window = whole_run(cmd(whole), whole.parent, tmp_path / "log")
    reference = {k: v for k, v in read_object(str(whole), "eval.py --json").items() if k != "seconds"}
    assert len(reference["records"]) == 4 and reference["mean_accuracy"] == mean_accuracy(reference["records"])
    for delay in moments("eval", window):
        killed(cmd(out), out.parent, delay)
        got = loads_or_refused(lambda: read_object(str(out), "eval.py --json"), out.parent)
        assert got is None or {k: v for k, v in got.items() if k != "seconds"} == reference
    monkeypatch.setattr(sys, "argv", cmd(out)[1:])
    E.main()
    assert {k: v for k, v in read_object(str(out), "eval.py --json").items() if k != "seconds"} == reference


def a_study(folder):
    """A small study folder, as experiment.sh leaves one: two eval.py reports, a
    forgetting matrix, an expert's log."""
    pieces = {"eval/base-4shot.json": {"accuracy": {"algebra": 0.5, "numbers": 0.25},
                                       "answer_nll": {"algebra": 1.0, "numbers": 2.0}},
              "eval/mixed.json": {"accuracy": {"algebra": 0.5, "numbers": 0.5},
                                  "answer_nll": {"algebra": 0.5, "numbers": 1.5}},
              "forgetting/forgetting.json": {"accuracy": {"algebra": {"algebra": 0.75, "numbers": 0.0}},
                                             "nll": {"algebra": {"algebra": 0.25, "numbers": 3.0}}},
              "experts/algebra/log.json": [{"step": 60, "time": 90.0}]}
    for name, obj in pieces.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "w") as f:
            json.dump(obj, f)


def test_study_report(tmp_path):
    """python -m study report: after each kill every file it writes is absent or
    the whole run's, byte for byte."""
    whole, out = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, out):
        a_study(folder)
    inputs = written(out)
    cmd = lambda folder: [sys.executable, "-m", "study", "report", str(folder)]  # noqa: E731
    window = whole_run(cmd(whole), whole, tmp_path / "log")
    reference = written(whole)
    assert {"REPORT.md", "results.md", "results.json"} <= set(reference) - set(inputs)
    for delay in moments("report", window):
        killed(cmd(out), out, delay)
        got = written(out)
        assert set(got) <= set(reference) and all(reference[name] == data for name, data in got.items())
        if "results.json" in got:
            loads_or_refused(lambda: read_object(str(out / "results.json"), "python -m study report"), out)
    report(str(out))
    assert written(out) == reference
