"""train.py --expert / --mixed on a tiny base: exact resume, torchrun data
parallel equals one process, clear errors."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import ROOT
from test_train_eval import FIXTURE, base_args, tokenizer_path  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer_path):  # noqa: F811
    out = tmp_path_factory.mktemp("base")
    train.train(base_args(out, tokenizer_path, steps=3))
    return str(out)


def expert_argv(base, out, *extra):
    """A tiny algebra run; rank 4 unless --full or --adapter (which take no --rank)."""
    rank = [] if {"--full", "--adapter"} & set(extra) else ["--rank", "4"]
    return ["--expert", "algebra", "--model", base, "--data", FIXTURE, "--out", str(out),
            "--steps", "6", "--batch-size", "4", "--seq-len", "64", "--warmup", "2",
            "--eval-every", "3", "--eval-batches", "1", "--eval-questions", "4", "--seed", "0",
            "--device", "cpu", *rank, *extra]


def lora_weights(model):
    """The LoRA weights of a model that train.train returned (those of its last step)."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


def test_expert_killed_with_sigkill_resumes_bit_exactly_with_dropout(tmp_path, base_dir):
    """kill -9 in the middle of a run with dropout, then --resume: the final LoRA
    equals the uninterrupted run's bit for bit (the optimizer, the grad scaler
    and every random number generator are restored)."""
    argv = expert_argv(base_dir, tmp_path / "full", "--dropout", "0.1", "--steps", "12")
    a = lora_weights(train.train(train.config(argv)))
    cut = expert_argv(base_dir, tmp_path / "cut", "--dropout", "0.1", "--steps", "12")
    proc = subprocess.Popen([sys.executable, "train.py", *cut], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "cut" / "train_state.pt"
    while not state.exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(state)["step"] < 12                      # it was killed before the end
    b = lora_weights(train.train(train.config(cut + ["--resume"])))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    saved = load_file(os.path.join(tmp_path / "full", "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.model.layers.") for k in saved)


def test_a_finished_run_keeps_its_record_alone_and_resumes_to_nothing(tmp_path, base_dir):
    """After the last step, train_state.pt holds the run's record, not its weights or
    optimizer (the best model is in OUT), so a finished phi-2 full fine-tune leaves no
    33 GB state behind; --resume of a finished run trains nothing and leaves OUT as it
    was (train.py says so before it loads the base). A cut run's state still holds
    everything."""
    argv = expert_argv(base_dir, tmp_path)
    train.train(train.config(argv + ["--stop-at", "3"]))
    assert {"model", "opt", "scaler", "rng"} <= set(torch.load(tmp_path / "train_state.pt", weights_only=False))
    train.train(train.config(argv + ["--resume"]))
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["step"] == state["steps"] == 6 and set(state) == {"step", "steps", "best", "log", "run"}
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    train.train(train.config(argv + ["--resume"]))
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before
    # the command line sees it is finished before it loads the base; other flags are still refused
    done = subprocess.run([sys.executable, "train.py", *argv, "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "finished at step 6; nothing to train" in done.stderr, done.stderr
    assert "loaded" not in done.stderr and {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before
    other = subprocess.run([sys.executable, "train.py", *argv, "--resume", "--lr", "1e-2"], cwd=ROOT,
                           capture_output=True, text=True)
    assert other.returncode == 2 and "--resume must continue the same run, but --lr is" in other.stderr


@pytest.mark.parametrize("change, flag", [
    (["--expert", "numbers"], "--expert"), (["--targets", "k_proj"], "--targets"),
    (["--lr", "1e-2"], "--lr"), (["--seed", "1"], "--seed"), (["--rank", "8"], "--rank"),
    (["--steps", "9"], "--steps")])
def test_resume_of_another_run_is_refused(tmp_path, base_dir, change, flag):
    argv = expert_argv(base_dir, tmp_path, "--stop-at", "3")
    train.train(train.config(argv))
    other = expert_argv(base_dir, tmp_path, "--resume")
    if change[0] in other:
        i = other.index(change[0])
        other[i:i + 2] = change
    else:
        other += change
    with pytest.raises(ValueError, match=f"--resume must continue the same run, but {flag} is"):
        train.train(train.config(other))


def test_two_processes_equal_one(tmp_path, base_dir):
    """Same global batch (4 rows) on 1 process or split 2+2 over torchrun: the
    summed gradients differ only by float summation order, so after 6 AdamW
    steps the adapters agree to 1e-5 (one dev evaluation, at the end: the saved
    adapter is the last step's)."""
    argv = expert_argv(base_dir, tmp_path / "one", "--eval-every", "6")
    subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, check=True, capture_output=True)
    argv = expert_argv(base_dir, tmp_path / "two", "--eval-every", "6")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "train.py", *argv],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = (load_file(os.path.join(tmp_path / run, "adapter_model.safetensors")) for run in ("one", "two"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max())


def test_unknown_skill_lists_the_known_ones(tmp_path, base_dir):
    argv = expert_argv(base_dir, tmp_path)
    argv[argv.index("algebra")] = "geometry"
    with pytest.raises(ValueError, match="geometry.*algebra"):
        train.train(train.config(argv))


def test_mixed_gets_the_steps_of_all_experts(tmp_path, base_dir):
    argv = expert_argv(base_dir, tmp_path, "--steps-per-skill", "2")
    argv[:2] = ["--mixed"]
    del argv[argv.index("--steps"):argv.index("--steps") + 2]     # --steps-per-skill sets them
    train.train(train.config(argv))
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["steps"] == state["step"] == 4      # two skills in the fixture, 2 steps each


def test_full_fine_tune_trains_every_weight_and_resumes_exactly(tmp_path, base_dir):
    """--full: every weight trains, OUT holds a whole model that model.load reads,
    and a run cut at step 3 and resumed equals the uninterrupted one bit for bit."""
    import model as M
    whole = train.train(train.config(expert_argv(base_dir, tmp_path / "a", "--full")))
    train.train(train.config(expert_argv(base_dir, tmp_path / "b", "--full", "--stop-at", "3")))
    resumed = train.train(train.config(expert_argv(base_dir, tmp_path / "b", "--full", "--resume")))
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base, _ = M.load(base_dir, verbose=False)
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, a[n])]
    assert len(changed) == len(list(base.parameters()))            # the embeddings and LayerNorms too
    saved, _ = M.load(str(tmp_path / "a"), verbose=False)           # the best-dev model, in the HF layout
    assert set(saved.state_dict()) == set(whole.state_dict())
    with pytest.raises(SystemExit):
        train.config(["--base", "--full"])                      # --full needs --expert or --mixed


def test_continuing_from_an_adapter_is_training_on(tmp_path, base_dir):
    """--adapter A: a LoRA trained 3 steps on algebra, then 3 more from its saved
    adapter on numbers, starts from A's weights (the first step's update is made
    from them) and keeps A's rank; without it the run starts fresh."""
    first = expert_argv(base_dir, tmp_path / "a", "--steps", "3", "--eval-every", "3")
    train.train(train.config(first))
    second = ["numbers" if a == "algebra" else a for a in expert_argv(
        base_dir, tmp_path / "b", "--steps", "3", "--eval-every", "3", "--adapter", str(tmp_path / "a"))]
    model = train.train(train.config(second))
    from formats.adapters import read_adapter
    _, saved_a = read_adapter(model.__class__(model.config), str(tmp_path / "a"), check_base=False)
    q = "model.layers.0.self_attn.q_proj"
    A = model.get_submodule(q).lora_A.weight
    assert A.shape[0] == 4                                   # the adapter's r, not the default 8
    assert not torch.equal(A, saved_a[q][0]) and (A - saved_a[q][0]).abs().max() < 0.05   # moved on from it
    for refused in (["--full"], ["--rank", "2"], ["--dropout", "0.1"]):   # the adapter brings its own LoRA
        with pytest.raises(SystemExit):
            train.config(second + refused)


def test_resume_of_a_run_saved_before_a_flag_existed(tmp_path, base_dir):
    """A state saved by a train.py without some flag resumes when that flag is at
    its default now; a recorded value that differs is still refused."""
    argv = expert_argv(base_dir, tmp_path / "a", "--steps", "6", "--stop-at", "3")
    train.train(train.config(argv))
    path = tmp_path / "a" / "train_state.pt"
    state = torch.load(path, weights_only=False)
    del state["run"]["adapter"], state["run"]["full"]               # as an older train.py saved it
    torch.save(state, path)
    train.train(train.config(argv[:-2] + ["--resume"]))          # resumes to step 6
    assert torch.load(path, weights_only=False)["step"] == 6
    state = torch.load(path, weights_only=False)
    state["run"]["full"], state["step"] = True, 3
    torch.save(state, path)
    with pytest.raises(ValueError, match="--full is False \\(the run's: True\\)"):
        train.train(train.config(argv[:-2] + ["--resume", "--steps", "6"]))


def test_ctrl_c_saves_the_state_and_resume_is_exact(tmp_path, base_dir, monkeypatch, capsys):
    """Ctrl-C in the middle of a run: the step in progress finishes, the state is
    saved (though no dev evaluation or --save-every falls there), the run exits
    with 130 in one line; --resume then ends exactly where the uninterrupted run
    does."""
    whole = lora_weights(train.train(train.config(expert_argv(base_dir, tmp_path / "whole", "--steps", "12",
                                                                "--eval-every", "12"))))
    argv = expert_argv(base_dir, tmp_path / "cut", "--steps", "12", "--eval-every", "12", "--save-every", "100")
    step = train.train_step

    def ctrl_c_at_step_5(run, fwd):
        if run.step == 5:
            os.kill(os.getpid(), signal.SIGINT)     # arrives during the step, as a real Ctrl-C would
        return step(run, fwd)
    monkeypatch.setattr(train, "train_step", ctrl_c_at_step_5)
    with pytest.raises(SystemExit) as stopped:
        train.train(train.config(argv))
    assert stopped.value.code == 130
    assert "stopped at step 6 of 12 (as asked); the same command with --resume continues" in capsys.readouterr().err
    assert torch.load(tmp_path / "cut" / "train_state.pt", weights_only=False)["step"] == 6
    monkeypatch.setattr(train, "train_step", step)
    resumed = lora_weights(train.train(train.config(argv + ["--resume"])))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_ctrl_c_on_the_command_line_is_one_line(tmp_path, base_dir):
    """SIGINT to `python train.py`: exit status 130, the stop said in one line,
    no traceback; the state holds the step it stopped at."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *expert_argv(base_dir, out, "--steps", "200",
                             "--save-every", "1", "--eval-every", "200")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (out / "train_state.pt").exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate()[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    step = torch.load(out / "train_state.pt", weights_only=False)["step"]
    assert f"stopped at step {step} of 200 (as asked)" in err.splitlines()[-1], err


def test_save_every_saves_between_dev_evaluations(tmp_path, base_dir, monkeypatch):
    """--save-every 2 with one dev evaluation (at the end): the state is saved at
    steps 2, 4 and 6, whatever the dev evaluations do."""
    saved = []
    monkeypatch.setattr(train, "save_state", lambda run: saved.append(run.step))
    train.train(train.config(expert_argv(base_dir, tmp_path, "--save-every", "2", "--eval-every", "6")))
    assert saved == [2, 4, 6]


def test_one_writer_per_output_folder(tmp_path, base_dir):
    """A second training into a folder that a live run holds is refused in one line
    naming that process; a lock left by a dead process is taken over, and said."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from formats.files import lock\n"
                               f"with lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        second = subprocess.run([sys.executable, "train.py", *expert_argv(base_dir, out)], cwd=ROOT,
                                capture_output=True, text=True)
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"{out} is being written by process {holder.pid} on " in second.stderr, second.stderr
    finally:
        holder.kill()
        holder.wait()
    # the holder died with its name in the lock (kill -9): the next run takes it over
    assert f"process {holder.pid} " in (out / ".lock").read_text()
    third = subprocess.run([sys.executable, "train.py", *expert_argv(base_dir, out)], cwd=ROOT,
                           capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert f"taking over the lock of process {holder.pid} on " in third.stderr
    assert (out / ".lock").read_text() == ""          # released on a clean exit


def test_identical_training_writes_identical_bytes(tmp_path, base_dir):
    """Two identical runs write byte-identical adapters (formats.files.save_safetensors
    orders the header; safetensors' save_file orders the metadata at random), so a
    router's sha256 of its experts survives an identical retrain."""
    for name in ("a", "b"):
        train.train(train.config(expert_argv(base_dir, tmp_path / name)))
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_a_skill_without_dev_questions_lends_some_of_its_train_questions(tmp_path, base_dir, capsys):
    """Task files without a dev split (as `data/generate.py --dev 0` writes them)
    still train: a tenth of the skill's train questions become its dev questions,
    and the run says so. A skill without train questions is named."""
    import json
    task = json.load(open(os.path.join(FIXTURE, "algebra.json")))
    task["Instances"] = [x for x in task["Instances"] if x["split"] != "dev"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "algebra.json").write_text(json.dumps(task))
    argv = expert_argv(base_dir, tmp_path / "out", "--steps", "2", "--eval-every", "2")
    argv[argv.index("--data") + 1] = str(data)
    train.train(train.config(argv))
    assert f"{data}: no dev questions of ['algebra']; 1 of their train questions are held out as dev" \
        in capsys.readouterr().err
    task["Instances"] = [x for x in task["Instances"] if x["split"] != "train"]
    (data / "algebra.json").write_text(json.dumps(task))
    with pytest.raises(ValueError, match=f"{data}: no train questions of \\['algebra'\\]"):
        train.train(train.config(argv + ["--out", str(tmp_path / "again")]))
