//! Tensor operations shared by the model's heads, the losses, the cross-batch memory and
//! evaluation, below all of them: L2 normalisation of rows as PyTorch spells it.
use tch::Tensor;

use crate::error::Result;

/// The floor of the row norm, `F.normalize`'s default `eps`.
const NORM_EPS: f64 = 1e-12;

/// `torch.nn.functional.normalize(x, p=2, dim=1, eps=1e-12)`, op for op: rows of unit
/// L2 norm (zero rows stay zero), differentiable.
///
/// ```
/// let x = tch::Tensor::from_slice(&[3.0f64, 4.0]).view([1, 2]);
/// let n = dml::ops::normalize(&x);
/// assert!((n.double_value(&[0, 0]) - 0.6).abs() < 1e-15);
/// ```
pub fn normalize(x: &Tensor) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
        .clamp_min(NORM_EPS)
        .expand_as(x);
    x / norm
}

/// [`normalize`] with libtorch's failures (a device out of memory, a non-float kind) as
/// errors instead of panics, for evaluation's large matrices.
///
/// ```
/// let x = tch::Tensor::from_slice(&[0.0f32, 0.0, 6.0, 8.0]).view([2, 2]);
/// let n = dml::ops::try_normalize(&x)?;
/// assert_eq!(Vec::<f32>::try_from(n.view([-1]))?, [0.0, 0.0, 0.6, 0.8]);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn try_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?;
    Ok(x.f_div(&norm.f_clamp_min(NORM_EPS)?)?)
}
