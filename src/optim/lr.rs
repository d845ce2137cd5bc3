//! Learning-rate policies: the cyclical ones of Smith (2017), computed exactly as
//! `torch.optim.lr_scheduler.CyclicLR` does, and the LR range test's linear ramp.
use crate::config::{LrConfig, LrPolicy};

/// The learning rate of optimiser step `iteration` (0-based): `base_lr` for
/// `constant`; for the cyclic policies CyclicLR's value after `iteration` scheduler
/// steps with `base_lr`, `max_lr = cfg.max_lr`, `step_size_up = step_size_down =
/// cfg.step_size`, `gamma = cfg.gamma` and the mode's default scale mode (per cycle for
/// `triangular`/`triangular2`, per iteration for `exp_range`). A zero step size (which
/// config validation rejects for cyclic policies) gives `base_lr`.
///
/// ```
/// use dml::config::{LrConfig, LrPolicy};
/// let cfg = LrConfig { policy: LrPolicy::Triangular, max_lr: 1e-3, step_size: 10, gamma: 1.0 };
/// let lr = |i| dml::optim::learning_rate(&cfg, 1e-4, i);
/// assert_eq!(lr(0), 1e-4);
/// assert!((lr(10) - 1e-3).abs() < 1e-15 && (lr(5) - 5.5e-4).abs() < 1e-15);
/// assert_eq!(lr(20), 1e-4);
/// ```
pub fn learning_rate(cfg: &LrConfig, base_lr: f64, iteration: usize) -> f64 {
    if cfg.policy == LrPolicy::Constant || cfg.step_size == 0 {
        return base_lr;
    }
    let it = iteration as f64;
    // CyclicLR with step_size_up == step_size_down: total 2s, step_ratio 0.5.
    let step_size = cfg.step_size as f64;
    let total_size = step_size + step_size;
    let step_ratio = step_size / total_size;
    let cycle = (1.0 + it / total_size).floor();
    let x = 1.0 + it / total_size - cycle;
    let scale_factor = if x <= step_ratio {
        x / step_ratio
    } else {
        (x - 1.0) / (step_ratio - 1.0)
    };
    let base_height = (cfg.max_lr - base_lr) * scale_factor;
    let scale = match cfg.policy {
        LrPolicy::Constant | LrPolicy::Triangular => 1.0,
        LrPolicy::Triangular2 => 1.0 / 2f64.powf(cycle - 1.0),
        LrPolicy::ExpRange => cfg.gamma.powf(it),
    };
    base_lr + base_height * scale
}

/// The LR range test's learning rate at step `i` of `steps`: a linear ramp from
/// `start` (step 0) to `end` (step `steps − 1`), held at `end` afterwards; `start` when
/// `steps` ≤ 1.
///
/// ```
/// assert_eq!(dml::optim::lr_range(0.0, 1.0, 5, 0), 0.0);
/// assert_eq!(dml::optim::lr_range(0.0, 1.0, 5, 2), 0.5);
/// assert_eq!(dml::optim::lr_range(0.0, 1.0, 5, 4), 1.0);
/// assert_eq!(dml::optim::lr_range(0.0, 1.0, 5, 9), 1.0);
/// ```
pub fn lr_range(start: f64, end: f64, steps: usize, i: usize) -> f64 {
    if steps <= 1 {
        return start;
    }
    if i + 1 >= steps {
        return end;
    }
    start + (end - start) * (i as f64 / (steps - 1) as f64)
}
