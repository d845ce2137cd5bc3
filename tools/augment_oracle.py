"""Oracle for tests/loader.rs (augment vs Pillow/torchvision).

Reads a raw u8 HWC RGB image and a list of operations, applies them with torchvision's
functional API on PIL images (which calls Pillow's antialiased bilinear resize), and
writes the raw u8 HWC results one after another.

usage: augment_oracle.py IN.raw H W OUT.raw OP...
  OP = crop:TOP,LEFT,HEIGHT,WIDTH,SIZE,FLIP   (RandomResizedCrop + flip, torchvision F)
       test:RESIZE,CROP                       (Resize(RESIZE) + CenterCrop(CROP))
"""
import sys

import numpy as np
from PIL import Image
import torchvision.transforms as T
import torchvision.transforms.functional as F


def main():
    src, h, w, dst, *ops = sys.argv[1:]
    h, w = int(h), int(w)
    img = Image.fromarray(np.fromfile(src, dtype=np.uint8).reshape(h, w, 3), "RGB")
    outs = []
    for op in ops:
        kind, args = op.split(":")
        a = [int(x) for x in args.split(",")]
        if kind == "crop":
            top, left, ch, cw, size, flip = a
            out = F.resized_crop(img, top, left, ch, cw, [size, size],
                                 interpolation=T.InterpolationMode.BILINEAR)
            if flip:
                out = F.hflip(out)
        elif kind == "test":
            resize, crop = a
            out = T.CenterCrop(crop)(T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR)(img))
        else:
            raise SystemExit(f"unknown op {op}")
        outs.append(np.asarray(out, dtype=np.uint8).reshape(-1))
    np.concatenate(outs).tofile(dst)


if __name__ == "__main__":
    main()
