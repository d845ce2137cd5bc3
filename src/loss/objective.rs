//! The whole training objective over a head's output on the global batch: the metric
//! loss on every embedding, the cross-entropy of every classifier, Group Loss, and the
//! distillation term.
use tch::Tensor;

use super::chunk::zero_loss;
use super::classification::SmoothedCrossEntropy;
use super::distill::distillation_shard;
use super::{GroupLoss, MetricLoss, MiningStats, Shard};
use crate::config::{Config, DistillKind, LossName};
use crate::error::{Error, Result};
use crate::model::HeadOutput;

/// What [`Objective::memory_shard`] returns.
#[derive(Debug)]
pub struct MemoryOutput {
    /// This share's part of `xbm.weight` × the memory loss, 0-d and differentiable.
    pub share: Tensor,
    /// The whole memory loss (unweighted), the same on every share.
    pub value: f64,
    /// Mining statistics of the whole batch against the first embedding's memory.
    pub stats: MiningStats,
    /// Rows of the memory the loss read.
    pub rows: i64,
}

/// What [`Objective::compute_shard`] returns.
#[derive(Debug)]
pub struct ObjectiveOutput {
    /// This share's part, 0-d and differentiable: back-propagate it, then sum the
    /// gradients of all shares.
    pub share: Tensor,
    /// The whole objective (the sum of every share's part), the same on every share.
    pub value: f64,
    /// Mining statistics of the whole batch's first metric term (Group Loss: of the
    /// lead share; default on the others).
    pub stats: MiningStats,
}

/// What the objective sums, built from the config.
///
/// * `loss.name = triplet | multi_similarity`: that loss (with its miner) on each of the
///   head's embeddings, weight 1 each (BFE: per branch; HORDE: per order), plus
///   `loss.ce_weight` × smoothed cross-entropy on each classifier's logits;
/// * `loss.name = group`: Group Loss on the first embedding with the first logits as
///   priors (its own cross-entropy term included), the other terms as above;
/// * with `distill.teacher`: `distill.weight` × the distillation term between the test
///   embedding and the teacher's embedding of the same global batch.
///
/// Mining statistics are those of the first embedding's term.
///
/// ```
/// let cfg = dml::config::Config::default();
/// let objective = dml::loss::Objective::build(&cfg)?;
/// let e = tch::Tensor::randn([4, 3], tch::kind::FLOAT_CPU).set_requires_grad(true);
/// let out = dml::model::HeadOutput { embeddings: vec![e.shallow_clone()], logits: vec![], test: e };
/// let labels = tch::Tensor::from_slice(&[0i64, 0, 1, 1]);
/// let l = objective.compute(&out, &labels, None)?;
/// l.share.backward();
/// # Ok::<(), dml::Error>(())
/// ```
pub struct Objective {
    metric: Option<Box<dyn MetricLoss>>,
    group: Option<GroupLoss>,
    ce: SmoothedCrossEntropy,
    ce_weight: f64,
    distill: Option<(DistillKind, f64)>,
    /// `xbm.weight`.
    memory_weight: f64,
}

impl std::fmt::Debug for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Objective {
    /// The objective of `cfg` (loss, miner, classification and distillation keys).
    pub fn build(cfg: &Config) -> Result<Objective> {
        let (metric, group) = match cfg.loss.name {
            LossName::Group => {
                crate::config::check_loss(&cfg.loss, &cfg.miner)?;
                (None, Some(GroupLoss::from_config(&cfg.loss)))
            }
            _ => (Some(super::build(&cfg.loss, &cfg.miner)?), None),
        };
        let distill =
            (!cfg.distill.teacher.is_empty()).then_some((cfg.distill.kind, cfg.distill.weight));
        Ok(Objective {
            metric,
            group,
            ce: SmoothedCrossEntropy {
                smoothing: cfg.loss.ce_smoothing,
                temperature: cfg.loss.ce_temperature,
            },
            ce_weight: cfg.loss.ce_weight,
            distill,
            memory_weight: cfg.xbm.weight,
        })
    }

    /// True when the objective needs classifier logits (Group Loss).
    pub fn needs_logits(&self) -> bool {
        self.group.is_some()
    }

    /// `xbm.weight`: the memory loss's weight in the objective.
    pub fn memory_weight(&self) -> f64 {
        self.memory_weight
    }

    /// True when the objective needs the teacher's embeddings.
    pub fn needs_teacher(&self) -> bool {
        self.distill.is_some()
    }

    /// The objective on a head's output `out` over the global batch with `labels` `[B]`
    /// and, for distillation, the teacher's embeddings `teacher` `[B, D_t]`, in one
    /// process ([`Shard::whole`]).
    pub fn compute(
        &self,
        out: &HeadOutput,
        labels: &Tensor,
        teacher: Option<&Tensor>,
    ) -> Result<ObjectiveOutput> {
        let b = labels.size().first().copied().unwrap_or(0);
        self.compute_shard(out, labels, teacher, &Shard::whole(b))
    }

    /// This share's part of the objective (see [`Shard`]): every sharded term's part
    /// (metric losses and cross-entropy by anchor rows, distillation by rows of its
    /// distance matrices); Group Loss, which iterates over the whole similarity matrix,
    /// whole on the lead share and as a zero with a graph on the others (so that every
    /// share has gradients for the same parameters). The parts of all shares sum to the
    /// objective in value and gradient; [`ObjectiveOutput::value`] is that sum, the same on
    /// every share (one collective of one f64).
    pub fn compute_shard(
        &self,
        out: &HeadOutput,
        labels: &Tensor,
        teacher: Option<&Tensor>,
        shard: &Shard,
    ) -> Result<ObjectiveOutput> {
        let mut terms: Vec<Tensor> = Vec::new();
        let mut stats = None;
        let mut logits = out.logits.iter();
        if let Some(g) = &self.group {
            let (f, l) = match (out.embeddings.first(), logits.next()) {
                (Some(f), Some(l)) => (f, l),
                _ => {
                    return Err(Error::Config(
                        "loss.name = group needs a classifier: set model.classes (0 takes the \
                         number of classes of data.train)"
                            .into(),
                    ))
                }
            };
            if shard.lead {
                let lo = g.compute_with_logits(f, l, labels)?;
                terms.push(lo.loss);
                stats = Some(lo.stats);
            } else {
                g.check(f, l, labels)?;
                terms.push(zero_loss(f) + zero_loss(l));
                stats = Some(MiningStats::default());
            }
        }
        if let Some(m) = &self.metric {
            for e in &out.embeddings {
                let lo = m.compute_shard(e, labels, shard)?;
                terms.push(lo.loss);
                stats.get_or_insert(lo.stats);
            }
        }
        if self.ce_weight > 0.0 {
            for l in logits {
                terms.push(self.ce.compute_shard(l, labels, shard) * self.ce_weight);
            }
        }
        if let Some((kind, weight)) = self.distill {
            let t = teacher.ok_or_else(|| {
                Error::Train("distillation: no teacher embeddings were given".into())
            })?;
            terms.push(distillation_shard(kind, &out.test, t, shard)? * weight);
        }
        let share = terms
            .into_iter()
            .reduce(|a, b| a + b)
            .ok_or_else(|| Error::Config("the objective has no term".into()))?;
        let mut value = [share.double_value(&[])];
        shard.sum(&mut value)?;
        Ok(ObjectiveOutput {
            share,
            value: value[0],
            stats: stats.unwrap_or_default(),
        })
    }

    /// This share's part of the cross-batch-memory term: `xbm.weight` × the metric loss
    /// of every embedding of `out` (the objective's inputs over the global batch) against
    /// its memory, `memory[i]` for `out.embeddings[i]` ([`MetricLoss::compute_memory_shard`]).
    /// [`MemoryOutput::value`] is the unweighted sum over embeddings and shares (one
    /// collective of one f64).
    pub fn memory_shard(
        &self,
        out: &HeadOutput,
        labels: &Tensor,
        memory: &[super::xbm::MemoryView],
        shard: &Shard,
    ) -> Result<MemoryOutput> {
        let metric = self.metric.as_ref().ok_or_else(|| {
            Error::Config(
                "xbm.size: the cross-batch memory needs loss.name = triplet, multi_similarity or margin"
                    .into(),
            )
        })?;
        if memory.len() != out.embeddings.len() {
            return Err(Error::Train(format!(
                "cross-batch memory: {} rings for {} embeddings",
                memory.len(),
                out.embeddings.len()
            )));
        }
        let mut terms = Vec::new();
        let mut stats = None;
        for (e, view) in out.embeddings.iter().zip(memory) {
            let lo = metric.compute_memory_shard(e, labels, view, shard)?;
            terms.push(lo.loss);
            stats.get_or_insert(lo.stats);
        }
        let sum = terms
            .into_iter()
            .reduce(|a, b| a + b)
            .ok_or_else(|| Error::Config("the head has no embedding".into()))?;
        let mut value = [sum.double_value(&[])];
        shard.sum(&mut value)?;
        Ok(MemoryOutput {
            share: sum * self.memory_weight,
            value: value[0],
            stats: stats.unwrap_or_default(),
            rows: memory.first().map_or(0, |m| m.rows.size()[0]),
        })
    }

    /// A short description for logs.
    pub fn name(&self) -> String {
        let mut parts = Vec::new();
        if let Some(g) = &self.group {
            parts.push(g.name());
        }
        if let Some(m) = &self.metric {
            parts.push(m.name());
        }
        if let Some((k, w)) = self.distill {
            let kind = match k {
                crate::config::DistillKind::Absolute => "absolute",
                crate::config::DistillKind::Relative => "relative",
            };
            parts.push(format!("{w} × distill({kind})"));
        }
        parts.join(" + ")
    }
}
