"""
Two-level routing over LoRA skill experts: a task-level router over whole
questions and a layer-wise grouped gate over tokens, mixed by a learned weight.

    adapters.load_experts(model, dirs)                 # E experts stacked per layer
    router = from_experts(cfg, X, labels, n_groups=3)  # centroids, groups, task-level fit
    router.attach(model)                               # one grouped gate per layer
    router.set_prior(router.task.prior(embeddings))    # (B, E) for the questions in the batch
    logits = model(idx)                                # the gates route inside every layer

Chapters:
  1. TaskRouter   question -> distribution over experts, from the embedding of its
                  meta-question (cluster.py): training-free (similarity to the expert
                  centroids) or learned (a linear classifier on the train split)
  2. GroupedGate  AT-MoE's layer-wise grouped gate, for layer l and input h:
                      w[g, e] = softmax_g(U_l h)[g] * softmax_{e in g}(V_l h)[e]
                  group weights first, then a normalisation inside each group; the
                  E weights sum to 1 and each group's share is explicit
  3. Router       the two levels together: in layer l,
                      w = lambda_l * prior + (1 - lambda_l) * gate_l(h),
                  lambda_l = sigmoid(mix_l) learned (T-REX mixes centroid similarity
                  with a learned router the same way); optional top-k with
                  renormalisation, temperature, an entropy regulariser and a
                  load-balancing loss; forward pre-hooks write the weights into
                  the layer's MultiLoRALinear modules; record() keeps them.
                  routed_linear() writes one layer's routing and one mixed Linear
                  out in full, the reference the hooks are tested against
  4. from experts each expert's centroid is the mean meta-question embedding of
                  the training questions labelled as its own (its skill, or its
                  cluster); the groups are a k-means of the centroids; the task
                  router is fitted to the same labels. Rank-1 experts (Intuition-
                  MoR1E) have no questions of their own: contiguous groups, no prior.
                  train.py --router's settings (RouterTraining) and the task-level
                  weights it hands the router per batch (TaskPriors)
Every field of a RouterConfig is checked by formats/router_fields.py, whether it
comes from Python or from router.json (which formats/routers.py reads and writes).

train.py --router builds a router from experts and questions, eval.py --moe runs one.
With one expert in one group, the router reduces to that expert's LoRA
(a test checks it). Hard task-level routing to one expert is served by merging
that expert into the weights (eval.py does it): zero inference overhead.

References: AT-MoE (arXiv 2410.10896) for the grouped gate; Intuition-MoR1E /
T-REX (arXiv 2404.08985) for centroid "intuition", the learned mix, rank-1
experts and entropy regularisation; Switch Transformer (arXiv 2101.03961) for
the load-balancing loss. The AT-MoE equations are our reading of its description
(group weights first, then weights normalised within each group).

Letters: B batch, T tokens, C hidden size, E experts, G groups, L layers, N questions.
Rank-1 experts (train.py --router --rank1 N): N fresh rank-1 LoRA experts per
layer, trained with the gates on mixed data (Intuition-MoR1E); no task prior.

Left out: per-expert capacity limits and token dropping (dense mixing of small
LoRA experts costs little), and gates that see more than their layer's input.
"""
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import kmeans
import lora
from formats import adapters
from formats.files import UserError
from formats.router_fields import check_config, check_positive

# ---------------------------------------------------------------------------
# 1. Task level
# ---------------------------------------------------------------------------


class TaskRouter(nn.Module):
    """Meta-question embedding (N, C) -> expert distribution (N, E).

    centroid (training-free): softmax over experts of -d^2 / (tau * s), d the
    distance to each expert's centroid (the mean embedding of its train
    questions) and s the median squared distance of a question to its nearest
    centroid, so tau is scale-free. learned: softmax(W x + b), fitted by
    cross-entropy to the expert labels of the train questions."""

    def __init__(self, centroids, kind="centroid", tau=1.0):
        super().__init__()
        check_positive("TaskRouter", "tau", tau)
        if kind not in ("centroid", "learned"):
            raise UserError(f"TaskRouter: kind is {kind!r}, expected 'centroid' or 'learned'")
        E, C = centroids.shape
        self.kind, self.tau = kind, tau
        self.register_buffer("centroids", torch.as_tensor(centroids, dtype=torch.float32))   # (E, C)
        self.register_buffer("scale", torch.ones(()))
        self.linear = nn.Linear(C, E)

    def _tensor(self, X):
        """Embeddings (N, C), NumPy or torch, as fp32 on the router's device."""
        return torch.as_tensor(X, dtype=torch.float32, device=self.centroids.device)

    def distances(self, X):
        return torch.cdist(self._tensor(X), self.centroids) ** 2                     # (N, E)

    @torch.no_grad()
    def calibrate(self, X):
        self.scale.fill_(self.distances(X).min(dim=1).values.median().clamp(min=1e-8))

    def fit(self, X, labels, steps=300, lr=0.05, weight_decay=1e-3):
        """Calibrate the centroid scale and fit the learned classifier (full batch)."""
        self.calibrate(X)
        X = torch.as_tensor(X, dtype=torch.float32)
        mu, sd = X.mean(0), X.std(0) + 1e-6
        with torch.no_grad():   # fold the standardisation into the layer afterwards
            self.linear.reset_parameters()
        opt = torch.optim.Adam(self.linear.parameters(), lr=lr, weight_decay=weight_decay)
        y = torch.as_tensor(labels, dtype=torch.long)
        Z = (X - mu) / sd
        for _ in range(steps):
            loss = F.cross_entropy(self.linear(Z), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():   # W (x - mu) / sd + b  ==  (W / sd) x + (b - W mu / sd)
            W = self.linear.weight / sd
            self.linear.bias -= (self.linear.weight * (mu / sd)).sum(1)
            self.linear.weight.copy_(W)
        return loss.item()

    @torch.no_grad()
    def prior(self, X):
        if self.kind == "centroid":
            return F.softmax(-self.distances(X) / (self.tau * self.scale), dim=-1)
        return F.softmax(self.linear(self._tensor(X)), dim=-1)


# ---------------------------------------------------------------------------
# 2. The grouped gate of one layer
# ---------------------------------------------------------------------------


def membership(groups, E):
    """One-hot (E, G): member[e, g] = 1 if expert e is in group g. Groups partition 0..E-1."""
    flat = sorted(e for g in groups for e in g)
    if flat != list(range(E)):
        raise UserError(f"groups {groups} must partition the experts 0..{E - 1}, each exactly once")
    member = torch.zeros(E, len(groups))
    for g, members in enumerate(groups):
        member[members, g] = 1.0
    return member


class GroupedGate(nn.Module):
    """w = softmax_g(U h / t)[group(e)] * softmax_{e' in group(e)}(V h / t)[e].

    Both projections start at zero: every group gets 1/G and every expert 1/|g|
    of its group, a neutral start for the learned mix.

    Computed in log space, where the two softmaxes are sums:
        log w[e] = log_softmax(u)[g(e)] + v[e] - logsumexp_{e' in g(e)} v[e']
    with u = U h / t and v = V h / t. logsumexp is stable for each group on its
    own (exp(v) of a group far below another's max would underflow to 0/0), and
    it takes a handful of operations, which counts: the gate runs in every layer
    at every decoding step."""

    def __init__(self, C, member, temperature=1.0):
        super().__init__()
        check_positive("GroupedGate", "temperature", temperature)
        E, G = member.shape
        self.U = nn.Linear(C, G)
        self.V = nn.Linear(C, E)
        for lin in (self.U, self.V):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.register_buffer("log_member", member.log(), persistent=False)   # (E, G): 0 in e's group, -inf outside
        self.register_buffer("group_of", member.argmax(1), persistent=False)   # (E,): g(e)
        self.temperature = temperature

    def forward(self, h):
        """h (..., C) -> expert weights (..., E); rows sum to 1."""
        h = h.float()
        log_g = F.log_softmax(self.U(h) / self.temperature, dim=-1)       # (..., G) log group weights
        v = self.V(h) / self.temperature                                # (..., E)
        lse = torch.logsumexp(v.unsqueeze(-1) + self.log_member, dim=-2)     # (..., E, G) -> (..., G) per group
        return torch.exp(v + (log_g - lse)[..., self.group_of])          # (..., E)


# ---------------------------------------------------------------------------
# 3. The router: both levels, regularisers, hooks, recording
# ---------------------------------------------------------------------------


@dataclass
class RouterConfig:
    experts: list                 # expert names, in the order they are stacked
    groups: list                  # expert indices per group (a partition)
    hidden_size: int
    n_layers: int
    level: str = "token"          # gate input: each token's h ("token") or h pooled over the input ("sequence")
    prior: str = "centroid"       # task level: "centroid", "learned" or "none" (gate only)
    top_k: int = 0                # keep the k largest weights and renormalise (0 = all)
    temperature: float = 1.0      # of the gate softmaxes
    tau: float = 1.0              # of the centroid prior
    entropy_weight: float = 0.0   # + weight * mean entropy of w (> 0 sharpens, < 0 spreads)
    balance_weight: float = 0.0   # + weight * E * sum_e f_e P_e (Switch load balancing)
    embed_layer: int = 0          # the base-model layer of the meta-question embeddings
    rank1: int = 0                # > 0: that many fresh rank-1 experts, trained with the gates
    rank1_alpha: float = 2.0      # their LoRA alpha (scale alpha/1)
    targets: list = field(default_factory=lambda: list(lora.DEFAULT_TARGETS))   # rank-1 expert modules
    expert_dirs: dict = field(default_factory=dict)   # {expert: its adapter folder} ({}: rank-1 experts);
                                                      # router.json has them from its own folder
    clusters_dir: str | None = None  # cluster.py's output the expert labels came from, if any
    experts_sha256: dict = field(default_factory=dict)   # {expert: sha256 of its adapter weights}
    weights_sha256: str | None = None   # of router.safetensors: save_router writes it


class Router(nn.Module):
    def __init__(self, cfg, centroids):
        super().__init__()
        self.cfg = cfg
        E = len(cfg.experts)
        member = membership(cfg.groups, E)
        self.register_buffer("member", member, persistent=False)             # (E, G): expert weights @ member = group weights
        self.gates = nn.ModuleList(GroupedGate(cfg.hidden_size, member, cfg.temperature)
                                   for _ in range(cfg.n_layers))
        self.mix = nn.Parameter(torch.zeros(cfg.n_layers))   # lambda_l = sigmoid(mix_l), 0.5 at start
        self.task = TaskRouter(centroids, "learned" if cfg.prior == "learned" else "centroid", cfg.tau)
        self.prior_w = None          # (B, E) task-level weights of the current batch
        self.pooled = {}             # level="sequence": h pooled per layer at the prefill, kept for decode steps
        self.aux = []                # regulariser terms of the last forward
        self.recording = None        # inside record(): a Recording of the weights
        self.handles = []
        self.rank1 = nn.ParameterList()   # cfg.rank1 > 0: the experts' A and B, trained here

    def own_experts(self, model):
        """Rank-1 experts: add them to `model` (fresh) and register their A and B as
        router parameters, so they train, save and load with the gates."""
        lora.add_experts(model, self.cfg.rank1, 1, self.cfg.rank1_alpha, self.cfg.targets)
        for m in lora.lora_modules(model, lora.MultiLoRALinear).values():
            self.rank1.extend([m.lora_A, m.lora_B])
        return self

    def set_prior(self, prior):
        """Task-level weights (B, E) for the next forward(s), or None."""
        self.prior_w = prior

    def weights(self, layer, h, allowed=None, start=0):
        """Final expert weights for layer `layer` with input h (B, T, C):
        (B, T, E) at token level, (B, E) at sequence level. allowed and start are
        the layer's attention mask and first cache slot (model.py's forward)."""
        if self.cfg.level == "sequence":
            if start == 0:                         # a new sequence (prefill, training): pool it
                self.pooled[layer] = pool(h, allowed)                 # (B, C)
            h = self.pooled[layer]                 # later calls on the KV cache reuse it
        w = self.gates[layer](h)                                      # (B, [T,] E)
        if self.prior_w is not None and self.cfg.prior != "none":
            p = self.prior_w.to(w.device, w.dtype)
            w = torch.lerp(w, p[:, None, :] if w.dim() == 3 else p, torch.sigmoid(self.mix[layer]))   # lam p + (1 - lam) w
        if self.cfg.top_k:
            kth = w.topk(self.cfg.top_k, dim=-1).values[..., -1:]
            w = w * (w >= kth)
            w = w / w.sum(dim=-1, keepdim=True)
        return w

    def regularisers(self, w):
        """Entropy of the weights and the Switch load-balancing term."""
        flat = w.reshape(-1, w.shape[-1])                              # (N, E)
        terms = []
        if self.cfg.entropy_weight:
            entropy = -(flat * flat.clamp(min=1e-9).log()).sum(-1).mean()
            terms.append(self.cfg.entropy_weight * entropy)
        if self.cfg.balance_weight:
            E = flat.shape[-1]
            f = F.one_hot(flat.argmax(-1), E).float().mean(0)           # share of top-1 choices
            terms.append(self.cfg.balance_weight * E * (f * flat.mean(0)).sum())
        return terms

    def aux_loss(self):
        return sum(self.aux) if self.aux else 0.0

    def attach(self, model):
        """Install a forward pre-hook on every decoder layer: it computes that layer's
        weights from the layer's input and hands them to its MultiLoRALinear modules."""
        layers = model.model.layers
        if len(layers) != self.cfg.n_layers:
            raise UserError(f"router has {self.cfg.n_layers} layers, the model {len(layers)}")
        multi = lora.lora_modules(model, lora.MultiLoRALinear)
        if not multi:
            raise UserError("the model has no MultiLoRALinear layers: adapters.load_experts() first")
        for l, layer in enumerate(layers):
            mods = [m for n, m in multi.items() if n.startswith(f"model.layers.{l}.")]

            def hook(module, inputs, l=l, mods=mods):
                x, cos, sin, allowed, start = inputs                    # PhiDecoderLayer's arguments
                w = self.weights(l, x, allowed, start)
                if l == 0:
                    self.aux = []
                if self.training:
                    self.aux += self.regularisers(w)
                if self.recording is not None:
                    self.recording.add(l, w)
                for m in mods:
                    m.weights = w
            self.handles.append(layer.register_forward_pre_hook(hook))
        return self

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    @contextmanager
    def record(self):
        """with router.record() as rec: generate(...); then rec.weights() is (B, L, E),
        each layer's weights at the last position, averaged over the forwards inside:
        the prefill's last token and every decode step, i.e. the tokens that produced
        the answer."""
        self.recording = Recording(self.cfg.n_layers)
        try:
            yield self.recording
        finally:
            self.recording = None


def routed_linear(router, layer, h, x, linear, prior=None):
    """One layer's two-level routing and one of its mixed LoRA Linears, written
    out in full: the reference that the running path (Router.attach's hook
    writing Router.weights into MultiLoRALinear.weights, then its stacked-matmul
    forward) must match, as model.attention() is for sdpa. Computed in float64.

    h (B, T, C) the decoder layer's input (what the gate sees); x (B, T, I) the
    input of `linear`, a MultiLoRALinear of that layer; prior (B, E) the task
    level, or None. Returns y (B, T, O). No padding: at sequence level the gate
    sees the mean of h over all T tokens.

    Letters: B batch, T tokens, C hidden, E experts, G groups, r rank, I in, O out.
    einsum legend: b batch, t token, e expert, r rank, i in, o out."""
    cfg, gate = router.cfg, router.gates[layer]
    h, x = h.double(), x.double()
    if cfg.level == "sequence":
        h = h.mean(dim=1, keepdim=True)                                # (B, T, C) -> (B, 1, C): one input per question
    # 1. The grouped gate: group weights first, then a softmax inside each group.
    t = gate.temperature
    u = (h @ gate.U.weight.double().T + gate.U.bias.double()) / t      # (B, T, G) group scores
    v = (h @ gate.V.weight.double().T + gate.V.bias.double()) / t      # (B, T, E) expert scores
    group_w = torch.softmax(u, dim=-1)                                 # (B, T, G), sums to 1 over groups
    w_gate = torch.zeros_like(v)                                       # (B, T, E)
    for g, members in enumerate(cfg.groups):
        inside = torch.softmax(v[..., members], dim=-1)                # (B, T, |g|), sums to 1 in the group
        w_gate[..., members] = group_w[..., g:g + 1] * inside          # (B, T, 1) * (B, T, |g|)
    # 2. The mix with the task level: w = lambda_l * prior + (1 - lambda_l) * w_gate.
    w = w_gate
    if prior is not None and cfg.prior != "none":
        lam = torch.sigmoid(router.mix[layer].double())                # scalar in (0, 1)
        w = lam * prior.double()[:, None, :] + (1 - lam) * w_gate      # (B, E) -> (B, 1, E), broadcast over T
    # 3. Optional top-k: keep the k largest weights, renormalise them to sum 1.
    if cfg.top_k:
        kth = w.topk(cfg.top_k, dim=-1).values[..., -1:]               # (B, T, 1) the k-th largest
        w = torch.where(w >= kth, w, 0.0)
        w = w / w.sum(dim=-1, keepdim=True)                            # (B, T, E)
    # 4. The experts: y = W x + b + sum_e w_e * (alpha/r)_e * B_e A_e x.
    y = x @ linear.weight.double().T                                   # (B, T, I) @ (I, O) -> (B, T, O)
    if linear.bias is not None:
        y = y + linear.bias.double()
    A, B = linear.lora_A.double(), linear.lora_B.double()             # (E, r, I), (E, O, r)
    s = linear.lora_scaling.double()                                   # (E,) each expert's alpha / r
    Ax = torch.einsum("eri,bti->bter", A, x)                           # (B, T, E, r)
    return y + torch.einsum("bte,e,eor,bter->bto", w, s, B, Ax)        # (B, T, O): summed over e and r


def pool(h, allowed):
    """Mean of h (B, T, C) over each row's real tokens, (B, C). allowed is the
    attention mask (B or 1, 1, T, T), or None when every token is real. The last
    query of a left-padded row is a real token, and it sees exactly its row's
    real tokens, so its mask row says which tokens to average."""
    if allowed is None:
        return h.float().mean(dim=1)
    real = allowed[:, 0, -1, :].float()                                # (B or 1, T)
    return (h.float() * real[..., None]).sum(1) / real.sum(1, keepdim=True)


class Recording:
    """The expert weights (B, E) of each layer, one entry per forward."""

    def __init__(self, n_layers):
        self.steps = [[] for _ in range(n_layers)]

    def add(self, layer, w):
        self.steps[layer].append((w[:, -1] if w.dim() == 3 else w).detach().float().cpu())   # (B, E)

    def weights(self):
        return torch.stack([torch.stack(ws).mean(0) for ws in self.steps], dim=1)          # (B, L, E)


# ---------------------------------------------------------------------------
# 4. A router from experts
# ---------------------------------------------------------------------------


@dataclass
class RouterTraining:
    """train.py --router's settings for the router it trains (cli.py declares the
    flags of the same names); config() makes the RouterConfig it saves, build()
    the router itself."""
    experts: str                  # a folder of expert adapters, one sub-folder each (not with rank1)
    router_questions: int         # train questions per skill that the router trains on
    level: str
    prior: str
    rank1: int                    # > 0: that many fresh rank-1 experts instead of the folder's
    n_groups: int | None          # None: group_count's choice
    top_k: int
    temperature: float
    tau: float
    entropy_weight: float
    balance_weight: float
    alpha: float                  # the rank-1 experts' LoRA alpha
    targets: str                  # the rank-1 experts' modules, comma-separated

    def config(self, names, model_config, **fields):
        """The RouterConfig over the experts `names` of a model (groups are made with the router)."""
        return RouterConfig(
            experts=names, groups=[], hidden_size=model_config.hidden_size, n_layers=model_config.num_hidden_layers,
            level=self.level, prior="none" if self.rank1 else self.prior, top_k=self.top_k,
            temperature=self.temperature, tau=self.tau, entropy_weight=self.entropy_weight,
            balance_weight=self.balance_weight, rank1=self.rank1, rank1_alpha=self.alpha,
            targets=self.targets.split(","), **fields)

    def build(self, model, questions, X, labels, layer, clusters, seed, device):
        """The router that train.py --router trains, attached to `model` (frozen),
        over the experts in the folder self.experts or over self.rank1 fresh
        rank-1 experts. `questions` are the train then the dev questions, X (N, C)
        their meta-question embeddings at `layer` (found with the base alone),
        labels the expert of each train question (cluster.router_inputs, from
        `clusters` for cluster experts); rank-1 routers have none (None).
        Only the gates and mix (and rank-1 experts) train. Returns the
        questions' TaskPriors."""
        for p in model.parameters():
            p.requires_grad_(False)
        if self.rank1:
            names = [f"r1-{e:02d}" for e in range(self.rank1)]
            router = with_rank1(self.config(names, model.config),
                                group_count(self.n_groups, self.rank1, self.top_k)).own_experts(model)
            print(f"router over {self.rank1} fresh rank-1 experts ({sum(p.numel() for p in router.rank1):,} "
                  f"parameters) in {len(router.cfg.groups)} groups, gate per {self.level}, no task prior",
                  file=sys.stderr)
        else:
            dirs = adapters.expert_dirs(self.experts)
            names = list(dirs)
            adapters.load_experts(model, list(dirs.values()))
            wanted = self.config(names, model.config, embed_layer=layer, expert_dirs=dirs, clusters_dir=clusters,
                                 experts_sha256=adapters.experts_sha256(dirs))
            router, task_loss = from_experts(wanted, X[:len(labels)], labels,
                                             group_count(self.n_groups, len(names), self.top_k), seed)
            print(f"router over {len(names)} experts {names} in groups {group_names(router.cfg)}; task prior "
                  f"'{self.prior}' (classifier loss {task_loss:.3f}), gate per {self.level}", file=sys.stderr)
        router.to(device).attach(model)
        for p in router.task.parameters():
            p.requires_grad_(False)
        return TaskPriors(router, questions, X)


class TaskPriors:
    """The task-level weights of every training and dev question (a router's
    task.prior of their embeddings X), by question: set() hands a batch's to the
    router before each training step, dev_batch() before each dev batch."""

    def __init__(self, router, examples, X):
        self.router = router
        self.prior = {} if X is None else {e.question: p for e, p in zip(examples, router.task.prior(X))}

    def set(self, examples):
        if self.router.cfg.prior == "none":
            self.router.set_prior(None)
        else:
            self.router.set_prior(torch.stack([self.prior[e.question] for e in examples]))   # (B, E)

    def dev_batch(self, questions):
        """eval.evaluate()'s per_batch: the task-level priors of each batch of dev questions."""
        @contextmanager
        def route(indices):
            self.set([questions[i] for i in indices])
            yield []
        return route


def group_count(requested, E, top_k=0):
    """The number of groups: `requested`, or 3 (fewer with fewer than 3 experts).
    More groups than experts is refused, and so is a top-k above E."""
    if requested is not None and requested > E:
        raise UserError(f"--n-groups {requested}: more groups than the {E} experts")
    if top_k > E:
        raise UserError(f"--top-k {top_k}: more than the {E} experts (0 keeps them all)")
    return requested or min(3, E)


def from_experts(cfg, X, labels, n_groups, seed=0):
    """A Router over cfg.experts from labelled embeddings: X (N, C) the
    meta-question embeddings of the training questions, labels (N,) the expert
    each belongs to (-1: none). Returns (router, the task classifier's loss).

        centroid_e = mean of X[labels == e]                 (E, C)
        groups     = k-means of the centroids into n_groups
        task       = fitted to (X, labels): scale calibrated, classifier trained
    cfg.groups is replaced by the groups made here."""
    missing = [n for i, n in enumerate(cfg.experts) if not (labels == i).any()]
    if missing:
        raise UserError(f"no training questions for the experts {missing}; expert names must be "
                        f"skills in the data or cluster-K (with --clusters)")
    centroids = np.stack([X[labels == e].mean(0) for e in range(len(cfg.experts))])   # (E, C)
    groups = [g for g in kmeans.expert_groups(centroids, n_groups, seed=seed) if g]
    router = make_router(replace(cfg, groups=groups), centroids)
    keep = labels >= 0
    return router, router.task.fit(X[keep], labels[keep])


def with_rank1(cfg, n_groups):
    """A Router over cfg.rank1 fresh rank-1 experts in n_groups contiguous groups
    (sizes differ by at most 1): no questions of their own, so no centroids and
    no task prior. own_experts(model) then adds the experts."""
    E = cfg.rank1
    groups = [[int(e) for e in g] for g in np.array_split(np.arange(E), n_groups)]
    return make_router(replace(cfg, groups=groups, prior="none"), np.zeros((E, cfg.hidden_size), np.float32))


def make_router(cfg, centroids, where="RouterConfig"):
    """Router(cfg, centroids) once every field of cfg is checked (check_config)."""
    check_config(asdict(cfg), fields(RouterConfig), where)
    return Router(cfg, centroids)


def group_names(cfg):
    """A readable name per group of a RouterConfig: its experts joined by '+'."""
    return ["+".join(cfg.experts[e] for e in g) for g in cfg.groups]
