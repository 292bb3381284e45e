"""
Pictures: matplotlib is optional, and without it a picture is skipped with a
line saying so.

    plt = pyplot()                      # matplotlib.pyplot (file-only backend), or None
    heatmap(values, rows, cols, title, "out/x.png")

Used by study/clusters.py (the clusters in 2-D), eval.py (routing per layer) and the
study (forgetting, curves). Status lines go to stderr. Left out: interactive backends.
"""
import sys

from formats.files import write_atomic


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None (and a line saying so)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pictures are skipped (pip install matplotlib)", file=sys.stderr)
        return None
    return plt


def heatmap(values, rows, cols, title, path, fmt="{:+.0f}", diverging=True):
    """A PNG heatmap of values (rows x cols), each cell printed with fmt, written
    atomically (formats.files.write_atomic). diverging: red/blue around 0
    (differences); else one colour from 0 (weights). Returns path, or None when
    matplotlib is missing and nothing was drawn."""
    plt = pyplot()
    if plt is None:
        return None
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
    save_figure(fig, path)
    return path


def save_figure(fig, path):
    """fig as a PNG at path, written atomically (a killed run leaves the old
    picture or none, never half of one), then closed."""
    write_atomic(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    pyplot().close(fig)
    print(f"wrote {path}", file=sys.stderr)
