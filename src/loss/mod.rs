//! Miners and metric losses over the gathered global batch.
//!
//! Every loss here sees the **global** batch `emb` `[B, D]` (DESIGN.md) and returns a
//! 0-d loss whose gradient with respect to `emb` is exact. Where
//! pytorch-metric-learning (PML 2.9) has the loss and the miner, value and gradient
//! match it (tests/loss_parity.rs):
//!
//! | `loss.name` | `miner.name` | PML equivalent |
//! |---|---|---|
//! | `triplet` | `batch_hard` | `BatchHardMiner` + `TripletMarginLoss` |
//! | `triplet` | `batch_all` | `TripletMarginMiner(margin, "all")` + `TripletMarginLoss` |
//! | `triplet` | `semi_hard` | `TripletMarginMiner(margin, "semihard")` + `TripletMarginLoss` |
//! | `triplet` | `none` | `TripletMarginLoss` on every valid triplet |
//! | `multi_similarity` | `multi_similarity` | `MultiSimilarityMiner(ε)` + `MultiSimilarityLoss` |
//! | `multi_similarity` | `none` | `MultiSimilarityLoss` on every pair |
//! | `margin` | `dnc_cutoff` | `MarginLoss(margin, nu=0, beta)` on the triplets of D&C's sampler |
//!
//! [`MarginLoss`] follows Divide and Conquer's official loss and sampler
//! (`tools/margin_ref.py`); PML has the loss but not the sampler.
//! Group Loss has no PML counterpart; [`GroupLoss`] follows the official code
//! (dvl-tum/group_loss) and `tools/group_loss_ref.py`.
//!
//! **Sharded.** Under W ranks each rank computes only the terms whose anchor is one of
//! its rows ([`Shard`]), against the whole gathered batch; counts that a loss divides by
//! are summed over ranks first, so the parts add up to the global loss exactly. Group
//! Loss iterates over the whole similarity matrix and is not sharded: one rank computes
//! it (see [`Objective`]).
//!
//! **Bounded memory.** Nothing of size B×B×B is ever built, and not even the B×B
//! matrix when B is large: the losses walk over chunks of anchor rows (each chunk
//! builds `[rows, B]`, or `[rows, P, B]` for batch-all / semi-hard, P the largest
//! number of positives of an anchor), back-propagate each chunk into a detached leaf
//! copy of the normalised embeddings, and hand the accumulated gradient to the
//! caller's graph through a surrogate whose value is the loss and whose gradient is
//! the exact one. See [`chunk`] for the mechanism.
//!
//! **Cross-batch memory.** Triplet (every miner), Multi-Similarity and the margin loss
//! also mine the batch's anchors against a memory of past global batches
//! ([`MetricLoss::compute_memory_shard`], [`xbm`]), as PML's `CrossBatchMemory` wrapping
//! the same loss and miner (`tests/xbm_parity.rs`; for the margin loss, with D&C's
//! sampler written as a PML miner in `tools/make_xbm_fixtures.py`).
use tch::Tensor;

use crate::config::{LossConfig, LossName, MinerConfig, MinerName};
use crate::error::{Error, Result};

pub mod chunk;
pub mod classification;
pub mod distance;
pub mod distill;
pub mod group;
pub mod margin;
pub mod multi_similarity;
pub mod objective;
pub mod shard;
pub mod stats;
pub mod triplet;
pub mod xbm;

pub use distance::Distance;
pub use group::GroupLoss;
pub use margin::MarginLoss;
pub use multi_similarity::MultiSimilarityLoss;
pub use objective::{Objective, ObjectiveOutput};
pub use shard::Shard;
pub use stats::MiningStats;
pub use triplet::{TripletLoss, TripletMiner};

/// A metric loss (with its miner) over the gathered global batch.
pub trait MetricLoss {
    /// This share's part of the loss over the gathered global batch: the terms whose
    /// anchor is one of the shard's rows, mined against all rows of `emb` `[B, D]` (f32
    /// or f64, requires grad), `labels` `[B]` i64, and divided by the global counts.
    /// The parts of all shares sum to the loss, in value and gradient; the statistics
    /// returned are those of the whole batch.
    fn compute_shard(&self, emb: &Tensor, labels: &Tensor, shard: &Shard) -> Result<LossOutput>;

    /// This share's part of the cross-batch-memory loss ([`xbm`]): the terms whose anchor
    /// is one of the shard's rows of `emb`, mined against the memory's (detached) rows
    /// without pairing an anchor with its own copy, divided by the global counts, as
    /// PML's `CrossBatchMemory` wrapping this loss and miner computes them. The
    /// statistics are those of the whole batch against the memory. Losses without a
    /// memory form return [`Error::Config`].
    fn compute_memory_shard(
        &self,
        emb: &Tensor,
        labels: &Tensor,
        memory: &xbm::MemoryView,
        shard: &Shard,
    ) -> Result<LossOutput> {
        let _ = (emb, labels, memory, shard);
        Err(Error::Config(format!(
            "xbm.size: {} has no cross-batch memory; use loss.name = triplet, multi_similarity or margin",
            self.name()
        )))
    }

    /// The loss over the whole batch in one process ([`Shard::whole`]).
    fn compute(&self, emb: &Tensor, labels: &Tensor) -> Result<LossOutput> {
        self.compute_shard(emb, labels, &Shard::whole(emb.size()[0]))
    }

    /// A short name for logs, e.g. `triplet(batch_hard, margin=0.2)`.
    fn name(&self) -> String;
}

/// What a loss returns: the differentiable scalar and the step's mining statistics.
#[derive(Debug)]
pub struct LossOutput {
    /// 0-d, differentiable with respect to the embeddings: this share's part (the whole
    /// loss for [`Shard::whole`]).
    pub loss: Tensor,
    /// Mining statistics of the batch.
    pub stats: MiningStats,
}

/// Builds the metric loss and miner named by the config (the losses on embeddings
/// alone; Group Loss also needs logits and is built by [`Objective::build`]).
///
/// Combinations without a meaning are a [`Error::Config`] naming both keys:
/// a triplet loss needs a triplet miner (`batch_hard`, `batch_all`, `semi_hard`,
/// `none`), Multi-Similarity a pair miner (`multi_similarity`, `none`), and the margin
/// loss and the `dnc_cutoff` miner go only with each other.
///
/// ```no_run
/// use dml::config::{LossConfig, MinerConfig};
/// let loss = dml::loss::build(&LossConfig::default(), &MinerConfig::default())?;
/// let emb = tch::Tensor::randn([8, 4], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// let labels = tch::Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2, 3, 3]);
/// let out = loss.compute(&emb, &labels)?;
/// out.loss.backward();
/// # Ok::<(), dml::Error>(())
/// ```
pub fn build(loss: &LossConfig, miner: &MinerConfig) -> Result<Box<dyn MetricLoss>> {
    crate::config::check_loss(loss, miner)?;
    let distance = Distance::resolve(loss.distance, loss.name);
    let unpaired = || {
        Error::Config(format!(
            "loss.name / miner.name: no {} loss with miner.name = {}",
            loss_name(loss.name),
            crate::config::miner_name(miner.name)
        ))
    };
    match loss.name {
        LossName::Triplet => {
            let m = match miner.name {
                MinerName::BatchHard => TripletMiner::BatchHard,
                MinerName::BatchAll => TripletMiner::All,
                MinerName::SemiHard => TripletMiner::SemiHard,
                MinerName::None => TripletMiner::None,
                _ => return Err(unpaired()),
            };
            Ok(Box::new(TripletLoss::new(
                loss.margin,
                loss.soft_margin,
                m,
                distance,
            )))
        }
        LossName::MultiSimilarity => {
            let epsilon = (miner.name == MinerName::MultiSimilarity).then_some(miner.epsilon);
            Ok(Box::new(MultiSimilarityLoss::new(
                loss.ms_alpha,
                loss.ms_beta,
                loss.ms_base,
                epsilon,
            )))
        }
        LossName::Margin => Ok(Box::new(MarginLoss::new(
            loss.margin,
            loss.margin_beta,
            miner.cutoff,
        ))),
        LossName::Group => Err(Error::Config(
            "loss.name = group works on embeddings and classifier logits: build it with \
             loss::Objective::build"
                .into(),
        )),
    }
}

/// The config spelling of a loss name.
fn loss_name(l: LossName) -> &'static str {
    match l {
        LossName::Triplet => "triplet",
        LossName::MultiSimilarity => "multi_similarity",
        LossName::Margin => "margin",
        LossName::Group => "group",
    }
}

/// Checks that `emb` is `[B, D]` floating point and `labels` is `[B]` i64.
pub(crate) fn check_inputs(emb: &Tensor, labels: &Tensor) -> Result<()> {
    let es = emb.size();
    let ls = labels.size();
    if es.len() != 2 || ls.len() != 1 || es[0] != ls[0] {
        return Err(Error::Input(format!(
            "loss: embeddings must be [B, D] and labels [B], got {es:?} and {ls:?}"
        )));
    }
    if !matches!(emb.kind(), tch::Kind::Float | tch::Kind::Double) {
        return Err(Error::Input(format!(
            "loss: embeddings must be f32 or f64, got {:?}",
            emb.kind()
        )));
    }
    if labels.kind() != tch::Kind::Int64 {
        return Err(Error::Input(format!(
            "loss: labels must be i64, got {:?}",
            labels.kind()
        )));
    }
    Ok(())
}
