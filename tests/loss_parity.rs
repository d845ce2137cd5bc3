//! Parity of dml::loss with pytorch-metric-learning 2.9 (DESIGN.md invariant 4).
//!
//! The oracle is `tools/make_loss_fixtures.py`, run at every test run from the repo's
//! venv (`<CARGO_MANIFEST_DIR>/.venv/bin/python tools/make_loss_fixtures.py --out DIR`)
//! into a temporary directory: for each case (random, clustered, ties, one-image
//! class, one class, big; f32 and f64) and each loss + miner, PML's loss value and
//! d loss / d emb, which must match dml's within 1e-5 (f32, relative to the gradient's
//! largest entry) or 1e-10 (f64).
mod common;

use common::rel_diff;

use std::collections::HashMap;
use std::path::Path;

use dml::config::{LossConfig, LossDistance, LossName, MinerConfig, MinerName};
use dml::loss::{self, Distance, MetricLoss, MultiSimilarityLoss, TripletLoss, TripletMiner};
use serde_json::Value;
use tch::{Kind, Tensor};

/// The oracle's output directory, made once per test binary.
fn fixtures() -> &'static Path {
    common::script_output_once("tools/make_loss_fixtures.py")
}

fn index() -> Value {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(case: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(format!("{case}.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

/// Runs `loss` on a fresh leaf copy of `emb`: (value, gradient).
fn run(loss: &dyn MetricLoss, emb: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let e = emb.detach().copy().set_requires_grad(true);
    let out = loss.compute(&e, labels).unwrap();
    assert_eq!(out.loss.size(), Vec::<i64>::new(), "the loss is 0-d");
    assert_eq!(out.loss.kind(), emb.kind());
    out.loss.backward();
    let g = e.grad();
    let g = if g.defined() { g } else { e.zeros_like() };
    (out.loss.detach(), g)
}

/// Checks every loss on every case, with dml's default chunking and with chunks small
/// enough that every case takes several (the bounded-memory path).
fn check_all(budget: Option<i64>, only: &[&str]) {
    let idx = index();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (case, info) in idx["cases"].as_object().unwrap() {
        if !only.is_empty() && !only.contains(&case.as_str()) {
            continue;
        }
        let fx = load(case);
        let (emb, labels) = (&fx["emb"], &fx["labels"]);
        let f64_case = info["dtype"] == "torch.float64";
        let tol = if f64_case { 1e-10 } else { 1e-5 };
        for (lname, spec) in idx["losses"].as_object().unwrap() {
            let l = common::spec_loss(spec, budget);
            let (value, grad) = run(l.as_ref(), emb, labels);
            let want_v = &fx[&format!("{lname}.value")];
            let want_g = &fx[&format!("{lname}.grad")];
            let dv = rel_diff(&value, want_v, 1.0);
            // Gradients are O(1/B); compare relative to the largest entry.
            let dg = rel_diff(&grad, want_g, 1e-6);
            checked += 1;
            if dv > tol || dg > tol {
                failures.push(format!(
                    "{case} {lname}: value {} vs PML {} (rel {dv:.2e}), grad rel {dg:.2e}",
                    value.double_value(&[]),
                    want_v.double_value(&[]),
                ));
            }
        }
    }
    assert!(checked >= 30, "only {checked} comparisons");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn pml_parity_one_chunk() {
    check_all(None, &[]);
}

#[test]
fn pml_parity_many_chunks() {
    // 16384 elements: B = 256 batch-hard takes 64 rows per chunk (4 chunks), batch-all
    // 21 (13 chunks); one class of 64 (63 positives each) takes 4 rows per chunk.
    check_all(
        Some(16384),
        &[
            "ties_f32",
            "one_class_f64",
            "one_image_class_f64",
            "big_f64",
        ],
    );
}

/// Hand-built 4-sample batch in 2-D, labels [0, 0, 1, 1]:
/// x0 = (1, 0), x1 = (0, 1), x2 = (1, 0.0) rotated … given as unit vectors at angles
/// 0°, 90°, 30°, 120°. Euclidean distances on the unit circle: d = 2 sin(Δ/2).
/// Anchor 0: positive 1 (Δ 90°, d = √2 ≈ 1.41421), negatives 2 (30°, 0.51764) and
/// 3 (120°, 1.73205). Batch-hard with m = 0.2: v0 = 1.41421 − 0.51764 + 0.2 = 1.09658.
/// Anchor 1 (90°): positive 0 (1.41421); negatives 2 (60°, d = 1), 3 (30°, 0.51764):
/// v1 = 1.41421 − 0.51764 + 0.2 = 1.09658. Anchor 2 (30°): positive 3 (90°, 1.41421);
/// negatives 0 (0.51764), 1 (1): v2 = 1.09658. Anchor 3 (120°): positive 2 (1.41421),
/// negatives 0 (1.73205), 1 (0.51764): v3 = 1.09658. All 4 active, loss = 1.09658.
/// Cosine similarities: mined positives cos 90° = 0 each; mined negatives cos 30° =
/// 0.866025 each.
#[test]
fn mining_stats_batch_hard_hand_built() {
    let deg = [0.0f64, 90.0, 30.0, 120.0];
    let pts: Vec<f64> = deg
        .iter()
        .flat_map(|d| {
            let r = d.to_radians();
            [r.cos(), r.sin()]
        })
        .collect();
    let emb = Tensor::from_slice(&pts)
        .view([4, 2])
        .set_requires_grad(true);
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
    let l = TripletLoss::new(0.2, false, TripletMiner::BatchHard, Distance::Euclidean);
    let out = l.compute(&emb, &labels).unwrap();
    let v = 2f64.sqrt() - 2.0 * 15f64.to_radians().sin() + 0.2;
    assert!((out.loss.double_value(&[]) - v).abs() < 1e-12);
    let s = out.stats;
    assert_eq!((s.mined, s.active), (4, 4));
    assert!(s.pos_sim_mean.abs() < 1e-12, "{s:?}");
    assert!(
        (s.neg_sim_mean - 30f64.to_radians().cos()).abs() < 1e-12,
        "{s:?}"
    );
    assert_eq!(s.contributing_fraction, 1.0);
}

/// Same batch, batch-all with m = 0.2 (TripletMarginMiner "all": d_an − d_ap ≤ m).
/// Each anchor has 1 positive (d = √2) and 2 negatives at d = 0.51764 and 1 or 1.73205:
/// anchors 0 and 3: negatives 0.51764 (margin −0.897, kept, v = 1.09658) and 1.73205
/// (margin 0.318 > 0.2, dropped); anchors 1 and 2: 0.51764 (v = 1.09658) and 1
/// (margin −0.414, kept, v = 0.61421). Mined 6, active 6, loss = (4·1.09658 +
/// 2·0.61421)/6. Positive cos: 0 (×6). Negative cos: four at cos 30°, two at cos 60°.
#[test]
fn mining_stats_batch_all_hand_built() {
    let deg = [0.0f64, 90.0, 30.0, 120.0];
    let pts: Vec<f64> = deg
        .iter()
        .flat_map(|d| {
            let r = d.to_radians();
            [r.cos(), r.sin()]
        })
        .collect();
    let emb = Tensor::from_slice(&pts)
        .view([4, 2])
        .set_requires_grad(true);
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
    let l = TripletLoss::new(0.2, false, TripletMiner::All, Distance::Euclidean);
    let out = l.compute(&emb, &labels).unwrap();
    let (sq2, d30) = (2f64.sqrt(), 2.0 * 15f64.to_radians().sin());
    let v = (4.0 * (sq2 - d30 + 0.2) + 2.0 * (sq2 - 1.0 + 0.2)) / 6.0;
    assert!((out.loss.double_value(&[]) - v).abs() < 1e-12);
    let s = out.stats;
    assert_eq!((s.mined, s.active), (6, 6));
    let neg = (4.0 * 30f64.to_radians().cos() + 2.0 * 0.5) / 6.0;
    assert!((s.neg_sim_mean - neg).abs() < 1e-12, "{s:?}");
    assert_eq!(s.contributing_fraction, 1.0);
}

/// Multi-Similarity miner on the same batch, ε = 0.1. Similarities are cos Δ.
/// Anchor 0 (0°): positive 1 → 0; negatives 2 → cos 30°, 3 → −0.5. max neg 0.866:
/// positive kept (0 − 0.1 < 0.866); min pos 0: negative 2 kept (0.966 > 0), 3 dropped
/// (−0.4 < 0). Anchor 3 (120°) mirrors it (negative 1 at 30° kept, 0 at 120° dropped).
/// Anchor 1 (90°): positive 0 → 0; negatives 2 (60°, 0.5) and 3 (30°, 0.866) both
/// kept (0.6 > 0, 0.966 > 0); anchor 2 mirrors it. Mined: 4 positives + 6 negatives.
/// Loss: P = ½ log(1 + e^{−2(0 − 0.5)}) per anchor; anchors 0, 3 add
/// 1/40 log(1 + e^{40(c30 − 0.5)}), anchors 1, 2 add 1/40 log(1 + e^{40(c30 − 0.5)} + e⁰).
#[test]
fn mining_stats_multi_similarity_hand_built() {
    let deg = [0.0f64, 90.0, 30.0, 120.0];
    let pts: Vec<f64> = deg
        .iter()
        .flat_map(|d| {
            let r = d.to_radians();
            [r.cos(), r.sin()]
        })
        .collect();
    let emb = Tensor::from_slice(&pts)
        .view([4, 2])
        .set_requires_grad(true);
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
    let l = MultiSimilarityLoss::new(2.0, 40.0, 0.5, Some(0.1));
    let out = l.compute(&emb, &labels).unwrap();
    let c30 = 30f64.to_radians().cos();
    let p = 0.5 * (1.0 + 1f64.exp()).ln();
    let e = (40.0 * (c30 - 0.5)).exp();
    let n1 = (1.0 + e).ln() / 40.0;
    let n2 = (2.0 + e).ln() / 40.0;
    let want = (4.0 * p + 2.0 * n1 + 2.0 * n2) / 4.0;
    assert!((out.loss.double_value(&[]) - want).abs() < 1e-12);
    let s = out.stats;
    assert_eq!((s.mined, s.active), (10, 10));
    assert!(s.pos_sim_mean.abs() < 1e-12, "{s:?}");
    assert!(
        (s.neg_sim_mean - (4.0 * c30 + 2.0 * 0.5) / 6.0).abs() < 1e-12,
        "{s:?}"
    );
    assert_eq!(s.contributing_fraction, 1.0);
}

#[test]
fn no_valid_triplet_is_zero_with_a_graph() {
    let emb = Tensor::randn([5, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    // All distinct labels: no positive anywhere.
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 4]);
    for m in [
        TripletMiner::BatchHard,
        TripletMiner::All,
        TripletMiner::None,
    ] {
        let out = TripletLoss::new(0.2, false, m, Distance::Euclidean)
            .compute(&emb, &labels)
            .unwrap();
        assert_eq!(out.loss.double_value(&[]), 0.0);
        out.loss.backward();
        assert_eq!(emb.grad().abs().sum(Kind::Double).double_value(&[]), 0.0);
        assert_eq!(out.stats.mined, 0);
    }
}

#[test]
fn build_rejects_meaningless_combinations() {
    let cases = [
        (LossName::Triplet, MinerName::MultiSimilarity, "miner.name"),
        (LossName::MultiSimilarity, MinerName::SemiHard, "miner.name"),
    ];
    for (l, m, key) in cases {
        let lc = LossConfig {
            name: l,
            ..LossConfig::default()
        };
        let mc = MinerConfig {
            name: m,
            ..MinerConfig::default()
        };
        let e = loss::build(&lc, &mc).err().expect("rejected").to_string();
        assert!(e.contains(key) && e.contains("loss.name"), "{e}");
    }
    let lc = LossConfig {
        name: LossName::MultiSimilarity,
        distance: LossDistance::Euclidean,
        ..LossConfig::default()
    };
    let mc = MinerConfig {
        name: MinerName::MultiSimilarity,
        ..MinerConfig::default()
    };
    let e = loss::build(&lc, &mc).err().expect("rejected").to_string();
    assert!(e.contains("loss.distance"), "{e}");
    let lc = LossConfig {
        margin: -1.0,
        ..LossConfig::default()
    };
    let e = loss::build(&lc, &MinerConfig::default())
        .err()
        .expect("rejected")
        .to_string();
    assert!(e.contains("loss.margin"), "{e}");
    let ok = loss::build(&LossConfig::default(), &MinerConfig::default()).unwrap();
    assert!(ok.name().contains("batch_hard"), "{}", ok.name());
    // Group Loss (built with its classifier logits by Objective) takes no miner.
    let mut cfg = dml::config::Config::default();
    cfg.loss.name = LossName::Group;
    let e = loss::Objective::build(&cfg)
        .expect_err("rejected")
        .to_string();
    assert!(e.contains("miner.name") && e.contains("loss.name"), "{e}");
    cfg.miner.name = MinerName::None;
    assert!(loss::Objective::build(&cfg).unwrap().needs_logits());
}

/// Group Loss against the PyTorch reference `tools/group_loss_ref.py` (written from the
/// official code; run from the venv into a temporary directory), float64: value and
/// gradients with respect to the features and the logits within 1e-10.
#[test]
fn group_loss_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    common::run_script_out("tools/group_loss_ref.py", dir.path());
    let fx: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("group.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let mut n = 0;
    while let Some(f) = fx.get(&format!("f.{n}")) {
        let p = Vec::<f64>::try_from(&fx[&format!("params.{n}")]).unwrap();
        let g = loss::GroupLoss {
            temperature: p[0],
            anchors: p[1] as usize,
            iterations: p[2] as usize,
            ce_weight: p[3],
        };
        let f = f.detach().copy().set_requires_grad(true);
        let logits = fx[&format!("logits.{n}")]
            .detach()
            .copy()
            .set_requires_grad(true);
        let out = g
            .compute_with_logits(&f, &logits, &fx[&format!("labels.{n}")])
            .unwrap();
        out.loss.backward();
        let dv = rel_diff(&out.loss, &fx[&format!("value.{n}")], 1.0);
        let df = rel_diff(&f.grad(), &fx[&format!("grad_f.{n}")], 1e-12);
        let dl = rel_diff(&logits.grad(), &fx[&format!("grad_logits.{n}")], 1e-12);
        assert!(
            dv < 1e-10 && df < 1e-10 && dl < 1e-10,
            "case {n}: {dv:.2e} {df:.2e} {dl:.2e}"
        );
        n += 1;
    }
    assert_eq!(n, 3);
}
