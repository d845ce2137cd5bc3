//! The objective's extra terms against the PyTorch references of
//! `tools/objective_ref.py` (run from the venv into a temporary directory), float64:
//! smoothed cross-entropy (`F.cross_entropy(logits / T, y, label_smoothing=ε)`) and the
//! absolute and relative distillation terms of the official EmbeddingDistillation code.
mod common;

use common::rel_diff;

use std::collections::HashMap;

use dml::config::DistillKind;
use dml::loss::classification::SmoothedCrossEntropy;
use dml::loss::distill::distillation;
use tch::Tensor;

fn fixtures() -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    common::run_script_out("tools/objective_ref.py", dir.path());
    Tensor::read_safetensors(dir.path().join("objective.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn smoothed_cross_entropy_matches_torch() {
    let fx = fixtures();
    let mut n = 0;
    while let Some(logits) = fx.get(&format!("ce.logits.{n}")) {
        let p = Vec::<f64>::try_from(&fx[&format!("ce.params.{n}")]).unwrap();
        let ce = SmoothedCrossEntropy {
            smoothing: p[0],
            temperature: p[1],
        };
        let x = logits.detach().copy().set_requires_grad(true);
        let v = ce.compute(&x, &fx[&format!("ce.labels.{n}")]);
        v.backward();
        let dv = rel_diff(&v, &fx[&format!("ce.value.{n}")], 1e-12);
        let dg = rel_diff(&x.grad(), &fx[&format!("ce.grad.{n}")], 1e-12);
        assert!(dv < 1e-12 && dg < 1e-12, "case {n}: {dv:.2e} {dg:.2e}");
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn distillation_terms_match_the_official_formulas() {
    let fx = fixtures();
    let mut n = 0;
    while let Some(s) = fx.get(&format!("d.s.{n}")) {
        let t = &fx[&format!("d.t.{n}")];
        for (kind, name) in [
            (DistillKind::Absolute, "abs"),
            (DistillKind::Relative, "rel"),
        ] {
            let x = s.detach().copy().set_requires_grad(true);
            let v = distillation(kind, &x, t).unwrap();
            v.backward();
            let dv = rel_diff(&v, &fx[&format!("d.{name}.{n}")], 1e-12);
            let dg = rel_diff(&x.grad(), &fx[&format!("d.{name}_grad.{n}")], 1e-12);
            assert!(
                dv < 1e-10 && dg < 1e-8,
                "case {n} {name}: {dv:.2e} {dg:.2e}"
            );
        }
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn absolute_distillation_needs_equal_dimensions() {
    let s = Tensor::zeros([4, 8], tch::kind::DOUBLE_CPU);
    let t = Tensor::zeros([4, 16], tch::kind::DOUBLE_CPU);
    let e = distillation(DistillKind::Absolute, &s, &t)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.embedding_dim = 16"), "{e}");
}
