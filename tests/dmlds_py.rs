//! tools/dmlds.py, the numpy-only Python reader of `.dmlds` files (docs/dmlds.md),
//! against the Rust reader, for version 2 files and for version 1 files made from them:
//! every record's shape, label, byte sum, sampled pixels and CRC-32, the class names and
//! source paths, the CLI summary, and the same errors with the same messages (truncation,
//! a flipped header, index, label, record-CRC or metadata byte on open, a damaged image
//! when it is read, a flipped pixel or padding byte in `verify()`, a directory or FIFO).
mod common;

use common::{dmlds_tables, u64_at};

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dml::data::format::{Dataset, DatasetWriter, Metadata, PAGE};

const READER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/dmlds.py");

/// Imports tools/dmlds.py by path (argv[1]) and dumps the dataset argv[2] as JSON.
const DUMP: &str = r#"
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("dmlds", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
with m.open(sys.argv[2]) as d:
    records = []
    for i in range(len(d)):
        img, label = d[i]
        h, w, _ = img.shape
        flat = img.reshape(-1)
        records.append({
            "label": label,
            "shape": list(img.shape),
            "dtype": str(img.dtype),
            "sum": int(img.sum(dtype="uint64")),
            "head": flat[:5].tolist(),
            "center": img[h // 2, w // 2].tolist(),
            "last": int(flat[-1]),
            "dims": list(d.dims(i)),
        })
    last_img, last_label = d[-1]
    try:
        d[len(d)]
        index_error = False
    except IndexError:
        index_error = True
    d.verify()
    print(json.dumps({
        "version": d.version,
        "record_crcs": d.record_crcs.tolist(),
        "len": len(d),
        "classes": d.classes,
        "paths": d.paths,
        "preprocessing": d.preprocessing,
        "checksum": d.checksum,
        "records": records,
        "neg_label": last_label,
        "neg_sum": int(last_img.sum(dtype="uint64")),
        "index_error": index_error,
    }))
"#;

/// Opens argv[2] with tools/dmlds.py (argv[1]), then runs the operations argv[3:]:
/// `open` (nothing more), `verify`, `N` (`d[N]`, the record's CRC checked) or `raw:N`
/// (`d.image(N, check=False)`). Prints `OK` or `ValueError: <message>` (exit status 3);
/// any other error propagates.
const TRY_OPEN: &str = r#"
import importlib.util, sys
spec = importlib.util.spec_from_file_location("dmlds", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
try:
    with m.open(sys.argv[2]) as d:
        for op in sys.argv[3:]:
            if op == "verify":
                d.verify()
            elif op.startswith("raw:"):
                d.image(int(op[4:]), check=False)
            elif op != "open":
                d[int(op)]
except ValueError as e:
    print("ValueError: " + str(e))
    sys.exit(3)
print("OK")
"#;

/// The venv's python; fails with how to create it when it is missing.
fn python() -> PathBuf {
    let py = common::python();
    assert!(
        py.exists(),
        "{} not found: run tools/setup.sh to create .venv (tools/dmlds.py needs numpy)",
        py.display()
    );
    py
}

/// Runs the venv's python with `args` from the repository root.
fn run_python<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(python())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("the venv python runs (tools/setup.sh creates .venv)")
}

/// Runs a `-c` snippet with tools/dmlds.py and `file` (and `extra`) as its arguments.
fn snippet(code: &str, file: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("-c"),
        OsStr::new(code),
        OsStr::new(READER),
        file.as_os_str(),
    ];
    args.extend(extra.iter().map(|s| OsStr::new(*s)));
    run_python(args)
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "python failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// What [`TRY_OPEN`] prints for `file` and `ops`: `OK` (exit status 0) or
/// `ValueError: <message>` (exit status 3); panics on anything else.
fn try_py(file: &Path, ops: &[&str]) -> String {
    let out = snippet(TRY_OPEN, file, ops);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let expected = if stdout == "OK" { 0 } else { 3 };
    assert!(
        out.status.code() == Some(expected)
            && (stdout == "OK" || stdout.starts_with("ValueError: ")),
        "python {ops:?} on {}: status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        file.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The Python reader's `ValueError` for `ops` on `file`; panics if there is none.
fn py_error(file: &Path, ops: &[&str]) -> String {
    let out = try_py(file, ops);
    match out.strip_prefix("ValueError: ") {
        Some(msg) => msg.to_string(),
        None => panic!("python {ops:?} on {} passed", file.display()),
    }
}

/// Records of different heights and widths: below one page, exactly three pages (64×64,
/// no padding), just over one page, a single pixel, and a wide one. Pixel bytes are a
/// function of (record, byte) that does not repeat with the page size.
const SHAPES: [(u32, u32, u32); 6] = [
    (5, 7, 0),
    (64, 64, 2),
    (23, 61, 1),
    (1, 1, 2),
    (9, 200, 0),
    (40, 33, 1),
];

fn pixels(record: usize, h: u32, w: u32) -> Vec<u8> {
    (0..(h * w * 3) as usize)
        .map(|b| ((b * 7 + b / 253 + record * 31) % 256) as u8)
        .collect()
}

fn class_names() -> Vec<String> {
    vec![
        "alpha".into(),
        "café ünïcode".into(),
        "with \"quotes\"".into(),
    ]
}

/// Writes the [`SHAPES`] records to `dir/NAME`, with source paths when `sources`.
fn write(dir: &Path, name: &str, sources: bool) -> PathBuf {
    let path = dir.join(name);
    let mut w = DatasetWriter::create(&path).unwrap();
    for (r, &(h, wd, label)) in SHAPES.iter().enumerate() {
        w.push(&pixels(r, h, wd), h, wd, label).unwrap();
    }
    let sources = if sources {
        (0..SHAPES.len())
            .map(|r| format!("images/class {}/img_{r:03}é.jpg", SHAPES[r].2))
            .collect()
    } else {
        Vec::new()
    };
    w.finish(Metadata {
        class_names: class_names(),
        sources,
        preprocessing: "shorter side 256 (test), RGB u8 HWC".into(),
        checksum: 0,
    })
    .unwrap();
    path
}

fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|x| {
            x.as_u64()
                .unwrap_or_else(|| panic!("expected an integer, got {x}"))
        })
        .collect()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn byte_sum(px: &[u8]) -> u64 {
    px.iter().map(|&b| b as u64).sum()
}

/// Every number tools/dmlds.py reports equals what `Dataset` returns for the same file.
fn compare(path: &Path, with_sources: bool) {
    let ds = Dataset::open(path).unwrap();
    ds.verify().unwrap();
    let py = stdout_json(&snippet(DUMP, path, &[]));
    let n = ds.len();
    assert_eq!(n, SHAPES.len());
    assert_eq!(py["len"].as_u64(), Some(n as u64));
    assert_eq!(py["version"].as_u64(), Some(ds.version() as u64));
    // The record CRCs: one per record in version 2, none in version 1.
    let crcs: Vec<u64> = match ds.version() {
        1 => Vec::new(),
        _ => (0..n)
            .map(|i| crc32fast::hash(ds.image(i).pixels) as u64)
            .collect(),
    };
    assert_eq!(u64s(&py["record_crcs"]), crcs);
    assert_eq!(strings(&py["classes"]), ds.meta().class_names);
    assert_eq!(ds.meta().class_names, class_names());
    for (l, name) in class_names().iter().enumerate() {
        assert_eq!(ds.class_name(l as u32), Some(name.as_str()));
    }
    let paths = strings(&py["paths"]);
    if with_sources {
        assert_eq!(paths, ds.meta().sources);
        assert_eq!(paths.len(), n);
    } else {
        assert!(ds.meta().sources.is_empty());
        assert_eq!(paths, vec![String::new(); n]);
    }
    assert_eq!(
        py["preprocessing"].as_str(),
        Some(ds.meta().preprocessing.as_str())
    );
    assert_eq!(py["checksum"].as_u64(), Some(ds.meta().checksum as u64));

    let records = py["records"].as_array().unwrap();
    assert_eq!(records.len(), n);
    for (i, rec) in records.iter().enumerate() {
        let img = ds.image(i);
        let (h, w) = (img.height, img.width);
        assert_eq!((h as u32, w as u32), (SHAPES[i].0, SHAPES[i].1));
        assert_eq!(img.pixels, &pixels(i, SHAPES[i].0, SHAPES[i].1)[..]);
        assert_eq!(ds.dims(i), (h, w));
        assert_eq!(
            u64s(&rec["shape"]),
            vec![h as u64, w as u64, 3],
            "record {i}"
        );
        assert_eq!(u64s(&rec["dims"]), vec![h as u64, w as u64], "record {i}");
        assert_eq!(rec["dtype"].as_str(), Some("uint8"), "record {i}");
        assert_eq!(
            rec["label"].as_u64(),
            Some(ds.label(i) as u64),
            "record {i}"
        );
        assert_eq!(ds.labels()[i], SHAPES[i].2);
        assert_eq!(
            rec["sum"].as_u64(),
            Some(byte_sum(img.pixels)),
            "record {i}"
        );
        let head: Vec<u64> = img.pixels.iter().take(5).map(|&b| b as u64).collect();
        assert_eq!(u64s(&rec["head"]), head, "record {i}");
        let c = ((h / 2) * w + w / 2) * 3;
        let center: Vec<u64> = img.pixels[c..c + 3].iter().map(|&b| b as u64).collect();
        assert_eq!(u64s(&rec["center"]), center, "record {i}");
        assert_eq!(
            rec["last"].as_u64(),
            img.pixels.last().map(|&b| b as u64),
            "record {i}"
        );
    }
    assert_eq!(py["neg_label"].as_u64(), Some(ds.label(n - 1) as u64));
    assert_eq!(
        py["neg_sum"].as_u64(),
        Some(byte_sum(ds.image(n - 1).pixels))
    );
    assert_eq!(py["index_error"].as_bool(), Some(true));

    // The CLI summary (`python tools/dmlds.py --verify FILE`).
    let out = run_python([OsStr::new(READER), OsStr::new("--verify"), path.as_os_str()]);
    let s = stdout_json(&out);
    assert_eq!(s["version"].as_u64(), Some(ds.version() as u64));
    assert_eq!(s["len"].as_u64(), Some(n as u64));
    assert_eq!(strings(&s["classes"]), ds.meta().class_names);
    let first = ds.image(0);
    assert_eq!(s["first"]["label"].as_u64(), Some(ds.label(0) as u64));
    assert_eq!(
        u64s(&s["first"]["shape"]),
        vec![first.height as u64, first.width as u64, 3]
    );
    assert_eq!(s["first"]["sum"].as_u64(), Some(byte_sum(first.pixels)));
    let counts = s["label_counts"].as_object().unwrap();
    assert_eq!(counts.len(), ds.num_classes());
    for l in 0..ds.num_classes() {
        let expected = ds.labels().iter().filter(|&&x| x as usize == l).count() as u64;
        assert_eq!(counts[&l.to_string()].as_u64(), Some(expected), "class {l}");
    }
}

#[test]
fn python_reader_matches_the_rust_reader_record_by_record() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "sources.dmlds", true);
    assert_eq!(Dataset::open(&path).unwrap().version(), 2);
    compare(&path, true);
    compare(&write(tmp.path(), "no_sources.dmlds", false), false);
}

#[test]
fn python_reader_reads_version_1_files_with_the_same_records() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, sources) in [("sources.dmlds", true), ("no_sources.dmlds", false)] {
        let v2 = write(tmp.path(), name, sources);
        let v1 = tmp.path().join(format!("v1_{name}"));
        std::fs::write(&v1, common::dmlds_version_1(&std::fs::read(&v2).unwrap())).unwrap();
        assert_eq!(Dataset::open(&v1).unwrap().version(), 1);
        compare(&v1, sources);
    }

    // A version 1 record has no CRC of its own: a flipped pixel is read unchecked by
    // both readers, and only the body CRC in verify finds it, with the same message.
    let v1 = tmp.path().join("v1_sources.dmlds");
    let mut bytes = std::fs::read(&v1).unwrap();
    let index = u64_at(&bytes, 24) as usize;
    let at = u64_at(&bytes, index + 16) as usize + 3;
    bytes[at] ^= 0x40;
    let bad = tmp.path().join("v1_flipped.dmlds");
    std::fs::write(&bad, &bytes).unwrap();
    let ds = Dataset::open(&bad).unwrap();
    assert!(ds.checked_image(1).is_ok());
    let rust = ds.verify().unwrap_err().to_string();
    assert!(
        rust.contains("checksum mismatch in the pixel records"),
        "{rust}"
    );
    assert_eq!(try_py(&bad, &["1"]), "OK");
    assert_eq!(py_error(&bad, &["verify"]), rust);
}

#[test]
fn python_reader_rejects_truncation_and_detects_flipped_pixels_and_padding() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "ds.dmlds", true);
    let bytes = std::fs::read(&path).unwrap();

    // Truncated inside the pixel records: open fails, with dml's own message.
    let cut = tmp.path().join("cut.dmlds");
    std::fs::write(&cut, &bytes[..PAGE as usize + 100]).unwrap();
    let rust = Dataset::open(&cut).unwrap_err().to_string();
    assert!(rust.contains("truncated"), "{rust}");
    assert_eq!(py_error(&cut, &["open"]), rust);
    assert!(rust.contains(&cut.display().to_string()), "{rust}");
    // The CLI: non-zero exit status, the message names the file.
    let out = run_python([OsStr::new(READER), cut.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "opened a truncated file: {stderr}");
    assert!(
        stderr.contains(&cut.display().to_string()) && stderr.contains("truncated"),
        "{stderr}"
    );

    // One byte of record 0's page padding flipped (record 0 is 5×7×3 = 105 bytes): no
    // record CRC covers it, so every image reads fine and only the body CRC in verify
    // finds it.
    let mut flipped = bytes.clone();
    flipped[PAGE as usize + 1000] ^= 0x10;
    let bad = tmp.path().join("padding.dmlds");
    std::fs::write(&bad, &flipped).unwrap();
    let ds = Dataset::open(&bad).unwrap();
    for i in 0..ds.len() {
        assert!(ds.checked_image(i).is_ok(), "image {i}");
    }
    let rust = ds.verify().unwrap_err().to_string();
    assert!(
        rust.contains("checksum mismatch in the pixel records"),
        "{rust}"
    );
    let all: Vec<String> = (0..ds.len()).map(|i| i.to_string()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(try_py(&bad, &all), "OK");
    assert_eq!(py_error(&bad, &["verify"]), rust);
    assert!(rust.contains(&bad.display().to_string()), "{rust}");
    let out = run_python([OsStr::new(READER), OsStr::new("--verify"), bad.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&rust));
    // Without --verify the CLI opens it fine.
    stdout_json(&run_python([OsStr::new(READER), bad.as_os_str()]));
}

#[test]
fn a_damaged_image_is_refused_when_read_with_the_rust_message() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, sources) in [("sources.dmlds", true), ("no_sources.dmlds", false)] {
        let path = write(tmp.path(), name, sources);
        let bytes = std::fs::read(&path).unwrap();
        let index = u64_at(&bytes, 24) as usize;
        // One pixel byte of record 2 and one of record 0 flipped, each in its own copy.
        for record in [2usize, 0] {
            let mut flipped = bytes.clone();
            let at = u64_at(&bytes, index + 16 * record) as usize + 5;
            flipped[at] ^= 0x04;
            let bad = tmp.path().join(format!("flipped_{record}_{name}"));
            std::fs::write(&bad, &flipped).unwrap();
            let ds = Dataset::open(&bad).unwrap();
            let rust = ds.checked_image(record).unwrap_err().to_string();
            let source = format!(
                "image {record} (images/class {}/img_{record:03}é.jpg) is damaged",
                SHAPES[record].2
            );
            let plain = format!("image {record} is damaged");
            assert!(
                rust.contains(if sources { &source } else { &plain }),
                "{rust}"
            );
            assert!(rust.contains(&bad.display().to_string()), "{rust}");
            // verify names the same image with the same message.
            assert_eq!(ds.verify().unwrap_err().to_string(), rust);

            // Python: open passes, the other images read, this one raises.
            assert_eq!(try_py(&bad, &["open"]), "OK");
            let other = if record == 0 { "1" } else { "0" };
            assert_eq!(try_py(&bad, &[other]), "OK");
            let i = record.to_string();
            assert_eq!(py_error(&bad, &[i.as_str()]), rust);
            // A negative index names the image by its position.
            let neg = format!("{}", record as i64 - ds.len() as i64);
            assert_eq!(py_error(&bad, &[neg.as_str()]), rust);
            // Unchecked, the (damaged) pixels are returned.
            assert_eq!(try_py(&bad, &[format!("raw:{record}").as_str()]), "OK");
            assert_eq!(py_error(&bad, &["verify"]), rust);

            // The CLI reads image 0 for its summary (checked); --verify checks them all.
            let out = run_python([OsStr::new(READER), OsStr::new("--verify"), bad.as_os_str()]);
            assert!(!out.status.success());
            assert!(String::from_utf8_lossy(&out.stderr).contains(&rust));
            let out = run_python([OsStr::new(READER), bad.as_os_str()]);
            assert_eq!(out.status.success(), record != 0, "{out:?}");
        }
    }
}

#[test]
fn python_reader_checks_the_header_index_and_metadata_checksums_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "ds.dmlds", true);
    let bytes = std::fs::read(&path).unwrap();
    let (index, labels, crcs, meta) = dmlds_tables(&bytes);
    let bad = tmp.path().join("flipped.dmlds");
    // A flipped byte in the index (record 0's height, record 1's offset), the labels or
    // the record CRCs: the tables CRC on open, the same message from both readers.
    for at in [index + 9, index + 16 + 1, labels, crcs + 2] {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        let rust = Dataset::open(&bad).unwrap_err().to_string();
        assert!(
            rust.contains("checksum mismatch in the header, index, labels or record CRCs"),
            "flip at {at}: {rust}"
        );
        assert_eq!(py_error(&bad, &["open"]), rust, "flip at {at}");
    }
    // A flipped byte in the preamble (meta_len's high byte, meta_crc): whichever check
    // fires, both readers give the same message.
    for at in [55, 13] {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        let rust = Dataset::open(&bad).unwrap_err().to_string();
        assert_eq!(py_error(&bad, &["open"]), rust, "flip at {at}");
    }
    // A flipped byte in the metadata.
    let mut b = bytes.clone();
    b[meta + 5] ^= 0x02;
    std::fs::write(&bad, &b).unwrap();
    let rust = Dataset::open(&bad).unwrap_err().to_string();
    assert!(rust.contains("checksum mismatch in the metadata"), "{rust}");
    assert_eq!(py_error(&bad, &["open"]), rust);
}

#[test]
fn python_reader_refuses_a_directory_or_a_fifo_as_dml_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train.dmlds");
    std::fs::create_dir(&dir).unwrap();
    let rust = Dataset::open(&dir).unwrap_err().to_string();
    assert!(rust.contains("is a directory"), "{rust}");
    assert_eq!(py_error(&dir, &["open"]), rust);
    let fifo = tmp.path().join("fifo.dmlds");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Opening a FIFO would block until a writer appears: both check before opening.
    let rust = Dataset::open(&fifo).unwrap_err().to_string();
    assert!(rust.contains("not a regular file"), "{rust}");
    assert_eq!(py_error(&fifo, &["open"]), rust);
}
