"""
Explaining one question: how the routed mixture routes it (AT-MoE's
"interpretability"), or what one expert, or the base alone, answers.

    python explain.py "Solve 3*y - 1 = -13 for y."                      # the shipped router
    python explain.py "What is 12 + 30?" --moe out/routers/centroid-token --route arithmetic
    python explain.py "Solve 3*y - 1 = -13 for y." --adapter out/experts/algebra   # one expert, merged
    python explain.py "Solve 3*y - 1 = -13 for y." --no-router          # the base alone

For one question it prints: its meta-question, the nearest cluster of
cluster.py and that cluster's majority skill, the prompt's shots and the
answer; under a router also the task-level group and expert weights and the
grouped gate of every layer as a text heatmap (mean over the generated tokens).
The shots are as eval.py's (--shots-from): the train questions nearest to the
question's meta-question, or random ones of the skill of its cluster (or,
without clusters, of the router's top expert). Without train questions (no
data folder) the prompt has none, and says why. --route steers as in eval.py
(parse_route).

Nothing imports this file: it is the last chapter, reading the others.
Left out: steering per layer or per token (the spec is one vector per run).
"""
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
def explain(question, model, tok, clusters_dir, prompts, router_dir=None, experts=None, route=None, adapter=None):
    """Print the explanation of one question: under the router in router_dir (its
    experts found as router_experts finds them, in the folder `experts` if given;
    steered by `route`), or with the expert `adapter` merged into the base, or,
    with neither, by the base alone. clusters_dir gives the question's cluster;
    prompts (an eval.Questions) says how its prompt is built."""
    meta = cluster.meta_question(question)
    found = nearest_cluster(meta, model, tok, clusters_dir)
    cfg = read_config(router_dir) if router_dir else None
    x = cluster.embed([meta], model, tok, cfg.embed_layer) if cfg and cfg.prior != "none" else None
    train = train_split(prompts.data) if prompts.shots else []
    asked = Example(question, ("",), None, None, "test")          # no label: the nearest shots need none
    nearest = cluster.nearest_shots([asked], train, model, tok, prompts.shots,
                                    prompts.shot_pool, prompts.seed, prompts.shot_text) \
        if train and prompts.shots_from == "nearest" else None
    print(f"question       {question}")
    print(f"meta-question  {meta}")
    skill = print_cluster(found, clusters_dir)
    # the base-only work (embeddings) is done: now the router's experts, or the adapter
    router, prior = attach_router(model, router_dir, experts, route, x) if router_dir else (None, None)
    if prior is not None:
        skill = skill or router.cfg.experts[int(prior[0].argmax())]
    if adapter:
        adapters.load_adapter(model, adapter)
        lora.merge_lora(model)
        print(f"adapter        {adapter}, merged into the base")
    elif not router:
        print("adapter        none: the base alone (--no-router)")
    shots, how = prompt_shots(asked, train, nearest, skill, prompts)
    print(f"\nshots ({len(shots)}, {how})")
    for s in shots:
        print(f"  {s.question}  ->  {s.answers[0]}")
    ids, _ = prompt_ids(tok, [(s.question, s.answers[0]) for s in shots], question)
    if router:
        answer = routed_answer(model, tok, router, prior, ids, prompts.max_new_tokens, len(shots))
    else:
        answer = M.complete(model, tok, [ids], prompts.max_new_tokens)[0].strip()
    print(f"\nanswer         {answer}")


def print_cluster(found, clusters_dir):
    """The question's cluster (nearest_cluster's `found`) in one line; returns its majority skill, or None."""
    if not found:
        print(f"cluster        ({clusters_dir} has no cluster.py output)")
        return None
    c, info = found
    print(f"cluster        {c} of {clusters_dir}: majority skill {info['skill']} "
          f"({100 * info['share']:.0f}% of its {info['size']} questions, mostly {info['submodule']})")
    return info["skill"]


def attach_router(model, router_dir, experts, route, x):
    """The router in router_dir over its experts, attached to model, and its
    task-level weights (1, E) for the question (x its embedding, or None), or the
    --route ones, printed; (router, None) without a task level."""
    device = model.lm_head.weight.device
    router = load_router(router_dir, model)
    cfg = router.cfg
    if not cfg.rank1:
        adapters.load_experts(model, list(router_experts(router_dir, cfg, experts).values()))
    router.to(device).attach(model).eval()
    prior = parse_route(route, cfg)[None].to(device) if route else (
        router.task.prior(x) if x is not None else None)                        # (1, E)
    if prior is not None:
        g = (prior @ router.member)[0]
        print(f"\ntask level ({f'--route {route}' if route else f'{cfg.prior} task router'}):")
        for gi, name in enumerate(group_names(cfg)):
            print(f"  group {name:<40} {bar(g[gi])} {100 * g[gi]:5.1f}%")
        for e in prior[0].argsort(descending=True)[:3].tolist():
            print(f"  expert {cfg.experts[e]:<39} {bar(prior[0, e])} {100 * prior[0, e]:5.1f}%")
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


def routed_answer(model, tok, router, prior, ids, max_new_tokens, n_shots):
    """The answer to the prompt ids under the router (task-level weights `prior`),
    and its grouped gate per layer printed, group and expert weights."""
    cfg = router.cfg
    router.set_prior(prior)
    with router.record() as rec:
        answer = M.complete(model, tok, [ids], max_new_tokens)[0].strip()
    w = rec.weights()[0]                                                          # (L, E)
    layers = [f"layer {l}" for l in range(cfg.n_layers)]
    groups = group_names(cfg)
    print(f"\ngrouped gate per layer, mean over the generated tokens ({n_shots}-shot prompt):")
    print(text_heatmap((w @ router.member.cpu()).tolist(), layers, [f"G{g}" for g in range(len(groups))]))
    print("  " + "; ".join(f"G{g} = {name}" for g, name in enumerate(groups)))
    if not cfg.rank1:
        print(text_heatmap(w.tolist(), layers, short(cfg.experts)))
    return answer


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
    explain(args.question, model, tok, clusters, prompts, args.moe, args.experts, args.route, args.adapter)


if __name__ == "__main__":
    cli.run(main)
