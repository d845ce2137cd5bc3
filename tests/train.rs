//! Single-process training: resume determinism, NaN handling, learning on generated data.
mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use dml::config::Config;
use dml::data::Dataset;
use dml::embed::{embed_dataset, EmbedOptions};
use dml::eval::metrics::{evaluate, EvalOptions};
use dml::model::Model;

/// Trains 6 steps straight and 3 + resume to 6 with the same `--set`s; returns both runs.
fn straight_and_resumed(tmp: &std::path::Path, sets: &[&str]) -> (PathBuf, PathBuf) {
    synth(&tmp.join("data"), 8, 6, 36);
    let cfg = small_config(tmp, &tmp.join("data"), "");
    let with_sets = |c: &mut std::process::Command| {
        for s in sets {
            c.args(["--set", s]);
        }
    };
    let straight = tmp.join("straight");
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["train", "--config"])
        .arg(&cfg);
    with_sets(&mut c);
    c.arg("--out").arg(&straight);
    ok(c);
    let parted = tmp.join("parted");
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["train", "--config"])
        .arg(&cfg);
    with_sets(&mut c);
    c.args(["--set", "train.steps=3", "--out"]).arg(&parted);
    ok(c);
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["train", "--resume"])
        .arg(&parted)
        .args(["--set", "train.steps=6"]);
    ok(c);
    (straight, parted)
}

fn metrics(run: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn resume_gives_the_same_weights_as_a_straight_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, parted) = straight_and_resumed(tmp.path(), &[]);
    let d = model_diff(&straight, &parted);
    assert_eq!(d, 0.0, "resumed run differs from the straight run by {d}");
    // metrics.jsonl has exactly one line per step, in order, after the resume.
    let lines = metrics(&parted);
    let steps: Vec<u64> = lines.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    // Only the newest checkpoints are kept, each complete.
    for s in [3, 6] {
        let dir = parted.join(format!("checkpoints/step-{s}"));
        for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            assert!(dir.join(f).exists(), "{} missing", dir.join(f).display());
        }
    }
}

/// A checkpoint that cannot be written (here a 2 MiB file-size limit, `ulimit -f`, with
/// SIGXFSZ ignored, so that writes fail as on a full disk) stops the run with an error
/// naming the step and the checkpoint to resume from; no half-written `step-N.tmp` is
/// left, and the resumed run equals the straight one.
#[test]
fn a_checkpoint_that_cannot_be_written_keeps_the_last_one_and_resume_continues() {
    let tmp = tempfile::tempdir().unwrap();
    synth(&tmp.path().join("data"), 8, 6, 36);
    let cfg = small_config(tmp.path(), &tmp.path().join("data"), "");
    let straight = tmp.path().join("straight");
    train(1, &cfg, &straight, &["train.checkpoint_every=1"]);
    let run = tmp.path().join("limited");
    train(
        1,
        &cfg,
        &run,
        &["train.checkpoint_every=1", "train.steps=3"],
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 2048; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_dml"))
        .env("OMP_NUM_THREADS", "1")
        .args(["train", "--resume"])
        .arg(&run)
        .args(["--set", "train.steps=6"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the checkpoint of step 4 could not be written")
            && err.contains("its temporary files were removed")
            && err.contains(&format!(
                "the newest checkpoint, {}, is kept (dml train --resume {} continues from it)",
                run.join("checkpoints/step-3").display(),
                run.display()
            )),
        "{err}"
    );
    let entries: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        entries.iter().all(|n| !n.ends_with(".tmp")) && entries.contains(&"step-3".into()),
        "{entries:?}"
    );
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["train", "--resume"])
        .arg(&run)
        .args(["--set", "train.steps=6"]);
    ok(c);
    assert_eq!(model_diff(&straight, &run), 0.0);
}

/// The cross-batch memory is saved with each checkpoint: a run resumed at step 3 reads
/// the same memory as the straight run (batch 16, memory 40 from step 2: 16, 32, 40 rows).
#[test]
fn resume_restores_the_cross_batch_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "loss.name=multi_similarity",
        "miner.name=multi_similarity",
        "xbm.size=40",
        "xbm.start=2",
    ];
    let (straight, parted) = straight_and_resumed(tmp.path(), &sets);
    let d = model_diff(&straight, &parted);
    assert_eq!(
        d, 0.0,
        "resumed XBM run differs from the straight run by {d}"
    );
    assert!(parted.join("checkpoints/step-3/xbm.safetensors").exists());
    for run in [&straight, &parted] {
        let rows: Vec<Option<u64>> = metrics(run)
            .iter()
            .map(|v| v["xbm_rows"].as_u64())
            .collect();
        let want = [None, Some(16), Some(32), Some(40), Some(40), Some(40)];
        assert_eq!(rows, want, "{}", run.display());
        for v in metrics(run).iter().skip(1) {
            let loss = v["xbm_loss"].as_f64().unwrap();
            assert!(loss > 0.0 && v["xbm_mined"].as_u64().unwrap() > 0, "{v}");
        }
    }
    // The straight run without a memory trains differently: the memory term is real.
    let plain = tmp.path().join("plain");
    train(1, &tmp.path().join("config.toml"), &plain, &sets[..2]);
    assert!(model_diff(&straight, &plain) > 1e-6);
    // A resume with another memory size is refused, naming both sizes.
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["train", "--resume"])
        .arg(&parted)
        .args(["--set", "train.steps=8", "--set", "xbm.size=48"]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("has 40 rows") && err.contains("xbm.size is 48"),
        "{err}"
    );
}

/// The BFE head draws its erasing rectangle from (seed, step), and `multistep` milestones
/// given in epochs are resolved to steps in the saved config: a resumed run must
/// reproduce both exactly.
#[test]
fn resume_reproduces_bfe_erasing_and_an_epoch_milestone_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, parted) = straight_and_resumed(
        tmp.path(),
        &[
            "model.head=bfe",
            "lr.policy=multistep",
            "lr.milestone_epochs=[1, 2]",
            "lr.gamma=0.5",
        ],
    );
    let d = model_diff(&straight, &parted);
    assert_eq!(
        d, 0.0,
        "resumed BFE run differs from the straight run by {d}"
    );
    let saved = Config::load(&parted.join("config.toml"), &[]).unwrap();
    assert!(saved.lr.milestone_epochs.is_empty());
    let [m1, m2] = saved.lr.milestones[..] else {
        panic!("two milestones in steps, got {:?}", saved.lr.milestones)
    };
    // One epoch is m1 steps, so the second milestone is two epochs; both fall inside
    // the 6 steps (24 training images, 16 per batch) so the rate really changes.
    assert_eq!(m2, 2 * m1);
    assert!(m2 < 6, "milestones {m1}, {m2}");
    // lr of step s (1-based) is 1e-3 · 0.5^(milestones ≤ s − 1), in both runs.
    for run in [&straight, &parted] {
        for line in metrics(run) {
            let step = line["step"].as_u64().unwrap() as usize;
            let passed = [m1, m2].iter().filter(|&&m| m < step).count() as i32;
            assert_eq!(line["lr"].as_f64(), Some(1e-3 * 0.5f64.powi(passed)));
        }
    }
}

#[test]
fn a_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    synth(&tmp.path().join("data"), 8, 6, 36);
    // An absurd learning rate overflows float32 weights after the first update, so the
    // second step's loss is not finite.
    let cfg = small_config(tmp.path(), &tmp.path().join("data"), "");
    let run = tmp.path().join("run");
    let out = dml()
        .env("OMP_NUM_THREADS", "1")
        .args(["train", "--config"])
        .arg(&cfg)
        .args([
            "--set",
            "optim.lr=1e38",
            "--set",
            "train.checkpoint_every=1",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run should fail: {err}");
    assert!(
        err.contains("loss is") && err.contains("at step 2"),
        "{err}"
    );
    assert!(run.join("checkpoints/step-1/model.safetensors").exists());
    assert!(!run.join("checkpoints/step-2").exists());
    assert!(!run.join("model.safetensors").exists());
    assert!(
        err.contains(&format!(
            "the newest checkpoint, {}, is kept",
            run.join("checkpoints/step-1").display()
        )),
        "{err}"
    );
    // Without checkpoints the message says so.
    let fresh = tmp.path().join("fresh");
    let out = dml()
        .env("OMP_NUM_THREADS", "1")
        .args(["train", "--config"])
        .arg(&cfg)
        .args([
            "--set",
            "optim.lr=1e38",
            "--set",
            "train.checkpoint_every=0",
        ])
        .arg("--out")
        .arg(&fresh)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no checkpoint was written yet"), "{err}");
}

#[test]
fn training_lowers_the_loss_and_raises_test_precision_at_1() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 24, 12, 36);
    let cfg_path = small_config(tmp.path(), &data, "");
    let run = tmp.path().join("run");
    let mut c = dml();
    c.args(["train", "--config"])
        .arg(&cfg_path)
        .args([
            "--set",
            "train.steps=120",
            // A randomly initialised trunk has no meaningful running statistics to freeze.
            "--set",
            "model.bn=train",
            "--set",
            "train.checkpoint_every=0",
            "--out",
        ])
        .arg(&run);
    ok(c);

    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..20]), mean(&losses[losses.len() - 20..]));
    assert!(
        last < 0.8 * first,
        "loss did not fall: first 20 steps {first}, last 20 {last}"
    );

    let cfg = Config::load(&run.join("config.toml"), &[]).unwrap();
    let comm = dml::comm::init(dml::config::Backend::Local).unwrap();
    let test = Arc::new(Dataset::open(&data.join("test.dmlds")).unwrap());
    let opts = EmbedOptions {
        image_size: 32,
        resize: 36,
        batch_size: 32,
        workers: 2,
    };
    let p_at_1 = |model: &Model| {
        let (e, l) = embed_dataset(model, comm.as_ref(), test.clone(), opts).unwrap();
        evaluate(&e, &l, &e, &l, true, &EvalOptions::default())
            .unwrap()
            .0["precision_at_1"]
    };
    let init = Model::new(
        &cfg.model,
        tch::Device::Cpu,
        tch::Kind::Float,
        cfg.train.seed,
    )
    .unwrap();
    let mut trained = Model::new(&cfg.model, tch::Device::Cpu, tch::Kind::Float, 0).unwrap();
    trained.load(&run.join("model.safetensors")).unwrap();
    let (before, after) = (p_at_1(&init), p_at_1(&trained));
    assert!(
        after > before + 0.05,
        "test P@1 {before} at init, {after} after training"
    );
}

#[test]
fn validation_keeps_the_best_model_and_plot_and_lr_find_write_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 16, 6, 36);
    let cfg = small_config(tmp.path(), &data, "");
    let run = tmp.path().join("run");
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["train", "--config"])
        .arg(&cfg)
        .args([
            "--set",
            "eval.every=3",
            "--set",
            "swa.start=4",
            "--set",
            "swa.every=1",
        ])
        .arg("--out")
        .arg(&run);
    ok(c);
    // Validation lines at steps 3 and 6 carry the val_ metrics; the best model is kept.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let validated: Vec<u64> = lines
        .iter()
        .filter(|v| v.get("val_mean_average_precision_at_r").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(validated, vec![3, 6]);
    for v in &lines {
        let spread = v["embedding_spread"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&spread), "{v}");
    }
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best/best.json")).unwrap())
            .unwrap();
    let best_step = best["step"].as_u64().unwrap() as usize;
    let best_value = best["value"].as_f64().unwrap();
    let at_best = lines[best_step - 1]["val_mean_average_precision_at_r"]
        .as_f64()
        .unwrap();
    assert_eq!(best_value, at_best);
    assert!(run.join("best/model.safetensors").exists());
    // SWA from step 4 on: the saved model is the average of steps 4, 5, 6, so it differs
    // from the last checkpoint's weights.
    let d = max_rel_diff(
        &run.join("model.safetensors"),
        &run.join("checkpoints/step-6/model.safetensors"),
    );
    assert!(d > 0.0, "the final model should be the SWA average");

    let mut c = dml();
    c.arg("plot").arg(&run);
    ok(c);
    for f in ["loss.png", "lr.png", "validation.png"] {
        assert!(run.join("plots").join(f).exists(), "{f} missing");
    }

    let lr_dir = tmp.path().join("lr");
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["lr-find", "--config"])
        .arg(&cfg)
        .args(["--steps", "8", "--start", "1e-6", "--end", "5e-4", "--out"])
        .arg(&lr_dir);
    let out = ok(c);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("optim.lr =") && text.contains("lr.max_lr ="),
        "{text}"
    );
    assert!(lr_dir.join("lr_find.png").exists());
    let points = std::fs::read_to_string(lr_dir.join("lr_find.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(points.lines().next().unwrap()).unwrap();
    assert_eq!(first["lr"].as_f64().unwrap(), 1e-6);

    // With a cross-batch memory the range test trains the run's objective: the memory
    // term adds to every loss from xbm.start on (the first step is in-batch only).
    let xbm_dir = tmp.path().join("lr-xbm");
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["lr-find", "--config"])
        .arg(&cfg)
        .args(["--steps", "8", "--start", "1e-6", "--end", "5e-4", "--out"])
        .arg(&xbm_dir)
        .args(["--set", "xbm.size=64", "--set", "xbm.start=2"]);
    ok(c);
    let losses = |dir: &std::path::Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join("lr_find.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (plain, memory) = (losses(&lr_dir), losses(&xbm_dir));
    assert_eq!(plain[0], memory[0], "step 1 has no memory term");
    assert!(memory[1] > plain[1], "{plain:?} vs {memory:?}");
}

/// Batch-hard triplet from a random ResNet collapses as the rate ramps up: the loss falls
/// to the margin (0.2) while the embedding's spread goes to 0. lr-find must stop there
/// and suggest rates from before the spread was lost, not the rate of the lowest loss.
#[test]
fn lr_find_suggests_no_rate_where_the_embedding_collapsed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 16, 6, 36);
    let cfg = small_config(tmp.path(), &data, "");
    let lr_dir = tmp.path().join("lr");
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["lr-find", "--config"])
        .arg(&cfg)
        .args(["--set", "model.bn=frozen", "--set", "loss.margin=0.2"])
        .args(["--steps", "30", "--start", "1e-6", "--end", "3e-3", "--out"])
        .arg(&lr_dir);
    let out = ok(c);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let number_after = |key: &str| -> f64 {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("no {key:?} in {text}"));
        let rest = &text[at + key.len()..];
        let word = rest
            .split(|c: char| c.is_whitespace() || c == ':')
            .next()
            .unwrap();
        word.parse().unwrap_or_else(|e| panic!("{word:?}: {e}"))
    };
    let (max, collapsed) = (
        number_after("lr.max_lr = "),
        number_after("collapsed at lr "),
    );
    assert!(text.contains("left out of the suggestion"), "{text}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(lr_dir.join("lr_find.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let get = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    let spread = |r: &serde_json::Value| get(r, "embedding_spread");
    let peak = rows.iter().map(spread).fold(0.0, f64::max);
    let last = rows.last().unwrap();
    // The ramp ended early on the collapse, with the loss near the margin.
    assert!(rows.len() < 30, "{} steps", rows.len());
    assert!(spread(last) < 0.1 * peak, "{last} (peak {peak})");
    assert!((get(last, "loss") - 0.2).abs() < 0.03, "{last}");
    // The lowest loss is where the embedding collapsed; the suggestion is a step that
    // still had at least half of the spread before it.
    let lowest = rows
        .iter()
        .min_by(|a, b| get(a, "loss").total_cmp(&get(b, "loss")))
        .unwrap();
    assert!(
        max < collapsed && max < get(lowest, "lr"),
        "max {max}, collapsed {collapsed}, lowest {lowest}"
    );
    // (printed to 4 significant digits)
    let i = rows
        .iter()
        .position(|r| (get(r, "lr") / max - 1.0).abs() < 1e-3)
        .unwrap();
    let before = rows[..=i].iter().map(spread).fold(0.0, f64::max);
    assert!(
        spread(&rows[i]) >= 0.5 * before,
        "{} (peak {before})",
        rows[i]
    );
}

#[test]
fn reality_check_trains_four_folds_and_reports_each_and_the_concatenation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 16, 6, 36);
    let cfg = small_config(tmp.path(), &data, "");
    let out = tmp.path().join("rc");
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["reality-check", "--config"])
        .arg(&cfg)
        .args(["--set", "train.steps=2", "--set", "eval.every=2", "--out"])
        .arg(&out);
    ok(c);
    for f in 0..4 {
        assert!(out
            .join(format!("fold-{f}/best/model.safetensors"))
            .exists());
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("reality_check.json")).unwrap())
            .unwrap();
    assert_eq!(report["folds"].as_array().unwrap().len(), 4);
    // small_config's embedding is 32-d: four folds concatenate to 128-d.
    assert_eq!(report["fold_dim"].as_u64(), Some(32));
    assert_eq!(report["concatenated_dim"].as_u64(), Some(128));
    let p1 = report["concatenated"]["precision_at_1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p1));
    let md = std::fs::read_to_string(out.join("reality_check.md")).unwrap();
    assert_eq!(md.lines().filter(|l| l.starts_with("| fold ")).count(), 4);
    assert!(md.contains("| concatenated | 128 |"));

    // Query/gallery protocol (In-Shop): the trained folds are reused and only evaluated
    // again. With the test split as its own gallery every query finds itself (similarity
    // 1, the maximum) first, so P@1 is exactly 1 for each fold and the concatenation;
    // the same-source protocol above excludes the query and cannot reach that.
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["reality-check", "--config"])
        .arg(&cfg)
        .args(["--set", "train.steps=2", "--set", "eval.every=2", "--set"])
        .arg(format!(
            "data.gallery={}",
            data.join("test.dmlds").display()
        ))
        .arg("--out")
        .arg(&out);
    ok(c);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("reality_check.json")).unwrap())
            .unwrap();
    for fold in report["folds"].as_array().unwrap() {
        assert_eq!(fold["precision_at_1"].as_f64(), Some(1.0));
    }
    assert_eq!(report["concatenated"]["precision_at_1"].as_f64(), Some(1.0));
}

/// SWA with `model.bn = "train"`: the saved model carries BatchNorm statistics
/// re-estimated over one epoch for the averaged weights (torch's `update_bn`, whose
/// arithmetic tests/optim_parity.rs checks against torch). Re-estimating again on the
/// saved weights must reproduce the saved statistics exactly, and they must differ from
/// the statistics the last training step left.
#[test]
fn swa_with_training_batchnorm_saves_reestimated_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 8, 6, 36);
    let cfg_path = small_config(tmp.path(), &data, "");
    let run = tmp.path().join("run");
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["train", "--config"])
        .arg(&cfg_path)
        .args([
            "--set",
            "model.bn=train",
            "--set",
            "swa.start=3",
            "--set",
            "swa.every=1",
            "--set",
            "train.steps=5",
        ])
        .arg("--out")
        .arg(&run);
    ok(c);
    let cfg = Config::load(&run.join("config.toml"), &[]).unwrap();
    let comm = dml::comm::local::Local;
    let mut t = dml::train::Trainer::new(&cfg, &comm).unwrap();
    t.model.load(&run.join("model.safetensors")).unwrap();
    let saved: Vec<(String, tch::Tensor)> = t
        .model
        .map_batchnorm_buffers()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    assert!(saved.len() >= 2 * 20, "{} BatchNorm buffers", saved.len());
    dml::train::bn_update::reestimate_bn(&t).unwrap();
    for ((name, want), (_, got)) in saved.iter().zip(t.model.map_batchnorm_buffers()) {
        let d = (&got - want).abs().max().double_value(&[]);
        assert!(d <= 1e-6, "{name}: re-estimated again differs by {d}");
    }
    let last_step = read_weights(&run.join("checkpoints/step-5/model.safetensors"));
    let (name, stale) = last_step
        .iter()
        .find(|(n, _)| n == "trunk.bn1.running_mean")
        .unwrap();
    let now = &saved.iter().find(|(n, _)| n == name).unwrap().1;
    let d = (now - stale).abs().max().double_value(&[]);
    assert!(d > 1e-4, "{name} was not re-estimated ({d})");
}

/// A classifier smaller than the training split's label range is refused before the
/// first step, naming the key and the size it needs.
#[test]
fn a_classifier_too_small_for_the_labels_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 8, 6, 36);
    let cfg = small_config(tmp.path(), &data, "");
    let mut c = dml();
    c.args(["train", "--config"])
        .arg(&cfg)
        .args(["--set", "loss.name=group", "--set", "miner.name=none"])
        .args(["--set", "model.classes=2", "--out"])
        .arg(tmp.path().join("run"));
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // 8 classes → the training half has labels 0..=3: 4 classes are needed.
    assert!(
        err.contains("model.classes is 2") && err.contains("at least 4"),
        "{err}"
    );
}

/// Absolute distillation with a teacher of another embedding size is refused before the
/// first step (it used to fail inside step 1), naming both sizes and the fix.
#[test]
fn absolute_distillation_from_a_teacher_of_another_size_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 8, 6, 36);
    let cfg = small_config(tmp.path(), &data, "");
    let teacher = tmp.path().join("teacher");
    train(
        1,
        &cfg,
        &teacher,
        &["train.steps=1", "model.embedding_dim=16"],
    );
    let run = tmp.path().join("student");
    let mut c = dml();
    c.args(["train", "--config"])
        .arg(&cfg)
        .arg("--set")
        .arg(format!("distill.teacher={}", teacher.display()))
        .args([
            "--set",
            "distill.kind=absolute",
            "--set",
            "model.embedding_dim=8",
        ])
        .arg("--out")
        .arg(&run);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the student (model.head = \"linear\") has 8 dimensions")
            && err.contains("has 16: set model.embedding_dim to that size (16)"),
        "{err}"
    );
    assert!(!run.join("checkpoints").exists() && !run.join("metrics.jsonl").exists());
}

/// A misspelled trunk and an impossible loss/miner pair are refused when the config is
/// read, before the (missing) dataset is opened and before a run directory exists.
#[test]
fn config_errors_come_before_any_file_is_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config.toml");
    std::fs::write(&cfg, "[data]\ntrain = \"missing.dmlds\"\n").unwrap();
    for (set, want) in [
        (
            "model.trunk=resnt50",
            "model.trunk: is `resnt50`, allowed: resnet18",
        ),
        ("loss.name=margin", "use miner.name = dnc_cutoff"),
    ] {
        let run = tmp.path().join("run");
        let out = dml()
            .args(["train", "--config"])
            .arg(&cfg)
            .args(["--set", set, "--out"])
            .arg(&run)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want) && !err.contains("missing.dmlds"),
            "{set}: {err}"
        );
        assert!(!run.exists(), "{set}: a run directory was made");
    }
}

/// Under mpirun (stderr a pipe, the progress bar hidden) rank 0 prints a plain line every
/// `train.log_every` steps and at the last, and each validation's metrics.
#[test]
fn plain_progress_and_validation_lines_under_mpirun() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    synth(&d, 8, 6, 36);
    let cfg = small_config(tmp.path(), &d, "log_every = 2");
    let mut c = mpirun(2);
    c.args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .args(["--set", "train.steps=5", "--set", "eval.every=4"])
        .args(["--set", "sampler.classes_per_batch=2"]);
    let out = ok(c);
    let err = String::from_utf8_lossy(&out.stderr);
    let steps: Vec<&str> = err.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 3, "steps 2, 4 and the last (5):\n{err}");
    for (line, want) in steps
        .iter()
        .zip(["step 2/5  loss ", "step 4/5  loss ", "step 5/5  loss "])
    {
        assert!(
            line.starts_with(want) && line.contains(" img/s") && line.contains("  eta 00:"),
            "{line}"
        );
    }
    let vals: Vec<&str> = err.lines().filter(|l| l.starts_with("val step ")).collect();
    assert_eq!(vals.len(), 2, "validation at steps 4 and 5:\n{err}");
    assert!(
        vals[0].starts_with("val step 4  P@1 ")
            && vals[0].contains("MAP@R")
            && vals[0].ends_with("(best)"),
        "{}",
        vals[0]
    );
    assert!(vals[1].starts_with("val step 5  P@1 "), "{}", vals[1]);
}

#[test]
fn a_damaged_image_stops_training_naming_the_file_and_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 16, 6, 36);
    // One flipped byte in every record's pixels: the header and index still check out,
    // so the file opens and the first batch meets a damaged record.
    let train = data.join("train.dmlds");
    let ds = Dataset::open(&train).unwrap();
    let offsets: Vec<usize> = (0..ds.len())
        .map(|i| ds.image(i).pixels.as_ptr() as usize - ds.image(0).pixels.as_ptr() as usize)
        .collect();
    let first = dml::data::format::PAGE as usize;
    drop(ds);
    let mut bytes = std::fs::read(&train).unwrap();
    for o in offsets {
        bytes[first + o] ^= 0x10;
    }
    std::fs::write(&train, bytes).unwrap();
    let cfg = small_config(tmp.path(), &data, "");
    let mut c = dml();
    c.args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("run"));
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&train.display().to_string()), "{err}");
    assert!(
        err.contains("is damaged") && err.contains("re-create the file"),
        "{err}"
    );
}

#[test]
fn a_second_run_on_a_directory_in_use_fails_at_once_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 8, 6, 36);
    let cfg = small_config(tmp.path(), &data, "");
    let run = tmp.path().join("run");
    let mut first = dml()
        .env("OMP_NUM_THREADS", "1")
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--set", "train.steps=100000", "--out"])
        .arg(&run)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The first run holds the lock once its first checkpoint is written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run.join("checkpoints/step-3").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let holder = format!("dml pid {}", first.id());
    for second in [
        vec![
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        vec!["train", "--resume", run.to_str().unwrap()],
    ] {
        let t = std::time::Instant::now();
        let out = dml().args(&second).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("is in use by") && err.contains(&holder),
            "{err}"
        );
        assert!(t.elapsed().as_secs_f64() < 20.0, "took {:?}", t.elapsed());
    }
    // The lock dies with its process: a killed run can be resumed.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut c = dml();
    c.args(["train", "--resume"])
        .arg(&run)
        .args(["--set", "train.steps=1"]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("is in use"), "{err}");
}

#[test]
fn exploding_weights_warn_and_clipping_keeps_one_and_two_ranks_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 8, 6, 36);
    let cfg = small_config(tmp.path(), &data, "log_every = 1");
    // Adam moves every weight by about lr per step: at lr 10 the trunk's norm grows
    // ~200× in one step while the normalised embeddings keep that step's loss finite
    // (the next one is NaN).
    let blown = tmp.path().join("blown");
    let mut c = dml();
    c.args(["train", "--config"])
        .arg(&cfg)
        .args(["--set", "optim.lr=10", "--set", "train.steps=1", "--out"])
        .arg(&blown);
    let out = ok(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: step 1: the weights' norm"), "{err}");
    let lines = metrics(&blown);
    assert!(lines[0]["weight_growth"].as_f64().unwrap() >= 100.0);
    assert!(lines[0]["warning"].is_string());
    // A sane run measures the norms and does not warn.
    let sane = tmp.path().join("sane");
    let mut c = dml();
    c.args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&sane);
    let out = ok(c);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    for l in metrics(&sane) {
        assert!(l["weight_growth"].as_f64().unwrap() < 1.5, "{l}");
        assert!(l["grad_norm"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l.get("warning").is_none());
    }

    // Clipping to a norm far below the gradients': the reported (pre-clip) norms and the
    // trained weights agree between 1 and 2 ranks in float64.
    let f64_cfg = small_config(tmp.path(), &data, "precision = \"f64\"\nlog_every = 1");
    let sets = [
        "train.max_grad_norm=0.01",
        "optim.eps=1e-6",
        "train.steps=4",
    ];
    let (w1, w2) = (tmp.path().join("c1"), tmp.path().join("c2"));
    train(1, &f64_cfg, &w1, &sets);
    train(2, &f64_cfg, &w2, &sets);
    let diff = model_diff(&w1, &w2);
    assert!(diff <= 1e-9, "clipped runs differ by {diff}");
    for (a, b) in metrics(&w1).iter().zip(metrics(&w2).iter()) {
        let (ga, gb) = (
            a["grad_norm"].as_f64().unwrap(),
            b["grad_norm"].as_f64().unwrap(),
        );
        assert!(ga > 0.01, "the gradients should need clipping: {ga}");
        assert!((ga - gb).abs() <= 1e-9 * ga, "grad_norm {ga} vs {gb}");
    }
    // Clipping changed the training.
    let unclipped = tmp.path().join("u1");
    train(1, &f64_cfg, &unclipped, &sets[1..]);
    assert!(model_diff(&w1, &unclipped) > 1e-6);
}
