"""
Questions grouped by skill without labels, and each question's nearest shots.
A question is reduced to its meta-question (its skeleton), embedded with the
base model's own hidden states, and the embeddings are clustered: the clusters
stand in for hand-made skill labels (an expert per cluster, centroids for the
router), and the same embeddings find, for each question, the train questions
most like it to show as shots.

    python cluster.py                                   # k = number of submodules: out/clusters
    python cluster.py --k 2-16 --sample 2000 --cosine   # k chosen by silhouette, 2000 questions drawn at random
    python -m study.clusters --split test --out out/clusters-test   # the same, with the report against the labels

Chapters:
  1. meta-question   numbers -> N, names -> canonical names, literal lists collapse;
                     each rule of RULES with its worked example
  2. embedding       the mean of one layer's hidden states over real tokens, cached on disk
  3. clustering      k-means for one k, for a range of k kept by silhouette, or seeded by
                     a few labels; each cluster's majority skill; the cluster of any
                     question (clusters_of, examples_of_cluster), a router's
                     inputs (router_inputs)
  4. nearest shots   the train questions nearest to a question by meta-question, one
                     matrix product (nearest_rows, nearest_shots)
  then the CLI (the questions, --limit per skill or --sample over the split; one
  writer per --out) and the checks of its flags.
The k-means itself is kmeans.py's; the report against the labels (purity, NMI,
seeded k-means, raw questions) and the PCA picture are study/clusters.py's.

Users: train.py --expert cluster:K (examples_of_cluster), a router's labels and
centroids (router_inputs), eval.py's nearest shots
(nearest_shots), explain.py (meta_question, nearest_centroid).

References: Intuition-MoR1E / T-REX (arXiv 2404.08985) for clustering instance
embeddings to guide a mixture of LoRA experts; Rousseeuw (J. Comput. Appl. Math.
1987) for the silhouette, which chooses k; Liu et al., "What Makes Good
In-Context Examples for GPT-3?" (DeeLIO 2022) for shots chosen as the nearest
neighbours of the question in an embedding space.

Left out: a real parser: the abstraction is a chain of regular expressions tuned
to DeepMind-style questions (a base-16 numeral written with letters only, like
"bc", stays a name; "a" is told from the article by the word after it); criteria
for k other than the silhouette (the gap statistic, BIC); an approximate
nearest-neighbour index (the shot pool is a few thousand questions).
"""
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import model as M
from kmeans import (KMeansResult, choose_k, expert_groups, kmeans, labelled_sample, seeded_clusters, sq_dists,
                    unit)
import cli
from formats.adapters import expert_dirs
from formats.clusters import OUTPUTS, check_replaceable, read_assignments, read_centroids, write_outputs
from formats.embeddings import cache_path, read_cache, write_cache
from formats.files import UserError, lock
from data.lila import load as load_examples
from data.prompts import SHOT_POOL, seeded_random, select

# ---------------------------------------------------------------------------
# 1. Meta-question
# ---------------------------------------------------------------------------


class Rule(NamedTuple):
    """re.sub(pattern, replacement, question), and a worked example: `before`, as
    the rules above this one leave a question, becomes `after` (tests/test_cluster.py
    checks every example)."""
    pattern: str
    replacement: str
    before: str
    after: str


NUM = r"N(?:/N)?"   # a number or a fraction, once numbers are N
RULES = [           # applied in order
    # numbers -> N: integers, decimals, base-b numerals (4a, -c9), units glued on (9232.153l) ...
    Rule(r"\b[0-9a-z]*\d[0-9a-z]*(?:\.\d+[a-z]*)?\b", "N",
         "In base 13, what is 4a + -9232.153l?", "In base N, what is N + -N?"),
    # ... and number words
    Rule(r"(?i)\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b", "N",
         "Convert three fifths of a meter to centimeters.", "Convert N fifths of a meter to centimeters."),
    # a unary minus is part of its number ...
    Rule(r"(?<![\w)])-(?=[\w(.])", "",
         "Solve -N*v - N = -N for v.", "Solve N*v - N = N for v."),
    # ... so a binary minus is a plus
    Rule(r" - ", " + ",
         "Solve N*v - N = N for v.", "Solve N*v + N = N for v."),
    # coefficients drop (1 is never written)
    Rule(r"(?<![\w)*/^.])N\*(?=[a-z](?!\w))", "",
         "Solve N*v + N = N*y for v.", "Solve v + N = y for v."),
    # repeated terms merge
    Rule(r"( \+ ([\w*/^]+))(?: \+ \2)+(?![\w*/^(:])", r"\1",
         "Solve v + N + N = N for v.", "Solve v + N = N for v."),
    # lettered options -> [list]
    Rule(r"\s*(?:\([a-z]\) " + NUM + r"\s*){2,}", " [list]",
         "Which is the closest to N?  (a) N  (b) N/N  (c) N", "Which is the closest to N? [list]"),
    # three or more numbers in a row -> [list]
    Rule(r"(?<![\w*/^.)])(?<![=+*/] )" + NUM + r"(?:, " + NUM + r"){2,}(?![\w*/^(:]| [=+*/])", "[list]",
         "What comes next: N, N, N, N?", "What comes next: [list]?"),
    # a bag of letters ...
    Rule(r"\{[a-z]: N(?:, [a-z]: N)*\}", "{letters}",
         "N letters picked without replacement from {x: N, e: N}.",
         "N letters picked without replacement from {letters}."),
    # ... or a string of letters
    Rule(r"(?<=replacement from )[a-z]+\b|(?<=sequence )[a-z]+\b", "{letters}",
         "N letters picked without replacement from sssm. Give prob of sequence ss.",
         "N letters picked without replacement from {letters}. Give prob of sequence {letters}."),
]
VARIABLES, FUNCTIONS = "xyzwvutsrqpo", "fghjklmn"   # canonical names, in order of appearance
NOT_ARTICLE = {"be", "is", "and", "or", "for", "when", "in", "wrt"}   # "Let a be", "picking N a and"


def _canonical_names(q):
    """Rename single-letter names in order of appearance: functions (a letter
    before "(") to f, g, h, ..., variables to x, y, z, ...; "a" before a word
    (other than NOT_ARTICLE) is the article and stays. Worked example:

        Let b(h) = h. Is a a factor of b(c)?  ->  Let f(x) = x. Is y a factor of f(z)?"""
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
    """The skeleton of a question: RULES in order, then canonical names. Real
    generator output (data/generate.py), one per skill (tests/test_cluster.py
    checks every pair):

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
                -> N letters picked without replacement from {letters}. Give prob of sequence {letters}."""
    for rule in RULES:
        question = re.sub(rule.pattern, rule.replacement, question)
    return _canonical_names(question)


# ---------------------------------------------------------------------------
# 2. Embedding
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
    """embed() for each distinct text once, cached in cache_dir (formats/embeddings.py).
    The model is the run's one base model (no adapters attached): the cache's key
    is the folder it was loaded from, its dtype, the layer and the texts."""
    layer = resolve_layer(model.config, layer)
    if not texts:
        raise UserError("no texts to embed")
    distinct, inverse = np.unique(np.array(texts), return_inverse=True)
    path = cache_path(cache_dir, model.name_or_path, model.lm_head.weight.dtype, layer, distinct)
    X = read_cache(path, (len(distinct), model.config.hidden_size))
    if X is None:
        X = embed(list(distinct), model, tok, layer, batch_size)
        write_cache(path, X)
    return X[inverse]


def meta_embeddings(examples, model, tok, layer):
    """The embeddings (N, C) of the examples' meta-questions at `layer` of the base
    model, which must not have experts attached yet."""
    return embed_cached([meta_question(e.question) for e in examples], model, tok, layer)


# ---------------------------------------------------------------------------
# 3. Clustering
# ---------------------------------------------------------------------------

def fit_clusters(X, cfg, skills):
    """The clusters of X (N, C) that cfg (a ClusterConfig, below) asks for: k-means
    for its one k, choose_k for a range, or seeded k-means (--seeded), the one
    use of the skills. Returns (KMeansResult, the k sweep or None)."""
    if cfg.seeded:           # semi-supervised: cluster c starts at skill c's labelled questions
        labelled = labelled_sample(skills, cfg.seeded, np.random.default_rng(cfg.seed))
        return seeded_clusters(X, skills, labelled, seed=cfg.seed, cosine=cfg.cosine)[1], None
    if len(cfg.k) > 1:
        return choose_k(X, cfg.k, cfg.n_init, cfg.seed, cfg.cosine)
    return kmeans(X, cfg.k[0], n_init=cfg.n_init, seed=cfg.seed, cosine=cfg.cosine), None


def majority(values):
    """(most common value, its share); ("-", 0.0) when there are none."""
    if len(values) == 0:
        return "-", 0.0
    value, count = Counter(values).most_common(1)[0]
    return value, count / len(values)


def cluster_skills(labels, k, examples):
    """{"c": {"skill", "share", "size", "submodule"}} for each of the k clusters:
    the majority skill of its questions, its share, the cluster's size and its
    majority submodule (cluster_skills.json, which explain.py shows). The labels
    name the clusters; they never make them."""
    skills, submodules = np.array([e.skill for e in examples]), np.array([e.submodule for e in examples])
    out = {}
    for c in range(k):
        members = np.flatnonzero(labels == c)   # empty only if the final assignment emptied it
        (skill, share), (submodule, _) = majority(skills[members]), majority(submodules[members])
        out[str(c)] = dict(skill=str(skill), share=share, size=len(members), submodule=str(submodule))
    return out


def nearest_centroid(X, C, cosine=False):
    """(N,) index of the nearest centroid (k, C) for each embedding in X (N, C)."""
    if cosine:
        X, C = unit(X), unit(C)
    return sq_dists(X, C).argmin(1)


def clusters_of(assign_dir, examples, model=None, tok=None):
    """(cluster of each example (N,), number of clusters) for cluster.py --out
    assign_dir. A question that was clustered keeps its cluster; one that was
    not (another split, or left out by --limit or --sample) goes to its nearest
    centroid when the base model that embedded the clusters is given, and gets
    -1 otherwise.
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


def router_inputs(train_ex, dev_ex, experts, clusters_dir, model, tok):
    """What train.py --router's task level is fitted to, from the base alone (no
    experts attached yet): the meta-question embeddings X (N, C) of the train then
    the dev questions, at the middle layer, the expert of each train question
    (expert_labels, over the folders of `experts`), and that layer."""
    layer = resolve_layer(model.config)
    X = meta_embeddings(train_ex + dev_ex, model, tok, layer)                  # (N, C)
    return X, expert_labels(train_ex, list(expert_dirs(experts)), clusters_dir, model, tok), layer


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



# ---------------------------------------------------------------------------
# 4. Nearest shots
# ---------------------------------------------------------------------------
# The shots of a k-shot prompt, chosen without labels: the train questions whose
# meta-questions are nearest to the question's. On phi-tiny they lift the 4-shot
# base by 4-8 points over random shots of the question's own skill, level with
# the oracle of its own submodule (DESIGN.md, "Evaluation conventions"): the
# project's largest measured effect.


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




# ---------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------


@dataclass
class ClusterConfig:
    """One clustering run (cluster.py's flags; cli.py declares them with their defaults)."""
    data: str                  # LiLA task files or folder
    split: str                 # the questions clustered
    limit: int | None          # at most this many per skill (a seeded sample, by label)
    sample: int | None         # this many drawn uniformly from the whole split (seeded, no label read)
    k: range | None            # the k's tried, kept by silhouette when several (None: one per
                               # submodule; --seeded: one per skill)
    cosine: bool               # spherical k-means
    seeded: int | None         # labelled questions per skill that start each cluster
    groups: int | None         # expert groups (None: about sqrt(k))
    n_init: int                # k-means++ restarts
    seed: int
    label_trials: int          # draws of labelled questions (python -m study.clusters's report)
    no_raw: bool               # skip the raw-question comparison (python -m study.clusters's report)
    layer: int | None          # the hidden layer embedded (None: the middle one)
    batch_size: int
    cache_dir: str


@dataclass
class Clustering:
    """One run's result: what cluster.py writes, and python -m study.clusters reports on."""
    cfg: ClusterConfig         # its k settled
    examples: list             # the questions clustered (data.lila.Example)
    metas: list                # their meta-questions
    layer: int                 # the hidden layer embedded
    X: np.ndarray              # (N, C) the meta-questions' embeddings
    result: KMeansResult       # the clusters kept
    sweep: dict | None         # choose_k's sweep (sweep.json), or None for one k
    groups: list               # expert groups: one list of clusters per group
    model_name: str

    @property
    def k(self):
        """The number of clusters kept."""
        return len(self.result.centroids)


def k_text(ks):
    """--k as written: "8", or "2-16" for a range."""
    return f"{ks[0]}" if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"


def sample_questions(examples, n, seed):
    """n questions drawn uniformly from all of examples, without replacement, in
    their order: each is drawn with probability n / len(examples), whatever its
    skill (unlike --limit, which takes as many of each skill). Fixed by seed."""
    return [examples[i] for i in sorted(seeded_random(seed, "cluster sample").sample(range(len(examples)), n))]


def questions_to_cluster(cfg):
    """The questions of cfg's split (all, --limit per skill or a --sample of the
    split), and cfg with its k settled (one per skill when seeded, else --k or one
    per submodule)."""
    examples = load_examples(cfg.data, split=cfg.split)
    if cfg.sample:
        _check_sample(cfg, len(examples))
        examples = sample_questions(examples, cfg.sample, cfg.seed)
    elif cfg.limit:
        examples = select(examples, cfg.limit, cfg.seed)
    n_skills, n_submodules = len({e.skill for e in examples}), len({e.submodule for e in examples})
    _check_seeded(cfg, examples, n_skills)
    k = n_skills if cfg.seeded else n_submodules
    cfg = replace(cfg, k=cfg.k or range(k, k + 1))
    _check_k(cfg, examples)
    return examples, cfg


def cluster_questions(cfg, examples, model, tok, model_name):
    """Embed the examples' meta-questions with the base model, cluster them, and
    group the clusters (a k-means of the centroids): a Clustering. A k sweep is
    said on stderr."""
    layer = resolve_layer(model.config, cfg.layer)
    metas = [meta_question(e.question) for e in examples]
    X = embed_cached(metas, model, tok, layer, cfg.cache_dir, cfg.batch_size)
    result, sweep = fit_clusters(X, cfg, np.array([e.skill for e in examples]))
    if sweep:
        print(f"k by silhouette ({'cosine' if cfg.cosine else 'euclidean'}, on {sweep['silhouette_points']} of "
              f"{sweep['points']} points):\n   k  silhouette  inertia", file=sys.stderr)
        for r in sweep["runs"]:
            kept = "  <- kept" if r["k"] == sweep["k"] else ""
            print(f"{r['k']:4d}  {r['silhouette']:10.4f}  {r['inertia']:.4g}{kept}", file=sys.stderr)
    k = len(result.centroids)
    groups = expert_groups(result.centroids, cfg.groups or max(1, round(k ** 0.5)), cfg.seed, cfg.cosine)
    return Clustering(cfg, examples, metas, layer, X, result, sweep, groups, model_name)


def output_files(run):
    """{name: JSON value} of a run: assignments.json (every question's cluster),
    cluster_skills.json, groups.json and, for a k sweep, sweep.json."""
    records = [dict(question=e.question, meta=m, cluster=int(c), skill=e.skill, submodule=e.submodule)
               for e, m, c in zip(run.examples, run.metas, run.result.labels)]
    files = {"assignments.json": records,
             "cluster_skills.json": cluster_skills(run.result.labels, run.k, run.examples),
             "groups.json": {"k": run.k, "groups": run.groups, "layer": run.layer, "cosine": run.cfg.cosine}}
    if run.sweep:
        files["sweep.json"] = run.sweep
    return files


def main(argv=None, report=None):
    """python cluster.py: the clusters into --out, replaced as a whole. `report`
    is python -m study.clusters's: report(run, model, tok) -> (markdown, draw(path)),
    written beside them as report.md and clusters.png. cluster.py passes none:
    the report against the labels is the study's, and imports run one way, so
    study/ hands its report in here rather than this file importing study/."""
    args = cli.cluster_args(argv)
    check_replaceable(args.out)
    examples, cfg = questions_to_cluster(cli.pick(args, ClusterConfig))
    with lock(args.out):                 # one writer per --out
        model, tok = M.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
        run = cluster_questions(cfg, examples, model, tok, args.model)
        text, draw = report(run, model, tok) if report else (None, None)
        write_outputs(args.out, run.result.centroids, output_files(run), text, draw)
    print(f"wrote {', '.join(sorted(set(os.listdir(args.out)) & OUTPUTS))} to {args.out}", file=sys.stderr)


# ---------------------------------------------------------------------------
# Checks of the flags against the questions
# ---------------------------------------------------------------------------


def _check_sample(cfg, n):
    """--sample draws from the split: no more questions than it holds."""
    if cfg.sample > n:
        raise UserError(f"--sample {cfg.sample}: the {cfg.split} split has {n} questions here; expected "
                        f"--sample {n} or fewer")


def _check_seeded(cfg, examples, n_skills):
    """--seeded makes one cluster per skill, from --seeded questions of each."""
    if not cfg.seeded:
        return
    if cfg.k is not None and list(cfg.k) != [n_skills]:
        raise UserError(f"--seeded makes one cluster per skill ({n_skills}); --k is {k_text(cfg.k)}")
    fewest = min(Counter(e.skill for e in examples).items(), key=lambda kv: kv[1])
    if cfg.seeded > fewest[1]:
        raise UserError(f"--seeded {cfg.seeded}: {fewest[0]} has only {fewest[1]} {cfg.split} questions here")


def _check_k(cfg, examples):
    """No more clusters than distinct points (kmeans.check_k refuses them; said
    here by flag), and no more groups than clusters."""
    points = len({meta_question(e.question) for e in examples})
    if cfg.k[-1] > points:
        raise UserError(f"--k {k_text(cfg.k)}: the {len(examples)} {cfg.split} questions have {points} distinct "
                        f"meta-questions (the points clustered); expected --k {points} or fewer")
    if cfg.groups and cfg.groups > cfg.k[0]:
        raise UserError(f"--groups {cfg.groups}: more groups than the {cfg.k[0]} clusters")


if __name__ == "__main__":
    cli.run(main)
