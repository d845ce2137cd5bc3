//! Learning-rate policies: the cyclical ones of Smith (2017), computed exactly as
//! `torch.optim.lr_scheduler.CyclicLR` does, piecewise-constant steps as `MultiStepLR`
//! (or `LambdaLR` with explicit factors), and the LR range test's linear ramp.
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
/// let cfg = LrConfig { policy: LrPolicy::Triangular, max_lr: 1e-3, step_size: 10, gamma: 1.0, ..LrConfig::default() };
/// let lr = |i| dml::optim::learning_rate(&cfg, 1e-4, i);
/// assert_eq!(lr(0), 1e-4);
/// assert!((lr(10) - 1e-3).abs() < 1e-15 && (lr(5) - 5.5e-4).abs() < 1e-15);
/// assert_eq!(lr(20), 1e-4);
/// ```
///
/// `multistep`: `base_lr · f` with `f = lr.factors[p]` or `γ^p`, `p` the number of
/// milestones ≤ `iteration` (torch's `MultiStepLR`, whose epoch count is here the step).
///
/// ```
/// use dml::config::{LrConfig, LrPolicy};
/// let cfg = LrConfig { policy: LrPolicy::Multistep, milestones: vec![3, 5], gamma: 0.1, ..LrConfig::default() };
/// let lr: Vec<f64> = (0..7).map(|i| dml::optim::learning_rate(&cfg, 1.0, i)).collect();
/// assert_eq!(lr, [1.0, 1.0, 1.0, 0.1, 0.1, 0.1f64 * 0.1, 0.1f64 * 0.1]);
/// ```
pub fn learning_rate(cfg: &LrConfig, base_lr: f64, iteration: usize) -> f64 {
    if cfg.policy == LrPolicy::Multistep {
        return multistep(cfg, base_lr, iteration);
    }
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
        LrPolicy::Constant | LrPolicy::Triangular | LrPolicy::Multistep => 1.0,
        LrPolicy::Triangular2 => 1.0 / 2f64.powf(cycle - 1.0),
        LrPolicy::ExpRange => cfg.gamma.powf(it),
    };
    base_lr + base_height * scale
}

/// `multistep`'s rate. torch's `MultiStepLR` multiplies the current rate by γ at each
/// milestone (`lr · γ · γ`, rounding after each product), so the power is built the
/// same way; explicit factors multiply `base_lr` once, as `LambdaLR` does.
fn multistep(cfg: &LrConfig, base_lr: f64, iteration: usize) -> f64 {
    let passed = cfg.milestones.iter().filter(|&&m| m <= iteration).count();
    match cfg.factors.get(passed) {
        Some(f) => base_lr * f,
        None => (0..passed).fold(base_lr, |lr, _| lr * cfg.gamma),
    }
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
