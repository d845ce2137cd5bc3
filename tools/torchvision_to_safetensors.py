#!/usr/bin/env python3
"""Export a torchvision trunk's state_dict to safetensors with torchvision's names.

    tools/torchvision_to_safetensors.py --arch resnet50 --weights resnet50.pth --out resnet50.safetensors
    tools/torchvision_to_safetensors.py --arch resnet50 --random --out resnet50-random.safetensors

Without --weights the model is torchvision's random initialisation after
torch.manual_seed(SEED) (default 0). The classifier (fc, classifier, AuxLogits) and
num_batches_tracked are dropped; tensors are float32. dml loads the file with
`model.pretrained = "FILE"` (names go under `trunk.`).

`--arch bninception` is BN-Inception with the names of Cadene/pretrained-models.pytorch
(tools/bninception.py; its ImageNet file bn_inception-239d2248.pth loads with --weights;
`last_linear` is dropped).

Options for tests: --perturb-bn (random BatchNorm statistics), --last-stride 1 (ResNet layer4 stride 1), --input-size H and
--features OUT.safetensors write torchvision's trunk feature map (eval mode) on a fixed
input (torch.manual_seed(1), randn [batch, 3, H, H]) as {"input", "features"}.
"""
import argparse
import re
import sys

import torch
import torchvision
from safetensors.torch import save_file

DROP = ("fc.", "classifier.", "AuxLogits.", "last_linear.")


def build(arch, last_stride):
    if arch == "bninception":
        sys.path.insert(0, __import__("os").path.dirname(__file__))
        from bninception import BNInception
        return BNInception().eval()
    kwargs = {}
    if arch == "inception_v3":
        kwargs = dict(aux_logits=False, transform_input=False, init_weights=True)
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    if last_stride == 1:
        if not arch.startswith("resnet"):
            sys.exit("--last-stride 1 is only for resnet")
        block = model.layer4[0]
        conv = block.conv2 if hasattr(block, "conv3") else block.conv1
        conv.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    return model.eval()


def trunk_features(model, arch, x):
    """The map dml's trunk returns: everything before global pooling."""
    if arch.startswith("resnet"):
        m = model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))
    if arch.startswith("densenet"):
        return torch.relu(model.features(x))
    if arch == "inception_v3":
        m = model
        for name in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c",
                     "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"]:
            x = getattr(m, name)(x)
        return x
    return model.features(x)  # mobilenet_v2, efficientnet_b*, bninception


def fix_legacy_densenet(sd):
    """Old DenseNet checkpoints name 'norm.1' what torchvision now calls 'norm1'."""
    pat = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for k, v in sd.items():
        m = pat.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, help="torchvision model name, e.g. resnet50")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="a torchvision .pth state_dict (ImageNet weights)")
    src.add_argument("--random", action="store_true",
                     help="write torchvision's random initialisation instead (tests; not pretrained)")
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--last-stride", type=int, default=2, choices=[1, 2])
    ap.add_argument("--features", help="also write the trunk feature map on a fixed input here")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--perturb-bn", action="store_true",
                    help="(tests) random BatchNorm affine and running statistics, so that loading them matters")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    torch.manual_seed(a.seed)
    model = build(a.arch, a.last_stride)
    if a.weights:
        sd = torch.load(a.weights, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        sd = fix_legacy_densenet(sd)
        sd = {k: v for k, v in sd.items() if not k.startswith(DROP)}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith(DROP)]
        if missing or unexpected:
            sys.exit(f"{a.weights} does not fit {a.arch}: missing {missing}, unexpected {unexpected}")

    if a.perturb_bn:
        g = torch.Generator().manual_seed(a.seed + 1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    c = m.num_features
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(0.1 * torch.randn(c, generator=g))
                    m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(c, generator=g))

    tensors = {
        k: v.detach().to(torch.float32).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked") and not k.startswith(DROP)
    }
    save_file(tensors, a.out)
    print(f"{a.out}: {len(tensors)} tensors of {a.arch}")

    if a.features:
        torch.manual_seed(1)
        x = torch.randn(a.batch, 3, a.input_size, a.input_size)
        with torch.no_grad():
            f = trunk_features(model, a.arch, x)
        save_file({"input": x.contiguous(), "features": f.contiguous()}, a.features)
        print(f"{a.features}: features {list(f.shape)}")


if __name__ == "__main__":
    main()
