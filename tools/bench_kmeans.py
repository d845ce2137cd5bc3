#!/usr/bin/env python
"""Peer of examples/bench_kmeans.rs (BENCHMARKS.md "## k-means for NMI"): the clustering
step of PML's AccuracyCalculator NMI/AMI, i.e. faiss.Kmeans(d, k, niter=20) on the
L2-normalised embeddings, k = number of classes, then index.search(x, 1).

    bench_kmeans.py gen DIR                 writes DIR/e.npy (60,000 x 512 float32), DIR/l.npy:
                                            11,316 classes (SOP test size) of 5-6, as bench_eval.py gen
    bench_kmeans.py DIR THREADS REPEATS     faiss.Kmeans on DIR/e.npy, DIR/l.npy

Prints one JSON line: median seconds over REPEATS, the final objective, NMI and AMI (sklearn).
"""
import json
import sys
import time

import numpy as np


def gen(d, n=60000, dim=512, classes=11316):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    labels = np.arange(n) % classes
    x = centres[labels] + 1.5 * rng.normal(size=(n, dim)).astype(np.float32)
    p = rng.permutation(n)
    np.save(f"{d}/e.npy", x[p].astype(np.float32))
    np.save(f"{d}/l.npy", labels[p].astype(np.int64))


def main():
    if sys.argv[1] == "gen":
        gen(sys.argv[2])
        return
    d, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import faiss
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    faiss.omp_set_num_threads(threads)
    x = np.load(f"{d}/e.npy").astype(np.float32)
    y = np.load(f"{d}/l.npy")
    x = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True))
    k = len(np.unique(y))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        km = faiss.Kmeans(x.shape[1], k, niter=20, verbose=False, seed=1234)
        km.train(x)
        _, a = km.index.search(x, 1)
        times.append(time.perf_counter() - t)
    a = a[:, 0]
    times.sort()
    print(json.dumps({"tool": "faiss.Kmeans", "n": len(y), "d": x.shape[1], "k": k, "threads": threads,
                      "median_s": round(times[len(times) // 2], 3), "times_s": times,
                      "objective": float(km.obj[-1]),
                      "NMI": normalized_mutual_info_score(y, a),
                      "AMI": adjusted_mutual_info_score(y, a)}))


if __name__ == "__main__":
    main()
