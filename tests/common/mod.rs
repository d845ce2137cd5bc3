//! Helpers shared by the integration tests: the `dml` binary, small generated datasets,
//! mpirun, and comparing saved weights.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `dml` binary built for this test run.
pub fn dml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dml"))
}

/// `mpirun -np W dml ...` (as root, oversubscribed: CI has 2 cores).
pub fn mpirun(np: usize) -> Command {
    mpirun_with(np, Path::new(env!("CARGO_BIN_EXE_dml")))
}

/// `mpirun -np W PROGRAM ...`.
pub fn mpirun_with(np: usize, program: &Path) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", &np.to_string()])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMP_NUM_THREADS", "1")
        .arg(program);
    c
}

/// `target/release/examples/NAME`, built by `cargo build --release --all-targets`
/// (tools/test.sh) or by `cargo test`, which builds the examples too.
pub fn example(name: &str) -> PathBuf {
    // target/release/deps/TEST-HASH → target/release/examples/NAME
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --release --examples` first",
        path.display()
    );
    path
}

/// Runs a command and returns its output, panicking with stderr if it fails.
pub fn ok(mut c: Command) -> Output {
    let out = c.output().expect("command runs");
    assert!(
        out.status.success(),
        "command failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Generates a small synthetic dataset in `dir` (train.dmlds, test.dmlds).
pub fn synth(dir: &Path, classes: usize, per_class: usize, size: usize) {
    let mut c = dml();
    c.args(["synth", "--out"])
        .arg(dir)
        .args(["--classes", &classes.to_string()])
        .args(["--per-class", &per_class.to_string()])
        .args(["--size", &size.to_string(), "--seed", "3"]);
    ok(c);
}

/// Writes a small, fast training config for data in `data` and returns its path.
pub fn small_config(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"[data]
train = "{train}"
test = "{test}"
image_size = 32
resize = 36
crop_scale = [0.5, 1.0]
workers = 2
prefetch = 2

[sampler]
classes_per_batch = 4
samples_per_class = 4

[model]
trunk = "resnet18"
embedding_dim = 32

[optim]
lr = 1e-3

[train]
steps = 6
checkpoint_every = 3
device = "cpu"
{extra}
"#,
        train = data.join("train.dmlds").display(),
        test = data.join("test.dmlds").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Every tensor of a safetensors file, by name.
pub fn read_weights(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut v = tch::Tensor::read_safetensors(path).expect("read safetensors");
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// ‖a − b‖∞ / max(‖b‖∞, floor), computed in f64; the shapes must agree.
pub fn rel_diff(a: &tch::Tensor, b: &tch::Tensor, floor: f64) -> f64 {
    assert_eq!(a.size(), b.size());
    let a = a.to_kind(tch::Kind::Double);
    let b = b.to_kind(tch::Kind::Double);
    let scale = b.abs().max().double_value(&[]).max(floor);
    (a - &b).abs().max().double_value(&[]) / scale
}

/// Largest relative difference ‖a − b‖∞ / max(‖b‖∞, tiny) over all tensors of two files.
pub fn max_rel_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (read_weights(a), read_weights(b));
    assert_eq!(a.len(), b.len(), "different tensor sets");
    let mut worst = 0f64;
    for ((na, ta), (nb, tb)) in a.iter().zip(b.iter()) {
        assert_eq!(na, nb);
        worst = worst.max(rel_diff(ta, tb, 1e-30));
    }
    worst
}

/// [`max_rel_diff`] of the final `model.safetensors` of two run directories.
pub fn model_diff(run_a: &Path, run_b: &Path) -> f64 {
    max_rel_diff(
        &run_a.join("model.safetensors"),
        &run_b.join("model.safetensors"),
    )
}

/// The project venv's python (the oracles: torch, torchvision, PML, faiss).
pub fn python() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"))
}

/// Runs the venv's python with `args` (a tools/ script and its arguments, or `-c CODE`)
/// from the repository root; returns its stdout, or panics with its stderr.
pub fn run_python<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(python())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("the venv python runs (tools/setup.sh creates .venv)");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `tools/SCRIPT --out DIR` with the venv's python (see [`run_python`]).
pub fn run_script_out(script: &str, out: &Path) {
    use std::ffi::OsStr;
    run_python([OsStr::new(script), OsStr::new("--out"), out.as_os_str()]);
}

/// The output directory of `tools/SCRIPT --out DIR`, run once per test binary (the
/// first call's script; each test binary runs one such oracle).
pub fn script_output_once(script: &str) -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        run_script_out(script, dir.path());
        dir
    })
    .path()
}

/// A `shape` f64 tensor of standard normal values (Box–Muller) drawn from
/// `SplitMix64::keyed(&[key])`, the same in every run. `tch::manual_seed` + `randn` is
/// not reproducible in tests: the generator is global, and the tests of a binary run in
/// parallel threads.
pub fn seeded_normal(shape: &[i64], key: u64) -> tch::Tensor {
    let mut rng = dml::rng::SplitMix64::keyed(&[key]);
    let n: i64 = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        })
        .collect();
    tch::Tensor::from_slice(&v).view(shape)
}

/// A `shape` f64 tensor uniform in [0, 1), as [`seeded_normal`].
pub fn seeded_uniform(shape: &[i64], key: u64) -> tch::Tensor {
    let mut rng = dml::rng::SplitMix64::keyed(&[key]);
    let v: Vec<f64> = (0..shape.iter().product())
        .map(|_| rng.next_f64())
        .collect();
    tch::Tensor::from_slice(&v).view(shape)
}

/// `dml train --config CFG --out OUT --set S...` on `np` ranks: one process with one
/// thread, or `mpirun -np NP`. Panics with the output if it fails.
pub fn train(np: usize, cfg: &Path, out: &Path, sets: &[&str]) {
    let mut c = if np == 1 {
        let mut c = dml();
        c.env("OMP_NUM_THREADS", "1");
        c
    } else {
        mpirun(np)
    };
    c.args(["train", "--config"]).arg(cfg).arg("--out").arg(out);
    for s in sets {
        c.args(["--set", s]);
    }
    ok(c);
}

/// DESIGN.md invariant 1 for 1, 2, 3 and 4 ranks: [`small_config`] in float64 on
/// generated data (8 classes), a global batch of 4 × 3 (divisible by every W), `sets`
/// on top.
/// - The first step's summed gradients (`examples/first_step_grads`) of W ranks equal
///   those of one process to 1e-12 (relative, per tensor): the objective's shares and
///   their sum are exact up to the order of additions.
/// - After 5 steps the models agree to 1e-9. The runs use Adam's `optim.eps = 1e-6`:
///   Adam divides by √v + ε, so a gradient entry near ε passes its last-bit rounding to
///   the update multiplied by lr/ε (10⁵ with the default ε = 1e-8), which puts even one
///   process with 1 against 2 intra-op threads 4e-10 apart after 5 CGD steps; at 1e-6
///   the comparison sits well above that floor and a wrong gradient (≥ 1e-6) still fails.
/// - The weights did move (step 1 against step 5, > 1e-6).
pub fn world_size_invariance(sets: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    synth(&d, 8, 6, 36);
    let cfg = small_config(tmp.path(), &d, "precision = \"f64\"");
    let mut sets = sets.to_vec();
    sets.extend(["sampler.samples_per_class=3", "optim.eps=1e-6"]);
    let sets = sets.as_slice();
    let grads = example("first_step_grads");
    let first_step = |np: usize| {
        let out = tmp.path().join(format!("g{np}.safetensors"));
        let mut c = if np == 1 {
            let mut c = Command::new(&grads);
            c.env("OMP_NUM_THREADS", "1");
            c
        } else {
            mpirun_with(np, &grads)
        };
        c.arg(&cfg).arg(&out).args(sets);
        ok(c);
        out
    };
    let with_steps = |steps: &'static str| {
        let mut v = sets.to_vec();
        v.push(steps);
        v
    };
    let five = with_steps("train.steps=5");
    let g1 = first_step(1);
    train(1, &cfg, &tmp.path().join("w1"), &five);
    for np in [2, 3, 4] {
        let diff = max_rel_diff(&g1, &first_step(np));
        assert!(
            diff <= 1e-12,
            "first f64 step: 1 rank vs {np} ranks, gradients differ by {diff} (relative)"
        );
        let run = tmp.path().join(format!("w{np}"));
        train(np, &cfg, &run, &five);
        let diff = model_diff(&tmp.path().join("w1"), &run);
        assert!(
            diff <= 1e-9,
            "1 rank vs {np} ranks after 5 f64 steps: relative difference {diff}"
        );
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        for line in metrics.lines() {
            let m: serde_json::Value = serde_json::from_str(line).unwrap();
            let (obj, step) = (m["objective_s"].as_f64(), m["step_s"].as_f64());
            assert!(
                matches!((obj, step), (Some(o), Some(s)) if o > 0.0 && o <= s),
                "metrics.jsonl needs 0 < objective_s <= step_s: {line}"
            );
            let (wait, comm) = (m["comm_wait_s"].as_f64(), m["comm_s"].as_f64());
            assert!(
                matches!((wait, comm), (Some(w), Some(c)) if w > 0.0 && w <= c),
                "metrics.jsonl needs 0 < comm_wait_s <= comm_s on {np} ranks: {line}"
            );
            let elapsed = m["elapsed_s"].as_f64();
            assert!(
                matches!(elapsed, Some(e) if e > 0.0),
                "metrics.jsonl needs elapsed_s > 0: {line}"
            );
        }
    }
    train(
        1,
        &cfg,
        &tmp.path().join("w1b"),
        &with_steps("train.steps=1"),
    );
    let moved = model_diff(&tmp.path().join("w1"), &tmp.path().join("w1b"));
    assert!(
        moved > 1e-6,
        "weights barely changed between step 1 and 5: {moved}"
    );
}

/// The little-endian u64 at byte `at`.
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The table offsets of a version 2 `.dmlds` preamble (docs/dmlds.md): `(index, labels,
/// record CRCs, metadata)`, from bytes 24, 32, 64 and 40.
pub fn dmlds_tables(b: &[u8]) -> (usize, usize, usize, usize) {
    let at = |o| u64_at(b, o) as usize;
    (at(24), at(32), at(64), at(40))
}

/// A version 2 `.dmlds` file's bytes rewritten as version 1 (docs/dmlds.md): the record
/// CRCs dropped, a 64-byte preamble of version 1, the metadata's body checksum (records,
/// index, labels) and `meta_crc` recomputed.
pub fn dmlds_version_1(v2: &[u8]) -> Vec<u8> {
    let page = dml::data::format::PAGE as usize;
    let (labels, crcs, meta) = (
        u64_at(v2, 32) as usize,
        u64_at(v2, 64) as usize,
        u64_at(v2, 40) as usize,
    );
    assert_eq!(crcs, labels + 4 * u64_at(v2, 16) as usize);
    let mut b = v2[..crcs].to_vec();
    let body = crc32fast::hash(&b[page..]);
    let mut m: serde_json::Value = serde_json::from_slice(&v2[meta..]).expect("metadata");
    m["checksum"] = body.into();
    let json = serde_json::to_vec(&m).expect("json");
    b[64..80].fill(0);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&crc32fast::hash(&json).to_le_bytes());
    b[40..48].copy_from_slice(&(crcs as u64).to_le_bytes());
    b[48..56].copy_from_slice(&(json.len() as u64).to_le_bytes());
    b[56..64].copy_from_slice(&((crcs + json.len()) as u64).to_le_bytes());
    b.extend_from_slice(&json);
    b
}

/// The dml loss for one loss spec of the PML fixture scripts
/// (`tools/make_loss_fixtures.py`, `tools/make_xbm_fixtures.py`): `kind` triplet (`miner`,
/// `margin`, `soft`, `distance`), multi_similarity (`alpha`, `beta`, `base`, `epsilon`) or
/// margin (`margin`, `beta`, `cutoff`: D&C's sampler),
/// with the chunk budget `budget` (elements) or the default.
pub fn spec_loss(spec: &serde_json::Value, budget: Option<i64>) -> Box<dyn dml::loss::MetricLoss> {
    use dml::loss::{Distance, MarginLoss, MultiSimilarityLoss, TripletLoss, TripletMiner};
    let f = |k: &str| {
        spec[k]
            .as_f64()
            .unwrap_or_else(|| panic!("spec {k}: {spec}"))
    };
    if spec["kind"] == "margin" {
        let loss = MarginLoss::new(f("margin"), f("beta"), f("cutoff"));
        return Box::new(match budget {
            Some(b) => loss.with_budget(b),
            None => loss,
        });
    }
    if spec["kind"] == "triplet" {
        let miner = match spec["miner"].as_str().unwrap() {
            "batch_hard" => TripletMiner::BatchHard,
            "batch_all" => TripletMiner::All,
            "semi_hard" => TripletMiner::SemiHard,
            "none" => TripletMiner::None,
            m => panic!("unknown miner {m}"),
        };
        let distance = match spec["distance"].as_str().unwrap() {
            "euclidean" => Distance::Euclidean,
            _ => Distance::Cosine,
        };
        let soft = spec["soft"].as_bool().unwrap();
        let loss = TripletLoss::new(f("margin"), soft, miner, distance);
        match budget {
            Some(b) => Box::new(loss.with_budget(b)),
            None => Box::new(loss),
        }
    } else {
        let eps = spec["epsilon"].as_f64();
        let loss = MultiSimilarityLoss::new(f("alpha"), f("beta"), f("base"), eps);
        match budget {
            Some(b) => Box::new(loss.with_budget(b)),
            None => Box::new(loss),
        }
    }
}
