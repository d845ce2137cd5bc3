#!/usr/bin/env python3
"""The PyTorch + pytorch-metric-learning twin of configs/accuracy-glyphs.toml, written by
hand, for the accuracy comparison of issue 20 (tools/accuracy.sh, BENCHMARKS.md).

One process, 2 threads. The recipe:

* data: the same `.dmlds` files dml reads (read with tools/dmlds.py); train: torchvision
  RandomResizedCrop(64, scale=(0.5, 1.0)) on the stored 72 × 72 image, no flip, ToTensor,
  Normalize(ImageNet mean/std); test: Resize(72), CenterCrop(64), ToTensor, Normalize;
* sampler: PML's MPerClassSampler, 4 images per class, batch 64 (16 classes);
* model: torchvision resnet18(weights=None), fc = Linear(512, 128), L2 normalisation;
  BatchNorm in training mode during training;
* objective: PML's MultiSimilarityMiner(epsilon=0.1) and MultiSimilarityLoss(alpha=2,
  beta=40, base=0.5) on cosine similarity;
* optimiser: torch.optim.Adam(lr=1e-3), MultiStepLR(milestones, gamma=0.1) stepped after
  every iteration (so iteration i, 0-based, runs at 1e-3 · γ^#{milestones ≤ i}, as dml's
  `lr.policy = "multistep"`);
* evaluation: PML's AccuracyCalculator (k = "max_bin_count") with query = reference = the
  test set and `ref_includes_query=True` (each query's own row is excluded, as in
  `dml eval`): precision_at_1, r_precision, mean_average_precision_at_r.

Steps, milestones and the data paths are read from the dml config (`--config`), so the two
sides cannot drift apart. Prints one JSON line: the seed, the metrics, the training and
evaluation wall times.

    .venv/bin/python tools/accuracy_pml.py --config configs/accuracy-glyphs.toml --seed 0
"""
import argparse
import json
import os
import random
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from pytorch_metric_learning import losses, miners, samplers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from torchvision import transforms as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmlds  # noqa: E402

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def load(path):
    """All images of a `.dmlds` file as one uint8 array (N, H, W, 3), and the labels."""
    with dmlds.open(path) as d:
        images = np.stack([d.image(i) for i in range(len(d))])
        return images, d.labels.copy()


class Images(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/accuracy-glyphs.toml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="override train.steps (milestones stay)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args()

    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)
    data, samp, lr = cfg["data"], cfg["sampler"], cfg["lr"]
    steps = args.steps or cfg["train"]["steps"]
    size, resize = data["image_size"], data["resize"]
    n_cls, k = samp["classes_per_batch"], samp["samples_per_class"]
    batch = n_cls * k
    assert lr["policy"] == "multistep" and not data.get("flip", True)
    assert cfg["loss"]["name"] == "multi_similarity" and cfg["miner"]["name"] == "multi_similarity"

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)  # MPerClassSampler draws from numpy's global generator
    torch.manual_seed(args.seed)

    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=tuple(data["crop_scale"])), *normalize])
    test_tf = T.Compose([T.Resize(resize), T.CenterCrop(size), *normalize])

    t_load = time.perf_counter()
    train_x, train_y = load(data["train"])
    test_x, test_y = load(data["test"])
    load_s = time.perf_counter() - t_load

    sampler = samplers.MPerClassSampler(train_y, m=k, batch_size=batch, length_before_new_iter=steps * batch)
    loader = torch.utils.data.DataLoader(
        Images(train_x, train_y, train_tf), batch_size=batch, sampler=sampler, num_workers=1,
        drop_last=True, persistent_workers=False, prefetch_factor=4,
    )

    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Linear(512, cfg["model"]["embedding_dim"])
    L = cfg["loss"]
    loss_fn = losses.MultiSimilarityLoss(alpha=L["ms_alpha"], beta=L["ms_beta"], base=L["ms_base"])
    miner = miners.MultiSimilarityMiner(epsilon=cfg["miner"]["epsilon"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["optim"]["lr"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=lr["milestones"], gamma=lr["gamma"])

    t0 = time.perf_counter()
    model.train()
    step, loss_v = 0, float("nan")
    for x, y in loader:
        emb = F.normalize(model(x), dim=1)
        pairs = miner(emb, y)
        loss = loss_fn(emb, y, pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        loss_v = loss.item()
        if args.log_every and (step % args.log_every == 0 or step == steps):
            el = time.perf_counter() - t0
            print(f"step {step}/{steps}  loss {loss_v:.4f}  lr {opt.param_groups[0]['lr']:.1e}  "
                  f"{step * batch / el:.0f} img/s", file=sys.stderr, flush=True)
        if step == steps:
            break
    train_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    model.eval()
    test = Images(test_x, test_y, test_tf)
    embs = []
    with torch.no_grad():
        for x, _ in torch.utils.data.DataLoader(test, batch_size=256, shuffle=False, num_workers=0):
            embs.append(F.normalize(model(x), dim=1))
    emb = torch.cat(embs).numpy()
    calc = AccuracyCalculator(include=METRICS, k="max_bin_count")
    acc = calc.get_accuracy(emb, test_y, emb, test_y, ref_includes_query=True)
    eval_s = time.perf_counter() - t1

    out = {"side": "pytorch+pml", "seed": args.seed, "steps": step, "final_loss": loss_v}
    out.update({m: float(acc[m]) for m in METRICS})
    out.update({"train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "load_s": round(load_s, 1),
                "torch": torch.__version__, "threads": torch.get_num_threads()})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
