"""
A clustering held against the labels it never read: cluster.py's run, with
report.md and clusters.png written beside its clusters.

    python -m study.clusters --split test --limit 100 --out out/clusters-test   # cluster.py's flags
    python -m study.clusters --k 2-16 --sample 2000 --split test --out out/clusters-sweep

report.md: how well the clusters of the meta-questions, and of the raw questions
clustered the same way, agree with the skills and the submodules (purity and
NMI, kmeans.py's); seeded k-means from 1, 5 and 20 labelled questions per skill;
the k sweep when k was chosen by silhouette; each cluster's size, majority skill
and submodule, group and an example; the expert groups. clusters.png: a PCA of
the meta-question embeddings, coloured by cluster, one marker per true skill.

This file hands its report to cluster.main, which writes it with the clusters:
cluster.py imports nothing of study/ (imports run one way). Like heldout.py it
loads a model, and python -m study never imports it.

Left out: t-SNE and UMAP pictures (a PCA needs only NumPy's SVD).
"""
from dataclasses import replace

import numpy as np

import cli
import cluster as C
from kmeans import nmi, purity, seeded_accuracy
from formats.pictures import pyplot, save_figure

LABELS_PER_SKILL = (1, 5, 20)   # labelled questions per skill that start seeded k-means


# ---------------------------------------------------------------------------
# 1. The numbers: agreement with the labels, seeded k-means, each cluster
# ---------------------------------------------------------------------------


def agreement(labels, skills, submodules):
    """Purity and NMI of a clustering against the skills and the submodules."""
    out = {}
    for name, truth in (("skills", skills), ("submodules", submodules)):
        out[f"purity ({name})"], out[f"NMI ({name})"] = purity(truth, labels), nmi(truth, labels)
    return out


def scores(X, result, texts, skills, submodules, cfg):
    """One embedded text's row (distinct texts, inertia, agreement) and seeded
    k-means' accuracy for each of LABELS_PER_SKILL."""
    row = dict(distinct=len(set(texts)), inertia=result.inertia, agreement=agreement(result.labels, skills, submodules))
    seeded = {m: seeded_accuracy(X, skills, m, cfg.label_trials, cfg.seed, cosine=cfg.cosine)
              for m in LABELS_PER_SKILL}
    return row, seeded


def compare(run, model, tok):
    """({embedded text: row}, {embedded text: seeded accuracies}) for the
    meta-questions clustered, and (unless --no-raw) the raw questions clustered
    the same way with the k kept."""
    cfg = run.cfg
    skills = np.array([e.skill for e in run.examples])
    submodules = np.array([e.submodule for e in run.examples])
    rows, seeded = {}, {}
    rows["meta-questions"], seeded["meta-questions"] = scores(run.X, run.result, run.metas, skills, submodules, cfg)
    if not cfg.no_raw:   # the same without abstraction, to compare with
        raw = [e.question for e in run.examples]
        X = C.embed_cached(raw, model, tok, run.layer, cfg.cache_dir, cfg.batch_size)
        result, _ = C.fit_clusters(X, replace(cfg, k=range(run.k, run.k + 1)), skills)
        rows["raw questions"], seeded["raw questions"] = scores(X, result, raw, skills, submodules, cfg)
    return rows, seeded


def describe(run):
    """{cluster: size, majority skill and its share, majority submodule, group, an example}."""
    group_of = {c: g for g, members in enumerate(run.groups) for c in members}
    skills = C.cluster_skills(run.result.labels, run.k, run.examples)
    out = {}
    for c in range(run.k):
        first = np.flatnonzero(run.result.labels == c)[:1]
        out[c] = dict(skills[str(c)], group=group_of[c], example=run.metas[first[0]] if len(first) else "")
    return out


# ---------------------------------------------------------------------------
# 2. The report
# ---------------------------------------------------------------------------


def fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def table(header, rows):
    """A markdown table, as a list of lines."""
    return (["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
            + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def sweep_section(sweep, cosine):
    """The k sweep: each k's silhouette and inertia, and on how many points the silhouette was taken."""
    scored = (f"all {sweep['points']} points" if sweep["silhouette_points"] == sweep["points"] else
              f"a seeded sample of {sweep['silhouette_points']} of the {sweep['points']} points (it costs N^2)")
    lines = ["## k by silhouette", "",
             f"k-means for each k; k = {sweep['k']} has the highest silhouette ({'cosine' if cosine else 'euclidean'} "
             f"distance, on {scored}). No label is read.", ""]
    rows = [[r["k"], f"{r['silhouette']:.4f}", f"{r['inertia']:.4g}", "kept" if r["k"] == sweep["k"] else ""]
            for r in sweep["runs"]]
    return lines + table(["k", "silhouette", "inertia", ""], rows) + [""]


def report(run, rows, seeded, clusters):
    """The markdown report: agreement with the labels, the k sweep, seeded k-means, clusters, groups."""
    cfg = run.cfg
    metrics = list(rows["meta-questions"]["agreement"])
    k = f"{run.k} (of {C.k_text(cfg.k)}, by silhouette)" if run.sweep else run.k
    lines = [f"# Clusters of {len(run.examples)} {cfg.split} questions", "",
             f"model `{run.model_name}` (layer {run.layer}), data `{cfg.data}`, k = {k}, "
             f"{'cosine' if cfg.cosine else 'euclidean'} k-means, "
             + (f"seeded with {cfg.seeded} labelled questions per skill, " if cfg.seeded else
                f"n_init {cfg.n_init}, ") + f"seed {cfg.seed}", ""]
    lines += table(["embedded text", "distinct texts", "inertia", *metrics],
                   [[name, r["distinct"], f"{r['inertia']:.4g}", *map(fmt, r["agreement"].values())]
                    for name, r in rows.items()])
    lines += [""] + (sweep_section(run.sweep, cfg.cosine) if run.sweep else [])
    lines += ["## Seeded k-means, one cluster per skill", "",
              "Centroids start at the mean of m labelled questions per skill, drawn at random from this "
              f"split; accuracy on the other questions, mean of {cfg.label_trials} draws (n/a: some skill "
              "has no more than m questions).", ""]
    lines += table(["labels per skill", *rows], [[m, *(fmt(seeded[name][m]) for name in rows)]
                                                 for m in LABELS_PER_SKILL])
    lines += ["", "## Clusters", ""]
    lines += table(["cluster", "size", "majority skill", "share", "majority submodule", "group", "example"],
                   [[c, d["size"], d["skill"], f"{d['share']:.2f}", d["submodule"], d["group"],
                     f"`{d['example']}`"] for c, d in clusters.items()])
    lines += ["", "## Expert groups", ""]
    for g, members in enumerate(run.groups):
        skills = sorted({clusters[c]["skill"] for c in members})
        lines.append(f"- group {g}: clusters {', '.join(map(str, members))} ({', '.join(skills)})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# 3. The picture
# ---------------------------------------------------------------------------


def pca_2d(X):
    """The points (N, C) projected on their first two principal components (via SVD): (N, 2)."""
    Xc = X - X.mean(0)
    return Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:2].T


def plot_clusters(X, labels, skills, path, title):
    """2-D PCA picture: colour = cluster, marker = true skill (skipped without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return
    P = pca_2d(X)
    fig, ax = plt.subplots(figsize=(9, 7))
    cmap = "tab20" if labels.max() < 20 else "turbo"
    for s, marker in zip(sorted(set(skills)), "osv^D<>pP*hX" * 10):
        m = skills == s
        ax.scatter(P[m, 0], P[m, 1], c=labels[m], cmap=cmap, vmin=0, vmax=max(labels.max(), 1),
                   marker=marker, s=22, alpha=0.8, edgecolors="none")
        ax.scatter([], [], marker=marker, c="grey", label=s)   # legend entry: marker only
    ax.legend(title="true skill", fontsize=8)
    ax.set(title=title, xlabel="principal component 1", ylabel="principal component 2")
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------


def quality_report(run, model, tok):
    """cluster.main's report: (report.md's text, the picture's draw(path)); the
    report's head (agreement, the sweep, seeded k-means) on stdout."""
    rows, seeded = compare(run, model, tok)
    text = report(run, rows, seeded, describe(run))
    print(text.split("## Clusters")[0])
    skills = np.array([e.skill for e in run.examples])
    title = f"{run.k} clusters of {len(run.examples)} {run.cfg.split} meta-questions (PCA of layer {run.layer})"
    return text, lambda path: plot_clusters(run.X, run.result.labels, skills, path, title)


def main(argv=None):
    C.main(argv, report=quality_report)


if __name__ == "__main__":
    cli.run(main)
