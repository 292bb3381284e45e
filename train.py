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

The training stream is data/episodes.py's (rows of solved questions of one
submodule or one skill, shaped as few-shot prompts, rebuilt exactly per step),
and the router's set-up over its experts is mixture.py's.

Chapters:
  1. the pieces   AdamW, linear warmup + cosine decay, the loss, the dev loss,
                  data parallel processes
  2. the modes    what each mode trains, on which questions, and what it saves:
                  an HF-layout model (--base), a PEFT-layout adapter (LoRA), a
                  whole model (--full) or a router; each mode's defaults (MODES)
  3. the run      setup(), then train_step() until --steps with checkpoint() every
                  --eval-every steps: dev loss and dev accuracy, the best model
                  kept, the whole state saved for an exact --resume

Checkpoints are atomic (temp file + rename): OUT/train_state.pt holds the
trainable weights, the optimizer, the step and the log; the model or adapter
in OUT is the best one by dev accuracy so far.

Data parallel by hand: every process builds the same global batch (it is a
function of the step), takes its share of the rows, and the gradients are
summed with all_reduce (gloo on CPU, nccl on GPU). The loss is a sum over the
process's target tokens divided by the global count, so the summed gradient is
exactly the single-process gradient of the global batch.

References: nanoGPT's train.py (loop, schedule, decay groups); LoRA (Hu et al.
2021); PyTorch DDP's gradient all-reduce.
The router mode trains only router.py's gates and mix (base and experts stay
frozen), with the router's entropy and balance terms added to the loss.
Precision (--dtype): LoRA and the router train fp32 weights on a frozen base
held in --dtype, the matmuls under autocast, as PEFT + transformers users do
(bf16 by default on CUDA); pretraining keeps fp32 weights under the same autocast.
Left out: gradient accumulation.
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
import hf
import lora
import mixture
import model as M
from data.cli import (Parser, torch_device, finite_float, nonempty, nonneg_float, nonneg_int, positive_float,
                      positive_int, probability, random_seed, run, share, writable_dir)
from data.files import write_atomic, write_json
from data.lila import DEFAULT_DATA, load as load_examples
from data.episodes import Episodes
from data.prompts import select
from eval import evaluate, mean_accuracy

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

MODES = {           # the defaults that differ between modes; --help lists them per mode
    "base": dict(steps=3000, lr=2e-3, seq_len=512, warmup=200, loss="all", rows="submodule", eval_every=500),
    "lora": dict(steps=300, lr=2e-3, seq_len=256, warmup=30, loss="answer", rows="skill", eval_every=100),
    "full": dict(steps=300, lr=1e-4, seq_len=256, warmup=30, loss="answer", rows="skill", eval_every=100),
    "router": dict(steps=300, lr=5e-3, seq_len=256, warmup=30, loss="answer", rows="submodule", eval_every=100),
}
# LoRA rows mix a skill's submodules because eval.py's prompts do: experts trained on
# one-submodule rows gained 1.5-2.0 points on arithmetic, numbers and measurement,
# and 10.5-12.0 with skill rows (docs/results.md).


# What may change when a run is resumed; every other flag defines the run.
NOT_THE_RUN = ("resume", "stop_at", "device", "compile", "out")


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
    """Set up the chosen mode, then run the shared loop; returns the model."""
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
    mode = mode_of(args)
    if args.out is None:
        name = "mixed" if args.mixed else "router" if args.router else args.expert.replace(":", "-")
        folder = "full" if args.full else "experts" if args.expert else ""
        args.out = "runs/base" if args.base else os.path.join("out", folder, name)
    identity = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_THE_RUN}
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
        rng = {"cpu": torch.get_rng_state()}
        if run.device.startswith("cuda"):
            rng["cuda"] = torch.cuda.get_rng_state(run.device)
        trained = {n: p for n, p in run.learner.state_dict().items() if run.mode != "lora" or "lora_" in n}
        state = {"model": trained, "opt": run.opt.state_dict(), "scaler": run.scaler.state_dict(),
                 "step": run.step, "steps": args.steps, "best": run.best, "log": run.log, "run": run.identity,
                 "rng": rng}
        write_atomic(run.state_path, lambda p: torch.save(state, p))
        write_json(os.path.join(args.out, "log.json"), run.log)
        tqdm.write(f"step {run.step}: dev loss {dl:.4f}, dev accuracy {acc:.3f} (best {run.best:.3f})")
    if run.world > 1:
        dist.barrier()


def restore(path, identity, learner, opt, scaler, device):
    """Load OUT/train_state.pt into the learner, optimizer, grad scaler and the
    random number generators; return (step, best, log, total steps). Refused, naming the flags,
    if the saved run was started with other flags (another skill, targets, lr, ...)."""
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


# ---------------------------------------------------------------------------
# 4. The command line
# ---------------------------------------------------------------------------


def parser():
    p = Parser(description="Pretrain phi-tiny, or train LoRA skill experts.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--base", action="store_true", help="pretrain a phi-architecture model from scratch")
    mode.add_argument("--expert", type=nonempty, metavar="SKILL", help="train a LoRA expert on one skill, or on "
                      "cluster:K (the questions cluster.py put in cluster K)")
    mode.add_argument("--mixed", action="store_true", help="train one LoRA on all skills (baseline)")
    mode.add_argument("--router", action="store_true", help="train the two-level router over the "
                      "frozen experts in --experts")
    p.add_argument("--data", type=nonempty, default=DEFAULT_DATA, help=f"LiLA task file(s) or directory (default {DEFAULT_DATA})")
    p.add_argument("--out", type=writable_dir, default=None, help="output directory (default runs/base, "
                   "out/experts/SKILL, out/experts/cluster-K, out/mixed, out/router, out/full/SKILL)")
    per_mode = lambda k: ", ".join(f"{'LoRA' if m == 'lora' else m} {d[k]}" for m, d in MODES.items())  # noqa: E731
    p.add_argument("--steps", type=positive_int, help=f"optimizer steps (default {per_mode('steps')})")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences per step, over all "
                   "processes (default 16)")
    p.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {per_mode('lr')})")
    p.add_argument("--seq-len", type=positive_int, help=f"training sequence length (default {per_mode('seq_len')})")
    p.add_argument("--warmup", type=nonneg_int, help=f"linear warmup steps (default {per_mode('warmup')})")
    p.add_argument("--loss", choices=["all", "answer"], help="tokens that carry the loss: all, or the "
                   f"answers' (default {per_mode('loss')})")
    p.add_argument("--rows", choices=["submodule", "skill"], help="what one training row holds: questions "
                   "of one submodule, or of one skill with its submodules mixed, like eval.py's few-shot "
                   f"prompts (default {per_mode('rows')})")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.1,
                   help="AdamW weight decay on matrices (default 0.1)")
    p.add_argument("--eval-every", type=positive_int,
                   help=f"steps between dev evaluations (default {per_mode('eval_every')})")
    p.add_argument("--eval-batches", type=positive_int, default=4, help="batches for the dev loss (default 4)")
    p.add_argument("--eval-questions", type=positive_int, default=200, help="dev questions for the dev accuracy "
                   "(default 200)")
    p.add_argument("--seed", type=random_seed, default=1234, help="random seed: init and data order (default 1234)")
    p.add_argument("--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default cuda when available)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="dtype of the frozen base and of autocast; trainable weights stay fp32 "
                   "(default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--stop-at", type=positive_int, default=None, help="checkpoint and stop after this step; "
                   "the schedule still follows --steps, and --resume continues it (split a long run)")
    add_base_flags(p)
    add_lora_flags(p)
    add_router_flags(p)
    return p


def add_base_flags(p):
    g = p.add_argument_group("--base: the model to pretrain")
    g.add_argument("--tokenizer", type=nonempty, default="data/tokenizer.json",
                   help="tokenizer.json (make data writes it) (default data/tokenizer.json)")
    g.add_argument("--n-layer", type=positive_int, default=8, help="transformer blocks (default 8)")
    g.add_argument("--n-embd", type=positive_int, default=320, help="hidden size (MLP is 4x) (default 320)")
    g.add_argument("--n-head", type=positive_int, default=4,
                   help="attention heads (head size = n-embd / n-head) (default 4)")
    g.add_argument("--rotary", type=share, default=0.4,
                   help="partial_rotary_factor in (0, 1], as phi-2 (default 0.4)")
    g.add_argument("--max-pos", type=positive_int, default=1024, help="max_position_embeddings (default 1024)")
    g.add_argument("--save-dtype", default="float16", choices=sorted(M.DTYPES),
                   help="dtype of model.safetensors (default float16)")


def add_lora_flags(p):
    g = p.add_argument_group("--expert / --mixed: LoRA on a frozen base")
    g.add_argument("--model", type=nonempty, default=M.DEFAULT_MODEL, help="base model: a directory (HF layout) or a "
                   f"Hugging Face id, e.g. microsoft/phi-2 (default {M.DEFAULT_MODEL})")
    g.add_argument("--revision", default=None, help="--model id: branch, tag or commit "
                   "(default: the repository's main branch)")
    g.add_argument("--full", action="store_true", help="train every weight of the base instead of LoRA "
                   "(a plain fine-tune, the baseline that can forget); OUT gets a whole model")
    g.add_argument("--adapter", default=None, help="start from this adapter instead of a fresh LoRA, e.g. "
                   "to train one LoRA skill after skill (its r, alpha, dropout and targets are used; default: none)")
    g.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r (default 8)")
    g.add_argument("--alpha", type=positive_float, default=16, help="LoRA alpha (scale alpha/r) (default 16)")
    g.add_argument("--dropout", type=probability, default=0.0, help="LoRA dropout (default 0.0)")
    g.add_argument("--targets", type=nonempty, default=",".join(lora.DEFAULT_TARGETS),
                   help="modules that get LoRA (default " + ",".join(lora.DEFAULT_TARGETS) + ")")
    g.add_argument("--clusters", default="out/clusters",
                   help="cluster.py output, for --expert cluster:K (default out/clusters)")
    g.add_argument("--steps-per-skill", type=positive_int, default=None, help="--mixed: steps = this x the "
                   "number of skills (as much as all experts together); --rank 64 matches the "
                   "parameters of eight rank-8 experts")


def add_router_flags(p):
    g = p.add_argument_group("--router: two-level grouped routing (router.py)")
    g.add_argument("--experts", default="out/experts",
                   help="directory with one adapter directory per expert (default out/experts)")
    g.add_argument("--router-questions", type=positive_int, default=500,
                   help="train/dev questions per skill for the router (default 500)")
    g.add_argument("--level", default="token", choices=["token", "sequence"],
                   help="grouped gate input: each token's hidden state, or the input pooled (default token)")
    g.add_argument("--prior", default="centroid", choices=["centroid", "learned", "none"],
                   help="task-level prior: similarity to expert centroids, a learned classifier, or none (default centroid)")
    g.add_argument("--rank1", type=nonneg_int, default=0, metavar="N", help="instead of --experts: N fresh "
                   "rank-1 experts trained jointly with the gates (Intuition-MoR1E; scale --alpha) (default 0)")
    g.add_argument("--n-groups", type=positive_int, default=None, help="expert groups (k-means over the "
                   "expert centroids; at most the number of experts) (default 3, or fewer with fewer experts)")
    g.add_argument("--top-k", type=nonneg_int, default=0,
                   help="keep the k largest expert weights (0 = all) (default 0)")
    g.add_argument("--temperature", type=positive_float, default=1.0,
                   help="temperature of the gate softmaxes (default 1.0)")
    g.add_argument("--tau", type=positive_float, default=1.0, help="temperature of the centroid prior (default 1.0)")
    g.add_argument("--entropy-weight", type=finite_float, default=0.0,
                   help="weight of the routing entropy term (default 0.0)")
    g.add_argument("--balance-weight", type=nonneg_float, default=0.0,
                   help="weight of the load-balancing loss (default 0.0)")


def parse_args(argv=None):
    """The flags, with the chosen mode's defaults (MODES) for those not given."""
    p = parser()
    args = p.parse_args(argv)
    for flag, (who, reads) in READ_BY.items():   # a flag the run would not read is refused, not ignored
        if getattr(args, flag) != p.get_default(flag) and not reads(args):
            p.error(f"--{flag.replace('_', '-')} goes with {who}")
    if args.expert and args.expert.startswith("cluster:") and not args.expert[8:].isdigit():
        p.error(f"--expert {args.expert}: expected cluster:K with K a cluster number, e.g. cluster:3")
    if args.base and args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} must split into --n-head {args.n_head} heads")
    rotary_dims = int(args.n_embd // args.n_head * args.rotary)
    if args.base and (rotary_dims < 2 or rotary_dims % 2):
        p.error(f"--rotary {args.rotary}: {rotary_dims} of the head's {args.n_embd // args.n_head} dims; "
                "expected an even number, at least 2")
    warmup_given = args.warmup is not None
    p.set_defaults(**MODES[mode_of(args)])
    args = p.parse_args(argv)
    if args.stop_at and args.stop_at > args.steps:
        p.error(f"--stop-at {args.stop_at} is after the last step (--steps {args.steps})")
    if warmup_given and args.warmup > args.steps:   # the default warmup may outlast a short test run
        p.error(f"--warmup {args.warmup} is longer than the run (--steps {args.steps})")
    return args


fresh_lora = lambda a: (a.expert or a.mixed) and not (a.full or a.adapter)   # noqa: E731
READ_BY = {   # flag: (the runs that read it, a test of args); elsewhere setting it is an error
    **{f: ("--base", lambda a: a.base) for f in
       ("tokenizer", "n_layer", "n_embd", "n_head", "rotary", "max_pos", "save_dtype")},
    **{f: ("--router", lambda a: a.router) for f in ("router_questions", "level", "rank1",
       "n_groups", "top_k", "temperature", "entropy_weight", "balance_weight")},
    **{f: ("--router without --rank1 (rank-1 experts have no task prior)", lambda a: a.router and not a.rank1)
       for f in ("experts", "prior", "tau")},
    "full": ("--expert or --mixed", lambda a: a.expert or a.mixed),
    "adapter": ("--expert or --mixed, without --full", lambda a: (a.expert or a.mixed) and not a.full),
    **{f: ("a fresh LoRA (--expert or --mixed, without --full or --adapter)", fresh_lora)
       for f in ("rank", "dropout")},
    **{f: ("a fresh LoRA or --router --rank1", lambda a: fresh_lora(a) or a.router and a.rank1)
       for f in ("alpha", "targets")},
    **{f: ("--expert, --mixed or --router", lambda a: not a.base) for f in ("model", "revision")},
    "clusters": ("--expert cluster:K or --router", lambda a: a.router or (a.expert or "").startswith("cluster:")),
    "steps_per_skill": ("--mixed, without --steps", lambda a: a.mixed and a.steps is None),
}


def mode_of(args):
    """base, router, full (--expert/--mixed --full) or lora (--expert/--mixed)."""
    return "base" if args.base else "router" if args.router else "full" if args.full else "lora"


def main():
    train(parse_args())


# ---------------------------------------------------------------------------
# 5. Checks
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


if __name__ == "__main__":
    run(main)
