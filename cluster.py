"""
Meta-questions and NumPy k-means: group questions by skill without labels.

    python cluster.py --out runs/cluster                   # k = number of submodules in the data
    python cluster.py --k 8 --split test --out runs/cluster-test --cosine

Each question is reduced to its meta-question (its skeleton), embedded with the
base model's own hidden states, and k-means groups the embeddings. The clusters
stand in for hand-made skill labels: an expert per cluster (train.py --expert
cluster:K, via examples_of_cluster and clusters_of), centroids as the instance
"intuition" an Intuition-MoR1E router compares with, and a second k-means over
the centroids for the groups of the grouped gate. Chapters:

  1. meta_question   numbers -> N, names -> canonical names, literal lists collapse
  2. embeddings      mean over real tokens of one layer's hidden states, cached on disk
  3. the picture     a PCA of the embeddings, coloured by cluster
  4. the CLI         centroids, assignments, majority skills, groups, report; one
                     writer per --out (its lock)
The k-means itself (k-means++, seeded k-means, purity and NMI) is kmeans.py's.

Worked meta-questions, real generator output (data/generate.py), one per skill
(tests/test_cluster.py checks every pair below):

  algebra      Solve -12704 = -5*s - 12744 for s.
            -> Solve N = x + N for x.
  algebra      What is the k'th term of 113, 469, 1061, 1889, 2953, 4253?
            -> What is the x'th term of [list]?
  arithmetic   In base 4, what is 10 + -2231?
            -> In base N, what is N + N?
  calculus     What is the second derivative of -1940*y**2 - 14311*y + 1 wrt y?
            -> What is the second derivative of x**N + x + N wrt x?
  comparison   Which is the third biggest value?  (a) -1/3  (b) -3/5  (c) -2/311
            -> Which is the third biggest value? [list]
  measurement  How many micrograms are there in 42/5 of a milligram?
            -> How many micrograms are there in N/N of a milligram?
  numbers      Round -0.00030706 to 4 decimal places.
            -> Round N to N decimal places.
  polynomials  Let a(x) = 2*x - 4. What is a(4)?
            -> Let f(x) = x + N. What is f(N)?
  probability  Two letters picked without replacement from {x: 4, e: 2, v: 8}. Give prob of sequence xx.
            -> N letters picked without replacement from {letters}. Give prob of sequence {letters}.

References: Intuition-MoR1E / T-REX (arXiv 2404.08985) for clustering instance
embeddings to guide a mixture of LoRA experts; Arthur & Vassilvitskii, "k-means++:
The Advantages of Careful Seeding" (SODA 2007); Basu, Banerjee & Mooney,
"Semi-supervised Clustering by Seeding" (ICML 2002); Strehl & Ghosh (JMLR 2002)
for NMI. The tests check k-means and NMI against scikit-learn, which is never
imported here.

Left out: Elkan's and mini-batch k-means, choosing k automatically, and a real
parser: the abstraction is a chain of regular expressions tuned to DeepMind-style
questions (a base-16 numeral written with letters only, like "bc", stays a name;
"a" is told from the article by the word after it).
"""
import hashlib
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

import model as M
from kmeans import (expert_groups, kmeans, labelled_sample, nmi, purity, seeded_accuracy,
                    seeded_clusters, sq_dists, unit)
import cli
from formats.clusters import OUTPUTS, check_replaceable, read_assignments, read_centroids, write_outputs
from formats.files import UserError, lock, write_atomic
from formats.pictures import pyplot
from data.lila import load as load_examples
from data.prompts import SHOT_POOL, seeded_random, select

# ---------------------------------------------------------------------------
# 1. Meta-questions
# ---------------------------------------------------------------------------

NUM = r"N(?:/N)?"   # a number or a fraction, once numbers are N
RULES = [           # applied in order
    # numbers -> N: integers, decimals, base-b numerals (4a, -c9), units glued on (9232.153l) ...
    (r"\b[0-9a-z]*\d[0-9a-z]*(?:\.\d+[a-z]*)?\b", "N"),
    # ... and number words ("three fifths of a meter")
    (r"(?i)\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b", "N"),
    (r"(?<![\w)])-(?=[\w(.])", ""),   # a unary minus is part of its number: -44*v -> 44*v
    (r" - ", " + "),                  # so a binary minus is a plus
    (r"(?<![\w)*/^.])N\*(?=[a-z](?!\w))", ""),   # coefficients drop (1 is never written): N*v -> v
    (r"( \+ ([\w*/^]+))(?: \+ \2)+(?![\w*/^(:])", r"\1"),   # repeated terms merge: v + N + N -> v + N
    (r"\s*(?:\([a-z]\) " + NUM + r"\s*){2,}", " [list]"),   # options (a) N  (b) N/N ... -> [list]
    (r"(?<![\w*/^.)])(?<![=+*/] )" + NUM + r"(?:, " + NUM + r"){2,}(?![\w*/^(:]| [=+*/])",
     "[list]"),                                             # N, N, N/N -> [list]
    (r"\{[a-z]: N(?:, [a-z]: N)*\}", "{letters}"),          # a bag {x: N, e: N} ...
    (r"(?<=replacement from )[a-z]+\b|(?<=sequence )[a-z]+\b", "{letters}"),   # ... or string of letters
]
VARIABLES, FUNCTIONS = "xyzwvutsrqpo", "fghjklmn"   # canonical names, in order of appearance
NOT_ARTICLE = {"be", "is", "and", "or", "for", "when", "in", "wrt"}   # "Let a be", "picking N a and"


def _canonical_names(q):
    """Rename single-letter names in order of appearance: functions (a letter
    before "(") to f, g, h, ..., variables to x, y, z, ...; "a" before a word
    (other than NOT_ARTICLE) is the article and stays."""
    names = {}

    def rename(m):
        letter, rest = m[0], q[m.end():]
        word = re.match(r" ([a-z]{2,})\b", rest)
        if letter == "a" and word and word[1] not in NOT_ARTICLE:
            return letter
        if letter not in names:
            is_function = rest.startswith("(")
            pool = FUNCTIONS if is_function else VARIABLES
            used = sum(f == is_function for _, f in names.values())
            names[letter] = (pool[used] if used < len(pool) else f"{pool[0]}{used}", is_function)
        return names[letter][0]

    return re.sub(r"(?<![\w'])[a-z](?!\w)", rename, q)


def meta_question(question):
    """The skeleton of a question; see the worked examples at the top of the file."""
    for pattern, replacement in RULES:
        question = re.sub(pattern, replacement, question)
    return _canonical_names(question)


# ---------------------------------------------------------------------------
# 2. Embeddings
# ---------------------------------------------------------------------------


@torch.no_grad()
def embed(texts, model, tok, layer, batch_size=32):
    """(len(texts), C) float32: the input of `layer` (num_hidden_layers gives the
    final-layernorm output), averaged over each text's tokens. Texts are sorted by
    length and right-padded per batch; padding is masked and left out of the mean."""
    pad = tok.token_to_id(M.EOT)
    ids = [tok.encode(t).ids for t in texts]
    long = [t for t, i in zip(texts, ids) if len(i) > model.config.max_position_embeddings]
    if long:   # never embed a cut text as if it were whole
        raise UserError(f"{len(long)} texts are longer than the model's {model.config.max_position_embeddings}"
                         f"-token context, e.g. {long[0][:60]!r}...")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.hidden_size), np.float32)
    device = model.lm_head.weight.device
    for b in tqdm(range(0, len(order), batch_size), desc=f"embedding (layer {layer})", unit="batch",
                  disable=None):                                    # a bar on a terminal, not in a log
        rows = order[b:b + batch_size]
        T = max(len(ids[i]) for i in rows)
        idx = torch.full((len(rows), T), pad, dtype=torch.long)
        valid = torch.zeros(len(rows), T, dtype=torch.bool)
        for r, i in enumerate(rows):
            idx[r, :len(ids[i])] = torch.tensor(ids[i])
            valid[r, :len(ids[i])] = True
        valid = valid.to(device)
        h = model(idx.to(device), valid=valid, hidden_layer=layer).float()   # (B, T, C)
        w = valid.unsqueeze(-1).float()                                      # (B, T, 1)
        out[rows] = ((h * w).sum(1) / w.sum(1)).cpu().numpy()
    return out


def resolve_layer(config, layer=None):
    """Check that 0 <= layer <= num_hidden_layers of the model's config; None
    gives the middle layer."""
    n_layers = config.num_hidden_layers
    layer = n_layers // 2 if layer is None else layer
    if not 0 <= layer <= n_layers:
        raise UserError(f"layer {layer} out of range: the model has layers 0..{n_layers}")
    return layer


def embed_cached(texts, model, tok, layer, cache_dir=cli.EMBED_CACHE, batch_size=32):
    """embed() for each distinct text once, cached in cache_dir/<hash>.npy. The
    model is the run's one base model (no adapters attached); the hash covers the
    directory it was loaded from (path, and size and time of each file, so
    retraining in place invalidates it), its dtype, the layer and the texts. A
    cache file that does not read back whole (read_cache) is a miss."""
    layer = resolve_layer(model.config, layer)
    if not texts:
        raise UserError("no texts to embed")
    distinct, inverse = np.unique(np.array(texts), return_inverse=True)
    ckpt = model.name_or_path
    key = hashlib.sha256(f"{os.path.realpath(ckpt)}|{layer}|{model.lm_head.weight.dtype}".encode())
    for name in sorted(os.listdir(ckpt)):
        st = os.stat(os.path.join(ckpt, name))
        key.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for t in distinct:
        key.update(t.encode() + b"\0")
    path = os.path.join(cache_dir, key.hexdigest()[:20] + ".npy")
    X = read_cache(path, (len(distinct), model.config.hidden_size))
    if X is not None:
        return X[inverse]
    X = embed(list(distinct), model, tok, layer, batch_size)
    os.makedirs(cache_dir, exist_ok=True)
    def save(tmp):
        with open(tmp, "wb") as f:
            np.save(f, X)
    write_atomic(path, save)
    return X[inverse]


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


# ---------------------------------------------------------------------------
# 3. The picture
# ---------------------------------------------------------------------------


def pca_2d(X):
    """The points projected on their first two principal components (via SVD)."""
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# 4. Using the assignments, and the CLI
# ---------------------------------------------------------------------------


def meta_embeddings(examples, model, tok, layer):
    """The embeddings (N, C) of the examples' meta-questions at `layer` of the base
    model, which must not have experts attached yet."""
    return embed_cached([meta_question(e.question) for e in examples], model, tok, layer)


def nearest_centroid(X, C, cosine=False):
    """(N,) index of the nearest centroid (k, C) for each embedding in X (N, C)."""
    if cosine:
        X, C = unit(X), unit(C)
    return sq_dists(X, C).argmin(1)


def clusters_of(assign_dir, examples, model=None, tok=None):
    """(cluster of each example (N,), number of clusters) for cluster.py --out
    assign_dir. A question that was clustered keeps its cluster; one that was not
    (another split, or left out by --limit) goes to its nearest centroid when
    the base model that embedded the clusters is given, and gets -1 otherwise.
    Expert training (examples_of_cluster) and the router's labels both use it,
    so a question means the same cluster to both."""
    records = read_assignments(assign_dir)
    cluster_of = {r["question"]: r["cluster"] for r in records}
    n_clusters = max(cluster_of.values()) + 1
    new = list(dict.fromkeys(e.question for e in examples if e.question not in cluster_of))
    if new and model is not None:
        C, layer, cosine = read_centroids(assign_dir, model.config)
        X = embed_cached([meta_question(q) for q in new], model, tok, layer)
        cluster_of.update(zip(new, nearest_centroid(X, C, cosine).tolist()))
    return np.array([cluster_of.get(e.question, -1) for e in examples], dtype=int), n_clusters


def expert_labels(examples, names, clusters_dir, model, tok):
    """The expert of each example, by its index in names: its skill, or (experts
    named cluster-K) its cluster as clusters_of places it, the way that expert's
    training questions were chosen; -1 where none applies. The router's
    centroids and task level are fitted to these labels."""
    if all(n.startswith("cluster-") for n in names):
        ids, _ = clusters_of(clusters_dir, examples, model, tok)
        index = {int(n.split("-")[1]): i for i, n in enumerate(names)}
        return np.array([index.get(c, -1) for c in ids.tolist()])
    return np.array([names.index(e.skill) if e.skill in names else -1 for e in examples])


def examples_of_cluster(assign_dir, k, examples, model=None, tok=None):
    """The examples (data.lila.Example) of cluster k of cluster.py --out assign_dir,
    in order: for train.py --expert cluster:K. Unclustered questions are placed as
    in clusters_of; none at all is an error."""
    ids, n_clusters = clusters_of(assign_dir, examples, model, tok)
    path = os.path.join(assign_dir, "assignments.json")
    if not 0 <= k < n_clusters:
        raise UserError(f"cluster {k} does not exist: {path} has clusters 0..{n_clusters - 1}")
    if (ids < 0).all():
        raise UserError(f"none of the {len(examples)} questions is in {path} "
                         "(clustered from other data or another split?)")
    chosen = [e for e, c in zip(examples, ids) if c == k]
    if not chosen:
        splits = "/".join(sorted({e.split for e in examples}))
        raise UserError(f"cluster {k} of {path} holds none of the {len(examples)} {splits} questions; "
                         "a cluster expert needs questions of its own in the train and the dev split")
    return chosen


def nearest_rows(Q, K, k, exclude=()):
    """(len(Q), k) indices of the k rows of K nearest to each row of Q by cosine,
    ordered farthest first, so the nearest comes last; (i, j) in exclude is never
    chosen, and of equal similarities the lower index is the nearer. One matrix
    product per chunk of 256 rows of Q. Worked example:

        nearest_rows([[1, 0]], [[1, 0], [1, 1], [0, 1], [-1, 0]], 2)  ->  [[1, 0]]
        nearest_rows([[1, 0]], [[1, 0], [1, 1], [0, 1], [-1, 0]], 2, exclude={(0, 0)})  ->  [[2, 1]]"""
    Q, K = unit(np.asarray(Q, np.float32)), unit(np.asarray(K, np.float32))
    out = np.empty((len(Q), k), dtype=np.int64)
    for start in range(0, len(Q), 256):
        S = Q[start:start + 256] @ K.T                                   # (b, N) cosines
        for i, j in exclude:
            if start <= i < start + 256:
                S[i - start, j] = -np.inf
        out[start:start + 256] = np.argsort(-S, axis=1, kind="stable")[:, :k][:, ::-1]
    return out


def nearest_shots(examples, train, model, tok, k, pool_size=SHOT_POOL, seed=1234, text="meta-question",
                  layer=None, cache_dir=cli.EMBED_CACHE):
    """{question: [Example, ...]}, the k train questions nearest to each example's
    (data.prompts.draw_shots with source "nearest"), farthest first. No label is
    read: the whole train split is searched, or pool_size questions of it drawn by
    seed, each embedded as its meta-question (text "meta-question") or as itself
    ("question") at `layer` of the base model (middle by default), cached on disk
    by embed_cached under a key of the model's files, dtype, layer and texts. A
    question is never its own shot."""
    if len(train) > pool_size:
        train = [train[i] for i in sorted(seeded_random(seed, "shot pool").sample(range(len(train)), pool_size))]
    as_text = meta_question if text == "meta-question" else str
    layer = resolve_layer(model.config, layer)
    K = embed_cached([as_text(e.question) for e in train], model, tok, layer, cache_dir)
    questions = list(dict.fromkeys(e.question for e in examples))
    Q = embed_cached([as_text(q) for q in questions], model, tok, layer, cache_dir)
    at = {}
    for j, e in enumerate(train):
        at.setdefault(e.question, []).append(j)
    exclude = {(i, j) for i, q in enumerate(questions) for j in at.get(q, [])}
    rows = nearest_rows(Q, K, min(k, len(train)), exclude)
    return {q: [train[j] for j in row] for q, row in zip(questions, rows)}


LABELS_PER_SKILL = (1, 5, 20)


def agreement(labels, skills, submodules):
    """Purity and NMI of a clustering against the skills and the submodules."""
    out = {}
    for name, truth in (("skills", skills), ("submodules", submodules)):
        out[f"purity ({name})"], out[f"NMI ({name})"] = purity(truth, labels), nmi(truth, labels)
    return out


def majority(values):
    """(most common value, its share); ("-", 0.0) when there are none."""
    if len(values) == 0:
        return "-", 0.0
    value, count = Counter(values).most_common(1)[0]
    return value, count / len(values)


def describe(labels, k, skills, submodules, metas, group_of):
    """{cluster: size, majority skill and its share, majority submodule, group, an example}."""
    out = {}
    for c in range(k):
        members = np.flatnonzero(labels == c)   # empty only if the final assignment emptied it
        (skill, share), (submodule, _) = majority(skills[members]), majority(submodules[members])
        out[c] = dict(size=len(members), skill=skill, share=share, submodule=submodule,
                      group=group_of[c], example=metas[members[0]] if len(members) else "")
    return out


def fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def table(header, rows):
    """A markdown table, as a list of lines."""
    return (["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
            + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


@dataclass
class ClusterConfig:
    """One clustering run (cluster.py's flags; cli.py declares them with their defaults)."""
    data: str                  # LiLA task files or folder
    split: str                 # the questions clustered
    limit: int | None          # at most this many per skill (a seeded sample)
    k: int | None              # clusters (None: one per submodule; --seeded: one per skill)
    cosine: bool               # spherical k-means
    seeded: int | None         # labelled questions per skill that start each cluster
    groups: int | None         # expert groups (None: about sqrt(k))
    n_init: int                # k-means++ restarts
    seed: int
    label_trials: int          # draws of labelled questions for seeded k-means
    no_raw: bool               # skip the raw-question comparison
    layer: int | None          # the hidden layer embedded (None: the middle one)
    batch_size: int
    cache_dir: str


def report(cfg, model_name, n, layer, rows, seeded, clusters, groups):
    """The markdown report: agreement with the labels, seeded k-means, clusters, groups."""
    metrics = list(rows["meta-questions"]["agreement"])
    lines = [f"# Clusters of {n} {cfg.split} questions", "",
             f"model `{model_name}` (layer {layer}), data `{cfg.data}`, k = {cfg.k}, "
             f"{'cosine' if cfg.cosine else 'euclidean'} k-means, "
             + (f"seeded with {cfg.seeded} labelled questions per skill, " if cfg.seeded else
                f"n_init {cfg.n_init}, ") + f"seed {cfg.seed}", ""]
    lines += table(["embedded text", "distinct texts", "inertia", *metrics],
                   [[name, r["distinct"], f"{r['inertia']:.4g}", *map(fmt, r["agreement"].values())]
                    for name, r in rows.items()])
    lines += ["", "## Seeded k-means, one cluster per skill", "",
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
    for g, members in enumerate(groups):
        skills = sorted({clusters[c]["skill"] for c in members})
        lines.append(f"- group {g}: clusters {', '.join(map(str, members))} ({', '.join(skills)})")
    return "\n".join(lines) + "\n"


def cluster_texts(texts, model, tok, cfg, layer, skills, submodules):
    """Embed texts, k-means them, score the clusters: (X, KMeansResult, row, seeded accuracies)."""
    X = embed_cached(texts, model, tok, layer, cfg.cache_dir, cfg.batch_size)
    if cfg.seeded:           # semi-supervised: cluster c starts at skill c's labelled questions
        labelled = labelled_sample(skills, cfg.seeded, np.random.default_rng(cfg.seed))
        _, r = seeded_clusters(X, skills, labelled, seed=cfg.seed, cosine=cfg.cosine)
    else:
        r = kmeans(X, cfg.k, n_init=cfg.n_init, seed=cfg.seed, cosine=cfg.cosine)
    row = dict(distinct=len(set(texts)), inertia=r.inertia, agreement=agreement(r.labels, skills, submodules))
    seeded = {m: seeded_accuracy(X, skills, m, cfg.label_trials, cfg.seed, cosine=cfg.cosine)
              for m in LABELS_PER_SKILL}
    return X, r, row, seeded


def questions_to_cluster(cfg):
    """The questions of cfg's split, and cfg with its k settled (one per skill when
    seeded, else --k or one per submodule)."""
    examples = load_examples(cfg.data, split=cfg.split)
    if cfg.limit:   # a seeded sample of at most --limit questions per skill
        examples = select(examples, cfg.limit, cfg.seed)
    n_skills = len({e.skill for e in examples})
    if cfg.seeded and cfg.k not in (None, n_skills):
        raise UserError(f"--seeded makes one cluster per skill ({n_skills}); --k is {cfg.k}")
    fewest = min(Counter(e.skill for e in examples).items(), key=lambda kv: kv[1])
    if cfg.seeded and cfg.seeded > fewest[1]:
        raise UserError(f"--seeded {cfg.seeded}: {fewest[0]} has only {fewest[1]} {cfg.split} questions here")
    cfg = replace(cfg, k=n_skills if cfg.seeded else cfg.k or len({e.submodule for e in examples}))
    points = len({meta_question(e.question) for e in examples})
    if cfg.k > points:      # more clusters than distinct points: kmeans.check_k refuses them, said here by flag
        raise UserError(f"--k {cfg.k}: the {len(examples)} {cfg.split} questions have {points} distinct "
                        f"meta-questions (the points clustered); expected --k {points} or fewer")
    if cfg.groups and cfg.groups > cfg.k:
        raise UserError(f"--groups {cfg.groups}: more groups than the {cfg.k} clusters")
    return examples, cfg


def cluster_questions(cfg, examples, model, tok, out, model_name):
    """Cluster the meta-questions (and, to compare, the raw questions) of the
    examples with the base model's embeddings; write the set of files to `out`."""
    layer = resolve_layer(model.config, cfg.layer)
    skills = np.array([e.skill for e in examples])
    submodules = np.array([e.submodule for e in examples])
    metas = [meta_question(e.question) for e in examples]
    rows, seeded = {}, {}
    X, best, rows["meta-questions"], seeded["meta-questions"] = cluster_texts(
        metas, model, tok, cfg, layer, skills, submodules)
    if not cfg.no_raw:   # the same without abstraction, to compare with
        _, _, rows["raw questions"], seeded["raw questions"] = cluster_texts(
            [e.question for e in examples], model, tok, cfg, layer, skills, submodules)

    n_groups = cfg.groups or max(1, round(cfg.k ** 0.5))
    groups = expert_groups(best.centroids, n_groups, cfg.seed, cfg.cosine)
    group_of = {c: g for g, members in enumerate(groups) for c in members}
    clusters = describe(best.labels, cfg.k, skills, submodules, metas, group_of)
    text = report(cfg, model_name, len(examples), layer, rows, seeded, clusters, groups)
    print(text.split("## Clusters")[0])
    records = [dict(question=e.question, meta=m, cluster=int(c), skill=e.skill, submodule=e.submodule)
               for e, m, c in zip(examples, metas, best.labels)]
    files = {"assignments.json": records,
             "cluster_skills.json": {str(c): {k: d[k] for k in ("skill", "share", "size", "submodule")}
                                     for c, d in clusters.items()},
             "groups.json": {"k": cfg.k, "groups": groups, "layer": layer, "cosine": cfg.cosine}}
    title = f"{cfg.k} clusters of {len(examples)} {cfg.split} meta-questions (PCA of layer {layer})"
    write_outputs(out, best.centroids, files, text, lambda path: plot_clusters(X, best.labels, skills, path, title))
    print(f"wrote {', '.join(sorted(set(os.listdir(out)) & OUTPUTS))} to {out}", file=sys.stderr)


def main(argv=None):
    args = cli.cluster_args(argv)
    check_replaceable(args.out)
    examples, cfg = questions_to_cluster(cli.pick(args, ClusterConfig))
    with lock(args.out):                 # one writer per --out
        model, tok = M.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
        cluster_questions(cfg, examples, model, tok, args.out, args.model)


if __name__ == "__main__":
    cli.run(main)
