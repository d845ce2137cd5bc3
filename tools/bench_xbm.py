#!/usr/bin/env python3
"""PML side of the cross-batch memory benchmark (dml side: examples/bench_xbm.rs; both
run by tools/bench_xbm.sh).

    .venv/bin/python tools/bench_xbm.py --loss ms_miner --size 55000 [--batch 64] [--dim 512] [--threads 2] [--steps 10]

Fills PML's CrossBatchMemory(loss, embedding_size=D, memory_size=SIZE, miner) with
random float32 batches of B rows (4 images per class, class ids drawn from SIZE / 4
classes), then times STEPS calls of the wrapper on a fresh batch (it enqueues the batch,
mines the batch against the memory and computes the loss) and the backward. Prints one
JSON line {"impl": "pml", ..., "times_s", "median_s", "peak_rss_mb"}.
LOSS: ms_miner (MultiSimilarityLoss + MultiSimilarityMiner(0.1)) or triplet_batch_hard
(TripletMarginLoss(0.2) + BatchHardMiner).
"""

import argparse
import json
import resource
import time

import torch
from pytorch_metric_learning import losses, miners


def make(name):
    if name == "ms_miner":
        return losses.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)
    if name == "triplet_batch_hard":
        return losses.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()
    raise SystemExit(f"unknown loss {name}")


def batch(b, d, classes):
    ids = torch.randint(classes, (b // 4,))
    return torch.randn(b, d), ids.repeat_interleave(4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loss", default="ms_miner")
    ap.add_argument("--size", type=int, default=55000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    loss, miner = make(a.loss)
    xbm = losses.CrossBatchMemory(loss, embedding_size=a.dim, memory_size=a.size, miner=miner)
    classes = max(a.size // 4, 2)
    with torch.no_grad():
        filled = 0
        while filled < a.size:
            e, l = batch(a.batch, a.dim, classes)
            xbm.add_to_memory(e, l, len(e))
            filled += len(e)
        xbm.has_been_filled = True
    times = []
    for _ in range(a.steps):
        e, l = batch(a.batch, a.dim, classes)
        e.requires_grad_(True)
        t = time.perf_counter()
        value = xbm(e, l)
        value.backward()
        times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"impl": "pml", "loss": a.loss, "size": a.size, "B": a.batch, "D": a.dim,
                      "threads": a.threads, "times_s": times,
                      "median_s": sorted(times)[len(times) // 2], "peak_rss_mb": round(rss, 1)}))


if __name__ == "__main__":
    main()
