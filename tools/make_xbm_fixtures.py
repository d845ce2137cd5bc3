#!/usr/bin/env python3
"""PML oracle for dml's cross-batch memory (tests/xbm_parity.rs).

    .venv/bin/python tools/make_xbm_fixtures.py --out DIR

tests/xbm_parity.rs runs this into a temporary directory at every test run. For a fixed
sequence of STEPS global batches of float64 embeddings it runs PML's
`CrossBatchMemory(loss, embedding_size=D, memory_size=SIZE, miner=miner)` (one fresh
wrapper per loss, fed the whole sequence in order) and writes

  xbm.safetensors   `emb.<t>` [B, D] f64 and `labels.<t>` [B] i64 for each step t, and
                    for each loss L: `L.value.<t>` (0-d) and `L.grad.<t>` (d loss / d emb
                    of step t, [B, D]);
  cases.json        size, steps, and each loss's parameters (the spec format of
                    tools/make_loss_fixtures.py).

The memory (SIZE = 20 rows, batches of B = 8) is partly filled at steps 0 and 1, full
from step 2, and wraps mid-batch at step 2 (slots 16..19 then 0..3). Labels repeat
classes across steps (positives in the memory from earlier batches), and step 0 holds
two one-image classes, whose only positive in the memory is the image's own copy: PML
mines it and then removes it (`remove_self_comparisons`).

The margin loss (loss.name = margin with D&C's cutoff sampler) has no PML miner: the
sampler is written here as a PML miner from tools/margin_ref.py's formulas
(`DncCutoffMiner`: every memory row of the anchor's label is a positive, its own copy
included, as any miner CrossBatchMemory wraps sees it), PML's `MarginLoss` is given the
official distance sqrt(|a - b|^2 + 1e-8) and a float64 beta, and PML's CrossBatchMemory
does the rest (ring, self-comparison removal, the DivisorReducer). Two cutoffs: 0.5 (D&C's)
and 1.2, where most candidates are masked and masked ones fill up the negatives.
"""

import argparse
import json
import os

import sys

import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_loss_fixtures import pml as pml_loss  # noqa: E402  (the same loss specs → PML objects)
from margin_ref import cross_pdist, select  # noqa: E402  (D&C's sampler, from its formulas)

SIZE = 20
B = 8
D = 6
STEPS = 5
MARGIN = 0.2
LOSSES = {
    "triplet_batch_hard": dict(kind="triplet", miner="batch_hard", margin=MARGIN, soft=False, distance="euclidean"),
    "triplet_batch_all": dict(kind="triplet", miner="batch_all", margin=MARGIN, soft=False, distance="euclidean"),
    "triplet_semi_hard": dict(kind="triplet", miner="semi_hard", margin=MARGIN, soft=False, distance="euclidean"),
    "triplet_none": dict(kind="triplet", miner="none", margin=MARGIN, soft=False, distance="euclidean"),
    "triplet_cosine_batch_hard": dict(kind="triplet", miner="batch_hard", margin=MARGIN, soft=False, distance="cosine"),
    "ms_miner": dict(kind="multi_similarity", alpha=2.0, beta=40.0, base=0.5, epsilon=0.1),
    "ms_none": dict(kind="multi_similarity", alpha=2.0, beta=40.0, base=0.5, epsilon=None),
    "margin_dnc": dict(kind="margin", margin=0.2, beta=1.2, cutoff=0.5),
    "margin_dnc_far": dict(kind="margin", margin=0.2, beta=1.2, cutoff=1.2),
}


class DncCutoffMiner(miners.BaseMiner):
    """D&C's cutoff sampler (tools/margin_ref.py) as a PML miner, so that PML's
    CrossBatchMemory runs it against the memory and removes self-comparisons itself."""

    def __init__(self, cutoff):
        super().__init__()
        self.cutoff = cutoff

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        d = cross_pdist(F.normalize(embeddings, dim=1), F.normalize(ref_emb, dim=1))
        a, p, n, _ = select(d.double().tolist(), labels.tolist(), ref_labels.tolist(), in_batch=False, cutoff=self.cutoff)
        return tuple(torch.tensor(v, dtype=torch.long, device=embeddings.device) for v in (a, p, n))


class DncDistance(distances.LpDistance):
    """The official margin loss's distance, sqrt(|a - b|^2 + 1e-8), on normalised rows."""

    def compute_mat(self, query_emb, ref_emb):
        return (((query_emb.unsqueeze(1) - ref_emb.unsqueeze(0)) ** 2).sum(dim=2) + 1e-8).sqrt()


def pml(spec):
    """(loss, miner) for one spec; the margin loss with D&C's sampler, its beta in
    float64 (PML keeps a float32 beta) and the official distance."""
    if spec["kind"] != "margin":
        return pml_loss(spec)
    loss = losses.MarginLoss(margin=spec["margin"], nu=0, beta=spec["beta"], triplets_per_anchor="all", distance=DncDistance())
    loss.beta = torch.tensor([spec["beta"]], dtype=torch.float64)
    return loss, DncCutoffMiner(spec["cutoff"])
LABELS = [
    [0, 0, 1, 1, 2, 3, 4, 4],  # classes 2 and 3 have one image: only their own copy
    [0, 0, 1, 1, 5, 5, 6, 6],
    [2, 2, 3, 3, 0, 0, 7, 7],
    [1, 1, 5, 5, 8, 8, 4, 4],
    [6, 6, 0, 0, 2, 2, 9, 9],
]


def batches():
    """The embedding sequence: class centres plus noise, so that mining has choices."""
    g = torch.Generator().manual_seed(7)
    centres = torch.randn(10, D, generator=g, dtype=torch.float64)
    out = []
    for labels in LABELS:
        l = torch.tensor(labels, dtype=torch.long)
        e = centres[l] + 0.8 * torch.randn(B, D, generator=g, dtype=torch.float64)
        out.append((e, l))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    seq = batches()
    tensors = {}
    for t, (e, l) in enumerate(seq):
        tensors[f"emb.{t}"] = e.contiguous()
        tensors[f"labels.{t}"] = l.contiguous()
    for name, spec in LOSSES.items():
        loss, miner = pml(spec)
        xbm = losses.CrossBatchMemory(loss, embedding_size=D, memory_size=SIZE, miner=miner)
        for t, (e, l) in enumerate(seq):
            leaf = e.clone().requires_grad_(True)
            value = xbm(leaf, l)
            value.backward()
            grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            tensors[f"{name}.value.{t}"] = value.detach().reshape(()).to(torch.float64).contiguous()
            tensors[f"{name}.grad.{t}"] = grad.contiguous()
    save_file(tensors, os.path.join(args.out, "xbm.safetensors"))
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump({"size": SIZE, "steps": STEPS, "batch": B, "losses": LOSSES}, f, indent=1)


if __name__ == "__main__":
    main()
