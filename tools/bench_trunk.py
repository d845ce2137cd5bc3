#!/usr/bin/env python3
"""Forward + backward time of a torchvision trunk on CPU, the peer of examples/bench_trunk.rs.

    tools/bench_trunk.py [ARCH] [BATCH] [SIZE] [THREADS] [REPS]   (defaults: resnet50 16 224 2 5)

Per repetition: trunk feature map in train mode, mean().backward(), gradients zeroed
in place; one warm-up, then the median of REPS wall times in ms.
"""
import statistics
import sys
import time

import torch
import torchvision

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from torchvision_to_safetensors import build, trunk_features  # noqa: E402


def main():
    a = sys.argv[1:] + [None] * 5
    arch = a[0] or "resnet50"
    batch, size, threads, reps = (int(v) if v else d for v, d in zip(a[1:5], (16, 224, 2, 5)))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(arch, 2).train()
    torch.manual_seed(1)
    x = torch.randn(batch, 3, size, size)
    params = [p for p in model.parameters()]
    times = []
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        trunk_features(model, arch, x).mean().backward()
        for p in params:
            if p.grad is not None:
                p.grad.detach_()
                p.grad.zero_()
        ms = (time.perf_counter() - t0) * 1e3
        if rep > 0:
            times.append(ms)
    print(f"torch {torch.__version__} torchvision {torchvision.__version__} {arch} batch {batch} size {size} "
          f"threads {threads}: median {statistics.median(times):.1f} ms of {reps} (forward+backward)")


if __name__ == "__main__":
    main()
