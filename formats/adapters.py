"""
Adapter files in the PEFT layout: what a trained expert is on disk, so that
`peft.PeftModel.from_pretrained` reads ours and we read theirs.

    save_adapter(model, "out/experts/algebra")          # adapter_config.json + adapter_model.safetensors
    read_config("out/experts/algebra")                  # its adapter_config.json, checked, no model needed
    load_adapter(model, "out/experts/algebra")          # LoRALinear layers with the saved A and B
    with_adapter(model, "out/experts/algebra", run)     # run() with it merged, then the base back
    load_experts(model, [dir_1, ..., dir_E])            # E adapters stacked in MultiLoRALinear layers
    expert_dirs("out/experts")                          # {name: folder} of a folder of experts

Chapters:
  1. files   save_adapter, read_config, read_adapter, load_adapter, with_adapter, load_experts,
             expert_dirs; the base fingerprint that ties an adapter to its base model
  2. checks  what the readers refuse, and why (_check_adapter_config, _check_keys,
             _check_tensor, _check_fingerprint, _check_alpha)

A PEFT file key is "base_model.model." + our key (lora.py keeps the base keys'
names). Two things ride in the safetensors metadata, which PEFT ignores: the
fingerprint of the base weights, and lora_alpha, the one setting that names and
shapes of the tensors do not pin down.

Reference: Hugging Face PEFT (utils/save_and_load.py for the file layout,
tuners/lora/config.py for adapter_config.json). The tests check both directions
against peft.

Left out: safetensors-less (pickle) adapters, several adapters in one file, and
every setting in UNSUPPORTED: such files are refused with a message naming it.
"""
import json
import math
import os
import re

import torch

import lora
from formats.files import (UserError, check_finite, check_names, open_safetensors, read_json, sha256, short,
                           save_safetensors, write_atomic, write_json)

PEFT_PREFIX = "base_model.model."        # PEFT key = PEFT_PREFIX + our key
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
FINGERPRINT_KEY = "skill_moe.base_fingerprint"   # safetensors metadata; PEFT ignores it
ALPHA_KEY = "skill_moe.lora_alpha"              # safetensors metadata: the scale the weights were saved with

# ---------------------------------------------------------------------------
# 1. Adapter files
# ---------------------------------------------------------------------------

# adapter_config.json settings we do not implement: they must be absent/false/empty.
UNSUPPORTED = ("use_dora", "use_rslora", "lora_bias", "fan_in_fan_out", "modules_to_save",
               "rank_pattern", "alpha_pattern", "layers_to_transform", "layer_replication",
               "exclude_modules", "target_parameters", "trainable_token_indices",
               "alora_invocation_tokens", "use_qalora", "use_bdlora")


SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
PROBES = 8          # values sampled from every base tensor for the fingerprint


def base_parameters(model):
    """(name, tensor) of the base model's parameters: all but LoRA's A and B."""
    return [(n, p) for n, p in model.named_parameters() if ".lora_" not in n]


def probe_positions(n, k):
    """k evenly spaced positions in 0..n-1, the first and the last included (all n
    if n <= k). Worked example: n=100, k=8 -> 0, 14, 28, 42, 57, 71, 85, 99.

    Below 2**24 elements they are float32 linspace's, rounded: the positions every
    saved fingerprint was made with. float32 cannot name every integer above 2**24
    (phi-2's embedding has 131M elements: its last position would round to n, out
    of range), so from there they are exact integers, i * (n-1) / (k-1) rounded
    half up."""
    k = min(k, n)
    if n < 2 ** 24 or k == 1:
        return torch.linspace(0, n - 1, k).round().long()
    i = torch.arange(k, dtype=torch.long)
    return (2 * i * (n - 1) + (k - 1)) // (2 * (k - 1))


def probe(p, k=PROBES):
    """k values of tensor p in fp32, at probe_positions of the flattened tensor."""
    flat = p.detach().reshape(-1)
    return flat[probe_positions(flat.numel(), k).to(flat.device)].float().cpu()


def base_fingerprint(model):
    """What identifies the base an adapter belongs to: the config's shapes and
    PROBES values of every base tensor, at fixed evenly spaced positions, so a
    base that differs in any one layer is told apart (phi-2: 453 tensors, about
    3,600 numbers). _check_fingerprint compares the values with a relative
    tolerance, so the same weights loaded in fp32, bf16 or fp16 agree."""
    cfg = getattr(model, "config", None)
    fp = {k: getattr(cfg, k, None) for k in SHAPE_FIELDS}
    fp["probes"] = {n: [float(f"{v:.6g}") for v in probe(p).tolist()] for n, p in base_parameters(model)}
    return fp


def save_adapter(model, out_dir, base_model_name_or_path=None, r=None, alpha=None, dropout=None,
                 targets=None, revision=None):
    """Write adapter_config.json and adapter_model.safetensors (PEFT layout) for the
    model's lora.LoRALinear layers. r/alpha/dropout/targets default to what the layers
    hold; if given they must agree. Each file goes to a temporary name and is then
    renamed (weights first, config last), so a crash never leaves a torn file. The
    weights' metadata records lora_alpha, the one setting that the tensors' names
    and shapes do not pin down, so a crash between the two files can only leave a
    pair that agrees (read_adapter refuses one that does not).

    The base is named as PEFT names it: base_model_name_or_path is the folder or
    Hub id the user gave (model.load records it as model.model_id), and revision
    the Hub commit it resolved to (model.revision; None for a plain folder)."""
    mods = lora.lora_modules(model, lora.LoRALinear)
    held = {"r": {m.r for m in mods.values()}, "alpha": {m.alpha for m in mods.values()},
            "dropout": {m.dropout_p for m in mods.values()}}
    targets = targets if targets is not None else sorted({n.rsplit(".", 1)[-1] for n in mods})
    _check_saveable(model, mods, held, {"r": r, "alpha": alpha, "dropout": dropout}, targets)
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(model, "model_id", "")
    if revision is None:
        revision = getattr(model, "revision", None)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM",
              "base_model_name_or_path": str(base_model_name_or_path), "revision": revision,
              "r": held["r"].pop(), "lora_alpha": held["alpha"].pop(),
              "lora_dropout": held["dropout"].pop(),
              "target_modules": targets if isinstance(targets, str) else list(targets),
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "init_lora_weights": True, "use_rslora": False, "use_dora": False,
              "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {},
              "alpha_pattern": {}}
    tensors = {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in lora.lora_state_dict(model).items()}
    metadata = {"format": "pt", FINGERPRINT_KEY: json.dumps(base_fingerprint(model)),
                ALPHA_KEY: json.dumps(config["lora_alpha"])}
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, WEIGHTS_NAME), lambda p: save_safetensors(tensors, p, metadata))
    write_json(os.path.join(out_dir, CONFIG_NAME), config, indent=2)
    return config


def expert_dirs(root):
    """{name: dir} of the adapter directories directly under root, sorted by name."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: no such directory of experts (train.py --expert writes them)")
    found = {d: os.path.join(root, d) for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))}
    strays = [d for d, path in found.items() if not os.path.exists(os.path.join(path, CONFIG_NAME))]
    if strays:   # never drop an expert silently: a half-written or misplaced one is an error
        raise UserError(f"{root}: the folders {strays} hold no {CONFIG_NAME}; every folder "
                                "here must be an expert's adapter directory")
    if not found:
        raise UserError(f"{root}: no adapter directories (with {CONFIG_NAME}) inside")
    return found


def experts_sha256(dirs):
    """{name: sha256 of its adapter_model.safetensors}: which adapters a router was trained over."""
    return {name: sha256(os.path.join(folder, WEIGHTS_NAME)) for name, folder in dirs.items()}


def read_config(adapter_dir):
    """adapter_dir/adapter_config.json, checked (_check_adapter_config), with the
    weights file beside it. It needs no model: eval.py refuses a wrong --adapter
    with it before the model loads."""
    if not os.path.isdir(adapter_dir):
        raise UserError(f"{adapter_dir}: no such adapter folder (train.py --expert writes one, holding "
                        f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not os.path.exists(os.path.join(adapter_dir, name)):
            raise UserError(f"{os.path.join(adapter_dir, name)} not found (an adapter directory holds "
                            f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    cfg_path = os.path.join(adapter_dir, CONFIG_NAME)
    config = read_json(cfg_path, "an adapter directory holds it")
    _check_adapter_config(cfg_path, config)
    return config


def read_adapter(model, adapter_dir, check_base=True):
    """Read and check an adapter directory against `model`.

    Returns (config, {module name: (A (r, I), B (O, r))}). Raises UserError
    (starting with the file's path, naming the key or tensor and what was
    expected) for a missing file (read_config), a non-LoRA, unsupported or
    ill-typed config (_check_adapter_config), missing/unexpected tensors, wrong
    shapes, tensors that are not floating point or not finite (_check_tensor),
    or a base model other than the one it was made for (_check_fingerprint)."""
    w_path = os.path.join(adapter_dir, WEIGHTS_NAME)
    config = read_config(adapter_dir)
    if lora.lora_modules(model):
        raise UserError("model already has LoRA layers; call remove_lora(model) first")
    with open_safetensors(w_path) as f:
        metadata = f.metadata() or {}
        if check_base and FINGERPRINT_KEY in metadata:
            _check_fingerprint(model, metadata[FINGERPRINT_KEY], w_path)
        _check_alpha(w_path, metadata, config["lora_alpha"])
        names = lora.target_names(model, config["target_modules"])
        expected = {}                                     # PEFT key -> (module name, shape (r, I) or (O, r))
        for n in names:
            lin = model.get_submodule(n)
            expected[f"{PEFT_PREFIX}{n}.lora_A.weight"] = (n, (config["r"], lin.in_features))
            expected[f"{PEFT_PREFIX}{n}.lora_B.weight"] = (n, (lin.out_features, config["r"]))
        _check_keys(w_path, config, expected, set(f.keys()))
        tensors = {key: _check_tensor(w_path, key, f.get_tensor(key), shape, model.get_submodule(n),
                                      config["r"]) for key, (n, shape) in expected.items()}
    layers = {n: (tensors[f"{PEFT_PREFIX}{n}.lora_A.weight"], tensors[f"{PEFT_PREFIX}{n}.lora_B.weight"])
              for n in names}
    for n, (A, B) in layers.items():
        _check_size(w_path, n, A, B, config["lora_alpha"] / config["r"], model.get_submodule(n).weight)
    return config, layers


def load_adapter(model, adapter_dir, check_base=True):
    """Attach LoRA as adapter_config.json says and load the weights; returns the
    names of the wrapped layers. check_base=False skips the base-model fingerprint
    (to apply an adapter to a deliberately different base of the same shapes)."""
    config, layers = read_adapter(model, adapter_dir, check_base)
    names = lora.add_lora(model, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0),
                     config["target_modules"])
    with torch.no_grad():
        for n, (A, B) in layers.items():
            m = model.get_submodule(n)
            m.lora_A.weight.copy_(A)
            m.lora_B.weight.copy_(B)
    return names


def with_adapter(model, path, run):
    """run() with the LoRA adapter at `path` merged into the weights (zero overhead);
    the base weights are restored afterwards. Returns what run() returns."""
    load_adapter(model, path)
    lora.merge_lora(model)
    try:
        return run()
    finally:
        lora.remove_lora(model, merge=False)


def load_experts(model, adapter_dirs, check_base=True):
    """Load E single-expert adapters into MultiLoRALinear layers (expert e = adapter_dirs[e]).

    Every module that any adapter targets becomes one MultiLoRALinear; an expert
    that does not target it contributes zeros there, and ranks are zero-padded to
    the largest. Returns the names of the wrapped layers; set routing weights
    with set_expert_weights before running the model."""
    read = [read_adapter(model, d, check_base) for d in adapter_dirs]
    names = [n for n, _ in model.named_modules() if any(n in layers for _, layers in read)]
    r_max = max(cfg["r"] for cfg, _ in read)
    dropout = max(cfg.get("lora_dropout", 0.0) for cfg, _ in read)
    for n in names:
        multi = lora.MultiLoRALinear(model.get_submodule(n), len(read), r_max, dropout=dropout)
        for e, (cfg, layers) in enumerate(read):
            if n in layers:
                multi.set_expert(e, *layers[n], cfg["lora_alpha"] / cfg["r"])
            else:
                multi.set_expert(e, multi.lora_A.new_zeros(1, multi.in_features),
                                 multi.lora_B.new_zeros(multi.out_features, 1), 0.0)
        lora.replace_module(model, n, multi)
    return names


# ---------------------------------------------------------------------------
# 2. Checks: what read_adapter refuses
# ---------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)         # JSON true is not a rank


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(path, key, value, expected):
    return UserError(f"{path}: {key} is {short(value)}, expected {expected}")


def _check_adapter_config(path, config):
    """adapter_config.json: a LoRA config whose r, lora_alpha, lora_dropout and
    target_modules have PEFT's types and sensible ranges, and no setting that
    lora.py does not implement (UNSUPPORTED)."""
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise UserError(f"{path}: task_type is {config['task_type']!r}; a phi expert is 'CAUSAL_LM' (or null)")
    if config.get("peft_type") != "LORA":
        raise _bad(path, "peft_type", config.get("peft_type"), "'LORA'")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise UserError(f"{path}: required key {key!r} is missing")
    r, alpha, dropout = config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0)
    if not (_is_int(r) and r > 0):
        raise _bad(path, "r", r, "a positive int")
    if not (_is_number(alpha) and math.isfinite(alpha) and alpha > 0):
        raise _bad(path, "lora_alpha", alpha, "a finite number > 0")
    if not (_is_number(dropout) and 0 <= dropout < 1):
        raise _bad(path, "lora_dropout", dropout, "a number in [0, 1)")
    _check_targets(path, config["target_modules"])
    if config.get("bias", "none") != "none":
        raise UserError(f"{path}: bias {config['bias']!r} is not supported (only 'none')")
    for key in UNSUPPORTED:
        if config.get(key):
            raise UserError(f"{path}: {key}={config[key]!r} is not supported by lora.py")


def _check_targets(path, targets):
    """target_modules: a non-empty list of module names, or one regex string (PEFT allows both)."""
    if isinstance(targets, str) and targets:
        try:
            re.compile(targets)
        except re.error as e:
            raise _bad(path, "target_modules", targets, f"a valid regex ({e})") from None
    elif not (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        raise _bad(path, "target_modules", targets, "a non-empty list of module names or one regex string")


def _check_saveable(model, mods, held, given, targets):
    """save_adapter: unmerged lora.LoRALinear layers that agree on r, alpha and dropout
    (and with the values given), selected exactly by target_modules."""
    if not mods:
        raise UserError("model has no lora.LoRALinear layers to save (MultiLoRALinear is not a PEFT adapter)")
    if any(m.merged for m in mods.values()):
        raise UserError("adapters are merged into W; unmerge_lora(model) before saving")
    for k, vals in held.items():
        if len(vals) != 1 or (given[k] is not None and given[k] not in vals):
            raise UserError(f"{k}: layers hold {sorted(vals)}, asked to save {given[k]}")
    if set(lora.target_names(model, targets)) != set(mods):
        raise UserError(f"target_modules {targets!r} do not select exactly the {len(mods)} LoRA layers")


def _check_alpha(w_path, metadata, alpha):
    """The config's lora_alpha is the one the weights were saved with (adapters from
    elsewhere record none). A save interrupted between the two files, or an edit
    of lora_alpha, would otherwise rescale every update silently."""
    saved = metadata.get(ALPHA_KEY)
    if saved is not None:
        try:
            saved = json.loads(saved)
        except json.JSONDecodeError:
            raise UserError(f"{w_path}: metadata {ALPHA_KEY!r} is {saved!r}, expected a number") from None
    if saved is not None and saved != alpha:
        raise UserError(f"{w_path}: saved with lora_alpha {saved}, but {CONFIG_NAME} says "
                         f"{alpha} (a save interrupted between the two files, or an edit of lora_alpha; "
                         "the scale belongs to the weights)")


def _check_keys(w_path, config, expected, keys):
    """The file holds exactly the A and B of every Linear that target_modules selects."""
    if not expected:
        raise UserError(f"{w_path[:-len(WEIGHTS_NAME)]}{CONFIG_NAME}: target_modules "
                         f"{config['target_modules']!r} match no Linear of this model")
    check_names(w_path, expected, keys, f"{CONFIG_NAME} (target_modules {config['target_modules']!r}, "
                f"r={config['r']}) and this model")


def _check_tensor(path, key, t, shape=None, lin=None, r=None):
    """An adapter tensor: of `shape` (the Linear lin's, at rank r), floating point,
    no NaN or inf. Returns it."""
    if shape is not None and tuple(t.shape) != shape:
        raise UserError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected {shape} "
                         f"(r={r} from {CONFIG_NAME}; the layer is Linear({lin.in_features}, "
                         f"{lin.out_features}))")
    return check_finite(path, key, t)


MAX_UPDATE = 1e3   # an update this many times the norm of the weight it adapts is no adapter


def _check_size(path, name, A, B, scaling, W):
    """s*B@A, the update of layer `name`, is finite in size next to W: a LoRA update
    is small, and a huge finite one (1e30) turns every answer into NaN. The norm is
    bounded by s*|B|*|A| first; B@A itself is formed only when the bound is large."""
    limit = MAX_UPDATE * W.detach().double().norm().item()
    if scaling * B.double().norm().item() * A.double().norm().item() <= limit:
        return
    size = (scaling * B.double().cpu() @ A.double().cpu()).norm().item()
    if not size <= limit:
        raise UserError(f"{path}: the update of {name} (scaling * lora_B @ lora_A) has norm {size:.3g}, "
                         f"{size / (limit / MAX_UPDATE):.3g} times its base weight's; expected an adapter "
                         f"trained on this base (at most {MAX_UPDATE:g} times)")


def _check_fingerprint(model, fp, path):
    """Refuse an adapter made for another base: first the config's shapes, then
    the sampled values of every tensor, to rtol 1e-2 (bf16 rounds by at most
    2^-9, relative)."""
    try:
        fp = json.loads(fp)
        probes = fp["probes"]
        probes = {n: torch.tensor(v, dtype=torch.float32).reshape(-1) for n, v in probes.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise UserError(f"{path}: metadata {FINGERPRINT_KEY} is malformed: expected a JSON object as "
                         "base_fingerprint writes it") from None
    cfg = getattr(model, "config", None)
    diff = [f"{k} {fp[k]} (this model: {getattr(cfg, k, None)})" for k in SHAPE_FIELDS
            if k in fp and fp[k] != getattr(cfg, k, None)]
    if diff:
        raise UserError(f"{path}: adapter was made for another base model: " + ", ".join(diff))
    params = dict(base_parameters(model))
    differ = [n for n, saved in probes.items() if n not in params or not torch.allclose(
        probe(params[n], saved.numel()), saved, rtol=1e-2, atol=1e-4)]
    if differ:
        more = f" (and {len(differ) - 1} more tensors)" if len(differ) > 1 else ""
        raise UserError(f"{path}: adapter was made for another base model: the base's {differ[0]} "
                         f"differs{more} (same shapes, different weights)")
