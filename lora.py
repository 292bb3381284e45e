"""
LoRA by hand: low-rank adapters on the Linear layers of model.py's phi, a
multi-expert LoRA layer for the router, merging, and adapter files in the
PEFT layout (so `peft.PeftModel.from_pretrained` reads ours and we read theirs).

    names = add_lora(model, r=8, alpha=16)        # q/k/v/dense/fc1/fc2 get adapters
    mark_only_lora_trainable(model)               # ... train ...
    save_adapter(model, "adapters/algebra", "checkpoints/phi-tiny")
    load_adapter(model2, "adapters/algebra"); merge_lora(model2)   # zero-overhead inference

Chapters, top to bottom:
  1. LoRALinear        y = W x + b + (alpha/r) * B(A(dropout(x))); merge/unmerge
  2. MultiLoRALinear   E experts in one layer, mixed by router weights (einsum, no loop)
  3. attach/detach     add_lora, remove_lora, merge_lora, mark_only_lora_trainable, ...
  4. adapter files     save_adapter / load_adapter / load_experts (PEFT layout, checked)
  5. checks            what the readers refuse, and why (_check_adapter_config, _check_tensor,
                       _check_fingerprint, _check_routing_weights)

Naming. A LoRALinear takes over the wrapped Linear's own `weight` and `bias`
Parameters (the same tensors, no copy), so the base keys keep their names
(`model.layers.0.self_attn.q_proj.weight`) and the adapter adds
`...q_proj.lora_A.weight` (r, in) and `...q_proj.lora_B.weight` (out, r).
A PEFT file key is then simply "base_model.model." + our key.

References: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models" (arXiv 2106.09685), and microsoft/LoRA's loralib; Hugging Face PEFT
(tuners/lora/layer.py for the init, utils/save_and_load.py for the file
layout). The tests check parity with peft 0.21 in both directions.

Letters in shape comments: B batch, T tokens, E experts, r rank,
I in_features, O out_features.

Left out: DoRA, rsLoRA, per-module rank/alpha patterns, trainable biases
(bias "none" only), LoRA on embeddings or convolutions, several named adapters
inside one module (PEFT's adapter_name dicts; we use MultiLoRALinear instead),
quantised base weights. Adapter files that need any of these are rejected
with a message saying which setting is unsupported.
"""
import json
import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from data.files import write_atomic, write_json

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")
PEFT_PREFIX = "base_model.model."        # PEFT key = PEFT_PREFIX + our key
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
FINGERPRINT_KEY = "skill_moe.base_fingerprint"   # safetensors metadata; PEFT ignores it
ALPHA_KEY = "skill_moe.lora_alpha"              # safetensors metadata: the scale the weights were saved with

# ---------------------------------------------------------------------------
# 1. LoRALinear
# ---------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """A Linear plus a trainable low-rank update: y = W x + b + s * B A x, s = alpha / r.

    A (r, I) starts kaiming-uniform and B (O, r) starts at zero, so a fresh
    adapter changes nothing. A and B are fp32 whatever W's dtype: a bf16 or fp16
    base trains fp32 adapters, as with PEFT. merge() folds s*B@A into W once
    (inference then costs the same as the plain Linear) and keeps the original W
    on the CPU; unmerge() puts that copy back, so the base is restored bit for
    bit in every dtype (subtracting s*B@A again would not be, in half precision)."""

    def __init__(self, base: nn.Linear, r=8, alpha=16, dropout=0.0):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias   # same Parameters: keys unchanged
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = dict(bias=False, device=base.weight.device, dtype=torch.float32)
        self.lora_A = nn.Linear(self.in_features, r, **kw)    # weight (r, I)
        self.lora_B = nn.Linear(r, self.out_features, **kw)   # weight (O, r)
        self.original = None                                  # W before merge(), while merged
        self.reset_lora_parameters()

    def reset_lora_parameters(self):
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))   # as PEFT and loralib
        nn.init.zeros_(self.lora_B.weight)

    @property
    def dropout_p(self):
        return self.lora_dropout.p if isinstance(self.lora_dropout, nn.Dropout) else 0.0

    def delta_weight(self):
        """s * B @ A, (O, I), computed in fp32 and returned in W's dtype."""
        return (self.scaling * self.lora_B.weight.float() @ self.lora_A.weight.float()).to(self.weight.dtype)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)                        # (..., O)
        if self.merged:
            return y                                                   # W already holds s*B@A
        # s multiplies the r-wide A x rather than the O-wide result: same value, less work
        x = self.lora_dropout(x).to(self.lora_A.weight.dtype)
        return y + self.lora_B(self.lora_A(x) * self.scaling).to(y.dtype)

    @property
    def merged(self):
        return self.original is not None

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.original = self.weight.detach().to("cpu", copy=True)
            self.weight += self.delta_weight()

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight.copy_(self.original)
            self.original = None

    def extra_repr(self):
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, dropout={self.dropout_p}, merged={self.merged}")


# ---------------------------------------------------------------------------
# 2. MultiLoRALinear: E experts in one layer
# ---------------------------------------------------------------------------


class MultiLoRALinear(nn.Module):
    """One Linear with E LoRA experts, mixed by routing weights w:

        y = W x + b + sum_e w_e * s_e * B_e A_e x

    lora_A (E, r, I) and lora_B (E, O, r) are stacked Parameters; lora_scaling
    (E,) holds each expert's alpha/r (experts of smaller rank are zero-padded to
    r, which leaves B_e A_e unchanged). Weights may be per token (B, T, E), per
    sequence (B, E) or one vector for everything (E,).

    How weights reach the layer. The model's forward signature is fixed, so a
    router writes them into the attribute `self.weights` before the forward
    (set_expert_weights() does it for every layer; a layer-wise gate can do it
    from a forward pre-hook on the decoder layer, whose input it sees first).
    forward(x, weights) also takes them as an argument, which wins over the
    attribute. All experts' A x are computed at once (E*r extra dims, cheap
    for small r) and one dropout mask is shared by the experts.

    Weights that come from outside (set_expert_weights, the forward argument,
    merge) are checked: a float tensor (..., E) of finite values, or ValueError.
    Those a router's hook writes straight into `.weights` are its own softmax
    output and are not checked per layer (that would stop a GPU at every layer)."""

    def __init__(self, base: nn.Linear, n_experts, r=8, alpha=16, dropout=0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias   # same Parameters, as LoRALinear
        self.n_experts, self.r = n_experts, r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = dict(device=base.weight.device, dtype=torch.float32)      # fp32, as LoRALinear
        self.lora_A = nn.Parameter(torch.empty(n_experts, r, self.in_features, **kw))    # (E, r, I)
        self.lora_B = nn.Parameter(torch.zeros(n_experts, self.out_features, r, **kw))   # (E, O, r)
        for e in range(n_experts):
            nn.init.kaiming_uniform_(self.lora_A.data[e], a=math.sqrt(5))
        self.register_buffer("lora_scaling", torch.full((n_experts,), alpha / r, device=kw["device"]))
        self.weights = None          # set by the router before each forward
        self.merged = None           # the (E,) weights merged into W, or None
        self.original = None         # W before merge(), on the CPU, while merged

    @classmethod
    def from_loras(cls, loras):
        """Stack E LoRALinear layers that wrap the same base weight into one layer."""
        first = loras[0]
        base = nn.Linear(first.in_features, first.out_features, bias=first.bias is not None, device="meta")
        base.weight, base.bias = first.weight, first.bias
        multi = cls(base, len(loras), max(m.r for m in loras), dropout=first.dropout_p)
        for e, m in enumerate(loras):
            if m.weight is not first.weight:
                raise ValueError(f"expert {e} wraps a different base weight than expert 0")
            multi.set_expert(e, m.lora_A.weight, m.lora_B.weight, m.scaling)
        return multi

    @torch.no_grad()
    def set_expert(self, e, A, B, scaling):
        """Copy one expert in: A (r_e, I), B (O, r_e) with r_e <= r; rows beyond r_e stay zero."""
        r_e = A.shape[0]
        if r_e > self.r or A.shape != (r_e, self.in_features) or B.shape != (self.out_features, r_e):
            raise ValueError(f"expert {e}: A {tuple(A.shape)} / B {tuple(B.shape)} do not fit "
                             f"A (<= {self.r}, {self.in_features}) / B ({self.out_features}, <= {self.r})")
        self.lora_A[e].zero_()
        self.lora_B[e].zero_()
        self.lora_A[e, :r_e] = A
        self.lora_B[e, :, :r_e] = B
        self.lora_scaling[e] = scaling

    def forward(self, x, weights=None):
        y = F.linear(x, self.weight, self.bias)                        # (B, T, O)
        if self.merged is not None:
            return y
        if weights is not None:
            _check_routing_weights(weights, self.n_experts, "MultiLoRALinear.forward")
        w = self.weights if weights is None else weights
        if w is None:
            raise RuntimeError("MultiLoRALinear: no routing weights; set .weights (e.g. with "
                               "set_expert_weights) or pass forward(x, weights)")
        if w.shape[-1] != self.n_experts:
            raise ValueError(f"routing weights {tuple(w.shape)}: last dim must be E={self.n_experts}")
        w = w.float() * self.lora_scaling                               # fold s_e into w_e
        if w.dim() == 2:
            w = w[:, None, :]                                           # (B, E) -> (B, 1, E): same for every token
        # The two einsums "bti,eri->bter" and "bter,eor->bto" (b batch, t token,
        # i in, o out, e expert, r rank), written as two plain matmuls over the
        # E*r stacked rank dimensions, which is what makes them fast:
        E, r = self.n_experts, self.r
        x = self.lora_dropout(x).to(self.lora_A.dtype)
        u = F.linear(x, self.lora_A.reshape(E * r, self.in_features))  # (B, T, E*r)
        u = (u.unflatten(-1, (E, r)) * w[..., None].to(u.dtype)).flatten(-2)   # (B, T, E, r) * (B|1, T|1, E, 1) -> (B, T, E*r)
        return y + (u @ self.stacked_B()).to(y.dtype)                   # (B, T, E*r) @ (E*r, O): sum over e and r

    def stacked_B(self):
        """lora_B (E, O, r) as one (E*r, O) matrix, row e*r + j = B_e[:, j]. Under
        autograd it is built every call; for inference it is cached until lora_B
        changes in place (tensor._version counts those changes), as in decoding,
        where rebuilding it every step would cost more than the product itself."""
        def build():
            return self.lora_B.transpose(1, 2).reshape(self.n_experts * self.r, self.out_features)   # (E*r, O)
        if torch.is_grad_enabled() and self.lora_B.requires_grad:
            return build()
        key = (self.lora_B._version, self.lora_B.data_ptr(), self.lora_B.device, self.lora_B.dtype)
        if getattr(self, "_stacked_key", None) != key:
            self._stacked_B, self._stacked_key = build().contiguous(), key
        return self._stacked_B

    def delta_weight(self, w):
        """sum_e w_e s_e B_e @ A_e for one weight vector w (E,): (O, I)."""
        ws = w.float() * self.lora_scaling.float()                      # (E,)
        # Legend: e expert, o out_features, r rank, i in_features.
        delta = torch.einsum("e,eor,eri->oi", ws, self.lora_B.float(), self.lora_A.float())
        return delta.to(self.weight.dtype)

    @torch.no_grad()
    def merge(self):
        """Fold a fixed mix (self.weights must be one (E,) vector, e.g. one-hot for
        task-level routing to a single expert) into W."""
        if self.merged is not None:
            return
        if self.weights is None or self.weights.dim() != 1:
            raise ValueError("MultiLoRALinear.merge needs .weights of shape (E,): one fixed mix")
        _check_routing_weights(self.weights, self.n_experts, "MultiLoRALinear.merge")
        self.merged = self.weights.detach().clone()
        self.original = self.weight.detach().to("cpu", copy=True)      # exact restore, as LoRALinear
        self.weight += self.delta_weight(self.merged)

    @torch.no_grad()
    def unmerge(self):
        if self.merged is not None:
            self.weight.copy_(self.original)
            self.merged = self.original = None

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, experts={self.n_experts}, r={self.r}"


# ---------------------------------------------------------------------------
# 3. Attaching, detaching, merging, freezing
# ---------------------------------------------------------------------------

LORA_TYPES = (LoRALinear, MultiLoRALinear)


def _matches(name, targets):
    """PEFT's rule: a string is a regex matched against the full module name
    ("all-linear" means every Linear but lm_head); a list matches a module
    whose name is, or ends with "." + , one of its entries."""
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return name != "lm_head"
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def target_names(model, targets):
    """Names of the Linear (or already-LoRA) modules that `targets` selects."""
    return [name for name, mod in model.named_modules()
            if (isinstance(mod, LORA_TYPES) or (isinstance(mod, nn.Linear) and ".lora_" not in name))
            and _matches(name, targets)]


def lora_modules(model, kind=LORA_TYPES):
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, kind)}


def _replace(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _wrap(model, targets, make):
    """Replace every Linear that `targets` selects by make(linear), in place; return their names."""
    if lora_modules(model):
        raise ValueError("model already has LoRA layers; call remove_lora(model) first")
    names = target_names(model, targets)
    if not names:
        raise ValueError(f"targets {targets!r} match no nn.Linear in the model")
    for name in names:
        _replace(model, name, make(model.get_submodule(name)))
    return names


def add_lora(model, r=8, alpha=16, dropout=0.0, targets=DEFAULT_TARGETS):
    """Wrap every Linear that `targets` selects in a LoRALinear, in place; return their names."""
    return _wrap(model, targets, lambda lin: LoRALinear(lin, r, alpha, dropout))


def add_experts(model, n_experts, r=1, alpha=2.0, targets=DEFAULT_TARGETS):
    """Fresh MultiLoRALinear layers of n_experts experts (A kaiming-uniform, B zero),
    to be trained jointly with a router: Intuition-MoR1E's many rank-1 experts.
    Return the names of the wrapped layers."""
    return _wrap(model, targets, lambda lin: MultiLoRALinear(lin, n_experts, r, alpha))


def remove_lora(model, merge=False):
    """Put plain nn.Linear layers back (the same weight/bias Parameters). merge=True
    keeps the adapters' effect in W; merge=False returns the original base W."""
    names = list(lora_modules(model))
    for name in names:
        m = model.get_submodule(name)
        m.merge() if merge else m.unmerge()
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight, lin.bias = m.weight, m.bias
        _replace(model, name, lin)
    return names


def merge_lora(model):
    for m in lora_modules(model).values():
        m.merge()


def unmerge_lora(model):
    for m in lora_modules(model).values():
        m.unmerge()


def mark_only_lora_trainable(model):
    """requires_grad only for lora_A/lora_B; everything else (base weights, biases,
    LayerNorms, embeddings) is frozen. Returns the number of trainable parameters."""
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return count_trainable(model, verbose=False)[0]


def count_trainable(model, verbose=True):
    """(trainable, total) parameter counts; prints them as PEFT does unless verbose=False."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"trainable params: {trainable:,} || all params: {total:,} || "
              f"trainable%: {100 * trainable / max(total, 1):.4f}")
    return trainable, total


def lora_state_dict(model):
    """Only the adapter tensors, under our keys (`...q_proj.lora_A.weight`)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


def set_expert_weights(model, weights, layer=None):
    """Routing weights for every MultiLoRALinear (or only those of model.layers.{layer});
    None clears them. weights (E,), (B, E) or (B, T, E) must be finite (checked once)."""
    prefix = None if layer is None else f"model.layers.{layer}."
    mods = [m for name, m in lora_modules(model, MultiLoRALinear).items()
            if prefix is None or name.startswith(prefix)]
    if weights is not None:
        for E in sorted({m.n_experts for m in mods}):
            _check_routing_weights(weights, E, "set_expert_weights")
    for m in mods:
        m.weights = weights


# ---------------------------------------------------------------------------
# 4. Adapter files in the PEFT layout
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


def probe(p, k=PROBES, first=False):
    """k values of tensor p in fp32, at k evenly spaced positions of the flattened
    tensor (all of them if it has fewer; the first k with first=True)."""
    flat = p.detach().reshape(-1)
    k = min(k, flat.numel())
    at = torch.arange(k) if first else torch.linspace(0, flat.numel() - 1, k).round().long()
    return flat[at.to(flat.device)].float().cpu()


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
    model's LoRALinear layers. r/alpha/dropout/targets default to what the layers
    hold; if given they must agree. Each file goes to a temporary name and is then
    renamed (weights first, config last), so a crash never leaves a torn file. The
    weights' metadata records lora_alpha, the one setting that the tensors' names
    and shapes do not pin down, so a crash between the two files can only leave a
    pair that agrees (read_adapter refuses one that does not).

    The base is named as PEFT names it: base_model_name_or_path is the folder or
    Hub id the user gave (model.load records it as model.model_id), and revision
    the Hub commit it resolved to (model.revision; None for a plain folder)."""
    mods = lora_modules(model, LoRALinear)
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
    tensors = {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    metadata = {"format": "pt", FINGERPRINT_KEY: json.dumps(base_fingerprint(model)),
                ALPHA_KEY: json.dumps(config["lora_alpha"])}
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, WEIGHTS_NAME), lambda p: save_file(tensors, p, metadata=metadata))
    write_json(os.path.join(out_dir, CONFIG_NAME), config, indent=2)
    return config


def expert_dirs(root):
    """{name: dir} of the adapter directories directly under root, sorted by name."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such directory of experts (train.py --expert writes them)")
    found = {d: os.path.join(root, d) for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))}
    strays = [d for d, path in found.items() if not os.path.exists(os.path.join(path, CONFIG_NAME))]
    if strays:   # never drop an expert silently: a half-written or misplaced one is an error
        raise FileNotFoundError(f"{root}: the folders {strays} hold no {CONFIG_NAME}; every folder "
                                "here must be an expert's adapter directory")
    if not found:
        raise FileNotFoundError(f"{root}: no adapter directories (with {CONFIG_NAME}) inside")
    return found


def read_adapter(model, adapter_dir, check_base=True):
    """Read and check an adapter directory against `model`.

    Returns (config, {module name: (A (r, I), B (O, r))}). Raises FileNotFoundError
    for missing files and ValueError (starting with the file's path, naming the
    key or tensor and what was expected) for a non-LoRA, unsupported or
    ill-typed config (_check_adapter_config), missing/unexpected tensors, wrong
    shapes, tensors that are not floating point or not finite (_check_tensor),
    or a base model other than the one it was made for (_check_fingerprint)."""
    cfg_path, w_path = os.path.join(adapter_dir, CONFIG_NAME), os.path.join(adapter_dir, WEIGHTS_NAME)
    config = _read_adapter_config(cfg_path, w_path)
    if lora_modules(model):
        raise ValueError("model already has LoRA layers; call remove_lora(model) first")
    with _open_weights(w_path) as f:
        fp = (f.metadata() or {}).get(FINGERPRINT_KEY)
        if check_base and fp is not None:
            _check_fingerprint(model, fp, w_path)
        _check_alpha(w_path, f.metadata() or {}, config["lora_alpha"])
        names = target_names(model, config["target_modules"])
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
    return config, layers


def load_adapter(model, adapter_dir, check_base=True):
    """Attach LoRA as adapter_config.json says and load the weights; returns the
    names of the wrapped layers. check_base=False skips the base-model fingerprint
    (to apply an adapter to a deliberately different base of the same shapes)."""
    config, layers = read_adapter(model, adapter_dir, check_base)
    names = add_lora(model, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0),
                     config["target_modules"])
    with torch.no_grad():
        for n, (A, B) in layers.items():
            m = model.get_submodule(n)
            m.lora_A.weight.copy_(A)
            m.lora_B.weight.copy_(B)
    return names


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
        multi = MultiLoRALinear(model.get_submodule(n), len(read), r_max, dropout=dropout)
        for e, (cfg, layers) in enumerate(read):
            if n in layers:
                multi.set_expert(e, *layers[n], cfg["lora_alpha"] / cfg["r"])
            else:
                multi.set_expert(e, multi.lora_A.new_zeros(1, multi.in_features),
                                 multi.lora_B.new_zeros(multi.out_features, 1), 0.0)
        _replace(model, n, multi)
    return names


# ---------------------------------------------------------------------------
# 5. Checks: what read_adapter and the routing weights refuse
# ---------------------------------------------------------------------------

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)         # JSON true is not a rank


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v, width=60):
    """repr(v), cut to `width` characters for messages."""
    text = repr(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def _bad(path, key, value, expected):
    return ValueError(f"{path}: {key} is {_short(value)}, expected {expected}")


def _check_adapter_config(path, config):
    """adapter_config.json: a LoRA config whose r, lora_alpha, lora_dropout and
    target_modules have PEFT's types and sensible ranges, and no setting that
    lora.py does not implement (UNSUPPORTED)."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise _bad(path, "peft_type", config.get("peft_type"), "'LORA'")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise ValueError(f"{path}: required key {key!r} is missing")
    r, alpha, dropout = config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0)
    if not (_is_int(r) and r > 0):
        raise _bad(path, "r", r, "a positive int")
    if not (_is_number(alpha) and math.isfinite(alpha) and alpha > 0):
        raise _bad(path, "lora_alpha", alpha, "a finite number > 0")
    if not (_is_number(dropout) and 0 <= dropout < 1):
        raise _bad(path, "lora_dropout", dropout, "a number in [0, 1)")
    _check_targets(path, config["target_modules"])
    if config.get("bias", "none") != "none":
        raise ValueError(f"{path}: bias {config['bias']!r} is not supported (only 'none')")
    for key in UNSUPPORTED:
        if config.get(key):
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported by lora.py")


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
    """save_adapter: unmerged LoRALinear layers that agree on r, alpha and dropout
    (and with the values given), selected exactly by target_modules."""
    if not mods:
        raise ValueError("model has no LoRALinear layers to save (MultiLoRALinear is not a PEFT adapter)")
    if any(m.merged for m in mods.values()):
        raise ValueError("adapters are merged into W; unmerge_lora(model) before saving")
    for k, vals in held.items():
        if len(vals) != 1 or (given[k] is not None and given[k] not in vals):
            raise ValueError(f"{k}: layers hold {sorted(vals)}, asked to save {given[k]}")
    if set(target_names(model, targets)) != set(mods):
        raise ValueError(f"target_modules {targets!r} do not select exactly the {len(mods)} LoRA layers")


def _read_adapter_config(cfg_path, w_path):
    """adapter_config.json, checked (_check_adapter_config), with the weights file beside it."""
    for path in (cfg_path, w_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found (an adapter directory holds {CONFIG_NAME} "
                                    f"and {WEIGHTS_NAME})")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    _check_adapter_config(cfg_path, config)
    return config


def _check_alpha(w_path, metadata, alpha):
    """The config's lora_alpha is the one the weights were saved with (adapters from
    elsewhere record none). A save interrupted between the two files, or an edit
    of lora_alpha, would otherwise rescale every update silently."""
    saved = metadata.get(ALPHA_KEY)
    if saved is not None and json.loads(saved) != alpha:
        raise ValueError(f"{w_path}: saved with lora_alpha {json.loads(saved)}, but {CONFIG_NAME} says "
                         f"{alpha} (a save interrupted between the two files, or an edit of lora_alpha; "
                         "the scale belongs to the weights)")


def _open_weights(w_path):
    try:
        return safe_open(w_path, framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{w_path}: truncated or corrupt safetensors file ({e})") from None


def _check_keys(w_path, config, expected, keys):
    """The file holds exactly the A and B of every Linear that target_modules selects."""
    if not expected:
        raise ValueError(f"{w_path[:-len(WEIGHTS_NAME)]}{CONFIG_NAME}: target_modules "
                         f"{config['target_modules']!r} match no Linear of this model")
    missing, unexpected = sorted(set(expected) - keys), sorted(keys - set(expected))
    if missing or unexpected:
        parts = [f"{what} {len(ks)} tensors, e.g. {ks[:3]}" for what, ks in
                 (("missing", missing), ("unexpected", unexpected)) if ks]
        raise ValueError(f"{w_path}: tensors do not match {CONFIG_NAME} (target_modules "
                         f"{config['target_modules']!r}, r={config['r']}) and this model: " + "; ".join(parts))


def _check_tensor(path, key, t, shape=None, lin=None, r=None):
    """An adapter tensor: of `shape` (the Linear lin's, at rank r), floating point,
    no NaN or inf. Returns it."""
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected {shape} "
                         f"(r={r} from {CONFIG_NAME}; the layer is Linear({lin.in_features}, "
                         f"{lin.out_features}))")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{path}: tensor {key} has dtype {t.dtype}, expected a floating-point dtype "
                         "(float16, bfloat16, float32 or float64)")
    if not torch.isfinite(t).all():
        nan, inf = int(t.isnan().sum()), int(t.isinf().sum())
        raise ValueError(f"{path}: tensor {key} has {nan} NaN and {inf} inf values, expected finite values")
    return t


def _check_fingerprint(model, fp, path):
    """Refuse an adapter made for another base: first the config's shapes, then
    the sampled values of every tensor, to rtol 1e-2 (bf16 rounds by at most
    2^-9, relative). Older fingerprints sampled only the first 8 values of the
    first tensor ("probe_tensor", "probe"): those are checked as they are."""
    try:
        fp = json.loads(fp)
        old = "probe_tensor" in fp
        probes = {fp["probe_tensor"]: fp["probe"]} if old else fp["probes"]
        probes = {n: torch.tensor(v, dtype=torch.float32).reshape(-1) for n, v in probes.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ValueError(f"{path}: metadata {FINGERPRINT_KEY} is malformed: expected a JSON object as "
                         "base_fingerprint writes it") from None
    cfg = getattr(model, "config", None)
    diff = [f"{k} {fp[k]} (this model: {getattr(cfg, k, None)})" for k in SHAPE_FIELDS
            if k in fp and fp[k] != getattr(cfg, k, None)]
    if diff:
        raise ValueError(f"{path}: adapter was made for another base model: " + ", ".join(diff))
    params = dict(base_parameters(model))
    differ = [n for n, saved in probes.items() if n not in params or not torch.allclose(
        probe(params[n], saved.numel(), first=old), saved, rtol=1e-2, atol=1e-4)]
    if differ:
        more = f" (and {len(differ) - 1} more tensors)" if len(differ) > 1 else ""
        raise ValueError(f"{path}: adapter was made for another base model: the base's {differ[0]} "
                         f"differs{more} (same shapes, different weights)")


def _check_routing_weights(w, n_experts, where):
    """Routing weights: a floating-point tensor (E,), (B, E) or (B, T, E) of finite values."""
    if not (isinstance(w, torch.Tensor) and w.is_floating_point()):
        raise ValueError(f"{where}: routing weights must be a floating-point tensor, got {_short(w)}")
    if w.dim() not in (1, 2, 3) or w.shape[-1] != n_experts:
        raise ValueError(f"{where}: routing weights {tuple(w.shape)}, expected (E,), (B, E) or "
                         f"(B, T, E) with E={n_experts}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{where}: routing weights {tuple(w.shape)} contain NaN or inf, "
                         "expected finite values")
