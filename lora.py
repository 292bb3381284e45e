"""
LoRA by hand: low-rank adapters on the Linear layers of model.py's phi, a
multi-expert LoRA layer for the router, and merging. Their files, in the PEFT
layout, are formats/adapters.py's.

    names = add_lora(model, r=8, alpha=16)        # q/k/v/dense/fc1/fc2 get adapters
    mark_only_lora_trainable(model)               # ... train ...
    merge_lora(model)                             # zero-overhead inference: W + (alpha/r) B A

Chapters, top to bottom:
  1. LoRALinear        y = W x + b + (alpha/r) * B(A(dropout(x))); merge/unmerge
  2. MultiLoRALinear   E experts in one layer, mixed by router weights (einsum, no loop)
  3. attach/detach     add_lora, remove_lora, merge_lora, mark_only_lora_trainable, ...
  4. checks            the routing weights (_check_routing_weights)

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

Left out: DoRA, rsLoRA, per-module rank/alpha patterns, trainable biases, LoRA
on embeddings, several named adapters in one module (MultiLoRALinear instead),
quantised bases. formats/adapters.py refuses files that need one, naming the setting.
"""
import math
import re
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from formats.files import UserError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")


@dataclass
class LoRAConfig:
    """A fresh LoRA's settings (train.py's --rank, --alpha, --dropout, --targets),
    for add_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets)."""
    rank: int = 8
    alpha: float = 16.0           # the update is scaled by alpha / rank
    dropout: float = 0.0
    targets: tuple = DEFAULT_TARGETS


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
            raise UserError(f"LoRA rank r must be positive, got {r}")
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

    How weights reach the layer. forward(x, weights) takes them as an input.
    Inside the model, though, the Linear is called as self.q_proj(x) (the model's
    forward signature is fixed), so weights=None reads `self.weights`, which
    someone wrote before the layer ran: set_expert_weights() for every layer, or
    a router's forward pre-hook on the decoder layer, which sees the layer's input
    first (router.py; router.routed_linear writes that path out as plain math).
    All experts' A x are computed at once (E*r extra dims, cheap for small r),
    with one dropout mask.

    forward(x) runs in every target Linear at every decoding step and checks
    nothing. Weights from outside are checked where they come in, by
    set_expert_weights and merge: finite floats (..., E). A router's hook writes
    its own softmax output unchecked (a check would stop a GPU at every layer)."""

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
        self.weights = None          # forward's weights when it is given none: a router's hook sets them
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
                raise UserError(f"expert {e} wraps a different base weight than expert 0")
            multi.set_expert(e, m.lora_A.weight, m.lora_B.weight, m.scaling)
        return multi

    @torch.no_grad()
    def set_expert(self, e, A, B, scaling):
        """Copy one expert in: A (r_e, I), B (O, r_e) with r_e <= r; rows beyond r_e stay zero."""
        r_e = A.shape[0]
        if r_e > self.r or A.shape != (r_e, self.in_features) or B.shape != (self.out_features, r_e):
            raise UserError(f"expert {e}: A {tuple(A.shape)} / B {tuple(B.shape)} do not fit "
                             f"A (<= {self.r}, {self.in_features}) / B ({self.out_features}, <= {self.r})")
        self.lora_A[e].zero_()
        self.lora_B[e].zero_()
        self.lora_A[e, :r_e] = A
        self.lora_B[e, :, :r_e] = B
        self.lora_scaling[e] = scaling

    def forward(self, x, weights=None):
        """x (B, T, I) -> (B, T, O). weights (B, T, E), (B, E) or (E,): the routing
        weights w_e; None reads self.weights (set by a router's hook or set_expert_weights)."""
        y = F.linear(x, self.weight, self.bias)                        # (B, T, O)
        if self.merged is not None:
            return y
        w = (self.weights if weights is None else weights).float() * self.lora_scaling   # (..., E): s_e folded into w_e
        if w.dim() == 2:
            w = w[:, None, :]                                           # (B, E) -> (B, 1, E): same for every token
        # Legend: b batch, t token, i in, o out, e expert, r rank. The two einsums
        # "bti,eri->bter" and "bter,eor->bto", written as two plain matmuls over the
        # E*r stacked rank dimensions, which is what makes them fast:
        E, r = self.n_experts, self.r
        x = self.lora_dropout(x).to(self.lora_A.dtype)
        A = self.lora_A.reshape(E * r, self.in_features)               # (E, r, I) -> (E*r, I)
        u = F.linear(x, A).unflatten(-1, (E, r))                        # (B, T, I) @ (E*r, I)^T = (B, T, E*r) -> (B, T, E, r)
        u = (u * w[..., None].to(u.dtype)).flatten(-2)                  # (B, T, E, r) * (B|1, T|1, E, 1) -> (B, T, E*r)
        return y + (u @ self.stacked_B()).to(y.dtype)                   # (B, T, E*r) @ (E*r, O) -> (B, T, O): sum over e and r

    def stacked_B(self):
        """lora_B (E, O, r) as one (E*r, O) matrix, row e*r + j = B_e[:, j]. Under
        autograd it is built every call. For inference it is cached (in a decode
        step, rebuilding it makes the layer's forward about 30% slower on the CPU)
        until lora_B changes: in place (an optimizer step, set_expert,
        load_state_dict; tensor._version counts those) or by new data (module.to(),
        .half(), `.data =`; they keep _version but put the data at a new address).
        The cache keeps the tensor it was built from, so that no other data can
        take over that address while it is the key."""
        B = self.lora_B
        def build():
            return B.transpose(1, 2).reshape(self.n_experts * self.r, self.out_features)   # (E, O, r) -> (E, r, O) -> (E*r, O)
        if torch.is_grad_enabled() and B.requires_grad:
            return build()
        key = (B._version, B.data_ptr())
        if getattr(self, "_stacked_key", None) != key:
            self._stacked_B, self._stacked_key, self._stacked_from = build().contiguous(), key, B.detach()
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
            raise UserError("MultiLoRALinear.merge needs .weights of shape (E,): one fixed mix")
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


def replace_module(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _wrap(model, targets, make):
    """Replace every Linear that `targets` selects by make(linear), in place; return their names."""
    if lora_modules(model):
        raise UserError("model already has LoRA layers; call remove_lora(model) first")
    names = target_names(model, targets)
    if not names:
        raise UserError(f"targets {targets!r} match no nn.Linear in the model")
    for name in names:
        replace_module(model, name, make(model.get_submodule(name)))
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
        replace_module(model, name, lin)
    return names


def merge_lora(model):
    """Fold every adapter into its W; refused, W restored, if that overflows W's dtype."""
    for m in lora_modules(model).values():
        m.merge()
        if not torch.isfinite(m.weight).all():   # e.g. a huge adapter in a bf16 or fp16 base
            unmerge_lora(model)
            raise UserError(f"the adapters' update s*B@A overflows the base weights' {m.weight.dtype}: "
                             "merged, they hold inf or NaN (is an adapter scaled wrongly?)")


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
              f"trainable%: {100 * trainable / max(total, 1):.4f}", file=sys.stderr)
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
# 4. Checks
# ---------------------------------------------------------------------------


def check_targets(model, targets):
    """Each of the target names selects some Linear of the model (PEFT silently
    drops one that does not, so a typo would train fewer layers than asked)."""
    unknown = [t for t in targets if not target_names(model, [t])]
    if unknown:
        names = sorted({n.rsplit(".", 1)[-1] for n in target_names(model, "all-linear")})
        raise UserError(f"--targets: {unknown} select no Linear of the model; its Linears are named {names}")


def _check_routing_weights(w, n_experts, where):
    """Routing weights: a floating-point tensor (E,), (B, E) or (B, T, E) of finite values."""
    if not (isinstance(w, torch.Tensor) and w.is_floating_point()):
        raise UserError(f"{where}: routing weights must be a floating-point tensor, got {repr(w)[:60]}")
    if w.dim() not in (1, 2, 3) or w.shape[-1] != n_experts:
        raise UserError(f"{where}: routing weights {tuple(w.shape)}, expected (E,), (B, E) or "
                         f"(B, T, E) with E={n_experts}")
    if not torch.isfinite(w).all():
        raise UserError(f"{where}: routing weights {tuple(w.shape)} contain NaN or inf, "
                         "expected finite values")

