"""
cluster.py's embedding cache: one .npy file per (model files, dtype, layer,
texts), named by a hash of all of them, holding the float32 embeddings (N, C)
of the distinct texts in sorted order.

    path = cache_path(cache_dir, folder, dtype, layer, distinct_texts)
    X = read_cache(path, (N, C))      # None: no file, or a damaged one (said on stderr)
    write_cache(path, X)              # atomically

The hash covers the model folder's path and the size and modification time of
each of its files, so retraining a model in place invalidates its cache.

Left out: evicting old files (delete the folder to clear it).
"""
import hashlib
import os
import sys

import numpy as np

from formats.files import write_atomic


def cache_path(cache_dir, folder, dtype, layer, texts):
    """cache_dir/<hash>.npy for these texts, embedded at `layer` by the model
    loaded in `dtype` from `folder`."""
    key = hashlib.sha256(f"{os.path.realpath(folder)}|{layer}|{dtype}".encode())
    for name in sorted(os.listdir(folder)):
        st = os.stat(os.path.join(folder, name))
        key.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for t in texts:
        key.update(t.encode() + b"\0")
    return os.path.join(cache_dir, key.hexdigest()[:20] + ".npy")


def read_cache(path, shape):
    """The float32 array of `shape` cached at path, or None where there is none. A
    damaged file (truncated by a full disk, say, or not an array) is said on stderr
    and is a miss: the caller embeds again and writes it anew."""
    if not os.path.exists(path):
        return None
    try:
        X = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        why = str(e)
    else:
        why = None if X.dtype == np.float32 and X.shape == shape else f"{X.dtype} {X.shape}, expected float32 {shape}"
    if why:
        print(f"{path}: a damaged embedding cache ({why}); embedding again", file=sys.stderr)
        return None
    print(f"embeddings from cache {path}", file=sys.stderr)
    return X


def write_cache(path, X):
    """X to path, atomically (a killed run leaves no half-written cache)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def save(tmp):
        with open(tmp, "wb") as f:
            np.save(f, X)
    write_atomic(path, save)
