#!/usr/bin/env python3
"""Convert Stanford Cars' MATLAB annotations to the CSV that `dml prepare --format cars196` reads.

    .venv/bin/python tools/cars_annos_to_csv.py CARS_DIR/cars_annos.mat [--out CARS_DIR/cars_annos.csv]

Writes one row per image: `path,class,class_name` (a header row first), where `path` is the
annotation's `relative_im_path` (e.g. `car_ims/000001.jpg`, relative to CARS_DIR), `class`
is the 1-based class id (the DML split puts classes 1-98 in train and 99-196 in test) and
`class_name` comes from the file's `class_names`.
"""
import argparse
import csv
import os

import scipy.io


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mat", help="cars_annos.mat")
    ap.add_argument("--out", help="output CSV (default: cars_annos.csv beside the .mat)")
    args = ap.parse_args()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.mat)), "cars_annos.csv")
    m = scipy.io.loadmat(args.mat, squeeze_me=True, struct_as_record=False)
    names = [str(n) for n in m["class_names"]]
    rows = 0
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "class_name"])
        for a in m["annotations"]:
            c = int(a.__dict__["class"])
            w.writerow([str(a.relative_im_path), c, names[c - 1]])
            rows += 1
    print(f"wrote {out}: {rows} images, {len(names)} classes")


if __name__ == "__main__":
    main()
