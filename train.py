"""
Training, in modes that share one loop:

    python train.py --base                       # pretrain phi-tiny from scratch
    python train.py --expert algebra             # one LoRA skill expert on a frozen base
    python train.py --expert algebra --full      # a plain fine-tune of every weight (can forget)
    python train.py --expert cluster:3           # ... on the questions of k-means cluster 3
    python train.py --mixed                      # one LoRA on all skills (the baseline)
    python train.py --router --experts out/experts   # the two-level router over frozen experts
    torchrun --nproc-per-node 2 train.py --expert algebra    # data parallel, 2 processes
    python train.py --expert algebra --resume    # continue a stopped run

Chapters:
  1. the settings  TrainConfig, what every mode reads; each mode's own settings come
                   from its chapter (model.Pretrain, lora.LoRAConfig, router.RouterTraining);
                   MODES, the defaults that differ by mode
  2. the schedule  warmup + cosine decay (the loss and AdamW are model.py's)
  3. the modes     the questions each trains on, and what trains and is saved
  4. the loop      setup(), then train_step() to the last step; every --eval-every
                   steps the dev loss and accuracy (4 nearest shots, as the study
                   evaluates) and the best step kept in OUT; the whole state saved
                   for an exact --resume (every --save-every steps, at each check,
                   on Ctrl-C); one writer per OUT (a lock)
  5. checks
Every flag is declared in cli.py; the rows are data/episodes.py's, rebuilt exactly
per step. Trainable weights are fp32; a frozen base is held in --dtype (bf16 by
default on CUDA), its matmuls under autocast, as PEFT + transformers users do.
Data parallel by hand: every process builds the same global batch and takes its
share of the rows; the loss is summed over its target tokens and divided by the
global count, so the all-reduced gradient is exactly the global batch's.

References: nanoGPT's train.py (loop, schedule); LoRA (Hu et al. 2021); PyTorch
DDP's gradient all-reduce. Left out: gradient accumulation.
"""
from __future__ import annotations    # TrainConfig's fields `lora` and `router` are named as their modules

import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from tqdm import tqdm

import cli
import cluster
import lora
import model as M
import router as routing
from eval import Evaluator
from formats import adapters, hf
from formats.files import UserError, lock, write_json
from formats.routers import save_router
from formats.state import read_state, restore, write_state
from data.lila import load as load_examples
from data.episodes import Episodes
from data.prompts import select, train_and_dev
from data.score import mean_accuracy

# ---------------------------------------------------------------------------
# 1. The run's settings
# ---------------------------------------------------------------------------

MODES = {           # the defaults that differ between modes; --help lists them per mode
    "base": dict(steps=3000, lr=2e-3, seq_len=512, warmup=200, loss="all", rows="submodule", eval_every=500,
                 save_every=500),
    "lora": dict(steps=300, lr=2e-3, seq_len=256, warmup=30, loss="answer", rows="skill", eval_every=100,
                 save_every=50),
    "full": dict(steps=300, lr=1e-4, seq_len=256, warmup=30, loss="answer", rows="skill", eval_every=100,
                 save_every=100),
    "router": dict(steps=300, lr=5e-3, seq_len=256, warmup=30, loss="answer", rows="submodule", eval_every=100,
                   save_every=50),
}   # LoRA rows mix a skill's submodules as eval.py's prompts do: +10.5-12.0 points, not +1.5-2.0 (docs/results.md)


@dataclass
class TrainConfig:
    """One run (cli.py declares the flags of the same names, with their defaults)."""
    mode: str                  # base, lora, full (--full) or router
    expert: str | None         # --expert: a skill, or cluster:K; None: every skill
    data: str
    out: str
    model: str                 # the base model (every mode but --base)
    revision: str | None
    adapter: str | None        # LoRA: continue from this adapter instead of a fresh one
    clusters: str              # cluster.py's output: --expert cluster:K, and a router's cluster experts
    # the schedule
    steps: int
    steps_per_skill: int | None   # --mixed: steps = this x the skills, as much as all experts together
    batch_size: int
    lr: float
    warmup: int
    weight_decay: float
    seq_len: int
    loss: str                  # all or answer
    rows: str                  # submodule or skill
    # dev checks and saves
    eval_every: int
    save_every: int
    eval_batches: int
    eval_questions: int
    seed: int
    device: str
    dtype: str | None
    compile: bool
    resume: bool
    stop_at: int | None
    # the run's identity: every flag but those a --resume may change (cli.NOT_THE_RUN)
    flags: dict = field(default_factory=dict)
    # each mode's own settings, None in the other modes
    pretrain: M.Pretrain | None = None
    lora: lora.LoRAConfig | None = None
    router: routing.RouterTraining | None = None


def config(argv=None):
    """The TrainConfig of a command line (sys.argv by default), its flags checked."""
    args = cli.train_args(MODES, lora.DEFAULT_TARGETS, argv)
    mode = cli.mode_of(args)
    shared = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__
              if f not in ("mode", "flags", "pretrain", "lora", "router")}
    cfg = TrainConfig(mode=mode, **shared, flags={k: v for k, v in sorted(vars(args).items())
                                                  if k not in cli.NOT_THE_RUN})
    if mode == "base":
        phi = M.PhiConfig(hidden_size=args.n_embd, intermediate_size=4 * args.n_embd, num_hidden_layers=args.n_layer,
                          num_attention_heads=args.n_head, partial_rotary_factor=args.rotary,
                          max_position_embeddings=args.max_pos)
        cfg.pretrain = M.Pretrain(phi, args.tokenizer, args.save_dtype)
    elif mode == "lora" and not args.adapter:
        cfg.lora = lora.LoRAConfig(args.rank, args.alpha, args.dropout, tuple(args.targets.split(",")))
    elif mode == "router":
        cfg.router = cli.pick(args, routing.RouterTraining)
    return cfg


# ---------------------------------------------------------------------------
# 2. The schedule
# ---------------------------------------------------------------------------


def lr_at(step, lr, warmup, total, floor=0.1):
    """Linear warmup to lr, then cosine decay to floor*lr at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------
# 3. The modes
# ---------------------------------------------------------------------------

def select_examples(cfg, model, tok):
    """(train, dev) questions of the mode: one skill, one cluster's, or every
    skill's (the router: at most --router-questions per skill); a skill without
    dev questions lends some of its train questions (data.prompts.train_and_dev)."""
    skill = cfg.expert if cfg.expert and not cfg.expert.startswith("cluster:") else None
    train_ex, dev_ex = train_and_dev(cfg.data, [skill] if skill else None, cfg.seed)
    if cfg.expert and not skill:
        k = int(cfg.expert.split(":")[1])
        return [cluster.examples_of_cluster(cfg.clusters, k, ex, model, tok) for ex in (train_ex, dev_ex)]
    if cfg.router:
        return [select(ex, cfg.router.router_questions, cfg.seed) for ex in (train_ex, dev_ex)]
    return train_ex, dev_ex


def learner_of(cfg, model, tok, train_ex, dev_ex, device):
    """What trains in each mode, and how it is saved: (learner, save(out), priors),
    priors being the router's TaskPriors (None in the other modes)."""
    if cfg.mode == "base":      # every parameter of a fresh model (model.new)
        return model, lambda out: M.save(model, tok, out, dtype=M.DTYPES[cfg.pretrain.save_dtype]), None
    if cfg.mode == "full":      # every weight of the base, fp32 under autocast: the plain fine-tune that can forget
        for p in model.parameters():
            p.requires_grad_(True)
        print(f"full fine-tune: {sum(p.numel() for p in model.parameters()):,} trainable parameters",
              file=sys.stderr)
        return model, lambda out: M.save(model, tok, out), None
    if cfg.mode == "router":    # the gates and the mix over frozen experts (router.RouterTraining.build)
        X, labels, layer = (cluster.router_inputs(train_ex, dev_ex, cfg.router.experts, cfg.clusters, model, tok)
                            if not cfg.router.rank1 else (None, None, None))    # rank-1 experts: no task level
        priors = cfg.router.build(model, train_ex + dev_ex, X, labels, layer, cfg.clusters, cfg.seed, device)
        return priors.router, lambda out: save_router(priors.router, out), priors
    if cfg.adapter:             # LoRA, continuing from a saved adapter: its r, alpha, dropout and targets come with it
        adapters.load_adapter(model, cfg.adapter)
        print(f"continuing from the adapter {cfg.adapter}", file=sys.stderr)
    else:                       # LoRA, fresh, on the target modules of the frozen base
        lora.add_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
    lora.mark_only_lora_trainable(model)
    lora.count_trainable(model)
    return model, lambda out: adapters.save_adapter(model, out, cfg.model), None


# ---------------------------------------------------------------------------
# 4. The loop
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """What the loop works on, made by setup(): the model and the part of it that
    trains, the data streams, the optimizer, and where the run stands."""
    cfg: TrainConfig
    model: torch.nn.Module     # the whole model that the loss runs through
    learner: torch.nn.Module   # what trains: the model, the model's LoRA, or the router
    save: object               # save(out): the model, the adapter or the router files
    priors: routing.TaskPriors | None   # --router: the task-level weights per question; else None
    train_ex: list
    dev_ex: list
    episodes: Episodes
    dev_episodes: Episodes
    dev: Evaluator             # the dev accuracy: its questions, 4-shot (Evaluator.dev)
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype
    device: str
    rank: int
    world: int
    steps: int                 # the schedule's length: --steps, or --steps-per-skill x skills
    params: list               # the learner's trainable parameters
    step: int = 0
    best: float = -1.0         # best dev accuracy so far
    log: list = field(default_factory=list)
    t0: float = 0.0

    def autocast(self):
        """Trainable weights are fp32; in half precision the matmuls run in --dtype."""
        return torch.autocast(self.device.split(":")[0], dtype=self.dtype, enabled=self.dtype != torch.float32)

    @property
    def state_path(self):
        return os.path.join(self.cfg.out, "train_state.pt")


def train(cfg):
    """Set up the chosen mode, then run the shared loop, as the one writer of --out
    (its lock); returns the model, or None for a finished run resumed (it trains
    nothing, and its base is not loaded)."""
    with lock(cfg.out) if int(os.environ.get("RANK", "0")) == 0 else nullcontext():
        path = os.path.join(cfg.out, "train_state.pt")
        state = read_state(path, cfg.flags) if cfg.resume and os.path.exists(path) else None
        if state and state["step"] == state["steps"]:
            return print(f"{path}: the run finished at step {state['step']}; nothing to train", file=sys.stderr)
        run = setup(cfg, state)
        loop(run)
    if run.world > 1:
        dist.destroy_process_group()
    return run.model


def loop(run):
    """train_step() until the last step: a dev evaluation every --eval-every steps
    and at the last; the state saved at each, every --save-every steps, and when
    Ctrl-C (or SIGTERM) asks the run to stop, which it then does with exit status
    128 + the signal's number."""
    cfg = run.cfg
    fwd = torch.compile(run.model) if cfg.compile else run.model
    run.model.train()
    bar = tqdm(initial=run.step, total=run.steps, desc=cfg.mode, disable=run.rank != 0)
    with cli.stop_requests() as asked:
        while run.step < run.steps:
            loss, lr = train_step(run, fwd)
            if run.step % 10 == 0:
                run.log.append({"step": run.step, "loss": loss.item(), "lr": lr, "time": time.time() - run.t0})
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
            run.step += 1
            bar.update(1)
            stop = cli.stop_asked(asked, run.world, run.device)
            evaluate_now = run.step % cfg.eval_every == 0 or run.step in (run.steps, cfg.stop_at)
            if evaluate_now:
                checkpoint(run, fwd)
            if evaluate_now or stop or run.step % cfg.save_every == 0:
                save_state(run)
            if stop or run.step == cfg.stop_at:
                bar.close()
                print(f"stopped at step {run.step} of {run.steps} ({'--stop-at' if not stop else 'as asked'}); "
                      f"the same command with --resume continues from {run.state_path}", file=sys.stderr)
                if stop:
                    raise SystemExit(128 + (asked[0] if asked else signal.SIGINT))
                return
    bar.close()
    if run.rank == 0:
        kept = [e["step"] for e in run.log if "kept" in e]
        print(f"{cfg.out}: the {cfg.mode} of step {kept[-1]} (best dev accuracy {run.best:.3f}); "
              f"log.json has every dev evaluation", file=sys.stderr)


def setup(cfg, state=None):
    """The model of the chosen mode on this process's device, its data and
    optimizer, restored from `state` (OUT/train_state.pt, read by train()) if given."""
    rank, world, device = cli.processes(cfg.device)
    dtype = M.DTYPES[cfg.dtype or ("bfloat16" if device.startswith("cuda") else "float32")]
    torch.manual_seed(cfg.seed)
    if cfg.mode == "base":
        model, tok = None, hf.read_tokenizer(cfg.pretrain.tokenizer, math.inf, M.EOT)
    else:                     # the one base of this process: frozen in --dtype, or fp32 to train it all
        model, tok = M.load(cfg.model, dtype=torch.float32 if cfg.mode == "full" else dtype, device=device,
                            revision=cfg.revision)
    train_ex, dev_ex = select_examples(cfg, model, tok)
    if cfg.mode == "base":
        model = M.new(cfg.pretrain.phi, tok, device)
    _check_run(cfg, world, model)
    dev = Evaluator.dev(model, tok, dev_ex, load_examples(cfg.data, split="train"), cfg.eval_questions,
                        "skill" if cfg.mode == "base" else "nearest", cfg.seed)    # before any adapter
    learner, save, priors = learner_of(cfg, model, tok, train_ex, dev_ex, device)
    steps = cfg.steps_per_skill * len({e.skill for e in train_ex}) if cfg.steps_per_skill else cfg.steps
    episodes = Episodes(tok, train_ex, cfg.seq_len, cfg.seed, cfg.loss, cfg.rows)
    dev_episodes = Episodes(tok, dev_ex, cfg.seq_len, cfg.seed + 1, cfg.loss, cfg.rows)
    print(f"{len(train_ex)} train / {len(dev_ex)} dev questions in {len(episodes.groups)} {cfg.rows} groups; "
          f"{steps} steps of {cfg.batch_size} x {cfg.seq_len} tokens on {world} process(es), "
          f"{steps * cfg.batch_size / episodes.rows:.2f} passes over the {episodes.rows} rows of the train questions",
          file=sys.stderr)
    run = Run(cfg=cfg, model=model, learner=learner, save=save, priors=priors,
              train_ex=train_ex, dev_ex=dev_ex, episodes=episodes, dev_episodes=dev_episodes, dev=dev,
              opt=M.make_optimizer(learner, cfg.lr, cfg.weight_decay, device),
              scaler=torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16),  # fp16: no underflow
              dtype=dtype, device=device, rank=rank, world=world, steps=steps,
              params=[p for p in learner.parameters() if p.requires_grad])
    if state:
        run.step, run.best, run.log, run.steps = restore(run.state_path, state, learner, run.opt, run.scaler, device)
        print(f"resumed from {run.state_path} at step {run.step} (best dev accuracy {run.best:.3f})", file=sys.stderr)
    elif cfg.resume:
        print(f"--resume: no {run.state_path} yet, starting from scratch", file=sys.stderr)
    run.t0 = time.time() - (run.log[-1]["time"] if run.log else 0)
    return run


def train_step(run, fwd):
    """One optimizer step on the step's global batch; returns (loss tensor, lr)."""
    cfg, world = run.cfg, run.world
    lr = lr_at(run.step, cfg.lr, cfg.warmup, run.steps)
    for g in run.opt.param_groups:
        g["lr"] = lr
    x, y, first = run.episodes.batch(run.step, cfg.batch_size, run.device, with_first=True)  # global batch
    n_targets = (y != -100).sum()
    if n_targets == 0:
        raise UserError(f"step {run.step}: no token of the batch carries the loss (--loss {cfg.loss}): "
                         f"the questions do not fit rows of --seq-len {cfg.seq_len}")
    x, y = x[run.rank::world], y[run.rank::world]                       # this process's rows
    if run.priors:
        run.priors.set([run.train_ex[i] for i in first[run.rank::world]])   # the rows' task-level weights
    with run.autocast():
        loss = M.lm_loss(fwd, x, y, n_targets)
        if run.priors:
            loss = loss + run.priors.router.aux_loss() / world
    if not torch.isfinite(loss):
        raise UserError(f"step {run.step}: the loss is {loss.item()}; stopped before updating the weights. "
                         f"The last checkpoint, if any, is {run.state_path}; try a lower --lr")
    run.scaler.scale(loss).backward()
    if world > 1:
        for p in run.params:
            dist.all_reduce(p.grad)                                      # sum over processes
    run.scaler.unscale_(run.opt)
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    loss = loss.detach()
    if world > 1 and run.step % 10 == 0:
        dist.all_reduce(loss)                                            # the logged loss: global
    return loss, lr


def dev_loss(run, fwd):
    """The mean loss of --eval-batches batches of the dev rows; a router is handed
    each batch's task-level weights, as in training."""
    losses = []
    for i in range(run.cfg.eval_batches):
        x, y, first = run.dev_episodes.batch(i, run.cfg.batch_size, run.device, with_first=True)
        if run.priors:
            run.priors.set([run.dev_ex[j] for j in first])
        losses.append(M.lm_loss(fwd, x, y).item())
    return sum(losses) / len(losses)


def checkpoint(run, fwd):
    """Dev loss and dev accuracy into the log; the model to OUT when it is the best
    so far (the kept step). Rank 0 only."""
    if run.rank == 0:
        cfg = run.cfg
        run.model.eval()
        with torch.no_grad(), run.autocast():
            dl = dev_loss(run, fwd)
            route = run.priors.dev_batch(run.dev.examples) if run.priors else None
            acc = mean_accuracy(run.dev("dev accuracy", per_batch=route))
        run.model.train()
        entry = {"step": run.step, "dev_loss": dl, "dev_accuracy": acc, "time": time.time() - run.t0}
        if acc > run.best:       # the kept step: the first with the best dev accuracy
            run.best = acc
            run.save(cfg.out)
            entry["kept"] = (f"best dev accuracy so far, mean over skills of {len(run.dev.examples)} dev "
                             f"questions with 4 {run.dev.source} shots")
        run.log.append(entry)
        tqdm.write(f"step {run.step}: dev loss {dl:.4f}, dev accuracy {acc:.3f} (best {run.best:.3f})",
                   file=sys.stderr)


def save_state(run):
    """The record and, mid-run, the whole state to OUT/train_state.pt for an exact
    --resume (formats/state.py); the log to OUT/log.json. Rank 0 only."""
    if run.rank == 0:
        record = {"step": run.step, "steps": run.steps, "best": run.best, "log": run.log, "run": run.cfg.flags}
        if run.step < run.steps:
            trained = {n: p for n, p in run.learner.state_dict().items() if run.cfg.mode != "lora" or "lora_" in n}
            write_state(run.state_path, record, trained, run.opt, run.scaler, run.device)
        else:            # finished: the model is in OUT, nothing is left to resume
            write_state(run.state_path, record)
        write_json(os.path.join(run.cfg.out, "log.json"), run.log)
    if run.world > 1:
        dist.barrier()


def main():
    train(config())


# ---------------------------------------------------------------------------
# 5. Checks
# ---------------------------------------------------------------------------


def _check_run(cfg, world, model):
    """The batch divides among the processes, a row fits the model's context, and
    each LoRA target selects some Linear (checked before the slow setup)."""
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} must divide among {world} processes")
    if cfg.seq_len > model.config.max_position_embeddings:
        raise UserError(f"--seq-len {cfg.seq_len} is longer than the model's context "
                         f"({model.config.max_position_embeddings} positions)")
    if cfg.lora:
        lora.check_targets(model, cfg.lora.targets)


if __name__ == "__main__":
    cli.run(main)
