//! The learning-rate range test (Smith 2017): train with a learning rate that ramps
//! linearly from `start` to `end`, record the loss at each step, and suggest the base
//! (where the loss starts falling) and the maximum (where it turns) of a cyclic policy.
//!
//! A metric loss can also fall because the embedding **collapses**: with every image
//! mapped to nearly one point, a triplet loss sits at its margin and looks lower than
//! where it started. The test therefore also records the spread of each batch's
//! embeddings ([`crate::train::step::embedding_spread`]), suggests only rates of steps whose
//! spread is at least [`SPREAD_KEPT`] of its peak so far, and ends the ramp once the
//! smoothed spread falls below [`SPREAD_COLLAPSED`] of its peak.
use std::cell::RefCell;

use crate::comm::Comm;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::loss::xbm::CrossBatchMemory;
use crate::optim::lr_range;

use super::{step, Trainer};

/// The ramp of an LR range test.
#[derive(Debug, Clone, Copy)]
pub struct LrRamp {
    /// Learning rate of the first step.
    pub start: f64,
    /// Learning rate of the last step.
    pub end: f64,
    /// Number of steps.
    pub steps: usize,
}

/// Suggestions come only from steps whose embedding spread is at least this fraction of
/// the largest spread of the steps up to them.
pub const SPREAD_KEPT: f64 = 0.5;
/// The ramp ends once the smoothed embedding spread falls below this fraction of its peak
/// (the embedding has collapsed).
pub const SPREAD_COLLAPSED: f64 = 0.1;

/// What the test measured and suggests.
#[derive(Debug, Clone)]
pub struct LrFindResult {
    /// (learning rate, loss) per step, in order.
    pub points: Vec<(f64, f64)>,
    /// The embedding spread of each step's global batch, in the same order.
    pub spreads: Vec<f64>,
    /// Suggested `optim.lr` (cyclic base).
    pub base: f64,
    /// Suggested `lr.max_lr`.
    pub max: f64,
    /// Steps left out of the suggestions: their spread was below [`SPREAD_KEPT`] of the
    /// peak before them.
    pub low_spread_steps: usize,
    /// The learning rate at which the ramp ended because the embedding had collapsed
    /// (smoothed spread below [`SPREAD_COLLAPSED`] of its peak), if it did.
    pub collapsed_at: Option<f64>,
}

impl LrFindResult {
    /// Writes `lr_find.jsonl` (lr, loss and embedding spread per step) and
    /// `lr_find.png` (the curve with the suggestions and any collapse) into `out`;
    /// returns the picture's path.
    pub fn write(&self, out: &std::path::Path) -> Result<std::path::PathBuf> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let lines: String = self
            .points
            .iter()
            .zip(&self.spreads)
            .map(|((lr, loss), spread)| {
                let row = serde_json::json!({ "lr": lr, "loss": loss, "embedding_spread": spread });
                format!("{row}\n")
            })
            .collect();
        let jsonl = out.join("lr_find.jsonl");
        std::fs::write(&jsonl, lines).map_err(|e| Error::io(&jsonl, e))?;
        let png = out.join("lr_find.png");
        crate::plot::plot_lr_range(&self.points, (self.base, self.max), self.collapsed_at, &png)?;
        Ok(png)
    }
}

/// Runs the range test with the model, data and objective of `cfg` on every rank (the
/// global batch as in training, and a cross-batch memory when `[xbm]` has one). Stops early once the smoothed loss exceeds four times its
/// minimum or is not finite, or the embedding has collapsed ([`SPREAD_COLLAPSED`]).
///
/// ```no_run
/// # fn demo(comm: &dyn dml::comm::Comm) -> dml::Result<()> {
/// let cfg = dml::config::Config::load("configs/quickstart.toml".as_ref(), &[])?;
/// let ramp = dml::train::lr_find::LrRamp { start: 1e-6, end: 1e-2, steps: 100 };
/// let r = dml::train::lr_find::lr_find(&cfg, comm, ramp)?;
/// println!("optim.lr = {:.2e}, lr.max_lr = {:.2e}", r.base, r.max);
/// # Ok(()) }
/// ```
pub fn lr_find(cfg: &Config, comm: &dyn Comm, ramp: LrRamp) -> Result<LrFindResult> {
    if !(ramp.start > 0.0 && ramp.end > ramp.start && ramp.steps >= 5) {
        return Err(Error::Input(format!(
            "lr-find: needs 0 < start < end and at least 5 steps (got {} → {}, {} steps)",
            ramp.start, ramp.end, ramp.steps
        )));
    }
    let t = Trainer::new(cfg, comm)?;
    t.broadcast_model()?;
    let mut optim = t.optimizer();
    let mut loader = t.loader(t.sampler.clone(), 0, ramp.steps)?;
    // The objective the run would train: with `[xbm]`, a fresh memory from `xbm.start` on.
    let memory = (t.cfg.xbm.size > 0).then(|| RefCell::new(CrossBatchMemory::new(&t.cfg.xbm)));
    let mut env = t.env();
    env.memory = memory.as_ref();
    let (mut points, mut spreads) = (Vec::new(), Vec::new());
    let mut smooth = Smoother::new(0.9);
    let mut spread = Smoother::new(0.9);
    let mut collapsed_at = None;
    while let Some(batch) = loader.try_next()? {
        let i = batch.step as usize;
        let lr = lr_range(ramp.start, ramp.end, ramp.steps, i);
        let model_step = step::train_step(&env, &mut optim, &batch, lr, i + 1, None);
        let out = match model_step {
            Ok(out) => out,
            Err(Error::Train(_)) => break, // a non-finite loss ends the ramp
            Err(e) => return Err(e),
        };
        points.push((lr, out.loss));
        spreads.push(out.embedding_spread);
        let s = smooth.push(out.loss);
        let e = spread.push(out.embedding_spread);
        if i > 4 && e < SPREAD_COLLAPSED * spread.max {
            collapsed_at = Some(lr);
            break;
        }
        if i > 4 && s > 4.0 * smooth.min {
            break;
        }
    }
    let kept = spread_kept(&spreads);
    let healthy: Vec<(f64, f64)> = points
        .iter()
        .zip(&kept)
        .filter(|(_, &k)| k)
        .map(|(p, _)| *p)
        .collect();
    if healthy.len() < 3 && points.len() >= 3 {
        return Err(Error::Train(format!(
            "lr-find: the embedding's spread fell below {:.0}% of its peak within the first steps (only {} of {} kept it, up to lr {:.2e}); lower --start and --end",
            100.0 * SPREAD_KEPT,
            healthy.len(),
            points.len(),
            healthy.last().map_or(ramp.start, |p| p.0)
        )));
    }
    let (base, max) = suggest(&healthy)?;
    Ok(LrFindResult {
        low_spread_steps: points.len() - healthy.len(),
        points,
        spreads,
        base,
        max,
        collapsed_at,
    })
}

/// Which steps of a range test kept their embedding spread: those whose spread is at
/// least [`SPREAD_KEPT`] of the largest spread up to and including them.
///
/// ```
/// // The spread grows from 0.2 to 0.4 with one dip, then collapses towards 0.
/// let spreads = [0.2, 0.3, 0.4, 0.15, 0.4, 0.3, 0.1, 0.01];
/// let kept = dml::train::lr_find::spread_kept(&spreads);
/// assert_eq!(kept, [true, true, true, false, true, true, false, false]);
/// ```
pub fn spread_kept(spreads: &[f64]) -> Vec<bool> {
    let mut peak = f64::NEG_INFINITY;
    spreads
        .iter()
        .map(|&x| {
            peak = peak.max(x);
            x >= SPREAD_KEPT * peak
        })
        .collect()
}

/// Exponential moving average with bias correction, tracking its extremes.
struct Smoother {
    beta: f64,
    avg: f64,
    n: i32,
    min: f64,
    max: f64,
}

impl Smoother {
    fn new(beta: f64) -> Smoother {
        Smoother {
            beta,
            avg: 0.0,
            n: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn push(&mut self, x: f64) -> f64 {
        self.n += 1;
        self.avg = self.beta * self.avg + (1.0 - self.beta) * x;
        let s = self.avg / (1.0 - self.beta.powi(self.n));
        self.min = self.min.min(s);
        self.max = self.max.max(s);
        s
    }
}

/// The smoothed losses of `points`.
pub fn smoothed(points: &[(f64, f64)]) -> Vec<f64> {
    let mut s = Smoother::new(0.9);
    points.iter().map(|&(_, l)| s.push(l)).collect()
}

/// Suggests (base, max) from a range test: `max` is the learning rate at the minimum of
/// the smoothed loss (where it turns), `base` the first learning rate at which the
/// smoothed loss has fallen by a tenth of its total fall (where it starts falling).
///
/// ```
/// // Loss falls from 2 to 1 between lr 0.2 and 0.6 and rises afterwards.
/// let pts: Vec<(f64, f64)> = (1..=10)
///     .map(|i| { let lr = i as f64 / 10.0; (lr, if lr <= 0.6 { 2.0 - (lr - 0.1) * 2.0 } else { 1.0 + (lr - 0.6) * 5.0 }) })
///     .collect();
/// let (base, max) = dml::train::lr_find::suggest(&pts)?;
/// assert!(base < max && max <= 0.8, "{base} {max}");
/// # Ok::<(), dml::Error>(())
/// ```
pub fn suggest(points: &[(f64, f64)]) -> Result<(f64, f64)> {
    if points.len() < 3 {
        return Err(Error::Train(format!(
            "lr-find: only {} finite steps; lower --start",
            points.len()
        )));
    }
    let s = smoothed(points);
    let (imin, &lmin) = s
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .ok_or_else(|| Error::Train("lr-find: no losses".into()))?;
    let first = s[0];
    let threshold = first - 0.1 * (first - lmin);
    let ibase = s
        .iter()
        .position(|&l| l <= threshold)
        .unwrap_or(0)
        .min(imin);
    Ok((points[ibase].0, points[imin].0))
}
