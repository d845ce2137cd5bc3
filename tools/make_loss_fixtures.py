#!/usr/bin/env python3
"""PML oracle for dml's losses and miners (tests/loss_parity.rs).

    .venv/bin/python tools/make_loss_fixtures.py --out DIR

tests/loss_parity.rs runs this into a temporary directory at every test run. It writes

  <case>.safetensors   for each embedding case: `emb` [B, D] (f32 or f64), `labels` [B]
                       i64, and for each loss L below `L.value` (0-d) and `L.grad`
                       (d loss / d emb, [B, D]) computed by pytorch-metric-learning;
  cases.json           the case names, shapes, dtypes and each loss's parameters.

Cases: random, clustered, ties (rows duplicated: sampling with replacement),
one_image_class (a class with a single image), one_class (no negatives),
big (B = 256, D = 128), in f32 and f64. Everything is seeded.
"""

import argparse
import json
import os

import torch
from pytorch_metric_learning import distances, losses, miners
from safetensors.torch import save_file

MARGIN = 0.2
LOSSES = {
    "triplet_batch_hard": dict(kind="triplet", miner="batch_hard", margin=MARGIN, soft=False, distance="euclidean"),
    "triplet_batch_all": dict(kind="triplet", miner="batch_all", margin=MARGIN, soft=False, distance="euclidean"),
    "triplet_semi_hard": dict(kind="triplet", miner="semi_hard", margin=MARGIN, soft=False, distance="euclidean"),
    "triplet_none": dict(kind="triplet", miner="none", margin=MARGIN, soft=False, distance="euclidean"),
    # triplet-reid's soft margin: softplus(d_ap - d_an), batch hard.
    "triplet_soft_batch_hard": dict(kind="triplet", miner="batch_hard", margin=0.0, soft=True, distance="euclidean"),
    "triplet_soft_batch_all": dict(kind="triplet", miner="batch_all", margin=MARGIN, soft=True, distance="euclidean"),
    "triplet_cosine_batch_hard": dict(kind="triplet", miner="batch_hard", margin=MARGIN, soft=False, distance="cosine"),
    "triplet_cosine_semi_hard": dict(kind="triplet", miner="semi_hard", margin=MARGIN, soft=False, distance="cosine"),
    "ms_miner": dict(kind="multi_similarity", alpha=2.0, beta=40.0, base=0.5, epsilon=0.1),
    "ms_none": dict(kind="multi_similarity", alpha=2.0, beta=40.0, base=0.5, epsilon=None),
}


def pml(spec):
    """(loss, miner or None) for one spec."""
    if spec["kind"] == "triplet":
        dist = distances.LpDistance() if spec["distance"] == "euclidean" else distances.CosineSimilarity()
        loss = losses.TripletMarginLoss(margin=spec["margin"], smooth_loss=spec["soft"], distance=dist)
        m = spec["miner"]
        if m == "batch_hard":
            miner = miners.BatchHardMiner(distance=dist)
        elif m == "batch_all":
            miner = miners.TripletMarginMiner(margin=spec["margin"], type_of_triplets="all", distance=dist)
        elif m == "semi_hard":
            miner = miners.TripletMarginMiner(margin=spec["margin"], type_of_triplets="semihard", distance=dist)
        else:
            miner = None
        return loss, miner
    loss = losses.MultiSimilarityLoss(alpha=spec["alpha"], beta=spec["beta"], base=spec["base"])
    miner = None if spec["epsilon"] is None else miners.MultiSimilarityMiner(epsilon=spec["epsilon"])
    return loss, miner


def nk_labels(n, k, gen):
    """N classes × K images, shuffled."""
    labels = torch.arange(n).repeat_interleave(k)
    return labels[torch.randperm(len(labels), generator=gen)]


def clustered(labels, d, spread, gen, dtype):
    centres = torch.randn(int(labels.max()) + 1, d, generator=gen, dtype=torch.float64)
    return (centres[labels] + spread * torch.randn(len(labels), d, generator=gen, dtype=torch.float64)).to(dtype)


def cases():
    gen = torch.Generator().manual_seed(20260501)
    out = {}
    for dtype, tag in [(torch.float32, "f32"), (torch.float64, "f64")]:
        lab = nk_labels(16, 4, gen)
        out[f"random_{tag}"] = (torch.randn(64, 16, generator=gen, dtype=torch.float64).to(dtype), lab)
        lab = nk_labels(32, 4, gen)
        out[f"clustered_{tag}"] = (clustered(lab, 32, 0.6, gen, dtype), lab)
        # Sampling with replacement: 96 draws from 40 images of 10 classes.
        base_lab = torch.arange(10).repeat_interleave(4)
        base_emb = clustered(base_lab, 16, 0.7, gen, torch.float64)
        idx = torch.randint(0, 40, (96,), generator=gen)
        out[f"ties_{tag}"] = (base_emb[idx].to(dtype), base_lab[idx])
        lab = torch.cat([nk_labels(16, 4, gen), torch.tensor([99])])
        lab = lab[torch.randperm(len(lab), generator=gen)]
        out[f"one_image_class_{tag}"] = (clustered(lab, 24, 0.8, gen, dtype), lab)
        out[f"one_class_{tag}"] = (torch.randn(64, 16, generator=gen, dtype=torch.float64).to(dtype), torch.full((64,), 7))
        lab = nk_labels(64, 4, gen)
        out[f"big_{tag}"] = (clustered(lab, 128, 1.0, gen, dtype), lab)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    index = {"generated_by": "tools/make_loss_fixtures.py", "losses": LOSSES, "cases": {}}
    for name, (emb, labels) in cases().items():
        tensors = {"emb": emb.contiguous(), "labels": labels.to(torch.int64).contiguous()}
        for lname, spec in LOSSES.items():
            loss_fn, miner = pml(spec)
            e = emb.clone().requires_grad_(True)
            tuples = miner(e, labels) if miner is not None else None
            value = loss_fn(e, labels, tuples)
            value.backward()
            grad = e.grad if e.grad is not None else torch.zeros_like(e)
            tensors[f"{lname}.value"] = value.detach().reshape(()).contiguous()
            tensors[f"{lname}.grad"] = grad.contiguous()
        save_file(tensors, os.path.join(args.out, f"{name}.safetensors"))
        index["cases"][name] = {"B": emb.shape[0], "D": emb.shape[1], "dtype": str(emb.dtype)}
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
