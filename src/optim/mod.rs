//! Optimisers, learning-rate policies and weight averaging.
//!
//! - [`adam`]: Adam and AdamW, step for step as `torch.optim.Adam` / `AdamW`, over named
//!   parameter groups with learning-rate multipliers; state for bit-exact resume.
//! - [`lr`]: the cyclical policies of `torch.optim.lr_scheduler.CyclicLR` and the
//!   linear ramp of the LR range test (Smith 2017).
//! - [`swa`]: stochastic weight averaging as `torch.optim.swa_utils.AveragedModel`, and
//!   BatchNorm re-estimation as `update_bn`.

pub mod adam;
pub mod lr;
pub mod swa;

pub use adam::{Adam, ParamGroup};
pub use lr::{learning_rate, lr_range};
pub use swa::{bn_momentum_for, reset_bn_stats, update_bn, BnStats, Swa};

use crate::error::{Error, Result};
use tch::Tensor;

/// Finds `key` in a state list, checking that it has `shape`.
fn state_entry<'a>(
    state: &'a [(String, Tensor)],
    key: &str,
    shape: &[i64],
    what: &str,
) -> Result<&'a Tensor> {
    let t = state
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, t)| t)
        .ok_or_else(|| Error::Train(format!("{what} state: entry `{key}` is missing")))?;
    if t.size() != shape {
        return Err(Error::Train(format!(
            "{what} state: entry `{key}` has shape {:?}, expected {shape:?}",
            t.size()
        )));
    }
    Ok(t)
}

/// Reads a one-element integer counter stored by a `state()` method.
fn state_count(state: &[(String, Tensor)], key: &str, what: &str) -> Result<usize> {
    let t = state_entry(state, key, &[1], what)?;
    let v = t.f_int64_value(&[0])?;
    usize::try_from(v)
        .map_err(|_| Error::Train(format!("{what} state: entry `{key}` is negative ({v})")))
}

/// A one-element int64 tensor holding a counter, as `state()` methods store them.
fn count_tensor(n: usize) -> Tensor {
    Tensor::from_slice(&[n as i64])
}
