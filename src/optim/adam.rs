//! Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019) through torch's fused
//! kernels (`torch.optim.Adam(fused=True)` / `AdamW(fused=True)`, default flags
//! `amsgrad = False`, `maximize = False`): one pass over each parameter and its moments,
//! no temporaries, on the CPU and on CUDA. The fused kernel evaluates the same formulas
//! as torch's default single-tensor path; in float64 the two agree bit for bit, in
//! float32 to a few ulps (tests/optim_parity.rs checks both against torch).
use std::collections::HashSet;

use tch::{Device, Kind, Tensor};

use super::{count_tensor, state_count, state_entry};
use crate::config::{OptimConfig, OptimName};
use crate::error::{Error, Result};
use crate::sys::AdamHyper;

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
    /// `step` as the float32 one-element tensor the fused kernel reads, on the
    /// parameter's device.
    step_tensor: Tensor,
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
                            step_tensor: Tensor::zeros([], (tch::Kind::Float, p.device())),
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

    /// One update with base learning rate `lr` (group `g` uses `lr · g.lr_mult`): one
    /// fused kernel call per group and (device, kind). Parameters whose `.grad()` is
    /// undefined are skipped and keep their step count.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let hyper = AdamHyper {
            lr: 0.0,
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            eps: self.eps,
            decoupled: self.decoupled,
        };
        tch::no_grad(|| -> Result<()> {
            for (group, moments) in self.groups.iter().zip(&mut self.moments) {
                let mut batches: Vec<((Device, Kind), FusedBatch)> = Vec::new();
                for ((_, p), m) in group.params.iter().zip(moments.iter_mut()) {
                    let grad = p.f_grad()?;
                    if !grad.defined() {
                        continue;
                    }
                    m.step += 1;
                    let _ = m.step_tensor.f_fill_(m.step as f64)?;
                    let key = (p.device(), p.kind());
                    let i = match batches.iter().position(|(k, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            batches.push((key, FusedBatch::default()));
                            batches.len() - 1
                        }
                    };
                    batches[i].1.push(p, grad, m);
                }
                let h = AdamHyper {
                    lr: lr * group.lr_mult,
                    ..hyper
                };
                for (_, b) in &batches {
                    b.run(h)?;
                }
            }
            Ok(())
        })
    }

    /// Zeroes every parameter's gradient in place, as `Optimizer.zero_grad(set_to_none=
    /// False)` does for a gradient without history: the gradient tensor is kept (a view
    /// into a gradient bucket stays one), so a parameter that once had a gradient keeps
    /// being stepped, with a zero gradient.
    pub fn zero_grad(&mut self) {
        tch::no_grad(|| {
            for group in &self.groups {
                for (_, p) in &group.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.f_zero_();
                    }
                }
            }
        });
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

/// The tensors of one fused kernel call (one device and kind).
#[derive(Default)]
struct FusedBatch {
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    exp_avgs: Vec<Tensor>,
    exp_avg_sqs: Vec<Tensor>,
    steps: Vec<Tensor>,
}

impl FusedBatch {
    fn push(&mut self, p: &Tensor, grad: Tensor, m: &Moments) {
        self.params.push(p.shallow_clone());
        self.grads.push(grad);
        self.exp_avgs.push(m.exp_avg.shallow_clone());
        self.exp_avg_sqs.push(m.exp_avg_sq.shallow_clone());
        self.steps.push(m.step_tensor.shallow_clone());
    }

    fn run(&self, h: AdamHyper) -> Result<()> {
        fn refs(v: &[Tensor]) -> Vec<&Tensor> {
            v.iter().collect()
        }
        crate::sys::fused_adam(
            &refs(&self.params),
            &refs(&self.grads),
            &refs(&self.exp_avgs),
            &refs(&self.exp_avg_sqs),
            &refs(&self.steps),
            h,
        )
        .map_err(Error::Train)
    }
}
