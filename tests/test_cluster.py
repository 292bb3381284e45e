"""cluster.py: meta-questions, k-means (by hand and against scikit-learn), metrics,
embeddings and their cache, k chosen by silhouette, --sample, the CLI end to end
on a tiny random checkpoint, with and without study/clusters.py's report."""
import dataclasses
import json
import os
import re
import sys

import numpy as np
import pytest

import cluster as C
from cli import run
import kmeans
import model as M
import study.clusters as S
from conftest import TINY, write_hf_checkpoint
from data.lila import load as load_examples
from formats.clusters import read_centroids

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "ours")


# --- meta-questions ----------------------------------------------------------

def test_meta_question_shared_by_two_linear_equations():
    a = C.meta_question("Solve -44*v - 6 - 390 = 0 for v.")
    b = C.meta_question("Solve 3*y - 1 = -13 for y.")
    assert a == b == "Solve x + N = N for x."


@pytest.mark.parametrize("rule", C.RULES, ids=[f"{i}:{r.replacement}" for i, r in enumerate(C.RULES)])
def test_every_rule_does_its_worked_example(rule):
    """Each rule of RULES alone turns its `before` into its `after`; and `before`
    is what the rules above it leave (they change it no further)."""
    assert re.sub(rule.pattern, rule.replacement, rule.before) == rule.after != rule.before
    earlier = C.RULES[:C.RULES.index(rule)]
    assert all(re.sub(r.pattern, r.replacement, rule.before) == rule.before for r in earlier)


def test_docstring_examples_cover_every_skill():
    pairs = re.findall(r"^ +(\w+) +(.+)\n +-> (.+)$", C.meta_question.__doc__, flags=re.M)
    assert {skill for skill, _, _ in pairs} == {"algebra", "arithmetic", "calculus", "comparison",
                                                "measurement", "numbers", "polynomials", "probability"}
    for _, question, meta in pairs:
        assert C.meta_question(question) == meta


@pytest.mark.parametrize("question, meta", [
    ("What comes next: 201, 198, 195, 192, 189?", "What comes next: [list]?"),
    ("Sort -0.03, -5/6, 3/4, -3/8, -1.", "Sort [list]."),
    ("Which is the closest to 0.1?  (a) 3  (b) 0.2  (c) 18  (d) 4", "Which is the closest to N? [list]"),
    ("Is 3607 a prime number?", "Is N a prime number?"),                       # the article stays
    ("Let a be 3. Is a a multiple of 2?", "Let x be N. Is x a multiple of N?"),   # the variable does not
    ("Let b(h) = h**2. Let i(j) = -3*j. Calculate i(b(o)).",
     "Let f(x) = x**N. Let g(y) = y. Calculate g(f(z))."),                   # functions vs variables
    ("Four letters picked without replacement from sssssssssssmsss. What is prob of sequence sssm?",
     "N letters picked without replacement from {letters}. What is prob of sequence {letters}?"),
    ("In base 13, what is 4a + 11?", "In base N, what is N + N?"),
    ("Convert 9232.153l to millilitres.", "Convert N to millilitres."),
    ("Solve -2*z + 8 = 2*z + 3*o, 5*z = 4*o - 21 for z.", "Solve x + N = x + y, x = y + N for x."),
])
def test_meta_question_rules(question, meta):
    assert C.meta_question(question) == meta


# --- k-means -----------------------------------------------------------------

def blobs(n=300, k=5, d=4, std=1.0, seed=0):
    from sklearn.datasets import make_blobs
    return make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=std, random_state=seed)


def test_kmeans_worked_example():
    # 1-D points 0 1 2 10 11 from centroids 0 and 1:
    # it 1: {0} {1,2,10,11} -> means 0, 6  (inertia 0 + 25+16+16+25 = 82)
    # it 2: {0,1,2} {10,11} -> means 1, 10.5  (inertia 2 + 0.5 = 2.5); it 3: no change
    X = np.array([[0.], [1.], [2.], [10.], [11.]])
    r = kmeans.kmeans(X, 2, init=[[0.], [1.]])
    assert r.history == [82.0, 2.5, 2.5] and r.n_iter == 3
    np.testing.assert_allclose(r.centroids, [[1.], [10.5]])
    assert r.labels.tolist() == [0, 0, 0, 1, 1] and r.inertia == 2.5


def test_kmeans_square_by_hand():
    X = np.array([[0., 0.], [0., 1.], [10., 0.], [10., 1.]])
    r = kmeans.kmeans(X, 2, n_init=3)
    assert r.inertia == pytest.approx(1.0)
    assert sorted(map(tuple, r.centroids)) == [(0., 0.5), (10., 0.5)]


def test_inertia_never_rises_and_empty_cluster_is_repaired():
    X = np.array([[0.], [1.], [2.], [3.]])
    r = kmeans.kmeans(X, 3, init=[[0.], [1.], [100.]])   # nothing is near 100 at first
    assert np.bincount(r.labels, minlength=3).min() >= 1
    assert 100 not in r.centroids
    X = blobs(std=3.0)[0]
    for seed in range(3):
        h = kmeans.kmeans(X, 7, n_init=1, seed=seed).history
        assert all(b <= a + 1e-9 for a, b in zip(h, h[1:]))


@pytest.mark.parametrize("std, k", [(1.0, 5), (2.5, 8)])
def test_inertia_within_one_percent_of_sklearn(std, k):
    from sklearn.cluster import KMeans
    X = blobs(k=k, std=std)[0]   # the 8 blobs overlap
    ours = kmeans.kmeans(X, k, n_init=10, seed=0).inertia
    ref = KMeans(n_clusters=k, n_init=10, random_state=0).fit(X).inertia_
    assert ours <= 1.01 * ref


def test_labels_match_sklearn_on_separated_blobs():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    X, y = blobs(std=0.5)
    ours = kmeans.kmeans(X, 5, seed=1).labels
    assert adjusted_rand_score(ours, KMeans(5, n_init=10, random_state=0).fit(X).labels_) == 1.0
    assert adjusted_rand_score(ours, y) == 1.0


def test_kmeans_is_deterministic():
    X = blobs(std=3.0)[0]
    a, b = kmeans.kmeans(X, 6, seed=3), kmeans.kmeans(X, 6, seed=3)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids)


def test_cosine_kmeans_groups_by_direction():
    X = np.array([[1., 0.], [5., 0.1], [0.2, 9.], [0., 1.]])   # lengths differ, directions pair up
    r = kmeans.kmeans(X, 2, cosine=True)
    assert r.labels[0] == r.labels[1] != r.labels[2] == r.labels[3]
    np.testing.assert_allclose(np.linalg.norm(r.centroids, axis=1), 1.0)


def test_seeded_kmeans():
    X, y = blobs(std=0.5)
    labelled = np.array([np.flatnonzero(y == c)[0] for c in range(5)])
    assert np.array_equal(kmeans.seeded_kmeans(X, y, labelled), y)
    assert kmeans.seeded_accuracy(X, y, 1, trials=2) == 1.0
    assert kmeans.seeded_accuracy(X, y, 100) is None   # a class has only 60 points
    labelled = kmeans.labelled_sample(y, 3, np.random.default_rng(0))
    assert sorted(np.bincount(y[labelled])) == [3] * 5
    classes, r = kmeans.seeded_clusters(X, y, labelled)
    assert np.array_equal(classes[r.labels], y) and r.centroids.shape == (5, X.shape[1])


def test_cli_seeded_one_cluster_per_skill(tiny_ckpt, tmp_path):
    """cluster.py --seeded N: k is the number of skills, and cluster c starts at the
    mean of skill c's N labelled questions (skills in sorted order)."""
    out = tmp_path / "out"
    S.main(["--seeded", "2", "--out", str(out), "--model", tiny_ckpt[0], "--data", FIXTURES,
            "--split", "train", "--cache-dir", str(tmp_path / "cache"), "--no-raw"])
    skills = sorted({e.skill for e in load_examples(FIXTURES, split="train")})
    assert json.load(open(out / "groups.json"))["k"] == len(skills)
    assert {r["cluster"] for r in json.load(open(out / "assignments.json"))} <= set(range(len(skills)))
    assert "seeded with 2 labelled questions per skill" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):
        run(lambda: C.main(["--seeded", "2", "--k", "5", "--out", str(tmp_path / "o2"), "--model", tiny_ckpt[0],
                            "--data", FIXTURES]))


@pytest.mark.parametrize("X, k, msg", [
    (np.zeros((0, 3)), 1, "empty"),
    (np.zeros((4, 3)), 2, "k=2 clusters for 1 distinct points"),
    (np.zeros((4, 3)), 0, "k=0"),
    (np.zeros(4), 1, "shape"),
    (np.array([[0.], [np.nan]]), 1, "NaN"),
])
def test_kmeans_bad_input(X, k, msg):
    with pytest.raises(ValueError, match=msg):
        kmeans.kmeans(X, k)
    with pytest.raises(ValueError, match="init has shape"):
        kmeans.kmeans(np.eye(4, 3), 2, init=np.zeros((2, 2)))


def test_kmeans_refuses_more_clusters_than_distinct_points():
    """Four points, two distinct ones: also in cosine k-means, where a point's length
    is dropped, and -0.0 is the 0.0 it equals."""
    with pytest.raises(ValueError, match="k=3 clusters for 2 distinct points"):
        kmeans.kmeans(np.array([[0.], [0.], [1.], [1.]]), 3)
    with pytest.raises(ValueError, match="k=3 clusters for 2 distinct points"):
        kmeans.kmeans(np.array([[1., 0.], [2., 0.], [0., 1.], [0., 3.]]), 3, cosine=True)
    with pytest.raises(ValueError, match="k=3 clusters for 2 distinct points"):
        kmeans.kmeans(np.array([[-0.], [0.], [1.]]), 3)
    assert kmeans.kmeans(np.array([[1., 0.], [2., 0.], [0., 1.], [0., 3.]]), 2, cosine=True).inertia < 1e-12


# --- metrics -----------------------------------------------------------------

def test_purity_worked_example():
    # cluster 0 = {a, a}: 2; cluster 1 = {a, b, b}: 2; cluster 2 = {c}: 1 -> 5/6
    assert kmeans.purity(list("aaabbc"), [0, 0, 1, 1, 1, 2]) == pytest.approx(5 / 6)


def test_nmi_matches_sklearn():
    from sklearn.metrics import normalized_mutual_info_score as ref
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 4, 50), rng.integers(0, 6, 50)),
             (rng.choice(list("abc"), 30), rng.integers(0, 2, 30)),
             ([0, 0, 1, 1], [1, 1, 0, 0]), ([0, 0, 0, 0], [0, 1, 2, 3]), ([2, 2], [5, 5])]
    for a, b in cases:
        assert abs(kmeans.nmi(a, b) - ref(a, b)) < 1e-10


# --- embeddings, CLI, examples_of_cluster --------------------------------------

def test_embed_batched_equals_one_by_one(tiny_ckpt):
    model, tok = M.load(tiny_ckpt[0], verbose=False)
    texts = ["Solve x + N = N for x.", "What is N + N?", "Is N a prime number?"]
    X = C.embed(texts, model, tok, layer=1, batch_size=3)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(X[i], C.embed([t], model, tok, layer=1)[0], atol=1e-5)


def test_embed_refuses_a_text_longer_than_the_context(tiny_ckpt):
    model, tok = M.load(tiny_ckpt[0], verbose=False)
    with pytest.raises(ValueError, match="1 texts are longer than the model's 64-token context"):
        C.embed(["What is N + N?", "N + " * 100], model, tok, layer=1)


def test_embed_cached(tiny_ckpt, tmp_path, monkeypatch):
    texts = ["What is N + N?", "Is N prime?", "What is N + N?"]
    model, tok = M.load(tiny_ckpt[0], verbose=False)
    X = C.embed_cached(texts, model, tok, 2, cache_dir=str(tmp_path))
    assert X.shape == (3, 64) and np.array_equal(X[0], X[2])
    np.testing.assert_allclose(X[:2], C.embed(texts[:2], model, tok, 2), atol=1e-6)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    half, _ = M.load(tiny_ckpt[0], dtype="bfloat16", verbose=False)      # another dtype: another entry
    C.embed_cached(texts, half, tok, 2, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.npy"))) == 2
    monkeypatch.setattr(C, "embed", lambda *a, **k: pytest.fail("cache miss"))
    assert np.array_equal(C.embed_cached(texts, model, tok, 2, cache_dir=str(tmp_path)), X)
    with pytest.raises(ValueError, match="layer 3 out of range"):
        C.embed_cached(texts, model, tok, 3, cache_dir=str(tmp_path))


def test_nearest_rows_worked_example():
    K = [[1, 0], [1, 1], [0, 1], [-1, 0]]
    assert C.nearest_rows([[1, 0]], K, 2).tolist() == [[1, 0]]                       # nearest last
    assert C.nearest_rows([[1, 0]], K, 2, exclude={(0, 0)}).tolist() == [[2, 1]]
    # q [0, 3]: cosines 0, .71, 1, 0; rows 0 and 3 tie, and the lower index is the nearer
    assert C.nearest_rows([[2, 0], [0, 3]], K, 3).tolist() == [[2, 1, 0], [0, 1, 2]]


def test_nearest_rows_equals_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    Q, K = rng.normal(size=(600, 8)), rng.normal(size=(50, 8))
    exclude = {(i, i % 50) for i in range(0, 600, 7)}
    got = C.nearest_rows(Q, K, 4, exclude)
    cos = (Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ (K / np.linalg.norm(K, axis=1, keepdims=True)).T
    for i in range(600):
        order = [j for j in np.argsort(-cos[i]) if (i, j) not in exclude]
        assert got[i].tolist() == order[:4][::-1]


def test_nearest_shots_read_no_label(tiny_ckpt, tmp_path):
    """The shots are the nearest train questions by meta-question embedding,
    farthest first, never the question itself, and the same whatever the
    labels say; a capped pool is a seeded sample of the train split."""
    model, tok = M.load(tiny_ckpt[0], verbose=False)
    train, test = load_examples(FIXTURES, split="train"), load_examples(FIXTURES, split="test")
    asked = test + train[:3]                                             # three are in the pool too
    cache = str(tmp_path)
    near = C.nearest_shots(asked, train, model, tok, 4, cache_dir=cache)
    relabelled = [dataclasses.replace(e, skill="x", submodule="x__y") for e in train]
    same = C.nearest_shots([dataclasses.replace(e, skill="?", submodule="?") for e in asked], relabelled,
                           model, tok, 4, cache_dir=cache)
    assert {q: [s.question for s in v] for q, v in near.items()} == \
        {q: [s.question for s in v] for q, v in same.items()}
    X = {t: x for t, x in zip([e.question for e in train],
                              C.embed([C.meta_question(e.question) for e in train], model, tok, 1))}
    for e in asked:
        shots = near[e.question]
        assert len(shots) == 4 and e.question not in [s.question for s in shots]
        x = C.embed([C.meta_question(e.question)], model, tok, 1)[0]
        cos = [float(X[s.question] @ x / np.linalg.norm(X[s.question]) / np.linalg.norm(x)) for s in shots]
        assert cos == sorted(cos)                                        # farthest first
        others = [t for t in X if t != e.question and t not in [s.question for s in shots]]
        assert all(X[t] @ x / np.linalg.norm(X[t]) / np.linalg.norm(x) <= cos[0] + 1e-5 for t in others)
    capped = C.nearest_shots(test, train, model, tok, 2, pool_size=10, seed=5, cache_dir=cache)
    drawn = {s.question for v in capped.values() for s in v}
    assert drawn <= {e.question for e in train} and len(drawn) <= 10
    assert capped == C.nearest_shots(test, train, model, tok, 2, pool_size=10, seed=5, cache_dir=cache)


def test_cli_end_to_end(tiny_ckpt, tmp_path, capsys):
    """cluster.py writes the clusters; python -m study.clusters the same run with
    its report and picture beside them."""
    out, argv = tmp_path / "out", ["--k", "3", "--model", tiny_ckpt[0], "--data", FIXTURES, "--split", "train",
                                   "--n-init", "2", "--cache-dir", str(tmp_path / "cache"),
                                   "--no-raw"]   # raw questions do not fit the tiny model's 64-token context
    C.main(argv + ["--out", str(out)])
    written = ["assignments.json", "centroids.npy", "cluster_skills.json", "groups.json"]
    assert sorted(os.listdir(out)) == [".lock", *written]       # and the lock of its one writer, released
    assert (out / ".lock").read_text() == ""
    stdout, status = capsys.readouterr()            # what it did, and wrote, on stderr
    assert stdout == "" and status.endswith(f"wrote {', '.join(written)} to {out}\n")
    S.main(argv + ["--out", str(tmp_path / "reported")])
    report, status = capsys.readouterr()            # the report's head on stdout
    assert report.startswith("# Clusters of 42 train questions") and "wrote" not in report
    assert sorted(os.listdir(tmp_path / "reported")) == sorted([".lock", "clusters.png", "report.md", *written])
    assert "NMI (submodules)" in (tmp_path / "reported" / "report.md").read_text()
    for name in written:                           # the same clusters
        assert (out / name).read_bytes() == (tmp_path / "reported" / name).read_bytes(), name
    train = load_examples(FIXTURES, split="train")
    records = json.load(open(out / "assignments.json"))
    assert [r["question"] for r in records] == [e.question for e in train]
    assert {r["cluster"] for r in records} == {0, 1, 2}
    assert np.load(out / "centroids.npy").shape == (3, 64)
    assert set(json.load(open(out / "cluster_skills.json"))) == {"0", "1", "2"}
    groups = json.load(open(out / "groups.json"))["groups"]
    assert sorted(c for g in groups for c in g) == [0, 1, 2]
    chosen = [C.examples_of_cluster(str(out), k, train) for k in range(3)]
    assert sorted(sum(chosen, []), key=train.index) == train
    others = chosen[1] + chosen[2]            # e.g. a dev split too small to reach every cluster
    with pytest.raises(ValueError, match=rf"cluster 0 of .*assignments.json holds none of the {len(others)} "
                                         "train questions"):
        C.examples_of_cluster(str(out), 0, others)
    test = load_examples(FIXTURES, split="test")
    with pytest.raises(ValueError, match="none of the"):
        C.examples_of_cluster(str(out), 0, test)
    model, tok = M.load(tiny_ckpt[0], verbose=False)
    by_centroid = [C.examples_of_cluster(str(out), k, test, model, tok) for k in range(3)]
    assert sorted(sum(by_centroid, []), key=test.index) == test      # unclustered: nearest centroid
    layer = json.load(open(out / "groups.json"))["layer"]
    X = C.embed([C.meta_question(e.question) for e in test], model, tok, layer)
    nearest = kmeans.sq_dists(X, np.load(out / "centroids.npy")).argmin(1)
    assert [e for e, c in zip(test, nearest) if c == 1] == by_centroid[1]
    with pytest.raises(ValueError, match="cluster 3 does not exist"):
        C.examples_of_cluster(str(out), 3, train)
    wider = str(tmp_path / "wider")                      # clusters of another base: a clear error
    write_hf_checkpoint(wider, **{**TINY, "hidden_size": 96})
    with pytest.raises(ValueError, match="centroids are 64 wide, but .* embeds 96 wide"):
        read_centroids(str(out), M.load(wider, verbose=False)[0].config)


def test_router_labels_are_the_cluster_experts_training_questions(tiny_ckpt, tmp_path):
    """A router over cluster experts labels every question with the cluster its
    expert trained on, also questions that were not clustered (--limit). The
    study's router over eight cluster experts once failed because it labelled
    only the clustered ones."""
    from cluster import expert_labels
    out = tmp_path / "out"
    C.main(["--k", "3", "--out", str(out), "--model", tiny_ckpt[0], "--data", FIXTURES, "--split", "train",
            "--limit", "3", "--n-init", "2", "--cache-dir", str(tmp_path / "cache"), "--no-raw"])
    train = load_examples(FIXTURES, split="train")
    clustered = {r["question"] for r in json.load(open(out / "assignments.json"))}
    assert 0 < len(clustered) < len({e.question for e in train})     # --limit left questions out
    model, tok = M.load(tiny_ckpt[0], verbose=False)
    labels = expert_labels(train, ["cluster-0", "cluster-1", "cluster-2"], str(out), model, tok)
    assert (labels >= 0).all()
    for k in range(3):
        assert [e for e, c in zip(train, labels) if c == k] == \
            C.examples_of_cluster(str(out), k, train, model, tok)
    ids, n = C.clusters_of(str(out), train)                         # no model: unclustered get -1
    assert n == 3 and {e.question for e, c in zip(train, ids) if c >= 0} == clustered
    swapped = expert_labels(train, ["cluster-2", "cluster-0"], str(out), model, tok)
    assert ((swapped == 0) == (labels == 2)).all() and ((swapped == -1) == (labels == 1)).all()


@pytest.mark.parametrize("args, msg", [
    (["--k", "100"], "--k 100: the 42 train questions have 31 distinct meta-questions"),
    (["--model", "/nonexistent"], "/nonexistent: checkpoint directory not found"),
])
def test_cli_errors(tiny_ckpt, tmp_path, capsys, args, msg):
    base = ["--model", tiny_ckpt[0], "--data", FIXTURES, "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        run(lambda: C.main(base + args))
    assert msg in capsys.readouterr().err


def test_cli_empty_data(tiny_ckpt, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"Categories": [{"Math category": "algebra"}], "Instances": []}))
    with pytest.raises(SystemExit):
        run(lambda: C.main(["--model", tiny_ckpt[0], "--data", str(empty), "--out", str(tmp_path / "out")]))
    assert "field 'Instances': empty, expected at least one question" in capsys.readouterr().err


def test_picture_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib now fails
    S.plot_clusters(np.eye(3), np.array([0, 1, 2]), np.array(list("aab")), str(tmp_path / "c.png"), "t")
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("cosine", [False, True])
def test_silhouette_matches_sklearn_and_its_worked_example(cosine):
    """kmeans.silhouette against scikit-learn's silhouette_score (a singleton
    cluster scores 0 in both), chunked or not; and the docstring's example."""
    from sklearn.datasets import make_blobs
    from sklearn.metrics import silhouette_score
    from kmeans import kmeans, silhouette
    X, _ = make_blobs(n_samples=300, centers=4, n_features=6, random_state=0)
    labels = kmeans(X, 4, seed=0, cosine=cosine).labels.copy()
    labels[0] = 4                                                       # a cluster of one point
    want = silhouette_score(X, labels, metric="cosine" if cosine else "euclidean")
    assert abs(silhouette(X, labels, cosine=cosine, chunk=64) - want) < 1e-9
    assert abs(silhouette(np.array([[0.0], [1.0], [10.0]]), np.array([0, 0, 1])) - (0.9 + 8 / 9) / 3) < 1e-12


# --- what the study needs: --sample, and k chosen by silhouette -----------------

def test_sample_is_uniform_over_the_split_and_seeded():
    """--sample draws each question with the same probability, whatever its
    skill (--limit would take as many of each): 80 of skill a and 20 of b, 10
    drawn, 2000 seeds: each question about 1 time in 10, about 2 of b a draw."""
    examples = [("a" if i < 80 else "b", i) for i in range(100)]
    draws = [C.sample_questions(examples, 10, seed) for seed in range(2000)]
    assert all(len(d) == 10 and d == sorted(d, key=lambda e: e[1]) for d in draws)   # in the split's order
    counts = np.bincount([i for d in draws for _, i in d], minlength=100) / 2000
    assert abs(counts - 0.1).max() < 0.03
    assert abs(np.mean([sum(s == "b" for s, _ in d) for d in draws]) - 2) < 0.1
    assert C.sample_questions(examples, 10, 7) == draws[7] != draws[8]


def test_choose_k_worked_example():
    """Three tight blobs far apart: of k 2-6, k = 3 has the best silhouette, in
    Euclidean and in cosine distance (the blobs lie in three directions); on a
    sample of 30 points too, the same sample for every k."""
    rng = np.random.default_rng(0)
    centres = np.array([[10., 0, 0], [0, 10, 0], [0, 0, 10]])
    X = np.repeat(centres, 20, axis=0) + rng.normal(scale=0.3, size=(60, 3))    # (60, 3)
    for cosine in (False, True):
        r, sweep = kmeans.choose_k(X, range(2, 7), n_init=2, cosine=cosine)
        assert sweep["k"] == 3 and len(r.centroids) == 3 and [x["k"] for x in sweep["runs"]] == [2, 3, 4, 5, 6]
        best = max(sweep["runs"], key=lambda x: x["silhouette"])
        assert best["k"] == 3 and best["silhouette"] > 0.9
        assert r.labels.tolist() == np.repeat(r.labels[[0, 20, 40]], 20).tolist()      # one blob, one cluster
        assert sweep["runs"][1]["silhouette"] == kmeans.silhouette(X, r.labels, cosine=cosine)
    r, sweep = kmeans.choose_k(X, range(2, 7), n_init=2, points=30)
    assert sweep["k"] == 3 and (sweep["points"], sweep["silhouette_points"]) == (60, 30)


def test_cli_k_range_keeps_the_best_silhouette(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """cluster.py --k 2-6 on questions whose embeddings are three blobs (each
    meta-question placed by its crc32): k = 3 is kept, its clusters are the blobs,
    and sweep.json, the report and stderr say each k's silhouette."""
    import zlib
    blob = lambda text: zlib.crc32(text.encode()) % 3                                     # noqa: E731

    def three_blobs(texts, *args):
        rng = np.random.default_rng(0)
        return np.stack([np.eye(64)[blob(t)] * 10 + rng.normal(scale=0.1, size=64) for t in texts]).astype(np.float32)
    monkeypatch.setattr(C, "embed_cached", three_blobs)
    out = tmp_path / "out"
    S.main(["--k", "2-6", "--out", str(out), "--model", tiny_ckpt[0], "--data", FIXTURES, "--n-init", "2",
            "--no-raw", "--label-trials", "1"])
    sweep = json.load(open(out / "sweep.json"))
    assert sweep["k"] == 3 and [r["k"] for r in sweep["runs"]] == [2, 3, 4, 5, 6]
    assert max(sweep["runs"], key=lambda r: r["silhouette"])["k"] == 3
    assert (sweep["points"], sweep["silhouette_points"]) == (42, 42)
    assert json.load(open(out / "groups.json"))["k"] == 3 and np.load(out / "centroids.npy").shape == (3, 64)
    records = json.load(open(out / "assignments.json"))
    assert len({(r["cluster"], blob(r["meta"])) for r in records}) == 3                 # cluster = blob
    report = (out / "report.md").read_text()
    assert "k = 3 (of 2-6, by silhouette)" in report and "## k by silhouette" in report
    assert "on all 42 points" in report
    kept = re.findall(r"^ +(\d+) +\S+ +\S+  <- kept$", capsys.readouterr().err, flags=re.M)
    assert kept == ["3"]


def test_cli_sample(tiny_ckpt, tmp_path):
    """cluster.py --sample N clusters N questions drawn uniformly from the split, by --seed."""
    out = tmp_path / "out"
    C.main(["--sample", "12", "--seed", "3", "--k", "2", "--out", str(out), "--model", tiny_ckpt[0], "--data", FIXTURES,
            "--n-init", "1", "--cache-dir", str(tmp_path / "cache")])
    train = load_examples(FIXTURES, split="train")
    assert [r["question"] for r in json.load(open(out / "assignments.json"))] == \
        [e.question for e in C.sample_questions(train, 12, 3)]


@pytest.mark.parametrize("args, msg", [
    (["--k", "1-5"], "--k: expected an integer >= 1, or a range A-B with 2 <= A < B, got '1-5'"),
    (["--k", "6-3"], "--k: expected an integer >= 1, or a range A-B with 2 <= A < B, got '6-3'"),
    (["--k", "auto"], "--k: expected an integer >= 1, or a range A-B with 2 <= A < B, got 'auto'"),
    (["--k", "2-40"], "--k 2-40: the 42 train questions have 31 distinct meta-questions"),
    (["--k", "2-4", "--seeded", "2"], "--seeded makes one cluster per skill (2); --k is 2-4"),
    (["--k", "2-4", "--groups", "3"], "--groups 3: more groups than the 2 clusters"),
    (["--sample", "0"], "--sample: expected an integer >= 1, got '0'"),
    (["--sample", "43"], "--sample 43: the train split has 42 questions here; expected --sample 42 or fewer"),
    (["--sample", "5", "--limit", "3"], "argument --limit: not allowed with argument --sample"),
])
def test_cli_bad_k_or_sample(tmp_path, capsys, args, msg):
    """One line naming the flag, exit status 2, before any model is loaded."""
    with pytest.raises(SystemExit) as e:
        run(lambda: C.main(["--model", "/nonexistent", "--data", FIXTURES, "--out", str(tmp_path / "o"), *args]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and err.count("\n") == 1, err
