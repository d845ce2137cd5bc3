//! The `.dmlds` file: round trip, and every kind of damage turned into a clear
//! `Error::Dataset` naming the file (and the sizes where sizes are involved).
mod common;

use std::path::{Path, PathBuf};

use common::{dmlds_tables, u64_at};
use dml::data::format::{info_report, Dataset, DatasetWriter, Metadata, PAGE};
use dml::Error;

/// Three records of different sizes; pixel bytes are a function of (record, byte).
fn records() -> Vec<(Vec<u8>, u32, u32, u32)> {
    [(2u32, 3u32, 0u32), (5, 4, 1), (1, 7, 0)]
        .iter()
        .enumerate()
        .map(|(r, &(h, w, l))| {
            let px = (0..h * w * 3)
                .map(|b| (b as usize * 7 + r * 31) as u8)
                .collect();
            (px, h, w, l)
        })
        .collect()
}

fn meta() -> Metadata {
    Metadata {
        class_names: vec!["alpha".into(), "beta".into()],
        sources: vec!["a.jpg".into(), "b.jpg".into(), "c.png".into()],
        preprocessing: "shorter side 256, RGB".into(),
        checksum: 0,
    }
}

fn write(dir: &Path) -> PathBuf {
    let path = dir.join("ds.dmlds");
    let mut w = DatasetWriter::create(&path).unwrap();
    for (px, h, w_, l) in records() {
        w.push(&px, h, w_, l).unwrap();
    }
    w.finish(meta()).unwrap();
    path
}

/// The message of an `Error::Dataset` for `path`; panics on any other outcome.
fn dataset_error(path: &Path) -> String {
    match Dataset::open(path) {
        Err(Error::Dataset { path: p, msg }) => {
            assert_eq!(p, path);
            let shown = Error::dataset(&p, msg.clone()).to_string();
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            msg
        }
        Err(e) => panic!("expected a dataset error, got {e}"),
        Ok(_) => panic!("{} opened despite the damage", path.display()),
    }
}

#[test]
fn round_trip_keeps_pixels_labels_sizes_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path());
    assert!(!tmp.path().join("ds.dmlds.tmp").exists());
    let ds = Dataset::open(&path).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.num_classes(), 2);
    assert_eq!(ds.labels(), &[0, 1, 0]);
    for (i, (px, h, w, l)) in records().into_iter().enumerate() {
        let img = ds.image(i);
        assert_eq!((img.height, img.width), (h as usize, w as usize));
        assert_eq!(ds.dims(i), (h as usize, w as usize));
        assert_eq!(img.pixels, &px[..]);
        assert_eq!(ds.label(i), l);
    }
    assert_eq!(ds.class_name(1), Some("beta"));
    assert_eq!(ds.class_name(2), None);
    let m = ds.meta();
    assert_eq!(m.class_names, meta().class_names);
    assert_eq!(m.sources, meta().sources);
    assert_eq!(m.preprocessing, meta().preprocessing);
    // The stored checksum is the CRC-32 of everything between the header page and the
    // metadata (records with their page padding, index, labels, record CRCs).
    let bytes = std::fs::read(&path).unwrap();
    let meta_offset = u64_at(&bytes, 40) as usize;
    assert_eq!(
        m.checksum,
        crc32fast::hash(&bytes[PAGE as usize..meta_offset])
    );
    ds.verify().unwrap();
    // Each record's CRC-32 (4 bytes per record between the labels and the metadata).
    let crcs = u64_at(&bytes, 64) as usize;
    assert_eq!(crcs, u64_at(&bytes, 32) as usize + 4 * 3);
    for (i, (px, ..)) in records().into_iter().enumerate() {
        let stored = u32::from_le_bytes(bytes[crcs + 4 * i..crcs + 4 * i + 4].try_into().unwrap());
        assert_eq!(stored, crc32fast::hash(&px));
        assert_eq!(ds.checked_image(i).unwrap().pixels, &px[..]);
    }
    assert!(ds
        .checked_image(3)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    // Records start on pages: 3 records of < 1 page each, so the index is at 4 pages.
    assert_eq!(u64_at(&bytes, 24), 4 * PAGE);
    assert_eq!(ds.size_bytes(), bytes.len() as u64);

    let info = info_report(&ds);
    for needle in [
        path.display().to_string(),
        "version 2".into(),
        "images         3".into(),
        "classes        2 (alpha, beta)".into(),
        "height 1–5 × width 3–7".into(),
        format!("file bytes     {}", bytes.len()),
        // 2·3 + 5·4 + 1·7 = 33 pixels of 3 bytes.
        "pixel bytes    99".into(),
        "1–2 images per class".into(),
        "shorter side 256, RGB".into(),
    ] {
        assert!(info.contains(&needle), "{needle:?} not in\n{info}");
    }
}

#[test]
fn truncation_anywhere_names_file_and_both_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    let total = bytes.len();
    let (index, labels, meta) = (
        u64_at(&bytes, 24) as usize,
        u64_at(&bytes, 32) as usize,
        u64_at(&bytes, 40) as usize,
    );
    let cut = tmp.path().join("cut.dmlds");
    // Inside the 64-byte preamble: only the actual size can be known.
    for at in [1usize, 10, 63] {
        std::fs::write(&cut, &bytes[..at]).unwrap();
        let msg = dataset_error(&cut);
        assert!(msg.contains(&format!("found {at}")), "{msg}");
        assert!(msg.contains("64"), "{msg}");
    }
    for (at, section) in [
        (100, "header page"),
        (PAGE as usize + 5, "pixel records"),
        (index + 3, "index"),
        (labels + 2, "labels"),
        (u64_at(&bytes, 64) as usize + 1, "record CRCs"),
        (meta + 1, "metadata"),
        (total - 1, "metadata"),
    ] {
        std::fs::write(&cut, &bytes[..at]).unwrap();
        let msg = dataset_error(&cut);
        assert!(
            msg.contains(&format!("expected {total} bytes"))
                && msg.contains(&format!("found {at}")),
            "{msg}"
        );
        assert!(msg.contains(section), "cut at {at}: {msg}");
        assert!(
            msg.contains(&format!("{} bytes short", total - at)),
            "{msg}"
        );
    }
    // Extra bytes are an error too.
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"xyz");
    std::fs::write(&cut, &longer).unwrap();
    let msg = dataset_error(&cut);
    assert!(msg.contains(&format!("expected {total} bytes")), "{msg}");
    assert!(msg.contains("3 unexpected trailing bytes"), "{msg}");
}

#[test]
fn empty_foreign_and_wrong_version_files() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.dmlds");
    std::fs::write(&empty, b"").unwrap();
    let msg = dataset_error(&empty);
    assert!(msg.contains("empty (0 bytes"), "{msg}");

    let foreign = tmp.path().join("photo.dmlds");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.resize(200, 0);
    std::fs::write(&foreign, &png).unwrap();
    let msg = dataset_error(&foreign);
    assert!(msg.contains("not a dml dataset"), "{msg}");
    assert!(msg.contains("89504e470d0a1a0a"), "{msg}");
    assert!(msg.contains("200 bytes"), "{msg}");

    let path = write(tmp.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = 7;
    let v7 = tmp.path().join("v7.dmlds");
    std::fs::write(&v7, &bytes).unwrap();
    let msg = dataset_error(&v7);
    assert!(
        msg.contains("format version 7") && msg.contains("reads versions 1 and 2"),
        "{msg}"
    );

    let missing = tmp.path().join("missing.dmlds");
    match Dataset::open(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an I/O error naming the file, got {other:?}"),
    }
}

/// Writes `bytes` with `patch` applied to a copy and returns the error message.
fn patched(dir: &Path, bytes: &[u8], patch: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut b = bytes.to_vec();
    patch(&mut b);
    seal(&mut b);
    let p = dir.join("patched.dmlds");
    std::fs::write(&p, &b).unwrap();
    dataset_error(&p)
}

/// Recomputes a version 2 file's `meta_crc` (bytes 12..16: CRC-32 of the metadata) and
/// `tables_crc` (bytes 72..76: CRC-32 of bytes 0..72, then the index, labels and record
/// CRCs up to the metadata), as docs/dmlds.md specifies, wherever the header's offsets
/// still lie within the file: a crafted file passes the checksums, so the structural
/// checks are what must catch it.
fn seal(b: &mut [u8]) {
    let (index, meta) = (u64_at(b, 24) as usize, u64_at(b, 40) as usize);
    if meta <= b.len() {
        let c = crc32fast::hash(&b[meta..]);
        b[12..16].copy_from_slice(&c.to_le_bytes());
    }
    if index <= meta && meta <= b.len() {
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..72]);
        h.update(&b[index..meta]);
        let c = h.finalize();
        b[72..76].copy_from_slice(&c.to_le_bytes());
    }
}

#[test]
fn inconsistent_header_index_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    let total = bytes.len();
    let index = u64_at(&bytes, 24) as usize;
    let labels = u64_at(&bytes, 32) as usize;

    // One more record in the header than the sections hold: 4 records need 64 + 16 bytes.
    let msg = patched(tmp.path(), &bytes, |b| b[16] = 4);
    assert!(msg.contains("inconsistent"), "{msg}");
    assert!(
        msg.contains("4 records need an index of 64 bytes and labels of 16 bytes"),
        "{msg}"
    );
    assert!(msg.contains(&format!("file of {total} bytes")), "{msg}");

    // Zero records with consistent sections (index, labels and CRCs of length 0 moved).
    let msg = patched(tmp.path(), &bytes, |b| {
        b[16..24].copy_from_slice(&0u64.to_le_bytes());
        b[32..40].copy_from_slice(&(index as u64).to_le_bytes());
        b[40..48].copy_from_slice(&(index as u64).to_le_bytes());
        b[64..72].copy_from_slice(&(index as u64).to_le_bytes());
        let meta_len = (total - index) as u64;
        b[48..56].copy_from_slice(&meta_len.to_le_bytes());
    });
    assert!(msg.contains("holds no images"), "{msg}");

    // Record 1's height made huge: its bytes would run past the pixel section.
    let msg = patched(tmp.path(), &bytes, |b| {
        let at = index + 16 + 8;
        b[at..at + 4].copy_from_slice(&100_000u32.to_le_bytes());
    });
    assert!(msg.contains("index entry 1"), "{msg}");
    assert!(msg.contains("100000×4×3 record (1200000 bytes)"), "{msg}");

    // A height × width × 3 that wraps around 2^64 to 13 bytes (red team's entry).
    let msg = patched(tmp.path(), &bytes, |b| {
        let at = index + 16 + 8;
        b[at..at + 4].copy_from_slice(&3_633_886_365u32.to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&3_384_208_571u32.to_le_bytes());
    });
    assert!(msg.contains("index entry 1"), "{msg}");
    assert!(msg.contains("more than 2^64 bytes"), "{msg}");

    // Sides beyond MAX_SIDE that would fit the file.
    let msg = patched(tmp.path(), &bytes, |b| {
        let at = index + 2 * 16 + 8;
        b[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&(dml::data::format::MAX_SIDE + 1).to_le_bytes());
    });
    assert!(msg.contains("index entry 2"), "{msg}");

    // A count whose sections overflow, with the offsets in reverse order (two failed
    // subtractions once compared equal and let the file through).
    let msg = patched(tmp.path(), &bytes, |b| {
        b[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let (i, l) = (u64_at(b, 24), u64_at(b, 32));
        b[24..32].copy_from_slice(&l.to_le_bytes());
        b[32..40].copy_from_slice(&i.to_le_bytes());
    });
    assert!(msg.contains("inconsistent"), "{msg}");

    // Record 2 moved off its page.
    let msg = patched(tmp.path(), &bytes, |b| {
        let at = index + 2 * 16;
        let off = u64_at(b, at) + 8;
        b[at..at + 8].copy_from_slice(&off.to_le_bytes());
    });
    assert!(msg.contains("index entry 2"), "{msg}");

    // A label beyond the two class names.
    let msg = patched(tmp.path(), &bytes, |b| b[labels + 4] = 9);
    assert!(
        msg.contains("record 1 has label 9") && msg.contains("2 classes"),
        "{msg}"
    );

    // Metadata that is not JSON.
    let meta = u64_at(&bytes, 40) as usize;
    let msg = patched(tmp.path(), &bytes, |b| b[meta] = b'#');
    assert!(msg.contains("not valid JSON"), "{msg}");
}

#[test]
fn open_checks_the_header_index_and_metadata_checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    let (index, labels, crcs, meta) = dmlds_tables(&bytes);
    // A flip anywhere the header, index, labels or record CRCs (not re-sealed).
    for at in [20, 60, index + 9, labels, crcs + 2] {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        let p = tmp.path().join("flipped.dmlds");
        std::fs::write(&p, &b).unwrap();
        let msg = dataset_error(&p);
        assert!(
            msg.contains("checksum mismatch in the header, index, labels or record CRCs")
                || msg.contains("inconsistent")
                || msg.contains("expected"),
            "flip at {at}: {msg}"
        );
    }
    let mut b = bytes.clone();
    b[labels] ^= 0x01;
    let p = tmp.path().join("label.dmlds");
    std::fs::write(&p, &b).unwrap();
    assert!(
        dataset_error(&p).contains("checksum mismatch in the header, index, labels or record CRCs")
    );
    let mut b = bytes.clone();
    b[meta + 5] ^= 0x02;
    std::fs::write(&p, &b).unwrap();
    assert!(dataset_error(&p).contains("checksum mismatch in the metadata"));
}

#[test]
fn a_directory_or_a_fifo_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train.dmlds");
    std::fs::create_dir(&dir).unwrap();
    assert!(dataset_error(&dir).contains("is a directory"));
    let fifo = tmp.path().join("fifo.dmlds");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Opening a FIFO for reading would block until a writer appears: the check is before.
    assert!(dataset_error(&fifo).contains("not a regular file"));
    let err = dml::config::Config::load(&fifo, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a regular file"), "{err}");
}

#[test]
fn version_1_files_are_still_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path());
    let v1 = tmp.path().join("v1.dmlds");
    std::fs::write(&v1, common::dmlds_version_1(&std::fs::read(&path).unwrap())).unwrap();
    let ds = Dataset::open(&v1).unwrap();
    assert_eq!(ds.version(), 1);
    ds.verify().unwrap();
    for (i, (px, h, w, l)) in records().into_iter().enumerate() {
        assert_eq!(ds.checked_image(i).unwrap().pixels, &px[..]);
        assert_eq!((ds.dims(i), ds.label(i)), ((h as usize, w as usize), l));
    }
    assert!(info_report(&ds).contains("version 1 (no per-image checksums"));
}

#[test]
fn fuzzed_headers_and_indices_never_panic() {
    // A deterministic corpus (SplitMix64, seed 0): 4000 files, each with 1–8 random bytes
    // overwritten in the preamble, the index, labels, record CRCs or metadata; three in
    // four re-sealed so that the checksums pass and the structural checks are exercised.
    // Every outcome must be Ok or an error: no panic, no huge allocation.
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    let index = u64_at(&bytes, 24) as usize;
    let mut rng = dml::rng::SplitMix64::keyed(&[0]);
    let p = tmp.path().join("fuzz.dmlds");
    let (mut opened, mut refused) = (0, 0);
    for case in 0..4000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.next_u64() % 8 {
            let region = rng.next_u64() % 4;
            let at = match region {
                0 => (rng.next_u64() % 80) as usize,
                _ => index + (rng.next_u64() % (b.len() - index) as u64) as usize,
            };
            b[at] = rng.next_u64() as u8;
            if rng.next_u64() % 3 == 0 && at + 8 <= b.len() {
                // Whole-field values at the extremes.
                let v = [0u64, u64::MAX, 1 << 62, u32::MAX as u64][(rng.next_u64() % 4) as usize];
                let at = at & !7;
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        if case % 4 != 0 {
            seal(&mut b);
        }
        std::fs::write(&p, &b).unwrap();
        let outcome = std::panic::catch_unwind(|| match Dataset::open(&p) {
            Ok(ds) => {
                for i in 0..ds.len() {
                    let _ = ds.checked_image(i);
                    let _ = ds.dims(i);
                }
                let _ = info_report(&ds);
                let _ = ds.verify();
                true
            }
            Err(_) => false,
        });
        match outcome {
            Ok(true) => opened += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("case {case} panicked"),
        }
    }
    // The corpus reaches both outcomes.
    assert!(
        opened > 50 && refused > 1000,
        "{opened} opened, {refused} refused"
    );
}

#[test]
fn verify_detects_bit_flips_by_part() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    // Flips that keep the file openable: a pixel (named by the record's CRC, also when
    // read), page padding (only the body CRC covers it).
    for (at, mask, part) in [
        (PAGE as usize + 3, 0x02, "image 0 (a.jpg) is damaged"),
        (
            PAGE as usize + 100,
            0x80,
            "checksum mismatch in the pixel records",
        ),
    ] {
        let mut b = bytes.clone();
        b[at] ^= mask;
        let p = tmp.path().join("flipped.dmlds");
        std::fs::write(&p, &b).unwrap();
        let ds = Dataset::open(&p).unwrap();
        match ds.verify() {
            Err(Error::Dataset { path, msg }) => {
                assert_eq!(path, p);
                assert!(msg.contains(part), "{msg}");
            }
            other => panic!("bit flip at {at} not detected: {other:?}"),
        }
        let read = ds.checked_image(0).map(|_| ());
        assert_eq!(read.is_err(), at == PAGE as usize + 3, "{read:?}");
    }
}

#[test]
fn writer_rejects_bad_records_and_empty_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("w.dmlds");
    let mut w = DatasetWriter::create(&path).unwrap();
    let e = w.push(&[0u8; 10], 2, 2, 0).unwrap_err().to_string();
    assert!(e.contains("10 bytes, expected 2×2×3 = 12"), "{e}");
    let e = w.finish(meta()).unwrap_err().to_string();
    assert!(e.contains("no image"), "{e}");
    assert!(!path.exists());
    // A failed writer leaves no temporary file behind.
    assert!(!path.with_extension("dmlds.tmp").exists());
    let mut w = DatasetWriter::create(&path).unwrap();
    let side = dml::data::format::MAX_SIDE + 1;
    let e = w.push(&[], 1, side, 0).unwrap_err().to_string();
    assert!(e.contains(&format!("1×{side}")), "{e}");
    drop(w);
    assert!(!path.with_extension("dmlds.tmp").exists());

    let mut w = DatasetWriter::create(&path).unwrap();
    w.push(&[0u8; 12], 2, 2, 0).unwrap();
    let e = w.finish(meta()).unwrap_err().to_string();
    assert!(e.contains("3 source paths given for 1 images"), "{e}");

    let mut w = DatasetWriter::create(&path).unwrap();
    w.push(&[0u8; 12], 2, 2, 5).unwrap();
    let no_sources = Metadata {
        sources: vec![],
        ..meta()
    };
    let e = w.finish(no_sources).unwrap_err().to_string();
    assert!(
        e.contains("label 5 has no class name (2 names given)"),
        "{e}"
    );
}
