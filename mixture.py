"""
The mixture that train.py --router trains: frozen experts (or fresh rank-1 ones)
on one base model, a router over them, and the task-level prior of every
training and dev question.

    routing = build_router(model, tok, args, train_ex, dev_ex, device)
    routing.train_rows(first, train_ex)       # the batch's task-level priors, before each step
    routing.router                            # what trains: the gates and the mix

How a router is built from experts: each expert's centroid is the mean
meta-question embedding (cluster.py) of the training questions that are its
own, by skill or, for cluster-K experts, by cluster; the experts' groups are a
k-means of those centroids; the task-level router is fitted to the same labels.
The router itself (gates, mix, files) is router.py's.

Left out: training experts and router jointly, except rank-1 experts, which
have no questions of their own and so no task-level prior.
"""
from contextlib import contextmanager

import numpy as np
import torch

import adapters
import cluster
import router as R


def expert_labels(examples, names, clusters_dir, model, tok):
    """The expert of each example: its skill, or (experts named cluster-K) its
    cluster as cluster.clusters_of places it, the way that expert's training
    questions were chosen; -1 where none applies."""
    if all(n.startswith("cluster-") for n in names):
        ids, _ = cluster.clusters_of(clusters_dir, examples, model, tok)
        index = {int(n.split("-")[1]): i for i, n in enumerate(names)}
        return np.array([index.get(c, -1) for c in ids.tolist()])
    return np.array([names.index(e.skill) if e.skill in names else -1 for e in examples])


class Routing:
    """What train.py needs around a router: the task-level priors of the
    training rows and of the dev questions, looked up by question."""

    def __init__(self, router, examples, X):
        self.router = router
        self.prior = {} if X is None else {e.question: p for e, p in zip(examples, router.task.prior(X))}

    def train_rows(self, first, train_ex):
        self.set([train_ex[i] for i in first])

    def set(self, examples):
        if self.router.cfg.prior == "none":
            self.router.set_prior(None)
        else:
            self.router.set_prior(torch.stack([self.prior[e.question] for e in examples]))

    def dev_batch(self, questions):
        """evaluate()'s route: the task-level priors of each batch of dev questions."""
        @contextmanager
        def route(indices):
            self.set([questions[i] for i in indices])
            yield []
        return route


def build_rank1(model, args, train_ex, dev_ex, device):
    """Intuition-MoR1E's variant: args.rank1 fresh rank-1 experts in args.n_groups
    contiguous groups, trained jointly with the grouped gates on mixed data.
    They have no labelled questions, hence no centroids: no task prior."""
    for p in model.parameters():
        p.requires_grad_(False)
    E, G = args.rank1, min(args.n_groups, args.rank1)
    groups = [[int(e) for e in g] for g in np.array_split(np.arange(E), G)]   # contiguous, sizes differ by <= 1
    cfg = R.RouterConfig(experts=[f"r1-{e:02d}" for e in range(E)], groups=groups,
                       hidden_size=model.config.hidden_size, n_layers=model.config.num_hidden_layers,
                       level=args.level, prior="none", top_k=args.top_k, temperature=args.temperature,
                       entropy_weight=args.entropy_weight, balance_weight=args.balance_weight,
                       rank1=E, rank1_alpha=args.alpha, targets=args.targets.split(","))
    router = R.Router(cfg, np.zeros((E, model.config.hidden_size), np.float32)).own_experts(model)
    router.to(device).attach(model)
    for p in router.task.parameters():
        p.requires_grad_(False)
    n = sum(p.numel() for p in router.rank1)
    print(f"router over {E} fresh rank-1 experts ({n:,} parameters) in {G} groups, "
          f"gate per {args.level}, no task prior")
    return Routing(router, train_ex + dev_ex, None)


def build_router(model, tok, args, train_ex, dev_ex, device):
    """Load the experts into `model` (frozen), make groups from the expert
    centroids, fit the task router, attach a fresh Router; return a Routing."""
    if args.rank1:
        return build_rank1(model, args, train_ex, dev_ex, device)
    dirs = adapters.expert_dirs(args.experts)
    names = list(dirs)
    layer = cluster.resolve_layer(model.config)
    X = cluster.meta_embeddings(train_ex + dev_ex, model, tok, layer)          # the base alone, before the experts
    Xtr, labels = X[:len(train_ex)], expert_labels(train_ex, names, args.clusters, model, tok)
    adapters.load_experts(model, list(dirs.values()))
    for p in model.parameters():
        p.requires_grad_(False)
    missing = [n for i, n in enumerate(names) if not (labels == i).any()]
    if missing:
        raise ValueError(f"no training questions for the experts {missing}; expert names must be "
                         f"skills in the data or cluster-K (with --clusters)")
    centroids = np.stack([Xtr[labels == i].mean(0) for i in range(len(names))])   # (E, C)
    n_groups = min(args.n_groups, len(names))
    groups = [g for g in cluster.expert_groups(centroids, n_groups, seed=args.seed) if g]
    cfg = R.RouterConfig(experts=names, groups=groups, hidden_size=model.config.hidden_size,
                         n_layers=model.config.num_hidden_layers, level=args.level, prior=args.prior,
                         top_k=args.top_k, temperature=args.temperature, tau=args.tau,
                         entropy_weight=args.entropy_weight, balance_weight=args.balance_weight,
                         embed_layer=layer, extra={"experts_dir": args.experts, "clusters_dir": args.clusters})
    router = R.Router(cfg, centroids)
    keep = labels >= 0
    acc_loss = router.task.fit(Xtr[keep], labels[keep])
    router.to(device).attach(model)
    for p in router.task.parameters():
        p.requires_grad_(False)
    print(f"router over {len(names)} experts {names} in groups {R.group_names(cfg)}; "
          f"task prior '{args.prior}' (classifier loss {acc_loss:.3f}), gate per {args.level}")
    return Routing(router, train_ex + dev_ex, X)
