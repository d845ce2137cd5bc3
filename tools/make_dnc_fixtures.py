#!/usr/bin/env python
"""Oracle for src/dnc/hungarian.rs (test `hungarian::tests::equals_scipy_linear_sum_assignment`).

    make_dnc_fixtures.py hungarian     prints one JSON object {"cases": [...]} on stdout

Each case: a square integer weight matrix `w` (random, some with many ties: small
value ranges, constant rows/columns, all equal), the maximum total weight found by
scipy.optimize.linear_sum_assignment(w, maximize=True), scipy's assignment (column of
each row), and `unique`: whether that maximum is reached by one assignment only
(checked by brute force over all permutations for K <= 7, else null).
"""
import itertools
import json
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment


def case(w):
    rows, cols = linear_sum_assignment(w, maximize=True)
    total = int(w[rows, cols].sum())
    k = w.shape[0]
    unique = None
    if k <= 7:
        best = [p for p in itertools.permutations(range(k)) if int(w[range(k), p].sum()) == total]
        unique = len(best) == 1
    return {"w": w.tolist(), "total": total, "assignment": cols.tolist(), "unique": unique}


def hungarian():
    rng = np.random.default_rng(20261129)
    cases = []
    for k in [1, 2, 3, 4, 5, 6, 7]:
        for _ in range(6):
            cases.append(case(rng.integers(0, 1000, size=(k, k))))
            cases.append(case(rng.integers(0, 3, size=(k, k))))  # many ties
    for k in [10, 25, 60, 120]:
        cases.append(case(rng.integers(-500, 5000, size=(k, k))))
        cases.append(case(rng.integers(0, 4, size=(k, k))))
    # Overlap-like matrices: a permuted diagonal of large counts plus noise.
    for k in [8, 32]:
        w = rng.integers(0, 5, size=(k, k))
        w[np.arange(k), rng.permutation(k)] += 100
        cases.append(case(w))
    cases.append(case(np.full((5, 5), 7)))
    w = np.zeros((6, 6), dtype=np.int64)
    w[2, :] = 9
    w[:, 4] = 3
    cases.append(case(w))
    print(json.dumps({"cases": cases}))


if __name__ == "__main__":
    {"hungarian": hungarian}[sys.argv[1]]()
