"""
train.py's OUT/train_state.pt: everything a stopped run needs to continue
exactly (the trained weights, the optimizer, the grad scaler, the random number
generators, the step, the best dev accuracy and the log), and the flags that
define the run.

    write_state(path, record, trained, opt, scaler, device)   # record: step, steps, best, log, run (the flags)
    state = read_state(path, flags)                            # refused if the run's flags differ
    step, best, log, steps = restore(path, state, learner, opt, scaler, device)

A finished run's state holds its record alone (step == steps, no weights): the
model is in OUT, nothing is left to resume. train.py writes the file atomically
(formats.files.write_atomic).

Left out: states of other programs, and resuming with other flags.
"""
import torch

from formats.files import UserError, write_atomic

UNSET = (None, False)     # a flag added since the run started, left at its default, is the same run


def write_state(path, record, trained=None, opt=None, scaler=None, device="cpu"):
    """The run's record ({"step", "steps", "best", "log", "run"}) to path, atomically;
    with the trained weights ({name: tensor}), also the optimizer, the grad scaler
    and the random number generators of `device`: all a --resume needs."""
    state = dict(record)
    if trained is not None:
        rng = {"cpu": torch.get_rng_state()}
        if device.startswith("cuda"):
            rng["cuda"] = torch.cuda.get_rng_state(device)
        state |= {"model": trained, "opt": opt.state_dict(), "scaler": scaler.state_dict(), "rng": rng}
    write_atomic(path, lambda p: torch.save(state, p))


def read_state(path, flags):
    """OUT/train_state.pt (on the CPU), refused if it is not one, or, naming the
    flags, if the saved run was started with other flags (another skill, targets,
    lr, ...) than `flags` ({flag: value} of the run-defining flags)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:     # a truncated zip, a text file, a pickle of something else
        raise UserError(f"{path}: not a train.py state (truncated or corrupt: {type(e).__name__}); "
                        "delete it to start again") from None
    saved = state.get("run") if isinstance(state, dict) else None
    if saved is None:
        raise UserError(f"{path}: no run configuration recorded (an older train.py wrote it); "
                        "start again in a new --out")
    differ = sorted(k for k in set(saved) | set(flags) if saved.get(k) != flags.get(k)
                    and not (k not in saved and flags[k] in UNSET or k not in flags and saved[k] in UNSET))
    if differ:
        raise UserError(f"{path}: --resume must continue the same run, but " + ", ".join(
            f"--{k.replace('_', '-')} is {flags.get(k)!r} (the run's: {saved.get(k)!r})" for k in differ))
    return state


def restore(path, state, learner, opt, scaler, device):
    """Load a read_state() into the learner (its trainable weights, checked), the
    optimizer, the grad scaler and the random number generators; returns (step,
    best, log, total steps)."""
    missing, unexpected = learner.load_state_dict(state["model"], strict=False)
    trainable = {n for n, p in learner.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise UserError(f"{path}: its weights do not fit this model (missing "
                        f"{sorted(trainable & set(missing))[:3]}, unexpected {unexpected[:3]})")
    bad = [n for n, p in learner.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"{path}: saved weights {bad[:3]} hold NaN or inf; delete it to start again")
    opt.load_state_dict(state["opt"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return state["step"], state["best"], state["log"], state["steps"]
