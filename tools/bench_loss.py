#!/usr/bin/env python3
"""PML side of the loss benchmark (dml side: examples/bench_loss.rs).

One process per measurement, so that peak RSS belongs to that measurement alone:

    .venv/bin/python tools/bench_loss.py --loss LOSS --batch B [--dim 512] [--threads T]

prints one JSON line {"impl": "pml", "loss", "B", "D", "threads", "times_s": [3 runs],
"median_s", "peak_rss_mb"} (forward + backward of loss + miner on CPU, float32;
N×K labels with K = 4; peak RSS from getrusage, the whole process).
LOSS: triplet_batch_hard, triplet_batch_all, triplet_semi_hard, ms_miner, ms_none.
"""

import argparse
import json
import resource
import time

import torch
from pytorch_metric_learning import losses, miners


def make(name):
    if name == "triplet_batch_hard":
        return losses.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()
    if name == "triplet_batch_all":
        return losses.TripletMarginLoss(margin=0.2), miners.TripletMarginMiner(0.2, type_of_triplets="all")
    if name == "triplet_semi_hard":
        return losses.TripletMarginLoss(margin=0.2), miners.TripletMarginMiner(0.2, type_of_triplets="semihard")
    if name == "ms_miner":
        return losses.MultiSimilarityLoss(2, 40, 0.5), miners.MultiSimilarityMiner(0.1)
    if name == "ms_none":
        return losses.MultiSimilarityLoss(2, 40, 0.5), None
    raise SystemExit(f"unknown loss {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loss", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    labels = torch.arange(a.batch // 4).repeat_interleave(4)
    emb0 = torch.randn(a.batch, a.dim)
    loss_fn, miner = make(a.loss)
    times = []
    for _ in range(a.repeats):
        emb = emb0.clone().requires_grad_(True)
        t = time.perf_counter()
        tuples = miner(emb, labels) if miner is not None else None
        loss = loss_fn(emb, labels, tuples)
        loss.backward()
        times.append(time.perf_counter() - t)
    times_sorted = sorted(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "pml", "loss": a.loss, "B": a.batch, "D": a.dim, "threads": a.threads,
                      "times_s": times, "median_s": times_sorted[len(times) // 2], "peak_rss_mb": rss}))


if __name__ == "__main__":
    main()
