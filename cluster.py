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
  4. the CLI         centroids, assignments, majority skills, groups, report
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
import json
import os
import re
import shutil
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

import model as M
from kmeans import (check_k, expert_groups, kmeans, labelled_sample, nmi, purity, seeded_accuracy,
                    seeded_clusters, sq_dists, unit)
from data.cli import Parser, torch_device, nonempty, nonneg_int, positive_int, random_seed, run, writable_dir
from data.files import pyplot, write_atomic
from data.lila import DEFAULT_DATA, load as load_examples
from data.prompts import seeded_random, select

DEFAULT_CACHE = "runs/embed-cache"

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
        raise ValueError(f"{len(long)} texts are longer than the model's {model.config.max_position_embeddings}"
                         f"-token context, e.g. {long[0][:60]!r}...")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.hidden_size), np.float32)
    device = model.lm_head.weight.device
    for b in tqdm(range(0, len(order), batch_size), desc=f"embedding (layer {layer})", unit="batch"):
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
        raise ValueError(f"layer {layer} out of range: the model has layers 0..{n_layers}")
    return layer


def embed_cached(texts, model, tok, layer, cache_dir=DEFAULT_CACHE, batch_size=32):
    """embed() for each distinct text once, cached in cache_dir/<hash>.npy. The
    model is the run's one base model (no adapters attached); the hash covers the
    directory it was loaded from (path, and size and time of each file, so
    retraining in place invalidates it), its dtype, the layer and the texts."""
    layer = resolve_layer(model.config, layer)
    if not texts:
        raise ValueError("no texts to embed")
    distinct, inverse = np.unique(np.array(texts), return_inverse=True)
    ckpt = model.name_or_path
    key = hashlib.sha256(f"{os.path.realpath(ckpt)}|{layer}|{model.lm_head.weight.dtype}".encode())
    for name in sorted(os.listdir(ckpt)):
        st = os.stat(os.path.join(ckpt, name))
        key.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for t in distinct:
        key.update(t.encode() + b"\0")
    path = os.path.join(cache_dir, key.hexdigest()[:20] + ".npy")
    if os.path.exists(path):
        print(f"embeddings from cache {path}")
        return np.load(path)[inverse]
    X = embed(list(distinct), model, tok, layer, batch_size)
    os.makedirs(cache_dir, exist_ok=True)
    def save(tmp):
        with open(tmp, "wb") as f:
            np.save(f, X)
    write_atomic(path, save)
    return X[inverse]


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


def saved_centroids(assign_dir, config):
    """(centroids (k, C), embedding layer, cosine) of cluster.py --out assign_dir,
    checked against the base model's config; the layer defaults to its middle
    one for outputs that did not record it."""
    info = read_json(os.path.join(assign_dir, "groups.json"), _is_groups_info,
                      "an object with an integer 'layer' >= 0 and a true/false 'cosine'")
    C = _read_centroids(os.path.join(assign_dir, "centroids.npy"))
    layer = info.get("layer", resolve_layer(config))
    if layer > config.num_hidden_layers:
        raise ValueError(f"{assign_dir}/groups.json: layer {layer}, but the base model has "
                         f"{config.num_hidden_layers} layers")
    if C.shape[1] != config.hidden_size:
        raise ValueError(f"{assign_dir}/centroids.npy: centroids are {C.shape[1]} wide, but the base "
                         f"model embeds {config.hidden_size} wide: these clusters were made with "
                         "another base model")
    return C, layer, info.get("cosine", False)


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
    records = read_json(os.path.join(assign_dir, "assignments.json"), _is_assignments,
                         "a non-empty list of {\"question\": text, \"cluster\": integer >= 0}")
    cluster_of = {r["question"]: r["cluster"] for r in records}
    n_clusters = max(cluster_of.values()) + 1
    new = list(dict.fromkeys(e.question for e in examples if e.question not in cluster_of))
    if new and model is not None:
        C, layer, cosine = saved_centroids(assign_dir, model.config)
        X = embed_cached([meta_question(q) for q in new], model, tok, layer)
        cluster_of.update(zip(new, nearest_centroid(X, C, cosine).tolist()))
    return np.array([cluster_of.get(e.question, -1) for e in examples], dtype=int), n_clusters


def examples_of_cluster(assign_dir, k, examples, model=None, tok=None):
    """The examples (data.lila.Example) of cluster k of cluster.py --out assign_dir,
    in order: for train.py --expert cluster:K. Unclustered questions are placed as
    in clusters_of; none at all is an error."""
    ids, n_clusters = clusters_of(assign_dir, examples, model, tok)
    path = os.path.join(assign_dir, "assignments.json")
    if not 0 <= k < n_clusters:
        raise ValueError(f"cluster {k} does not exist: {path} has clusters 0..{n_clusters - 1}")
    if (ids < 0).all():
        raise ValueError(f"none of the {len(examples)} questions is in {path} "
                         "(clustered from other data or another split?)")
    chosen = [e for e, c in zip(examples, ids) if c == k]
    if not chosen:
        splits = "/".join(sorted({e.split for e in examples}))
        raise ValueError(f"cluster {k} of {path} holds none of the {len(examples)} {splits} questions; "
                         "a cluster expert needs questions of its own in the train and the dev split")
    return chosen


SHOT_POOL = 20000           # train questions that nearest_shots searches (drawn by seed)
SHOT_TEXTS = ("meta-question", "question")


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
                  layer=None, cache_dir=DEFAULT_CACHE):
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


def report(args, n, layer, rows, seeded, clusters, groups):
    """The markdown report: agreement with the labels, seeded k-means, clusters, groups."""
    metrics = list(rows["meta-questions"]["agreement"])
    lines = [f"# Clusters of {n} {args.split} questions", "",
             f"model `{args.model}` (layer {layer}), data `{args.data}`, k = {args.k}, "
             f"{'cosine' if args.cosine else 'euclidean'} k-means, "
             + (f"seeded with {args.seeded} labelled questions per skill, " if args.seeded else
                f"n_init {args.n_init}, ") + f"seed {args.seed}", ""]
    lines += table(["embedded text", "distinct texts", "inertia", *metrics],
                   [[name, r["distinct"], f"{r['inertia']:.4g}", *map(fmt, r["agreement"].values())]
                    for name, r in rows.items()])
    lines += ["", "## Seeded k-means, one cluster per skill", "",
              "Centroids start at the mean of m labelled questions per skill, drawn at random from this "
              f"split; accuracy on the other questions, mean of {args.label_trials} draws (n/a: some skill "
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


def cluster_texts(texts, model, tok, args, layer, skills, submodules):
    """Embed texts, k-means them, score the clusters: (X, KMeansResult, row, seeded accuracies)."""
    X = embed_cached(texts, model, tok, layer, args.cache_dir, args.batch_size)
    if args.seeded:           # semi-supervised: cluster c starts at skill c's labelled questions
        _, r = seeded_clusters(X, skills, labelled_sample(skills, args.seeded, np.random.default_rng(args.seed)), seed=args.seed,
                               cosine=args.cosine)
    else:
        r = kmeans(X, args.k, n_init=args.n_init, seed=args.seed, cosine=args.cosine)
    row = dict(distinct=len(set(texts)), inertia=r.inertia, agreement=agreement(r.labels, skills, submodules))
    seeded = {m: seeded_accuracy(X, skills, m, args.label_trials, args.seed, cosine=args.cosine)
              for m in LABELS_PER_SKILL}
    return X, r, row, seeded


OUTPUTS = {"assignments.json", "centroids.npy", "cluster_skills.json", "clusters.png", "groups.json",
           "report.md"}
READ_BACK = ("centroids.npy", "cluster_skills.json", "groups.json")   # what routing and --explain read


def has_output(folder):
    """Whether folder holds the cluster.py files that routing and --explain read."""
    return all(os.path.exists(os.path.join(folder, n)) for n in READ_BACK)


def cluster_questions(args):
    if os.path.isdir(args.out) and set(os.listdir(args.out)) - OUTPUTS:
        raise ValueError(f"--out {args.out}: holds files that cluster.py did not write "
                         f"({sorted(set(os.listdir(args.out)) - OUTPUTS)[:3]}); cluster.py replaces "
                         "its --out folder as a whole, so give it a folder of its own")
    examples = load_examples(args.data, split=args.split)
    if args.limit:   # a seeded sample of at most --limit questions per skill
        examples = select(examples, args.limit, args.seed)
    n_skills = len({e.skill for e in examples})
    if args.seeded and args.k not in (None, n_skills):
        raise ValueError(f"--seeded makes one cluster per skill ({n_skills}); --k is {args.k}")
    fewest = min(Counter(e.skill for e in examples).items(), key=lambda kv: kv[1])
    if args.seeded and args.seeded > fewest[1]:
        raise ValueError(f"--seeded {args.seeded}: {fewest[0]} has only {fewest[1]} {args.split} questions here")
    args.k = n_skills if args.seeded else args.k or len({e.submodule for e in examples})
    check_k(args.k, len(examples))
    if args.groups and args.groups > args.k:
        raise ValueError(f"--groups {args.groups}: more groups than the {args.k} clusters")
    model, tok = M.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    layer = resolve_layer(model.config, args.layer)
    skills = np.array([e.skill for e in examples])
    submodules = np.array([e.submodule for e in examples])
    metas = [meta_question(e.question) for e in examples]
    rows, seeded = {}, {}
    X, best, rows["meta-questions"], seeded["meta-questions"] = cluster_texts(
        metas, model, tok, args, layer, skills, submodules)
    if not args.no_raw:   # the same without abstraction, to compare with
        _, _, rows["raw questions"], seeded["raw questions"] = cluster_texts(
            [e.question for e in examples], model, tok, args, layer, skills, submodules)

    n_groups = args.groups or max(1, round(args.k ** 0.5))
    groups = expert_groups(best.centroids, n_groups, args.seed, args.cosine)
    group_of = {c: g for g, members in enumerate(groups) for c in members}
    clusters = describe(best.labels, args.k, skills, submodules, metas, group_of)
    text = report(args, len(examples), layer, rows, seeded, clusters, groups)
    print(text.split("## Clusters")[0])

    # The files are one set (labels, centroids and groups of the same run): written
    # into a fresh folder beside --out, which then takes --out's place.
    tmp = args.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, "centroids.npy"), best.centroids.astype(np.float32))
    records = [dict(question=e.question, meta=m, cluster=int(c), skill=e.skill, submodule=e.submodule)
               for e, m, c in zip(examples, metas, best.labels)]
    files = {"assignments.json": records,
             "cluster_skills.json": {str(c): {k: d[k] for k in ("skill", "share", "size", "submodule")}
                                     for c, d in clusters.items()},
             "groups.json": {"k": args.k, "groups": groups, "layer": layer, "cosine": args.cosine}}
    for name, obj in files.items():
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(obj, f, indent=1)
    with open(os.path.join(tmp, "report.md"), "w") as f:
        f.write(text)
    title = f"{args.k} clusters of {len(examples)} {args.split} meta-questions (PCA of layer {layer})"
    plot_clusters(X, best.labels, skills, os.path.join(tmp, "clusters.png"), title)
    replace_dir(tmp, args.out)
    print(f"wrote {', '.join(sorted(os.listdir(args.out)))} to {args.out}")


def replace_dir(new, old):
    """Put folder `new` where `old` is, by renames: a reader finds the old set or the
    new set, never a mix of both."""
    shutil.rmtree(old.rstrip("/") + ".old", ignore_errors=True)
    if os.path.isdir(old):
        os.replace(old, old.rstrip("/") + ".old")
    os.replace(new, old)
    shutil.rmtree(old.rstrip("/") + ".old", ignore_errors=True)


def parser():
    p = Parser(description="Cluster the meta-questions of LiLA questions with "
                                            "NumPy k-means over base-model embeddings.")
    p.add_argument("--k", type=positive_int, default=None, help="clusters (default: number of submodules in the data)")
    p.add_argument("--out", type=writable_dir, default="runs/cluster", help="output directory (default runs/cluster)")
    p.add_argument("--model", type=nonempty, default=M.DEFAULT_MODEL, help="HF-layout phi checkpoint directory, "
                   f"or a Hugging Face id, e.g. microsoft/phi-2 (default {M.DEFAULT_MODEL})")
    p.add_argument("--revision", default=None, help="--model id: branch, tag or commit "
                   "(default: the repository's main branch)")
    p.add_argument("--data", type=nonempty, default=DEFAULT_DATA, help=f"LiLA task file(s) or directory (default {DEFAULT_DATA})")
    p.add_argument("--split", default="train", choices=["train", "dev", "test"],
                   help="questions to cluster (train for experts; test for the quality report)")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many questions per skill "
                   "(a seeded sample; train.py --expert cluster:K then trains on these)")
    p.add_argument("--layer", type=nonneg_int, default=None, help="hidden layer to embed (default: the middle one)")
    p.add_argument("--cosine", action="store_true", help="spherical (cosine) k-means")
    p.add_argument("--seeded", type=positive_int, default=None, metavar="N", help="semi-supervised: one "
                   "cluster per skill, started at the mean of N labelled questions of that skill (seeded "
                   "k-means), for cluster experts from a few labels (default: unsupervised)")
    p.add_argument("--groups", type=positive_int, default=None, help="expert groups (default: about sqrt(k))")
    p.add_argument("--n-init", type=positive_int, default=10, help="k-means++ restarts; the best is kept")
    p.add_argument("--seed", type=random_seed, default=0, help="random seed (k-means++ and labelled draws)")
    p.add_argument("--label-trials", type=positive_int, default=5,
                   help="draws of labelled questions for seeded k-means")
    p.add_argument("--no-raw", action="store_true",
                   help="skip the comparison with raw (not abstracted) questions")
    p.add_argument("--batch-size", type=positive_int, default=32, help="questions embedded together")
    p.add_argument("--cache-dir", type=writable_dir, default=DEFAULT_CACHE, help="where embeddings are cached (.npy)")
    p.add_argument("--dtype", default="float32", choices=sorted(M.DTYPES), help="model dtype")
    p.add_argument("--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default cuda when available)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    run(lambda: cluster_questions(args))


# ---------------------------------------------------------------------------
# Checks: reading cluster.py's output back
# ---------------------------------------------------------------------------


def read_json(path, ok, want):
    """The JSON file at path, if ok(it); else one line naming the file and what was expected."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run python cluster.py --out {os.path.dirname(path)} first")
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not ok(obj):
        raise ValueError(f"{path}: expected {want}, as cluster.py writes it")
    return obj


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_groups_info(g):
    return isinstance(g, dict) and (g.get("layer") is None or _is_count(g["layer"])) \
        and isinstance(g.get("cosine", False), bool)


def _is_assignments(records):
    return isinstance(records, list) and len(records) > 0 and all(
        isinstance(r, dict) and isinstance(r.get("question"), str) and _is_count(r.get("cluster"))
        for r in records)


def _read_centroids(path):
    """centroids.npy: a (k, C) array of finite floats."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run python cluster.py --out {os.path.dirname(path)} first")
    try:
        C = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a .npy array ({e})") from None
    if C.ndim != 2 or C.shape[0] == 0 or C.dtype.kind != "f" or not np.isfinite(C).all():
        raise ValueError(f"{path}: expected a (clusters, hidden size) array of finite floats, got "
                         f"{C.dtype} {C.shape}" + ("" if C.dtype.kind != "f" or np.isfinite(C).all() else
                                                   " with NaN or inf"))
    return C


if __name__ == "__main__":
    main()
