#!/usr/bin/env python
"""Evaluation benchmark peers for examples/bench_eval.rs (see BENCHMARKS.md "## Evaluation").

    bench_eval.py gen DIR [N] [D] [PER_CLASS]   writes DIR/e.npy (N×D float32), DIR/l.npy
    bench_eval.py pml DIR THREADS REPEATS       PML AccuracyCalculator (kNN metrics, IndexFlatIP)
    bench_eval.py faiss DIR THREADS REPEATS     faiss-cpu IndexFlatIP kNN alone (k = max(R, 50) + 1)

Each mode prints one JSON line: median seconds over REPEATS and the process's peak RSS.
"""
import json
import resource
import sys
import time

import numpy as np


def gen(d, n=60000, dim=512, per_class=5):
    rng = np.random.default_rng(0)
    classes = n // per_class
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    labels = np.repeat(np.arange(classes), per_class)[:n]
    x = centres[labels] + 1.5 * rng.normal(size=(n, dim)).astype(np.float32)
    p = rng.permutation(n)
    np.save(f"{d}/e.npy", x[p].astype(np.float32))
    np.save(f"{d}/l.npy", labels[p].astype(np.int64))


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    mode, d = sys.argv[1], sys.argv[2]
    if mode == "gen":
        gen(d, *[int(a) for a in sys.argv[3:]])
        return
    threads, repeats = int(sys.argv[3]), int(sys.argv[4])
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    x = np.load(f"{d}/e.npy")
    y = np.load(f"{d}/l.npy")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    _, counts = np.unique(y, return_counts=True)
    k = min(max(int(counts.max()) - 1, 50), len(y) - 1)
    times, out = [], {}
    for _ in range(repeats):
        t = time.perf_counter()
        if mode == "pml":
            from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
            from pytorch_metric_learning.utils.inference import FaissKNN

            calc = AccuracyCalculator(
                include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                k=k, device=torch.device("cpu"), knn_func=FaissKNN(index_init_fn=faiss.IndexFlatIP),
            )
            out = calc.get_accuracy(x, y)
        else:
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x)
            index.search(x, k + 1)
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"tool": mode, "n": len(y), "d": x.shape[1], "threads": threads,
                      "median_s": round(times[len(times) // 2], 3), "times_s": times,
                      "peak_rss_mib": round(peak_mib()), **out}))


if __name__ == "__main__":
    main()
