#!/usr/bin/env python3
"""Forward + backward time of the HORDE head in PyTorch eager on CPU, the peer of
examples/bench_horde.rs.

    tools/bench_horde.py [BATCH] [CHANNELS] [SIDE] [ORDER] [DIM] [THREADS] [REPS]
    (defaults: 32 2048 7 5 8192 2 5)

The cascaded HORDE head of pierre-jacob/ICCV2019-Horde as a plain torch module: 1x1
convolutions without bias, order 2 = (W2a x) * (W2 x), order k = order(k-1) * (Wk x), global
average pooling, Linear(no bias) to 512, L2. Per repetition: forward on a map that requires
grad, sum of the embeddings' means backward, gradients zeroed; one warm-up, then the median
of REPS wall times in ms.
"""
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Horde(nn.Module):
    def __init__(self, channels, order, dim, emb=512):
        super().__init__()
        self.fc1 = nn.Linear(channels, emb, bias=False)
        self.w2a = nn.Conv2d(channels, dim, 1, bias=False)
        self.proj = nn.ModuleList(nn.Conv2d(channels, dim, 1, bias=False) for _ in range(2, order + 1))
        self.fcs = nn.ModuleList(nn.Linear(dim, emb, bias=False) for _ in range(2, order + 1))

    def forward(self, x):
        out = [F.normalize(self.fc1(x.mean((2, 3))), dim=1)]
        moment = self.w2a(x)
        for w, fc in zip(self.proj, self.fcs):
            moment = moment * w(x)
            out.append(F.normalize(fc(moment.mean((2, 3))), dim=1))
        return out


def main():
    a = sys.argv[1:] + [None] * 7
    batch, channels, side, order, dim, threads, reps = (
        int(v) if v else d for v, d in zip(a[:7], (32, 2048, 7, 5, 8192, 2, 5)))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    head = Horde(channels, order, dim)
    x = torch.randn(batch, channels, side, side, requires_grad=True)
    times = []
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        sum(e.mean() for e in head(x)).backward()
        head.zero_grad(set_to_none=False)
        x.grad.zero_()
        ms = (time.perf_counter() - t0) * 1e3
        if rep > 0:
            times.append(ms)
    print(f"torch {torch.__version__} horde map [{batch}, {channels}, {side}, {side}] order {order} dim {dim} "
          f"threads {threads}: median {statistics.median(times):.1f} ms of {reps} (forward+backward)")


if __name__ == "__main__":
    main()
