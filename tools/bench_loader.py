"""torchvision baseline for examples/bench_loader.rs: the same images, saved as JPEG,
through a DataLoader with one worker process (one core), RandomResizedCrop(224,
scale=(0.16, 1)) + RandomHorizontalFlip, u8 out (PILToTensor, like dml's loader).

usage: .venv/bin/python tools/bench_loader.py [DIR]   (DIR holds bench.dmlds written by
       `cargo run --release --example bench_loader -- DIR`; default tmp/bench_loader)
"""
import json
import os
import struct
import sys
import time

import numpy as np
import torch
from PIL import Image
import torchvision.transforms as T


def read_dmlds(path):
    """Yields (HWC u8 array, label) from a .dmlds file (see src/data/format.rs)."""
    with open(path, "rb") as f:
        data = f.read()
    count, index_off, labels_off = struct.unpack_from("<QQQ", data, 16)
    labels = np.frombuffer(data, "<u4", count, labels_off)
    for i in range(count):
        off, h, w = struct.unpack_from("<QII", data, index_off + 16 * i)
        yield np.frombuffer(data, np.uint8, h * w * 3, off).reshape(h, w, 3), int(labels[i])


class Jpegs(torch.utils.data.Dataset):
    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), 0


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "tmp/bench_loader"
    jpegs = os.path.join(d, "jpeg")
    os.makedirs(jpegs, exist_ok=True)
    files = []
    for i, (img, _) in enumerate(read_dmlds(os.path.join(d, "bench.dmlds"))):
        f = os.path.join(jpegs, f"{i:05d}.jpg")
        if not os.path.exists(f):
            Image.fromarray(img).save(f, quality=90)
        files.append(f)
    files = files * 2  # as many images per run as the Rust benchmark
    torch.set_num_threads(1)
    tf = T.Compose([T.RandomResizedCrop(224, scale=(0.16, 1.0)), T.RandomHorizontalFlip(), T.PILToTensor()])
    rates, cpu_rates = [], []
    for _ in range(3):
        dl = torch.utils.data.DataLoader(Jpegs(files, tf), batch_size=64, shuffle=True, num_workers=1)
        t, c = time.perf_counter(), os.times()
        it = iter(dl)
        n = sum(x.shape[0] for x, _ in it)
        del it  # joins the worker, so that its CPU time lands in os.times().children_*
        c2 = os.times()
        worker_cpu = (c2.children_user - c.children_user) + (c2.children_system - c.children_system)
        rates.append(n / (time.perf_counter() - t))
        cpu_rates.append(n / worker_cpu if worker_cpu > 0 else float("nan"))
    rates.sort()
    cpu_rates.sort()
    print(json.dumps({"images": len(files), "wall_img_per_s": rates, "worker_cpu_img_per_s": cpu_rates}))
    print(f"torchvision DataLoader, 1 worker: {rates[1]:6.0f} img/s wall, "
          f"{cpu_rates[1]:6.0f} img/s per worker CPU-second (median of 3)")


if __name__ == "__main__":
    main()
