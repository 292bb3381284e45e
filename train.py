"""
Training, in modes that share one loop:

    python train.py --base                       # pretrain phi-tiny from scratch
    python train.py --expert algebra             # one LoRA skill expert on a frozen base
    python train.py --expert algebra --full      # a plain fine-tune of every weight (can forget)
    python train.py --expert cluster:3           # ... on the questions of k-means cluster 3
    python train.py --mixed                      # one LoRA on all skills (the baseline)
    python train.py --router --experts out/experts   # the two-level router over frozen experts
    torchrun --nproc-per-node 2 train.py --expert algebra    # data parallel, 2 processes
    python train.py --expert algebra --resume    # continue a killed run

Chapters:
  1. the pieces   AdamW, warmup + cosine decay, the loss, the dev loss, processes
  2. the modes    what each mode trains and saves: an HF-layout model (--base),
                  a PEFT adapter (LoRA), a whole model (--full) or a router
                  (mixture.py builds it; only its gates and mix train, with its
                  entropy and balance terms added to the loss)
  3. the run      setup(), then train_step() until --steps, with checkpoint() every
                  --eval-every steps: dev loss and accuracy, the best model kept in
                  OUT, the whole state in OUT/train_state.pt for an exact --resume
                  (after the last step only the run's record: a finished run is done)
The flags, with each mode's defaults, are flags.py's; the rows, data/episodes.py's
(solved questions shaped as few-shot prompts, rebuilt exactly per step).

Precision (--dtype): trainable weights are fp32; the frozen base is held in
--dtype and the matmuls run under autocast, as PEFT + transformers users do
(bf16 by default on CUDA).

Data parallel by hand: every process builds the same global batch (a function
of the step) and takes its share of the rows; gradients are summed with
all_reduce. The loss is a sum over the process's target tokens divided by the
global count, so the summed gradient is exactly that of the global batch.

References: nanoGPT's train.py (loop, schedule, decay groups); LoRA (Hu et al.
2021); PyTorch DDP's gradient all-reduce. Left out: gradient accumulation.
"""
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import adapters
import cluster
import flags
import hf
import lora
import mixture
import model as M
from data.cli import run
from data.files import write_atomic, write_json
from data.lila import load as load_examples
from data.episodes import Episodes
from data.prompts import select
from data.score import mean_accuracy
from eval import evaluate

# ---------------------------------------------------------------------------
# 1. The pieces of the loop
# ---------------------------------------------------------------------------


def lr_at(step, lr, warmup, total, floor=0.1):
    """Linear warmup to lr, then cosine decay to floor*lr at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, lr, weight_decay, device):
    """AdamW over the trainable parameters; matrices decay, biases, LayerNorms
    and embeddings don't (nanoGPT's split, less the small embeddings)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.dim() == 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.dim() == 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.startswith("cuda"))


def lm_loss(model, x, y, n_targets=None):
    """Summed cross-entropy over the targets of y (-100 = none), divided by
    n_targets (default: this batch's count; data parallel passes the global one)."""
    logits = model(x)                                                   # (B, T, V)
    total = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100,
                            reduction="sum")
    return total / (n_targets if n_targets is not None else (y != -100).sum().clamp(min=1))


@torch.no_grad()
def dev_loss(model, episodes, batches, B, device, autocast):
    model.eval()
    losses = []
    for i in range(batches):
        x, y = episodes.batch(i, B, device)
        with autocast():
            losses.append(lm_loss(model, x, y).item())
    model.train()
    return sum(losses) / len(losses)


def distributed(device):
    """(rank, world, device) under torchrun; (0, 1, device) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


# ---------------------------------------------------------------------------
# 2. The modes
# ---------------------------------------------------------------------------

def setup_base(args, tok, device):
    """A fresh phi-architecture model; every parameter trains."""
    vocab = -(-tok.get_vocab_size() // 64) * 64          # round up: friendlier matmul shapes
    cfg = M.PhiConfig(vocab_size=vocab, hidden_size=args.n_embd, intermediate_size=4 * args.n_embd,
                      num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                      partial_rotary_factor=args.rotary, max_position_embeddings=args.max_pos,
                      bos_token_id=tok.token_to_id(M.EOT), eos_token_id=tok.token_to_id(M.EOT))
    model = M.PhiForCausalLM(cfg).to(device)
    print(f"phi-tiny: {model.num_params() / 1e6:.2f}M parameters, {cfg.num_hidden_layers} layers, "
          f"width {cfg.hidden_size}, {cfg.num_attention_heads} heads of {cfg.head_dim}")
    save = lambda out: M.save(model, tok, out, dtype=M.DTYPES[args.save_dtype])
    return model, model, save


def setup_lora(args, model):
    """LoRA on the target modules of the frozen base, fresh or (--adapter) the
    saved one to continue from; only LoRA (fp32) trains."""
    if args.adapter:          # its r, alpha, dropout and targets come with it
        adapters.load_adapter(model, args.adapter)
        print(f"continuing from the adapter {args.adapter}")
    else:
        _check_targets(model, args.targets.split(","))
        lora.add_lora(model, r=args.rank, alpha=args.alpha, dropout=args.dropout,
                      targets=args.targets.split(","))
    lora.mark_only_lora_trainable(model)
    lora.count_trainable(model)
    save = lambda out: adapters.save_adapter(model, out, args.model)
    return model, save


def setup_full(args, model, tok):
    """--full: every weight of the base trains (fp32, autocast to --dtype), as in a
    plain fine-tune, the baseline that can forget; the whole model is saved."""
    for p in model.parameters():
        p.requires_grad_(True)
    print(f"full fine-tune: {sum(p.numel() for p in model.parameters()):,} trainable parameters")
    return model, lambda out: M.save(model, tok, out)


def setup_router(args, model, tok, device, train_ex, dev_ex):
    """Base + frozen experts (or fresh rank-1 experts) + a Router; the router trains."""
    setup = mixture.build_router(model, tok, args, train_ex, dev_ex, device)
    save = lambda out: mixture.save_router(setup.router, out)
    return setup, save


def select_examples(args, split, model, tok):
    """The questions a mode trains on: one skill, one cluster, or everything
    (the router: at most --router-questions per skill)."""
    if args.router:
        return select(load_examples(args.data, split=split), args.router_questions, args.seed)
    if args.expert and args.expert.startswith("cluster:"):
        everything = load_examples(args.data, split=split)
        return cluster.examples_of_cluster(args.clusters, int(args.expert.split(":")[1]), everything,
                                           model, tok)
    skills = [args.expert] if args.expert else None
    return load_examples(args.data, split=split, skills=skills)


# ---------------------------------------------------------------------------
# 3. The run: set-up, the loop, checkpoints
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """What the loop works on, made by setup(): the model and the part of it that
    trains, the data streams, the optimizer, and where the run stands."""
    args: object
    mode: str                  # base, lora or router
    model: torch.nn.Module     # the whole model that the loss runs through
    learner: torch.nn.Module   # what trains: the model, the model's LoRA, or the router
    save: object               # save(out): the model, the adapter or the router files
    tok: object
    routing: object            # --router: the Routing (task-level priors per question); else None
    train_ex: list
    episodes: Episodes
    dev_episodes: Episodes
    dev_questions: list        # dev accuracy: a few per skill, 4-shot, with shots from pool
    pool: list
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype
    device: str
    rank: int
    world: int
    identity: dict             # the flags that define the run (a resume must match them)
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
        return os.path.join(self.args.out, "train_state.pt")


def train(args):
    """Set up the chosen mode, then run the shared loop; returns the model (a finished run, resumed, trains nothing)."""
    run = setup(args)
    fwd = torch.compile(run.model) if args.compile else run.model
    run.model.train()
    bar = tqdm(initial=run.step, total=args.steps, desc=run.mode, disable=run.rank != 0)
    while run.step < args.steps:
        loss, lr = train_step(run, fwd)
        if run.step % 10 == 0:
            run.log.append({"step": run.step, "loss": loss.item(), "lr": lr, "time": time.time() - run.t0})
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
        run.step += 1
        bar.update(1)
        if run.step % args.eval_every == 0 or run.step in (args.steps, args.stop_at):
            checkpoint(run, fwd)
        if run.step == args.stop_at:
            print(f"stopping at step {run.step} as asked (--stop-at); continue with --resume")
            break
    bar.close()
    if run.world > 1:
        dist.destroy_process_group()
    return run.model


def setup(args):
    """The model of the chosen mode on this process's device, its data and
    optimizer, restored from OUT/train_state.pt with --resume."""
    mode = flags.mode_of(args)
    identity = flags.identity(args)
    rank, world, device = distributed(args.device)
    dtype = M.DTYPES[args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")]
    torch.manual_seed(args.seed)
    if mode == "base":
        model, tok = None, hf.read_tokenizer(args.tokenizer, math.inf)
    else:                     # the one base of this process: frozen in --dtype, or fp32 to train it all
        model, tok = M.load(args.model, dtype=torch.float32 if mode == "full" else dtype, device=device,
                            revision=args.revision)
    train_ex, dev_ex = select_examples(args, "train", model, tok), select_examples(args, "dev", model, tok)
    routing = None
    if mode == "base":
        model, learner, save = setup_base(args, tok, device)
    elif mode == "lora":
        learner, save = setup_lora(args, model)
    elif mode == "full":
        learner, save = setup_full(args, model, tok)
    else:
        routing, save = setup_router(args, model, tok, device, train_ex, dev_ex)
        learner = routing.router
    if args.mixed and args.steps_per_skill:        # as much training as all experts together
        args.steps = args.steps_per_skill * len({e.skill for e in train_ex})
    _check_run(args, world, model)
    os.makedirs(args.out, exist_ok=True)
    episodes = Episodes(tok, train_ex, args.seq_len, args.seed, args.loss, args.rows)
    dev_episodes = Episodes(tok, dev_ex, args.seq_len, args.seed + 1, args.loss, args.rows)
    dev_questions = select(dev_ex, max(1, args.eval_questions // len({e.skill for e in dev_ex})), args.seed)
    print(f"{len(train_ex)} train / {len(dev_ex)} dev questions in {len(episodes.groups)} {args.rows} groups; "
          f"{args.steps} steps of {args.batch_size} x {args.seq_len} tokens on {world} process(es)")
    run = Run(args, mode, model, learner, save, tok, routing, train_ex, episodes, dev_episodes, dev_questions,
              load_examples(args.data, split="train"), make_optimizer(learner, args.lr, args.weight_decay, device),
              torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16),  # fp16: no underflow
              dtype, device, rank, world, identity, [p for p in learner.parameters() if p.requires_grad])
    if args.resume and os.path.exists(run.state_path):
        run.step, run.best, run.log, args.steps = restore(run.state_path, identity, learner, run.opt,
                                                          run.scaler, device)
        print(f"resumed from {run.state_path} at step {run.step} (best dev accuracy {run.best:.3f})")
    elif args.resume:
        print(f"--resume: no {run.state_path} yet, starting from scratch")
    run.t0 = time.time() - (run.log[-1]["time"] if run.log else 0)
    return run


def train_step(run, fwd):
    """One optimizer step on the step's global batch; returns (loss tensor, lr)."""
    args, world = run.args, run.world
    lr = lr_at(run.step, args.lr, args.warmup, args.steps)
    for g in run.opt.param_groups:
        g["lr"] = lr
    x, y, first = run.episodes.batch(run.step, args.batch_size, run.device, with_first=True)  # global batch
    n_targets = (y != -100).sum()
    if n_targets == 0:
        raise ValueError(f"step {run.step}: no token of the batch carries the loss (--loss {args.loss}): "
                         f"the questions do not fit rows of --seq-len {args.seq_len}")
    x, y = x[run.rank::world], y[run.rank::world]                       # this process's rows
    if run.routing:
        run.routing.train_rows(first[run.rank::world], run.train_ex)     # task-level priors
    with run.autocast():
        loss = lm_loss(fwd, x, y, n_targets)
        if run.routing:
            loss = loss + run.routing.router.aux_loss() / world
    if not torch.isfinite(loss):
        raise ValueError(f"step {run.step}: the loss is {loss.item()}; stopped before updating the weights. "
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


def checkpoint(run, fwd):
    """Dev loss and dev accuracy; the best model so far to OUT; the whole state to
    OUT/train_state.pt and the log to OUT/log.json, each atomically. Rank 0 only."""
    if run.rank == 0:
        args = run.args
        dl = dev_loss(fwd, run.dev_episodes, args.eval_batches, args.batch_size, run.device, run.autocast)
        run.model.eval()
        with run.autocast():
            route = run.routing.dev_batch(run.dev_questions) if run.routing else None
            acc = mean_accuracy(evaluate(run.model, run.tok, run.dev_questions, run.pool, shots=4, batch_size=64,
                                         desc="dev accuracy", route=route))
        run.model.train()
        run.log.append({"step": run.step, "dev_loss": dl, "dev_accuracy": acc, "time": time.time() - run.t0})
        if acc > run.best:
            run.best = acc
            run.save(args.out)
        state = {"step": run.step, "steps": args.steps, "best": run.best, "log": run.log, "run": run.identity}
        if run.step < args.steps:     # at the end the record alone: the model is in OUT, nothing is left to resume
            rng = {"cpu": torch.get_rng_state()}
            if run.device.startswith("cuda"):
                rng["cuda"] = torch.cuda.get_rng_state(run.device)
            trained = {n: p for n, p in run.learner.state_dict().items() if run.mode != "lora" or "lora_" in n}
            state |= {"model": trained, "opt": run.opt.state_dict(), "scaler": run.scaler.state_dict(), "rng": rng}
        write_atomic(run.state_path, lambda p: torch.save(state, p))
        write_json(os.path.join(args.out, "log.json"), run.log)
        tqdm.write(f"step {run.step}: dev loss {dl:.4f}, dev accuracy {acc:.3f} (best {run.best:.3f})")
    if run.world > 1:
        dist.barrier()


def restore(path, identity, learner, opt, scaler, device):
    """Load OUT/train_state.pt into the learner, optimizer, grad scaler and the
    random number generators; return (step, best, log, total steps)."""
    state = read_state(path, identity, device)
    if state["step"] == state["steps"]:          # a finished run: its state is the record alone
        return state["step"], state["best"], state["log"], state["steps"]
    missing, unexpected = learner.load_state_dict(state["model"], strict=False)
    trainable = {n for n, p in learner.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise ValueError(f"{path}: its weights do not fit this model (missing "
                         f"{sorted(trainable & set(missing))[:3]}, unexpected {unexpected[:3]})")
    bad = [n for n, p in learner.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"{path}: saved weights {bad[:3]} hold NaN or inf; delete it to start again")
    opt.load_state_dict(state["opt"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return state["step"], state["best"], state["log"], state["steps"]


def main():
    args = flags.train_args()
    path = os.path.join(args.out, "train_state.pt")
    if args.resume and os.path.exists(path):      # a finished run is done before its base is even loaded
        state = read_state(path, flags.identity(args), "cpu")
        if state["step"] == state["steps"]:
            return print(f"{path}: the run finished at step {state['step']}; nothing to train")
    train(args)


# ---------------------------------------------------------------------------
# 4. Checks
# ---------------------------------------------------------------------------


def _check_run(args, world, model):
    """The batch divides among the processes, and a row fits the model's context."""
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must divide among {world} processes")
    if args.seq_len > model.config.max_position_embeddings:
        raise ValueError(f"--seq-len {args.seq_len} is longer than the model's context "
                         f"({model.config.max_position_embeddings} positions)")


def _check_targets(model, targets):
    """Each --targets name selects some Linear of the model (PEFT drops one that does not)."""
    unknown = [t for t in targets if not lora.target_names(model, [t])]
    if unknown:
        names = sorted({n.rsplit(".", 1)[-1] for n in lora.target_names(model, "all-linear")})
        raise ValueError(f"--targets: {unknown} select no Linear of the model; its Linears are named {names}")


def read_state(path, identity, device):
    """OUT/train_state.pt, refused if it is not one, or, naming the flags, if the
    saved run was started with other flags (another skill, targets, lr, ...)."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:     # a truncated zip, a text file, a pickle of something else
        raise ValueError(f"{path}: not a train.py state (truncated or corrupt: {type(e).__name__}); "
                         "delete it to start again") from None
    saved = state.get("run") if isinstance(state, dict) else None
    if saved is None:
        raise ValueError(f"{path}: no run configuration recorded (an older train.py wrote it); "
                         "start again in a new --out")
    unset = (None, False)     # a flag added since the run started, left at its default, is the same run
    differ = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k)
                    and not (k not in saved and identity[k] in unset or k not in identity and saved[k] in unset))
    if differ:
        raise ValueError(f"{path}: --resume must continue the same run, but " + ", ".join(
            f"--{k.replace('_', '-')} is {identity.get(k)!r} (the run's: {saved.get(k)!r})" for k in differ))
    return state


if __name__ == "__main__":
    run(main)
