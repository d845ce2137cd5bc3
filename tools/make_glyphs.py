#!/usr/bin/env python3
"""A real retrieval dataset from the fonts that Debian's font packages ship: one class per
character, one image per font that really contains the glyph.

What it makes (under OUT):

    OUT/png/U+XXXX/NNN.png   the character U+XXXX drawn by font NNN: black ink on a white
                             72 × 72 RGB canvas
    OUT/glyphs.csv           `path,label` rows (paths relative to OUT, labels `U+XXXX`),
                             for `dml prepare --format csv` (which puts the first half of
                             the sorted class names in train.dmlds, the second in test.dmlds:
                             here digits, Latin and the first Greek capitals train; the rest
                             of Greek and Cyrillic test)
    OUT/fonts.csv            every font used: id, package, package version, file, SHA-256,
                             how many of the classes it has
    OUT/summary.json         classes, fonts, images, the packages and versions, Pillow's and
                             FreeType's versions

Fonts: every `.ttf`/`.otf` file installed by the Debian packages in PACKAGES (found through
dpkg's own file lists under /var/lib/dpkg, versions from /var/lib/dpkg/status), in sorted
path order, with exact duplicates (same SHA-256) dropped, symbol, dingbat and math fonts
(SKIP) dropped, and a font kept only if it has every digit and Latin letter of CLASSES
(which leaves out Noto's fonts for other scripts). Within a kept font, a character is drawn
only where the font's cmap really maps it: with Pillow's basic layout a missing character
renders the font's `.notdef` glyph, so a glyph whose bitmap equals that of U+10FFFD (a
private-use code point no font here maps) or that has no ink counts as absent.

Classes (CLASSES): the 10 digits, the 52 Latin letters, and the Greek and Cyrillic letters
that do not look like a Latin (or, for Cyrillic, Greek) letter in most fonts: Greek capitals
without Α Β Ε Ζ Η Ι Κ Μ Ν Ο Ρ Τ Υ Χ, Greek small letters (with final sigma) without ο,
Cyrillic capitals without А В Е К М Н О Р С Т Х (Latin) and Г П Ф (Greek), Cyrillic small
letters without а е о р с у х. Homoglyphs would be one shape under two labels.

Drawing: one scale per font, so that capitals stay larger than small letters (c/C, o/O,
s/S ... differ only in size) and descenders stay below the baseline. At 200 px the ink box
of every drawn glyph of the font is measured from the baseline; the font is then drawn at
the size at which the widest glyph and the union of all glyphs' vertical extents fit in
64 px. Each glyph is centred horizontally on its own ink; vertically every glyph of a font
shares one baseline, placed so that the font's union extent is centred in the canvas.
Antialiased grey ink (Pillow's FreeType rendering), no randomness: the output is a function
of the installed font files and the Pillow/FreeType versions.

numpy and Pillow only.

    apt-get install fonts-... (PACKAGES)
    .venv/bin/python tools/make_glyphs.py --out data/glyphs/src
    dml prepare --format csv --src data/glyphs/src/glyphs.csv --out data/glyphs --size 72
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFont, features

PACKAGES = [
    "fonts-cantarell",
    "fonts-comfortaa",
    "fonts-croscore",
    "fonts-crosextra-caladea",
    "fonts-crosextra-carlito",
    "fonts-dejavu-core",
    "fonts-dejavu-extra",
    "fonts-ebgaramond",
    "fonts-freefont-ttf",
    "fonts-gfs-didot",
    "fonts-lato",
    "fonts-liberation2",
    "fonts-linuxlibertine",
    "fonts-noto-core",
    "fonts-open-sans",
    "fonts-paratype",
    "fonts-roboto-unhinted",
    "fonts-texgyre",
    "fonts-urw-base35",
]
"""The Debian packages whose fonts are drawn (fonts-roboto is a metapackage: its files are
in fonts-roboto-unhinted)."""

SKIP = ("Dingbat", "D050000L", "StandardSymbols", "Symbol", "Math", "Emoji")
"""Font files whose name contains one of these are not text fonts."""


def _letters(first, last, drop=""):
    return [chr(c) for c in range(ord(first), ord(last) + 1) if chr(c) not in drop and
            not 0x03A2 == c]  # U+03A2 is unassigned


DIGITS_LATIN = _letters("0", "9") + _letters("A", "Z") + _letters("a", "z")
GREEK_UPPER = _letters("Α", "Ω", drop="ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ")
GREEK_LOWER = _letters("α", "ω", drop="ο")
CYRILLIC_UPPER = ["Ё"] + _letters("А", "Я", drop="АВЕКМНОРСТХГПФ")
CYRILLIC_LOWER = _letters("а", "я", drop="аеорсух") + ["ё"]
CLASSES = sorted(DIGITS_LATIN + GREEK_UPPER + GREEK_LOWER + CYRILLIC_UPPER + CYRILLIC_LOWER)

CANVAS = 72
BOX = 64
PROBE = 200
ABSENT = chr(0x10FFFD)


def class_name(ch):
    return f"U+{ord(ch):04X}"


def dpkg_versions(packages):
    versions, pkg = {}, None
    with open("/var/lib/dpkg/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("Package: "):
                pkg = line.split(":", 1)[1].strip()
            elif line.startswith("Status: ") and pkg in packages and "installed" not in line.split()[-1:]:
                pkg = None
            elif line.startswith("Version: ") and pkg in packages:
                versions[pkg] = line.split(":", 1)[1].strip()
    missing = [p for p in packages if p not in versions]
    if missing:
        sys.exit(f"make_glyphs: not installed: {' '.join(missing)} (apt-get install them)")
    return versions


def font_files(packages):
    files = []
    for p in packages:
        lst = f"/var/lib/dpkg/info/{p}.list"
        if not os.path.exists(lst):
            lst = next((os.path.join("/var/lib/dpkg/info", n) for n in sorted(os.listdir("/var/lib/dpkg/info"))
                        if n.startswith(p + ":") and n.endswith(".list")), lst)
        with open(lst, encoding="utf-8") as f:
            for line in f:
                path = line.strip()
                if path.lower().endswith((".ttf", ".otf")) and os.path.isfile(path):
                    files.append((path, p))
    return sorted(files)


def ink(font, ch):
    """The glyph's 8-bit coverage bitmap (h, w) as drawn by FreeType, and its box."""
    mask = font.getmask(ch)
    return np.asarray(mask, dtype=np.uint8).reshape(mask.size[1], mask.size[0])


def present(font, ch, notdef):
    m = ink(font, ch)
    if m.size == 0 or m.max() == 0:
        return False
    return not (m.shape == notdef.shape and np.array_equal(m, notdef))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    versions = dpkg_versions(PACKAGES)
    seen, fonts = set(), []
    for path, pkg in font_files(PACKAGES):
        if any(s.lower() in os.path.basename(path).lower() for s in SKIP):
            continue
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        if sha in seen:
            continue
        seen.add(sha)
        try:
            font = ImageFont.truetype(path, PROBE, layout_engine=ImageFont.Layout.BASIC)
        except OSError as e:
            print(f"skip {path}: {e}", file=sys.stderr)
            continue
        notdef = ink(font, ABSENT)
        have = [ch for ch in CLASSES if present(font, ch, notdef)]
        if not set(DIGITS_LATIN) <= set(have):
            continue
        fonts.append((path, pkg, sha, have))

    os.makedirs(args.out, exist_ok=True)
    rows, table = [], []
    for fid, (path, pkg, sha, have) in enumerate(fonts):
        font = ImageFont.truetype(path, PROBE, layout_engine=ImageFont.Layout.BASIC)
        boxes = [font.getbbox(ch, anchor="ls") for ch in have]
        width = max(b[2] - b[0] for b in boxes)
        top, bottom = min(b[1] for b in boxes), max(b[3] for b in boxes)
        size = max(1, int(PROBE * BOX / max(width, bottom - top)))
        font = ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)
        boxes = [font.getbbox(ch, anchor="ls") for ch in have]
        top, bottom = min(b[1] for b in boxes), max(b[3] for b in boxes)
        baseline = (CANVAS - (bottom - top)) // 2 - top
        for ch, (x0, _, x1, _) in zip(have, boxes):
            img = Image.new("L", (CANVAS, CANVAS), 255)
            x = (CANVAS - (x1 - x0)) // 2 - x0
            ImageDraw.Draw(img).text((x, baseline), ch, font=font, fill=0, anchor="ls")
            rel = f"png/{class_name(ch)}/{fid:03d}.png"
            os.makedirs(os.path.join(args.out, os.path.dirname(rel)), exist_ok=True)
            img.convert("RGB").save(os.path.join(args.out, rel), optimize=False)
            rows.append((rel, class_name(ch)))
        table.append((fid, pkg, versions[pkg], path, sha, len(have), size))

    rows.sort(key=lambda r: (r[1], r[0]))
    with open(os.path.join(args.out, "glyphs.csv"), "w", encoding="utf-8") as f:
        for rel, label in rows:
            f.write(f"{rel},{label}\n")
    with open(os.path.join(args.out, "fonts.csv"), "w", encoding="utf-8") as f:
        f.write("id,package,version,file,sha256,classes,pixel_size\n")
        for t in table:
            f.write(",".join(str(v) for v in t) + "\n")
    per_class = {class_name(ch): sum(ch in have for *_, have in fonts) for ch in CLASSES}
    half = (len(CLASSES) + 1) // 2  # dml prepare: the first half rounded up trains
    names = sorted(per_class)
    summary = {
        "classes": len(CLASSES),
        "fonts": len(fonts),
        "images": len(rows),
        "train_classes": names[:half],
        "test_classes": names[half:],
        "train_images": sum(per_class[n] for n in names[:half]),
        "test_images": sum(per_class[n] for n in names[half:]),
        "min_images_per_class": min(per_class.values()),
        "images_per_class": per_class,
        "packages": {p: versions[p] for p in PACKAGES},
        "fonts_per_package": {p: sum(t[1] == p for t in table) for p in PACKAGES},
        "pillow": PIL.__version__,
        "freetype": features.version("freetype2"),
    }
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    print(json.dumps({k: summary[k] for k in ("classes", "fonts", "images", "train_images", "test_images",
                                               "min_images_per_class", "fonts_per_package", "pillow", "freetype")}))


if __name__ == "__main__":
    main()
