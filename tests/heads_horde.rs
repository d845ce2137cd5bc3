//! The HORDE head (`model.head = "horde"`):
//! * outputs and gradients against the PyTorch reference `tools/horde_ref.py` (written
//!   from pierre-jacob/ICCV2019-Horde), float64, learned and fixed projections, train
//!   and eval passes;
//! * 1 rank vs 2 ranks under mpirun give the same weights (f64, frozen BatchNorm);
//! * the HORDE recipes parse.
mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use dml::config::{Config, HeadKind, ModelConfig};
use dml::model::head::{self, Pass};
use tch::{nn, Device, Kind, Tensor};

const CHANNELS: i64 = 5;
const DIM: usize = 6;
const HORDE_DIM: usize = 7;
const ORDER: usize = 4;

fn run_ref(dir: &Path) -> HashMap<String, Tensor> {
    run_python([Path::new("tools/horde_ref.py"), dir]);
    Tensor::read_safetensors(dir.join("ref.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// Builds the head in f64 on a random map, takes the scalar
/// `Σ_k ⟨emb_k, r_k⟩ + ⟨logits, r_l⟩` with random cotangents, and compares the outputs
/// and every gradient with the reference.
fn parity(learned: bool, classes: usize, train: bool) {
    tch::manual_seed(11);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        head: HeadKind::Horde,
        embedding_dim: DIM,
        horde_order: ORDER,
        horde_dim: HORDE_DIM,
        horde_learned: learned,
        classes,
        ..Default::default()
    };
    let h = head::build(&(vs.root() / "head"), &cfg, CHANNELS as usize).unwrap();
    vs.double();
    let opts = (Kind::Double, Device::Cpu);
    let x = Tensor::randn([4, CHANNELS, 3, 2], opts).set_requires_grad(true);
    let pass = Pass {
        train,
        bn_maps: false,
        key: [3, 9],
    };
    let out = h.global(&h.local(&x, pass), pass);
    assert_eq!(out.embeddings.len(), ORDER);
    assert_eq!(out.logits.len(), usize::from(classes > 0));
    assert_eq!(out.test.size(), vec![4, DIM as i64]);
    for (k, e) in out.embeddings.iter().enumerate() {
        // Fixed projections: no Dense after the pooled moments (official CascadedKOrder).
        let d = if k == 0 || learned { DIM } else { HORDE_DIM };
        assert_eq!(e.size(), vec![4, d as i64], "order {}", k + 1);
    }

    let mut inputs = vec![
        ("x".to_string(), x.detach()),
        ("order".to_string(), Tensor::from(ORDER as i64)),
    ];
    let mut terms = Vec::new();
    for (k, e) in out.embeddings.iter().enumerate() {
        let r = Tensor::randn(e.size(), opts);
        terms.push((e * &r).sum(Kind::Double));
        inputs.push((format!("r{k}"), r));
    }
    for l in &out.logits {
        let r = Tensor::randn(l.size(), opts);
        terms.push((l * &r).sum(Kind::Double));
        inputs.push(("rl".to_string(), r));
    }
    Tensor::stack(&terms, 0).sum(Kind::Double).backward();

    let dir = tempfile::tempdir().unwrap();
    let vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&vars, dir.path().join("weights.safetensors")).unwrap();
    Tensor::write_safetensors(&inputs, dir.path().join("input.safetensors")).unwrap();
    let reference = run_ref(dir.path());

    let tol = 1e-10;
    for (k, e) in out.embeddings.iter().enumerate() {
        let d = rel_diff(e, &reference[&format!("emb{k}")], 1e-12);
        assert!(d < tol, "embedding of order {}: {d}", k + 1);
    }
    let d = rel_diff(&out.test, &reference["test"], 1e-12);
    assert!(d < tol, "test embedding: {d}");
    if let Some(l) = out.logits.first() {
        let d = rel_diff(l, &reference["logits"], 1e-12);
        assert!(d < tol, "logits: {d}");
    }
    let d = rel_diff(&x.grad(), &reference["grad.x"], 1e-12);
    assert!(d < tol, "gradient of the map: {d}");
    let mut trainable = 0;
    for (name, t) in &vars {
        let key = format!("grad.{name}");
        if !t.requires_grad() {
            assert!(!learned && name.starts_with("head.w"), "{name} is frozen");
            assert!(!reference.contains_key(&key), "{name} trains in torch");
            // Random Maclaurin: ±1 entries.
            let ones = t.abs().eq(1.0).all().int64_value(&[]);
            assert_eq!(ones, 1, "{name} is not ±1");
            continue;
        }
        trainable += 1;
        let d = rel_diff(&t.grad(), &reference[&key], 1e-12);
        assert!(d < tol, "gradient of {name}: {d}");
    }
    // fc1 + (learned: w2a, w2..wK, fc2..fcK) + the classifier's weight and bias.
    let expected = 1 + if learned { 1 + 2 * (ORDER - 1) } else { 0 } + 2 * usize::from(classes > 0);
    assert_eq!(trainable, expected);
}

#[test]
fn horde_learned_matches_torch_train() {
    parity(true, 3, true);
}

#[test]
fn horde_learned_matches_torch_eval() {
    parity(true, 0, false);
}

#[test]
fn horde_fixed_maclaurin_matches_torch() {
    parity(false, 0, true);
    parity(false, 3, false);
}

/// 1 rank vs 2 ranks after 5 f64 steps: the projections and per-order layers act
/// before the gather, their gradients are summed.
#[test]
fn horde_world_size_invariance_f64() {
    world_size_invariance(&[
        "model.head=horde",
        "model.bn=frozen",
        "model.horde_order=4",
        "model.horde_dim=64",
        "loss.name=multi_similarity",
        "miner.name=multi_similarity",
    ]);
}

#[test]
fn horde_recipes_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for name in [
        "quickstart-horde",
        "horde-cub200",
        "horde-cars196",
        "horde-sop",
        "horde-inshop",
    ] {
        let path = dir.join(format!("{name}.toml"));
        let cfg = Config::load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.model.head, HeadKind::Horde, "{name}");
        assert!(cfg.model.horde_order >= 2, "{name}");
    }
}
