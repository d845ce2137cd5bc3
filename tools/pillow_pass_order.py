"""Which pass Pillow runs first when it resizes both axes, and whether the rule used by
src/data/augment.rs (`vertical_first`) predicts it.

For random shapes, a random-noise RGB image is resized with Pillow's bilinear filter and
compared with the two single-axis orders: horizontal first is
`resize((out_w, in_h)).resize((out_w, out_h))`, vertical first
`resize((in_w, out_h)).resize((out_w, out_h))` (a single-axis resize runs one pass).
Shapes where both orders give the same bytes say nothing and are skipped.

usage: .venv/bin/python tools/pillow_pass_order.py [SHAPES]   (default 1500)
"""
import sys

import numpy as np
import PIL
from PIL import Image


def vertical_first(in_h, in_w, out_h, out_w):
    """The rule of src/data/augment.rs: the height shrinks, by more than twice the width."""
    return in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)


def main():
    shapes = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    rng = np.random.default_rng(0)
    told = wrong = vertical = 0
    for _ in range(shapes):
        in_w, in_h = (int(v) for v in rng.integers(2, 400, 2))
        out_w, out_h = (int(v) for v in rng.integers(2, 300, 2))
        im = Image.fromarray(rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8))
        both = np.asarray(im.resize((out_w, out_h), Image.BILINEAR))
        h_first = np.asarray(
            im.resize((out_w, in_h), Image.BILINEAR).resize((out_w, out_h), Image.BILINEAR))
        v_first = np.asarray(
            im.resize((in_w, out_h), Image.BILINEAR).resize((out_w, out_h), Image.BILINEAR))
        is_h, is_v = (both == h_first).all(), (both == v_first).all()
        if is_h == is_v:
            continue  # both orders agree here (or neither matches): no evidence
        told += 1
        vertical += bool(is_v)
        wrong += bool(is_v) != vertical_first(in_h, in_w, out_h, out_w)
    print(f"Pillow {PIL.__version__}: {told} telling shapes, {vertical} resized vertically "
          f"first, rule wrong on {wrong}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
