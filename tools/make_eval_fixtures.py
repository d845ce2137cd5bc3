#!/usr/bin/env python
"""Oracle for tests/eval_parity.rs: PML AccuracyCalculator + faiss + scikit-learn.

    make_eval_fixtures.py fixtures OUTDIR
        Writes, per case NAME: NAME_r.npy / NAME_rl.npy (references, labels), and for
        query/gallery cases NAME_q.npy / NAME_ql.npy; NAME_faiss_i.npy / NAME_faiss_d.npy
        (faiss IndexFlatIP / IndexFlatL2 neighbours, own row excluded by index in
        same-source cases); and OUTDIR/oracle.json with, per case, the flags and PML's
        metrics (precision_at_1, r_precision, mean_average_precision_at_r, recall_at_K,
        NMI, AMI — the last two with PML's faiss k-means, hence only "close" to dml's).
    make_eval_fixtures.py sklearn LABELS.npy ASSIGN.npy
        Prints {"NMI": ..., "AMI": ...} of scikit-learn on that exact assignment.

Same-source kNN here drops the query's own row by index (search k+1, remove index i,
else the last), which is dml's definition; faiss breaks ties by the smaller index.
"""
import json
import os
import sys

import faiss
import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

RECALL_KS = [1, 2, 4, 8, 16, 32, 10, 20, 30, 40, 50]


def faiss_knn(q, r, k, same_source, euclidean):
    index = faiss.IndexFlatL2(r.shape[1]) if euclidean else faiss.IndexFlatIP(r.shape[1])
    index.add(np.ascontiguousarray(r, dtype=np.float32))
    kk = min(k + 1, len(r)) if same_source else k
    D, I = index.search(np.ascontiguousarray(q, dtype=np.float32), kk)
    if same_source:
        outd, outi = [], []
        for i in range(len(q)):
            keep = [j for j in range(kk) if I[i, j] != i][:k]
            outd.append(D[i, keep])
            outi.append(I[i, keep])
        D, I = np.stack(outd), np.stack(outi)
    return D, I


def canonical_knn(q, r, k, same_source, euclidean):
    """Full faiss ranking re-sorted by (score, smaller index first): dml's tie order.
    (faiss's IndexFlatIP lists equal scores larger index first, IndexFlatL2 smaller first.)"""
    D, I = faiss_knn(q, r, len(r), False, euclidean)
    outd, outi = [], []
    for i in range(len(q)):
        keep = I[i] != i if same_source else np.ones(len(r), dtype=bool)
        d, idx = D[i, keep], I[i, keep]
        order = np.lexsort((idx, d if euclidean else -d))[:k]
        outd.append(d[order])
        outi.append(idx[order])
    return np.stack(outd), np.stack(outi)


class IndexKNN:
    """PML knn_func: faiss exact search, own row excluded by index, dml's tie order."""

    def __init__(self, euclidean):
        self.euclidean = euclidean

    def __call__(self, query, k, reference, ref_includes_query):
        D, I = canonical_knn(query.numpy(), reference.numpy(), k, ref_includes_query, self.euclidean)
        return torch.from_numpy(D), torch.from_numpy(I).long()


def recall_fn(K):
    def f(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
        kl = knn_labels[not_lone_query_mask]
        ql = query_labels[not_lone_query_mask]
        if len(kl) == 0:
            return float("nan")
        return (kl[:, :K] == ql[:, None]).any(dim=1).double().mean().item()

    return f


Calc = type(
    "Calc",
    (AccuracyCalculator,),
    {f"calculate_recall_at_{K}": recall_fn(K) for K in RECALL_KS},
)


def normalize(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def clustered(rng, sizes, d, spread, centres=None):
    if centres is None:
        centres = rng.normal(size=(len(sizes), d))
    x = np.concatenate([c + spread * rng.normal(size=(s, d)) for c, s in zip(centres, sizes)])
    y = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)])
    p = rng.permutation(len(y))
    return x[p].astype(np.float32), y[p].astype(np.int64)


def ties(rng, n, d, classes):
    # Entries ±0.5 in D = 4: every row has norm exactly 1, every dot product is a
    # multiple of 1/4 (exact in float32), so faiss and dml see identical ties.
    x = (rng.integers(0, 2, size=(n, d)) - 0.5).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int64)
    return x, y


def cases(rng):
    out = {}
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = rng.integers(0, 30, size=300).astype(np.int64)
    out["random"] = dict(r=x, rl=y)
    sizes = list(rng.integers(1, 12, size=40)) + [1, 1, 80]
    x, y = clustered(rng, sizes, 32, 0.9)
    out["clustered"] = dict(r=x, rl=y)
    x, y = ties(rng, 200, 4, 10)
    out["ties"] = dict(r=x, rl=y)
    xq, yq = ties(rng, 60, 4, 12)
    out["ties_qg"] = dict(q=xq, ql=yq, r=x, rl=y)
    cq = rng.normal(size=(65, 24))
    x, y = clustered(rng, list(rng.integers(2, 9, size=50)), 24, 1.0, cq[:50])
    keep = (y >= 30) | (rng.random(len(y)) < 0.5)  # thin out gallery classes 0..29
    gx, gy = x[keep], y[keep]
    # Queries: classes 0..34 and 50..64; 50..64 never appear in the gallery.
    qx, qy = clustered(rng, list(rng.integers(1, 6, size=65)), 24, 1.0, cq)
    qx, qy = qx[(qy < 35) | (qy >= 50)], qy[(qy < 35) | (qy >= 50)]
    out["query_gallery"] = dict(q=qx, ql=qy, r=gx, rl=gy)
    ce = rng.normal(size=(30, 20))
    x, y = clustered(rng, list(rng.integers(2, 10, size=30)), 20, 1.2, ce)
    xq, yq = clustered(rng, list(rng.integers(1, 5, size=30)), 20, 1.2, ce)
    out["euclidean_qg"] = dict(q=xq * 3, ql=yq, r=x * 3, rl=y, euclidean=True)
    return out


def fixtures(outdir):
    rng = np.random.default_rng(1234)
    oracle = {}
    for name, c in cases(rng).items():
        euclidean = c.get("euclidean", False)
        same = "q" not in c
        prep = (lambda a: a.astype(np.float32)) if euclidean else normalize
        r = prep(c["r"])
        q = r if same else prep(c["q"])
        rl = c["rl"]
        ql = rl if same else c["ql"]
        np.save(os.path.join(outdir, f"{name}_r.npy"), r)
        np.save(os.path.join(outdir, f"{name}_rl.npy"), rl)
        if not same:
            np.save(os.path.join(outdir, f"{name}_q.npy"), q)
            np.save(os.path.join(outdir, f"{name}_ql.npy"), ql)
        uniq, counts = np.unique(rl, return_counts=True)
        cmap = dict(zip(uniq.tolist(), counts.tolist()))
        rmax = max(cmap.get(l, 0) - int(same) for l in np.unique(ql).tolist())
        k = min(max(rmax, 50), len(r) - int(same))
        D, I = faiss_knn(q, r, k, same, euclidean)
        np.save(os.path.join(outdir, f"{name}_faiss_i.npy"), I.astype(np.int64))
        np.save(os.path.join(outdir, f"{name}_faiss_d.npy"), D.astype(np.float32))
        calc = Calc(k=k, device=torch.device("cpu"), knn_func=IndexKNN(euclidean))
        faiss.omp_set_num_threads(1)
        m = calc.get_accuracy(q, ql, r, rl, ref_includes_query=same)
        m = {key: float(v) for key, v in m.items()}
        oracle[name] = dict(same_source=same, euclidean=euclidean, k=k, metrics=m)
    # npy dtype / layout variants for the reader: values 0..5 (labels), arange (embeddings).
    io = os.path.join(outdir, "io")
    os.makedirs(io, exist_ok=True)
    lab = np.array([3, 0, 5, 1, 2, 4])
    for dt in ["i1", "u1", "<i2", ">u2", "<i4", "<u4", "<i8", ">i8"]:
        np.save(os.path.join(io, f"lab_{dt.strip('<>')}{'_be' if dt[0] == '>' else ''}.npy"), lab.astype(dt))
    emb = np.arange(12, dtype=np.float64).reshape(4, 3) / 8
    np.save(os.path.join(io, "emb_f4.npy"), emb.astype(np.float32))
    np.save(os.path.join(io, "emb_f8.npy"), emb)
    np.save(os.path.join(io, "emb_be.npy"), emb.astype(">f4"))
    np.save(os.path.join(io, "emb_fortran.npy"), np.asfortranarray(emb.astype(np.float32)))
    # Rejected: integer embeddings, float / uint64 / 2-d labels, 1-d or 3-d embeddings.
    np.save(os.path.join(io, "bad_emb_i4.npy"), emb.astype(np.int32))
    np.save(os.path.join(io, "bad_lab_f4.npy"), lab.astype(np.float32))
    np.save(os.path.join(io, "bad_lab_u8.npy"), lab.astype(np.uint64))
    np.save(os.path.join(io, "bad_lab_2d.npy"), lab.reshape(2, 3))
    np.save(os.path.join(io, "bad_emb_1d.npy"), emb.reshape(-1).astype(np.float32))
    np.save(os.path.join(io, "bad_emb_3d.npy"), emb.reshape(2, 2, 3).astype(np.float32))
    with open(os.path.join(outdir, "oracle.json"), "w") as f:
        json.dump(oracle, f, indent=1)


def main():
    if sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
    elif sys.argv[1] == "sklearn":
        y, a = np.load(sys.argv[2]), np.load(sys.argv[3])
        print(json.dumps({
            "NMI": float(normalized_mutual_info_score(y, a)),
            "AMI": float(adjusted_mutual_info_score(y, a)),
        }))
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")


if __name__ == "__main__":
    main()
