//! The BFE and CGD heads: outputs and gradients against the PyTorch reference
//! `tools/bfe_cgd_ref.py` (written after the official code) in f64, 2-rank world-size
//! invariance in f64, and the recipes parse.
mod common;

use std::path::Path;

use common::*;
use dml::config::{HeadKind, ModelConfig};
use dml::model::head::{self, Pass};
use tch::{nn, Device, Kind, Tensor};

/// Builds the head in f64 with random parameters and buffers drawn from `seed`.
fn head_f64(cfg: &ModelConfig, channels: usize, seed: u64) -> (nn::VarStore, Box<dyn head::Head>) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let h = head::build(&(vs.root() / "head"), cfg, channels).unwrap();
    vs.set_kind(Kind::Double);
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (name, mut t)) in vars.into_iter().enumerate() {
            let r = seeded_normal(&t.size(), seed * 1000 + i as u64) * 0.5;
            if name.ends_with("running_var") {
                t.copy_(&(r.abs() + 0.5));
            } else if name.ends_with("bn1.weight")
                || name.ends_with("bn2.weight")
                || name.ends_with("bn3.weight")
            {
                t.copy_(&(r + 1.0));
            } else {
                t.copy_(&r);
            }
        }
    });
    (vs, h)
}

fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.size(), theirs.size(), "{name}: shapes");
    let diff = (ours - theirs).abs().max().double_value(&[]);
    let scale = theirs.abs().max().double_value(&[]).max(1.0);
    assert!(
        diff <= 1e-10 * scale,
        "{name}: max difference {diff} (scale {scale})"
    );
}

/// Runs the head (parameters drawn from `seed`) on `map` in `pass`, the reference with
/// `args`, and compares the embeddings, logits, test embedding and the gradients of
/// `sum(out · r)` with respect to the map and every parameter.
fn compare(cfg: &ModelConfig, map: &Tensor, pass: Pass, args: &[String], seed: u64) {
    let channels = map.size()[1] as usize;
    let (vs, h) = head_f64(cfg, channels, seed);
    let dir = tempfile::tempdir().unwrap();
    let vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&vars, dir.path().join("params.safetensors")).unwrap();

    let x = map.set_requires_grad(true);
    let out = h.global(&h.local(&x, pass), pass);
    let draws = std::cell::Cell::new(seed * 1000 + 900);
    let r = |t: &Tensor| {
        draws.set(draws.get() + 1);
        seeded_normal(&t.size(), draws.get())
    };
    let mut inputs = vec![
        ("map".to_string(), map.detach()),
        ("r_test".into(), r(&out.test)),
    ];
    let mut loss = (&out.test * &inputs[1].1).sum(Kind::Double);
    for (i, e) in out.embeddings.iter().enumerate() {
        let w = r(e);
        loss += (e * &w).sum(Kind::Double);
        inputs.push((format!("r_emb{i}"), w));
    }
    for (i, l) in out.logits.iter().enumerate() {
        let w = r(l);
        loss += (l * &w).sum(Kind::Double);
        inputs.push((format!("r_logits{i}"), w));
    }
    Tensor::write_safetensors(&inputs, dir.path().join("inputs.safetensors")).unwrap();
    loss.backward();

    let mut call = vec![
        "tools/bfe_cgd_ref.py".into(),
        dir.path().as_os_str().to_owned(),
    ];
    call.extend(args.iter().map(std::ffi::OsString::from));
    run_python(call);
    let refs: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("out.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_close("test", &out.test, &refs["test"]);
    assert_eq!(
        out.embeddings.len() + out.logits.len(),
        refs.len() - 2 - grads(&refs)
    );
    for (i, e) in out.embeddings.iter().enumerate() {
        assert_close(&format!("emb{i}"), e, &refs[&format!("emb{i}")]);
    }
    for (i, l) in out.logits.iter().enumerate() {
        assert_close(&format!("logits{i}"), l, &refs[&format!("logits{i}")]);
    }
    assert_close("grad_map", &x.grad(), &refs["grad_map"]);
    let mut checked = 0;
    for (name, t) in vs.variables() {
        if t.requires_grad() {
            assert_close(&name, &t.grad(), &refs[&format!("grad.{name}")]);
            checked += 1;
        }
    }
    assert_eq!(checked, grads(&refs), "every parameter's gradient compared");
}

fn grads(refs: &std::collections::HashMap<String, Tensor>) -> usize {
    refs.keys().filter(|k| k.starts_with("grad.")).count()
}

fn bfe_cfg() -> ModelConfig {
    ModelConfig {
        head: HeadKind::Bfe,
        bfe_erase: [0.5, 0.5],
        classes: 5,
        ..Default::default()
    }
}

fn bfe_args(mode: &str, rect: [i64; 4]) -> Vec<String> {
    let mut a: Vec<String> = ["bfe", mode, "--classes", "5", "--rect"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(rect.iter().map(|v| v.to_string()));
    a
}

#[test]
fn bfe_matches_pytorch_in_training_with_the_keyed_rectangle() {
    let map = seeded_normal(&[6, 16, 6, 4], 5).relu();
    let pass = Pass {
        train: true,
        bn_maps: true,
        key: [3, 7],
    };
    let r = head::bfe::erase_rect(6, 4, [0.5, 0.5], pass.key);
    // round(0.5·6) × round(0.5·4) = 3 × 2, starting in 0..=3 × 0..=2.
    assert_eq!((r.height, r.width), (3, 2));
    assert!(r.top <= 3 && r.left <= 2);
    compare(
        &bfe_cfg(),
        &map,
        pass,
        &bfe_args("train", [r.top, r.left, r.height, r.width]),
        11,
    );
}

#[test]
fn bfe_matches_pytorch_in_evaluation() {
    let map = seeded_normal(&[5, 16, 5, 3], 6).relu();
    compare(
        &bfe_cfg(),
        &map,
        Pass::eval(),
        &bfe_args("eval", [0, 0, 0, 0]),
        11,
    );
}

#[test]
fn bfe_rectangle_depends_on_the_step_and_covers_every_start() {
    let mut seen = std::collections::BTreeSet::new();
    for step in 0..200 {
        let r = head::bfe::erase_rect(4, 4, [0.5, 0.5], [0, step]);
        seen.insert((r.top, r.left));
    }
    // 3 × 3 valid starts of a 2 × 2 rectangle on a 4 × 4 map, all drawn in 200 steps.
    assert_eq!(seen.len(), 9);
}

fn cgd_cfg(spec: &str) -> ModelConfig {
    ModelConfig {
        head: HeadKind::Cgd,
        cgd_descriptors: spec.into(),
        embedding_dim: 12,
        gem_p: 3.0,
        classes: 5,
        ..Default::default()
    }
}

/// Non-negative like a ReLU map, with exact zeros (below GeM's 1e-6 clamp), and tied
/// maxima: channel 1 of image 0 is 0.5 everywhere and channel 2 of image 1 zero
/// everywhere, where the gradient of max pooling goes to the first position only.
fn cgd_map(seed: u64) -> Tensor {
    let map = (seeded_uniform(&[6, 8, 4, 3], seed) - 0.1).clamp_min(0.0);
    let _ = map.get(0).get(1).fill_(0.5);
    let _ = map.get(1).get(2).fill_(0.0);
    map
}

fn cgd_args(mode: &str, spec: &str) -> Vec<String> {
    [
        "cgd",
        mode,
        "--classes",
        "5",
        "--descriptors",
        spec,
        "--dim",
        "12",
        "--gem-p",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn cgd_matches_pytorch_in_training() {
    let pass = Pass {
        train: true,
        bn_maps: true,
        key: [0, 1],
    };
    compare(
        &cgd_cfg("SMG"),
        &cgd_map(7),
        pass,
        &cgd_args("train", "SMG"),
        11,
    );
    compare(
        &cgd_cfg("GS"),
        &cgd_map(8),
        pass,
        &cgd_args("train", "GS"),
        11,
    );
}

#[test]
fn cgd_matches_pytorch_in_evaluation() {
    compare(
        &cgd_cfg("MG"),
        &cgd_map(9),
        Pass::eval(),
        &cgd_args("eval", "MG"),
        11,
    );
}

#[test]
fn cgd_rejects_bad_descriptor_strings_naming_the_key() {
    for (spec, dim) in [("", 12), ("SMGS", 12), ("SX", 12), ("SMG", 128)] {
        let cfg = ModelConfig {
            embedding_dim: dim,
            ..cgd_cfg(spec)
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let err = head::build(&(vs.root() / "head"), &cfg, 8).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("model.cgd_descriptors"),
            "{spec:?}/{dim}: {msg}"
        );
    }
}

/// 1 rank vs 2 ranks after 5 f64 steps with frozen BatchNorm on feature maps (the
/// vector BatchNorms of the heads run on the gathered global batch).
#[test]
fn bfe_world_size_invariance_f64() {
    world_size_invariance(&[
        "model.bn=frozen",
        "model.head=bfe",
        "model.last_stride=1",
        "loss.name=triplet",
        "loss.soft_margin=true",
        "miner.name=batch_hard",
    ]);
}

#[test]
fn cgd_world_size_invariance_f64() {
    world_size_invariance(&[
        "model.bn=frozen",
        "model.head=cgd",
        "model.cgd_descriptors=SMG",
        "model.embedding_dim=24",
        "model.last_stride=1",
        "loss.name=triplet",
        "loss.margin=0.1",
        "loss.ce_temperature=0.5",
        "miner.name=batch_hard",
    ]);
}

#[test]
fn bfe_and_cgd_recipes_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let ours = name.starts_with("bfe-")
            || name.starts_with("cgd-")
            || name == "quickstart-bfe.toml"
            || name == "quickstart-cgd.toml";
        if ours {
            let cfg =
                dml::config::Config::load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            let want = if name.contains("bfe") {
                HeadKind::Bfe
            } else {
                HeadKind::Cgd
            };
            assert_eq!(cfg.model.head, want, "{name}");
            n += 1;
        }
    }
    assert_eq!(n, 10, "2 quickstarts + 4 datasets × 2 methods");
}
