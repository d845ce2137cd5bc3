//! Divide and Conquer in training: the clustering and the weights are the same on 1
//! and on 2 ranks (f64, frozen BatchNorm, D&C's margin loss and sampler), and resuming inside a clustered phase
//! continues with the saved clusters (resume determinism).
mod common;

use std::path::{Path, PathBuf};

use common::*;

/// 32 generated classes (16 train classes), D&C with K = 2 clusters re-clustered every
/// 2 steps, the whole embedding from step 5 on; batches of 2 classes × 4 images.
const DNC: [&str; 6] = [
    "dnc.clusters=2",
    "dnc.recluster_every=2",
    "dnc.final_step=5",
    "dnc.kmeans_restarts=2",
    "sampler.classes_per_batch=2",
    "train.steps=6",
];

fn setup(tmp: &Path, extra: &str) -> PathBuf {
    let d = tmp.join("data");
    synth(&d, 32, 6, 36);
    small_config(tmp, &d, extra)
}

/// `common::train` with the D&C settings and `extra`.
fn train_dnc(np: usize, cfg: &Path, out: &Path, extra: &[&str]) {
    let sets: Vec<&str> = DNC.iter().chain(extra).copied().collect();
    train(np, cfg, out, &sets);
}

/// The D&C clustering saved with the checkpoint of `step`.
fn clusters(run: &Path, step: usize) -> Vec<i64> {
    let p = run.join(format!("checkpoints/step-{step}/state.json"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["dnc"]["clusters"]
        .as_array()
        .expect("a clustering in the checkpoint")
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// D&C's margin loss against a cross-batch memory (issue 18): the memory's rows are
/// sliced like the step's embeddings in the clustered phases and whole from step 5 on;
/// 1, 2, 3 and 4 ranks train the same model after 6 f64 steps (1e-9), and the memory
/// term is real (it mines triplets and changes the model).
#[test]
fn margin_loss_with_a_memory_agrees_on_one_to_four_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), "precision = \"f64\"");
    let sets = [
        "loss.name=margin",
        "miner.name=dnc_cutoff",
        "sampler.classes_per_batch=3",
        "optim.eps=1e-6",
        "xbm.size=30",
        "xbm.start=1",
    ];
    let w1 = tmp.path().join("w1");
    train_dnc(1, &cfg, &w1, &sets);
    let metrics = std::fs::read_to_string(w1.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("step").is_some())
        .collect();
    let rows: Vec<Option<u64>> = steps.iter().map(|v| v["xbm_rows"].as_u64()).collect();
    assert_eq!(
        rows,
        [Some(12), Some(24), Some(30), Some(30), Some(30), Some(30)],
        "{metrics}"
    );
    assert!(
        steps.iter().all(|v| v["xbm_mined"].as_u64() > Some(0)),
        "{metrics}"
    );
    let plain = tmp.path().join("plain");
    train_dnc(1, &cfg, &plain, &sets[..4]);
    assert!(
        model_diff(&w1, &plain) > 1e-6,
        "the memory term changed nothing"
    );
    for np in [2, 3, 4] {
        let w = tmp.path().join(format!("w{np}"));
        train_dnc(np, &cfg, &w, &sets);
        let diff = model_diff(&w1, &w);
        assert!(
            diff <= 1e-9,
            "1 rank vs {np} ranks with a memory: relative difference {diff}"
        );
    }
}

/// 1, 2, 3 and 4 ranks (a global batch of 3 × 4, divisible by each W): the same
/// clustering and, after 6 f64 steps, the same model (1e-9; Adam's ε = 1e-6, see
/// `common::world_size_invariance`).
#[test]
fn clustering_and_weights_agree_on_one_to_four_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), "precision = \"f64\"");
    // The official D&C loss: its sampler runs on each rank's anchors of the gathered batch.
    let margin = [
        "loss.name=margin",
        "miner.name=dnc_cutoff",
        "sampler.classes_per_batch=3",
        "optim.eps=1e-6",
    ];
    let w1 = tmp.path().join("w1");
    train_dnc(1, &cfg, &w1, &margin);
    // Step 3 lies in the phase clustered at step 2 (0-based), after training.
    let c1 = clusters(&w1, 3);
    let used: std::collections::BTreeSet<i64> = c1.iter().copied().filter(|&c| c >= 0).collect();
    assert_eq!(used.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    for np in [2, 3, 4] {
        let w = tmp.path().join(format!("w{np}"));
        train_dnc(np, &cfg, &w, &margin);
        assert_eq!(
            c1,
            clusters(&w, 3),
            "the clustering differs between 1 and {np} ranks"
        );
        let diff = model_diff(&w1, &w);
        assert!(
            diff <= 1e-9,
            "1 rank vs {np} ranks: relative difference {diff}"
        );
    }
}

#[test]
fn resuming_inside_a_clustered_phase_matches_a_straight_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), "");
    let straight = tmp.path().join("straight");
    train_dnc(1, &cfg, &straight, &[]);
    let split = tmp.path().join("split");
    train_dnc(1, &cfg, &split, &["train.steps=3"]);
    let mut c = dml();
    c.env("OMP_NUM_THREADS", "1")
        .args(["train", "--resume"])
        .arg(&split);
    for s in DNC {
        c.args(["--set", s]);
    }
    ok(c);
    let d = model_diff(&straight, &split);
    assert_eq!(
        d, 0.0,
        "resumed D&C run differs from the straight run by {d}"
    );
}

#[test]
fn too_many_clusters_for_the_batch_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), "");
    let mut c = dml();
    c.args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .args(["--set", "dnc.clusters=16", "--set", "dnc.recluster_every=2"])
        .args([
            "--set",
            "dnc.final_step=4",
            "--set",
            "sampler.classes_per_batch=4",
        ]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dnc.clusters"), "{err}");
}
