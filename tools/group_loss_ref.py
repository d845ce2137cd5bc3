#!/usr/bin/env python3
"""PyTorch reference of Group Loss (Elezi et al., ECCV 2020) for tests/loss_parity.rs.

Written from the official code's description (dvl-tum/group_loss: gtg.py,
dynamics.py, train.py; see docs/METHODS.md "Group Loss"):

  W  = ReLU(Pearson correlation of the rows of f)       gtg._get_W (diagonal kept)
  X0 = one-hot for the first `anchors` samples of each class (batch order),
       softmax(logits / T) for the others                  gtg._init_probs
  X  <- X * (W X), rows renormalised; `iterations` times  dynamics (replicator)
  loss = NLL(log(X + 1e-12), y) + ce_weight * CE(logits, y)

    .venv/bin/python tools/group_loss_ref.py --out DIR

writes DIR/group.safetensors with, per case i: `f.i`, `logits.i`, `labels.i`,
`value.i`, `grad_f.i`, `grad_logits.i`, and `params.i` = [T, anchors, iterations,
ce_weight], all float64.
"""

import argparse
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def group_loss(f, logits, labels, temperature, anchors, iterations, ce_weight):
    x = f - f.mean(dim=1, keepdim=True)
    norms = x.norm(dim=1)
    w = torch.relu(torch.mm(x, x.t()) / torch.outer(norms, norms))
    seen = {}
    labelled = []
    for i, y in enumerate(labels.tolist()):
        seen[y] = seen.get(y, 0) + 1
        labelled.append(seen[y] <= anchors)
    labelled = torch.tensor(labelled)
    probs = F.softmax(logits / temperature, dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).to(f.dtype)
    ps = torch.where(labelled.unsqueeze(1), onehot, probs)
    for _ in range(iterations):
        ps = ps * torch.mm(w, ps)
        ps = ps / ps.sum(dim=1, keepdim=True)
    nll = F.nll_loss(torch.log(ps + 1e-12), labels)
    ce = F.cross_entropy(logits, labels)
    return nll + ce_weight * ce


CASES = [
    # (classes, per class, feature dim, n classifier classes, T, anchors, iterations, ce_weight)
    (6, 9, 32, 10, 24.0, 2, 1, 1.0),
    (5, 7, 16, 8, 79.0, 3, 3, 0.5),
    (10, 6, 64, 12, 54.0, 2, 2, 1.0),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    out = {}
    for i, (n, k, d, c, t, a, it, cw) in enumerate(CASES):
        labels = torch.randperm(c, generator=gen)[:n].repeat_interleave(k)
        labels = labels[torch.randperm(len(labels), generator=gen)]
        centres = torch.randn(c, d, generator=gen, dtype=torch.float64)
        f = (centres[labels] + 0.8 * torch.randn(len(labels), d, generator=gen, dtype=torch.float64)).requires_grad_(True)
        logits = (3.0 * torch.randn(len(labels), c, generator=gen, dtype=torch.float64)).requires_grad_(True)
        loss = group_loss(f, logits, labels, t, a, it, cw)
        loss.backward()
        out[f"f.{i}"] = f.detach()
        out[f"logits.{i}"] = logits.detach()
        out[f"labels.{i}"] = labels
        out[f"value.{i}"] = loss.detach().reshape(())
        out[f"grad_f.{i}"] = f.grad
        out[f"grad_logits.{i}"] = logits.grad
        out[f"params.{i}"] = torch.tensor([t, a, it, cw], dtype=torch.float64)
    save_file(out, os.path.join(args.out, "group.safetensors"))


if __name__ == "__main__":
    main()
