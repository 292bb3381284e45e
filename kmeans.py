"""
NumPy k-means, as cluster.py uses it: k-means++ seeding, n_init restarts, Lloyd
iterations with empty-cluster repair, a cosine (spherical) variant, seeded
k-means from a few labelled points, expert groups as a k-means of centroids,
purity and NMI to score a clustering against labels, and the silhouette, which
scores one without labels (and so can choose k).

    r = kmeans(X, k=8, seed=0)                       # r.labels (N,), r.centroids (k, C), r.inertia
    r = seeded_kmeans(X, y, labelled)                # cluster c starts at the labelled points of class c
    purity(skills, r.labels), nmi(skills, r.labels)
    silhouette(X, r.labels)                          # no labels read
    r, sweep = choose_k(X, range(2, 17))             # the k of the best silhouette

Chapters: 1. k-means, 2. seeded k-means and expert groups, 3. purity, NMI and
the silhouette, and k chosen by it (choose_k).

References: Arthur & Vassilvitskii, "k-means++: The Advantages of Careful
Seeding" (SODA 2007); Basu, Banerjee & Mooney, "Semi-supervised Clustering by
Seeding" (ICML 2002); Strehl & Ghosh (JMLR 2002) for NMI; Rousseeuw (J. Comput.
Appl. Math. 1987) for the silhouette. The tests check k-means, NMI and the
silhouette against scikit-learn, which is never imported here.

Left out: Elkan's and mini-batch k-means.
"""
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from formats.files import UserError

# ---------------------------------------------------------------------------
# 1. k-means: k-means++ seeding, Lloyd iterations, restarts
# ---------------------------------------------------------------------------


@dataclass
class KMeansResult:
    centroids: np.ndarray   # (k, d)
    labels: np.ndarray      # (n,) index of each point's nearest centroid
    inertia: float          # sum of squared distances of the points to their centroids
    n_iter: int             # Lloyd iterations run
    history: list           # inertia after each iteration; never rises


def unit(A):
    """Rows scaled to length 1 (zero rows stay zero)."""
    return A / np.linalg.norm(A, axis=1, keepdims=True).clip(1e-12)


def sq_dists(X, C):
    """(n, k) squared Euclidean distances as |x|^2 - 2 x.c + |c|^2: one matmul."""
    d = (X * X).sum(1)[:, None] - 2 * X @ C.T + (C * C).sum(1)[None, :]
    return np.maximum(d, 0)   # rounding can make a zero distance slightly negative


def check_k(k, distinct):
    """1 <= k <= the number of distinct points: with fewer, k-means would stack
    centroids on equal points and split them at random."""
    if distinct == 0:
        raise UserError("no points to cluster (empty data)")
    if not 1 <= k <= distinct:
        raise UserError(f"k={k} clusters for {distinct} distinct points: k must be between 1 and the number of "
                        "distinct points")


def n_distinct(X):
    """The number of distinct rows of X (N, d): a set of their bytes (+ 0.0 makes
    -0.0 the 0.0 it equals), faster than np.unique(X, axis=0), which sorts."""
    return len({row.tobytes() for row in X + 0.0})


def kmeans_plusplus(X, k, rng):
    """Greedy k-means++ seeding: the first centroid uniformly at random; for each
    next one, 2 + log(k) candidates drawn with probability proportional to their
    squared distance to the nearest centroid so far, keeping the candidate that
    lowers the inertia most (the greedy variant from the paper, as scikit-learn)."""
    C = np.empty((k, X.shape[1]), X.dtype)
    C[0] = X[rng.integers(len(X))]
    d = sq_dists(X, C[:1])[:, 0]   # (n,) squared distance to the nearest centroid
    trials = 2 + int(np.log(k))
    for j in range(1, k):
        p = d / d.sum() if d.sum() > 0 else None   # None (uniform) once every point is a centroid
        candidates = rng.choice(len(X), trials, p=p)
        d_new = np.minimum(d[:, None], sq_dists(X, X[candidates]))   # (n, trials)
        best = d_new.sum(0).argmin()
        C[j], d = X[candidates[best]], d_new[:, best]
    return C


def _repair_empty(labels, dist, k):
    """Give every empty cluster the point farthest from its centroid, taken from a
    cluster that keeps at least one point (as scikit-learn does)."""
    counts = np.bincount(labels, minlength=k)
    farthest_first = np.argsort(-dist, kind="stable")
    for j in np.flatnonzero(counts == 0):
        i = next(i for i in farthest_first if counts[labels[i]] > 1)
        counts[labels[i]] -= 1
        labels[i], counts[j] = j, 1
    return labels


def _centroids(X, labels, k, cosine):
    """Mean of each cluster: sort the points by cluster and sum each run (no cluster
    is empty); unit length if cosine."""
    counts = np.bincount(labels, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    C = np.add.reduceat(X[np.argsort(labels, kind="stable")], starts) / counts[:, None].astype(X.dtype)
    return unit(C) if cosine else C


def _lloyd(X, C, max_iter, tol, cosine):
    """Lloyd's iterations from centroids C until the labels stop changing, the
    centroids move less than tol (sum of squared shifts), or max_iter."""
    history, labels = [], None
    for n_iter in range(1, max_iter + 1):
        d = sq_dists(X, C)
        new = d.argmin(1)
        new = _repair_empty(new, d[np.arange(len(X)), new], len(C))
        C_new = _centroids(X, new, len(C), cosine)
        history.append(float(((X - C_new[new]) ** 2).sum(dtype=np.float64)))
        shift, C = ((C_new - C) ** 2).sum(), C_new
        done = labels is not None and np.array_equal(new, labels)
        labels = new
        if done or shift <= tol:
            break
    d = sq_dists(X, C)
    labels = d.argmin(1)   # the final labels belong to the final centroids
    return KMeansResult(C, labels, float(d[np.arange(len(X)), labels].sum(dtype=np.float64)),
                        n_iter, history)


def kmeans(X, k, n_init=10, max_iter=300, tol=1e-4, seed=0, cosine=False, init=None):
    """Best of n_init k-means++ starts (lowest inertia); or one run from the
    centroids `init` (k, d). k is at most the number of distinct points (check_k).
    tol is relative to the mean variance of the features, as in scikit-learn.
    cosine: spherical k-means (points and centroids unit length, so squared
    distance = 2 - 2 cos). The same seed gives the same result."""
    X = np.asarray(X)
    X = X.astype(np.float32 if X.dtype == np.float32 else np.float64)
    if X.ndim != 2:
        raise UserError(f"X must be a (points, features) array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise UserError("X contains NaN or infinite values")
    if cosine:
        X = unit(X)
    check_k(k, n_distinct(X))
    tol = tol * float(X.var(0).mean())
    if init is not None:
        init = np.asarray(init, X.dtype)
        if init.shape != (k, X.shape[1]):
            raise UserError(f"init has shape {init.shape}, expected {(k, X.shape[1])}")
        starts = [unit(init) if cosine else init]
    else:
        rng = np.random.default_rng(seed)
        starts = (kmeans_plusplus(X, k, rng) for _ in range(n_init))
    return min((_lloyd(X, C, max_iter, tol, cosine) for C in starts), key=lambda r: r.inertia)


# ---------------------------------------------------------------------------
# 2. Seeded k-means and expert groups
# ---------------------------------------------------------------------------


def seeded_kmeans(X, y, labelled, **kw):
    """Seeded k-means (Basu et al. 2002): one cluster per class of y[labelled],
    started at the mean of that class's labelled points, then ordinary k-means.
    Returns the predicted class of every point."""
    classes, result = seeded_clusters(X, y, labelled, **kw)
    return classes[result.labels]


def seeded_clusters(X, y, labelled, **kw):
    """(classes, k-means result) of seeded k-means: cluster c is started at the
    mean of the labelled points of class classes[c] (sorted)."""
    classes = np.unique(y[labelled])
    init = np.stack([X[labelled][y[labelled] == c].mean(0) for c in classes])
    return classes, kmeans(X, len(classes), init=init, **kw)


def labelled_sample(y, per_class, rng):
    """Indices of per_class random points of every class of y (all of a smaller class),
    drawn with the numpy Generator rng."""
    return np.concatenate([rng.choice(np.flatnonzero(y == c), min(per_class, int((y == c).sum())), replace=False)
                           for c in np.unique(y)])


def seeded_accuracy(X, y, per_class, trials=5, seed=0, **kw):
    """Accuracy of seeded k-means on the unlabelled points, per_class random
    labelled points of each class, averaged over `trials` draws; None when a class
    has no more than per_class points."""
    if np.unique(y, return_counts=True)[1].min() <= per_class:
        return None
    rng = np.random.default_rng(seed)
    accuracies = []
    for _ in range(trials):
        labelled = labelled_sample(y, per_class, rng)
        rest = np.ones(len(y), bool)
        rest[labelled] = False
        accuracies.append((seeded_kmeans(X, y, labelled, **kw)[rest] == y[rest]).mean())
    return float(np.mean(accuracies))


def expert_groups(centroids, n_groups, seed=0, cosine=False):
    """Expert groups for the grouped gate: a k-means over the cluster centroids.
    Returns one sorted list of cluster ids per group."""
    labels = kmeans(centroids, n_groups, seed=seed, cosine=cosine).labels
    return [np.flatnonzero(labels == g).tolist() for g in range(n_groups)]


# ---------------------------------------------------------------------------
# 3. Scoring a clustering: purity and NMI against labels, the silhouette without
# ---------------------------------------------------------------------------


def silhouette(X, labels, cosine=False, chunk=2048):
    """Mean silhouette coefficient (Rousseeuw 1987) of a clustering of X (N, d),
    in Euclidean distance (cosine: in cosine distance 1 - cos, as scikit-learn's
    metric="cosine"). For each point, a = its mean distance to the other points
    of its cluster and b = its smallest mean distance to the points of another
    cluster; s = (b - a) / max(a, b), and 0 for a point alone in its cluster. It
    reads no labels, so it can choose k: near 1, tight clusters far apart; near
    0, overlapping ones. Worked example: points 0, 1 (cluster 0) and 10 (cluster
    1): s = (10 - 1) / 10, (9 - 1) / 9 and 0, mean 0.596.
    Rows are taken `chunk` at a time, so memory is (chunk, N), not (N, N)."""
    X = unit(X) if cosine else np.asarray(X, dtype=np.float64)
    dist = (lambda A: np.maximum(1 - A @ X.T, 0)) if cosine else (lambda A: np.sqrt(sq_dists(A, X)))  # noqa: E731
    labels = np.asarray(labels)
    onehot = np.eye(labels.max() + 1)[labels]                           # (N, K)
    counts = onehot.sum(0)                                              # (K,)
    s = np.zeros(len(X))
    for start in range(0, len(X), chunk):
        rows = slice(start, start + chunk)
        sums = dist(X[rows]) @ onehot                                   # (n, N) @ (N, K) -> (n, K)
        own = labels[rows]
        a = sums[np.arange(len(own)), own] / np.maximum(counts[own] - 1, 1)
        mean = sums / np.maximum(counts, 1)
        mean[np.arange(len(own)), own] = np.inf
        mean[:, counts == 0] = np.inf
        b = mean.min(1)
        s[rows] = np.where(counts[own] > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


SILHOUETTE_POINTS = 2000   # the silhouette is O(N^2): at most this many points are scored


def choose_k(X, ks, n_init=10, seed=0, cosine=False, points=SILHOUETTE_POINTS):
    """k-means of X (N, C) for each k of ks, and the one whose clusters have the
    highest silhouette (the smaller k of a tie), in the distance k-means used
    (cosine: 1 - cos). The silhouette reads no labels, and nothing here knows how
    many skills there are. Beyond `points` points it is taken on a seeded sample
    of them, the same for every k. Returns (the kept KMeansResult, the sweep
    {"k": kept, "points": N, "silhouette_points": scored, "runs": [{k, silhouette,
    inertia}]}). Worked example: three tight blobs far apart, ks 2-6 -> k 3 (two
    blobs in one cluster make it loose; a blob split in two has a near neighbour)."""
    scored = np.arange(len(X))
    if len(X) > points:
        scored = np.sort(np.random.default_rng(seed).choice(len(X), points, replace=False))
    runs, best = [], None
    for k in tqdm(ks, desc="k sweep", unit="k", disable=None):
        r = kmeans(X, k, n_init=n_init, seed=seed, cosine=cosine)
        runs.append(dict(k=k, silhouette=silhouette(X[scored], r.labels[scored], cosine=cosine), inertia=r.inertia))
        if best is None or runs[-1]["silhouette"] > best[0]:
            best = runs[-1]["silhouette"], r
    kept = best[1]
    return kept, dict(k=len(kept.centroids), points=len(X), silhouette_points=len(scored), runs=runs)


def contingency(a, b):
    """(distinct a, distinct b) table of co-occurrence counts."""
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    return table


def purity(labels_true, labels_pred):
    """Share of the points that belong to their cluster's majority class."""
    table = contingency(labels_pred, labels_true)   # (clusters, classes)
    return float(table.max(1).sum() / table.sum())


def nmi(labels_true, labels_pred):
    """Normalised mutual information, MI / mean(H(true), H(pred)) in nats: scikit-
    learn's default ("arithmetic"). Two single-cluster labellings agree: 1."""
    p = contingency(labels_true, labels_pred)
    p /= p.sum()
    pt, pp = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * np.log(p[nz] / np.outer(pt, pp)[nz])).sum()
    ht, hp = -(pt * np.log(pt)).sum(), -(pp * np.log(pp)).sum()
    return 1.0 if ht == hp == 0 else float(max(mi, 0.0) / ((ht + hp) / 2))
