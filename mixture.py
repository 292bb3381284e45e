"""
The routed mixture as a whole: frozen experts (or fresh rank-1 ones) on one
base model and a router over them. This file builds one for train.py --router,
with the task-level prior of every training and dev question, and saves and
loads the router's files.

    routing = build_router(model, tok, args, train_ex, dev_ex, device)
    routing.train_rows(first, train_ex)       # the batch's task-level priors, before each step
    routing.router                            # what trains: the gates and the mix
    save_router(routing.router, "out/router") # router.safetensors + router.json, one set
    router = load_router("out/router", model) # every field and tensor checked

How a router is built from experts: each expert's centroid is the mean
meta-question embedding (cluster.py) of the training questions that are its
own, by skill or, for cluster-K experts, by cluster; the experts' groups are a
k-means of those centroids; the task-level router is fitted to the same labels.
The router itself (gates, mix) is router.py's; its files are written here.

Left out: training experts and router jointly, except rank-1 experts, which
have no questions of their own and so no task-level prior.
"""
import json
import math
import numbers
import os
from contextlib import contextmanager
from dataclasses import MISSING, asdict, fields

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import adapters
import cluster
import kmeans
import lora
import router as R
from data.files import sha256, write_atomic, write_json


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


def n_groups(args, E):
    """--n-groups, or 3 (fewer with fewer than 3 experts); more groups than experts is an error.
    So is a --top-k above E (checked here, before the questions are embedded)."""
    if args.n_groups is not None and args.n_groups > E:
        raise ValueError(f"--n-groups {args.n_groups}: more groups than the {E} experts")
    if args.top_k > E:
        raise ValueError(f"--top-k {args.top_k}: more than the {E} experts (0 keeps them all)")
    return args.n_groups or min(3, E)


def build_rank1(model, args, train_ex, dev_ex, device):
    """Intuition-MoR1E's variant: args.rank1 fresh rank-1 experts in args.n_groups
    contiguous groups, trained jointly with the grouped gates on mixed data.
    They have no labelled questions, hence no centroids: no task prior."""
    for p in model.parameters():
        p.requires_grad_(False)
    E, G = args.rank1, n_groups(args, args.rank1)
    groups = [[int(e) for e in g] for g in np.array_split(np.arange(E), G)]   # contiguous, sizes differ by <= 1
    cfg = R.RouterConfig(experts=[f"r1-{e:02d}" for e in range(E)], groups=groups,
                       hidden_size=model.config.hidden_size, n_layers=model.config.num_hidden_layers,
                       level=args.level, prior="none", top_k=args.top_k, temperature=args.temperature,
                       entropy_weight=args.entropy_weight, balance_weight=args.balance_weight,
                       rank1=E, rank1_alpha=args.alpha, targets=args.targets.split(","))
    router = make_router(cfg, np.zeros((E, model.config.hidden_size), np.float32)).own_experts(model)
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
    names, G = list(dirs), n_groups(args, len(dirs))
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
    groups = [g for g in kmeans.expert_groups(centroids, G, seed=args.seed) if g]
    cfg = R.RouterConfig(experts=names, groups=groups, hidden_size=model.config.hidden_size,
                         n_layers=model.config.num_hidden_layers, level=args.level, prior=args.prior,
                         top_k=args.top_k, temperature=args.temperature, tau=args.tau,
                         entropy_weight=args.entropy_weight, balance_weight=args.balance_weight,
                         embed_layer=layer, extra={"experts_dir": args.experts, "clusters_dir": args.clusters,
                                                   "experts_sha256": experts_sha256(dirs)})
    router = make_router(cfg, centroids)
    keep = labels >= 0
    acc_loss = router.task.fit(Xtr[keep], labels[keep])
    router.to(device).attach(model)
    for p in router.task.parameters():
        p.requires_grad_(False)
    print(f"router over {len(names)} experts {names} in groups {group_names(cfg)}; "
          f"task prior '{args.prior}' (classifier loss {acc_loss:.3f}), gate per {args.level}")
    return Routing(router, train_ex + dev_ex, X)


# ---------------------------------------------------------------------------
# Files: router.safetensors (gates, mix, task router) + router.json (config)
# ---------------------------------------------------------------------------


def save_router(router, out_dir):
    """router.safetensors, then router.json with the sha256 of those weights in its
    `extra` (weights_sha256): the two files are one set, and load_router refuses
    weights that router.json does not name (a crash between the two writes).
    router.json stays free to edit by hand, except embed_layer: the centroids in the
    weights were made at that layer, so the weights' metadata records it too.
    Each file goes to a temporary name first."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}
    weights = os.path.join(out_dir, "router.safetensors")
    write_atomic(weights, lambda p: save_file(tensors, p, metadata={"embed_layer": str(router.cfg.embed_layer)}))
    cfg = asdict(router.cfg)
    cfg["extra"] = {**cfg["extra"], "weights_sha256": sha256(weights)}
    write_json(os.path.join(out_dir, "router.json"), cfg)


def group_names(cfg):
    """A readable name per group of a RouterConfig: its experts joined by '+'."""
    return ["+".join(cfg.experts[e] for e in g) for g in cfg.groups]


def make_router(cfg, centroids, where="RouterConfig"):
    """R.Router(cfg, centroids) once every field of cfg is checked (check_config)."""
    check_config(asdict(cfg), where)
    return R.Router(cfg, centroids)


def load_config(out_dir):
    """out_dir/router.json as a RouterConfig, every field checked (check_config)."""
    path = os.path.join(out_dir, "router.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (train.py --router writes it)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    check_config(raw, path)
    return R.RouterConfig(**raw)


def experts_sha256(dirs):
    """{name: sha256 of its adapter_model.safetensors}: which adapters a router was trained over."""
    return {name: sha256(os.path.join(folder, adapters.WEIGHTS_NAME)) for name, folder in dirs.items()}


def router_experts(out_dir, cfg, experts=None):
    """{name: folder} of the experts that the router in out_dir routes over: the
    adapter folders in `experts` (default: the folder it was trained with), named
    as router.json's experts and holding the adapters it was trained over (their
    sha256 in router.json; older routers have none). Rank-1 routers own theirs: {}."""
    if cfg.rank1:
        return {}
    dirs = adapters.expert_dirs(experts or cfg.extra["experts_dir"])
    if list(dirs) != cfg.experts:
        raise ValueError(f"{out_dir} routes over {cfg.experts}, but the experts found are {list(dirs)}")
    saved = cfg.extra.get("experts_sha256", {})
    if not isinstance(saved, dict):
        raise ValueError(f"{os.path.join(out_dir, 'router.json')}: field 'extra.experts_sha256' is "
                         f"{type(saved).__name__}, expected an object of expert name -> sha256")
    for name, digest in experts_sha256(dirs).items():
        if saved and digest != saved.get(name):
            raise ValueError(f"{os.path.join(dirs[name], adapters.WEIGHTS_NAME)}: not the adapter that "
                             f"{out_dir} was trained over as its expert {name!r}; expected that expert "
                             "(router.json: extra.experts_sha256)")
    return dirs


def load_router(out_dir, model=None):
    """The router saved in out_dir. A router with rank-1 experts puts them into
    `model` (fresh MultiLoRALinear layers, then the saved A and B). Every tensor
    of router.safetensors is checked against the config (_check_state)."""
    cfg = load_config(out_dir)
    path = os.path.join(out_dir, "router.safetensors")
    state = _read_weights(path, cfg)
    router = R.Router(cfg, np.zeros((len(cfg.experts), cfg.hidden_size), np.float32))   # centroids: from state
    if cfg.rank1:
        if model is None:
            raise ValueError(f"{out_dir} holds {cfg.rank1} rank-1 experts: load_router needs the model")
        try:
            router.own_experts(model)
        except ValueError as e:   # targets that select no Linear of this model
            raise ValueError(f"{os.path.join(out_dir, 'router.json')}: field 'targets': {e}") from None
    try:
        _check_state(path, state, router.state_dict())
    except ValueError:
        if cfg.rank1:
            lora.remove_lora(model)          # leave the model as it came
        raise
    router.load_state_dict(state)
    _check_routing(path, router)
    return router


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _read_weights(path, cfg):
    """router.safetensors, the file that router.json names by its sha256."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (train.py --router writes it)")
    if cfg.extra.get("weights_sha256", sha256(path)) != sha256(path):   # older routers: no hash
        raise ValueError(f"{path}: not the weights that router.json was saved with (an interrupted "
                         "save?); train the router again")
    try:
        with safe_open(path, "pt") as f:
            layer = (f.metadata() or {}).get("embed_layer", str(cfg.embed_layer))   # older routers: none
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: truncated or corrupt safetensors file ({e})") from None
    if layer != str(cfg.embed_layer):
        raise ValueError(f"{os.path.dirname(path)}/router.json: field 'embed_layer' is {cfg.embed_layer}, but "
                         f"the centroids in {path} were made at layer {layer}; expected {layer}")
    return state


def _check_state(path, state, expected):
    """router.safetensors: exactly the tensors of `expected` (the state_dict of a
    fresh Router made from router.json), with its shapes, floating point, finite."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"{what} {len(ks)} tensors, e.g. {ks[:3]}" for what, ks in
                 (("missing", missing), ("unexpected", unexpected)) if ks]
        raise ValueError(f"{path}: tensors do not match router.json: " + "; ".join(parts))
    for key, t in state.items():
        if t.shape != expected[key].shape:
            raise ValueError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected "
                             f"{tuple(expected[key].shape)} (from router.json)")
        if not t.is_floating_point():
            raise ValueError(f"{path}: tensor {key} has dtype {t.dtype}, expected a floating-point dtype")
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: tensor {key} has {int(t.isnan().sum())} NaN and "
                             f"{int(t.isinf().sum())} inf values, expected finite values")


@torch.no_grad()
def _check_routing(path, router):
    """Finite weights can still be large enough to overflow the routing (centroids
    x 1e30 give infinite distances, and the prior 0/0). The saved centroids and
    their mean are typical inputs of the task prior and of the gates: both must
    route them to finite weights."""
    C = router.task.centroids
    X = torch.cat([C, C.mean(0, keepdim=True)])                    # (E + 1, C)
    if router.cfg.prior != "none" and not torch.isfinite(router.task.prior(X)).all():
        raise ValueError(f"{path}: the task prior ({router.cfg.prior}) of the saved centroids is not finite; "
                         "expected weights small enough to route (task.* overflow)")
    for layer, gate in enumerate(router.gates):
        if not torch.isfinite(gate(X)).all():
            raise ValueError(f"{path}: the gate of layer {layer} is not finite at the saved centroids; "
                             f"expected weights small enough to route (gates.{layer}.* overflow)")


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)   # JSON true is not a count


def _is_finite(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_names(v):
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(s, str) and s for s in v)


def _is_groups(v):
    return isinstance(v, (list, tuple)) and all(
        isinstance(g, (list, tuple)) and g and all(_is_int(e) for e in g) for g in v)


# Each R.RouterConfig field: (test of its value, what was expected). Ranges that
# depend on other fields (groups, top_k, rank1, embed_layer) are in check_config.
FIELD_RULES = {
    "experts": (lambda v: _is_names(v) and len(set(v)) == len(v), "a non-empty list of distinct names"),
    "groups": (_is_groups, "a list of non-empty lists of expert indices"),
    "hidden_size": (lambda v: _is_int(v) and v > 0, "a positive int"),
    "n_layers": (lambda v: _is_int(v) and v > 0, "a positive int"),
    "level": (lambda v: v in ("token", "sequence"), "'token' or 'sequence'"),
    "prior": (lambda v: v in ("centroid", "learned", "none"), "'centroid', 'learned' or 'none'"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "temperature": (lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
    "tau": (lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
    "entropy_weight": (_is_finite, "a finite number"),
    "balance_weight": (lambda v: _is_finite(v) and v >= 0, "a finite number >= 0"),
    "embed_layer": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "rank1": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "rank1_alpha": (lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
    "targets": (lambda v: (isinstance(v, str) and v) or _is_names(v),
                "a non-empty list of module names or one regex string"),
    "extra": (lambda v: isinstance(v, dict), "a JSON object"),
}


def _short(v, width=60):
    """repr(v), cut to `width` characters for messages."""
    text = repr(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def check_config(values, where):
    """RouterConfig fields {name: value}, from router.json or from Python: no
    unknown or missing field, each value of the right type and range, groups a
    partition of the experts. `where` (the file, or "RouterConfig") starts every message."""
    known = {f.name: f for f in fields(R.RouterConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; a RouterConfig has {sorted(known)}")
    required = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in values]
    if missing:
        raise ValueError(f"{where}: required field(s) {missing} missing")
    for name, (ok, expected) in FIELD_RULES.items():
        if name in values and not ok(values[name]):
            raise ValueError(f"{where}: field {name!r} is {_short(values[name])}, expected {expected}")
    E, L = len(values["experts"]), values["n_layers"]
    top_k, rank1, embed_layer = (values.get(n, known[n].default) for n in ("top_k", "rank1", "embed_layer"))
    if sorted(e for g in values["groups"] for e in g) != list(range(E)):
        raise ValueError(f"{where}: field 'groups' is {_short(values['groups'])}, expected a partition "
                         f"of the expert indices 0..{E - 1} (each in exactly one group)")
    if top_k > E:
        raise ValueError(f"{where}: field 'top_k' is {top_k}, expected 0..{E} (the number of experts)")
    if rank1 and rank1 != E:
        raise ValueError(f"{where}: field 'rank1' is {rank1}, expected 0 or {E} (the number of experts)")
    if embed_layer > L:
        raise ValueError(f"{where}: field 'embed_layer' is {embed_layer}, expected 0..{L} (n_layers)")
