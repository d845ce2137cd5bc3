#!/usr/bin/env python3
"""PML side of the cross-batch memory benchmark (dml side: examples/bench_xbm.rs; both
run by tools/bench_xbm.sh).

    .venv/bin/python tools/bench_xbm.py --loss ms_miner --size 55000 [--batch 64] [--dim 512] [--threads 2] [--steps 10]

Fills PML's CrossBatchMemory(loss, embedding_size=D, memory_size=SIZE, miner) with
random float32 batches of B rows (4 images per class, class ids drawn from SIZE / 4
classes), then times STEPS calls of the wrapper on a fresh batch (it enqueues the batch,
mines the batch against the memory and computes the loss) and the backward. Prints one
JSON line {"impl": "pml", ..., "times_s", "median_s", "peak_rss_mb"}.
LOSS: ms_miner (MultiSimilarityLoss + MultiSimilarityMiner(0.1)), triplet_batch_hard
(TripletMarginLoss(0.2) + BatchHardMiner) or margin_dnc (MarginLoss(0.2, nu=0, beta=1.2)
with D&C's cutoff sampler, which PML lacks: `DncCutoffMiner` below, vectorised in torch as
the official D&C sampler is).
"""

import argparse
import json
import resource
import time

import os
import sys

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from margin_ref import cross_pdist  # noqa: E402


class DncCutoffMiner(miners.BaseMiner):
    """D&C's cutoff sampler against the memory in torch ops (pdist, the two masks added
    as 1e6 offsets, the num_neg smallest per row; each anchor's first t positives zipped
    with its negatives in index order): the benchmark's peer, not the parity oracle
    (tools/make_xbm_fixtures.py, which spells the rule out in Python)."""

    def __init__(self, cutoff=0.5):
        super().__init__()
        self.cutoff = cutoff

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        d = cross_pdist(F.normalize(embeddings, dim=1), F.normalize(ref_emb, dim=1))
        pos = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
        num_neg = int(pos.sum()) // len(labels)
        key = d + 1e6 * (pos.to(d.dtype) + (d < self.cutoff).to(d.dtype))
        neg = key.topk(num_neg, dim=1, largest=False).indices.sort(dim=1).values
        rank = pos.cumsum(dim=1)
        t = pos.sum(dim=1).clamp(max=num_neg)
        a, p = (pos & (rank <= t.unsqueeze(1))).nonzero(as_tuple=True)
        return a, p, neg[a, rank[a, p] - 1]


def make(name):
    if name == "ms_miner":
        return losses.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)
    if name == "triplet_batch_hard":
        return losses.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()
    if name == "margin_dnc":
        return losses.MarginLoss(margin=0.2, nu=0, beta=1.2, triplets_per_anchor="all"), DncCutoffMiner(0.5)
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
