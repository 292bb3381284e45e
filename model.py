"""
phi-2 in plain PyTorch: the network, loading of Hugging Face checkpoint
directories, and KV-cache generation. Nothing here imports transformers.

    model, tok = load("checkpoints/phi-tiny")          # or a phi-2 folder, or "microsoft/phi-2"
    print(complete(model, tok, ["Question: What is 2 + 3?\nAnswer:"], stop="\n"))

Chapters, top to bottom:
  1. PhiConfig        the config.json fields we use, phi-2's values as defaults
  2. RoPE             half-split ("NeoX") rotary embedding on the first 32 of 80 dims
  3. the network      attention (+ KV cache), MLP, the parallel block, the LM
  4. loading/saving   HF layout: config.json, model.safetensors (or shards), tokenizer.json;
                      a Hub id ("microsoft/phi-2") is resolved to such a folder in the HF cache
  5. generation       batched, left-padded prefill + decode loop; greedy or sampled

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
import json
import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from data.files import sha256, write_atomic, write_json
from data.prompts import EOT

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
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self):
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_json(cls, path):
        """Read an HF config.json. Every field above must be present (the token
        ids fall back to phi-2's), and the architecture must be plain phi-2."""
        with open(path) as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        rope = raw.get("rope_parameters") or {}   # transformers>=5 nests these two
        for key in ("partial_rotary_factor", "rope_theta"):
            if key not in raw and key in rope:
                raw[key] = rope[key]
        _check_phi_config(path, raw)
        args = {name: raw[name] for name in cls.__dataclass_fields__ if raw.get(name) is not None}
        _check_config_types(path, args)
        cfg = cls(**args)
        if cfg.hidden_size % cfg.num_attention_heads or cfg.rotary_dim % 2:
            raise ValueError(f"{path}: hidden_size {cfg.hidden_size} must split into "
                             f"{cfg.num_attention_heads} heads with an even rotary dim")
        return cfg

    def to_hf(self, dtype=torch.float32):
        """The config.json that transformers' PhiForCausalLM also reads."""
        d = {"architectures": ["PhiForCausalLM"], "model_type": "phi"}
        d.update({k: getattr(self, k) for k in self.__dataclass_fields__})
        d.update(num_key_value_heads=self.num_attention_heads, hidden_act="gelu_new",
                 qk_layernorm=False, tie_word_embeddings=False, resid_pdrop=0.0,
                 embd_pdrop=0.0, attention_dropout=0.0, initializer_range=0.02,
                 torch_dtype=str(dtype).removeprefix("torch."), use_cache=True)
        return d


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
            pos = torch.arange(start, S, device=idx.device).expand(B, T)
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
# 4. Loading and saving the HF checkpoint layout
# ---------------------------------------------------------------------------

DEFAULT_MODEL = "checkpoints/phi-tiny"   # the phi-architecture model shipped in the repository
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def weight_files(ckpt):
    """({tensor name: file}, the file that names them) from model.safetensors.index.json
    or, for a single file, from model.safetensors's own header."""
    single = os.path.join(ckpt, "model.safetensors")
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
        return {k: os.path.join(ckpt, v) for k, v in weight_map.items()}, index
    if os.path.exists(single):
        with _open(single) as f:
            return {k: single for k in f.keys()}, single
    raise FileNotFoundError(f"{ckpt}: no model.safetensors or model.safetensors.index.json")


def _open(path):
    """safe_open with pread(2) rather than its default mmap. With mmap, every page
    of the file that we touch counts as this process's memory until the file is
    closed, so loading fp16 weights into fp32 (or bf16) peaks at the converted
    weights plus the whole file (1.5x-2x). With pread each tensor is copied once
    into its own memory, and converted and freed one at a time: the peak stays
    near one copy of the weights in the target dtype, whatever the file dtype.
    The model also no longer points into the file, so rewriting it is safe."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: weight file listed for this checkpoint is missing")
    try:
        return safe_open(path, framework="pt", device="cpu", backend="pread")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: truncated or corrupt safetensors file ({e})") from None


def load_state(files, source, expected, dtype, device):
    """Read every tensor of `files` ({name: file}, as listed by `source`) once,
    straight into `dtype` on `device`, checking names and shapes against
    `expected` ({name: shape}). Returns a state dict."""
    names = set(files)

    def some(names):   # at most five names in a message
        return str(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or unexpected:
        problems = ([f"missing tensors {some(missing)}"] if missing else []) + \
                   ([f"unexpected tensors {some(unexpected)}"] if unexpected else [])
        raise ValueError(f"{source}: tensors do not match the {len(expected)} that config.json "
                         f"describes: {'; '.join(problems)}")
    state = {}
    for path in sorted(set(files.values())):
        with _open(path) as f:
            listed = sorted(n for n, p in files.items() if p == path)
            absent = sorted(set(listed) - set(f.keys()))
            if absent:
                raise ValueError(f"{path}: tensors {some(absent)} are listed for this file "
                                 f"in {os.path.basename(source)} but are not in it")
            for name in listed:
                try:
                    t = f.get_tensor(name)
                except (SafetensorError, OSError, ValueError) as e:
                    raise ValueError(f"{path}: cannot read tensor {name} ({e})") from None
                if not t.is_floating_point() or not torch.isfinite(t).all():
                    raise ValueError(f"{path}: tensor {name} is {t.dtype}" + (" with NaN or inf values"
                                     if t.is_floating_point() else "") + "; expected finite floating-point weights")
                if tuple(t.shape) != tuple(expected[name]):
                    raise ValueError(f"{path}: tensor {name} has shape {tuple(t.shape)}, "
                                     f"expected {tuple(expected[name])} from config.json")
                state[name] = t.to(device=device, dtype=dtype)
                del t
    return state


# The files of a Hub repository that load() reads; nothing else is downloaded
# (phi-2's repository also holds vocab.json, merges.txt, remote code, ...).
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json"]
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")    # "org/name", as the Hub spells ids


def looks_like_hub_id(name):
    """Is `name` a Hub id ("microsoft/phi-2") rather than a path ("/x/y", "./y", "a/b/c")?
    "checkpoints/phi-tny" counts as a path, because checkpoints/ is a local folder: a
    typo in a folder's name gets the folder's message, not a Hub look-up."""
    return bool(HUB_ID.fullmatch(name)) and ".." not in name and not os.path.isdir(name.split("/")[0])


def resolve(name_or_path, revision=None, verbose=True):
    """The local checkpoint folder for a folder or a Hugging Face model id, and
    its revision: (folder, commit hash), or (folder, None) for a plain folder.

    An id is looked up in the HF cache first (HF_HOME, HF_HUB_CACHE), without a
    network call; only on a miss, and unless HF_HUB_OFFLINE is set, are the
    HUB_FILES downloaded into that cache. So a cached `main` is used as it is,
    and a --revision (branch, tag or commit hash) pins another one. Either way
    the folder is the cache's snapshots/<commit hash>, as `from_pretrained` uses."""
    if os.path.isdir(name_or_path):
        if revision is not None:
            raise ValueError(f"{name_or_path}: a folder has no revision; --revision is for a Hugging Face model id")
        return name_or_path, None
    if not looks_like_hub_id(name_or_path):
        raise FileNotFoundError(f"{name_or_path}: checkpoint directory not found")
    # huggingface_hub is not one of our declared dependencies: it comes with tokenizers
    # (which needs it), and only a Hub id ever imports it.
    import huggingface_hub
    from huggingface_hub import constants
    where = name_or_path + (f" (revision {revision})" if revision else "")

    def snapshot(**kw):   # revision None means the repository's main branch
        return huggingface_hub.snapshot_download(name_or_path, revision=revision,
                                                 allow_patterns=HUB_FILES, **kw)
    try:
        folder = snapshot(local_files_only=True)
    except (OSError, ValueError):   # LocalEntryNotFoundError: not cached (or not all of it)
        folder = None
    if folder is None or not _is_checkpoint(folder):    # not cached, or only partly
        if constants.HF_HUB_OFFLINE:   # read by huggingface_hub from HF_HUB_OFFLINE at import
            raise FileNotFoundError(f"{where}: no such folder, and not in the Hugging Face cache "
                                    f"{constants.HF_HUB_CACHE} (HF_HUB_OFFLINE is set, so nothing is "
                                    "downloaded)")
        try:
            folder = snapshot()
        except Exception as e:     # network, HTTP, authentication, unknown repo or revision
            first = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"{where}: no such folder, and the download from the Hugging Face Hub "
                             f"failed ({type(e).__name__}: {first})") from None
    commit = os.path.basename(os.path.normpath(folder))   # the cache names snapshots by commit
    if verbose:
        print(f"{where}: commit {commit}, {folder}")
    return folder, commit


def _is_checkpoint(folder):
    """The files load() needs are there (a cache may hold a partial snapshot)."""
    has = lambda name: os.path.exists(os.path.join(folder, name))
    return has("config.json") and has("tokenizer.json") and (
        has("model.safetensors") or has("model.safetensors.index.json"))


def load(ckpt, dtype=torch.float32, device="cpu", verbose=True, revision=None):
    """Load an HF-layout phi checkpoint: (model in eval mode, tokenizer). `ckpt` is
    a folder or a Hugging Face model id (see resolve()).

    The model is built on the meta device (no memory, no random init) and the
    tensors read from disk are assigned into it, so peak memory stays near one
    copy of the weights in the target dtype."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    model_id = ckpt
    ckpt, revision = resolve(ckpt, revision, verbose)
    for name in ("config.json", "tokenizer.json"):
        if not os.path.exists(os.path.join(ckpt, name)):
            raise FileNotFoundError(f"{ckpt}: {name} is missing")
    cfg = PhiConfig.from_json(os.path.join(ckpt, "config.json"))
    _check_file_set(ckpt)
    files, source = weight_files(ckpt)
    _check_layout(files, source, cfg)
    with torch.device("meta"):
        model = PhiForCausalLM(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = load_state(files, source, expected, dtype, device)
    model.load_state_dict(state, assign=True)
    model.init_rope(device)
    model.name_or_path = ckpt              # the local folder it was read from (cluster.py hashes its files)
    model.model_id = model_id              # the folder or Hub id as given: adapters name their base by it
    model.revision = revision              # the Hub commit, or None for a plain folder
    tok = load_tokenizer(os.path.join(ckpt, "tokenizer.json"), cfg)
    if verbose:
        print(f"loaded {model_id}: {model.num_params() / 1e6:.1f}M parameters, "
              f"{cfg.num_hidden_layers} layers, {dtype}, {device}")
    return model.eval(), tok


def load_tokenizer(path, cfg):
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:
        raise ValueError(f"{path}: not a tokenizers tokenizer.json ({e})") from None
    if tok.token_to_id(EOT) is None:
        raise ValueError(f"{path}: has no {EOT} token")
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ValueError(f"{path}: {tok.get_vocab_size()} tokens, more than the "
                         f"{cfg.vocab_size} embedding rows of config.json")
    return tok


def save(model, tok, out_dir, dtype=None):
    """Write an HF-layout directory (config.json, model.safetensors, tokenizer.json).
    Each file is written to a temporary name and renamed, so a crash never leaves
    a half-written file; config.json comes last and records the sha256 of the other
    two ("skill_moe_files"), so load() refuses a mix of two saves."""
    os.makedirs(out_dir, exist_ok=True)
    dtype = dtype or model.lm_head.weight.dtype
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    files = {"model.safetensors": lambda p: save_file(state, p, metadata={"format": "pt"}),
             "tokenizer.json": lambda p: tok.save(p)}
    for name, write in files.items():
        write_atomic(os.path.join(out_dir, name), write)
    config = {**model.config.to_hf(dtype), SET_KEY: {n: sha256(os.path.join(out_dir, n)) for n in files}}
    write_json(os.path.join(out_dir, "config.json"), config, indent=2)


# ---------------------------------------------------------------------------
# 5. Generation
# ---------------------------------------------------------------------------


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=0.0, top_k=None, eos_id=None,
             stop_fn=None, generator=None, n_tokens=None):
    """Continue each prompt (a list of token ids); return the new ids per prompt.

    Prompts of different lengths are left-padded into one batch. Padding slots
    are masked as keys, and each row's positions count from its first real token,
    so a row gets the same tokens as it would alone. Prefill runs the padded
    prompts once; each decode step feeds one token per row through the KV cache.
    A row stops at eos_id or when stop_fn(its new ids) is true; the loop ends
    when all rows have stopped. temperature 0 is greedy; otherwise sample from
    softmax(logits / temperature), restricted to the top_k logits if given.
    n_tokens: only ids below it are ever produced. phi-2 has 51200 embedding rows
    but 50295 tokens, and an id without a token would be dropped by decode()."""
    P = model.config.max_position_embeddings
    _check_prompts(prompts, P, model.config.vocab_size)
    B, L = len(prompts), max(len(p) for p in prompts)
    max_new_tokens = min(max_new_tokens, P - L)
    device = model.lm_head.weight.device
    idx = torch.zeros(B, L, dtype=torch.long, device=device)
    valid = torch.zeros(B, L + max_new_tokens, dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        idx[b, L - len(p):] = torch.tensor(p, device=device)
        valid[b, L - len(p):L] = True
    pos = (valid[:, :L].long().cumsum(-1) - 1).clamp(min=0)                # (B, L)

    model.setup_cache(B, L + max_new_tokens)
    try:
        # Prefill. Only the last position's logits are needed, so stop at the final
        # LayerNorm and apply lm_head to that one position: for phi-2 (V = 51200)
        # the head over all L positions would cost about as much as two layers.
        h = model(idx, pos, valid[:, :L], start=0, hidden_layer=model.config.num_hidden_layers)
        logits = model.lm_head(h[:, -1])                                    # (B, V)
        out, done = [[] for _ in range(B)], [False] * B
        next_pos = pos[:, -1:] + 1                                          # (B, 1)
        for t in range(max_new_tokens):
            nxt = sample(logits[:, :n_tokens], temperature, top_k, generator)   # (B,)
            for b, tok_id in enumerate(nxt.tolist()):
                if done[b]:
                    continue
                if tok_id == eos_id:
                    done[b] = True
                    continue
                out[b].append(tok_id)
                done[b] = stop_fn is not None and stop_fn(out[b])
            if all(done) or t == max_new_tokens - 1:
                break
            valid[:, L + t] = True
            logits = model(nxt[:, None], next_pos, valid[:, :L + t + 1], start=L + t)[:, -1]
            next_pos = next_pos + 1
    finally:
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
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def complete(model, tok, prompts, max_new_tokens=32, stop="\n", **kw):
    """Each prompt's continuation as text, cut before `stop`. A prompt is text, or
    the token ids that data.prompts.prompt_ids builds."""
    ids = [tok.encode(p).ids if isinstance(p, str) else p for p in prompts]
    stop_fn = (lambda new: stop in tok.decode(new)) if stop else None
    new = generate(model, ids, max_new_tokens, eos_id=tok.token_to_id(EOT), stop_fn=stop_fn,
                   n_tokens=tok.get_vocab_size(), **kw)
    texts = [tok.decode(n) for n in new]
    return [t.split(stop)[0] if stop else t for t in texts]


# ---------------------------------------------------------------------------
# Checks at the edges
# ---------------------------------------------------------------------------


def _check_phi_config(path, raw):
    """config.json describes plain phi-2: HF layout, gelu_new, no qk LayerNorm, no
    grouped KV heads, and every field PhiConfig needs (the token ids may be absent)."""
    if raw.get("model_type") == "phi-msft":   # phi-2's Hub revisions before its HF conversion
        raise ValueError(f"{path}: this is the old 'phi-msft' layout (transformer.h.N.mixer.Wqkv); "
                         "convert it to the HF layout (model.layers.N.self_attn.q_proj, ...) first, "
                         "or use a later --revision")
    if raw.get("model_type") != "phi":
        raise ValueError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'phi'")
    for key, want in {"hidden_act": "gelu_new", "qk_layernorm": False, "tie_word_embeddings": False}.items():
        if raw.get(key, want) != want:
            raise ValueError(f"{path}: {key} is {raw[key]!r}; only {want!r} (as phi-2) is supported")
    kv = raw.get("num_key_value_heads") or raw.get("num_attention_heads")
    if kv != raw.get("num_attention_heads"):
        raise ValueError(f"{path}: num_key_value_heads {kv} != num_attention_heads; "
                         "phi-2 has no grouped KV heads")
    for name in PhiConfig.__dataclass_fields__:
        if raw.get(name) is None and name not in ("bos_token_id", "eos_token_id"):
            raise ValueError(f"{path}: config field {name!r} is missing")


def _check_prompts(prompts, P, V):
    """generate()'s prompts: at least one, none empty, each fits the context P, ids below V."""
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if len(p) > P:
            raise ValueError(f"prompt {i} has {len(p)} tokens, more than "
                             f"max_position_embeddings={P}")
        if not 0 <= min(p) <= max(p) < V:
            raise ValueError(f"prompt {i} has token ids from {min(p)} to {max(p)}, "
                             f"outside the vocabulary 0..{V - 1}")


def _check_config_types(path, fields):
    """config.json values: ints are ints >= 1 (not 8.0, "320" or true), floats
    finite and > 0, partial_rotary_factor at most 1."""
    for name, v in fields.items():
        if PhiConfig.__dataclass_fields__[name].type is int:
            ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or name.endswith("token_id") and v >= 0)
            want = "an integer >= 0" if name.endswith("token_id") else "an integer >= 1"
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 \
                and (name != "partial_rotary_factor" or v <= 1)
            want = "a number in (0, 1]" if name == "partial_rotary_factor" else "a finite number > 0"
        if not ok:
            raise ValueError(f"{path}: config field {name!r} is {v!r}; expected {want}")


def _check_layout(files, source, cfg):
    """The weight files hold HF-layout layers 0..num_hidden_layers-1, checked on the
    names alone before the model is built (a config.json with 10**9 layers must not
    start building them)."""
    names = set(files)
    if any(n.startswith("transformer.h.") or ".mixer.Wqkv" in n for n in names):
        raise ValueError(f"{source}: this is the old 'phi-msft' layout (transformer.h.N.mixer.Wqkv); "
                         "convert it to the HF layout (model.layers.N.self_attn.q_proj, ...) first")
    layers = {int(m.group(1)) for n in names if (m := re.match(r"model\.layers\.(\d+)\.", n))}
    if len(layers) != cfg.num_hidden_layers or max(layers, default=-1) != len(layers) - 1:   # not 0..L-1
        raise ValueError(f"{source}: holds {len(layers)} layers (model.layers.N), but config.json "
                         f"says num_hidden_layers={cfg.num_hidden_layers}")


SET_KEY = "skill_moe_files"   # config.json written by save(): {file: sha256} of the files saved with it


def _check_file_set(ckpt):
    """A folder written by save() holds one save's files: config.json names the
    sha256 of the others (checkpoints from elsewhere carry no such record)."""
    with open(os.path.join(ckpt, "config.json")) as f:
        saved = json.load(f).get(SET_KEY) or {}
    for name, digest in saved.items():
        if sha256(os.path.join(ckpt, name)) != digest:
            raise ValueError(f"{os.path.join(ckpt, name)}: not the file that config.json was saved with "
                             "(an interrupted save?)")
