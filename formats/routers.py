"""
A router's files: router.safetensors (the gates, the mix and the task router's
tensors) and router.json (its RouterConfig), one set.

    save_router(router, "out/router")               # weights first, then router.json naming their sha256
    cfg = read_config("out/router")                  # a RouterConfig, every field checked
    router = load_router("out/router", model)        # every tensor checked against cfg
    dirs = router_experts("out/router", cfg)         # {name: adapter folder} it was trained over

router.json is free to edit by hand (a temperature, say), except embed_layer:
the centroids in the weights were made at that layer, so the weights' metadata
records it too. A router over experts names their folder and each adapter's
sha256, so swapping an expert for another is refused.

Left out: routers over experts of different base models.
"""
import os
from dataclasses import asdict

import numpy as np
import torch
from safetensors import SafetensorError

import lora
import router as routing
from formats import adapters
from formats.files import (UserError, check_finite, check_names, open_safetensors, read_object, save_safetensors,
                           sha256, write_atomic, write_json)


def save_router(router, out_dir):
    """router.safetensors, then router.json with the sha256 of those weights
    (weights_sha256): the two files are one set, and load_router refuses weights
    that router.json does not name (a crash between the two writes). Each file
    goes to a temporary name first."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}
    weights = os.path.join(out_dir, "router.safetensors")
    write_atomic(weights, lambda p: save_safetensors(tensors, p, {"embed_layer": str(router.cfg.embed_layer)}))
    write_json(os.path.join(out_dir, "router.json"), asdict(router.cfg) | {"weights_sha256": sha256(weights)})


def read_config(out_dir):
    """out_dir/router.json as a RouterConfig, every field checked (router.check_config)."""
    path = os.path.join(out_dir, "router.json")
    raw = read_object(path, "train.py --router writes it")
    routing.check_config(raw, path)
    return routing.RouterConfig(**raw)


def experts_sha256(dirs):
    """{name: sha256 of its adapter_model.safetensors}: which adapters a router was trained over."""
    return {name: sha256(os.path.join(folder, adapters.WEIGHTS_NAME)) for name, folder in dirs.items()}


def router_experts(out_dir, cfg, experts=None):
    """{name: folder} of the experts that the router in out_dir routes over: the
    adapter folders in `experts` (default: the folder it was trained with), named
    as router.json's experts and holding the adapters it was trained over (their
    sha256 in router.json). Rank-1 routers own theirs: {}."""
    if cfg.rank1:
        return {}
    if not (experts or cfg.experts_dir):
        raise UserError(f"{os.path.join(out_dir, 'router.json')}: names no experts folder (experts_dir); "
                        "give the experts with --experts")
    dirs = adapters.expert_dirs(experts or cfg.experts_dir)
    if list(dirs) != cfg.experts:
        raise UserError(f"{out_dir} routes over {cfg.experts}, but the experts found are {list(dirs)}")
    for name, digest in experts_sha256(dirs).items():
        if digest != cfg.experts_sha256.get(name):
            raise UserError(f"{os.path.join(dirs[name], adapters.WEIGHTS_NAME)}: not the adapter that "
                            f"{out_dir} was trained over as its expert {name!r}; expected that expert "
                            "(router.json: experts_sha256)")
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
