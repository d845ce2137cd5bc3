"""PyTorch reference of the BFE and CGD heads (tests/heads_bfe_cgd.rs).

Written after the official code:
* BFE: daizuozhuo/batch-dropblock-network, models/networks.py (class BFE, BatchDrop),
  from the point where the trunk map enters `res_part2`'s output: the global branch
  (avg pool -> 1x1 conv -> BatchNorm2d -> ReLU, the official `reduction`), the part
  branch (torchvision Bottleneck -> BatchDrop -> max pool -> Linear -> BN1d -> ReLU) and
  the two softmax classifiers. As in the Rust head, the Linear/conv layers before the
  BatchNorms have no bias (the official ones do; the BatchNorm cancels it). The erased rectangle is given on the command line (the
  Rust side draws it from the (seed, step) key).
* CGD: leftthomas/CGD, model.py (GlobalDescriptor, main_modules, auxiliary_module),
  with GeM as (mean(clamp(x, 1e-6)^p))^(1/p).

Usage: bfe_cgd_ref.py DIR {bfe|cgd} {train|eval} [options]
DIR/params.safetensors holds the Rust VarStore variables (head.*), DIR/inputs.safetensors
the map and the weights r_* of the scalar loss sum(out * r); DIR/out.safetensors gets the
outputs and the gradients (grad_map, grad.<rust name>).
"""
import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models.resnet import Bottleneck


class BatchDrop(nn.Module):
    """Official BatchDrop with the rectangle given instead of drawn by `random`."""

    def __init__(self, rect):
        super().__init__()
        self.rect = rect

    def forward(self, x):
        if self.training:
            sx, sy, rh, rw = self.rect
            mask = x.new_ones(x.size())
            mask[:, :, sx:sx + rh, sy:sy + rw] = 0
            x = x * mask
        return x


class BFEHead(nn.Module):
    def __init__(self, c, classes, rect):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.global_reduction = nn.Sequential(nn.Conv2d(c, 512, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU())
        self.global_softmax = nn.Linear(512, classes)
        self.res_part2 = Bottleneck(c, c // 4)
        self.part_maxpool = nn.AdaptiveMaxPool2d((1, 1))
        self.batch_crop = BatchDrop(rect)
        self.reduction = nn.Sequential(nn.Linear(c, 1024, bias=False), nn.BatchNorm1d(1024), nn.ReLU())
        self.softmax = nn.Linear(1024, classes)

    def forward(self, x):
        glob = self.global_avgpool(x)
        g = self.global_reduction(glob).flatten(1)
        y = self.batch_crop(self.res_part2(x))
        e = self.reduction(self.part_maxpool(y).flatten(1))
        return [g, e], [self.global_softmax(g), self.softmax(e)], torch.cat([g, e], 1)


class GlobalDescriptor(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 1:
            return x.mean(dim=[-1, -2])
        if self.p == float("inf"):
            return torch.flatten(F.adaptive_max_pool2d(x, output_size=(1, 1)), start_dim=1)
        return x.clamp(min=1e-6).pow(self.p).mean(dim=[-1, -2]) ** (1.0 / self.p)


class CGDHead(nn.Module):
    def __init__(self, c, spec, dim, gem_p, classes):
        super().__init__()
        k = dim // len(spec)
        ps = {"S": 1, "M": float("inf"), "G": gem_p}
        self.global_descriptors = nn.ModuleList([GlobalDescriptor(ps[s]) for s in spec])
        self.main_modules = nn.ModuleList([nn.Sequential(nn.Linear(c, k, bias=False)) for _ in spec])
        self.auxiliary_module = nn.Sequential(nn.BatchNorm1d(c), nn.Linear(c, classes, bias=True))

    def forward(self, x):
        ds = []
        for i, gd in enumerate(self.global_descriptors):
            d = gd(x)
            if i == 0:
                classes = self.auxiliary_module(d)
            ds.append(F.normalize(self.main_modules[i](d), p=2, dim=-1))
        e = F.normalize(torch.cat(ds, dim=-1), dim=-1)
        return [e], [classes], e


def torch_name(rust):
    """`head.post.x.y` / `head.x.y` -> `x.y`."""
    name = rust[len("head."):]
    return name[len("post."):] if name.startswith("post.") else name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("head", choices=["bfe", "cgd"])
    ap.add_argument("mode", choices=["train", "eval"])
    ap.add_argument("--rect", type=int, nargs=4, default=[0, 0, 0, 0])
    ap.add_argument("--classes", type=int, required=True)
    ap.add_argument("--descriptors", default="SG")
    ap.add_argument("--dim", type=int, default=0)
    ap.add_argument("--gem-p", type=float, default=3.0)
    a = ap.parse_args()

    params = load_file(f"{a.dir}/params.safetensors")
    inputs = load_file(f"{a.dir}/inputs.safetensors")
    x = inputs["map"].clone().requires_grad_(True)
    c = x.shape[1]
    if a.head == "bfe":
        model = BFEHead(c, a.classes, a.rect)
    else:
        model = CGDHead(c, a.descriptors, a.dim, a.gem_p, a.classes)
    model = model.double()
    own = model.state_dict()
    state = {}
    for rust, t in params.items():
        name = torch_name(rust)
        assert name in own, f"{rust} -> {name} not in the reference"
        state[name] = t.view(own[name].shape)  # the official 1x1 conv holds the Linear
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert all(m.endswith("num_batches_tracked") for m in missing), missing
    assert not unexpected, unexpected
    model.train(a.mode == "train")

    embs, logits, test = model(x)
    loss = (test * inputs["r_test"]).sum()
    for i, e in enumerate(embs):
        loss = loss + (e * inputs[f"r_emb{i}"]).sum()
    for i, l in enumerate(logits):
        loss = loss + (l * inputs[f"r_logits{i}"]).sum()
    loss.backward()

    out = {"test": test.detach(), "grad_map": x.grad}
    out.update({f"emb{i}": e.detach() for i, e in enumerate(embs)})
    out.update({f"logits{i}": l.detach() for i, l in enumerate(logits)})
    named = dict(model.named_parameters())
    for rust in params:
        p = named.get(torch_name(rust))
        if p is not None:
            out[f"grad.{rust}"] = p.grad.reshape(params[rust].shape).contiguous()
    save_file({k: v.clone().contiguous() for k, v in out.items()}, f"{a.dir}/out.safetensors")


if __name__ == "__main__":
    main()
