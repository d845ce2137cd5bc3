//! Stochastic weight averaging (Izmailov et al. 2018) as
//! `torch.optim.swa_utils.AveragedModel`, and BatchNorm re-estimation as `update_bn`.
use std::collections::HashSet;

use tch::Tensor;

use super::{count_tensor, state_count, state_entry};
use crate::config::SwaConfig;
use crate::error::{Error, Result};

/// Running average `w̄ ← w̄ + (w − w̄)/(n + 1)` of named tensors (the first update copies).
#[derive(Debug)]
pub struct Swa {
    avg: Vec<(String, Tensor)>,
    n: usize,
}

impl Swa {
    /// An empty average shaped like `params` (deep, detached copies; `n_averaged() == 0`).
    ///
    /// ```
    /// use dml::optim::Swa;
    /// let w = tch::Tensor::from_slice(&[1.0f32, 2.0]);
    /// let mut swa = Swa::new(&[("w".to_string(), w.shallow_clone())]);
    /// swa.update(&[("w".to_string(), w.shallow_clone())])?;
    /// swa.update(&[("w".to_string(), &w * 3.0)])?;
    /// assert_eq!(swa.averaged()[0].1.double_value(&[0]), 2.0);
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn new(params: &[(String, Tensor)]) -> Swa {
        let avg = tch::no_grad(|| {
            params
                .iter()
                .map(|(n, t)| (n.clone(), t.detach().copy()))
                .collect()
        });
        Swa { avg, n: 0 }
    }

    /// Whether optimiser step `step` (1-based: the count of steps taken) enters the
    /// average: `swa.start > 0`, `step ≥ swa.start` and `(step − start) % every == 0`.
    pub fn should_average(cfg: &SwaConfig, step: usize) -> bool {
        cfg.start > 0 && cfg.every > 0 && step >= cfg.start && (step - cfg.start) % cfg.every == 0
    }

    /// Adds `params` (the same names in the same order as at [`Swa::new`]) to the
    /// average, with AveragedModel's arithmetic on CPU:
    /// `w̄ + (w − w̄) / (n + 1)`, `n + 1` a 0-dim int64 tensor.
    pub fn update(&mut self, params: &[(String, Tensor)]) -> Result<()> {
        if params.len() != self.avg.len() {
            return Err(Error::Train(format!(
                "swa: {} tensors given, the average holds {}",
                params.len(),
                self.avg.len()
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for ((name, avg), (pname, p)) in self.avg.iter_mut().zip(params) {
                if name != pname {
                    return Err(Error::Train(format!(
                        "swa: got `{pname}` where the average holds `{name}`"
                    )));
                }
                let p = p.detach().f_to_device(avg.device())?;
                if self.n == 0 {
                    avg.f_copy_(&p)?;
                } else {
                    // torch's CPU `get_swa_avg_fn`, avg + (p − avg) / (n + 1), with one
                    // temporary: the difference, divided in place.
                    let n1 = Tensor::from(self.n as i64 + 1).f_to_device(avg.device())?;
                    let mut step = p.f_sub(avg)?;
                    let _ = step.f_div_(&n1)?;
                    let _ = avg.f_add_(&step)?;
                }
            }
            Ok(())
        })?;
        self.n += 1;
        Ok(())
    }

    /// How many updates the average holds.
    pub fn n_averaged(&self) -> usize {
        self.n
    }

    /// The averaged tensors, by name.
    pub fn averaged(&self) -> &[(String, Tensor)] {
        &self.avg
    }

    /// Deep copies of the average by name, and `n_averaged` (int64, one element).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .avg
            .iter()
            .map(|(n, t)| (n.clone(), t.detach().copy()))
            .collect();
        out.push(("n_averaged".to_string(), count_tensor(self.n)));
        out
    }

    /// Restores a [`Swa::state`]; `Error::Train` names a missing, mis-shaped or
    /// unexpected entry.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let n = state_count(state, "n_averaged", "swa")?;
        let mut known: HashSet<&str> = HashSet::from(["n_averaged"]);
        for (name, avg) in &self.avg {
            state_entry(state, name, &avg.size(), "swa")?;
            known.insert(name);
        }
        if let Some((k, _)) = state.iter().find(|(k, _)| !known.contains(k.as_str())) {
            return Err(Error::Train(format!(
                "swa state: unexpected entry `{k}` (no such tensor)"
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for (name, avg) in &mut self.avg {
                let t = state_entry(state, name, &avg.size(), "swa")?;
                avg.f_copy_(t)?;
            }
            Ok(())
        })?;
        self.n = n;
        Ok(())
    }
}

/// The running statistics of one BatchNorm layer (shallow handles onto the model's
/// buffers, so that writes reach the model).
#[derive(Debug)]
pub struct BnStats {
    /// `running_mean`.
    pub running_mean: Tensor,
    /// `running_var`.
    pub running_var: Tensor,
}

impl BnStats {
    /// Pairs every `P.running_mean` in `buffers` with its `P.running_var` (shallow
    /// clones), in the order of the means; `Error::Train` if a variance is missing.
    pub fn from_named(buffers: &[(String, Tensor)]) -> Result<Vec<BnStats>> {
        let mut out = Vec::new();
        for (name, mean) in buffers {
            let Some(prefix) = name.strip_suffix("running_mean") else {
                continue;
            };
            let var_name = format!("{prefix}running_var");
            let var = buffers
                .iter()
                .find(|(n, _)| *n == var_name)
                .ok_or_else(|| Error::Train(format!("batchnorm: `{name}` has no `{var_name}`")))?;
            out.push(BnStats {
                running_mean: mean.shallow_clone(),
                running_var: var.1.shallow_clone(),
            });
        }
        Ok(out)
    }
}

/// Resets running statistics as torch's `reset_running_stats`: mean 0, variance 1.
pub fn reset_bn_stats(stats: &mut [BnStats]) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for s in stats.iter_mut() {
            let _ = s.running_mean.f_zero_()?;
            let _ = s.running_var.f_fill_(1.0)?;
        }
        Ok(())
    })
}

/// The BatchNorm momentum that makes the running statistics the exact cumulative
/// average after `batches_seen + 1` batches: `1 / (batches_seen + 1)`, as torch uses
/// for `momentum = None`.
pub fn bn_momentum_for(batches_seen: usize) -> f64 {
    1.0 / (batches_seen as f64 + 1.0)
}

/// Re-estimates BatchNorm statistics as `torch.optim.swa_utils.update_bn`: resets
/// `stats`, then calls `forward(b, bn_momentum_for(b))` for `b in 0..batches` under
/// `no_grad`. The closure must run one forward pass over batch `b` with every
/// BatchNorm whose statistics are in `stats` in training mode and with the given
/// momentum (e.g. `Tensor::batch_norm(.., training = true, momentum, ..)`).
///
/// ```
/// use dml::optim::{update_bn, BnStats};
/// use tch::{Device, Kind, Tensor};
/// let opts = (Kind::Double, Device::Cpu);
/// let (mean, var) = (Tensor::zeros([3], opts), Tensor::ones([3], opts));
/// let batches = [Tensor::randn([8, 3], opts), Tensor::randn([5, 3], opts)];
/// let mut stats = vec![BnStats { running_mean: mean.shallow_clone(), running_var: var.shallow_clone() }];
/// update_bn(&mut stats, batches.len(), |b, momentum| {
///     let _ = batches[b].f_batch_norm(None::<&Tensor>, None, Some(&mean), Some(&var), true, momentum, 1e-5, false)?;
///     Ok(())
/// })?;
/// // The running mean is now the plain average of the two batch means.
/// let want = (batches[0].mean_dim(0, false, Kind::Double) + batches[1].mean_dim(0, false, Kind::Double)) / 2.0;
/// assert!(mean.allclose(&want, 1e-12, 1e-12, false));
/// # Ok::<(), dml::Error>(())
/// ```
pub fn update_bn<F>(stats: &mut [BnStats], batches: usize, mut forward: F) -> Result<()>
where
    F: FnMut(usize, f64) -> Result<()>,
{
    reset_bn_stats(stats)?;
    tch::no_grad(|| -> Result<()> {
        for b in 0..batches {
            forward(b, bn_momentum_for(b))?;
        }
        Ok(())
    })
}
