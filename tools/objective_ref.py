#!/usr/bin/env python3
"""PyTorch references of the objective's extra terms, for tests/objective_parity.rs.

* Smoothed cross-entropy: `F.cross_entropy(logits / T, y, label_smoothing=eps)`, which
  is BFE's CrossEntropyLabelSmooth and CGD's LabelSmoothingCrossEntropyLoss.
* Distillation ("Learning Metrics from Teachers"; yulu0724/EmbeddingDistillation,
  train_distillation.py and losses/triplet.py):
  absolute = mean(F.pairwise_distance(s, t)),
  relative = torch.norm(D(s) - D(t), p=2) with D the clamp(1e-12).sqrt() Euclidean
  distance matrix of losses/triplet.py.

    .venv/bin/python tools/objective_ref.py --out DIR

writes DIR/objective.safetensors (float64): per CE case i `ce.logits.i`, `ce.labels.i`,
`ce.params.i` = [eps, T], `ce.value.i`, `ce.grad.i`; per distillation case i
`d.s.i`, `d.t.i`, `d.abs.i`, `d.abs_grad.i`, `d.rel.i`, `d.rel_grad.i`.
"""

import argparse
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def dist_matrix(x):
    n = x.size(0)
    d = torch.pow(x, 2).sum(dim=1, keepdim=True).expand(n, n)
    d = d + d.t()
    d = d - 2 * x @ x.t()
    return d.clamp(min=1e-12).sqrt()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    out = {}
    ce_cases = [(0.1, 1.0, 8, 5), (0.0, 1.0, 6, 3), (0.1, 0.5, 12, 7), (0.3, 2.0, 4, 4)]
    for i, (eps, temp, b, c) in enumerate(ce_cases):
        logits = (torch.randn(b, c, dtype=torch.float64) * 3).requires_grad_(True)
        labels = torch.randint(0, c, (b,))
        v = F.cross_entropy(logits / temp, labels, label_smoothing=eps)
        (g,) = torch.autograd.grad(v, logits)
        out.update({
            f"ce.logits.{i}": logits.detach(), f"ce.labels.{i}": labels,
            f"ce.params.{i}": torch.tensor([eps, temp], dtype=torch.float64),
            f"ce.value.{i}": v.detach(), f"ce.grad.{i}": g,
        })
    for i, (b, d) in enumerate([(8, 4), (16, 32), (5, 2)]):
        s = torch.randn(b, d, dtype=torch.float64)
        s = F.normalize(s, dim=1).requires_grad_(True)
        t = F.normalize(torch.randn(b, d, dtype=torch.float64), dim=1)
        if i == 2:
            t[1] = s[1].detach()  # a pair with zero difference
        a = torch.mean(F.pairwise_distance(s, t))
        (ga,) = torch.autograd.grad(a, s)
        r = torch.norm(dist_matrix(s) - dist_matrix(t), p=2)
        (gr,) = torch.autograd.grad(r, s)
        out.update({
            f"d.s.{i}": s.detach(), f"d.t.{i}": t, f"d.abs.{i}": a.detach(),
            f"d.abs_grad.{i}": ga, f"d.rel.{i}": r.detach(), f"d.rel_grad.{i}": gr,
        })
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(args.out, "objective.safetensors"))


if __name__ == "__main__":
    main()
