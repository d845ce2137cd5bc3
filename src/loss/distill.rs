//! Distillation terms of "Learning Metrics from Teachers" (Yu et al. 2019;
//! yulu0724/EmbeddingDistillation, train_distillation.py), over the global batch.
use tch::Tensor;

use super::chunk::scalar;
use super::Shard;
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
    distillation_shard(
        kind,
        s,
        t,
        &Shard::whole(s.size().first().copied().unwrap_or(0)),
    )
}

/// This share's part of [`distillation`]: absolute, the shard's rows' distances divided
/// by the whole batch's size; relative, the shard's rows of the distance matrices, whose
/// squared differences are summed over all shares before the square root (the part's
/// value is `‖·‖_F · S_r / S` and its gradient `∇S_r / (2√S)`, so that the parts of all
/// shares sum to the term in value and gradient). The whole term, op for op, when the
/// shard is the whole batch.
pub fn distillation_shard(
    kind: DistillKind,
    s: &Tensor,
    t: &Tensor,
    shard: &Shard,
) -> Result<Tensor> {
    let (ss, ts) = (s.size(), t.size());
    if ss.len() != 2 || ts.len() != 2 || ss[0] != ts[0] {
        return Err(Error::Input(format!(
            "distillation: student {ss:?} and teacher {ts:?} must be [B, D] of one batch"
        )));
    }
    let t = t.to_kind(s.kind()).detach();
    if !shard.covers(ss[0]) {
        return sharded(kind, s, &t, shard);
    }
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
            let ds = euclidean_rows(s, 0, ss[0]);
            let dt = euclidean_rows(&t, 0, ss[0]);
            Ok((ds - dt).square().sum(s.kind()).sqrt())
        }
    }
}

/// [`distillation_shard`] for a proper part of the batch (shapes checked by the caller).
fn sharded(kind: DistillKind, s: &Tensor, t: &Tensor, shard: &Shard) -> Result<Tensor> {
    let b = s.size()[0];
    let (start, len) = (shard.start, shard.len);
    let kind_s = s.kind();
    match kind {
        DistillKind::Absolute => {
            let diff = s.narrow(0, start, len) - t.narrow(0, start, len) + 1e-6;
            Ok(diff
                .norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
                .sum(kind_s)
                * (1.0 / b.max(1) as f64))
        }
        DistillKind::Relative => {
            let ds = euclidean_rows(s, start, len);
            let dt = euclidean_rows(t, start, len);
            let part = (ds - dt).square().sum(kind_s);
            let mine = part.double_value(&[]);
            let mut total = [mine];
            shard.sum(&mut total)?;
            let norm = total[0].sqrt();
            if norm == 0.0 {
                return Ok(part * 0.0);
            }
            let value = scalar(norm * mine / total[0], kind_s, s.device());
            Ok(value + (&part - part.detach()) * (0.5 / norm))
        }
    }
}

/// Rows `start..start + len` of the Euclidean distance matrix of the rows of `x`
/// `[B, D]`: `[len, B]`, `sqrt(max(‖xᵢ‖² + ‖xⱼ‖² − 2 xᵢ·xⱼ, 1e-12))` as the official
/// code's `euclidean_dist`, so that the diagonal has a finite gradient.
fn euclidean_rows(x: &Tensor, start: i64, len: i64) -> Tensor {
    let kind = x.kind();
    let sq = x.square().sum_dim_intlist([1i64].as_slice(), true, kind);
    let rows = x.narrow(0, start, len);
    let d2 = sq.narrow(0, start, len) + sq.tr() - rows.matmul(&x.tr()) * 2.0;
    d2.clamp_min(1e-12).sqrt()
}
