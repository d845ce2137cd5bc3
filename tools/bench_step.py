#!/usr/bin/env python3
"""The PyTorch + PML peer of `dml train` for tools/bench_step.sh: the same loop, by hand.

ResNet-18 (torchvision, from scratch) with a 512→D linear embedding and L2
normalisation, PML's Multi-Similarity loss and miner (dml's defaults: α 2, β 40,
base 0.5, ε 0.1), torch.optim.Adam at lr 1e-3 (CPU default: the single-tensor path;
`--adam fused` for fused=True, the kernel dml calls),
N classes × K images per step drawn from a dml `.dmlds` file (the same file dml reads),
no augmentation besides a horizontal flip (which dml always applies). Under
`mpirun -np W` it runs DistributedDataParallel over gloo, each rank on its slice of the
global batch, with PML's DistributedLossWrapper / DistributedMinerWrapper
(efficient=False: exact gradients through the gathered batch, as dml).

Prints one JSON line (rank 0): {"world", "threads", "steps", "step_s"}, where step_s is
the marginal wall time per step between the end of step `--warmup` and the last step.

    mpirun -np 1 .venv/bin/python tools/bench_step.py --data DIR/train.dmlds --steps 150
"""

import argparse
import json
import os
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils import distributed as pml_dist

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def read_dmlds(path):
    """Pixels [count, S, S, 3] (u8) and labels of a dml dataset file of square images
    of one size (the layout of src/data/format.rs)."""
    with open(path, "rb") as f:
        raw = f.read()
    magic = raw[:8]
    if magic != b"DMLDS\0\r\n":
        raise SystemExit(f"{path}: not a .dmlds file")
    count, index_off, labels_off = struct.unpack_from("<QQQ", raw, 16)
    index = np.frombuffer(raw, dtype=np.dtype([("off", "<u8"), ("h", "<u4"), ("w", "<u4")]),
                          count=count, offset=index_off)
    labels = np.frombuffer(raw, dtype="<u4", count=count, offset=labels_off).astype(np.int64)
    h, w = int(index["h"][0]), int(index["w"][0])
    if not (np.all(index["h"] == h) and np.all(index["w"] == w)):
        raise SystemExit(f"{path}: images of several sizes; generate them with one --size")
    n = h * w * 3
    pixels = np.stack([np.frombuffer(raw, dtype=np.uint8, count=n, offset=int(o))
                       for o in index["off"]]).reshape(count, h, w, 3)
    return pixels, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adam", choices=["default", "fused"], default="default",
                    help="torch.optim.Adam's CPU default (single-tensor) or fused=True")
    args = ap.parse_args()

    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    threads = int(os.environ.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() // world))))
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)

    pixels, labels = read_dmlds(args.data)
    by_class = {}
    for i, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(i)
    classes = np.array(sorted(c for c, v in by_class.items() if len(v) >= args.per_class))
    batch = args.classes * args.per_class
    if batch % world:
        raise SystemExit(f"global batch {batch} is not divisible by {world} ranks")
    rows = batch // world

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(num_classes=args.dim)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    loss_fn = losses.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    if world > 1:
        loss_fn = pml_dist.DistributedLossWrapper(loss_fn)
        miner = pml_dist.DistributedMinerWrapper(miner)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=(args.adam == "fused") or None)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rng = np.random.default_rng(args.seed)  # the same draws on every rank

    ends = []
    model.train()
    for _ in range(args.steps):
        chosen = rng.choice(classes, size=args.classes, replace=False)
        idx = np.concatenate([rng.choice(by_class[int(c)], size=args.per_class, replace=False)
                              for c in chosen])
        flips = rng.random(batch) < 0.5
        mine = slice(rank * rows, (rank + 1) * rows)
        x = torch.from_numpy(pixels[idx[mine]]).permute(0, 3, 1, 2).float().div_(255)
        x = (x - mean) / std
        f = torch.from_numpy(flips[mine])
        x[f] = x[f].flip(3)
        y = torch.from_numpy(labels[idx[mine]])
        opt.zero_grad()
        emb = F.normalize(model(x), dim=1)
        pairs = miner(emb, y)
        loss = loss_fn(emb, y, pairs)
        loss.backward()
        opt.step()
        ends.append(time.perf_counter())
    step_s = (ends[-1] - ends[args.warmup - 1]) / (args.steps - args.warmup)
    if rank == 0:
        print(json.dumps({"world": world, "threads": threads, "steps": args.steps,
                          "adam": args.adam, "step_s": step_s}))
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
