"""
Writing what a run makes, so that nothing a user made is lost, and the pictures.

    write_atomic("out/x.safetensors", lambda p: save_file(tensors, p))
    write_json("out/log.json", log)
    sha256("out/x.safetensors")        # lets one file of a set name another
    plt = pyplot()                      # matplotlib, or None when it is not installed

A file is written under a temporary name and renamed over the old one, so a
crash leaves the old file or the new one, never half of one. A set of files is
one set when the file written last records the sha256 of the others
(hf.write_folder, mixture.save_router and adapters.save_adapter do so).
matplotlib is optional: without it the pictures are skipped with a line saying so.

Left out: fsync. A rename is atomic on a POSIX file system; surviving a power cut
as well would cost a sync per file.
"""
import hashlib
import json
import os


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


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None (and a line saying so)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pictures are skipped (pip install matplotlib)")
        return None
    return plt


def heatmap(values, rows, cols, title, path, fmt="{:+.0f}", diverging=True):
    """A PNG heatmap of values (rows x cols), each cell printed with fmt.
    diverging: red/blue around 0 (differences); else one colour from 0 (weights)."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(1 + 0.9 * len(cols), 1 + 0.5 * len(rows)))
    lim = max(1e-9, max(abs(v) for row in values for v in row))
    im = ax.imshow(values, cmap="RdBu" if diverging else "Blues", vmin=-lim if diverging else 0, vmax=lim)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
