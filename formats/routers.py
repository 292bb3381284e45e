"""
A router's files: router.safetensors (the gates, the mix and the task router's
tensors) and router.json (its RouterConfig), one set.

    save_router(router, "out/router")               # weights first, then router.json naming their sha256
    cfg = read_config("out/router")                  # a RouterConfig, every field checked
    router = load_router("out/router", model)        # every tensor checked against cfg
    dirs = router_experts("out/router", cfg)         # {name: adapter folder} it was trained over
    RouterConfig(..., expert_dirs=dirs, experts_sha256=adapters.experts_sha256(dirs))   # train.py --router's, dirs {name: folder}

router.json is free to edit by hand (a temperature, say), except embed_layer:
the centroids in the weights were made at that layer, so the weights' metadata
records it too. A router over experts names each one's adapter folder
(expert_dirs) and the sha256 of its weights (experts_sha256): what else lies
beside them does not matter, and an expert swapped for another is refused. The
folders are written relative to the router's own folder, so a study folder that
moves keeps its routers working; a router moved without its experts finds them
by name in another folder (router_experts' `experts`, the --experts DIR of
eval.py and explain.py).

Left out: routers over experts of different base models.
"""
import os
from dataclasses import asdict, fields

import numpy as np
import torch
from safetensors import SafetensorError

import lora
import router as routing
from formats import adapters
from formats.files import (UserError, check_finite, check_names, open_safetensors, read_object, save_safetensors,
                           sha256, write_atomic, write_json)
from formats.router_fields import check_config


def save_router(router, out_dir):
    """router.safetensors, then router.json with the sha256 of those weights
    (weights_sha256): the two files are one set, and load_router refuses weights
    that router.json does not name (a crash between the two writes). Each file
    goes to a temporary name first."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}
    weights = os.path.join(out_dir, "router.safetensors")
    write_atomic(weights, lambda p: save_safetensors(tensors, p, {"embed_layer": str(router.cfg.embed_layer)}))
    config = asdict(router.cfg) | {"weights_sha256": sha256(weights)}
    config["expert_dirs"] = {name: os.path.relpath(d, out_dir) for name, d in config["expert_dirs"].items()}
    write_json(os.path.join(out_dir, "router.json"), config)


def read_config(out_dir):
    """out_dir/router.json as a RouterConfig, every field checked (formats.router_fields),
    its expert_dirs as paths from here (router.json has them from out_dir)."""
    path = os.path.join(out_dir, "router.json")
    raw = read_object(path, "train.py --router writes it")
    check_config(raw, fields(routing.RouterConfig), path)
    cfg = routing.RouterConfig(**raw)
    cfg.expert_dirs = {name: os.path.normpath(os.path.join(out_dir, d)) for name, d in cfg.expert_dirs.items()}
    return cfg


def router_experts(out_dir, cfg, experts=None):
    """{name: adapter folder} of the experts that the router in out_dir routes over:
    the folders router.json names, or, given `experts` (a folder of experts, e.g.
    theirs moved), the folders of the same names in it. Each must hold the adapter
    the router was trained over (its sha256 in router.json); one that does not is
    named, with the flag that points at the right one. Rank-1 routers own theirs: {}."""
    if cfg.rank1:
        return {}
    path = os.path.join(out_dir, "router.json")
    if not cfg.experts_sha256:
        raise UserError(f"{path}: field 'experts_sha256' is empty; expected the sha256 of each expert's adapter, "
                        "as train.py --router writes it")
    if not (experts or cfg.expert_dirs):
        raise UserError(f"{path}: field 'expert_dirs' is empty; give the folder that holds its experts with "
                        "--experts DIR")
    dirs = {name: os.path.join(experts, name) if experts else cfg.expert_dirs[name] for name in cfg.experts}
    for name, folder in dirs.items():
        weights = os.path.join(folder, adapters.WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise UserError(f"{weights} not found: {out_dir} routes over the expert {name!r} there; "
                            "give the folder that holds its experts with --experts DIR")
        if sha256(weights) != cfg.experts_sha256[name]:
            raise UserError(f"{weights}: not the adapter that {out_dir} was trained over as its expert {name!r} "
                            "(router.json: experts_sha256); give the folder that holds its experts with "
                            "--experts DIR")
    return dirs


def load_router(out_dir, model=None):
    """The router saved in out_dir. A router with rank-1 experts puts them into
    `model` (fresh MultiLoRALinear layers, then the saved A and B). Every tensor
    of router.safetensors is checked against the config (_check_state)."""
    cfg = read_config(out_dir)
    path = os.path.join(out_dir, "router.safetensors")
    state = _read_weights(path, cfg)
    router = routing.Router(cfg, np.zeros((len(cfg.experts), cfg.hidden_size), np.float32))   # centroids: from state
    if cfg.rank1:
        if model is None:
            raise UserError(f"{out_dir} holds {cfg.rank1} rank-1 experts: load_router needs the model")
        try:
            router.own_experts(model)
        except UserError as e:   # targets that select no Linear of this model
            raise UserError(f"{os.path.join(out_dir, 'router.json')}: field 'targets': {e}") from None
    try:
        _check_state(path, state, router.state_dict())
    except UserError:
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
        raise UserError(f"{path} not found (train.py --router writes it)")
    if cfg.weights_sha256 != sha256(path):
        raise UserError(f"{path}: not the weights that router.json was saved with (an interrupted "
                        "save?); train the router again")
    with open_safetensors(path) as f:
        layer = (f.metadata() or {}).get("embed_layer")
        try:
            state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path}: truncated or corrupt safetensors file ({e})") from None
    if layer != str(cfg.embed_layer):
        raise UserError(f"{os.path.dirname(path)}/router.json: field 'embed_layer' is {cfg.embed_layer}, but "
                        f"the centroids in {path} were made at layer {layer}; expected {layer}")
    return state


def _check_state(path, state, expected):
    """router.safetensors: exactly the tensors of `expected` (the state_dict of a
    fresh Router made from router.json), with its shapes, floating point, finite."""
    check_names(path, expected, state, "router.json")
    for key, t in state.items():
        if t.shape != expected[key].shape:
            raise UserError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected "
                            f"{tuple(expected[key].shape)} (from router.json)")
        check_finite(path, key, t)


@torch.no_grad()
def _check_routing(path, router):
    """Finite weights can still be large enough to overflow the routing (centroids
    x 1e30 give infinite distances, and the prior 0/0). The saved centroids and
    their mean are typical inputs of the task prior and of the gates: both must
    route them to finite weights."""
    C = router.task.centroids
    X = torch.cat([C, C.mean(0, keepdim=True)])                    # (E + 1, C)
    if router.cfg.prior != "none" and not torch.isfinite(router.task.prior(X)).all():
        raise UserError(f"{path}: the task prior ({router.cfg.prior}) of the saved centroids is not finite; "
                        "expected weights small enough to route (task.* overflow)")
    for layer, gate in enumerate(router.gates):
        if not torch.isfinite(gate(X)).all():
            raise UserError(f"{path}: the gate of layer {layer} is not finite at the saved centroids; "
                            f"expected weights small enough to route (gates.{layer}.* overflow)")
