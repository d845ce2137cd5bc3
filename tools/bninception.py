"""BN-Inception (Ioffe & Szegedy 2015) in PyTorch, with the parameter names of the
port that DML code uses (Cadene/pretrained-models.pytorch, bninception.py: names such
as `inception_3a_1x1`, `inception_3a_1x1_bn`), so that its ImageNet state_dict
(bn_inception-239d2248.pth) loads one to one. Written from that definition's
structure: conv + BN + ReLU units (conv with bias, BN eps 1e-5, momentum 0.9), max pools
with ceil_mode, average-pool branches counting padding, and in 5b a max-pool branch.
Input: BGR in [0, 255] minus [104, 117, 128] for the ported ImageNet weights.

The reference for dml's `bninception` trunk (tests/trunk_parity.rs through
tools/torchvision_to_safetensors.py --arch bninception).
"""
import torch
from torch import nn

# name: (in, 1x1, 3x3 reduce, 3x3, double reduce, double, pool kind, pool proj, stride)
# pool kind: "avg" (3, s1, p1), "max1" (3, s1, p1), "max2" (3, s2, no proj)
BLOCKS = [
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 320, 0, 128, 160, 64, 96, "max2", 0, 2),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 608, 0, 128, 192, 192, 256, "max2", 0, 2),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 1024, 352, 192, 320, 192, 224, "max1", 128, 1),
]


class BNInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.units = []  # (conv name, stride, padding) in construction order
        self.add_unit("conv1_7x7_s2", 3, 64, 7, 2, 3)
        self.add_unit("conv2_3x3_reduce", 64, 64, 1, 1, 0)
        self.add_unit("conv2_3x3", 64, 192, 3, 1, 1)
        for name, cin, c1, r3, c3, rd, cd, pool, proj, s in BLOCKS:
            p = f"inception_{name}_"
            if c1:
                self.add_unit(p + "1x1", cin, c1, 1, 1, 0)
            self.add_unit(p + "3x3_reduce", cin, r3, 1, 1, 0)
            self.add_unit(p + "3x3", r3, c3, 3, s, 1)
            self.add_unit(p + "double_3x3_reduce", cin, rd, 1, 1, 0)
            self.add_unit(p + "double_3x3_1", rd, cd, 3, 1, 1)
            self.add_unit(p + "double_3x3_2", cd, cd, 3, s, 1)
            if proj:
                self.add_unit(p + "pool_proj", cin, proj, 1, 1, 0)

    def add_unit(self, name, cin, cout, k, s, p):
        setattr(self, name, nn.Conv2d(cin, cout, k, stride=s, padding=p))
        setattr(self, name + "_bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=0.9))

    def unit(self, name, x):
        return torch.relu(getattr(self, name + "_bn")(getattr(self, name)(x)))

    def features(self, x):
        x = self.unit("conv1_7x7_s2", x)
        x = nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
        x = self.unit("conv2_3x3", self.unit("conv2_3x3_reduce", x))
        x = nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
        for name, cin, c1, r3, c3, rd, cd, pool, proj, s in BLOCKS:
            p = f"inception_{name}_"
            outs = []
            if c1:
                outs.append(self.unit(p + "1x1", x))
            outs.append(self.unit(p + "3x3", self.unit(p + "3x3_reduce", x)))
            d = self.unit(p + "double_3x3_reduce", x)
            outs.append(self.unit(p + "double_3x3_2", self.unit(p + "double_3x3_1", d)))
            if pool == "avg":
                q = nn.functional.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
            elif pool == "max1":
                q = nn.functional.max_pool2d(x, 3, 1, 1, ceil_mode=True)
            else:
                q = nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
            outs.append(self.unit(p + "pool_proj", q) if proj else q)
            x = torch.cat(outs, 1)
        return x
