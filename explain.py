"""
Explaining the routed mixture on one question (AT-MoE's "interpretability"):

    python explain.py "Solve 3*y - 1 = -13 for y."                      # the shipped router
    python explain.py "What is 12 + 30?" --moe out/routers/centroid-token --route arithmetic

For one question it prints: its meta-question, the nearest cluster of
cluster.py and that cluster's majority skill, the task-level group and expert
weights, the grouped gate of every layer as a text heatmap (mean over the
generated tokens), and the answer. The prompt's shots, printed too, are as
eval.py's (--shots-from): the train questions nearest to the question's
meta-question, or random ones of the skill of its cluster (or, without
clusters, of its top expert). --route steers as in eval.py (parse_route).

Nothing imports this file: it is the last chapter, reading the others.
Left out: steering per layer or per token (the spec is one vector per run).
"""
import torch

import cli
import cluster
import model as M
from eval import Questions, parse_route
from formats import adapters
from formats.clusters import has_output, read_centroids, read_cluster_skills
from formats.routers import load_router, read_config, router_experts
from router import group_names
from data.lila import Example, load as load_examples
from data.prompts import draw_shots, prompt_ids

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


def nearest_cluster(meta, model, tok, clusters_dir):
    """(cluster id, its cluster_skills.json entry) for one meta-question, or None
    when clusters_dir has no cluster.py output."""
    if not has_output(clusters_dir):
        return None
    C, layer, cosine = read_centroids(clusters_dir, model.config)
    skills = read_cluster_skills(clusters_dir, len(C))
    c = int(cluster.nearest_centroid(cluster.embed([meta], model, tok, layer), C, cosine)[0])
    return c, skills[str(c)]


@torch.no_grad()
def explain(question, model, tok, router_dir, clusters_dir, prompts, experts=None, route=None):
    """Print the explanation of one question under the router in router_dir and
    the clusters in clusters_dir; prompts (an eval.Questions) says how its prompt is built."""
    device = model.lm_head.weight.device
    meta = cluster.meta_question(question)
    found = nearest_cluster(meta, model, tok, clusters_dir)
    router = load_router(router_dir, model)
    cfg = router.cfg
    x = cluster.embed([meta], model, tok, cfg.embed_layer) if cfg.prior != "none" else None
    train = train_split(prompts.data) if prompts.shots else []
    asked = Example(question, ("",), None, None, "test")          # no label: the nearest shots need none
    nearest = cluster.nearest_shots([asked], train, model, tok, prompts.shots,
                                    prompts.shot_pool, prompts.seed, prompts.shot_text) \
        if train and prompts.shots_from == "nearest" else None
    if not cfg.rank1:                  # base-only work (embeddings) is done: now the experts
        adapters.load_experts(model, list(router_experts(router_dir, cfg, experts).values()))
    router.to(device).attach(model).eval()
    prior = parse_route(route, cfg)[None].to(device) if route else (
        router.task.prior(x) if x is not None else None)                        # (1, E)

    print(f"question       {question}")
    print(f"meta-question  {meta}")
    skill = None
    if found:
        c, info = found
        skill = info["skill"]
        print(f"cluster        {c} of {clusters_dir}: majority skill {skill} "
              f"({100 * info['share']:.0f}% of its {info['size']} questions, mostly {info['submodule']})")
    else:
        print(f"cluster        ({clusters_dir} has no cluster.py output)")
    groups = group_names(cfg)
    if prior is not None:
        source = f"--route {route}" if route else f"{cfg.prior} task router"
        g = (prior @ router.member)[0]
        print(f"\ntask level ({source}):")
        for gi, name in enumerate(groups):
            print(f"  group {name:<40} {bar(g[gi])} {100 * g[gi]:5.1f}%")
        for e in prior[0].argsort(descending=True)[:3].tolist():
            print(f"  expert {cfg.experts[e]:<39} {bar(prior[0, e])} {100 * prior[0, e]:5.1f}%")
        skill = skill or cfg.experts[int(prior[0].argmax())]

    shots = []
    if nearest:
        shots = draw_shots(asked, nearest, prompts.shots, prompts.seed, "nearest")
    elif train and skill:                       # the skill of the question's cluster, or of its top expert
        shots = draw_shots(Example(question, ("",), skill, skill, "test"), train, prompts.shots, prompts.seed)
    print(f"\nshots ({len(shots)}, " + ("nearest by meta-question embedding" if nearest else f"random of skill {skill}")
          + ("" if shots else ": none") + ")")
    for s in shots:
        print(f"  {s.question}  ->  {s.answers[0]}")
    ids, _ = prompt_ids(tok, [(s.question, s.answers[0]) for s in shots], question)
    router.set_prior(prior)
    with router.record() as rec:
        answer = M.complete(model, tok, [ids], prompts.max_new_tokens)[0].strip()
    w = rec.weights()[0]                                                          # (L, E)
    layers = [f"layer {l}" for l in range(cfg.n_layers)]
    print(f"\ngrouped gate per layer, mean over the generated tokens ({len(shots)}-shot prompt):")
    print(text_heatmap((w @ router.member.cpu()).tolist(), layers, [f"G{g}" for g in range(len(groups))]))
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


def main():
    args = cli.explain_args()
    clusters = args.clusters or read_config(args.moe).clusters_dir or cli.CLUSTERS   # a missing --moe: before the model
    model, tok = M.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    prompts = Questions(data=args.data, split="test", skills=None, limit=None, shots=args.shots,
                        shots_from=args.shots_from, shot_pool=args.shot_pool, shot_text=args.shot_text,
                        seed=args.seed, batch_size=1, max_new_tokens=args.max_new_tokens)
    explain(args.question, model, tok, args.moe, clusters, prompts, args.experts, args.route)


if __name__ == "__main__":
    cli.run(main)
