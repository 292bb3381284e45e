"""
The vocabulary every file format shares: one error for what a user got wrong,
the checks that say it in one line, and writing so that nothing is lost.

    raise UserError(f"{path}: field 'r' is 0, expected a positive int")
    obj = read_json("out/router/router.json", "train.py --router writes it")
    f = open_safetensors("adapter_model.safetensors")    # safe_open, or one line
    check_names(path, expected, found, "router.json")   # missing / unexpected tensors
    check_finite(path, "lora_A", t)                      # floating point, no NaN or inf
    write_atomic("out/x.safetensors", lambda p: save_safetensors(tensors, p, {"format": "pt"}))
    write_json("out/log.json", log)
    sha256("out/x.safetensors")        # lets one file of a set name another
    with lock("out/experts/algebra"):  # one writer per folder
        ...

A UserError names the file, field or flag and what was expected; cli.run
prints it as one line with exit status 2. Any other exception is a bug and
keeps its traceback (a ValueError from numpy included).

save_safetensors writes the safetensors format with its header in a fixed
order: the same tensors and metadata give the same bytes (safetensors' own
save_file orders the metadata at random, so a retrained adapter's sha256 would
change though nothing else did). The format: 8 bytes of header length (little
endian), the JSON header {"__metadata__": {...}, name: {"dtype", "shape",
"data_offsets"}, ...} padded with spaces to a multiple of 8, then the tensors'
bytes, one after another.

A file is written under a temporary name and renamed over the old one, so a
crash leaves the old file or the new one, never half of one. A set of files is
one set when the file written last records the sha256 of the others
(formats.hf.write_folder, formats.routers.save_router and
formats.adapters.save_adapter do so).

One writer per folder: lock() holds an flock on FOLDER/.lock, which names its
holder (process, host, command). The kernel lets go of the flock when the
holder dies, however it dies, so a lock left by a dead process is told apart
from a live one, taken over and said.

Left out: fsync. A rename is atomic on a POSIX file system; surviving a power cut
as well would cost a sync per file.
"""
import fcntl
import hashlib
import json
import os
import socket
import struct
import sys
from contextlib import contextmanager

from safetensors import SafetensorError, safe_open


class UserError(ValueError):
    """A mistake in what the user gave (a flag, a file, a field), said in one line."""


def short(v, width=60):
    """repr(v), cut to `width` characters for messages."""
    text = repr(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def read_json(path, made_by):
    """The JSON value in the file at path; a missing file says what makes it
    (`made_by`, e.g. "train.py --router writes it")."""
    if not os.path.isfile(path):
        raise UserError(f"{path} not found ({made_by})")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_object(path, made_by):
    """read_json, refused unless it is a JSON object."""
    obj = read_json(path, made_by)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def open_safetensors(path, **kw):
    """safe_open(path) for torch on the CPU; a damaged file is one line."""
    try:
        return safe_open(path, framework="pt", device="cpu", **kw)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: truncated or corrupt safetensors file ({e})") from None


def check_names(path, expected, found, against):
    """The tensors in a file are exactly the expected ones (`against` says who expects them)."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = [f"{what} {len(ks)} tensors, e.g. {ks[:3]}" for what, ks in
                 (("missing", missing), ("unexpected", unexpected)) if ks]
        raise UserError(f"{path}: tensors do not match {against}: " + "; ".join(parts))


def check_finite(path, key, t):
    """A saved tensor is floating point with no NaN or inf. Returns it."""
    if not t.is_floating_point():
        raise UserError(f"{path}: tensor {key} has dtype {t.dtype}, expected a floating-point dtype")
    if not t.isfinite().all():
        raise UserError(f"{path}: tensor {key} has {int(t.isnan().sum())} NaN and {int(t.isinf().sum())} "
                        "inf values, expected finite values")
    return t


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def write_atomic(path, write):
    """write(temporary path), then rename the result to path (its folder made if
    need be), with the mode of a plain new file (safetensors makes it owner-only)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def save_safetensors(tensors, path, metadata):
    """{name: torch tensor} and {key: str} metadata to a safetensors file at path,
    names and keys sorted: identical input, identical bytes. Not atomic by itself
    (wrap it in write_atomic)."""
    import torch           # here, not at the top: the study reads files.py without torch
    header, blobs, offset = {"__metadata__": dict(sorted(metadata.items()))}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes()          # the bytes as they lie in memory
        header[name] = {"dtype": SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)


def write_json(path, obj, indent=1):
    """json.dump(obj) to path, atomically, with a final newline."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")
    write_atomic(path, write)


def write_text(path, text):
    """text to path, atomically, with a final newline."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text + "\n")
    write_atomic(path, write)


def sha256(path):
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def lock(folder):
    """Hold FOLDER/.lock (the folder made if need be) while the body writes into
    the folder. A live holder is refused in one line that names it; the name of a
    dead one (its flock gone with it) is taken over, and said on stderr."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    with open(path, "a+") as f:
        f.seek(0)
        holder = f.read().strip()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder} is being written by {holder or 'another process'}; wait for it to "
                            "finish, or write to another folder") from None
        if holder:
            print(f"{path}: taking over the lock of {holder}, which is no longer running", file=sys.stderr)
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)[:200]})\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()             # a clean exit leaves no holder's name behind
