//! Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), following the
//! single-tensor path of `torch.optim.Adam` / `AdamW` with default flags
//! (`amsgrad = False`, `maximize = False`) operation for operation.
use std::collections::HashSet;

use tch::Tensor;

use super::{count_tensor, state_count, state_entry};
use crate::config::{OptimConfig, OptimName};
use crate::error::{Error, Result};

/// Named parameters that share a learning-rate multiplier (e.g. trunk and head).
#[derive(Debug)]
pub struct ParamGroup {
    /// Group name, for messages.
    pub name: String,
    /// Parameters by name; names must be unique across all groups of one optimiser.
    pub params: Vec<(String, Tensor)>,
    /// The group's learning rate is `lr · lr_mult`.
    pub lr_mult: f64,
}

/// Per-parameter optimiser state.
#[derive(Debug)]
struct Moments {
    step: usize,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Adam or AdamW over parameter groups, updating the parameters in place.
#[derive(Debug)]
pub struct Adam {
    groups: Vec<ParamGroup>,
    moments: Vec<Vec<Moments>>,
    decoupled: bool,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    /// An optimiser over `groups` with `cfg`'s kind (Adam: L2 decay added to the
    /// gradient; AdamW: decoupled decay), betas, ε and weight decay. `cfg.lr` is not
    /// read: the learning rate is passed to each [`Adam::step`].
    ///
    /// ```
    /// use dml::optim::{Adam, ParamGroup};
    /// let w = tch::Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    /// let group = ParamGroup { name: "head".into(), params: vec![("w".into(), w.shallow_clone())], lr_mult: 1.0 };
    /// let mut adam = Adam::new(vec![group], &dml::config::OptimConfig::default());
    /// (&w * 2.0).sum(tch::Kind::Float).backward();
    /// adam.step(1e-3)?;
    /// adam.zero_grad();
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn new(groups: Vec<ParamGroup>, cfg: &OptimConfig) -> Adam {
        let moments = tch::no_grad(|| {
            groups
                .iter()
                .map(|g| {
                    g.params
                        .iter()
                        .map(|(_, p)| Moments {
                            step: 0,
                            exp_avg: p.zeros_like(),
                            exp_avg_sq: p.zeros_like(),
                        })
                        .collect()
                })
                .collect()
        });
        Adam {
            groups,
            moments,
            decoupled: cfg.name == OptimName::Adamw,
            weight_decay: cfg.weight_decay,
            beta1: cfg.betas[0],
            beta2: cfg.betas[1],
            eps: cfg.eps,
        }
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// One update with base learning rate `lr` (group `g` uses `lr · g.lr_mult`).
    /// Parameters whose `.grad()` is undefined are skipped and keep their step count.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        let decoupled = self.decoupled;
        tch::no_grad(|| -> Result<()> {
            for (group, moments) in self.groups.iter_mut().zip(&mut self.moments) {
                let lr = lr * group.lr_mult;
                for ((_, p), m) in group.params.iter_mut().zip(moments.iter_mut()) {
                    let grad = p.f_grad()?;
                    if grad.defined() {
                        update(
                            p,
                            grad,
                            m,
                            Hyper {
                                lr,
                                b1,
                                b2,
                                eps,
                                wd,
                            },
                            decoupled,
                        )?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Zeroes every parameter's gradient in place (tch cannot unset a gradient, so a
    /// parameter that once had one keeps being stepped, with a zero gradient).
    pub fn zero_grad(&mut self) {
        for group in &mut self.groups {
            for (_, p) in &mut group.params {
                p.zero_grad();
            }
        }
    }

    /// Deep copies of the state: for each parameter `NAME`, `NAME.step` (int64, one
    /// element), `NAME.exp_avg` and `NAME.exp_avg_sq` (the parameter's shape and kind).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (group, moments) in self.groups.iter().zip(&self.moments) {
            for ((name, _), m) in group.params.iter().zip(moments) {
                out.push((format!("{name}.step"), count_tensor(m.step)));
                out.push((format!("{name}.exp_avg"), m.exp_avg.detach().copy()));
                out.push((format!("{name}.exp_avg_sq"), m.exp_avg_sq.detach().copy()));
            }
        }
        out
    }

    /// Restores a [`Adam::state`]. Every entry must be present with the parameter's
    /// shape, and no other entry may be; otherwise `Error::Train` names the entry.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let mut known = HashSet::new();
        for (group, moments) in self.groups.iter().zip(&self.moments) {
            for ((name, p), _) in group.params.iter().zip(moments) {
                let shape = p.size();
                for suffix in ["exp_avg", "exp_avg_sq"] {
                    let key = format!("{name}.{suffix}");
                    state_entry(state, &key, &shape, "adam")?;
                    known.insert(key);
                }
                let key = format!("{name}.step");
                state_count(state, &key, "adam")?;
                known.insert(key);
            }
        }
        if let Some((k, _)) = state.iter().find(|(k, _)| !known.contains(k)) {
            return Err(Error::Train(format!(
                "adam state: unexpected entry `{k}` (no such parameter)"
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for (group, moments) in self.groups.iter().zip(&mut self.moments) {
                for ((name, p), m) in group.params.iter().zip(moments.iter_mut()) {
                    let shape = p.size();
                    let avg = state_entry(state, &format!("{name}.exp_avg"), &shape, "adam")?;
                    let sq = state_entry(state, &format!("{name}.exp_avg_sq"), &shape, "adam")?;
                    m.exp_avg.f_copy_(avg)?;
                    m.exp_avg_sq.f_copy_(sq)?;
                    m.step = state_count(state, &format!("{name}.step"), "adam")?;
                }
            }
            Ok(())
        })
    }
}

/// Hyperparameters of one parameter's update.
#[derive(Clone, Copy)]
struct Hyper {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
}

/// torch's `_single_tensor_adam` body for one parameter: the same operations in the
/// same order (a fused `addcmul_`/`addcdiv_` with a value becomes a scalar multiply
/// followed by the tensor op, which the CPU kernels evaluate in that order too).
fn update(p: &mut Tensor, grad: Tensor, m: &mut Moments, h: Hyper, decoupled: bool) -> Result<()> {
    m.step += 1;
    let mut grad = grad;
    if h.wd != 0.0 {
        if decoupled {
            let _ = p.f_mul_scalar_(1.0 - h.lr * h.wd)?;
        } else {
            grad = grad.f_add(&p.f_mul_scalar(h.wd)?)?;
        }
    }
    let _ = m.exp_avg.f_lerp_(&grad, 1.0 - h.b1)?;
    let _ = m.exp_avg_sq.f_mul_scalar_(h.b2)?;
    let _ = m
        .exp_avg_sq
        .f_add_(&grad.f_mul_scalar(1.0 - h.b2)?.f_mul(&grad)?)?;
    // torch keeps the step as a float tensor and reads it back as a Python float.
    let step = m.step as f64;
    let bias_correction1 = 1.0 - h.b1.powf(step);
    let bias_correction2 = 1.0 - h.b2.powf(step);
    let step_size = h.lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.powf(0.5);
    let denom = m
        .exp_avg_sq
        .f_sqrt()?
        .f_div_scalar(bias_correction2_sqrt)?
        .f_add_scalar(h.eps)?;
    let _ = p.f_add_(&m.exp_avg.f_mul_scalar(-step_size)?.f_div(&denom)?)?;
    Ok(())
}
