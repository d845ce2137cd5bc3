//! The cross-batch memory against PML 2.9's `CrossBatchMemory` (issue 18).
//!
//! The oracle is `tools/make_xbm_fixtures.py`, run at every test run from the repo's venv
//! into a temporary directory: a fixed sequence of five f64 batches of 8 rows fed through
//! `CrossBatchMemory(loss, memory_size=20, miner)` for triplet (batch-hard, batch-all,
//! semi-hard, all triplets; Euclidean and cosine) and Multi-Similarity (with its miner and
//! on all pairs), and the margin loss with D&C's cutoff sampler (written as a PML miner in
//! the script, at cutoffs 0.5 and 1.2). dml's memory, fed the same sequence, must give the same loss and
//! d loss / d emb at every step within 1e-10 (relative), with one chunk and with one
//! anchor row per chunk.
mod common;

use std::collections::HashMap;

use common::{rel_diff, script_output_once, spec_loss};
use dml::config::XbmConfig;
use dml::loss::xbm::CrossBatchMemory;
use dml::loss::Shard;
use serde_json::Value;
use tch::Tensor;

fn fixtures() -> (Value, HashMap<String, Tensor>) {
    let dir = script_output_once("tools/make_xbm_fixtures.py");
    let index = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap());
    let tensors = Tensor::read_safetensors(dir.join("xbm.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    (index.unwrap(), tensors)
}

fn check(budget: Option<i64>) {
    let (index, fx) = fixtures();
    let size = index["size"].as_u64().unwrap() as usize;
    let steps = index["steps"].as_u64().unwrap() as usize;
    let mut failures = Vec::new();
    let mut nonzero = 0;
    for (name, spec) in index["losses"].as_object().unwrap() {
        let loss = spec_loss(spec, budget);
        let mut memory = CrossBatchMemory::new(&XbmConfig {
            size,
            ..Default::default()
        });
        for t in 0..steps {
            let emb = fx[&format!("emb.{t}")]
                .detach()
                .copy()
                .set_requires_grad(true);
            let labels = &fx[&format!("labels.{t}")];
            let own = memory.enqueue(&[emb.detach()], labels).unwrap();
            let view = memory.view(0, &own, None).unwrap();
            assert_eq!(view.rows.size()[0], (8 * (t + 1)).min(size) as i64);
            let b = labels.size()[0];
            let out = loss
                .compute_memory_shard(&emb, labels, &view, &Shard::whole(b))
                .unwrap();
            out.loss.backward();
            let grad = match emb.grad() {
                g if g.defined() => g,
                _ => emb.zeros_like(),
            };
            let want_v = &fx[&format!("{name}.value.{t}")];
            let want_g = &fx[&format!("{name}.grad.{t}")];
            let dv = rel_diff(&out.loss.detach(), want_v, 1.0);
            let dg = rel_diff(&grad, want_g, 1e-6);
            if want_v.double_value(&[]) > 0.0 {
                nonzero += 1;
            }
            if dv > 1e-10 || dg > 1e-10 {
                failures.push(format!(
                    "{name} step {t}: value {} vs PML {} (rel {dv:.2e}), grad rel {dg:.2e}",
                    out.loss.double_value(&[]),
                    want_v.double_value(&[])
                ));
            }
        }
    }
    assert!(nonzero >= 30, "only {nonzero} non-zero oracle values");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn memory_loss_matches_pml_cross_batch_memory() {
    check(None);
}

#[test]
fn memory_loss_matches_pml_one_anchor_per_chunk() {
    // 20 elements: one anchor row of up to 20 memory rows per chunk (dense triplets: a
    // row's [P, M] needs more, and the chunk still holds one row).
    check(Some(20));
}

/// PML removes a self-comparison after mining: an anchor whose class has no other image
/// in the memory keeps no batch-hard triplet, and its own copy is never a positive.
#[test]
fn own_copy_is_never_a_positive() {
    let cfg = XbmConfig {
        size: 4,
        ..Default::default()
    };
    let mut memory = CrossBatchMemory::new(&cfg);
    let emb = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 0.6, 0.8]).view([3, 2]);
    let labels = Tensor::from_slice(&[0i64, 1, 1]);
    let own = memory.enqueue(&[emb.shallow_clone()], &labels).unwrap();
    let view = memory.view(0, &own, None).unwrap();
    let spec = serde_json::json!({"kind": "triplet", "miner": "batch_hard", "margin": 0.2, "soft": false, "distance": "euclidean"});
    let loss = spec_loss(&spec, None);
    let e = emb.set_requires_grad(true);
    let out = loss
        .compute_memory_shard(&e, &labels, &view, &Shard::whole(3))
        .unwrap();
    // Row 0 (class 0) has only its own copy: no triplet. Rows 1 and 2 are each other's
    // positive at distance |(0,1) − (0.6,0.8)| = √0.4 = 0.632456; the negative is row 0 at
    // √2 = 1.414214 from row 1 and √0.8 = 0.894427 from row 2: hinge terms
    // 0.632456 − 1.414214 + 0.2 < 0 and 0.632456 − 0.894427 + 0.2 < 0, so both are 0.
    assert_eq!(out.stats.mined, 2);
    assert_eq!(out.stats.active, 0);
    assert_eq!(out.loss.double_value(&[]), 0.0);
    // The second batch overwrites slots 3, 0, 1 (the ring wraps): slot 2 still holds row 2
    // of the first batch.
    let own = memory
        .enqueue(&[e.detach() * 2.0], &Tensor::from_slice(&[2i64, 2, 0]))
        .unwrap();
    assert_eq!(Vec::<i64>::try_from(&own).unwrap(), [3, 0, 1]);
    let view = memory.view(0, &own, None).unwrap();
    assert_eq!(Vec::<i64>::try_from(&view.labels).unwrap(), [2, 0, 1, 2]);
    // Divide and Conquer: a view of slice 1 of 2 holds the second half of the columns.
    let sliced = memory.view(0, &own, Some((1, 2))).unwrap();
    assert_eq!(sliced.rows.size(), [4, 1]);
    let whole = memory.view(0, &own, None).unwrap();
    assert!(sliced.rows.equal(&whole.rows.narrow(1, 1, 1)));
}
