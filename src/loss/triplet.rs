//! Triplet margin loss with batch-hard, batch-all, semi-hard or no mining.
//!
//! Per mined triplet (a, p, n): `v = d(a,p) − d(a,n) + m` with the hinge `[v]₊` or the
//! soft margin `softplus(v)` (PML `smooth_loss`; set `loss.margin = 0` for
//! triplet-reid's `softplus(d_ap − d_an)`). Reduction: PML's `AvgNonZeroReducer`,
//! the mean over the terms that are > 0 (0 with a graph when there are none).
//!
//! Miners (all per anchor, rows of the distance matrix):
//! - `BatchHard` — PML `BatchHardMiner`: the farthest positive and the closest
//!   negative of every anchor that has both (ties: the lowest index).
//! - `All` — PML `TripletMarginMiner(margin, "all")`: every triplet with
//!   `d_an − d_ap ≤ m`.
//! - `SemiHard` — PML `TripletMarginMiner(margin, "semihard")`: `0 < d_an − d_ap ≤ m`.
//! - `None` — every valid triplet (positive ≠ anchor with its label, negative with
//!   another label).
//!
//! The miners' margin is the loss's `margin`. Distances: [`Distance`] (Euclidean of the
//! normalised embeddings by default; with cosine, d = −similarity).
use tch::{Kind, Tensor};

use super::chunk::{scalar, with_grad, zero_loss, Leaf, DEFAULT_BUDGET};
use super::distance::{chunk_rows, label_masks, memory_masks, Distance};
use super::stats::{count, StatsAcc};
use super::xbm::{MemoryView, Reference};
use super::{check_inputs, LossOutput, MetricLoss, Shard};
use crate::error::Result;

/// How triplets are mined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripletMiner {
    /// Hardest positive and hardest negative per anchor.
    BatchHard,
    /// Every triplet within the margin.
    All,
    /// Triplets whose negative is farther than the positive but within the margin.
    SemiHard,
    /// Every valid triplet.
    None,
}

impl TripletMiner {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TripletMiner::BatchHard => "batch_hard",
            TripletMiner::All => "batch_all",
            TripletMiner::SemiHard => "semi_hard",
            TripletMiner::None => "none",
        }
    }
}

/// Triplet margin loss with its miner.
#[derive(Debug, Clone)]
pub struct TripletLoss {
    /// Margin m (also the miners' margin).
    pub margin: f64,
    /// `softplus` instead of the hinge.
    pub soft: bool,
    /// The miner.
    pub miner: TripletMiner,
    /// The distance.
    pub distance: Distance,
    /// Largest chunk tensor in elements (see [`super::chunk`]).
    pub budget: i64,
}

/// What one chunk contributes.
struct Part {
    /// The chunk's non-zero loss terms, in PML's triplet order (graph to the leaf).
    terms: Tensor,
}

impl TripletLoss {
    /// A triplet loss with the default chunk budget.
    ///
    /// ```
    /// use dml::loss::{Distance, MetricLoss, TripletLoss, TripletMiner};
    /// let loss = TripletLoss::new(0.2, false, TripletMiner::BatchHard, Distance::Euclidean);
    /// let emb = tch::Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 1.0, 0.1, 0.1, 1.0]).view([4, 2]);
    /// let labels = tch::Tensor::from_slice(&[0i64, 1, 1, 0]);
    /// let out = loss.compute(&emb.set_requires_grad(true), &labels)?;
    /// assert!(out.loss.double_value(&[]) > 1.0);
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn new(margin: f64, soft: bool, miner: TripletMiner, distance: Distance) -> Self {
        TripletLoss {
            margin,
            soft,
            miner,
            distance,
            budget: DEFAULT_BUDGET,
        }
    }

    /// The same loss with another chunk budget (elements of the largest chunk tensor).
    pub fn with_budget(mut self, budget: i64) -> Self {
        self.budget = budget.max(1);
        self
    }

    /// `[v]₊` or `softplus(v)`.
    fn term(&self, v: &Tensor) -> Tensor {
        if self.soft {
            v.softplus()
        } else {
            v.relu()
        }
    }

    /// Batch-hard triplets of one chunk of anchors with badness `d` `[len, M]` and label
    /// masks `pos`, `neg`; with `own` (the anchors' own copies in a cross-batch memory,
    /// `[len, M]`), triplets whose hardest positive is that copy are removed after mining,
    /// as PML's `remove_self_comparisons` does.
    fn batch_hard(
        &self,
        d: &Tensor,
        pos: &Tensor,
        neg: &Tensor,
        own: Option<&Tensor>,
        acc: &mut StatsAcc,
    ) -> Part {
        let dd = d.detach();
        let (_, hp) = dd
            .masked_fill(&pos.logical_not(), f64::NEG_INFINITY)
            .max_dim(1, false);
        let (_, hn) = dd
            .masked_fill(&neg.logical_not(), f64::INFINITY)
            .min_dim(1, false);
        let mut keep = pos.any_dim(1, false).logical_and(&neg.any_dim(1, false));
        if let Some(own) = own {
            let chosen_own = own.gather(1, &hp.unsqueeze(1), false).squeeze_dim(1);
            keep = keep.logical_and(&chosen_own.logical_not());
        }
        let a = keep.nonzero().squeeze_dim(1);
        let p = hp.index_select(0, &a);
        let n = hn.index_select(0, &a);
        let ap = d.index(&[Some(&a), Some(&p)]);
        let an = d.index(&[Some(&a), Some(&n)]);
        let terms = self.term(&((&ap - &an) + self.margin));
        let active = terms.gt(0.0);
        let mined = a.size()[0];
        acc.mined += mined;
        let act = count(&active);
        acc.active += act;
        acc.contributing += act;
        let ones = Tensor::ones([mined], (Kind::Int64, d.device()));
        acc.add_pos(&self.distance.similarity(&ap.detach()), &ones);
        acc.add_neg(&self.distance.similarity(&an.detach()), &ones);
        Part {
            terms: terms.masked_select(&active),
        }
    }

    /// Dense triplets (`All`, `SemiHard`, `None`) of one chunk of anchors with badness
    /// `d` `[len, M]` and label masks `pos` (without the anchor itself), `neg`; `p_max` is
    /// at least the largest number of positives of an anchor.
    fn dense(
        &self,
        d: &Tensor,
        pos: &Tensor,
        neg: &Tensor,
        p_max: i64,
        acc: &mut StatsAcc,
    ) -> Part {
        // Column indices of each row's positives in increasing order, padded.
        let (_, order) = pos.to_kind(Kind::Int8).sort_stable(true, 1, true);
        let p_max = p_max.min(pos.size()[1]);
        let pidx = order.narrow(1, 0, p_max);
        let pvalid = pos.gather(1, &pidx, false);
        let dp = d.gather(1, &pidx, false); // [len, P]
        let v = (dp.unsqueeze(2) - d.unsqueeze(1)) + self.margin; // [len, P, B]
        let valid = pvalid.unsqueeze(2).logical_and(&neg.unsqueeze(1));
        let mined = match self.miner {
            TripletMiner::None => valid,
            _ => {
                let dd = d.detach();
                let dpd = dp.detach();
                let tm = dd.unsqueeze(1) - dpd.unsqueeze(2); // d_an − d_ap
                let mut cond = tm.le(self.margin);
                if self.miner == TripletMiner::SemiHard {
                    cond = cond.logical_and(&tm.gt(0.0));
                }
                valid.logical_and(&cond)
            }
        };
        let terms = self.term(&v);
        let active = terms.gt(0.0).logical_and(&mined);
        acc.mined += count(&mined);
        acc.active += count(&active);
        acc.contributing += count(&active.any_dims([1i64, 2].as_slice(), false));
        let per_p = mined.sum_dim_intlist([2i64].as_slice(), false, Kind::Int64); // [len, P]
        let per_n = mined.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64); // [len, B]
        acc.add_pos(&self.distance.similarity(&dp.detach()), &per_p);
        acc.add_neg(&self.distance.similarity(&d.detach()), &per_n);
        Part {
            terms: terms.masked_select(&active),
        }
    }
}

/// Largest number of positives of an anchor: (largest class count) − 1.
fn max_positives(labels: &Tensor) -> i64 {
    if labels.size()[0] == 0 {
        return 0;
    }
    let (_, _, counts) = labels.internal_unique2(true, false, true);
    counts.max().int64_value(&[]) - 1
}

impl TripletLoss {
    /// The terms of the shard's anchors against the batch itself (`memory = None`) or
    /// against a cross-batch memory, reduced as PML's `AvgNonZeroReducer` over all shares.
    fn compute_against(
        &self,
        emb: &Tensor,
        labels: &Tensor,
        memory: Option<&MemoryView>,
        shard: &Shard,
    ) -> Result<LossOutput> {
        check_inputs(emb, labels)?;
        let labels = labels.to_device(emb.device());
        let b = emb.size()[0];
        shard.check(b)?;
        let reference = memory.map(|m| Reference::new(m, emb)).transpose()?;
        let p_max = match &reference {
            None => max_positives(&labels),
            Some(r) => r.max_positives(&labels),
        };
        let mut acc = StatsAcc::default();
        if b == 0 || p_max <= 0 {
            // Decided by the global labels (and the memory, the same on every share): no
            // collective.
            return Ok(LossOutput {
                loss: zero_loss(emb),
                stats: acc.finish(b),
            });
        }
        let m = reference.as_ref().map_or(b, |r| r.rows.size()[0]);
        let per_row = match self.miner {
            TripletMiner::BatchHard => m,
            _ => m * p_max,
        };
        let rows = chunk_rows(shard.len.max(1), per_row, self.budget);
        let leaf = Leaf::new(emb);
        let single = shard.covers(b) && rows >= b;
        let kind = emb.kind();
        with_grad(|| {
            let mut kept: Option<Tensor> = None;
            let mut sum = 0.0f64;
            let end = shard.start + shard.len;
            let mut start = shard.start;
            while start < end {
                let len = rows.min(end - start);
                let x = leaf.rows(start, len);
                let part = match &reference {
                    None => {
                        let d = self.distance.badness(&x, &leaf.leaf);
                        let (pos, neg) = label_masks(&labels, start, len);
                        match self.miner {
                            TripletMiner::BatchHard => {
                                self.batch_hard(&d, &pos, &neg, None, &mut acc)
                            }
                            _ => self.dense(&d, &pos, &neg, p_max, &mut acc),
                        }
                    }
                    Some(r) => {
                        let d = self.distance.badness(&x, &r.rows);
                        let (pos, neg, own) = memory_masks(&labels, start, len, &r.labels, &r.own);
                        match self.miner {
                            TripletMiner::BatchHard => {
                                self.batch_hard(&d, &pos, &neg, Some(&own), &mut acc)
                            }
                            _ => {
                                let pos = pos.logical_and(&own.logical_not());
                                self.dense(&d, &pos, &neg, p_max, &mut acc)
                            }
                        }
                    }
                };
                if single {
                    kept = Some(part.terms);
                } else if part.terms.numel() > 0 {
                    let s = part.terms.sum(kind);
                    sum += s.double_value(&[]);
                    s.backward();
                }
                start += len;
            }
            // PML's AvgNonZeroReducer divides by the non-zero terms of the whole batch.
            acc.sum_with(shard, &[])?;
            let stats = acc.finish(b);
            if acc.active == 0 {
                return Ok(LossOutput {
                    loss: zero_loss(emb),
                    stats,
                });
            }
            let loss = match kept {
                Some(terms) => {
                    // PML: mean over the non-zero terms, op for op.
                    let mean = terms.mean(kind);
                    mean.backward();
                    leaf.finish(&mean, None)
                }
                None => {
                    let n = acc.active as f64;
                    let value = scalar(sum / n, kind, emb.device());
                    leaf.finish(&value, Some(1.0 / n))
                }
            };
            Ok(LossOutput { loss, stats })
        })
    }
}

impl MetricLoss for TripletLoss {
    fn compute_shard(&self, emb: &Tensor, labels: &Tensor, shard: &Shard) -> Result<LossOutput> {
        self.compute_against(emb, labels, None, shard)
    }

    fn compute_memory_shard(
        &self,
        emb: &Tensor,
        labels: &Tensor,
        memory: &MemoryView,
        shard: &Shard,
    ) -> Result<LossOutput> {
        self.compute_against(emb, labels, Some(memory), shard)
    }

    fn name(&self) -> String {
        format!(
            "triplet({}, margin={}{}, {})",
            self.miner.as_str(),
            self.margin,
            if self.soft { ", soft" } else { "" },
            self.distance.as_str()
        )
    }
}
