//! The sharded objective (DESIGN.md, "Sharded objective"): `examples/bench_objective`
//! under `mpirun -np W` for W = 1, 2, 3, 4 on one f64 global batch of 48 random unit
//! embeddings (labels in groups of 4). Each rank computes only the terms of its own
//! anchors and the partial gradients are summed; the global loss and the whole
//! gradient dL/dE `[48, 8]` must equal the one-process (unsharded) values to 1e-12,
//! for every loss, miner, the classifier's cross-entropy, Group Loss (computed by one
//! rank) and both distillation terms.
mod common;

use common::*;

/// Runs the case on 1..=4 ranks and compares the loss and gradient with W = 1.
fn same_at_every_world_size(args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = example("bench_objective");
    let run = |np: usize| {
        let out = tmp.path().join(format!("w{np}.safetensors"));
        let mut c = mpirun_with(np, &bin);
        c.args([
            "--batch",
            "48",
            "--dim",
            "8",
            "--precision",
            "f64",
            "--steps",
            "0",
        ])
        .args(args)
        .arg("--dump")
        .arg(&out);
        ok(c);
        let t: std::collections::HashMap<String, tch::Tensor> =
            read_weights(&out).into_iter().collect();
        (t["loss"].double_value(&[0]), t["grad"].shallow_clone())
    };
    let (loss1, grad1) = run(1);
    let scale = grad1.abs().max().double_value(&[]);
    assert!(
        loss1 > 0.0 && scale > 0.0,
        "{args:?}: the case is degenerate (loss {loss1}, largest gradient {scale})"
    );
    for np in [2, 3, 4] {
        let (loss, grad) = run(np);
        let dl = (loss - loss1).abs() / loss1.abs();
        let dg = rel_diff(&grad, &grad1, 1e-30);
        assert!(
            dl <= 1e-12 && dg <= 1e-12,
            "{args:?}: {np} ranks against 1: loss {loss} vs {loss1} (relative {dl}), gradient relative {dg}"
        );
    }
}

#[test]
fn triplet_batch_hard() {
    same_at_every_world_size(&["--loss", "triplet", "--miner", "batch_hard"]);
}

#[test]
fn triplet_batch_all() {
    same_at_every_world_size(&["--loss", "triplet", "--miner", "batch_all"]);
}

#[test]
fn triplet_semi_hard_cosine() {
    same_at_every_world_size(&[
        "--loss",
        "triplet",
        "--miner",
        "semi_hard",
        "--set",
        "loss.distance=cosine",
        "--set",
        "loss.margin=0.3",
    ]);
}

#[test]
fn triplet_all_triplets_soft_margin() {
    same_at_every_world_size(&[
        "--loss",
        "triplet",
        "--miner",
        "none",
        "--set",
        "loss.soft_margin=true",
    ]);
}

#[test]
fn multi_similarity_mined() {
    same_at_every_world_size(&["--loss", "multi_similarity", "--miner", "multi_similarity"]);
}

#[test]
fn multi_similarity_all_pairs() {
    same_at_every_world_size(&["--loss", "multi_similarity", "--miner", "none"]);
}

#[test]
fn margin_with_the_dnc_cutoff_sampler() {
    same_at_every_world_size(&["--loss", "margin", "--miner", "dnc_cutoff"]);
}

/// A classifier's smoothed, tempered cross-entropy next to the metric loss (BFE, CGD).
#[test]
fn cross_entropy_of_a_classifier() {
    same_at_every_world_size(&[
        "--loss",
        "triplet",
        "--miner",
        "batch_hard",
        "--classes",
        "5",
        "--set",
        "loss.ce_smoothing=0.1",
        "--set",
        "loss.ce_temperature=0.5",
    ]);
}

/// Group Loss is not sharded: rank 0 computes it, the others contribute zero.
#[test]
fn group_loss_on_one_rank() {
    same_at_every_world_size(&["--loss", "group", "--miner", "none", "--classes", "5"]);
}

#[test]
fn distillation_absolute() {
    same_at_every_world_size(&[
        "--loss",
        "multi_similarity",
        "--miner",
        "multi_similarity",
        "--distill",
        "absolute",
    ]);
}

#[test]
fn distillation_relative() {
    same_at_every_world_size(&[
        "--loss",
        "triplet",
        "--miner",
        "batch_hard",
        "--distill",
        "relative",
    ]);
}
