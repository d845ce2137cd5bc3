//! Distillation terms of "Learning Metrics from Teachers" (Yu et al. 2019;
//! yulu0724/EmbeddingDistillation, train_distillation.py), over the global batch.
use tch::Tensor;

use crate::config::DistillKind;
use crate::error::{Error, Result};

/// The distillation term between student `s` `[B, D_s]` and teacher `t` `[B, D_t]`
/// embeddings of the same global batch (the teacher's carry no gradient).
///
/// * absolute: `mean_i ‖s_i − t_i + 10⁻⁶‖₂` (`torch.nn.functional.pairwise_distance`,
///   as the official code; needs `D_s = D_t`);
/// * relative: `‖D(s) − D(t)‖_F`, `D` the `[B, B]` Euclidean distance matrix
///   (`torch.norm(dis - dis_T, p=2)` in the official code).
///
/// ```
/// use dml::config::DistillKind;
/// let s = tch::Tensor::from_slice(&[0.0f64, 0.0, 3.0, 4.0]).view([2, 2]);
/// let t = tch::Tensor::from_slice(&[0.0f64, 0.0, 0.0, 0.0]).view([2, 2]);
/// // Absolute: (0 + 5) / 2. Relative: D(s) has 5 twice off the diagonal, D(t) is 0
/// // (up to the 10⁻⁶ of the clamp and of pairwise_distance).
/// let a = dml::loss::distill::distillation(DistillKind::Absolute, &s, &t)?;
/// let r = dml::loss::distill::distillation(DistillKind::Relative, &s, &t)?;
/// assert!((a.double_value(&[]) - 2.5).abs() < 1e-5);
/// assert!((r.double_value(&[]) - 50f64.sqrt()).abs() < 1e-5);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn distillation(kind: DistillKind, s: &Tensor, t: &Tensor) -> Result<Tensor> {
    let (ss, ts) = (s.size(), t.size());
    if ss.len() != 2 || ts.len() != 2 || ss[0] != ts[0] {
        return Err(Error::Input(format!(
            "distillation: student {ss:?} and teacher {ts:?} must be [B, D] of one batch"
        )));
    }
    let t = t.to_kind(s.kind()).detach();
    match kind {
        DistillKind::Absolute => {
            if ss[1] != ts[1] {
                return Err(Error::Config(format!(
                    "distill.kind = \"absolute\" compares embeddings one to one, but the \
                     student has {} dimensions and the teacher {}: set model.embedding_dim = {} \
                     or use distill.kind = \"relative\"",
                    ss[1], ts[1], ts[1]
                )));
            }
            let diff = s - &t + 1e-6;
            Ok(diff
                .norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
                .mean(s.kind()))
        }
        DistillKind::Relative => {
            let ds = euclidean_matrix(s);
            let dt = euclidean_matrix(&t);
            Ok((ds - dt).square().sum(s.kind()).sqrt())
        }
    }
}

/// `[B, B]` Euclidean distances, `sqrt(clamp(|a|² + |b|² − 2a·b, 1e-12))` as the
/// official code's `euclidean_dist`, so that the diagonal has a finite gradient.
fn euclidean_matrix(x: &Tensor) -> Tensor {
    let kind = x.kind();
    let sq = x.square().sum_dim_intlist([1i64].as_slice(), true, kind);
    let d2 = &sq + sq.tr() - x.matmul(&x.tr()) * 2.0;
    d2.clamp_min(1e-12).sqrt()
}
