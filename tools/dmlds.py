#!/usr/bin/env python3
"""Read dml's `.dmlds` dataset files from Python, with numpy and the standard library only.

The format is described byte by byte in docs/dmlds.md. The file is memory-mapped, never
read whole: opening reads the 64-byte preamble, the index, the labels and the JSON
metadata and checks them as dml's reader does (magic, version, every length against the
file size, every index entry inside the pixel section, every label naming a class); any
defect is a ValueError whose message names the file and what is wrong. Pixel bytes are
only read when an image is asked for, or by `verify()`, which recomputes both CRC-32s
exactly as `dml info --verify` does.

    import dmlds                         # tools/ on sys.path, or load it by path
    with dmlds.open("data/cub/train.dmlds") as d:
        image, label = d[0]              # uint8 array (H, W, 3) RGB, int label
        print(len(d), d.classes[label], d.paths[0], image.shape)
        d.verify()                       # ValueError on a checksum mismatch

    .venv/bin/python tools/dmlds.py FILE [--verify]    # prints a JSON summary

`d[i]` returns a copy of the record (a writable array that outlives `close()`); images
of one file may differ in height and width.
"""
import argparse
import io
import json
import mmap
import os
import struct
import sys
import zlib

import numpy as np

MAGIC = b"DMLDS\0\r\n"
VERSION = 1
PAGE = 4096
PREAMBLE_LEN = 64
INDEX_ENTRY_LEN = 16
U64_MAX = (1 << 64) - 1

# magic, version, meta_crc, count, index_offset, labels_offset, meta_offset, meta_len, total_size
_PREAMBLE = struct.Struct("<8sII6Q")
_INDEX = np.dtype([("offset", "<u8"), ("height", "<u4"), ("width", "<u4")])
assert _PREAMBLE.size == PREAMBLE_LEN and _INDEX.itemsize == INDEX_ENTRY_LEN

_FIELDS = ("class_names", "sources", "preprocessing", "checksum")


def _no_duplicate_fields(pairs):
    seen = set()
    for k, _ in pairs:
        if k in _FIELDS and k in seen:
            raise ValueError(f"duplicate field `{k}`")
        seen.add(k)
    return dict(pairs)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _string_list(meta, key, required):
    if key not in meta:
        if required:
            raise ValueError(f"missing field `{key}`")
        return []
    v = meta[key]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"`{key}` must be a list of strings")
    for s in v:
        s.encode("utf-8")  # a lone surrogate escape is not a string to serde either
    return v


def _parse_meta(raw):
    """The metadata as dml's serde reader accepts it: an object with `class_names`
    (required list of strings), `sources` (list of strings), `preprocessing` (string)
    and `checksum` (u32); other fields are ignored."""
    meta = json.loads(
        raw.decode("utf-8"),
        object_pairs_hook=_no_duplicate_fields,
        parse_constant=_no_constant,
    )
    if not isinstance(meta, dict):
        raise ValueError("expected a JSON object")
    class_names = _string_list(meta, "class_names", True)
    sources = _string_list(meta, "sources", False)
    preprocessing = meta.get("preprocessing", "")
    if not isinstance(preprocessing, str):
        raise ValueError("`preprocessing` must be a string")
    preprocessing.encode("utf-8")
    checksum = meta.get("checksum", 0)
    if isinstance(checksum, bool) or not isinstance(checksum, int) or not 0 <= checksum <= 0xFFFFFFFF:
        raise ValueError("`checksum` must be an integer in [0, 2^32)")
    return class_names, sources, preprocessing, checksum


class Dataset:
    """A read-only, memory-mapped `.dmlds` file; see `open`."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._mm = None
        with io.open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                self._bad(
                    f"the file is empty (0 bytes; expected at least the {PREAMBLE_LEN}-byte header); "
                    "re-create it with `dml prepare` or `dml synth`"
                )
            if size < PREAMBLE_LEN:
                self._bad(
                    f"the file is {size} bytes, shorter than the {PREAMBLE_LEN}-byte header "
                    f"(expected at least {PREAMBLE_LEN} bytes, found {size}): truncated or not a dml "
                    "dataset; re-create it with `dml prepare` or `dml synth`"
                )
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._open(mm, size)
        except BaseException:
            mm.close()
            raise
        self._mm = mm

    def _bad(self, msg):
        raise ValueError(f"dataset {self.path}: {msg}")

    def _open(self, mm, size):
        magic, version, meta_crc, count, index_offset, labels_offset, meta_offset, meta_len, total = (
            _PREAMBLE.unpack_from(mm, 0)
        )
        if magic != MAGIC:
            self._bad(
                f"not a dml dataset: the first bytes are {magic.hex()}, expected the magic {MAGIC.hex()} "
                f"({size} bytes); create one with `dml prepare` or `dml synth`"
            )
        if version != VERSION:
            self._bad(
                f"format version {version}, this dml reads version {VERSION}; "
                "re-create the file with this dml's `dml prepare`"
            )
        if total != size:
            if size < total:
                at = "file"
                for end, name in (
                    (PAGE, "header page"),
                    (index_offset, "pixel records"),
                    (labels_offset, "index"),
                    (meta_offset, "labels"),
                    (total, "metadata"),
                ):
                    if size < end:
                        at = name
                        break
                section = f"truncated: it ends inside the {at}, {total - size} bytes short"
            else:
                section = f"{size - total} unexpected trailing bytes"
            self._bad(f"expected {total} bytes (from its header), found {size}: {section}; re-create it")
        consistent = (
            index_offset >= PAGE
            and labels_offset >= index_offset
            and count * INDEX_ENTRY_LEN == labels_offset - index_offset
            and meta_offset >= labels_offset
            and count * 4 == meta_offset - labels_offset
            and meta_offset + meta_len == total
        )
        if not consistent:
            self._bad(
                f"header sections are inconsistent: {count} records need an index of "
                f"{min(count * INDEX_ENTRY_LEN, U64_MAX)} bytes and labels of {min(count * 4, U64_MAX)} bytes, "
                f"but the header puts the index at {index_offset}, labels at {labels_offset}, metadata at "
                f"{meta_offset} ({meta_len} bytes) in a file of {size} bytes; the file is corrupt"
            )
        if count == 0:
            self._bad(f"the file holds no images ({size} bytes); re-create it from a non-empty source")
        try:
            class_names, sources, preprocessing, checksum = _parse_meta(mm[meta_offset : meta_offset + meta_len])
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._bad(
                f"metadata ({meta_len} bytes at {meta_offset}) is not valid JSON: {e}; the file is corrupt"
            )
        if sources and len(sources) != count:
            self._bad(f"metadata lists {len(sources)} source paths for {count} images; the file is corrupt")

        index = np.frombuffer(mm, _INDEX, count, index_offset).copy()
        labels = np.frombuffer(mm, "<u4", count, labels_offset).astype(np.int64)
        offsets = index["offset"]
        heights = index["height"].astype(np.uint64)
        widths = index["width"].astype(np.uint64)
        hw = heights * widths  # < 2^64: no overflow
        too_big = hw > np.uint64(U64_MAX // 3)
        lens = np.where(too_big, np.uint64(0), hw * np.uint64(3))
        ends = offsets + lens
        wrapped = too_big | (ends < offsets)
        prev_ends = np.concatenate([np.array([PAGE], np.uint64), ends[:-1]])
        bad_entry = (
            (offsets < prev_ends)
            | (offsets % np.uint64(PAGE) != 0)
            | (heights == 0)
            | (widths == 0)
            | wrapped
            | (ends > np.uint64(index_offset))
        )
        bad_label = labels >= len(class_names)
        bad = np.flatnonzero(bad_entry | bad_label)
        if bad.size:
            i = int(bad[0])
            if bad_entry[i]:
                h, w, off = int(heights[i]), int(widths[i]), int(offsets[i])
                prev = int(prev_ends[i])
                self._bad(
                    f"index entry {i} is inconsistent: a {h}×{w}×3 record ({h * w * 3} bytes) at byte {off} "
                    f"does not fit the pixel section [{prev}, {index_offset}) on a {PAGE}-byte page; "
                    "the file is corrupt"
                )
            self._bad(
                f"record {i} has label {int(labels[i])} but the metadata names {len(class_names)} classes; "
                "the file is corrupt"
            )

        self._offsets = offsets
        self._heights = index["height"].astype(np.int64)
        self._widths = index["width"].astype(np.int64)
        self.labels = labels
        """Label (class index) of every image, an int64 array."""
        self.classes = class_names
        """Class names, indexed by label."""
        self.paths = list(sources) if sources else [""] * count
        """Source path of every image (the metadata's `sources`; "" where the file has none)."""
        self.preprocessing = preprocessing
        """How the pixels were produced, as recorded by the writer ("" if not recorded)."""
        self.checksum = checksum
        """CRC-32 of the records, index and labels, as stored in the metadata."""
        self.meta_crc = meta_crc
        """CRC-32 of the JSON metadata, as stored in the preamble."""
        self.size = size
        self._body_end = meta_offset

    def __len__(self):
        return len(self._offsets)

    def _index(self, i):
        n = len(self._offsets)
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, not {type(i).__name__}")
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"dataset index out of range (len {n})")
        return i

    def _map(self):
        if self._mm is None:
            raise ValueError(f"dataset {self.path}: the file is closed")
        return self._mm

    def dims(self, i):
        """(height, width) of image `i` without touching its pixels."""
        i = self._index(i)
        return int(self._heights[i]), int(self._widths[i])

    def image(self, i):
        """Image `i`: a new uint8 array of shape (height, width, 3), RGB."""
        i = self._index(i)
        mm = self._map()
        h, w = int(self._heights[i]), int(self._widths[i])
        return np.frombuffer(mm, np.uint8, h * w * 3, int(self._offsets[i])).reshape(h, w, 3).copy()

    def __getitem__(self, i):
        i = self._index(i)
        return self.image(i), int(self.labels[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def verify(self):
        """Recomputes the CRC-32 of bytes [4096, meta_offset) (records with their page
        padding, index, labels) and of bytes [meta_offset, end of file) (the JSON metadata)
        and compares them with the stored ones, in that order, as dml's verify does; raises
        ValueError naming the file and the part that differs."""
        mm = self._map()
        with memoryview(mm) as view:
            crc = 0
            for start in range(PAGE, self._body_end, 1 << 24):
                crc = zlib.crc32(view[start : min(start + (1 << 24), self._body_end)], crc)
            if crc != self.checksum:
                self._bad(
                    f"checksum mismatch in the pixel records, index or labels: stored {self.checksum:08x}, "
                    f"computed {crc:08x}; the file is corrupt, re-create it"
                )
            crc = zlib.crc32(view[self._body_end :])
            if crc != self.meta_crc:
                self._bad(
                    f"checksum mismatch in the metadata: stored {self.meta_crc:08x}, computed {crc:08x}; "
                    "the file is corrupt, re-create it"
                )

    def close(self):
        """Unmaps the file; images already returned stay valid (they are copies)."""
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        return f"<dmlds.Dataset {self.path!r}: {len(self)} images, {len(self.classes)} classes>"


def open(path):  # noqa: A001 (the module's entry point, like io.open)
    """Opens and checks the `.dmlds` file at `path`; raises ValueError (naming the file)
    if it is not a valid dataset file, OSError if it cannot be read."""
    return Dataset(path)


def summary(d):
    """The JSON summary printed by `python tools/dmlds.py FILE`."""
    image, label = d[0]
    counts = np.bincount(d.labels, minlength=len(d.classes))
    return {
        "len": len(d),
        "classes": d.classes,
        "first": {"label": label, "shape": list(image.shape), "sum": int(image.sum(dtype=np.uint64))},
        "label_counts": {str(c): int(n) for c, n in enumerate(counts)},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a .dmlds file")
    ap.add_argument("--verify", action="store_true", help="also recompute both CRC-32s")
    args = ap.parse_args(argv)
    try:
        with open(args.file) as d:
            if args.verify:
                d.verify()
            print(json.dumps(summary(d)))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
