#!/usr/bin/env python
"""PyTorch reference of the HORDE head (tests/heads_horde.rs).

Written from pierre-jacob/ICCV2019-Horde, `CascadedKOrder` (kerastools/models/horde_models.py)
and `PartialKOrderBlock` (kerastools/layers/horde_layers.py), in the layout Keras uses
(NHWC maps, kernels [1, 1, C, D] applied as a matrix product over channels):

    output_list = [x]
    for k in 2..K:  x_k = PKOB(only_project_second = k > 2)([output_list[-1], x])
                    PKOB: (first_proj(first) if k == 2 else first) * proj(second)
    for each order: GlobalAveragePooling2D -> Dense(no bias) (orders >= 2 only if trainable)
                    -> L2Normalisation

Usage: horde_ref.py DIR. Reads DIR/weights.safetensors (the Rust VarStore, names `head.*`)
and DIR/input.safetensors (`x` [b, C, h, w], `r0` ... `r{K-1}` the cotangents of the
embeddings, `rl` of the logits when a classifier exists, `order`). Writes
DIR/ref.safetensors: `emb{k}`, `test`, `logits`, `grad.x` and `grad.<param>` of the scalar
sum_k <emb_k, r_k> + <logits, rl> for every trainable parameter.
"""
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def main(d):
    w = load_file(f"{d}/weights.safetensors")
    inp = load_file(f"{d}/input.safetensors")
    order = int(inp["order"].item())
    # Learned projections come with a Dense layer per order; fixed (random Maclaurin)
    # projections are ±1 and not trainable.
    learned = "head.fc2.weight" in w
    params = {k: v.clone().requires_grad_(learned or not k.startswith("head.w"))
              for k, v in w.items()}
    x = inp["x"].clone().requires_grad_(True)

    def kernel(name):  # torch [D, C, 1, 1] -> Keras [C, D]
        return params[name][:, :, 0, 0].t()

    x_nhwc = x.permute(0, 2, 3, 1)  # Keras layout
    outs = [x_nhwc]
    for k in range(2, order + 1):
        second = x_nhwc @ kernel(f"head.w{k}")
        first = x_nhwc @ kernel("head.w2a") if k == 2 else outs[-1]
        outs.append(first * second)
    feats = []
    for k, o in enumerate(outs, start=1):
        g = o.mean(dim=(1, 2))  # GlobalAveragePooling2D
        if k == 1 or learned:
            g = g @ params[f"head.fc{k}.weight"].t()  # Dense(use_bias=False)
        feats.append(g)
    embs = [F.normalize(f, dim=1) for f in feats]
    total = sum((e * inp[f"r{i}"]).sum() for i, e in enumerate(embs))
    out = {f"emb{i}": e.detach() for i, e in enumerate(embs)}
    out["test"] = embs[0].detach().clone()
    if "head.post.classifier.weight" in params:
        logits = feats[0] @ params["head.post.classifier.weight"].t() + params["head.post.classifier.bias"]
        total = total + (logits * inp["rl"]).sum()
        out["logits"] = logits.detach()
    total.backward()
    out["grad.x"] = x.grad
    for k, v in params.items():
        if v.requires_grad:
            out[f"grad.{k}"] = v.grad
    save_file({k: v.contiguous() for k, v in out.items()}, f"{d}/ref.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
