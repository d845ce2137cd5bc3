//! The margin loss with Divide and Conquer's sampler (`loss.name = "margin"`,
//! `miner.name = "dnc_cutoff"`) against `tools/margin_ref.py`, run at every test run from
//! the repo's venv into a temporary directory. The script implements the official D&C
//! formulas (sampler and loss) and also calls PML 2.9's `MarginLoss` with the triplets
//! its sampler chose. Checked per case: the sampled triplets exactly; loss value and
//! d loss / d emb against the formulas within 1e-10 (f64) or 1e-5 (f32), relative to the
//! gradient's largest entry, and against PML within 1e-6 (PML has no 1e-8 under its
//! square roots and a float32 β) where no triplet's negative is its anchor.
mod common;

use common::rel_diff;

use std::collections::HashMap;
use std::path::Path;

use dml::config::{Config, LossConfig, LossDistance, LossName, MinerConfig, MinerName};
use dml::loss::margin::dnc_sample;
use dml::loss::{self, MarginLoss, MetricLoss};
use dml::ops::normalize;
use serde_json::Value;
use tch::{Kind, Tensor};

/// The reference's output directory, made once per test binary.
fn fixtures() -> &'static Path {
    common::script_output_once("tools/margin_ref.py")
}

fn load(case: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(format!("{case}.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

#[test]
fn margin_loss_matches_reference_and_pml() {
    let idx: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let loss = MarginLoss::new(
        idx["margin"].as_f64().unwrap(),
        idx["beta"].as_f64().unwrap(),
        idx["cutoff"].as_f64().unwrap(),
    );
    let cases = idx["cases"].as_object().unwrap();
    // The reference's cases cover what they are meant to.
    assert!(cases["clustered_f64"]["short_anchors"].as_i64().unwrap() > 0);
    assert!(cases["duplicates_f64"]["triplets"].as_i64().unwrap() > 0);
    assert_eq!(cases["inactive_f64"]["active"].as_i64().unwrap(), 0);
    assert!(cases.len() >= 6);
    for (case, info) in cases {
        let fx = load(case);
        let (emb, labels) = (&fx["emb"], &fx["labels"]);
        let f64_case = info["dtype"] == "torch.float64";
        let tol = if f64_case { 1e-10 } else { 1e-5 };

        let t = dnc_sample(&normalize(emb), labels, loss.cutoff).unwrap();
        assert_eq!(t.anchors, ints(&fx["anchors"]), "{case}: anchors");
        assert_eq!(t.positives, ints(&fx["positives"]), "{case}: positives");
        assert_eq!(t.negatives, ints(&fx["negatives"]), "{case}: negatives");

        let e = emb.detach().copy().set_requires_grad(true);
        let out = loss.compute(&e, labels).unwrap();
        assert_eq!(out.loss.size(), Vec::<i64>::new(), "{case}: 0-d");
        assert_eq!(out.loss.kind(), emb.kind(), "{case}: dtype");
        assert_eq!(out.stats.mined as i64, info["triplets"].as_i64().unwrap());
        assert_eq!(out.stats.active as i64, info["active"].as_i64().unwrap());
        out.loss.backward();
        let g = e.grad();

        let dv = rel_diff(&out.loss, &fx["ref.value"], 1e-12);
        assert!(
            dv <= tol,
            "{case}: value differs from the reference by {dv}"
        );
        let dg = rel_diff(&g, &fx["ref.grad"], 1e-12);
        assert!(dg <= tol, "{case}: grad differs from the reference by {dg}");
        if info["pml"].as_bool().unwrap() {
            let pt = tol.max(1e-6);
            let dv = rel_diff(&out.loss, &fx["pml.value"], 1e-12);
            assert!(dv <= pt, "{case}: value differs from PML by {dv}");
            let dg = rel_diff(&g, &fx["pml.grad"], 1e-12);
            assert!(dg <= pt, "{case}: grad differs from PML by {dg}");
        }
        if info["active"] == 0 {
            assert_eq!(out.loss.double_value(&[]), 0.0, "{case}");
            assert_eq!(g.abs().sum(Kind::Double).double_value(&[]), 0.0, "{case}");
        }
    }
}

/// With cutoff 0 the official code would give anchor 0 of this batch itself as its
/// negative (d = 0.01, unmasked); dml always masks the anchor, so it gets its closest
/// real negative. Points on the unit circle: x0 = (1, 0), x1 = (0.8, 0.6),
/// x2 = (0, 1), x3 = (−0.6, 0.8); classes {0, 1}, {2, 3}; num_neg = 4 / 4 = 1.
/// d(0,2) = √2 < d(0,3) = √3.2, d(1,2) = √0.8 < d(1,3) = √2, d(2,1) = √0.8 < d(2,0),
/// d(3,1) = √2 < d(3,0) = √3.2.
#[test]
fn the_anchor_is_never_its_own_negative_when_real_ones_exist() {
    let x = Tensor::from_slice(&[1.0f64, 0.0, 0.8, 0.6, 0.0, 1.0, -0.6, 0.8]).view([4, 2]);
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
    let t = dnc_sample(&x, &labels, 0.0).unwrap();
    assert_eq!(t.negatives, vec![2, 2, 1, 1]);
    // Cutoff 1.0 masks d(1,2) = d(2,1) = √0.8: anchor 1 takes x3 (√2), anchor 2 x0 (√2).
    let t = dnc_sample(&x, &labels, 1.0).unwrap();
    assert_eq!(t.negatives, vec![2, 3, 0, 1]);
}

fn configs(l: LossName, m: MinerName) -> (LossConfig, MinerConfig) {
    (
        LossConfig {
            name: l,
            ..LossConfig::default()
        },
        MinerConfig {
            name: m,
            ..MinerConfig::default()
        },
    )
}

#[test]
fn margin_loss_config_errors() {
    for (l, m) in [
        (LossName::Margin, MinerName::BatchHard),
        (LossName::Margin, MinerName::None),
        (LossName::Triplet, MinerName::DncCutoff),
        (LossName::MultiSimilarity, MinerName::DncCutoff),
    ] {
        let (lc, mc) = configs(l, m);
        let e = loss::build(&lc, &mc).err().expect("rejected").to_string();
        assert!(e.contains("miner.name") && e.contains("loss.name"), "{e}");
    }
    let mut cfg = Config::default();
    cfg.loss.name = LossName::Group;
    cfg.miner.name = MinerName::DncCutoff;
    let e = loss::Objective::build(&cfg)
        .expect_err("rejected")
        .to_string();
    assert!(e.contains("miner.name") && e.contains("loss.name"), "{e}");

    let (lc, mc) = configs(LossName::Margin, MinerName::DncCutoff);
    for beta in [0.0, -1.2, f64::NAN, f64::INFINITY] {
        let lc = LossConfig {
            margin_beta: beta,
            ..lc.clone()
        };
        let e = loss::build(&lc, &mc).err().expect("rejected").to_string();
        assert!(e.contains("loss.margin_beta"), "{e}");
    }
    for cutoff in [-0.1, f64::NAN, f64::INFINITY] {
        let mc = MinerConfig {
            cutoff,
            ..mc.clone()
        };
        let e = loss::build(&lc, &mc).err().expect("rejected").to_string();
        assert!(e.contains("miner.cutoff"), "{e}");
    }
    let cos = LossConfig {
        distance: LossDistance::Cosine,
        ..lc.clone()
    };
    let e = loss::build(&cos, &mc).err().expect("rejected").to_string();
    assert!(e.contains("loss.distance"), "{e}");
    let ok = loss::build(&lc, &mc).unwrap();
    assert_eq!(
        ok.name(),
        "margin(dnc_cutoff, margin=0.2, beta=1.2, cutoff=0.5)"
    );
}

#[test]
fn margin_keys_parse_from_toml() {
    let cfg = Config::parse(
        "[loss]\nname = \"margin\"\nmargin = 0.1\nmargin_beta = 1.0\n\
         [miner]\nname = \"dnc_cutoff\"\ncutoff = 0.3\n",
        &[],
    )
    .unwrap();
    assert_eq!(cfg.loss.name, LossName::Margin);
    assert_eq!(cfg.loss.margin_beta, 1.0);
    assert_eq!(cfg.miner.name, MinerName::DncCutoff);
    assert_eq!(cfg.miner.cutoff, 0.3);
    let obj = loss::Objective::build(&cfg).unwrap();
    assert!(format!("{obj:?}").contains("margin(dnc_cutoff"), "{obj:?}");
    // Defaults: β = 1.2, cutoff = 0.5 (the official values).
    let d = Config::default();
    assert_eq!((d.loss.margin_beta, d.miner.cutoff), (1.2, 0.5));
}

/// The D&C recipes train with the official loss and sampler, and their objective builds.
#[test]
fn dnc_recipes_use_the_margin_loss() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for name in [
        "quickstart-dnc",
        "dnc-cub200",
        "dnc-cars196",
        "dnc-sop",
        "dnc-inshop",
    ] {
        let cfg = Config::load(&dir.join(format!("{name}.toml")), &[]).unwrap();
        assert_eq!(cfg.loss.name, LossName::Margin, "{name}");
        assert_eq!(cfg.miner.name, MinerName::DncCutoff, "{name}");
        assert_eq!(
            (cfg.loss.margin, cfg.loss.margin_beta, cfg.miner.cutoff),
            (0.2, 1.2, 0.5),
            "{name}"
        );
        let obj = loss::Objective::build(&cfg).unwrap();
        assert!(format!("{obj:?}").contains("margin(dnc_cutoff"), "{name}");
    }
}
