"""
Explaining one question: how the routed mixture routes it (AT-MoE's
"interpretability"), or what one expert, or the base alone, answers.

    python explain.py "Solve 3*y - 1 = -13 for y."                      # the shipped router
    python explain.py "What is 12 + 30?" --moe out/routers/centroid-token --route arithmetic
    python explain.py "Solve 3*y - 1 = -13 for y." --adapter out/experts/algebra   # one expert, merged
    python explain.py "Solve 3*y - 1 = -13 for y." --no-router          # the base alone

For one question, explain() finds and show() prints: its meta-question, the
nearest cluster of cluster.py and that cluster's majority skill, the prompt's
shots and the answer; under a router also the task-level group and expert
weights and the grouped gate of every layer as a text heatmap (mean over the
generated tokens).
The shots are as eval.py's (--shots-from): the train questions nearest to the
question's meta-question, or random ones of the skill of its cluster (or,
without clusters, of the router's top expert). Without train questions (no
data folder) the prompt has none, and says why. --route steers as in eval.py
(parse_route).

Chapters:
  1. text heatmaps  a weight in [0, 1] drawn as a block character
  2. the steps      the question's cluster, the router attached with its task
                    level, the prompt's shots, the answer with the gate per layer
  3. explain()      the steps in order, into an Explanation
  4. show()         an Explanation printed
  5. main           the command line

Nothing imports this file: it is the last chapter, reading the others.
Left out: steering per layer or per token (the spec is one vector per run).
"""
from dataclasses import dataclass

import torch

import cli
import cluster
import lora
import model as M
from eval import Questions, parse_route
from formats import adapters
from formats.clusters import has_output, read_centroids, read_cluster_skills
from formats.routers import load_router, read_config, router_experts
from router import group_names
from data.lila import Example, load as load_examples
from data.prompts import draw_shots, prompt_ids

# ---------------------------------------------------------------------------
# 1. Text heatmaps
# ---------------------------------------------------------------------------


BLOCKS = " ▁▂▃▄▅▆▇█"   # a weight w in [0, 1] is drawn as BLOCKS[round(8 w)]


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


# ---------------------------------------------------------------------------
# 2. The steps
# ---------------------------------------------------------------------------


def nearest_cluster(meta, model, tok, clusters_dir):
    """(cluster id, its cluster_skills.json entry) for one meta-question, or None
    when clusters_dir has no cluster.py output."""
    if not has_output(clusters_dir):
        return None
    C, layer, cosine = read_centroids(clusters_dir, model.config)
    skills = read_cluster_skills(clusters_dir, len(C))
    c = int(cluster.nearest_centroid(cluster.embed([meta], model, tok, layer), C, cosine)[0])
    return c, skills[str(c)]


def train_split(data):
    """(the train questions of `data` for the prompt's shots, None), or ([], why
    not) where there are none: zero-shot."""
    try:
        return load_examples(data, split="train"), None
    except (OSError, ValueError) as err:        # no data here: zero-shot
        return [], str(err)


def attach_router(model, router_dir, experts, route, x):
    """The router in router_dir over its experts, attached to model, and its
    task-level weights (1, E) for the question (x its embedding, or None), or the
    --route ones; (router, None) without a task level."""
    device = model.lm_head.weight.device
    router = load_router(router_dir, model)
    cfg = router.cfg
    if not cfg.rank1:
        adapters.load_experts(model, list(router_experts(router_dir, cfg, experts).values()))
    router.to(device).attach(model).eval()
    prior = parse_route(route, cfg)[None].to(device) if route else (
        router.task.prior(x) if x is not None else None)                        # (1, E)
    return router, prior


def prompt_shots(asked, train, nearest, skill, prompts):
    """The prompt's shots and how they were chosen, in words: the nearest train
    questions, or random ones of the skill; none without train questions or a skill."""
    if not train:
        return [], "none: " + ("no train questions" if prompts.shots else "--shots 0")
    if nearest:
        return draw_shots(asked, nearest, prompts.shots, prompts.seed, "nearest"), \
            "nearest by meta-question embedding"
    if not skill:
        return [], "none: random shots of the skill, but no cluster or router names the question's skill"
    return draw_shots(Example(asked.question, ("",), skill, skill, "test"), train, prompts.shots, prompts.seed), \
        f"random of skill {skill}"


def routed_answer(model, tok, router, prior, ids, max_new_tokens):
    """The answer to the prompt ids under the router (task-level weights `prior`
    (1, E), or None), and the grouped gate's expert weights per layer (L, E), mean
    over the generated tokens."""
    router.set_prior(prior)
    with router.record() as rec:
        answer = M.complete(model, tok, [ids], max_new_tokens)[0].strip()
    return answer, rec.weights()[0]                                               # (L, E)


# ---------------------------------------------------------------------------
# 3. explain(): the steps in order
# ---------------------------------------------------------------------------


@dataclass
class Explanation:
    """One question explained: what explain() finds, and show() prints."""
    question: str
    meta: str                     # its meta-question (cluster.meta_question)
    clusters_dir: str
    cluster: tuple | None         # nearest_cluster(): (id, its cluster_skills.json entry), or None
    no_data: str | None           # why there are no train questions for the shots, or None
    adapter: str | None           # the expert merged into the base, or None
    shots: list                   # the prompt's shots (data.lila.Example), and how they were chosen:
    how: str
    answer: str = ""
    cfg: object = None            # the router's config, or None: an adapter or the base alone
    task: str | None = None       # where the task-level weights come from, or None without a task level
    prior: object = None          # (E,) the task-level expert weights
    prior_groups: object = None   # (G,) their sum per group
    gate: object = None           # (L, E) the grouped gate per layer, mean over the generated tokens
    gate_groups: object = None    # (L, G) its sum per group


@torch.no_grad()
def explain(question, model, tok, clusters_dir, prompts, router_dir=None, experts=None, route=None, adapter=None):
    """Explain one question (show() prints the Explanation): under the router in
    router_dir (its experts found as router_experts finds them, in the folder
    `experts` if given; steered by the spec `route`), or with the expert `adapter`
    merged into the base, or, with neither, by the base alone. clusters_dir gives
    the question's cluster; prompts (an eval.Questions) says how its prompt is built."""
    meta = cluster.meta_question(question)
    found = nearest_cluster(meta, model, tok, clusters_dir)
    cfg = read_config(router_dir) if router_dir else None
    x = cluster.embed([meta], model, tok, cfg.embed_layer) if cfg and cfg.prior != "none" else None
    train, no_data = train_split(prompts.data) if prompts.shots else ([], None)
    asked = Example(question, ("",), None, None, "test")          # no label: the nearest shots need none
    nearest = cluster.nearest_shots([asked], train, model, tok, prompts.shots,
                                    prompts.shot_pool, prompts.seed, prompts.shot_text) \
        if train and prompts.shots_from == "nearest" else None
    # the base-only work (embeddings) is done: now the router's experts, or the adapter
    router, prior = attach_router(model, router_dir, experts, route, x) if router_dir else (None, None)
    if adapter:
        adapters.load_adapter(model, adapter)
        lora.merge_lora(model)
    skill = found[1]["skill"] if found else None
    if prior is not None:
        skill = skill or router.cfg.experts[int(prior[0].argmax())]
    shots, how = prompt_shots(asked, train, nearest, skill, prompts)
    ex = Explanation(question, meta, clusters_dir, found, no_data, adapter, shots, how)
    ids, _ = prompt_ids(tok, [(s.question, s.answers[0]) for s in shots], question)
    if not router:
        ex.answer = M.complete(model, tok, [ids], prompts.max_new_tokens)[0].strip()
        return ex
    ex.cfg = router.cfg
    if prior is not None:
        ex.task = f"--route {route}" if route else f"{router.cfg.prior} task router"
        ex.prior, ex.prior_groups = prior[0].cpu(), (prior @ router.member)[0].cpu()   # (E,), (G,)
    ex.answer, ex.gate = routed_answer(model, tok, router, prior, ids, prompts.max_new_tokens)
    ex.gate_groups = ex.gate @ router.member.cpu()                                 # (L, E) @ (E, G) -> (L, G)
    return ex


# ---------------------------------------------------------------------------
# 4. show(): an Explanation printed
# ---------------------------------------------------------------------------


def show_task_level(ex):
    """The task-level weights: every group's, and the top three experts'."""
    print(f"\ntask level ({ex.task}):")
    for g, name in enumerate(group_names(ex.cfg)):
        print(f"  group {name:<40} {bar(ex.prior_groups[g])} {100 * ex.prior_groups[g]:5.1f}%")
    for e in ex.prior.argsort(descending=True)[:3].tolist():
        print(f"  expert {ex.cfg.experts[e]:<39} {bar(ex.prior[e])} {100 * ex.prior[e]:5.1f}%")


def show_gate(ex):
    """The grouped gate per layer as text heatmaps: group weights, then expert weights."""
    layers = [f"layer {l}" for l in range(ex.cfg.n_layers)]
    groups = group_names(ex.cfg)
    print(f"\ngrouped gate per layer, mean over the generated tokens ({len(ex.shots)}-shot prompt):")
    print(text_heatmap(ex.gate_groups.tolist(), layers, [f"G{g}" for g in range(len(groups))]))
    print("  " + "; ".join(f"G{g} = {name}" for g, name in enumerate(groups)))
    if not ex.cfg.rank1:
        print(text_heatmap(ex.gate.tolist(), layers, short(ex.cfg.experts)))


def show(ex):
    """Print an Explanation: the question, its cluster, the task level, the
    prompt's shots, the gate per layer and the answer."""
    if ex.no_data:
        print(f"(no shots: {ex.no_data})")
    print(f"question       {ex.question}")
    print(f"meta-question  {ex.meta}")
    if not ex.cluster:
        print(f"cluster        ({ex.clusters_dir} has no cluster.py output)")
    else:
        c, info = ex.cluster
        print(f"cluster        {c} of {ex.clusters_dir}: majority skill {info['skill']} "
              f"({100 * info['share']:.0f}% of its {info['size']} questions, mostly {info['submodule']})")
    if ex.prior is not None:
        show_task_level(ex)
    if ex.adapter:
        print(f"adapter        {ex.adapter}, merged into the base")
    elif not ex.cfg:
        print("adapter        none: the base alone (--no-router)")
    print(f"\nshots ({len(ex.shots)}, {ex.how})")
    for s in ex.shots:
        print(f"  {s.question}  ->  {s.answers[0]}")
    if ex.gate is not None:
        show_gate(ex)
    print(f"\nanswer         {ex.answer}")


# ---------------------------------------------------------------------------
# 5. main
# ---------------------------------------------------------------------------


def main():
    args = cli.explain_args()
    cfg = read_config(args.moe) if args.moe else None      # a missing router, expert or adapter: before the model
    if cfg:
        router_experts(args.moe, cfg, args.experts)
    if args.adapter:
        adapters.read_config(args.adapter)
    clusters = args.clusters or (cfg and cfg.clusters_dir) or cli.CLUSTERS
    model, tok = M.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    prompts = Questions(data=args.data, split="test", skills=None, limit=None, shots=args.shots,
                        shots_from=args.shots_from, shot_pool=args.shot_pool, shot_text=args.shot_text,
                        seed=args.seed, batch_size=1, max_new_tokens=args.max_new_tokens)
    show(explain(args.question, model, tok, clusters, prompts, args.moe, args.experts, args.route, args.adapter))


if __name__ == "__main__":
    cli.run(main)
