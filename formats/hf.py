"""
The Hugging Face checkpoint folder as files: what model.load reads and
model.save writes, kept apart from the network so that model.py reads as the
model alone.

    folder, commit = resolve("microsoft/phi-2")    # a folder as is, or a Hub id via the HF cache
    values = read_config(folder + "/config.json", {"hidden_size": int, ...})   # checked as phi-2
    files, source = weight_files(folder, 32)       # {tensor name: file}, 32 layers checked by name
    state = read_weights(files, source, expected, torch.bfloat16, "cuda")
    tok = read_tokenizer(folder + "/tokenizer.json", 51200, "<|endoftext|>")
    write_folder("out/model", state, tok, fields, dtype)  # config.json last, naming the others' sha256

A folder holds config.json, tokenizer.json and model.safetensors, or shards
listed in model.safetensors.index.json (phi-2 has two). Tensors are read one at
a time with pread, converted and placed, so the peak stays near one copy of the
weights in the target dtype.

References: the safetensors format and its index file; huggingface_hub's
snapshot_download and its cache layout (what from_pretrained uses).

Left out: pickle (.bin) weights, remote code, and the old "phi-msft" layout
(refused with a message).
"""
import json
import math
import os
import re
import sys

import torch
from safetensors import SafetensorError
from tokenizers import Tokenizer

from formats.files import UserError, open_safetensors, read_object, save_safetensors, sha256, write_atomic, write_json

# The files of a Hub repository that load() reads; nothing else is downloaded
# (phi-2's repository also holds vocab.json, merges.txt, remote code, ...).
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json"]
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")    # "org/name", as the Hub spells ids
SET_KEY = "skill_moe_files"   # in a config.json that write_folder wrote: {file: sha256} of the others


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
    the folder is the cache's snapshots/<commit hash>, as `from_pretrained` uses;
    verbose says which on stderr."""
    if os.path.isdir(name_or_path):
        if revision is not None:
            raise UserError(f"{name_or_path}: a folder has no revision; --revision is for a Hugging Face model id")
        for name in ("config.json", "tokenizer.json"):
            if not os.path.isfile(os.path.join(name_or_path, name)):
                raise UserError(f"{name_or_path}: {name} is missing (expected a file)")
        return name_or_path, None
    if not looks_like_hub_id(name_or_path):
        raise UserError(f"{name_or_path}: checkpoint directory not found")
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
            raise UserError(f"{where}: no such folder, and not in the Hugging Face cache "
                                    f"{constants.HF_HUB_CACHE} (HF_HUB_OFFLINE is set, so nothing is "
                                    "downloaded)")
        try:
            folder = snapshot()
        except Exception as e:     # network, HTTP, authentication, unknown repo or revision
            first = (str(e).strip().splitlines() or [""])[0]
            raise UserError(f"{where}: no such folder, and the download from the Hugging Face Hub "
                             f"failed ({type(e).__name__}: {first})") from None
    commit = os.path.basename(os.path.normpath(folder))   # the cache names snapshots by commit
    if verbose:
        print(f"{where}: commit {commit}, {folder}", file=sys.stderr)
    return folder, commit


def _is_checkpoint(folder):
    """The files load() needs are there (a cache may hold a partial snapshot)."""
    has = lambda name: os.path.exists(os.path.join(folder, name))
    return has("config.json") and has("tokenizer.json") and (
        has("model.safetensors") or has("model.safetensors.index.json"))


def weight_files(ckpt, n_layers):
    """({tensor name: file}, the file that names them) from model.safetensors.index.json
    or, for a single file, from model.safetensors's own header. The folder must be
    one save's files, and the names must hold layers 0..n_layers-1."""
    _check_file_set(ckpt)
    files, source = _listed(ckpt)
    _check_layout(files, source, n_layers)
    return files, source


def _listed(ckpt):
    """weight_files without the checks."""
    single = os.path.join(ckpt, "model.safetensors")
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
        if not (isinstance(weight_map, dict) and all(isinstance(v, str) and v for v in weight_map.values())):
            raise UserError(f"{index}: 'weight_map' must be an object of tensor name -> file name")
        return {k: os.path.join(ckpt, v) for k, v in weight_map.items()}, index
    if os.path.exists(single):
        with _open(single) as f:
            return {k: single for k in f.keys()}, single
    raise UserError(f"{ckpt}: no model.safetensors or model.safetensors.index.json")


def _open(path):
    """safe_open with pread(2) rather than its default mmap. With mmap, every page
    of the file that we touch counts as this process's memory until the file is
    closed, so loading fp16 weights into fp32 (or bf16) peaks at the converted
    weights plus the whole file (1.5x-2x). With pread each tensor is copied once
    into its own memory, and converted and freed one at a time: the peak stays
    near one copy of the weights in the target dtype, whatever the file dtype.
    The model also no longer points into the file, so rewriting it is safe."""
    if not os.path.exists(path):
        raise UserError(f"{path}: weight file listed for this checkpoint is missing")
    if not os.path.isfile(path):
        raise UserError(f"{path}: is a directory, expected a safetensors file")
    return open_safetensors(path, backend="pread")


def read_weights(files, source, expected, dtype, device):
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
        raise UserError(f"{source}: tensors do not match the {len(expected)} that config.json "
                         f"describes: {'; '.join(problems)}")
    state = {}
    for path in sorted(set(files.values())):
        with _open(path) as f:
            listed = sorted(n for n, p in files.items() if p == path)
            absent = sorted(set(listed) - set(f.keys()))
            if absent:
                raise UserError(f"{path}: tensors {some(absent)} are listed for this file "
                                 f"in {os.path.basename(source)} but are not in it")
            for name in listed:
                try:
                    t = f.get_tensor(name)
                except (SafetensorError, OSError, ValueError) as e:
                    raise UserError(f"{path}: cannot read tensor {name} ({e})") from None
                if not t.is_floating_point() or not torch.isfinite(t).all():
                    raise UserError(f"{path}: tensor {name} is {t.dtype}" + (" with NaN or inf values"
                                     if t.is_floating_point() else "") + "; expected finite floating-point weights")
                if tuple(t.shape) != tuple(expected[name]):
                    raise UserError(f"{path}: tensor {name} has shape {tuple(t.shape)}, "
                                     f"expected {tuple(expected[name])} from config.json")
                state[name] = t.to(device=device, dtype=dtype)
                del t
    return state


def read_config(path, fields):
    """The values of config.json for `fields` ({name: int or float}), checked:
    plain phi-2 (HF layout, gelu_new, no qk LayerNorm, no grouped KV heads),
    every field present (the token ids may be absent) and of its type and range."""
    raw = read_object(path, "an HF model folder holds it")
    rope = raw.get("rope_parameters") or {}   # transformers>=5 nests these two
    for key in ("partial_rotary_factor", "rope_theta"):
        if key not in raw and key in rope:
            raw[key] = rope[key]
    _check_phi_config(path, raw, fields)
    values = {name: raw[name] for name in fields if raw.get(name) is not None}
    _check_config_types(path, values, fields)
    for name in ("bos_token_id", "eos_token_id"):
        if values.get(name, 0) >= values["vocab_size"]:
            raise UserError(f"{path}: config field {name!r} is {values[name]}; expected an id below "
                             f"vocab_size ({values['vocab_size']})")
    return values


def read_tokenizer(path, vocab_size, eot):
    """tokenizer.json, with the end-of-text token `eot` and no more ids than embedding rows."""
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:
        raise UserError(f"{path}: not a tokenizers tokenizer.json ({e})") from None
    if tok.token_to_id(eot) is None:
        raise UserError(f"{path}: has no {eot} token")
    if tok.get_vocab_size() > vocab_size:
        raise UserError(f"{path}: {tok.get_vocab_size()} tokens, more than the "
                         f"{vocab_size} embedding rows of config.json")
    return tok


def write_folder(out_dir, state, tok, fields, dtype):
    """Write model.safetensors (the tensors of `state`), tokenizer.json and, last,
    config.json, each under a temporary name then renamed. config.json holds the
    model's `fields` (model.PhiConfig's) and what transformers' PhiForCausalLM
    also reads, and records the sha256 of the other two files (SET_KEY), so a crash
    between files leaves a folder that weight_files refuses rather than a mix of
    two saves."""
    config = {"architectures": ["PhiForCausalLM"], "model_type": "phi", **fields,
              "num_key_value_heads": fields["num_attention_heads"], "hidden_act": "gelu_new",
              "qk_layernorm": False, "tie_word_embeddings": False, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
              "attention_dropout": 0.0, "initializer_range": 0.02,
              "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": True}
    os.makedirs(out_dir, exist_ok=True)
    files = {"model.safetensors": lambda p: save_safetensors(state, p, {"format": "pt"}),
             "tokenizer.json": lambda p: tok.save(p)}
    for name, write in files.items():
        write_atomic(os.path.join(out_dir, name), write)
    digests = {n: sha256(os.path.join(out_dir, n)) for n in files}
    write_json(os.path.join(out_dir, "config.json"), {**config, SET_KEY: digests}, indent=2)


# ---------------------------------------------------------------------------
# Checks at the edges
# ---------------------------------------------------------------------------


def _check_layout(files, source, n_layers):
    """The weight files hold HF-layout layers 0..num_hidden_layers-1, checked on the
    names alone before the model is built (a config.json with 10**9 layers must not
    start building them)."""
    names = set(files)
    if any(n.startswith("transformer.h.") or ".mixer.Wqkv" in n for n in names):
        raise UserError(f"{source}: this is the old 'phi-msft' layout (transformer.h.N.mixer.Wqkv); "
                         "convert it to the HF layout (model.layers.N.self_attn.q_proj, ...) first")
    layers = {int(m.group(1)) for n in names if (m := re.match(r"model\.layers\.(\d+)\.", n))}
    if len(layers) != n_layers or max(layers, default=-1) != len(layers) - 1:   # not 0..L-1
        raise UserError(f"{source}: holds {len(layers)} layers (model.layers.N), but config.json "
                         f"says num_hidden_layers={n_layers}")


def _check_file_set(ckpt):
    """A folder written by write_folder() holds one save's files: config.json names the
    sha256 of the others (checkpoints from elsewhere carry no such record)."""
    path = os.path.join(ckpt, "config.json")
    with open(path) as f:
        saved = json.load(f).get(SET_KEY) or {}
    if not (isinstance(saved, dict) and all(isinstance(v, str) for v in saved.values())):
        raise UserError(f"{path}: {SET_KEY!r} must be an object of file name -> sha256")
    for name, digest in saved.items():
        if not os.path.exists(os.path.join(ckpt, name)):
            raise UserError(f"{os.path.join(ckpt, name)}: missing, but {path} was saved with it")
        if sha256(os.path.join(ckpt, name)) != digest:
            raise UserError(f"{os.path.join(ckpt, name)}: not the file that config.json was saved with "
                             "(an interrupted save?)")


def _check_phi_config(path, raw, fields):
    """config.json describes plain phi-2: HF layout, gelu_new, no qk LayerNorm, no
    grouped KV heads, and every one of `fields` (the token ids may be absent)."""
    if raw.get("model_type") == "phi-msft":   # phi-2's Hub revisions before its HF conversion
        raise UserError(f"{path}: this is the old 'phi-msft' layout (transformer.h.N.mixer.Wqkv); "
                         "convert it to the HF layout (model.layers.N.self_attn.q_proj, ...) first, "
                         "or use a later --revision")
    if raw.get("model_type") != "phi":
        raise UserError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'phi'")
    for key, want in {"hidden_act": "gelu_new", "qk_layernorm": False, "tie_word_embeddings": False}.items():
        if raw.get(key, want) != want:
            raise UserError(f"{path}: {key} is {raw[key]!r}; only {want!r} (as phi-2) is supported")
    kv = raw.get("num_key_value_heads") or raw.get("num_attention_heads")
    if kv != raw.get("num_attention_heads"):
        raise UserError(f"{path}: num_key_value_heads {kv} != num_attention_heads; "
                         "phi-2 has no grouped KV heads")
    for name in fields:
        if raw.get(name) is None and name not in ("bos_token_id", "eos_token_id"):
            raise UserError(f"{path}: config field {name!r} is missing")


# Ranges beyond "a positive number" (phi-2: 2048 positions, theta 10000, eps 1e-5): a
# context of 10**9 positions would allocate its RoPE tables, eps 1e10 erases LayerNorm.
RANGES = {"max_position_embeddings": (1, 2 ** 20), "partial_rotary_factor": (0, 1),
          "rope_theta": (1, 1e9), "layer_norm_eps": (0, 0.1)}


def _check_config_types(path, values, fields):
    """config.json values: ints are ints >= 1 (not 8.0, "320" or true), floats
    finite and > 0, and the fields of RANGES within their range."""
    for name, v in values.items():
        lo, hi = RANGES.get(name, (0, math.inf))
        if fields[name] is int:
            lo = 0 if name.endswith("token_id") else max(lo, 1)
            ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
            want = f"an integer >= {lo}" + (f" and <= {hi}" if hi < math.inf else "")
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo < v <= hi
            want = f"a finite number > {lo:g}" + (f" and <= {hi:g}" if hi < math.inf else "")
        if not ok:
            raise UserError(f"{path}: config field {name!r} is {v!r}; expected {want}")


