#!/usr/bin/env python3
"""Oracle fixtures for dml's gradient clipping (train.max_grad_norm; tests/optim_parity.rs).

Run from the repository root:

    .venv/bin/python tools/make_clip_fixtures.py --out tests/fixtures/clip

Writes clip_<dtype>.safetensors for dtype in {f32, f64}: four seeded gradients
`grad.<i>` (shapes of a conv weight, a bias, a linear weight, a small vector), and for
each max_norm of MAX_NORMS (`max_norm.<c>`) the gradients after
torch.nn.utils.clip_grad_norm_(params, max_norm) (`clipped.<c>.<i>`) and the total
norm it returns (`norm.<c>`). The first max_norm clips, the second does not.
"""

import argparse
import os

import torch
from safetensors.torch import save_file

SHAPES = [(16, 3, 7, 7), (16,), (64, 32), (10,)]
MAX_NORMS = [0.5, 1e6]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for tag, dtype in [("f32", torch.float32), ("f64", torch.float64)]:
        g = torch.Generator().manual_seed(0)
        grads = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) * (i + 1) for i, s in enumerate(SHAPES)]
        out = {f"grad.{i}": t.clone() for i, t in enumerate(grads)}
        for c, max_norm in enumerate(MAX_NORMS):
            params = [torch.zeros_like(t, requires_grad=True) for t in grads]
            for p, t in zip(params, grads):
                p.grad = t.clone()
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            out[f"max_norm.{c}"] = torch.tensor([max_norm], dtype=torch.float64)
            out[f"norm.{c}"] = norm.detach().reshape(1).clone()
            for i, p in enumerate(params):
                out[f"clipped.{c}.{i}"] = p.grad.detach().clone()
        save_file(out, os.path.join(args.out, f"clip_{tag}.safetensors"))
        print(tag, [float(out[f"norm.{c}"]) for c in range(len(MAX_NORMS))])


if __name__ == "__main__":
    main()
