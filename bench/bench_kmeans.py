"""
k-means speed and quality: kmeans.kmeans (NumPy) against scikit-learn's
KMeans (Lloyd, k-means++, the same k, n_init, max_iter and tol), in one run.

    python bench/bench_kmeans.py                 # three sizes, median of 3 runs each
    python bench/bench_kmeans.py --repeats 1     # quicker

Data: Gaussian blobs, float32, well separated and overlapping, shaped like the project's use: meta-question
embeddings of phi-tiny (C = 256) and phi-2 (C = 2560), k = 39 (the number of
submodules) and k = 8 (skills). Both sides get the same arrays; times alternate
between ours and sklearn's, so a slow spell hits both. Reported: median wall
time of each, the ratio ours / sklearn (lower is better, target <= 2x), and the
inertia ratio (ours / sklearn; the test suite holds it <= 1.01 on fixed data).
scikit-learn is the reference, never a dependency of kmeans.py.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kmeans  # noqa: E402


def blobs(n, d, k, seed, spread):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, (k, d))
    return (centers[rng.integers(k, size=n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


def main():
    from sklearn.cluster import KMeans

    p = argparse.ArgumentParser(description="kmeans.kmeans vs scikit-learn KMeans")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per size (median reported)")
    p.add_argument("--n-init", type=int, default=10, help="k-means++ restarts, both sides")
    args = p.parse_args()
    # (points, features, k, spread of the blob centres): 4 = well separated (few
    # Lloyd iterations), 0.15 = overlapping (many iterations, the slow case)
    sizes = [(3000, 256, 39, 4), (3000, 256, 8, 4), (3000, 256, 39, 0.15), (2000, 2560, 39, 4)]
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.2f}, n_init {args.n_init}")
    print("| points x features | k | blobs | ours (s) | sklearn (s) | time ratio | inertia ratio |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for n, d, k, spread in sizes:
        X = blobs(n, d, k, 0, spread)
        ours, ref = [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            res = kmeans.kmeans(X, k, n_init=args.n_init, seed=r)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sk = KMeans(k, init="k-means++", n_init=args.n_init, max_iter=300, tol=1e-4,
                        algorithm="lloyd", random_state=r).fit(X)
            ref.append(time.perf_counter() - t0)
        a, b = statistics.median(ours), statistics.median(ref)
        kind = "separated" if spread > 1 else "overlapping"
        print(f"| {n} x {d} | {k} | {kind} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {res.inertia / sk.inertia_:.4f} |")


if __name__ == "__main__":
    main()
