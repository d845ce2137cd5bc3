//! Metric parity with PML's AccuracyCalculator, neighbour parity with faiss, NMI/AMI parity
//! with scikit-learn, and the .npy reader/writer. The oracle is
//! tools/make_eval_fixtures.py, run from the venv into a temporary directory.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use dml::eval::knn::{knn, KnnOptions};
use dml::eval::metrics::{evaluate, EvalOptions};
use dml::eval::npy::{read_f32_2d, read_labels, write_f32, write_i64};
use dml::eval::{evaluate_npy, NpyEvalArgs};
use dml::ops::try_normalize;
use dml::Error;
use tch::{Device, Tensor};

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/make_eval_fixtures.py");

/// Fixtures and oracle values, generated once per test binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(PYTHON)
            .env("OMP_NUM_THREADS", "1")
            .args([SCRIPT, "fixtures"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

fn oracle() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("oracle.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tensor(path: &Path) -> Tensor {
    let (data, [n, d]) = read_f32_2d(path).unwrap();
    Tensor::from_slice(&data).view([n as i64, d as i64])
}

struct Case {
    q: Tensor,
    ql: Vec<i64>,
    r: Tensor,
    rl: Vec<i64>,
    same: bool,
    euclidean: bool,
}

fn case(name: &str, spec: &serde_json::Value) -> Case {
    let f = |s: &str| fixtures().join(format!("{name}_{s}.npy"));
    let same = spec["same_source"].as_bool().unwrap();
    let r = tensor(&f("r"));
    let rl = read_labels(&f("rl")).unwrap();
    let (q, ql) = if same {
        (r.shallow_clone(), rl.clone())
    } else {
        (tensor(&f("q")), read_labels(&f("ql")).unwrap())
    };
    Case {
        q,
        ql,
        r,
        rl,
        same,
        euclidean: spec["euclidean"].as_bool().unwrap(),
    }
}

#[test]
fn every_metric_equals_pml_accuracy_calculator() {
    let oracle = oracle();
    let cases = oracle.as_object().unwrap();
    assert_eq!(cases.len(), 6);
    for (name, spec) in cases {
        let c = case(name, spec);
        let opts = EvalOptions {
            euclidean: c.euclidean,
            nmi: false,
            chunk: 7, // several blocks, the last one partial
            ..EvalOptions::default()
        };
        let ours = evaluate(&c.q, &c.ql, &c.r, &c.rl, c.same, &opts).unwrap();
        let pml = spec["metrics"].as_object().unwrap();
        let mut compared = 0;
        for (key, want) in pml {
            if key == "NMI"
                || key == "AMI"
                || key == "mean_average_precision"
                || key == "mean_reciprocal_rank"
            {
                continue;
            }
            let got = ours.get(key).unwrap_or_else(|| panic!("{name}: no {key}"));
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-6,
                "{name} {key}: dml {got} vs PML {want}"
            );
            compared += 1;
        }
        assert_eq!(compared, 14, "{name}: P@1, RP, MAP@R and 11 recall_at_K");
    }
}

#[test]
fn neighbours_equal_faiss_index_flat() {
    let oracle = oracle();
    for (name, spec) in oracle.as_object().unwrap() {
        let c = case(name, spec);
        let k = spec["k"].as_u64().unwrap() as usize;
        let opts = KnnOptions {
            euclidean: c.euclidean,
            chunk: 64,
            device: Device::Cpu,
        };
        let nn = knn(&c.q, &c.r, k, c.same, &opts).unwrap();
        let fi = fixtures().join(format!("{name}_faiss_i.npy"));
        let fd = fixtures().join(format!("{name}_faiss_d.npy"));
        let (fd, _) = read_f32_2d(&fd).unwrap();
        let raw = std::fs::read(&fi).unwrap();
        // int64 matrix: the header is followed by n·k little-endian i64.
        let fi: Vec<i64> = raw[raw.len() - nn.indices.len() * 8..]
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(nn.k, k);
        // faiss's IndexFlatIP lists equal scores larger index first (IndexFlatL2 smaller
        // first; dml always smaller first), so indices are compared where the score is
        // unique in its row and not tied with the boundary; scores everywhere.
        let mut differ = 0;
        for (row, (ours, theirs)) in nn.indices.chunks(k).zip(fi.chunks(k)).enumerate() {
            let sc = &fd[row * k..(row + 1) * k];
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(1.0);
            for j in 0..k {
                let s_ours = nn.scores[row * k + j];
                assert!(
                    close(s_ours, sc[j]),
                    "{name}[{row},{j}] score {s_ours} vs faiss {}",
                    sc[j]
                );
                let tied = sc
                    .iter()
                    .enumerate()
                    .any(|(i, &v)| i != j && close(v, sc[j]))
                    || close(sc[j], sc[k - 1]);
                if !tied && ours[j] != theirs[j] {
                    differ += 1;
                }
            }
        }
        if name.starts_with("ties") {
            assert_eq!(differ, 0, "{name}: untied neighbours differ");
        }
        assert!(
            differ * 1000 <= fi.len(),
            "{name}: {differ} of {} differ",
            fi.len()
        );
    }
}

#[test]
fn nmi_ami_equal_sklearn_on_the_same_assignment_and_pml_is_close() {
    let oracle = oracle();
    let spec = &oracle["clustered"];
    let c = case("clustered", spec);
    let classes = {
        let mut l = c.ql.clone();
        l.sort_unstable();
        l.dedup();
        l.len()
    };
    let x = try_normalize(&c.q).unwrap();
    let km = dml::eval::kmeans::kmeans(&x, classes, &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (lp, ap) = (dir.path().join("y.npy"), dir.path().join("a.npy"));
    write_i64(&lp, &c.ql).unwrap();
    write_i64(&ap, &km.assignment).unwrap();
    let out = Command::new(PYTHON)
        .args([SCRIPT, "sklearn"])
        .arg(&lp)
        .arg(&ap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sk: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nmi = dml::eval::cluster::nmi(&c.ql, &km.assignment);
    let ami = dml::eval::cluster::ami(&c.ql, &km.assignment);
    assert!(
        (nmi - sk["NMI"].as_f64().unwrap()).abs() < 1e-9,
        "NMI {nmi} vs sklearn {}",
        sk["NMI"]
    );
    assert!(
        (ami - sk["AMI"].as_f64().unwrap()).abs() < 1e-9,
        "AMI {ami} vs sklearn {}",
        sk["AMI"]
    );
    // evaluate() uses the same clustering (same seed, normalised queries).
    let m = evaluate(&c.q, &c.ql, &c.r, &c.rl, true, &EvalOptions::default()).unwrap();
    assert_eq!(m.get("NMI"), Some(nmi));
    // PML clusters with faiss's k-means (another initialisation): close, not equal.
    let pml = spec["metrics"]["NMI"].as_f64().unwrap();
    assert!((nmi - pml).abs() < 0.05, "NMI {nmi} vs PML {pml}");
}

fn io(name: &str) -> PathBuf {
    fixtures().join("io").join(name)
}

#[test]
fn npy_reads_numpy_dtypes_and_round_trips() {
    for f in ["i1", "u1", "i2", "u2_be", "i4", "u4", "i8", "i8_be"] {
        assert_eq!(
            read_labels(&io(&format!("lab_{f}.npy"))).unwrap(),
            vec![3, 0, 5, 1, 2, 4],
            "{f}"
        );
    }
    let want: Vec<f32> = (0..12).map(|i| i as f32 / 8.0).collect();
    for f in ["f4", "f8", "be", "fortran"] {
        assert_eq!(
            read_f32_2d(&io(&format!("emb_{f}.npy"))).unwrap(),
            (want.clone(), [4, 3]),
            "{f}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    let data = [1.5f32, -2.0, 3.25, f32::MIN_POSITIVE, 0.0, 7.0];
    write_f32(&p, &data, [3, 2]).unwrap();
    assert_eq!(read_f32_2d(&p).unwrap(), (data.to_vec(), [3, 2]));
    let labels = [i64::MIN, -1, 0, 1 << 40];
    write_i64(&p, &labels).unwrap();
    assert_eq!(read_labels(&p).unwrap(), labels.to_vec());
    // numpy reads what we write.
    write_f32(&p, &data, [3, 2]).unwrap();
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import numpy,sys; a=numpy.load(sys.argv[1]); print(a.dtype, a.shape, a[1,0])",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "float32 (3, 2) 3.25"
    );
}

fn input_err(r: Result<impl std::fmt::Debug, Error>, needles: &[&str]) {
    match r {
        Err(Error::Input(msg)) => {
            for n in needles {
                assert!(msg.contains(n), "{msg:?} lacks {n:?}");
            }
        }
        other => panic!("expected Error::Input with {needles:?}, got {other:?}"),
    }
}

#[test]
fn bad_files_are_input_errors_naming_the_file() {
    input_err(
        read_f32_2d(&io("bad_emb_i4.npy")),
        &["bad_emb_i4.npy", "<i4"],
    );
    input_err(
        read_labels(&io("bad_lab_f4.npy")),
        &["bad_lab_f4.npy", "<f4"],
    );
    input_err(
        read_labels(&io("bad_lab_u8.npy")),
        &["bad_lab_u8.npy", "<u8"],
    );
    input_err(
        read_labels(&io("bad_lab_2d.npy")),
        &["bad_lab_2d.npy", "[2, 3]"],
    );
    input_err(
        read_f32_2d(&io("bad_emb_1d.npy")),
        &["bad_emb_1d.npy", "[12]"],
    );
    input_err(
        read_f32_2d(&io("bad_emb_3d.npy")),
        &["bad_emb_3d.npy", "[2, 2, 3]"],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("text.npy"), "hello").unwrap();
    input_err(read_f32_2d(&d.join("text.npy")), &["text.npy", "magic"]);
    let full = std::fs::read(io("emb_f4.npy")).unwrap();
    std::fs::write(d.join("cut.npy"), &full[..full.len() - 4]).unwrap();
    input_err(read_f32_2d(&d.join("cut.npy")), &["cut.npy", "truncated"]);
    assert!(matches!(
        read_labels(&d.join("missing.npy")),
        Err(Error::Io { .. })
    ));

    // evaluate_npy: NaN, lengths that disagree, D mismatch, empty.
    let w = |n: &str, v: &[f32], s: [usize; 2]| {
        write_f32(&d.join(n), v, s).unwrap();
        d.join(n)
    };
    let l2 = d.join("l2.npy");
    write_i64(&l2, &[0, 1]).unwrap();
    let l3 = d.join("l3.npy");
    write_i64(&l3, &[0, 1, 1]).unwrap();
    let args = |e: &Path, l: &Path, q: Option<(&Path, &Path)>| NpyEvalArgs {
        embeddings: e.into(),
        labels: l.into(),
        query_embeddings: q.map(|x| x.0.into()),
        query_labels: q.map(|x| x.1.into()),
    };
    let nan = w("nan.npy", &[0.0, f32::NAN, 1.0, 0.0], [2, 2]);
    input_err(evaluate_npy(&args(&nan, &l2, None)), &["nan.npy", "row 0"]);
    let good = w("good.npy", &[1.0, 0.0, 0.0, 1.0], [2, 2]);
    input_err(
        evaluate_npy(&args(&good, &l3, None)),
        &["good.npy", "l3.npy", "2 embeddings", "3 labels"],
    );
    let d3 = w("d3.npy", &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0], [2, 3]);
    input_err(
        evaluate_npy(&args(&good, &l2, Some((&d3, &l2)))),
        &["d3.npy", "dimension 3"],
    );
    let empty = w("empty.npy", &[], [0, 4]);
    let l0 = d.join("l0.npy");
    write_i64(&l0, &[]).unwrap();
    input_err(evaluate_npy(&args(&empty, &l0, None)), &["empty.npy"]);
    input_err(
        evaluate_npy(&NpyEvalArgs {
            query_labels: None,
            ..args(&good, &l2, Some((&good, &l2)))
        }),
        &["--query-labels"],
    );
}

#[test]
fn evaluate_npy_matches_evaluate_and_writes_json() {
    let oracle = oracle();
    let spec = &oracle["query_gallery"];
    let f = |s: &str| fixtures().join(format!("query_gallery_{s}.npy"));
    let m = evaluate_npy(&NpyEvalArgs {
        embeddings: f("r"),
        labels: f("rl"),
        query_embeddings: Some(f("q")),
        query_labels: Some(f("ql")),
    })
    .unwrap();
    let want = spec["metrics"]["mean_average_precision_at_r"]
        .as_f64()
        .unwrap();
    assert!((m.get("mean_average_precision_at_r").unwrap() - want).abs() <= 1e-6);
    let json: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
    assert_eq!(
        json.as_object().unwrap().len(),
        16,
        "14 kNN metrics + NMI + AMI"
    );
    assert!(m.table().starts_with("precision_at_1"));
}
