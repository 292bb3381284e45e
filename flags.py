"""
The command lines of train.py and eval.py: every flag with its real default,
train.py's defaults per mode (MODES), and the combinations that are refused
rather than ignored (a flag the run would not read is an error).

    python train.py --help        # the flags, grouped by mode
    python eval.py --help

The scripts read top to bottom without their flags in the way; this file is
their reference. study.py shares eval.py's question flags (add_question_flags).
The flag types (positive_int, writable_dir, ...) and the one-line errors are
data/cli.py's.
"""
import os

import torch

import cluster
import lora
import model as M
from data.cli import (Parser, torch_device, finite_float, nonempty, nonneg_float, nonneg_int, positive_float,
                      positive_int, probability, random_seed, share, writable_dir, writable_file)
from data.lila import DEFAULT_DATA
from data.prompts import SHOT_SOURCES

SHIPPED = "checkpoints/phi-tiny-moe"     # experts, router and clusters for phi-tiny, in the repository

# ---------------------------------------------------------------------------
# 1. train.py
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


def train_parser():
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
    g.add_argument("--revision", type=nonempty, default=None, help="--model id: branch, tag or commit "
                   "(default: the repository's main branch)")
    g.add_argument("--full", action="store_true", help="train every weight of the base instead of LoRA "
                   "(a plain fine-tune, the baseline that can forget); OUT gets a whole model")
    g.add_argument("--adapter", type=nonempty, default=None, help="start from this adapter instead of a fresh LoRA, e.g. "
                   "to train one LoRA skill after skill (its r, alpha, dropout and targets are used; default: none)")
    g.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r (default 8)")
    g.add_argument("--alpha", type=positive_float, default=16, help="LoRA alpha (scale alpha/r) (default 16)")
    g.add_argument("--dropout", type=probability, default=0.0, help="LoRA dropout (default 0.0)")
    g.add_argument("--targets", type=nonempty, default=",".join(lora.DEFAULT_TARGETS),
                   help="modules that get LoRA (default " + ",".join(lora.DEFAULT_TARGETS) + ")")
    g.add_argument("--clusters", type=nonempty, default="out/clusters",
                   help="cluster.py output, for --expert cluster:K (default out/clusters)")
    g.add_argument("--steps-per-skill", type=positive_int, default=None, help="--mixed: steps = this x the "
                   "number of skills (as much as all experts together); --rank 64 matches the "
                   "parameters of eight rank-8 experts")


def add_router_flags(p):
    g = p.add_argument_group("--router: two-level grouped routing (router.py)")
    g.add_argument("--experts", type=nonempty, default="out/experts",
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


def train_args(argv=None):
    """The flags, with the chosen mode's defaults (MODES) for those not given."""
    p = train_parser()
    args = p.parse_args(argv)
    given = given_flags(p, argv, args)
    for flag, (who, reads) in READ_BY.items():   # a flag the run would not read is refused, not ignored
        if flag in given and not reads(args):
            p.error(f"--{flag.replace('_', '-')} goes with {who}")
    if args.expert and args.expert.startswith("cluster:") and not args.expert[8:].isdigit():
        p.error(f"--expert {args.expert}: expected cluster:K with K a cluster number, e.g. cluster:3")
    if args.base and args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} must split into --n-head {args.n_head} heads")
    rotary_dims = int(args.n_embd // args.n_head * args.rotary)
    if args.base and (rotary_dims < 2 or rotary_dims % 2):
        p.error(f"--rotary {args.rotary}: {rotary_dims} of the head's {args.n_embd // args.n_head} dims; "
                "expected an even number, at least 2")
    p.set_defaults(**MODES[mode_of(args)])
    args = p.parse_args(argv)
    if args.stop_at and args.stop_at > args.steps:
        p.error(f"--stop-at {args.stop_at} is after the last step (--steps {args.steps})")
    if "warmup" in given and args.warmup > args.steps:   # the default warmup may outlast a short test run
        p.error(f"--warmup {args.warmup} is longer than the run (--steps {args.steps})")
    if args.out is None:
        name = "mixed" if args.mixed else "router" if args.router else args.expert.replace(":", "-")
        folder = "full" if args.full else "experts" if args.expert else ""
        args.out = "runs/base" if args.base else os.path.join("out", folder, name)
    if os.path.exists(os.path.join(args.out, "train_state.pt")) and not args.resume:
        p.error(f"--out {args.out} holds the train_state.pt of an earlier run; continue it with --resume, "
                "or give another --out")
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


def given_flags(p, argv, args):
    """The flags on the command line (args parsed from argv), even those given their
    default value: one more parse with every default swapped for a marker tells them apart."""
    defaults = {dest: p.get_default(dest) for dest in vars(args)}
    p.set_defaults(**dict.fromkeys(defaults, UNSET))
    try:
        return {dest for dest, value in vars(p.parse_args(argv)).items() if value is not UNSET}
    finally:
        p.set_defaults(**defaults)


UNSET = object()


def mode_of(args):
    """base, router, full (--expert/--mixed --full) or lora (--expert/--mixed)."""
    return "base" if args.base else "router" if args.router else "full" if args.full else "lora"


def identity(args):
    """The flags that define a run (a --resume must give the same)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_THE_RUN}


# ---------------------------------------------------------------------------
# 2. eval.py (and study.py's questions)
# ---------------------------------------------------------------------------


def add_question_flags(p):
    """The flags that choose the model, the questions and the prompts (study.py's too)."""
    p.add_argument("--model", type=nonempty, default=M.DEFAULT_MODEL, help="HF-layout phi checkpoint directory, "
                   f"or a Hugging Face id, e.g. microsoft/phi-2 (default {M.DEFAULT_MODEL})")
    p.add_argument("--revision", type=nonempty, default=None, help="--model id: branch, tag or commit "
                   "(default: the repository's main branch)")
    p.add_argument("--data", type=nonempty, default=DEFAULT_DATA,
                   help=f"LiLA task file(s) or directory (default {DEFAULT_DATA})")
    p.add_argument("--shots", type=nonneg_int, default=4, help="solved examples in each prompt (0 = zero-shot; default 4)")
    p.add_argument("--shots-from", default="nearest", choices=SHOT_SOURCES,
                   help="where the shots come from: the train questions nearest to the question by the base "
                   "model's embedding (no labels read), random ones of its skill, or random ones of its "
                   "submodule (an oracle that reads the label) (default nearest)")
    p.add_argument("--shot-pool", type=positive_int, default=cluster.SHOT_POOL,
                   help=f"--shots-from nearest: train questions searched, drawn by --seed (default {cluster.SHOT_POOL})")
    p.add_argument("--shot-text", default="meta-question", choices=cluster.SHOT_TEXTS,
                   help="--shots-from nearest: what is embedded, the meta-question or the question itself "
                   "(default meta-question)")
    p.add_argument("--skills", type=nonempty, default=None, help="comma-separated skills (default: all in the data)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"], help="split to evaluate (default test)")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many questions per skill (default all)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="questions decoded together (default 32)")
    p.add_argument("--seed", type=random_seed, default=1234, help="seed for shot selection and --limit (default 1234)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="longest answer generated (default 32)")
    p.add_argument("--dtype", default="float32", choices=sorted(M.DTYPES), help="model dtype (default float32)")
    p.add_argument("--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default cuda when available)")


def eval_parser():
    p = Parser(description="Few-shot evaluation of a phi checkpoint on LiLA math questions.")
    add_question_flags(p)
    p.add_argument("--json", type=writable_file, default=None, help="write accuracies and every prediction "
                   "to this JSON file (default: none)")
    p.add_argument("--adapter", type=nonempty, default=None, help="a LoRA expert (PEFT layout) merged into the base")
    p.add_argument("--moe", type=nonempty, default=None, metavar="ROUTER_DIR", help="evaluate the routed mixture "
                   "(train.py --router output) over its experts")
    p.add_argument("--experts", type=nonempty, default=None, help="--moe: the experts directory (default: the one it was trained on)")
    p.add_argument("--variant", default="full", choices=["full", "task-soft", "task-hard"],
                   help="--moe: two-level routing, task prior alone as weights, or top-1 expert merged (default full)")
    p.add_argument("--route", type=nonempty, default=None, metavar="SPEC", help="--moe: replace the task-level weights "
                   "by these, e.g. 'algebra=0.7,arithmetic=0.3' (expert or group names); one name forces "
                   "that expert")
    p.add_argument("--explain", type=nonempty, default=None, metavar="QUESTION", help="explain the routing of one "
                   f"question (router --moe, default {SHIPPED}/router) and answer it")
    p.add_argument("--clusters", type=nonempty, default=None, help="--explain: cluster.py output for the meta-question's "
                   "cluster (default: the one the router was trained with)")
    p.add_argument("--out", type=writable_dir, default="out/routing", help="where --moe writes routing.json and its heatmaps "
                   "(default out/routing)")
    return p


def eval_args(argv=None):
    """The flags, with the combinations that would leave one unread refused."""
    p = eval_parser()
    args = p.parse_args(argv)
    given = given_flags(p, argv, args)
    for flag, needs in (("route", "moe"), ("variant", "moe"), ("experts", "moe"), ("clusters", "explain")):
        if flag in given and not (getattr(args, needs) or args.explain):
            p.error(f"--{flag} needs --{needs}")
    set_flags = [f for f in ("out", "json", "skills", "split", "limit", "batch_size", "variant") if f in given]
    if args.explain and set_flags:    # one question, printed: nothing of these is read
        p.error(f"--{set_flags[0].replace('_', '-')} does not go with --explain")
    if "out" in given and not args.moe:
        p.error("--out needs --moe (it is where the routing report goes)")
    for flag in ("shot_pool", "shot_text"):
        if flag in given and args.shots_from != "nearest":
            p.error(f"--{flag.replace('_', '-')} needs --shots-from nearest")
    if args.explain and args.shots_from == "submodule":
        p.error("--shots-from submodule reads the question's label, and --explain's question has none")
    if args.adapter and (args.moe or args.explain):
        p.error("--adapter merges one expert; --moe and --explain bring their own experts")
    if args.clusters and not cluster.has_output(args.clusters):
        p.error(f"--clusters: {args.clusters} holds no cluster.py output ({', '.join(cluster.READ_BACK)})")
    return args
