#!/usr/bin/env python3
"""Read dml's `.dmlds` dataset files (versions 1 and 2) from Python, with numpy and the
standard library only.

The format is described byte by byte in docs/dmlds.md. The file is memory-mapped, never
read whole. Opening runs the checks of dml's reader (`Dataset::open`) in its order and with
its messages: a regular file, the magic, the version, every offset and length against the
file size, the CRC-32 of the header, index, labels and record CRCs (version 2), the CRC-32
of the JSON metadata, every index entry inside the pixel section and every label naming a
class. Any defect is a ValueError whose message names the file and what is wrong.

Pixel bytes are only read when an image is asked for. In a version 2 file every record has
its own CRC-32, and `d[i]` / `d.image(i)` check it each time (as dml's loaders do with
`Dataset::checked_image`): a damaged image is a ValueError
"dataset PATH: image i (source) is damaged: ...", never silently wrong pixels. Pass
`d.image(i, check=False)` to skip the check. A version 1 file has no record CRCs: its images
are returned unchecked (`d.version` says which). `verify()` recomputes every checksum in the
order `dml info --verify` does.

    import dmlds                         # tools/ on sys.path, or load it by path
    with dmlds.open("data/cub/train.dmlds") as d:
        image, label = d[0]              # uint8 array (H, W, 3) RGB, int label; CRC checked
        print(len(d), d.version, d.classes[label], d.paths[0], image.shape)
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
import stat
import struct
import sys
import zlib

import numpy as np

MAGIC = b"DMLDS\0\r\n"
VERSION = 2
"""The format version dml writes; versions 1 and 2 are read."""
MAX_SIDE = 1 << 15
"""The longest side a record may have (dml's `MAX_SIDE`)."""
PAGE = 4096
PREAMBLE_LEN = 64
PREAMBLE_V2_LEN = 80
TABLES_CRC_AT = 72
INDEX_ENTRY_LEN = 16
U64_MAX = (1 << 64) - 1

# magic, version, meta_crc, count, index_offset, labels_offset, meta_offset, meta_len, total_size
_PREAMBLE = struct.Struct("<8sII6Q")
# version 2: crcs_offset, tables_crc, 4 zero bytes
_PREAMBLE_V2 = struct.Struct("<QI4x")
_INDEX = np.dtype([("offset", "<u8"), ("height", "<u4"), ("width", "<u4")])
assert _PREAMBLE.size == PREAMBLE_LEN and _INDEX.itemsize == INDEX_ENTRY_LEN
assert PREAMBLE_LEN + _PREAMBLE_V2.size == PREAMBLE_V2_LEN

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


def _crc(view, start, end, crc=0):
    """CRC-32 of view[start:end], fed to zlib in 16 MiB chunks."""
    for at in range(start, end, 1 << 24):
        crc = zlib.crc32(view[at : min(at + (1 << 24), end)], crc)
    return crc


class Dataset:
    """A read-only, memory-mapped `.dmlds` file (version 1 or 2); see `open`."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._mm = None
        # Before opening: opening a FIFO would block until a writer appears.
        mode = os.stat(self.path).st_mode
        if stat.S_ISDIR(mode):
            self._bad(
                "is a directory, not a dataset file; give the .dmlds file in it (e.g. DIR/train.dmlds)"
            )
        if not stat.S_ISREG(mode):
            self._bad(
                "is not a regular file (a FIFO, socket or device); dml maps dataset files into memory: "
                "give the .dmlds file itself"
            )
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
        # Python integers do not overflow: a sum or product that dml's checked u64
        # arithmetic refuses is here a number ≥ 2^64, which equals no stored u64 offset.
        magic, version, meta_crc, count, index_offset, labels_offset, meta_offset, meta_len, total = (
            _PREAMBLE.unpack_from(mm, 0)
        )
        if magic != MAGIC:
            self._bad(
                f"not a dml dataset: the first bytes are {magic.hex()}, expected the magic {MAGIC.hex()} "
                f"({size} bytes); create one with `dml prepare` or `dml synth`"
            )
        if version not in (1, VERSION):
            self._bad(
                f"format version {version}, this dml reads versions 1 and {VERSION}; "
                "re-create the file with this dml's `dml prepare`"
            )
        if version >= 2 and size < PREAMBLE_V2_LEN:
            self._bad(
                f"the file is {size} bytes, shorter than the {PREAMBLE_V2_LEN}-byte header of version "
                f"{version}: truncated; re-create it"
            )
        if total != size:
            if size < total:
                at = "file"
                # Version 1 has no record CRCs: their section is empty.
                crcs = meta_offset if version == 1 else struct.unpack_from("<Q", mm, 64)[0]
                for end, name in (
                    (PAGE, "header page"),
                    (index_offset, "pixel records"),
                    (labels_offset, "index"),
                    (crcs, "labels"),
                    (meta_offset, "record CRCs"),
                    (total, "metadata"),
                ):
                    if size < end:
                        at = name
                        break
                section = f"truncated: it ends inside the {at}, {total - size} bytes short"
            else:
                section = f"{size - total} unexpected trailing bytes"
            self._bad(f"expected {total} bytes (from its header), found {size}: {section}; re-create it")
        if version == 1:
            # No record CRCs: the (empty) section ends where the labels do.
            crcs_offset, crcs_len, tables_crc = labels_offset + 4 * count, 0, None
        else:
            (crcs_offset, tables_crc), crcs_len = _PREAMBLE_V2.unpack_from(mm, PREAMBLE_LEN), 4
        consistent = (
            index_offset >= PAGE
            and index_offset + INDEX_ENTRY_LEN * count == labels_offset
            and labels_offset + 4 * count == crcs_offset
            and crcs_offset + crcs_len * count == meta_offset
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
        # Every offset now lies within the file.
        with memoryview(mm) as view:
            if version >= 2:
                got = _crc(view, index_offset, meta_offset, zlib.crc32(view[:TABLES_CRC_AT]))
                if got != tables_crc:
                    self._bad(
                        f"checksum mismatch in the header, index, labels or record CRCs: stored {tables_crc:08x}, "
                        f"computed {got:08x}; the file is corrupt, re-create it"
                    )
            got = _crc(view, meta_offset, size)
            if got != meta_crc:
                self._bad(
                    f"checksum mismatch in the metadata: stored {meta_crc:08x}, computed {got:08x}; "
                    "the file is corrupt, re-create it"
                )
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
        too_big = hw > np.uint64(U64_MAX // 3)  # h·w·3 overflows u64
        lens = np.where(too_big, np.uint64(0), hw * np.uint64(3))
        ends = offsets + lens
        wrapped = too_big | (ends < offsets)  # offset + h·w·3 overflows u64
        # Entry i is checked against the end of entry i - 1, which passed when i is the
        # first entry to fail.
        prev_ends = np.concatenate([np.array([PAGE], np.uint64), ends[:-1]])
        bad_entry = (
            wrapped
            | (offsets < prev_ends)
            | (offsets % np.uint64(PAGE) != 0)
            | (heights == 0)
            | (widths == 0)
            | (heights > np.uint64(MAX_SIDE))
            | (widths > np.uint64(MAX_SIDE))
            | (ends > np.uint64(index_offset))
        )
        bad_label = labels >= len(class_names)
        bad = np.flatnonzero(bad_entry | bad_label)
        if bad.size:
            i = int(bad[0])
            if bad_entry[i]:
                h, w, off = int(heights[i]), int(widths[i]), int(offsets[i])
                n = h * w * 3
                length = f"{n} bytes" if n <= U64_MAX else "more than 2^64 bytes"
                self._bad(
                    f"index entry {i} is inconsistent: a {h}×{w}×3 record ({length}) at byte {off} "
                    f"does not fit the pixel section [{int(prev_ends[i])}, {index_offset}) on a {PAGE}-byte "
                    f"page with sides of at most {MAX_SIDE}; the file is corrupt"
                )
            self._bad(
                f"record {i} has label {int(labels[i])} but the metadata names {len(class_names)} classes; "
                "the file is corrupt"
            )

        self.version = version
        """The format version of the file: 1 or 2."""
        self.record_crcs = (
            np.frombuffer(mm, "<u4", count, crcs_offset).astype(np.uint32)
            if version >= 2
            else np.zeros(0, np.uint32)
        )
        """CRC-32 of each record's pixels as stored (version 2; empty for version 1)."""
        self._offsets = offsets
        self._heights = index["height"].astype(np.int64)
        self._widths = index["width"].astype(np.int64)
        self.labels = labels
        """Label (class index) of every image, an int64 array."""
        self.classes = class_names
        """Class names, indexed by label."""
        self._sources = sources
        self.paths = list(sources) if sources else [""] * count
        """Source path of every image (the metadata's `sources`; "" where the file has none)."""
        self.preprocessing = preprocessing
        """How the pixels were produced, as recorded by the writer ("" if not recorded)."""
        self.checksum = checksum
        """CRC-32 of bytes [4096, meta_offset) as stored in the metadata: the records with
        their padding, the index, the labels and (version 2) the record CRCs."""
        self.meta_crc = meta_crc
        """CRC-32 of the JSON metadata, as stored in the preamble."""
        self.tables_crc = tables_crc
        """CRC-32 of preamble bytes 0..72 and the index, labels and record CRCs, as stored
        in the preamble (version 2; None for version 1)."""
        self.size = size
        self._body_end = meta_offset

    def __len__(self):
        return len(self._offsets)

    def _index(self, i):
        n = len(self._offsets)
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, not {type(i).__name__}")
        i = int(i)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"image index {i} is out of range for {self.path}, which has {n} images")
        return j

    def _map(self):
        if self._mm is None:
            raise ValueError(f"dataset {self.path}: the file is closed")
        return self._mm

    def _damaged(self, i, stored, got):
        source = f" ({self._sources[i]})" if i < len(self._sources) else ""
        return (
            f"image {i}{source} is damaged: its pixels have CRC-32 {got:08x}, the file recorded "
            f"{stored:08x}; re-create the file (dml prepare)"
        )

    def dims(self, i):
        """(height, width) of image `i` without touching its pixels."""
        i = self._index(i)
        return int(self._heights[i]), int(self._widths[i])

    def image(self, i, check=True):
        """Image `i`: a new uint8 array of shape (height, width, 3), RGB. In a version 2
        file its CRC-32 is checked (unless `check=False`): a damaged record is a
        ValueError naming the file, the image and its source, as dml's
        `Dataset::checked_image`. A version 1 file has no record CRCs to check."""
        i = self._index(i)
        mm = self._map()
        h, w = int(self._heights[i]), int(self._widths[i])
        img = np.frombuffer(mm, np.uint8, h * w * 3, int(self._offsets[i])).copy()
        if check and i < len(self.record_crcs):
            # The CRC of the copy: the bytes returned are the bytes checked.
            got, stored = zlib.crc32(img), int(self.record_crcs[i])
            if got != stored:
                self._bad(self._damaged(i, stored, got))
        return img.reshape(h, w, 3)

    def __getitem__(self, i):
        """(image, label) of record `i`, the image checked as by `image(i)`."""
        i = self._index(i)
        return self.image(i), int(self.labels[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def verify(self):
        """Recomputes every checksum and compares it with the stored one, in the order of
        dml's `Dataset::verify`: the CRC-32 of the JSON metadata (bytes [meta_offset, end of
        file)), then (version 2) each record's CRC-32, then the CRC-32 of bytes [4096,
        meta_offset) (records with their page padding, index, labels, record CRCs). Raises
        ValueError naming the file and the part, or the image, that differs."""
        mm = self._map()
        with memoryview(mm) as view:
            crc = _crc(view, self._body_end, len(view))
            if crc != self.meta_crc:
                self._bad(
                    f"checksum mismatch in the metadata: stored {self.meta_crc:08x}, computed {crc:08x}; "
                    "the file is corrupt, re-create it"
                )
            for i, stored in enumerate(self.record_crcs.tolist()):
                start = int(self._offsets[i])
                end = start + int(self._heights[i]) * int(self._widths[i]) * 3
                crc = _crc(view, start, end)
                if crc != stored:
                    self._bad(self._damaged(i, stored, crc))
            crc = _crc(view, PAGE, self._body_end)
            if crc != self.checksum:
                self._bad(
                    f"checksum mismatch in the pixel records, index or labels: stored {self.checksum:08x}, "
                    f"computed {crc:08x}; the file is corrupt, re-create it"
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
        return (
            f"<dmlds.Dataset {self.path!r}: version {self.version}, {len(self)} images, "
            f"{len(self.classes)} classes>"
        )


def open(path):  # noqa: A001 (the module's entry point, like io.open)
    """Opens and checks the `.dmlds` file at `path` (version 1 or 2); raises ValueError
    (naming the file) if it is not a valid dataset file, OSError if it cannot be read."""
    return Dataset(path)


def summary(d):
    """The JSON summary printed by `python tools/dmlds.py FILE` (reads image 0, checked)."""
    image, label = d[0]
    counts = np.bincount(d.labels, minlength=len(d.classes))
    return {
        "version": d.version,
        "len": len(d),
        "classes": d.classes,
        "first": {"label": label, "shape": list(image.shape), "sum": int(image.sum(dtype=np.uint64))},
        "label_counts": {str(c): int(n) for c, n in enumerate(counts)},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a .dmlds file")
    ap.add_argument("--verify", action="store_true", help="also recompute every CRC-32 (as dml info --verify)")
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
