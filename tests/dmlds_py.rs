//! tools/dmlds.py, the numpy-only Python reader of `.dmlds` files (docs/dmlds.md),
//! against the Rust reader: every record's shape, label, byte sum and sampled pixels,
//! the class names and source paths, the CLI summary, and the same errors (truncation
//! on open, a flipped pixel byte in `verify()`) with the same messages.
mod common;

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

/// Opens argv[2] with tools/dmlds.py (argv[1]); with argv[3] == "verify" also verifies.
/// Prints `OK` or `ValueError: <message>` (exit status 3); any other error propagates.
const TRY_OPEN: &str = r#"
import importlib.util, sys
spec = importlib.util.spec_from_file_location("dmlds", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
try:
    with m.open(sys.argv[2]) as d:
        if sys.argv[3] == "verify":
            d.verify()
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
    compare(&write(tmp.path(), "sources.dmlds", true), true);
    compare(&write(tmp.path(), "no_sources.dmlds", false), false);
}

#[test]
fn python_reader_rejects_truncation_and_detects_a_flipped_pixel() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "ds.dmlds", true);
    let bytes = std::fs::read(&path).unwrap();

    // Truncated inside the pixel records: open fails, with dml's own message.
    let cut = tmp.path().join("cut.dmlds");
    std::fs::write(&cut, &bytes[..PAGE as usize + 100]).unwrap();
    let rust = Dataset::open(&cut).unwrap_err().to_string();
    assert!(rust.contains("truncated"), "{rust}");
    let out = snippet(TRY_OPEN, &cut, &["open"]);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected a ValueError:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, format!("ValueError: {rust}"));
    assert!(stdout.contains(&cut.display().to_string()), "{stdout}");
    // The CLI: non-zero exit status, the message names the file.
    let out = run_python([OsStr::new(READER), cut.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "opened a truncated file: {stderr}");
    assert!(
        stderr.contains(&cut.display().to_string()) && stderr.contains("truncated"),
        "{stderr}"
    );

    // One pixel byte flipped (record 0, inside its pixels): open passes, verify fails.
    let mut flipped = bytes.clone();
    flipped[PAGE as usize + 1] ^= 0x10;
    let bad = tmp.path().join("flipped.dmlds");
    std::fs::write(&bad, &flipped).unwrap();
    let ds = Dataset::open(&bad).unwrap();
    let rust = ds.verify().unwrap_err().to_string();
    assert!(
        rust.contains("checksum mismatch in the pixel records"),
        "{rust}"
    );
    let out = snippet(TRY_OPEN, &bad, &["open"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "OK",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = snippet(TRY_OPEN, &bad, &["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(out.status.code(), Some(3), "verify passed: {stdout}");
    assert_eq!(stdout, format!("ValueError: {rust}"));
    assert!(stdout.contains(&bad.display().to_string()), "{stdout}");
    let out = run_python([OsStr::new(READER), OsStr::new("--verify"), bad.as_os_str()]);
    assert!(!out.status.success());
    // Without --verify the CLI opens it fine.
    stdout_json(&run_python([OsStr::new(READER), bad.as_os_str()]));
}
