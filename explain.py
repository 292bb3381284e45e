"""
Steering and explaining the routed mixture: what eval.py --route and
eval.py --explain do.

    python eval.py --moe out/routers/centroid-token --route "algebra=0.7,arithmetic=0.3"
    python eval.py --moe out/routers/centroid-token --route algebra     # force one expert
    python eval.py --explain "Solve 3*y - 1 = -13 for y."               # the shipped router

Steering (AT-MoE's "controllability"). A route spec names experts or groups
with weights, e.g. "algebra=0.7,arithmetic=0.3". parse_route turns it into one
expert-weight vector (E,) that replaces the router's task-level weights for
every question; a group's weight is split evenly among its experts, and the
weights are normalised to sum to 1. Worked example, experts [algebra,
arithmetic, calculus] in groups [[0, 2], [1]] (names "algebra+calculus",
"arithmetic"):

    "algebra=0.7,arithmetic=0.3"      -> [0.7, 0.3, 0.0]
    "algebra+calculus=1,arithmetic=1" -> [0.25, 0.5, 0.25]
    "calculus"                        -> [0.0, 0.0, 1.0]   one name: forced

A single name forces that expert: eval.py merges it into the weights, so the
result is exactly --adapter with that expert. Several names replace the task
prior, and in the two-level router the layer-wise gate still mixes in with its
learned weight lambda_l (--variant task-soft uses the weights alone).

Explaining (AT-MoE's "interpretability"). explain() prints, for one question:
its meta-question, the nearest cluster of cluster.py and that cluster's
majority skill, the task-level group and expert weights, the grouped gate of
every layer as a text heatmap (mean over the generated tokens), and the answer.
The prompt's shots, printed too, are as eval.py's (--shots-from): the train
questions nearest to the question's meta-question, or random ones of the
skill of its cluster (or, without clusters, of its top expert).

Left out: steering per layer or per token (the spec is one vector per run).
"""
import math
import os

import numpy as np
import torch

import adapters
import cluster
import flags
import mixture
import model as M
from data.files import heatmap, write_json
from data.lila import Example, load as load_examples
from data.prompts import draw_shots, prompt_ids

BLOCKS = " ▁▂▃▄▅▆▇█"   # a weight w in [0, 1] is drawn as BLOCKS[round(8 w)]


def parse_route(spec, cfg):
    """Route spec -> expert weights (E,) that sum to 1 (see the module docstring)."""
    experts, groups = cfg.experts, mixture.group_names(cfg)
    known = f"experts: {', '.join(experts)}; groups: {', '.join(groups)}"
    w = torch.zeros(len(experts), dtype=torch.float64)     # 1e39 and 1e-50 are fine before normalising
    names = [part.partition("=")[0].strip() for part in spec.split(",")]
    if len(set(names)) < len(names):
        raise ValueError(f"--route {spec!r}: a name comes more than once; expected each expert or group once")
    for part in spec.split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        try:
            v = float(value) if eq else 1.0
        except ValueError:
            raise ValueError(f"--route {spec!r}: the weight of {name!r} must be a number, got {value!r}")
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"--route {spec!r}: the weight of {name!r} must be a finite number >= 0, "
                             f"got {value!r}")
        if name in experts:
            w[experts.index(name)] += v
        elif name in groups:
            members = cfg.groups[groups.index(name)]
            w[members] += v / len(members)
        else:
            raise ValueError(f"--route {spec!r}: unknown name {name!r}; {known}")
    if not 0 < w.sum() < math.inf:
        raise ValueError(f"--route {spec!r}: the weights sum to {w.sum().item():g}, expected a finite sum > 0")
    return (w / w.sum()).float()


def forced_expert(w):
    """The expert index if w is one-hot, else None."""
    return int(w.argmax()) if w.max() == 1 else None


def bar(w):
    return BLOCKS[int(round(8 * min(max(float(w), 0.0), 1.0)))]


def text_heatmap(rows, row_names, col_names):
    """Weights in [0, 1] as a block-character table, two digits beside each block."""
    width = max(5, *(len(c) for c in col_names))
    head = " " * 9 + " ".join(c[:width].rjust(width) for c in col_names)
    lines = [head]
    for name, row in zip(row_names, rows):
        cells = [f"{bar(v)}{100 * v:3.0f}%".rjust(width) for v in row]
        lines.append(f"{name:<9}" + " ".join(cells))
    return "\n".join(lines)


def short(names, n=8):
    return [x if len(x) <= n else x[:n - 1] + "~" for x in names]


def _is_cluster_info(info):
    """cluster_skills.json's entry of one cluster: its majority skill and submodule, share and size."""
    return isinstance(info, dict) and isinstance(info.get("skill"), str) and isinstance(info.get("submodule"), str) \
        and isinstance(info.get("share"), (int, float)) and isinstance(info.get("size"), int)


def nearest_cluster(meta, model, tok, clusters_dir):
    """(cluster id, its cluster_skills.json entry) for one meta-question, or None
    when clusters_dir has no cluster.py output."""
    if not cluster.has_output(clusters_dir):
        return None
    C, layer, cosine = cluster.saved_centroids(clusters_dir, model.config)
    skills = cluster.read_json(os.path.join(clusters_dir, "cluster_skills.json"),
                                lambda s: isinstance(s, dict) and all(_is_cluster_info(s.get(str(c)))
                                                                      for c in range(len(C))),
                                f"an entry (skill, share, size, submodule) for each of the {len(C)} clusters")
    c = int(cluster.nearest_centroid(cluster.embed([meta], model, tok, layer), C, cosine)[0])
    return c, skills[str(c)]


@torch.no_grad()
def explain(args):
    """Print the explanation of args.explain (one question) under the router args.moe
    (default: the shipped one) and the clusters it was trained with (or args.clusters)."""
    model, tok = M.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    args.moe = args.moe or os.path.join(flags.SHIPPED, "router")
    args.clusters = args.clusters or mixture.load_config(args.moe).extra.get("clusters_dir", "out/clusters")
    question = args.explain
    meta = cluster.meta_question(question)
    found = nearest_cluster(meta, model, tok, args.clusters)
    router = mixture.load_router(args.moe, model)
    cfg = router.cfg
    x = cluster.embed([meta], model, tok, cfg.embed_layer) if cfg.prior != "none" else None
    train = train_split(args.data) if args.shots else []
    asked = Example(question, ("",), None, None, "test")          # no label: the nearest shots need none
    nearest = cluster.nearest_shots([asked], train, model, tok, args.shots,
                                    args.shot_pool, args.seed, args.shot_text) \
        if train and args.shots_from == "nearest" else None
    if not cfg.rank1:                  # base-only work (embeddings) is done: now the experts
        adapters.load_experts(model, list(mixture.router_experts(args.moe, cfg, args.experts).values()))
    router.to(args.device).attach(model).eval()
    prior = parse_route(args.route, cfg)[None].to(args.device) if args.route else (
        router.task.prior(x) if x is not None else None)                        # (1, E)

    print(f"question       {question}")
    print(f"meta-question  {meta}")
    skill = None
    if found:
        c, info = found
        skill = info["skill"]
        print(f"cluster        {c} of {args.clusters}: majority skill {skill} "
              f"({100 * info['share']:.0f}% of its {info['size']} questions, mostly {info['submodule']})")
    else:
        print(f"cluster        ({args.clusters} has no cluster.py output)")
    groups = mixture.group_names(cfg)
    if prior is not None:
        source = f"--route {args.route}" if args.route else f"{cfg.prior} task router"
        g = (prior @ router.M)[0]
        print(f"\ntask level ({source}):")
        for gi, name in enumerate(groups):
            print(f"  group {name:<40} {bar(g[gi])} {100 * g[gi]:5.1f}%")
        for e in prior[0].argsort(descending=True)[:3].tolist():
            print(f"  expert {cfg.experts[e]:<39} {bar(prior[0, e])} {100 * prior[0, e]:5.1f}%")
        skill = skill or cfg.experts[int(prior[0].argmax())]

    shots = []
    if nearest:
        shots = draw_shots(asked, nearest, args.shots, args.seed, "nearest")
    elif train and skill:                       # the skill of the question's cluster, or of its top expert
        shots = draw_shots(Example(question, ("",), skill, skill, "test"), train, args.shots, args.seed)
    print(f"\nshots ({len(shots)}, " + ("nearest by meta-question embedding" if nearest else f"random of skill {skill}")
          + ("" if shots else ": none") + ")")
    for s in shots:
        print(f"  {s.question}  ->  {s.answers[0]}")
    ids, _ = prompt_ids(tok, [(s.question, s.answers[0]) for s in shots], question)
    router.set_prior(prior)
    with router.record() as rec:
        answer = M.complete(model, tok, [ids], args.max_new_tokens)[0].strip()
    w = rec.weights()[0]                                                          # (L, E)
    layers = [f"layer {l}" for l in range(cfg.n_layers)]
    print(f"\ngrouped gate per layer, mean over the generated tokens ({len(shots)}-shot prompt):")
    print(text_heatmap((w @ router.M.cpu()).tolist(), layers, [f"G{g}" for g in range(len(groups))]))
    print("  " + "; ".join(f"G{g} = {name}" for g, name in enumerate(groups)))
    if not cfg.rank1:
        print(text_heatmap(w.tolist(), layers, short(cfg.experts)))
    print(f"\nanswer         {answer}")


def train_split(data):
    """The train questions of `data` for the prompt's shots, or none (zero-shot, said
    once) where there are none."""
    try:
        return load_examples(data, split="train")
    except (OSError, ValueError) as err:        # no data here: zero-shot
        print(f"(no shots: {err})")
        return []


def routing_report(records, router, out_dir):
    """Per skill: mean expert and group weights per layer -> routing.json and a
    heatmap PNG per skill (layers x experts)."""
    cfg = router.cfg
    os.makedirs(out_dir, exist_ok=True)
    report = {"experts": cfg.experts, "groups": mixture.group_names(cfg), "per_skill": {}}
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
    print(f"wrote {out_dir}/routing.json")
    return report


def entropy(p):
    p = np.asarray(p, dtype=np.float64)
    return float(-(p * np.log(np.clip(p, 1e-12, None))).sum())
