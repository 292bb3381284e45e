"""
The command lines: every flag of train.py, eval.py, explain.py and cluster.py
declared once with its real default, the default paths, the argparse types
that refuse a bad value as it is parsed, and the rule that a user's mistake is
one line on stderr.

    python train.py --help        # the flags, grouped by mode
    python eval.py --help
    if __name__ == "__main__":
        run(main)                 # UserError -> "train.py: error: ...", exit 2

Chapters:
  1. types and run()   positive_int, writable_dir, ...; run() turns a UserError
                       (formats.files) into one line, and leaves every other
                       exception, a bug, its traceback; Ctrl-C as a request to
                       stop (stop_requests), and torchrun's processes
  2. train.py          the flags; each mode's defaults are train.py's MODES;
                       a flag the chosen run would not read is refused
  3. eval.py           the model, question and prompt flags (study.heldout's too)
  4. explain.py, cluster.py

Left out: configuration files; the flags are the whole interface.
"""
import argparse
import math
import os
import signal
import sys
from contextlib import contextmanager

from formats.clusters import READ_BACK, has_output
from formats.files import UserError
from data.lila import DEFAULT_DATA
from data.prompts import SHOT_POOL, SHOT_SOURCES, SHOT_TEXTS

DEFAULT_MODEL = "checkpoints/phi-tiny"    # the phi-architecture model shipped in the repository
SHIPPED = "checkpoints/phi-tiny-moe"      # experts, router and clusters for phi-tiny, in the repository
CLUSTERS = "out/clusters"                 # cluster.py --out, for cluster experts and routers
EXPERTS = "out/experts"                   # train.py --expert's outputs, one folder per expert
EMBED_CACHE = "runs/embed-cache"          # meta-question embeddings, cached on disk
DTYPE_NAMES = ["bf16", "bfloat16", "float16", "float32", "fp16", "fp32"]   # model.DTYPES' keys
FULL_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}   # a short name -> the name a run records

# ---------------------------------------------------------------------------
# 1. Argument types, and run()
# ---------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, "prog: error: ...", exit status 2
    (plain argparse prints the whole usage first)."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _type(kind, ok, expected):
    """An argparse type: text -> kind(text), refused with "expected ..." unless ok(value)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v
    return parse


positive_int = _type(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _type(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")   # not nan, inf, 0
nonneg_float = _type(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
finite_float = _type(float, math.isfinite, "a finite number")
probability = _type(float, lambda v: 0 <= v < 1, "a number in [0, 1)")                        # a dropout rate
share = _type(float, lambda v: 0 < v <= 1, "a number in (0, 1]")                              # a fraction of a size
nonempty = _type(str, lambda v: bool(v.strip()), "a non-empty string")
random_seed = _type(int, lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)")                    # torch.manual_seed's range


def default_device():
    """cuda when this machine has it, else cpu."""
    import torch      # when a parser is built, not on import: python -m study never loads torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_device(text):
    """cpu, cuda or cuda:N, and a CUDA device only where this machine has it."""
    import torch
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if kind == "cuda" and int(index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA "
                                         "device(s)")
    return text


def writable_dir(path):
    """A folder to write into: absent (it will be made) or a folder, not a file."""
    if not path.strip():
        raise argparse.ArgumentTypeError("expected a folder to write into, got ''")
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"expected a folder to write into, got {path!r} (a file)")
    return path


def writable_file(path):
    """A path a file can be written to (checked before a long run, not after)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not path.strip():
        raise argparse.ArgumentTypeError("expected a file name to write, got ''")
    if os.path.isdir(path) or (os.path.exists(parent) and not os.path.isdir(parent)):
        raise argparse.ArgumentTypeError(f"expected a file name to write, got {path!r} "
                                          f"({'a directory' if os.path.isdir(path) else parent + ' is a file'})")
    return path


def pick(args, config):
    """The dataclass `config` (a TrainConfig, ClusterConfig, Questions ...) made of
    the flags of the same names: a main hands its library code a config, not args."""
    return config(**{f: getattr(args, f) for f in config.__dataclass_fields__})


def run(main):
    """main(), with a UserError as one line on stderr and exit status 2, Ctrl-C as
    one line and 130, and a closed pipe (`| head`) as a quiet exit; any other
    exception is a bug and keeps its traceback."""
    try:
        main()
        sys.stdout.flush()       # a pipe closed early fails here, inside the try
    except UserError as e:
        print(f"{program()}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{program()}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit
        sys.exit(0)


@contextmanager
def stop_requests():
    """with stop_requests() as asked: a list that SIGINT (Ctrl-C) and SIGTERM append
    their number to, for a loop to stop at its next safe point (train.py: after the
    step, with its state saved). A second Ctrl-C stops at once (run() says so)."""
    asked = []

    def handler(signum, frame):
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.append(signum)
        print("\nstopping after this step, with its state saved (Ctrl-C again stops at once, losing it)",
              file=sys.stderr)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def processes(device):
    """(rank, world, device) under torchrun, its process group started (a CUDA
    process takes the GPU of its LOCAL_RANK); (0, 1, device) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


def stop_asked(asked, world, device):
    """Whether stop_requests() has `asked` a stop of this process, or under
    torchrun of any process (they all stop at the same step)."""
    if world == 1:
        return bool(asked)
    import torch
    import torch.distributed as dist
    flag = torch.tensor([float(bool(asked))], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def program():
    """How the program was started: train.py, or python -m study for a package."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec and spec.origin and os.path.abspath(sys.argv[0]) == spec.origin:
        return "python -m " + spec.name.removesuffix(".__main__")
    return os.path.basename(sys.argv[0])


# ---------------------------------------------------------------------------
# 2. train.py
# ---------------------------------------------------------------------------

# What may change when a run is resumed; every other flag defines the run.
NOT_THE_RUN = ("resume", "stop_at", "save_every", "device", "compile", "out")


def train_parser(modes, targets):
    p = Parser(description="Pretrain phi-tiny, or train LoRA skill experts.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--base", action="store_true", help="pretrain a phi-architecture model from scratch")
    mode.add_argument("--expert", type=nonempty, metavar="SKILL", help="train a LoRA expert on one skill, or on "
                      "cluster:K (the questions cluster.py put in cluster K)")
    mode.add_argument("--mixed", action="store_true", help="train one LoRA on all skills (baseline)")
    mode.add_argument("--router", action="store_true", help="train the two-level router over the "
                      "frozen experts in --experts")
    p.add_argument("--data", type=nonempty, default=DEFAULT_DATA, help=f"LiLA task file(s) or directory (default {DEFAULT_DATA})")
    p.add_argument("--out", type=writable_dir, default=None, help="output directory (default: --base "
                   "runs/base; --expert out/experts/SKILL, cluster:K out/cluster-experts/cluster-K; --mixed "
                   "out/mixed; with --adapter out/sequential/SKILL (or mixed); with --full out/full/SKILL "
                   "(or mixed); --router out/routers/PRIOR-LEVEL, e.g. centroid-token, or out/routers/rank1)")
    per_mode = lambda k: ", ".join(f"{'LoRA' if m == 'lora' else m} {d[k]}" for m, d in modes.items())  # noqa: E731
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
    p.add_argument("--save-every", type=positive_int, help="steps between saves of the state that --resume "
                   f"continues from, besides each dev evaluation and a stop (default {per_mode('save_every')})")
    p.add_argument("--eval-batches", type=positive_int, default=4, help="batches for the dev loss (default 4)")
    p.add_argument("--eval-questions", type=positive_int, default=200, help="dev questions for the dev accuracy "
                   "(default 200)")
    p.add_argument("--seed", type=random_seed, default=1234, help="random seed: init and data order (default 1234)")
    p.add_argument("--device", type=torch_device, default=default_device(),
                   help="cpu or cuda (default cuda when available)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                   help="dtype of the frozen base and of autocast; trainable weights stay fp32 "
                   "(default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--stop-at", type=positive_int, default=None, help="checkpoint and stop after this step; "
                   "the schedule still follows --steps, and --resume continues it (split a long run)")
    add_base_flags(p)
    add_lora_flags(p, targets)
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
    g.add_argument("--save-dtype", default="float16", choices=DTYPE_NAMES,
                   help="dtype of model.safetensors (default float16)")


def add_lora_flags(p, targets):
    g = p.add_argument_group("--expert / --mixed: LoRA on a frozen base")
    g.add_argument("--model", type=nonempty, default=DEFAULT_MODEL, help="base model: a directory (HF layout) or a "
                   f"Hugging Face id, e.g. microsoft/phi-2 (default {DEFAULT_MODEL})")
    g.add_argument("--revision", type=nonempty, default=None, help="--model id: branch, tag or commit "
                   "(default: the repository's main branch)")
    g.add_argument("--full", action="store_true", help="train every weight of the base instead of LoRA "
                   "(a plain fine-tune, the baseline that can forget); OUT gets a whole model")
    g.add_argument("--adapter", type=nonempty, default=None, help="start from this adapter instead of a fresh LoRA, e.g. "
                   "to train one LoRA skill after skill (its r, alpha, dropout and targets are used; default: none)")
    g.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r (default 8)")
    g.add_argument("--alpha", type=positive_float, default=16, help="LoRA alpha (scale alpha/r) (default 16)")
    g.add_argument("--dropout", type=probability, default=0.0, help="LoRA dropout (default 0.0)")
    g.add_argument("--targets", type=nonempty, default=",".join(targets),
                   help="modules that get LoRA (default " + ",".join(targets) + ")")
    g.add_argument("--clusters", type=nonempty, default=CLUSTERS,
                   help=f"cluster.py output, for --expert cluster:K (default {CLUSTERS})")
    g.add_argument("--steps-per-skill", type=positive_int, default=None, help="--mixed: steps = this x the "
                   "number of skills (as much as all experts together); --rank 64 matches the "
                   "parameters of eight rank-8 experts")


def add_router_flags(p):
    g = p.add_argument_group("--router: two-level grouped routing (router.py)")
    g.add_argument("--experts", type=nonempty, default=EXPERTS,
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


def train_args(modes, targets, argv=None):
    """The flags, with the chosen mode's defaults (`modes`, train.py's MODES) for
    those not given, and --out's default for the mode; `targets` are the default
    LoRA target modules (lora.DEFAULT_TARGETS)."""
    p = train_parser(modes, targets)
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
    p.set_defaults(**modes[mode_of(args)], out=default_out(args))
    args = p.parse_args(argv)
    args.dtype, args.save_dtype = (FULL_DTYPE.get(d, d) for d in (args.dtype, args.save_dtype))  # one run, one name
    if args.stop_at and args.stop_at > args.steps:
        p.error(f"--stop-at {args.stop_at} is after the last step (--steps {args.steps})")
    if "warmup" in given and args.warmup > args.steps:   # the default warmup may outlast a short test run
        p.error(f"--warmup {args.warmup} is longer than the run (--steps {args.steps})")
    if os.path.exists(os.path.join(args.out, "train_state.pt")) and not args.resume:
        p.error(f"--out {args.out} holds the train_state.pt of an earlier run; continue it with --resume, "
                "or give another --out")
    return args


def default_out(args):
    """--out when not given: each kind of run in a folder of its own, so that one never
    lands where another kind is read (a router reads every folder of --experts)."""
    if args.base:
        return "runs/base"
    if args.router:
        return os.path.join("out", "routers", "rank1" if args.rank1 else f"{args.prior}-{args.level}")
    name = "mixed" if args.mixed else args.expert.replace(":", "-")
    folder = ("full" if args.full else "sequential" if args.adapter else
              "cluster-experts" if args.expert and args.expert.startswith("cluster:") else
              "experts" if args.expert else "")
    return os.path.join("out", folder, name)


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


# ---------------------------------------------------------------------------
# 3. eval.py (and study.heldout's questions)
# ---------------------------------------------------------------------------


def add_model_flags(p):
    """The base model: which, in what dtype, on which device."""
    p.add_argument("--model", type=nonempty, default=DEFAULT_MODEL, help="HF-layout phi checkpoint directory, "
                   f"or a Hugging Face id, e.g. microsoft/phi-2 (default {DEFAULT_MODEL})")
    p.add_argument("--revision", type=nonempty, default=None, help="--model id: branch, tag or commit "
                   "(default: the repository's main branch)")
    p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="model dtype (default float32)")
    p.add_argument("--device", type=torch_device, default=default_device(),
                   help="cpu or cuda (default cuda when available)")


def add_prompt_flags(p):
    """How a prompt is built: the data its shots come from, how many, which."""
    p.add_argument("--data", type=nonempty, default=DEFAULT_DATA,
                   help=f"LiLA task file(s) or directory (default {DEFAULT_DATA})")
    p.add_argument("--shots", type=nonneg_int, default=4, help="solved examples in each prompt (0 = zero-shot; default 4)")
    p.add_argument("--shots-from", default="nearest", choices=SHOT_SOURCES,
                   help="where the shots come from: the train questions nearest to the question by the base "
                   "model's embedding (no labels read), random ones of its skill, or random ones of its "
                   "submodule (an oracle that reads the label) (default nearest)")
    p.add_argument("--shot-pool", type=positive_int, default=SHOT_POOL,
                   help=f"--shots-from nearest: train questions searched, drawn by --seed (default {SHOT_POOL})")
    p.add_argument("--shot-text", default="meta-question", choices=SHOT_TEXTS,
                   help="--shots-from nearest: what is embedded, the meta-question or the question itself "
                   "(default meta-question)")
    p.add_argument("--seed", type=random_seed, default=1234, help="seed for shot selection and --limit (default 1234)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="longest answer generated (default 32)")


def add_question_flags(p):
    """The flags that choose the model, the questions and the prompts (study.heldout's too)."""
    add_model_flags(p)
    add_prompt_flags(p)
    p.add_argument("--skills", type=nonempty, default=None, help="comma-separated skills (default: all in the data)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"], help="split to evaluate (default test)")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many questions per skill (default all)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="questions decoded together (default 32)")


def add_route_flags(p):
    """A router, its experts, and steering (eval.py --moe and explain.py)."""
    p.add_argument("--experts", type=nonempty, default=None, metavar="DIR", help="--moe: a folder holding the "
                   "router's experts by name, e.g. its experts moved (default: the adapter folders its router.json "
                   "names)")
    p.add_argument("--route", type=nonempty, default=None, metavar="SPEC", help="--moe: replace the task-level weights "
                   "by these, e.g. 'algebra=0.7,arithmetic=0.3' (expert or group names); one name forces "
                   "that expert")


def eval_parser():
    p = Parser(description="Few-shot evaluation of a phi checkpoint on LiLA math questions.")
    add_question_flags(p)
    p.add_argument("--json", type=writable_file, default=None, help="write accuracies and every prediction "
                   "to this JSON file (default: none)")
    p.add_argument("--adapter", type=nonempty, default=None, help="a LoRA expert (PEFT layout) merged into the base")
    p.add_argument("--moe", type=nonempty, default=None, metavar="ROUTER_DIR", help="evaluate the routed mixture "
                   "(train.py --router output) over its experts")
    add_route_flags(p)
    p.add_argument("--variant", default="full", choices=["full", "task-soft", "task-hard"],
                   help="--moe: two-level routing, task prior alone as weights, or top-1 expert merged (default full)")
    p.add_argument("--out", type=writable_dir, default="out/routing", help="where --moe writes routing.json and its heatmaps "
                   "(default out/routing)")
    return p


def eval_args(argv=None):
    """The flags, with the combinations that would leave one unread refused."""
    p = eval_parser()
    args = p.parse_args(argv)
    given = given_flags(p, argv, args)
    for flag in ("route", "variant", "experts", "out"):
        if flag in given and not args.moe:
            p.error(f"--{flag} needs --moe" + (" (it is where the routing report goes)" if flag == "out" else ""))
    _check_shot_flags(p, args, given)
    if args.adapter and args.moe:
        p.error("--adapter merges one expert; --moe brings its own experts")
    return args


def _check_shot_flags(p, args, given):
    for flag in ("shot_pool", "shot_text"):
        if flag in given and args.shots_from != "nearest":
            p.error(f"--{flag.replace('_', '-')} needs --shots-from nearest")


# ---------------------------------------------------------------------------
# 4. explain.py and cluster.py
# ---------------------------------------------------------------------------


def explain_args(argv=None):
    """The flags; args.moe is None when the question goes to one --adapter or to the
    base alone (--no-router)."""
    p = Parser(description="Explain how the routed mixture routes one question, and answer it; or answer it "
               "with one expert, or with the base alone.")
    p.add_argument("question", type=nonempty, help="the question, e.g. 'Solve 3*y - 1 = -13 for y.'")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--moe", type=nonempty, default=os.path.join(SHIPPED, "router"), metavar="ROUTER_DIR",
                     help=f"the router (train.py --router output) (default {SHIPPED}/router)")
    who.add_argument("--adapter", type=nonempty, default=None, metavar="DIR", help="no router: this one LoRA "
                     "expert (PEFT layout), merged into the base")
    who.add_argument("--no-router", action="store_true", help="no router and no adapter: the base alone")
    add_route_flags(p)
    p.add_argument("--clusters", type=nonempty, default=None, help="cluster.py output for the meta-question's "
                   f"cluster (default: the one the router was trained with, else {CLUSTERS})")
    add_model_flags(p)
    add_prompt_flags(p)
    args = p.parse_args(argv)
    given = given_flags(p, argv, args)
    _check_shot_flags(p, args, given)
    for flag in ("route", "experts"):
        if flag in given and (args.adapter or args.no_router):
            p.error(f"--{flag} goes with a router (--moe), not with "
                    + ("--adapter" if args.adapter else "--no-router"))
    if args.adapter or args.no_router:
        args.moe = None
    if args.shots_from == "submodule":
        p.error("--shots-from submodule reads the question's label, and the question explained has none")
    if args.clusters and not has_output(args.clusters):
        p.error(f"--clusters: {args.clusters} holds no cluster.py output ({', '.join(READ_BACK)})")
    return args


def _k_range(text):
    """--k's value: "8" -> range(8, 9), "2-16" -> range(2, 17)."""
    low, dash, high = text.partition("-")
    return range(int(low), int(high if dash else low) + 1)


cluster_k = _type(_k_range, lambda r: (len(r) == 1 and r[0] >= 1) or (len(r) > 1 and r[0] >= 2),
                  "an integer >= 1, or a range A-B with 2 <= A < B")


def cluster_args(argv=None):
    """cluster.py's flags, and python -m study.clusters's (the same run, with its report)."""
    p = Parser(prog=program(), description="Cluster the meta-questions of LiLA questions with NumPy k-means "
               "over base-model embeddings.")
    p.add_argument("--k", type=cluster_k, default=None, metavar="K|A-B", help="clusters, or a range of them "
                   "(2-16): k-means for each, keeping the k of the best silhouette, which reads no labels "
                   "(default: number of submodules in the data)")
    p.add_argument("--out", type=writable_dir, default=CLUSTERS, help=f"output directory (default {CLUSTERS}, "
                   "where train.py reads it)")
    add_model_flags(p)
    p.add_argument("--data", type=nonempty, default=DEFAULT_DATA, help=f"LiLA task file(s) or directory (default {DEFAULT_DATA})")
    p.add_argument("--split", default="train", choices=["train", "dev", "test"],
                   help="questions to cluster (train for experts; test for python -m study.clusters's report) "
                   "(default train)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--limit", type=positive_int, default=None, help="at most this many questions per skill "
                       "(a seeded sample by label; train.py --expert cluster:K then trains on these) (default all)")
    which.add_argument("--sample", type=positive_int, default=None, metavar="N", help="N questions drawn "
                       "uniformly from the whole split, whatever their skill (seeded by --seed) (default all)")
    p.add_argument("--layer", type=nonneg_int, default=None, help="hidden layer to embed (default: the middle one)")
    p.add_argument("--cosine", action="store_true", help="spherical (cosine) k-means, and the silhouette in "
                   "cosine distance (default: Euclidean)")
    p.add_argument("--seeded", type=positive_int, default=None, metavar="N", help="semi-supervised: one "
                   "cluster per skill, started at the mean of N labelled questions of that skill (seeded "
                   "k-means), for cluster experts from a few labels (default: unsupervised)")
    p.add_argument("--groups", type=positive_int, default=None, help="expert groups (default: about sqrt(k))")
    p.add_argument("--n-init", type=positive_int, default=10, help="k-means++ restarts; the best is kept (default 10)")
    p.add_argument("--seed", type=random_seed, default=0, help="random seed (k-means++, --sample, the silhouette's "
                   "sample and labelled draws) (default 0)")
    p.add_argument("--label-trials", type=positive_int, default=5, help="draws of labelled questions for seeded "
                   "k-means in python -m study.clusters's report (default 5)")
    p.add_argument("--no-raw", action="store_true", help="python -m study.clusters's report: skip the comparison "
                   "with raw (not abstracted) questions")
    p.add_argument("--batch-size", type=positive_int, default=32, help="questions embedded together (default 32)")
    p.add_argument("--cache-dir", type=writable_dir, default=EMBED_CACHE,
                   help=f"where embeddings are cached (.npy) (default {EMBED_CACHE})")
    return p.parse_args(argv)
