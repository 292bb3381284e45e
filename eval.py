"""
Few-shot evaluation of a phi checkpoint on LiLA math questions, per skill.

    python eval.py --shots 4                         # phi-tiny on the generated test split
    python eval.py --model /path/to/phi-2 --data /path/to/lila --limit 100 --json out/eval.json
    python eval.py --adapter out/experts/algebra     # base + one LoRA expert, merged
    python eval.py --moe out/routers/centroid-token  # the routed mixture
    python eval.py --moe out/routers/centroid-token --route "algebra=0.7,arithmetic=0.3"   # steered

For every question: k solved questions from the train split, by default the
ones nearest to it by the base model's meta-question embedding (--shots-from;
data/prompts.py, cluster.nearest_shots), then the question; greedy decoding with the KV cache, batched,
stopping at the first newline (model.py); exact match after normalisation
(data/score.py); and the answer's NLL under teacher forcing. A prompt too long
for the model's context loses its oldest shots: the table's title and the JSON
say how many the prompts kept. The result is a markdown table per skill and
submodule and the time it took, on stdout (what the run is doing goes to
stderr, so `> table.md` keeps the results alone), and optionally a JSON file
with every prediction. An expert (--adapter) is merged into the base weights
first, so it costs nothing at inference. A routed mixture (--moe) records, for every
question, the expert and group weights of every layer, and writes a routing
report per skill (routing.json and heatmaps) to --out, one run at a time (its
lock). Steering (--route) replaces the router's task-level weights by the
user's: a route spec names experts or groups with weights. Worked example,
experts [algebra, arithmetic, calculus] in groups [[0, 2], [1]] (names
"algebra+calculus", "arithmetic"):

    "algebra=0.7,arithmetic=0.3"      -> [0.7, 0.3, 0.0]
    "algebra+calculus=1,arithmetic=1" -> [0.25, 0.5, 0.25]   a group's weight is split evenly
    "calculus"                        -> [0.0, 0.0, 1.0]     one name: forced

A single name forces that expert, merged into the weights: exactly --adapter
with that expert. Several names replace the task prior, and in the two-level
router the layer-wise gate still mixes in with its learned weight lambda_l
(--variant task-soft uses the weights alone). explain.py explains one
question; comparing runs is python -m study's.

Chapters:
  1. the loop       evaluate(): the prompts sorted by length and batched, greedy
                    answers through the KV cache, then answer_nll() of the gold
                    answers from that same cache
  2. the questions  Questions (the question flags), the train split they must not
                    meet and their shots' pool; Evaluator, one model and one set of
                    questions, evaluated as the model is at each call
  3. the mixture    moe(): steering (parse_route), the task-level weights, then one
                    function per variant: the two-level router (full), the task
                    level alone (task-soft), the top expert merged (task-hard, and
                    a route that forces one expert)
  4. the report     the markdown table, the shots the prompts kept, the routing
                    report (routing.json and a heatmap per skill)
  5. main           the command line
  6. checks         a router and the evaluation asked of it fit together

Reference: lm-evaluation-harness's conventions for generative QA (few-shot
"Question:/Answer:" prompts, greedy, stop at newline, exact match).
Left out: multiple-choice scoring, chain-of-thought, and sampled metrics (pass@k).
"""
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
import cluster
import lora
import model as M
import router as routing
from formats import adapters
from formats.files import UserError, lock, write_json
from formats.pictures import heatmap
from formats.routers import load_router, read_config, router_experts
from data.lila import check_disjoint, check_distinct, check_submodules, load as load_examples
from data.prompts import SHOT_POOL, question_ids, select, shot_pool
from data.score import accuracy, answer_nlls, is_correct, mean_accuracy

# ---------------------------------------------------------------------------
# 1. The loop
# ---------------------------------------------------------------------------


@torch.no_grad()
def answer_nll(model, prompts, answers):
    """Mean negative log-likelihood per token (nats) of each gold answer after its
    prompt, by teacher forcing: a continuous score that still moves when a weak
    model gets almost nothing exactly right. prompts and answers are token-id lists.

    Only the answers go through the model. The prompts' keys and values are in the
    KV cache that generate(prompts, ..., keep_cache=G) left, left-padded to the
    longest prompt L. Each row feeds its last prompt token again (slot L-1, which
    gets the same values) and its answer but the last token; the logits at those
    positions predict the answer's tokens."""
    device = model.lm_head.weight.device
    B, L, G = len(prompts), max(map(len, prompts)), max(map(len, answers))
    idx = torch.zeros(B, G, dtype=torch.long)
    valid = torch.zeros(B, L - 1 + G, dtype=torch.bool)                 # (B, S): the real slots
    for b, (p, a) in enumerate(zip(prompts, answers)):
        idx[b, :len(a)] = torch.tensor(p[-1:] + a[:-1])
        valid[b, L - len(p):L - 1 + len(a)] = True
    pos = torch.tensor([len(p) - 1 for p in prompts])[:, None] + torch.arange(G)   # (B, 1) + (G,) -> (B, G)
    logits = model(idx.to(device), pos.to(device), valid.to(device), start=L - 1)  # (B, G, V)
    return [F.cross_entropy(logits[b, :len(a)].float(), torch.tensor(a, device=device)).item()
            for b, a in enumerate(answers)]


@torch.no_grad()
def evaluate(model, tok, examples, pool, shots=4, batch_size=32, seed=1234,
             max_new_tokens=32, desc="eval", per_batch=None, source="skill"):
    """Answer every example k-shot; return one record per example (input order),
    with the shots its prompt kept ("shots": fewer than k where the prompt would
    not fit the context, data.prompts.question_ids). The shots come from pool as
    data.prompts.draw_shots reads it for `source` (Evaluator.build builds it:
    shot_source).
    per_batch(indices), if given, is a context entered around each batch's answers
    (a router sets the batch's task-level weights there: moe(), and train.py's dev
    accuracy). It yields a list, which holds one dict of extra fields per row of
    the batch once it exits, or stays empty.

    Prompts are sorted by length before batching, so a batch holds prompts of
    similar length and little compute goes to padding."""
    pool = shot_pool(pool, source) if isinstance(pool, list) else pool
    ids, gold, kept = zip(*(question_ids(tok, e, pool, shots, seed, model.config.max_position_embeddings,
                                         max_new_tokens, source) for e in examples))
    order = sorted(range(len(examples)), key=lambda i: len(ids[i]))
    predictions, extra = [None] * len(examples), [{} for _ in examples]
    nll = [None] * len(examples)
    bar = tqdm(total=len(examples), desc=desc, unit="q", leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        prompts, golds = [ids[i] for i in chunk], [gold[i] for i in chunk]
        try:
            with per_batch(chunk) if per_batch else nullcontext([]) as extras:
                texts = M.complete(model, tok, prompts, max_new_tokens, keep_cache=max(map(len, golds)))
            # The gold answers, from the prompts' cache: after the per_batch context, so
            # a router does not record them, while the batch's routing still holds.
            for i, v in zip(chunk, answer_nll(model, prompts, golds)):
                nll[i] = v
        finally:
            model.clear_cache()
        for j, (i, text) in enumerate(zip(chunk, texts)):
            predictions[i] = text.strip()
            extra[i] = extras[j] if extras else {}
        bar.update(len(chunk))
    bar.close()
    return [{"question": e.question, "prediction": p, "answers": list(e.answers),
             "skill": e.skill, "submodule": e.submodule, "correct": is_correct(p, e.answers),
             "answer_nll": v, "shots": k, **x}
            for e, p, x, v, k in zip(examples, predictions, extra, nll, kept)]


# ---------------------------------------------------------------------------
# 2. The questions, and the Evaluator that asks them
# ---------------------------------------------------------------------------


@dataclass
class Questions:
    """Which questions are asked and how their prompts are built: the question
    flags of eval.py and study.heldout (cli.add_question_flags, with their defaults)."""
    data: str
    split: str                 # train, dev or test
    skills: str | None         # comma-separated, or None for all
    limit: int | None          # at most this many per skill, drawn by seed
    shots: int
    shots_from: str            # nearest, skill or submodule (data.prompts.SHOT_SOURCES)
    shot_pool: int             # nearest: train questions searched
    shot_text: str             # nearest: meta-question or question
    seed: int
    batch_size: int
    max_new_tokens: int


def train_questions(q, skills):
    """The train split of q.data: the shots' pool, and what the questions asked must
    not be, at any shot count. Nearest shots search all of it (--skills picks the
    questions asked, not the shots). At 0 shots data without train questions is
    fine: nothing to check them against."""
    if q.shots:
        return load_examples(q.data, split="train", skills=None if q.shots_from == "nearest" else skills)
    return [e for e in load_examples(q.data, skills=skills) if e.split == "train"]


def shot_source(model, tok, examples, train, shots, source, pool_size, seed, text):
    """The pool that data.prompts.draw_shots reads for `source`: the train split
    grouped by skill or submodule, or each question's nearest train questions by
    the base model's embedding (cluster.nearest_shots: call it before any adapter
    is attached). Nothing for 0 shots."""
    if not shots:
        return {}
    if source == "nearest":
        return cluster.nearest_shots(examples, train, model, tok, shots, pool_size, seed, text)
    return shot_pool(train, source)


@dataclass
class Evaluator:
    """One model and one set of questions with their prompts' settings:
    ev(desc) evaluates the model as it is at that moment (plain, an adapter
    merged, experts attached), so configurations are compared on the same
    questions. study/heldout.py passes one around."""
    model: object
    tok: object
    examples: list
    pool: dict
    shots: int = 4
    batch_size: int = 32
    seed: int = 1234
    max_new_tokens: int = 32
    source: str = "skill"      # where the shots come from (data.prompts.SHOT_SOURCES)

    def __call__(self, desc="eval", shots=None, examples=None, per_batch=None):
        return evaluate(self.model, self.tok, self.examples if examples is None else examples, self.pool,
                        self.shots if shots is None else shots, self.batch_size, self.seed,
                        self.max_new_tokens, desc, per_batch, self.source)

    @classmethod
    def build(cls, model, tok, q):
        """The questions that q (a Questions) names, with their shots' pool, for model."""
        skills = q.skills.split(",") if q.skills else None
        examples = load_examples(q.data, split=q.split, skills=skills)
        train = train_questions(q, skills)
        check_distinct(examples, f"{q.data}, {q.split} split")     # all of it, whatever --limit draws
        if q.split != "train":
            check_disjoint(examples, train, q.data)
        if q.shots and q.shots_from == "submodule":
            check_submodules(examples, f"{q.data}, {q.split} split")
        examples = select(examples, q.limit, q.seed)
        pool = shot_source(model, tok, examples, train, q.shots, q.shots_from, q.shot_pool, q.seed, q.shot_text)
        print(f"evaluating {len(examples)} {q.split} questions, {q.shots}-shot"
              + (f", shots from {q.shots_from}" if q.shots else ""), file=sys.stderr)
        return cls(model, tok, examples, pool, q.shots, q.batch_size, q.seed, q.max_new_tokens, q.shots_from)

    @classmethod
    def dev(cls, model, tok, dev_ex, train, n, source, seed):
        """train.py's dev accuracy: n of the dev questions dev_ex (shared among the
        skills), 4-shot, the shots from the train questions `train`: the nearest by
        the base's embedding (found before any adapter is attached), as the study
        evaluates, or (--base, with no base to embed with) random ones of the skill."""
        questions = select(dev_ex, max(1, n // len({e.skill for e in dev_ex})), seed)
        pool = shot_source(model, tok, questions, train, 4, source, SHOT_POOL, seed, "meta-question")
        return cls(model, tok, questions, pool, shots=4, batch_size=64, source=source)


# ---------------------------------------------------------------------------
# 3. The routed mixture: steering, the task-level weights, one function per variant
# ---------------------------------------------------------------------------


def parse_route(spec, cfg):
    """Route spec -> expert weights (E,) that sum to 1 (worked examples: this file's docstring)."""
    experts, groups = cfg.experts, routing.group_names(cfg)
    known = f"experts: {', '.join(experts)}; groups: {', '.join(groups)}"
    w = torch.zeros(len(experts), dtype=torch.float64)     # 1e39 and 1e-50 are fine before normalising
    names = [part.partition("=")[0].strip() for part in spec.split(",")]
    if len(set(names)) < len(names):
        raise UserError(f"--route {spec!r}: a name comes more than once; expected each expert or group once")
    for part in spec.split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        try:
            v = float(value) if eq else 1.0
        except ValueError:
            raise UserError(f"--route {spec!r}: the weight of {name!r} must be a number, got {value!r}")
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"--route {spec!r}: the weight of {name!r} must be a finite number >= 0, "
                             f"got {value!r}")
        if name in experts:
            w[experts.index(name)] += v
        elif name in groups:
            members = cfg.groups[groups.index(name)]
            w[members] += v / len(members)
        else:
            raise UserError(f"--route {spec!r}: unknown name {name!r}; {known}")
    if not 0 < w.sum() < math.inf:
        raise UserError(f"--route {spec!r}: the weights sum to {w.sum().item():g}, expected a finite sum > 0")
    return (w / w.sum()).float()


def forced_expert(w):
    """The expert index if w is one-hot, else None."""
    return int(w.argmax()) if w.max() == 1 else None


def task_weights(ev, router, variant, route):
    """The task-level expert weights of every question of ev, (N, E): the route
    spec's, the same for all (said on stderr), or the router's task prior of the
    questions' meta-question embeddings (from the base model: call it before any
    expert is attached). None for the full router without a task level (--prior none)."""
    cfg = router.cfg
    if route:
        w = parse_route(route, cfg)                                                  # (E,)
        print(f"--route {route}: expert weights {dict(zip(cfg.experts, w.tolist()))}", file=sys.stderr)
        return w.expand(len(ev.examples), -1)                                        # (N, E)
    if cfg.prior == "none" and variant == "full":
        return None
    return router.task.prior(cluster.meta_embeddings(ev.examples, ev.model, ev.tok, cfg.embed_layer))   # (N, E)


def _rounded(w):
    """Routing weights as a record keeps them: 5 decimals are plenty to read and
    plot, and keep the file small (a float32 written in full takes 20 characters,
    and 64 rank-1 experts x 8 layers x 1,500 questions made 26 MB)."""
    return torch.round(w.double(), decimals=5).tolist()


def _moe_full(ev, router, weights, paths):
    """The two-level router attached over its experts (paths; rank-1 experts come
    inside the router): each batch's task-level weights (B, E), if any, are its
    prior, and the grouped gate of every layer mixes the experts per token. Each
    record's routing: per layer, the expert and group weights at the positions
    that produced the answer, and the prior."""
    model, device = ev.model, ev.model.lm_head.weight.device
    if not router.cfg.rank1:
        adapters.load_experts(model, paths)
    router.to(device).attach(model).eval()

    @contextmanager
    def per_batch(idx):
        """The batch's task-level weights in; its routing, per row, out."""
        p = None if weights is None else weights[idx]                     # (B, E)
        router.set_prior(None if p is None else p.to(device))
        extras = []
        with router.record() as rec:
            yield extras
        for j, w in enumerate(rec.weights()):                             # (L, E) each, on the CPU
            extras.append({"routing": {"experts": _rounded(w), "groups": _rounded(w @ router.member.cpu()),
                                       "prior": None if p is None else _rounded(p[j])}})
    try:
        return ev("moe (full)", per_batch=per_batch)
    finally:
        router.detach()
        lora.remove_lora(model, merge=False)


def _moe_soft(ev, weights, paths):
    """The task level alone (task-soft): every question's expert weights (N, E)
    fixed for all its tokens and layers, no gate. Each record's routing: its weights."""
    model = ev.model
    adapters.load_experts(model, paths)

    @contextmanager
    def per_batch(idx):
        lora.set_expert_weights(model, weights[idx].to(model.lm_head.weight.device))    # (B, E)
        yield []
    try:
        records = ev("moe (task-soft)", per_batch=per_batch)
    finally:
        lora.remove_lora(model, merge=False)
    for r, w in zip(records, weights):
        r["routing"] = {"prior": _rounded(w)}
    return records


def _moe_hard(ev, weights, paths, names):
    """Each question answered by its top expert (weights (N, E)), merged into the
    base weights; records in order. Each record's routing: that expert and the weights."""
    records = [None] * len(ev.examples)
    top = weights.argmax(-1).tolist()
    for e, path in enumerate(paths):
        idx = [i for i, t in enumerate(top) if t == e]
        if not idx:
            continue
        chosen = adapters.with_adapter(ev.model, path, lambda: ev(names[e], examples=[ev.examples[i] for i in idx]))
        for i, r in zip(idx, chosen):
            r["routing"] = {"expert": names[e], "prior": _rounded(weights[i])}
            records[i] = r
    return records


def moe(ev, router_dir, variant="full", experts=None, route=None):
    """Evaluate base + experts + router (train.py --router's router_dir) on ev's
    questions; returns (records, router), and leaves the model as it was. experts
    is a folder that holds the router's experts (None: where router.json says),
    route a steering spec (parse_route) or None. The variants:
      full       _moe_full: the task prior mixed with the per-layer grouped gate
      task-soft  _moe_soft: the task-level weights alone, fixed per question
      task-hard  _moe_hard: each question's top task-level expert, merged
    A route replaces the task-level weights (task_weights); a route that names
    one expert forces it, merged (_moe_hard): exactly --adapter with that expert."""
    router = load_router(router_dir, ev.model)          # rank-1 experts come inside the router
    paths = list(router_experts(router_dir, router.cfg, experts).values())
    _check_moe(router_dir, router.cfg, variant, route)
    weights = task_weights(ev, router, variant, route)                   # (N, E), or None
    if variant == "task-hard" or (route and forced_expert(weights[0]) is not None):
        return _moe_hard(ev, weights, paths, router.cfg.experts), router
    if variant == "task-soft":
        return _moe_soft(ev, weights, paths), router
    return _moe_full(ev, router, weights, paths), router


# ---------------------------------------------------------------------------
# 4. The report
# ---------------------------------------------------------------------------


def markdown(records, title):
    lines = [f"### {title}", "", "| skill | submodule | correct | total | accuracy | answer NLL |",
             "|---|---|---:|---:|---:|---:|"]
    subs, nll = accuracy(records, "submodule"), answer_nlls(records)
    for skill, (c, n) in accuracy(records).items():
        lines.append(f"| **{skill}** | (all) | {c} | {n} | **{100 * c / n:.1f}%** | {nll[skill]:.3f} |")
        for sub, (sc, sn) in subs.items():
            if sub.split("__")[0] == skill and sub != skill:
                lines.append(f"| | {sub.split('__', 1)[-1]} | {sc} | {sn} | {100 * sc / sn:.1f}% | |")
    lines.append(f"| **mean over skills** | | | {len(records)} | **{100 * mean_accuracy(records):.1f}%** "
                 f"| {sum(nll.values()) / len(nll):.3f} |")
    return "\n".join(lines)


def shots_used(records, shots, context, max_new_tokens):
    """The shots the prompts held against the k asked (data.prompts.question_ids
    drops a prompt's oldest shots until it fits the context): as the table's title
    says it, "40-shot asked, 3-12 used (trimmed to fit the 1024-token context)", or
    "4-shot" where every prompt kept all k; and as the JSON report keeps it,
    {"fewest", "most", "trimmed": prompts that lost shots}. Trimming is said on stderr."""
    kept = [r["shots"] for r in records]
    used = {"fewest": min(kept), "most": max(kept), "trimmed": sum(k < shots for k in kept)}
    if not used["trimmed"]:
        return f"{shots}-shot", used
    print(f"{used['trimmed']} of {len(records)} prompts lost their oldest shots to fit the model's {context}-token "
          f"context with --max-new-tokens {max_new_tokens} free; the fewest kept: {used['fewest']} of --shots {shots}",
          file=sys.stderr)
    span = f"{used['fewest']}" if used["fewest"] == used["most"] else f"{used['fewest']}-{used['most']}"
    return f"{shots}-shot asked, {span} used (trimmed to fit the {context}-token context)", used


def entropy(p):
    p = np.asarray(p, dtype=np.float64)
    return float(-(p * np.log(np.clip(p, 1e-12, None))).sum())


def routing_report(records, router, out_dir):
    """Per skill: mean expert and group weights per layer -> routing.json and a
    heatmap PNG per skill (layers x experts)."""
    cfg = router.cfg
    os.makedirs(out_dir, exist_ok=True)
    report = {"experts": cfg.experts, "groups": routing.group_names(cfg), "per_skill": {}}
    for skill in sorted({r["skill"] for r in records}):
        rs = [r["routing"] for r in records if r["skill"] == skill and "experts" in r["routing"]]
        if not rs:
            continue
        experts = np.mean([r["experts"] for r in rs], axis=0)             # (L, E)
        groups = np.mean([r["groups"] for r in rs], axis=0)               # (L, G)
        per_question = [np.mean(r["groups"], 0) for r in rs]               # (G,) each: mean over layers
        report["per_skill"][skill] = {
            "experts": experts.tolist(), "groups": groups.tolist(), "questions": len(rs),
            "group_entropy": float(np.mean([entropy(g) for g in per_question])),
            "groups_above_10pct": float(np.mean([(g > 0.1).sum() for g in per_question]))}
        heatmap(experts.tolist(), [f"layer {l}" for l in range(len(experts))], cfg.experts,
                f"{skill}: mean expert weight per layer", os.path.join(out_dir, f"routing_{skill}.png"),
                fmt="{:.2f}", diverging=False)
    write_json(os.path.join(out_dir, "routing.json"), report)
    print(f"wrote {out_dir}/routing.json", file=sys.stderr)
    return report


# ---------------------------------------------------------------------------
# 5. main
# ---------------------------------------------------------------------------


def main():
    args = cli.eval_args()
    if args.moe:                # a router that cannot do what is asked is refused before the model loads
        cfg = read_config(args.moe)
        _check_moe(args.moe, cfg, args.variant, args.route)
        router_experts(args.moe, cfg, args.experts)
        if args.route:
            parse_route(args.route, cfg)
    if args.adapter:            # so is a folder that holds no adapter
        adapters.read_config(args.adapter)
    routed = args.moe and args.variant == "full"      # the routing report goes to --out, written by one run at a time
    with lock(args.out) if routed else nullcontext():
        model, tok = M.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
        ev = Evaluator.build(model, tok, cli.pick(args, Questions))
        if args.adapter:
            adapters.load_adapter(ev.model, args.adapter)
            lora.merge_lora(ev.model)
            print(f"merged the adapter {args.adapter} into the base weights", file=sys.stderr)
        t0 = time.time()
        if args.moe:
            records, router = moe(ev, args.moe, args.variant, args.experts, args.route)
        else:
            records = ev()
        seconds = time.time() - t0
        name = os.path.basename(os.path.normpath(args.moe or args.adapter or args.model))
        if args.moe:
            name += f" (route {args.route})" if args.route else f" ({args.variant})"
        shots, used = shots_used(records, args.shots, model.config.max_position_embeddings, args.max_new_tokens)
        print(markdown(records, f"{name}, {shots}, {args.split} split"))
        print(f"\n{len(records)} questions in {seconds:.1f}s ({len(records) / seconds:.1f} questions/s)")
        report = {"model": args.model, "shots": args.shots, "shots_used": used,
                  "shots_from": args.shots_from if args.shots else None,
                  "split": args.split, "seconds": round(seconds, 1),
                  "accuracy": {k: c / n for k, (c, n) in accuracy(records).items()},
                  "counts": {k: {"correct": c, "total": n} for k, (c, n) in accuracy(records).items()},
                  "mean_accuracy": mean_accuracy(records), "answer_nll": answer_nlls(records), "records": records}
        if routed:
            report["routing"] = routing_report(records, router, args.out)
        if args.json:
            write_json(args.json, report)
            print(f"wrote {args.json}", file=sys.stderr)


# ---------------------------------------------------------------------------
# 6. Checks
# ---------------------------------------------------------------------------


def _check_moe(router_dir, cfg, variant, route):
    """A router and the evaluation asked of it fit together."""
    if cfg.rank1 and variant != "full":
        raise UserError(f"{router_dir} holds rank-1 experts without a task prior: only --variant full")
    if route and (cfg.rank1 or cfg.prior == "none"):
        raise UserError(f"--route: {router_dir} has no task level to replace (rank-1 experts or --prior none)")


if __name__ == "__main__":
    cli.run(main)
