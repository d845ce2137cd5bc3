//! Per-step mining statistics, written to `metrics.jsonl`.
use tch::Tensor;

use super::Shard;
use crate::error::Result;

/// Mining statistics of one batch.
///
/// Similarities are **cosine similarities** of the L2-normalised embeddings, whatever
/// the loss's distance (for Euclidean distance d on the unit sphere, `1 − d²/2`).
/// Means over an empty set are 0.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MiningStats {
    /// Active pairs or triplets: loss terms that are non-zero (triplet: violation > 0
    /// after the hinge; Multi-Similarity: mined pairs of anchors whose loss is counted).
    pub active: usize,
    /// Pairs (Multi-Similarity, ordered anchor–other pairs) or triplets the miner returned
    /// (`none`: every valid one).
    pub mined: usize,
    /// Mean cosine similarity of the mined positive pairs (triplets: per triplet).
    pub pos_sim_mean: f64,
    /// Mean cosine similarity of the mined negative pairs (triplets: per triplet).
    pub neg_sim_mean: f64,
    /// Fraction of the batch's anchors with at least one non-zero loss term.
    pub contributing_fraction: f64,
}

/// Sums gathered chunk by chunk, turned into [`MiningStats`] at the end.
#[derive(Debug, Clone, Default)]
pub struct StatsAcc {
    /// Active terms.
    pub active: i64,
    /// Mined terms.
    pub mined: i64,
    /// Sum and count of positive similarities.
    pub pos: (f64, i64),
    /// Sum and count of negative similarities.
    pub neg: (f64, i64),
    /// Anchors with a non-zero term.
    pub contributing: i64,
}

impl StatsAcc {
    /// Adds positive similarities `sim` weighted by `count` (both same shape).
    pub fn add_pos(&mut self, sim: &Tensor, count: &Tensor) {
        let (s, n) = weighted(sim, count);
        self.pos.0 += s;
        self.pos.1 += n;
    }

    /// Adds negative similarities `sim` weighted by `count`.
    pub fn add_neg(&mut self, sim: &Tensor, count: &Tensor) {
        let (s, n) = weighted(sim, count);
        self.neg.0 += s;
        self.neg.1 += n;
    }

    /// Sums these statistics and `extra` over all shares of `shard` in one collective;
    /// returns the summed `extra`. Counts travel as f64, exact below 2⁵³.
    pub fn sum_with(&mut self, shard: &Shard, extra: &[f64]) -> Result<Vec<f64>> {
        let mut v = vec![
            self.active as f64,
            self.mined as f64,
            self.pos.0,
            self.pos.1 as f64,
            self.neg.0,
            self.neg.1 as f64,
            self.contributing as f64,
        ];
        v.extend_from_slice(extra);
        shard.sum(&mut v)?;
        self.active = v[0] as i64;
        self.mined = v[1] as i64;
        self.pos = (v[2], v[3] as i64);
        self.neg = (v[4], v[5] as i64);
        self.contributing = v[6] as i64;
        Ok(v.split_off(7))
    }

    /// The statistics of a batch of `b` anchors.
    pub fn finish(&self, b: i64) -> MiningStats {
        let mean = |(s, n): (f64, i64)| if n > 0 { s / n as f64 } else { 0.0 };
        MiningStats {
            active: self.active.max(0) as usize,
            mined: self.mined.max(0) as usize,
            pos_sim_mean: mean(self.pos),
            neg_sim_mean: mean(self.neg),
            contributing_fraction: if b > 0 {
                self.contributing as f64 / b as f64
            } else {
                0.0
            },
        }
    }
}

/// `(Σ sim·count, Σ count)`; the products are summed in the similarities' dtype
/// (no f64 copy of a `[rows, B]` chunk), the counts in i64.
fn weighted(sim: &Tensor, count: &Tensor) -> (f64, i64) {
    let kind = sim.kind();
    let s = (sim.detach() * count.to_kind(kind))
        .sum(kind)
        .double_value(&[]);
    let n = count.sum(tch::Kind::Int64).int64_value(&[]);
    (s, n)
}

/// A count of true elements.
pub fn count(mask: &Tensor) -> i64 {
    mask.sum(tch::Kind::Int64).int64_value(&[])
}
