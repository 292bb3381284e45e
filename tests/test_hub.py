"""--model takes a Hugging Face id ("org/name") as well as a folder, and
study/experiment.sh spreads its parallel jobs over the GPUs.

No network: each test builds a fake HF cache in tmp_path, in the layout that
huggingface_hub itself writes (files in blobs/, named by content, linked from
snapshots/<commit>/; refs/main holds the commit of `main`), from a tiny
checkpoint, and sets HF_HUB_OFFLINE=1 and HF_HOME. huggingface_hub reads those
variables when it is imported: a subprocess sees them as a user's shell would,
and in this process (where transformers has already imported it) the test sets
its constants as well."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import types

import pytest
import torch

from formats import adapters, hf
from formats.files import UserError
import lora
import model as M
from conftest import ROOT, TINY, write_hf_checkpoint

REPO = "org/name"
MAIN = "1" * 40                           # commit hashes: 40 hex digits
OLD = "0" * 40                            # an old "phi-msft" revision of the same repository
DATA = os.path.join(ROOT, "tests", "fixtures", "ours")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The tiny phi of conftest with a context long enough for 4-shot prompts."""
    path = str(tmp_path_factory.mktemp("ckpt"))
    write_hf_checkpoint(path, **{**TINY, "max_position_embeddings": 1024})
    return path


def add_snapshot(cache, repo_id, commit, files, ref=None):
    """Put `files` ({name: source path}) in the cache as snapshots/<commit>/name,
    each a relative link to blobs/<sha256 of its content>, as huggingface_hub does;
    with `ref`, refs/<ref> names that commit."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", commit)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(snap, exist_ok=True)
    for name, src in files.items():
        blob = hashlib.sha256(open(src, "rb").read()).hexdigest()
        shutil.copyfile(src, os.path.join(repo, "blobs", blob))
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snap, name))
    if ref:
        os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
        with open(os.path.join(repo, "refs", ref), "w") as f:
            f.write(commit)                              # no newline, as huggingface_hub writes it
    return snap


@pytest.fixture
def hub(ckpt, tmp_path, monkeypatch):
    """HF_HOME with org/name cached at MAIN (refs/main) and an old phi-msft commit
    OLD; offline. Returns (environment for a subprocess, snapshot folder of MAIN)."""
    home = tmp_path / "hf"
    cache = str(home / "hub")
    snap = add_snapshot(cache, REPO, MAIN, {n: os.path.join(ckpt, n) for n in os.listdir(ckpt)}, ref="main")
    old = tmp_path / "old"             # what microsoft/phi-2 held before its HF conversion
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"model_type": "phi-msft", "n_embd": 64, "n_layer": 2}))
    add_snapshot(cache, REPO, OLD, {"config.json": str(old / "config.json"),
                                    "tokenizer.json": os.path.join(ckpt, "tokenizer.json"),
                                    "model.safetensors.index.json":
                                        os.path.join(ckpt, "model.safetensors.index.json")})
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))           # the cache is HF_HOME/hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants              # already imported: set what it read
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return dict(os.environ), snap


def logits(model):
    idx = torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(idx)


# --- model.load with an id -------------------------------------------------------------


def test_id_loads_the_cached_snapshot_with_the_folders_logits(hub, ckpt, capsys):
    _, snap = hub
    by_id, _ = M.load(REPO)
    assert f"{REPO}: commit {MAIN}, {snap}" in capsys.readouterr().err   # folder and revision said
    by_folder, _ = M.load(ckpt, verbose=False)
    assert torch.equal(logits(by_id), logits(by_folder))
    assert (by_id.model_id, by_id.revision, by_id.name_or_path) == (REPO, MAIN, snap)
    assert (by_folder.model_id, by_folder.revision) == (ckpt, None)


def test_cluster_embeddings_of_an_id(hub, ckpt, tmp_path):
    """cluster.embed_cached hashes the files of model.name_or_path: the snapshot
    folder, whose files are links into blobs/."""
    import cluster
    texts = ["Solve 3*y - 1 = -13 for y.", "What is 2 + 3?"]
    by_id = cluster.embed_cached(texts, *M.load(REPO, verbose=False), 1, str(tmp_path / "c"))
    by_folder = cluster.embed_cached(texts, *M.load(ckpt, verbose=False), 1, str(tmp_path / "c"))
    assert by_id.shape == by_folder.shape and abs(by_id - by_folder).max() < 1e-5


def test_revision_by_commit_hash(hub):
    model, _ = M.load(REPO, revision=MAIN, verbose=False)
    assert model.revision == MAIN


@pytest.mark.parametrize("name, revision, error, message", [
    ("org/absent", None, UserError, "org/absent: no such folder, and not in the Hugging Face cache"),
    (REPO, "2" * 40, UserError, f"revision {'2' * 40}): no such folder, and not in the Hugging Face cache"),
    (REPO, "v9", UserError, "(revision v9): no such folder, and not in the Hugging Face cache"),
    (REPO, OLD, ValueError, "this is the old 'phi-msft' layout"),
])
def test_unresolvable_ids_and_revisions_are_refused(hub, name, revision, error, message):
    with pytest.raises(error) as e:
        M.load(name, revision=revision, verbose=False)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.fixture
def online(hub, monkeypatch):
    """HF_HUB_OFFLINE unset, and snapshot_download's network half replaced by
    net.download (set by the test; net.calls records its arguments): the cache is
    still read for real."""
    import huggingface_hub
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    real, net = huggingface_hub.snapshot_download, types.SimpleNamespace(calls=[], download=None)

    def snapshot_download(repo_id, **kw):
        if kw.get("local_files_only"):
            return real(repo_id, **kw)
        net.calls.append((repo_id, kw))
        return net.download(repo_id, **kw)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return net


def test_an_id_not_cached_is_downloaded_when_online(online, ckpt, tmp_path):
    """Only the files load() reads are asked for, at the revision asked for."""
    new = "3" * 40
    online.download = lambda repo_id, **kw: add_snapshot(
        str(tmp_path / "hf" / "hub"), repo_id, new, {n: os.path.join(ckpt, n) for n in os.listdir(ckpt)})
    model, _ = M.load("org/other", revision="v2", verbose=False)
    assert model.revision == new and model.model_id == "org/other"
    assert online.calls == [("org/other", dict(revision="v2", allow_patterns=hf.HUB_FILES))]
    M.load(REPO, verbose=False)                        # a cached id makes no network call
    assert len(online.calls) == 1


def test_a_failed_download_says_so_in_one_line(online):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fail(repo_id, **kw):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -3] name resolution failed\n"
                                      "An error happened while trying to locate the files on the Hub")
    online.download = fail
    with pytest.raises(ValueError) as e:
        M.load("org/absent", verbose=False)
    assert str(e.value) == ("org/absent: no such folder, and the download from the Hugging Face Hub "
                            "failed (LocalEntryNotFoundError: Got: ConnectError: [Errno -3] name "
                            "resolution failed)")


@pytest.mark.parametrize("name, is_id", [
    ("microsoft/phi-2", True), ("org/name.v1", True), ("/abs/path", False), ("./x/y", False),
    ("a/b/c", False), ("phi-2", False), ("../x", False),
    ("checkpoints/phi-tny", False),    # checkpoints/ is a folder here: a typo, not a Hub id
])
def test_what_looks_like_a_hub_id(name, is_id, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert hf.looks_like_hub_id(name) == is_id


def test_missing_folder_keeps_its_message(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match="^checkpoints/phi-tny: checkpoint directory not found$"):
        M.load("checkpoints/phi-tny")


def test_a_folder_has_no_revision(ckpt):
    with pytest.raises(ValueError, match="a folder has no revision"):
        M.load(ckpt, revision=MAIN)


# --- the command line -------------------------------------------------------------------


@pytest.mark.parametrize("extra, rc, expected", [
    ([], 0, f"commit {MAIN}"),                          # refs/main
    (["--revision", MAIN], 0, f"commit {MAIN}"),
    (["--model", "org/absent"], 2, "eval.py: error: org/absent: no such folder, and not in the "
                                   "Hugging Face cache"),
])
def test_eval_with_a_hub_id(hub, extra, rc, expected):
    """The issue's check: eval.py --model org/name --shots 4 from the cache, offline."""
    env, _ = hub
    run = subprocess.run([sys.executable, "eval.py", "--model", REPO, "--shots", "4", "--limit", "1",
                          "--data", DATA, "--device", "cpu", "--max-new-tokens", "4", *extra],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == rc, run.stderr[-2000:]
    if rc == 0:
        assert expected in run.stderr and "questions/s" in run.stdout
    else:
        assert run.stderr.strip().splitlines() == [run.stderr.strip()] and expected in run.stderr


# --- adapters name their base as PEFT does -----------------------------------------------


def test_save_adapter_records_the_id_and_the_revision(hub, ckpt, tmp_path):
    model, _ = M.load(REPO, verbose=False)
    lora.add_lora(model, r=2, alpha=4)
    config = adapters.save_adapter(model, str(tmp_path / "a"))            # named after the model
    assert (config["base_model_name_or_path"], config["revision"]) == (REPO, MAIN)
    adapters.save_adapter(model, str(tmp_path / "b"), REPO)               # as train.py calls it
    saved = json.load(open(tmp_path / "b" / "adapter_config.json"))
    assert (saved["base_model_name_or_path"], saved["revision"]) == (REPO, MAIN)
    adapters.read_adapter(M.load(ckpt, verbose=False)[0], str(tmp_path / "b"))   # same weights: it fits
    folder, _ = M.load(ckpt, verbose=False)
    lora.add_lora(folder, r=2, alpha=4)
    config = adapters.save_adapter(folder, str(tmp_path / "c"))
    assert (config["base_model_name_or_path"], config["revision"]) == (ckpt, None)


def test_train_expert_on_a_hub_id(hub, tmp_path):
    """python train.py --expert algebra --model org/name --revision <commit>: the
    expert's adapter_config.json names the id and the commit."""
    import train
    out = tmp_path / "expert"
    train.train(train.config([
        "--expert", "algebra", "--model", REPO, "--revision", MAIN, "--data", DATA, "--out", str(out),
        "--steps", "2", "--batch-size", "2", "--seq-len", "64", "--warmup", "1", "--eval-every", "2",
        "--eval-batches", "1", "--eval-questions", "2", "--rank", "2", "--device", "cpu"]))
    saved = json.load(open(out / "adapter_config.json"))
    assert (saved["base_model_name_or_path"], saved["revision"]) == (REPO, MAIN)


# --- study/experiment.sh: one GPU per job ------------------------------------------------------

STUB = """#!/usr/bin/env bash
# stands in for python: records the GPU each command was given, and whether another
# command held that GPU at the same time (mkdir is atomic: it fails if the lock exists)
echo "${CUDA_VISIBLE_DEVICES-unset} $*" >> "$STUB_DIR/log"
# python -m study best: the run named last (the highest learning rate) wins the sweep
if [ "$1 $2 $3" = "-m study best" ]; then echo "${@: -1}"; fi
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    mkdir "$STUB_DIR/lock-$CUDA_VISIBLE_DEVICES" 2>/dev/null || echo "SHARED $CUDA_VISIBLE_DEVICES" >> "$STUB_DIR/log"
    sleep 0.1
    rmdir "$STUB_DIR/lock-$CUDA_VISIBLE_DEVICES" 2>/dev/null || true
fi
if [ "$1" = train.py ]; then sleep 0.2; fi   # training outlasts what is started after it
all="$*" && json=${all##*--json } && json=${json%% *}
if [ "$1" = eval.py ] && [[ $json == "$STUB_DIR"/* ]]; then     # an evaluation leaves its --json
    mkdir -p "$(dirname "$json")" && echo '{}' > "$json"
fi
echo "END $*" >> "$STUB_DIR/log"
"""


def study_with_stub(tmp_path, **env):
    """Run the whole study/experiment.sh with PY=a stub; returns [(device, command)] for each
    command that it ran as a job, and fails on a GPU shared by two jobs at once."""
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    (tmp_path / "data").mkdir(exist_ok=True)              # not data/lila: nothing is generated
    full = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "N_GPUS")}
    full.update(PY=str(stub), STUB_DIR=str(tmp_path), DATA=str(tmp_path / "data"),
                OUT=str(tmp_path / "out"), **env)
    run = subprocess.run(["bash", os.path.join(ROOT, "study", "experiment.sh")], env=full,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (tmp_path / "stdout").write_text(run.stdout)
    lines = (tmp_path / "log").read_text().splitlines()
    assert not [l for l in lines if l.startswith("SHARED")]
    run_here = ("-m study report ", "-m study curve ", "-m study best ", "-m study forgetting ")   # not jobs
    return [tuple(l.split(" ", 1)) for l in lines if not any(r in l for r in run_here) and not l.startswith("END ")]


@pytest.mark.parametrize("env, gpus", [
    (dict(DEVICE="cuda", JOBS="3", N_GPUS="3"), {"0", "1", "2"}),     # three GPUs, three jobs
    (dict(DEVICE="cuda", JOBS="2", CUDA_VISIBLE_DEVICES="5,7"), {"5", "7"}),   # the GPUs given
    (dict(DEVICE="cuda", JOBS="3", N_GPUS="1"), {"unset"}),           # one GPU: as before
    (dict(DEVICE="cpu", JOBS="3", N_GPUS="3"), {"unset"}),            # CPU: as before
])
def test_experiment_gives_each_job_its_own_gpu(tmp_path, env, gpus):
    jobs = study_with_stub(tmp_path, **env)
    assert len(jobs) > 40 and {device for device, _ in jobs} == gpus
    experts = [device for device, cmd in jobs if cmd.startswith("train.py --expert ") and "/out/experts/" in cmd]
    assert len(experts) == 8
    if len(gpus) > 1:              # the first jobs of a stage fill the GPUs in turn
        assert experts[:len(gpus)] == sorted(gpus)
    assert all(f"--device {env['DEVICE']}" in cmd for _, cmd in jobs)


def test_experiment_chains_what_builds_on_earlier_runs(tmp_path):
    """Each stage of a sequential fine-tune starts from the one before: the LoRA
    from its adapter, the full fine-tune from its whole model; both are evaluated
    after every stage and drawn as a forgetting curve. Adding a skill starts from
    seven skills' data and experts. Everything trains on TRAIN_DATA and is
    evaluated on DATA."""
    study_with_stub(tmp_path, DEVICE="cpu", JOBS="1", TRAIN_DATA=str(tmp_path / "fresh"))
    log = [l for l in (tmp_path / "log").read_text().splitlines() if not l.startswith("END ")]
    out = tmp_path / "out"
    last_data = lambda line: line.split("--data ")[-1].split()[0]   # noqa: E731  (the last --data wins)
    trains = [l for l in log if " train.py " in l]
    assert trains and all(last_data(l) in (str(tmp_path / "fresh"), f"{out}/add-skill/data7") for l in trains)
    evals = [l for l in log if " eval.py " in l]
    assert evals and all(last_data(l).startswith(str(tmp_path / "data")) for l in evals)
    seven = sorted(os.listdir(out / "add-skill" / "experts7"))
    assert seven == ["algebra", "arithmetic", "calculus", "comparison", "measurement", "numbers", "polynomials"]
    assert sorted(os.listdir(out / "add-skill" / "data7")) == [f"{s}.json" for s in seven]
    router7 = [l for l in log if l.endswith(f"--out {out}/add-skill/router7")]
    assert len(router7) == 1 and f"--data {out}/add-skill/data7 --experts {out}/add-skill/experts7" in router7[0]
    assert any("--expert probability" in l and f"--adapter {out}/add-skill/mixed7 " in l for l in log)
    # the learning rates: the sweep's winners (the stub picks the last), used by every later run
    assert os.readlink(out / "mixed") == "lr/mixed-4e-3"
    later = [l for l in trains if "/lr/" not in l.split("--out ")[-1]]
    assert later and all(l.split("--lr ")[-1].split()[0] == ("3e-4" if "--full" in l else "4e-3")
                         for l in later if "--router" not in l)
    assert all("--lr" not in l for l in later if "--router" in l)
    for kind, flag in (("lora", "--adapter"), ("full", "--model")):
        runs = [l for l in log if f"--out {out}/sequential-{kind}/" in l and l.startswith("unset train.py")]
        assert [r.split(f"sequential-{kind}/")[-1] for r in runs] == [
            "1-algebra", "2-arithmetic", "3-calculus", "4-comparison", "5-measurement", "6-numbers",
            "7-polynomials", "8-probability"]
        for before, after in zip(runs, runs[1:]):
            assert after.split(f"{flag} ")[-1].split()[0] == before.split("--out ")[-1]
        assert ("--full" in runs[0]) == (kind == "full") and "--adapter" not in runs[0]
        evals = [l for l in log if f"--json {out}/eval/sequential-{kind}/" in l]
        assert len(evals) == 8
        assert any(l.startswith(f"unset -m study curve {out}/eval/base-4shot.json") and f"sequential-{kind}" in l
                   for l in log)
    # the forgetting matrix: each expert evaluated alone, then put beside the base
    for skill in ("algebra", "probability"):
        assert any(f"--json {out}/eval/experts/{skill}.json --adapter {out}/experts/{skill}" in l for l in log)
    assert f"unset -m study forgetting {out}/eval/base-4shot.json {out}/eval/experts/algebra.json " in "\n".join(log)


def test_experiment_evaluates_a_run_only_after_its_training_ended(tmp_path):
    """Evaluations run beside the training of the next stage: each starts only after
    the train.py run that made its model has ended. With JOBS=50 every command of a
    stage starts at once, so only the wait at the end of a stage orders them."""
    study_with_stub(tmp_path, DEVICE="cpu", JOBS="50")
    log = (tmp_path / "log").read_text().splitlines()
    ended = {l.split("--out ")[-1].split()[0]: i for i, l in enumerate(log)
             if l.startswith("END train.py") and "--out " in l}
    evals = [(i, l) for i, l in enumerate(log) if l.startswith("unset eval.py") and "--json" in l]
    checked = 0
    for i, l in evals:
        for flag in ("--adapter ", "--model ", "--moe "):     # the last of each flag is the one read
            path = os.path.realpath(l.split(flag)[-1].split()[0]) if flag in l else ""
            if path.startswith(str(tmp_path / "out")):          # a run of the study, not the base model
                assert ended.get(path, len(log)) < i, l
                checked += 1
    assert checked > 40


def test_experiment_resumed_skips_what_is_evaluated_and_refuses_other_questions(tmp_path):
    """Run again (as from a study kept in git, whose full fine-tunes keep no weights), the
    study evaluates nothing twice and trains no full fine-tune that is evaluated; its links
    are relative, so the folder can be cloned. Other questions in DATA stop it (exit 2)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "algebra.json").write_text("{}")
    study_with_stub(tmp_path, DEVICE="cpu", JOBS="2")
    (tmp_path / "log").write_text("")
    again = [cmd for _, cmd in study_with_stub(tmp_path, DEVICE="cpu", JOBS="2")]
    assert not [c for c in again if c.startswith("eval.py") or "--full" in c]
    assert [c for c in again if c.startswith("train.py --expert algebra")]     # LoRAs resume (here: anew)
    links = tmp_path / "out" / "add-skill" / "experts7"
    assert all(not os.readlink(links / s).startswith("/") for s in os.listdir(links))
    (tmp_path / "data" / "algebra.json").write_text('{"other": 1}')
    run = subprocess.run(["bash", os.path.join(ROOT, "study", "experiment.sh")], capture_output=True, text=True,
                         env={**os.environ, "PY": str(tmp_path / "python"), "STUB_DIR": str(tmp_path),
                              "DATA": str(tmp_path / "data"), "OUT": str(tmp_path / "out"), "DEVICE": "cpu"})
    assert run.returncode == 2 and "holds other questions than" in run.stderr, run.stderr[-500:]


def test_a_smoke_run_reaches_every_stage_at_toy_sizes(tmp_path):
    """SMOKE=1 runs every stage that a study runs, says it is a smoke run, and trains and
    evaluates at its toy sizes: its three skills, two steps, one question per skill."""
    script = open(os.path.join(ROOT, "study", "experiment.sh")).read()
    stages = re.findall(r'^stage "(.*)"$|^echo; echo "=== (.*)"$', script, re.M)
    study_with_stub(tmp_path, DEVICE="cpu", JOBS="2", SMOKE="1")
    smoke = (tmp_path / "stdout").read_text()
    reached = [l[4:].split(" (at ")[0] for l in smoke.splitlines() if l.startswith("=== ")]
    assert len(stages) > 10 and reached == ["".join(s) for s in stages]
    assert smoke.startswith("SMOKE=1: a smoke run") and "the smoke study took" in smoke
    log = [l.split(" ", 1)[1] for l in (tmp_path / "log").read_text().splitlines() if not l.startswith("END ")]
    trains = [l for l in log if l.startswith("train.py ")]
    assert {l.split("--expert ")[1].split()[0] for l in trains if "--expert " in l and "cluster:" not in l} == {
        "algebra", "arithmetic", "numbers"}
    assert all(l.split("--steps ")[-1].split()[0] in ("2", "4", "8", "6") for l in trains if "--steps " in l)
    evals = [l for l in log if l.startswith("eval.py ")]
    assert evals and all(l.split("--limit ")[-1].split()[0] == "1" for l in evals)


def test_every_command_of_the_study_parses(tmp_path):
    """Each command study/experiment.sh runs passes its script's own flag checks (types,
    and flags that the run would not read), so the study never stops on a flag."""
    import shlex
    import cli
    import train
    from study.cli import parser as study_parser
    study_with_stub(tmp_path, DEVICE="cpu", JOBS="1", TRAIN_DATA=str(tmp_path / "fresh"))
    parse = {"train.py": train.config, "eval.py": cli.eval_args, "cluster.py": cli.cluster_args,
             "-m study": study_parser().parse_args, "-m study.clusters": cli.cluster_args}
    seen = set()
    for line in (tmp_path / "log").read_text().splitlines():
        script, *argv = shlex.split(line.split(" ", 1)[1])
        if script == "-m":                            # python -m study SUBCOMMAND ...
            script = f"-m {argv.pop(0)}"
        if script in parse:
            parse[script](argv)                       # SystemExit (exit 2) on a refused flag
            seen.add(script)
    assert seen == set(parse)


PLATEAU_STUB = """#!/usr/bin/env bash
# stands in for python in study/plateau.sh: logs each command, answers what the script reads back
echo "$*" >> "$STUB_DIR/log"
case "$1" in
    -) [ "$4" = calculus ] && echo 400 || echo 1000 ;;    # steps_for: 3 passes over a skill's rows
    -c) echo 3 ;;                                         # the clusters' k, from groups.json
esac
if [ "$1 $2 $3" = "-m study curves" ]; then echo "8 1e-3 400"; fi
if [ "$1 $2 $3" = "-m study best" ]; then echo "${@: -1}"; fi      # the run named last wins
if [ "$1 $2 $3" = "-m study beats" ]; then case $5 in */numbers | */seed-1/calculus) echo "$5" ;; *) echo "$4" ;; esac; fi
all="$*" && json=${all##*--json } && json=${json%% *}
if [ "$1" = eval.py ]; then mkdir -p "$(dirname "$json")" && echo '{}' > "$json"; fi
"""


def test_plateau_runs_every_stage_and_every_command_parses(tmp_path):
    """study/plateau.sh with PY=a stub: every command passes its script's own flag
    checks; training reads TRAIN_DATA (or the data curve's rows), the test split
    is read by eval.py alone, once per final configuration; each seed's experts,
    mixed LoRA and chosen router are trained."""
    import shlex
    import cli
    import train
    from study.cli import parser as study_parser
    stub = tmp_path / "python"
    stub.write_text(PLATEAU_STUB)
    stub.chmod(0o755)
    (tmp_path / "data").mkdir()
    env = {**os.environ, "PY": str(stub), "STUB_DIR": str(tmp_path), "DATA": str(tmp_path / "data"),
           "TRAIN_DATA": str(tmp_path / "fresh"), "OUT": str(tmp_path / "out"), "DEVICE": "cpu", "JOBS": "1"}
    run = subprocess.run(["bash", os.path.join(ROOT, "study", "plateau.sh")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "router chosen on dev: rank1" in run.stdout     # the stub's best: the variant named last
    # calculus's data curve rises on dev (the stub says so), but these questions were not drawn by the study
    assert "calculus: the data curve still rises, but stops at all the rows" in run.stdout
    assert "arithmetic: the data curve" not in run.stdout and "/rows/calculus-2" not in (tmp_path / "log").read_text()
    parse = {"train.py": train.config, "eval.py": cli.eval_args, "-m study.clusters": cli.cluster_args,
             "-m study": study_parser().parse_args}
    lines = [shlex.split(line) for line in (tmp_path / "log").read_text().splitlines()]
    for script, *argv in lines:
        if script == "-m":
            script = f"-m {argv.pop(0)}"
        if script in parse:
            parse[script](argv)                           # SystemExit (exit 2) on a refused flag
    out = str(tmp_path / "out")
    trains = [" ".join(l) for l in lines if l[0] == "train.py"]
    assert all(f"--data {tmp_path}/fresh" in t or f"--data {out}/rows/data-" in t for t in trains)
    experts = [t for t in trains if "--expert " in t and f"--out {out}/experts/" in t]
    assert len(experts) == 3 * 8 and all("--rank 8 --alpha 16 --lr 1e-3 --steps 400" in t for t in experts)
    longer = [t for t in trains if f"--out {out}/long/" in t]     # the skills not swept, where 1000 > 400 steps
    assert sorted(t.split("--expert ")[1].split()[0] for t in longer) == [
        "algebra", "comparison", "measurement", "numbers", "polynomials", "probability"]
    assert all(train.config(shlex.split(t)[1:]).steps == 1000 and "--seed 1 " in t for t in longer)
    # numbers' longer curve wins on dev (the stub says so): its other seeds train 1000 steps too
    assert sorted(t.split("--out ")[1].split()[0] for t in trains if "/longer/" in t) == [
        f"{out}/longer/seed-2/numbers", f"{out}/longer/seed-3/numbers"]
    assert all(train.config(shlex.split(t)[1:]).steps == 1000 for t in trains if "/longer/" in t)
    links = {f"{seed}/{s}": os.readlink(f"{out}/chosen/seed-{seed}/{s}") for seed in (1, 2, 3) for s in ("algebra", "numbers")}
    assert links == {"1/algebra": "../../experts/seed-1/algebra", "1/numbers": "../../long/numbers",
                     "2/algebra": "../../experts/seed-2/algebra", "2/numbers": "../../longer/seed-2/numbers",
                     "3/algebra": "../../experts/seed-3/algebra", "3/numbers": "../../longer/seed-3/numbers"}
    assert all(f"--adapter {out}/chosen/seed-" in " ".join(l) for l in lines if l[0] == "eval.py"
               and "/eval/experts/" in l[l.index("--json") + 1])
    mixed = [t for t in trains if f"--out {out}/mixed/seed-" in t]      # the experts' 7 x 400 + 1000 steps
    assert len(mixed) == 3 and all(train.config(shlex.split(t)[1:]).steps == 3800 for t in mixed)
    assert all(f"--experts {out}/chosen/seed-" in t for t in trains if "--router" in t and "/rank1" not in t
               and "/clusters" not in t)
    assert sum(f"--out {out}/routers/seed-" in t and "/rank1" in t for t in trains) == 3
    clustered = [t for t in trains if "--expert cluster:" in t]    # the stub's k = 3 share the 3800 steps
    assert len(clustered) == 3 and all(train.config(shlex.split(t)[1:]).steps == 1200 for t in clustered)
    evals = [l[l.index("--json") + 1] for l in lines if l[0] == "eval.py"]
    assert len(evals) == len(set(evals)) and all(f"--data {tmp_path}/data" in " ".join(l)
                                                  for l in lines if l[0] == "eval.py")
    assert sum("/eval/experts/seed-1/" in e for e in evals) == 8 and f"{out}/eval/base.json" in evals
    assert ["-m", "study", "plateau", out, "--data", str(tmp_path / "data")] in lines


def test_the_plateau_study_keeps_its_questions_and_a_resume_unpacks_them(tmp_path):
    """Once its questions are there, the study keeps them in OUT/questions.tar.xz; on a
    machine without them a resume unpacks them (the same bytes, as data.sha256 checks)
    rather than generating them again."""
    stub = tmp_path / "python"
    stub.write_text(PLATEAU_STUB)
    stub.chmod(0o755)
    skills = "algebra arithmetic calculus comparison measurement numbers polynomials probability".split()
    made = {}
    for folder in ("data", "fresh"):
        (tmp_path / folder).mkdir()
        for s in skills:
            made[f"{folder}/{s}.json"] = f'{{"Instances": [{{"Input": "{folder} {s}"}}]}}'
            (tmp_path / folder / f"{s}.json").write_text(made[f"{folder}/{s}.json"])
    env = {**os.environ, "PY": str(stub), "STUB_DIR": str(tmp_path), "DATA": str(tmp_path / "data"),
           "TRAIN_DATA": str(tmp_path / "fresh"), "OUT": str(tmp_path / "out"), "DEVICE": "cpu", "JOBS": "1"}
    script = ["bash", os.path.join(ROOT, "study", "plateau.sh")]
    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "kept the study's questions in" in first.stdout and (tmp_path / "out" / "questions.tar.xz").exists()
    for folder in ("data", "fresh"):
        shutil.rmtree(tmp_path / folder)
    again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "unpacking the study's questions" in again.stdout and "kept the study's" not in again.stdout
    assert {name: (tmp_path / name).read_text() for name in made} == made


def test_a_failed_job_stops_the_study_and_is_named(tmp_path):
    """A command that fails stops the study at the next stage, naming itself and its
    exit status, rather than ending the script without a word."""
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\nif [ "$1 $3" = "train.py calculus" ]; then exit 3; fi\n')
    stub.chmod(0o755)
    (tmp_path / "data").mkdir()
    env = {**os.environ, "PY": str(stub), "DATA": str(tmp_path / "data"), "TRAIN_DATA": str(tmp_path / "fresh"),
           "OUT": str(tmp_path / "out"), "DEVICE": "cpu", "JOBS": "2"}
    run = subprocess.run(["bash", os.path.join(ROOT, "study", "plateau.sh")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 1 and "=== curves: the table" not in run.stdout
    assert "stopped: exit status 3 from " in run.stderr and "train.py --expert calculus" in run.stderr, run.stderr


def test_every_routed_evaluation_of_the_study_has_a_routing_folder_of_its_own(tmp_path):
    """eval.py --moe writes its routing report under one writer's lock: two at once
    into the default out/routing would refuse each other (and write outside OUT)."""
    import shlex
    study_with_stub(tmp_path, DEVICE="cpu", JOBS="1")
    routed = [shlex.split(l.split(" ", 1)[1]) for l in (tmp_path / "log").read_text().splitlines()
              if " eval.py " in f" {l} " and " --moe " in l and not l.startswith("END ")]
    outs = [argv[len(argv) - 1 - argv[::-1].index("--out") + 1] for argv in routed]
    assert len(routed) > 10 and len(outs) == len(set(outs)) and all(o.startswith(str(tmp_path / "out")) for o in outs)
