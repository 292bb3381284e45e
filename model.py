"""
phi-2 in plain PyTorch: the network, loading of Hugging Face checkpoint
directories, and KV-cache generation. Nothing here imports transformers.

    model, tok = load("checkpoints/phi-tiny")          # or a phi-2 folder, or "microsoft/phi-2"
    print(complete(model, tok, ["Question: What is 2 + 3?\nAnswer:"], stop="\n"))

Chapters, top to bottom:
  1. PhiConfig        the config.json fields we use, phi-2's values as defaults
  2. RoPE             half-split ("NeoX") rotary embedding on the first 32 of 80 dims
  3. the network      attention (+ KV cache), MLP, the parallel block, the LM
  4. training         the loss and AdamW's decay groups, as nanoGPT's model.py
  5. loading/saving   load() an HF folder (config.json, model.safetensors or shards,
                      tokenizer.json) or a Hub id ("microsoft/phi-2") from the HF cache;
                      new() to pretrain (Pretrain); save(); the files are formats/hf.py's
  6. generation       prefill (the left-padded prompts, once) and decode_step (one
                      token per row through the KV cache), as gpt-fast's prefill and
                      decode_one_token; generate() loops over them, greedy or sampled

References: microsoft/phi-2 config.json; transformers' models/phi/modeling_phi.py
(the parity tests compare against it); nanoGPT and gpt-fast for the shape of the
code (a static KV cache written in place, as gpt-fast does).

Letters used in shape comments: B batch, T tokens in this call, S key slots in
the cache (S = start + T), C hidden size, nh heads, hs head size (C = nh*hs),
R rotary dims (R = 0.4*hs = 32 for phi-2), V vocabulary.

Attention is written out in full in attention(), as the reference; as in
nanoGPT, the model runs F.scaled_dot_product_attention (fused, and it never
stores the T x S scores), and a test holds the two together.

Deliberately left out: dropout (inference, and our small-model training, use
none), qk_layernorm and grouped KV heads (phi-2 uses neither; such configs are
rejected), and the old "phi-msft" checkpoint layout (rejected with a message).
"""
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from formats import hf
from formats.files import UserError

# ---------------------------------------------------------------------------
# 1. Config
# ---------------------------------------------------------------------------


@dataclass
class PhiConfig:
    vocab_size: int = 51200               # embedding rows (tokenizer ids must be fewer)
    hidden_size: int = 2560               # C
    intermediate_size: int = 10240        # MLP width, 4*C
    num_hidden_layers: int = 32
    num_attention_heads: int = 32         # nh; head size hs = C / nh = 80
    partial_rotary_factor: float = 0.4    # RoPE on the first 0.4*hs = 32 dims
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 50256             # bos = eos = the id of EOT (below) in tokenizer.json
    eos_token_id: int = 50256

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self):
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_json(cls, path):
        """Read an HF config.json: plain phi-2, every field above present (the
        token ids may fall back to phi-2's) and typed (hf.read_config)."""
        cfg = cls(**hf.read_config(path, {name: f.type for name, f in cls.__dataclass_fields__.items()}))
        if cfg.hidden_size % cfg.num_attention_heads or cfg.rotary_dim % 2:
            raise UserError(f"{path}: hidden_size {cfg.hidden_size} must split into "
                             f"{cfg.num_attention_heads} heads with an even rotary dim")
        return cfg


# phi-2's end-of-text token, its bos and eos: load() refuses a tokenizer.json
# without it, and complete() stops there. data/prompts.py opens every prompt and
# training row with the same token (its own EOT: data/ never imports model.py,
# and tests/test_model.py holds the two equal).
EOT = "<|endoftext|>"


# ---------------------------------------------------------------------------
# 2. RoPE
# ---------------------------------------------------------------------------


def rope_tables(cfg, device=None):
    """cos and sin tables, (max_position_embeddings, R), in fp32.

    phi-2 uses the half-split form: the R rotary dims are two halves, and pair
    (i, i + R/2) rotates by angle pos * theta^(-2i/R). Hence emb = cat(freqs,
    freqs). (llama2.c's interleaved pairs (2i, 2i+1) would give different numbers.)"""
    R = cfg.rotary_dim
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, R, 2, device=device).float() / R)
    pos = torch.arange(cfg.max_position_embeddings, device=device).float()
    freqs = torch.outer(pos, inv_freq)             # (P, R/2)
    emb = torch.cat((freqs, freqs), dim=-1)        # (P, R)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x, cos, sin, R):
    """Rotate the first R dims of every head; dims R.. pass through untouched.
    x (B, nh, T, hs); cos, sin (B, 1, T, R), already in x's dtype."""
    x_rot, x_pass = x[..., :R], x[..., R:]
    x_rot = x_rot * cos + rotate_half(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1)


# ---------------------------------------------------------------------------
# 3. The network. Module names equal the checkpoint keys, so weights load as is.
# ---------------------------------------------------------------------------


class KVCache(nn.Module):
    """Keys and values of past tokens, preallocated for the whole generation
    and written in place (gpt-fast style): no torch.cat per step."""

    def __init__(self, B, nh, S_max, hs, dtype, device):
        super().__init__()
        self.register_buffer("k", torch.zeros(B, nh, S_max, hs, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(B, nh, S_max, hs, dtype=dtype, device=device), persistent=False)

    def update(self, start, k, v):
        """Write k, v (B, nh, T, hs) at slots start..start+T; return all S slots so far."""
        T = k.shape[2]
        self.k[:, :, start:start + T] = k
        self.v[:, :, start:start + T] = v
        return self.k[:, :, :start + T], self.v[:, :, :start + T]   # (B, nh, S, hs)


def attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(hs), over the allowed keys) v, written out in full:
    the reference that the fast path (F.scaled_dot_product_attention) must match.
    q (B, nh, T, hs); k, v (B, nh, S, hs); allowed (B or 1, 1, T, S) bool, or None
    for plain causal attention (T = S).

    Two subtle points:
    - The scores are computed in fp32 with autocast switched off. phi-2's q.k
      overflows fp16 (HF upcasts for the same reason), and under autocast a
      matmul of fp32 tensors would quietly run in half precision again.
    - A masked score is -inf, so it gets exactly zero weight. That is safe only
      because no row is masked entirely: every query sees at least its own slot
      (PhiForCausalLM.forward), even a padding one, so softmax never meets a row
      of -inf only (which gives 0/0 = NaN, and NaN would spread through att @ v)."""
    T, S = q.shape[2], k.shape[2]
    if allowed is None:
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)   # (T, S)
    with torch.autocast(q.device.type, enabled=False):
        att = (q.float() / math.sqrt(q.shape[-1])) @ k.float().transpose(-2, -1)   # (B, nh, T, S)
        att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return att.to(v.dtype) @ v                                                      # (B, nh, T, hs)


class PhiAttention(nn.Module):
    sdpa = True   # the fused kernel; False runs attention() above (tests compare the two)

    def __init__(self, cfg):
        super().__init__()
        C = cfg.hidden_size
        self.nh, self.hs, self.R = cfg.num_attention_heads, cfg.head_dim, cfg.rotary_dim
        self.q_proj = nn.Linear(C, C)
        self.k_proj = nn.Linear(C, C)
        self.v_proj = nn.Linear(C, C)
        self.dense = nn.Linear(C, C)
        self.kv_cache = None

    def forward(self, x, cos, sin, allowed, start):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hs).transpose(1, 2)   # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.nh, self.hs).transpose(1, 2)   # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, self.nh, self.hs).transpose(1, 2)   # (B, nh, T, hs)
        q, k = apply_rope(q, cos, sin, self.R), apply_rope(k, cos, sin, self.R)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(start, k, v)                       # (B, nh, S, hs)
        if not self.sdpa:
            y = attention(q, k, v, allowed)                                # (B, nh, T, hs)
        elif allowed is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)    # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = y.transpose(1, 2).reshape(B, T, C)                             # (B, T, C)
        return self.dense(y)


class PhiMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))   # gelu_new is the tanh form


class PhiDecoderLayer(nn.Module):
    """phi's parallel block: attention and MLP read the same LayerNorm output,
    and both are added to the residual stream at once."""

    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = PhiAttention(cfg)
        self.mlp = PhiMLP(cfg)

    def forward(self, x, cos, sin, allowed, start):
        h = self.input_layernorm(x)
        return x + self.self_attn(h, cos, sin, allowed, start) + self.mlp(h)


class PhiModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(PhiDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class PhiForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = PhiModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)   # phi-2's head has a bias
        self.init_rope()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        """GPT-2-style init, used only when training from scratch."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)

    def init_rope(self, device=None):
        cos, sin = rope_tables(self.config, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def setup_cache(self, B, S_max):
        """Allocate a KV cache in every layer for B rows of up to S_max tokens."""
        p = self.lm_head.weight
        for layer in self.model.layers:
            a = layer.self_attn
            a.kv_cache = KVCache(B, a.nh, S_max, a.hs, p.dtype, p.device)

    def clear_cache(self):
        for layer in self.model.layers:
            layer.self_attn.kv_cache = None

    def forward(self, idx, pos=None, valid=None, start=0, hidden_layer=None):
        """Logits (B, T, V) for token ids idx (B, T).

        pos   (B, T) RoPE positions; default 0..T-1 (left-padded rows need their own).
        valid (B, S) bool, which key slots hold real tokens (False for padding).
        start first cache slot of this call (0 without a cache).
        hidden_layer: return the (B, T, C) input of that layer instead (for embeddings);
        num_hidden_layers gives the final_layernorm output."""
        B, T = idx.shape
        S = start + T
        if pos is None:
            pos = torch.arange(start, S, device=idx.device).expand(B, T)   # (T,) -> (B, T)
        x = self.model.embed_tokens(idx)                                   # (B, T, C)
        cos = self.rope_cos[pos].unsqueeze(1).to(x.dtype)                  # (B, 1, T, R)
        sin = self.rope_sin[pos].unsqueeze(1).to(x.dtype)                  # (B, 1, T, R)
        # Which key slots each query may see, (B or 1, 1, T, S): slots up to its own
        # that hold real tokens. Every query also sees its own slot, so a padding
        # query is never left with no key at all (see attention()). None: plain
        # causal attention over this call's tokens, which lets sdpa use its
        # causal kernel.
        allowed = None
        if valid is not None or start > 0:
            q_slot = torch.arange(start, S, device=idx.device)[:, None]             # (T, 1)
            k_slot = torch.arange(S, device=idx.device)[None, :]                    # (1, S)
            allowed = k_slot <= q_slot                                               # (T, S)
            if valid is not None:
                allowed = (allowed & valid[:, None, :]) | (k_slot == q_slot)        # (B, T, S)
            allowed = allowed.view(-1, 1, T, S)                                      # (B or 1, 1, T, S)
        for i, layer in enumerate(self.model.layers):
            if i == hidden_layer:
                return x
            x = layer(x, cos, sin, allowed, start)
        x = self.model.final_layernorm(x)
        if hidden_layer is not None:
            return x
        return self.lm_head(x)                                             # (B, T, V)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------
# 4. Training: the loss and the optimizer (as nanoGPT's model.py holds them)
# ---------------------------------------------------------------------------

def lm_loss(model, x, y, n_targets=None):
    """Summed cross-entropy over the targets of y (-100 = none), divided by
    n_targets (default: this batch's count; data parallel passes the global one)."""
    logits = model(x)                                                   # (B, T, V)
    total = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100,
                            reduction="sum")
    return total / (n_targets if n_targets is not None else (y != -100).sum().clamp(min=1))


def make_optimizer(module, lr, weight_decay, device):
    """AdamW over the trainable parameters of module (a model, its LoRA, or a
    router); matrices decay, biases, LayerNorms and embeddings don't (nanoGPT's
    split, less the small embeddings)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.dim() == 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.dim() == 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.startswith("cuda"))


# ---------------------------------------------------------------------------
# 5. Loading and saving the HF checkpoint layout (the files themselves: formats/hf.py)
# ---------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def load(ckpt, dtype=torch.float32, device="cpu", verbose=True, revision=None):
    """Load an HF-layout phi checkpoint: (model in eval mode, tokenizer). `ckpt` is
    a folder or a Hugging Face model id (see hf.resolve()).

    The model is built on the meta device (no memory, no random init) and the
    tensors read from disk are assigned into it, so peak memory stays near one
    copy of the weights in the target dtype. verbose says what loaded, on stderr."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    folder, revision = hf.resolve(ckpt, revision, verbose)
    cfg = PhiConfig.from_json(os.path.join(folder, "config.json"))
    files, source = hf.weight_files(folder, cfg.num_hidden_layers)
    with torch.device("meta"):
        model = PhiForCausalLM(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(hf.read_weights(files, source, expected, dtype, device), assign=True)
    model.init_rope(device)
    model.name_or_path = folder            # the local folder it was read from (cluster.py hashes its files)
    model.model_id = ckpt                  # the folder or Hub id as given: adapters name their base by it
    model.revision = revision              # the Hub commit, or None for a plain folder
    tok = hf.read_tokenizer(os.path.join(folder, "tokenizer.json"), cfg.vocab_size, EOT)
    if verbose:
        print(f"loaded {ckpt}: {model.num_params() / 1e6:.1f}M parameters, "
              f"{cfg.num_hidden_layers} layers, {dtype}, {device}", file=sys.stderr)
    return model.eval(), tok


@dataclass
class Pretrain:
    """train.py --base: the model to pretrain from scratch, and its files."""
    phi: PhiConfig             # the architecture; vocab_size and the token ids come from the tokenizer
    tokenizer: str             # tokenizer.json
    save_dtype: str            # the dtype of model.safetensors


def new(phi, tok, device="cpu"):
    """A freshly initialised model of phi's shape, to pretrain: its vocabulary is
    the tokenizer's, rounded up to a multiple of 64 (friendlier matmul shapes),
    and its begin and end tokens are EOT, as phi-2's are."""
    eot = tok.token_to_id(EOT)
    vocab = -(-tok.get_vocab_size() // 64) * 64
    phi = PhiConfig(**{**phi.__dict__, "vocab_size": vocab, "bos_token_id": eot, "eos_token_id": eot})
    model = PhiForCausalLM(phi).to(device)
    print(f"a new phi model: {model.num_params() / 1e6:.2f}M parameters, {phi.num_hidden_layers} layers, "
          f"width {phi.hidden_size}, {phi.num_attention_heads} heads of {phi.head_dim}", file=sys.stderr)
    return model


def save(model, tok, out_dir, dtype=None):
    """Write an HF-layout folder (config.json, model.safetensors, tokenizer.json)
    that load() and transformers both read, as one set (hf.write_folder)."""
    dtype = dtype or model.lm_head.weight.dtype
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    hf.write_folder(out_dir, state, tok, asdict(model.config), dtype)


# ---------------------------------------------------------------------------
# 6. Generation
# ---------------------------------------------------------------------------


def prefill(model, prompts, room):
    """Run the prompts (lists of token ids) through the model once, left-padded
    into one batch, into a fresh KV cache with `room` slots after the longest
    prompt L. Returns (logits (B, V) at each row's last token, valid (B, L + room)
    with the prompts' real slots set, pos (B, 1) each row's last RoPE position).

    Padding slots stay False in valid, so no query sees them as keys, and each
    row's positions count from its first real token: a row gets the same numbers
    as it would alone. Only the last position's logits are needed, so the forward
    stops at the final LayerNorm and lm_head runs on that one position: for phi-2
    (V = 51200) the head over all L positions costs about as much as two layers."""
    B, L = len(prompts), max(len(p) for p in prompts)
    device = model.lm_head.weight.device
    idx = torch.zeros(B, L, dtype=torch.long, device=device)
    valid = torch.zeros(B, L + room, dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        idx[b, L - len(p):] = torch.tensor(p, device=device)
        valid[b, L - len(p):L] = True
    pos = (valid[:, :L].long().cumsum(-1) - 1).clamp(min=0)                # (B, L)
    model.setup_cache(B, L + room)
    h = model(idx, pos, valid[:, :L], start=0, hidden_layer=model.config.num_hidden_layers)   # (B, L, C)
    return model.lm_head(h[:, -1]), valid, pos[:, -1:]                    # (B, V), (B, L + room), (B, 1)


def decode_step(model, tokens, valid, pos, slot):
    """Feed one token per row, tokens (B,), at RoPE positions pos (B, 1) into cache
    slot `slot`, which becomes a real key; return the next logits (B, V)."""
    valid[:, slot] = True
    return model(tokens[:, None], pos, valid[:, :slot + 1], start=slot)[:, -1]   # (B, 1, V) -> (B, V)


def keep_new(out, done, tokens, eos_id, stop_fn):
    """Append each row's new token to out unless the row is done; a row is done
    at eos_id (not appended) or once stop_fn(its new ids) is true. True when all are."""
    for b, tok_id in enumerate(tokens):
        if done[b]:
            continue
        if tok_id == eos_id:
            done[b] = True
            continue
        out[b].append(tok_id)
        done[b] = stop_fn is not None and stop_fn(out[b])
    return all(done)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=0.0, top_k=None, eos_id=None,
             stop_fn=None, generator=None, n_tokens=None, keep_cache=0):
    """Continue each prompt (a list of token ids); return the new ids per prompt:
    prefill() once, then sample and decode_step() until every row has stopped.

    A row stops at eos_id or when stop_fn(its new ids) is true. temperature 0 is
    greedy; otherwise sample from softmax(logits / temperature), restricted to the
    top_k logits if given. n_tokens: only ids below it are ever produced (phi-2
    has 51200 embedding rows but 50295 tokens; an id without a token would be
    dropped by decode()).
    keep_cache > 0 is for evaluation: the KV cache stays in place, with room for
    that many tokens after the prompts, for a later forward through it
    (eval.answer_nll scores gold answers there without running the prompts
    again); the caller then calls model.clear_cache()."""
    P = model.config.max_position_embeddings
    _check_prompts(prompts, P, model.config.vocab_size)
    L = max(len(p) for p in prompts)
    max_new_tokens = min(max_new_tokens, P - L)
    out, done = [[] for _ in prompts], [False] * len(prompts)
    try:
        logits, valid, pos = prefill(model, prompts, max(max_new_tokens, keep_cache))
        for t in range(max_new_tokens):
            tokens = sample(logits[:, :n_tokens], temperature, top_k, generator)   # (B,)
            if keep_new(out, done, tokens.tolist(), eos_id, stop_fn) or t == max_new_tokens - 1:
                break
            logits = decode_step(model, tokens, valid, pos + 1 + t, L + t)
    except BaseException:
        model.clear_cache()
        raise
    if not keep_cache:
        model.clear_cache()
    return out


def sample(logits, temperature, top_k, generator=None):
    """Next token per row from logits (B, V)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]   # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)   # (B, 1) -> (B,)


def complete(model, tok, prompts, max_new_tokens=32, stop="\n", **kw):
    """Each prompt's continuation as text, cut before `stop`. A prompt is text, or
    the token ids that data.prompts.prompt_ids builds."""
    ids = [tok.encode(p).ids if isinstance(p, str) else p for p in prompts]
    # The stop test decodes only the tail that can hold `stop` (a char <= 4 bytes, a token >= 1).
    stop_fn = (lambda new: stop in tok.decode(new[-4 * len(stop):])) if stop else None
    new = generate(model, ids, max_new_tokens, eos_id=tok.token_to_id(EOT), stop_fn=stop_fn,
                   n_tokens=tok.get_vocab_size(), **kw)
    texts = [tok.decode(n) for n in new]
    return [t.split(stop)[0] if stop else t for t in texts]


# ---------------------------------------------------------------------------
# Checks at the edges
# ---------------------------------------------------------------------------


def _check_prompts(prompts, P, V):
    """generate()'s prompts: at least one, none empty, each fits the context P, ids below V."""
    if len(prompts) == 0:
        raise UserError("no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise UserError(f"prompt {i} is empty")
        if len(p) > P:
            raise UserError(f"prompt {i} has {len(p)} tokens, more than "
                             f"max_position_embeddings={P}")
        if not 0 <= min(p) <= max(p) < V:
            raise UserError(f"prompt {i} has token ids from {min(p)} to {max(p)}, "
                             f"outside the vocabulary 0..{V - 1}")
