#!/usr/bin/env python3
"""Reference for dml's margin loss with Divide and Conquer's sampler (tests/margin_parity.rs).

    .venv/bin/python tools/margin_ref.py --out DIR

Written from the formulas of the official D&C code (CompVis/metric-learning-divide-and-conquer,
lib/loss/sampler.py and lib/loss/margin_loss.py), not copied from it:

  sampler, on x = F.normalize(emb):
    d = sqrt(clamp(clamp(|a|^2 + |b|^2 - 2 a.b, min=0), min=1e-4))       (the official pdist)
    pos[i, j] = labels equal and i != j;  num_neg = floor(sum(pos) / B)
    negatives of i: the num_neg smallest d[i, j] + 1e6 * (pos[i, j] + (d[i, j] < cutoff)),
      the two masks ADDED (2019 uint8 semantics), ordered exactly by (mask count, d, index);
      the anchor itself always counts as masked once (official whenever cutoff > 0.01)
    triplets of i: its first t = min(#pos_i, num_neg) positives (ascending index) zipped
      with its first t negatives (ascending index)
  loss:
    d_ap = sqrt(|p - a|^2 + 1e-8), d_an likewise
    L = sum(relu(d_ap - beta + m) + relu(beta - d_an + m)) / (#(pos_loss > 0) + #(neg_loss > 0)),
    0 when no term is active.

For every case it writes <case>.safetensors with `emb`, `labels`, the sampled `anchors`,
`positives`, `negatives` (i64), `ref.value` / `ref.grad` (the formulas above, d loss / d emb)
and `pml.value` / `pml.grad`: pytorch-metric-learning 2.9
`MarginLoss(margin=0.2, nu=0, beta=1.2, triplets_per_anchor="all")` given the same triplets as
indices_tuple (PML uses cdist without the 1e-8 and a float32 beta, so it agrees to ~1e-6 only,
and not at all on triplets whose negative is the anchor itself: cases.json says `pml: false`
there). cases.json lists the cases, their dtype and the properties the test checks.
"""

import argparse
import json
import os

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses
from safetensors.torch import save_file

MARGIN = 0.2
BETA = 1.2
CUTOFF = 0.5


def pdist(x):
    prod = x @ x.t()
    norm = prod.diag().unsqueeze(1).expand_as(prod)
    return ((norm + norm.t()) - 2 * prod).clamp(min=0).clamp(min=1e-4).sqrt()


def cross_pdist(x, r):
    """The official pdist formula between the rows of x and those of r."""
    sq = (x * x).sum(dim=1).unsqueeze(1) + (r * r).sum(dim=1).unsqueeze(0)
    return (sq - 2 * x @ r.t()).clamp(min=0).clamp(min=1e-4).sqrt()


def select(d, lab, ref_lab, in_batch, cutoff=CUTOFF):
    """(anchors, positives, negatives, info) of the D&C sampler from distances d[i][j]
    between anchors (labels lab) and candidates (labels ref_lab). in_batch: the
    candidates are the anchors' own batch (j == i is the anchor itself: not a positive,
    always masked once); otherwise (a cross-batch memory) every candidate of the anchor's
    label is a positive, as a miner wrapped by PML's CrossBatchMemory sees them."""
    b, m = len(lab), len(ref_lab)
    is_self = lambda i, j: in_batch and i == j  # noqa: E731
    pos = [[j for j in range(m) if not is_self(i, j) and ref_lab[j] == lab[i]] for i in range(b)]
    num_neg = sum(map(len, pos)) // b if b else 0
    a_idx, p_idx, n_idx = [], [], []
    short = 0  # anchors with fewer than num_neg negatives beyond the cutoff
    for i in range(b):
        if num_neg == 0:
            break

        def masks(j):
            near = int(d[i][j] < cutoff)
            return max(near, 1) if is_self(i, j) else near + int(ref_lab[j] == lab[i])

        order = sorted(range(m), key=lambda j: (masks(j), d[i][j], j))
        if sum(1 for j in range(m) if masks(j) == 0) < num_neg:
            short += 1
        neg = sorted(order[:num_neg])
        t = min(len(pos[i]), num_neg)
        a_idx += [i] * t
        p_idx += pos[i][:t]
        n_idx += neg[:t]
    info = dict(num_neg=num_neg, short_anchors=short, self_negatives=sum(a == n for a, n in zip(a_idx, n_idx)))
    return a_idx, p_idx, n_idx, info


def sample(x, labels, cutoff=CUTOFF):
    """(anchors, positives, negatives, info) of the D&C sampler on normalised x."""
    lab = labels.tolist()
    return select(pdist(x.detach()).double().tolist(), lab, lab, True, cutoff)


def reference(emb, labels):
    e = emb.clone().requires_grad_(True)
    x = F.normalize(e, p=2, dim=1)
    a, p, n, info = sample(x, labels)
    if len(a) == 0:
        loss = (e * 0).sum()
    else:
        ai, pi, ni = (torch.tensor(v, dtype=torch.long) for v in (a, p, n))
        d_ap = (((x[pi] - x[ai]) ** 2).sum(dim=1) + 1e-8).sqrt()
        d_an = (((x[ni] - x[ai]) ** 2).sum(dim=1) + 1e-8).sqrt()
        pos_loss = F.relu(d_ap - BETA + MARGIN)
        neg_loss = F.relu(BETA - d_an + MARGIN)
        pairs = int((pos_loss > 0).sum()) + int((neg_loss > 0).sum())
        info["active"] = pairs
        loss = (pos_loss + neg_loss).sum() / pairs if pairs > 0 else (e * 0).sum()
    info.setdefault("active", 0)
    info["triplets"] = len(a)
    loss.backward()
    return (a, p, n), loss.detach(), e.grad.detach(), info


def pml(emb, labels, triplets):
    e = emb.clone().requires_grad_(True)
    fn = losses.MarginLoss(margin=MARGIN, nu=0, beta=BETA, triplets_per_anchor="all")
    tup = tuple(torch.tensor(v, dtype=torch.long) for v in triplets)
    loss = fn(e, labels, indices_tuple=tup)
    loss.backward()
    g = e.grad if e.grad is not None else torch.zeros_like(e)
    return loss.detach(), g.detach()


def nk_labels(n, k, gen):
    labels = torch.arange(n).repeat_interleave(k)
    return labels[torch.randperm(len(labels), generator=gen)]


def cases():
    gen = torch.Generator().manual_seed(20261129)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    out = {}
    # Random N x K = 8 x 4, d = 16.
    lab = nk_labels(8, 4, gen)
    emb = rnd(32, 16)
    out["random_f64"] = (emb, lab)
    out["random_f32"] = (emb.float(), lab)
    # Clustered: four classes x 4 in one tight cluster, except two images of class 3 far
    # away: the anchors of classes 0-2 have 2 < num_neg = 3 negatives beyond the cutoff,
    # so masked entries (themselves, close negatives, far positives) fill up.
    lab = torch.arange(4).repeat_interleave(4)
    centre, far = rnd(16), rnd(16)
    emb = centre + 0.03 * rnd(16, 16)
    emb[14:] = far + 0.03 * rnd(2, 16)
    perm = torch.randperm(16, generator=gen)
    out["clustered_f64"] = (emb[perm], lab[perm])
    # Duplicate rows: 6 x 4 where two classes were drawn with replacement (a row
    # repeated inside its class) and one class appears twice in the batch (8 images).
    lab = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 0, 0, 0, 0])
    emb = rnd(24, 16)
    emb[1] = emb[0]
    emb[6] = emb[5]
    emb[7] = emb[5]
    emb[21] = emb[2]
    out["duplicates_f64"] = (emb, lab)
    # Unequal classes (6, 2, 2, 1, 1 images): num_neg = floor(34 / 12) = 2, so class 0
    # anchors keep 2 of their 5 positives and the singletons have no triplet.
    lab = torch.tensor([0, 1, 0, 2, 0, 0, 1, 3, 0, 2, 4, 0])
    out["unequal_f64"] = (rnd(12, 16), lab)
    # No active term: two classes at opposite poles, d_ap ~ 0 <= beta - m and
    # d_an ~ 2 >= beta + m.
    lab = torch.tensor([0, 1] * 4)
    pole = torch.zeros(16, dtype=torch.float64)
    pole[0] = 1.0
    emb = torch.stack([pole if l == 0 else -pole for l in lab.tolist()]) + 0.01 * rnd(8, 16)
    out["inactive_f64"] = (emb, lab)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    index = {}
    for name, (emb, labels) in cases().items():
        triplets, value, grad, info = reference(emb, labels)
        pv, pg = pml(emb, labels, triplets)
        ti = {k: torch.tensor(v, dtype=torch.long) for k, v in zip(("anchors", "positives", "negatives"), triplets)}
        save_file(
            {
                "emb": emb.contiguous(),
                "labels": labels.contiguous(),
                **ti,
                "ref.value": value.reshape(()),
                "ref.grad": grad.contiguous(),
                "pml.value": pv.reshape(()).to(emb.dtype),
                "pml.grad": pg.contiguous(),
            },
            os.path.join(args.out, f"{name}.safetensors"),
        )
        info.update(dtype=str(emb.dtype), pml=info["self_negatives"] == 0)
        index[name] = info
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump({"margin": MARGIN, "beta": BETA, "cutoff": CUTOFF, "cases": index}, f, indent=1)


if __name__ == "__main__":
    main()
