//! Multi-Similarity loss (Wang et al. 2019) with its ε miner, as in PML
//! (`MultiSimilarityLoss(alpha, beta, base)`, `MultiSimilarityMiner(epsilon)`).
//!
//! On cosine similarities S of the normalised embeddings, per anchor a:
//! `1/α log(1 + Σ_P e^{−α(S_ap − λ)}) + 1/β log(1 + Σ_N e^{β(S_an − λ)})`, averaged
//! over **all** B anchors (anchors without pairs add 0). The miner keeps a positive
//! if `S_ap − ε < max_n S_an` and a negative if `S_an + ε > min_p S_ap`.
//!
//! PML's quirks are kept for parity: the miner returns nothing when the batch has no
//! positive or no negative pair, and the loss is 0 when at most one positive and at
//! most one negative pair are mined.
use tch::{Kind, Tensor};

use super::chunk::{scalar, with_grad, zero_loss, Leaf, DEFAULT_BUDGET};
use super::distance::{chunk_rows, label_masks, memory_masks};
use super::stats::{count, StatsAcc};
use super::xbm::{MemoryView, Reference};
use super::{check_inputs, LossOutput, MetricLoss, Shard};
use crate::error::Result;

/// Multi-Similarity loss, with the ε miner or on all pairs.
#[derive(Debug, Clone)]
pub struct MultiSimilarityLoss {
    /// α, the positive scale.
    pub alpha: f64,
    /// β, the negative scale.
    pub beta: f64,
    /// λ, the similarity offset (PML's `base`).
    pub base: f64,
    /// ε of the miner; `None` uses every pair.
    pub epsilon: Option<f64>,
    /// Largest chunk tensor in elements (see [`super::chunk`]).
    pub budget: i64,
}

impl MultiSimilarityLoss {
    /// A Multi-Similarity loss with the default chunk budget.
    ///
    /// ```
    /// use dml::loss::{MetricLoss, MultiSimilarityLoss};
    /// let loss = MultiSimilarityLoss::new(2.0, 40.0, 0.5, Some(0.1));
    /// let emb = tch::Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 1.0, 0.1, 0.1, 1.0]).view([4, 2]);
    /// let labels = tch::Tensor::from_slice(&[0i64, 1, 1, 0]);
    /// let out = loss.compute(&emb.set_requires_grad(true), &labels)?;
    /// assert!(out.loss.double_value(&[]) > 0.0);
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn new(alpha: f64, beta: f64, base: f64, epsilon: Option<f64>) -> Self {
        MultiSimilarityLoss {
            alpha,
            beta,
            base,
            epsilon,
            budget: DEFAULT_BUDGET,
        }
    }

    /// The same loss with another chunk budget.
    pub fn with_budget(mut self, budget: i64) -> Self {
        self.budget = budget.max(1);
        self
    }

    /// Mined `(positive, negative)` masks of one chunk of similarities `s` `[len, B]`.
    fn mine(&self, s: &Tensor, pos: &Tensor, neg: &Tensor) -> (Tensor, Tensor) {
        match self.epsilon {
            None => (pos.shallow_clone(), neg.shallow_clone()),
            Some(eps) => {
                let sd = s.detach();
                let neg_max = sd
                    .masked_fill(&neg.logical_not(), f64::NEG_INFINITY)
                    .amax([1i64].as_slice(), true);
                let pos_min = sd
                    .masked_fill(&pos.logical_not(), f64::INFINITY)
                    .amin([1i64].as_slice(), true);
                let hp = pos.logical_and(&(&sd - eps).lt_tensor(&neg_max));
                let hn = neg.logical_and(&(&sd + eps).gt_tensor(&pos_min));
                (hp, hn)
            }
        }
    }

    /// PML's `lmu.logsumexp(scale * x, keep_mask, add_one=True)` times `1/scale`.
    fn lse(x: &Tensor, keep: &Tensor, scale: f64) -> Tensor {
        let x = (x * scale).masked_fill(&keep.logical_not(), f64::NEG_INFINITY);
        let zeros = Tensor::zeros([x.size()[0], 1], (x.kind(), x.device()));
        let out = Tensor::cat(&[x, zeros], 1).logsumexp([1i64].as_slice(), true);
        let empty = keep.any_dim(1, true).logical_not();
        out.masked_fill(&empty, 0.0) * (1.0 / scale)
    }
}

impl MultiSimilarityLoss {
    /// The terms of the shard's anchors against the batch itself (`memory = None`) or
    /// against a cross-batch memory (mined with the anchors' own copies, which are then
    /// removed, as PML's `CrossBatchMemory` does), averaged over all B anchors.
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
        let kind = emb.kind();
        let reference = memory.map(|m| Reference::new(m, emb)).transpose()?;
        let mut acc = StatsAcc::default();
        // PML's miner returns nothing when the batch has no positive or no negative pair
        // (decided by the global labels and the memory: the same on every share, no
        // collective). Against a memory every anchor has its own copy as a positive.
        let (any_pos, any_neg) = match &reference {
            None => {
                let (_, _, counts) = labels.internal_unique2(true, false, true);
                (
                    b > 0 && counts.max().int64_value(&[]) > 1,
                    counts.size()[0] > 1,
                )
            }
            Some(r) => (r.rows.size()[0] > 0, r.any_negative(&labels)),
        };
        // An empty memory has no pairs at all, with or without the miner.
        let empty = reference.is_some() && !any_pos;
        if b == 0 || empty || (self.epsilon.is_some() && !(any_pos && any_neg)) {
            return Ok(LossOutput {
                loss: zero_loss(emb),
                stats: acc.finish(b),
            });
        }
        let m = reference.as_ref().map_or(b, |r| r.rows.size()[0]);
        let rows = chunk_rows(shard.len.max(1), m, self.budget);
        let single = shard.covers(b) && rows >= b;
        let leaf = Leaf::new(emb);
        with_grad(|| {
            let (mut n_pos, mut n_neg) = (0i64, 0i64);
            let mut sum = 0.0f64;
            let mut value: Option<Tensor> = None;
            let end = shard.start + shard.len;
            let mut start = shard.start;
            while start < end {
                let len = rows.min(end - start);
                let x = leaf.rows(start, len);
                let (s, pm, nm) = match &reference {
                    None => {
                        let s = x.matmul(&leaf.leaf.tr());
                        let (pos, neg) = label_masks(&labels, start, len);
                        let (pm, nm) = self.mine(&s, &pos, &neg);
                        (s, pm, nm)
                    }
                    Some(r) => {
                        let s = x.matmul(&r.rows.tr());
                        let (pos, neg, own) = memory_masks(&labels, start, len, &r.labels, &r.own);
                        let (pm, nm) = self.mine(&s, &pos, &neg);
                        (s, pm.logical_and(&own.logical_not()), nm)
                    }
                };
                let pos_exp = (&s * -1.0) + self.base; // base − S
                let neg_exp = &s - self.base;
                let losses =
                    Self::lse(&pos_exp, &pm, self.alpha) + Self::lse(&neg_exp, &nm, self.beta); // [len, 1]
                let (np, nn) = (count(&pm), count(&nm));
                n_pos += np;
                n_neg += nn;
                acc.mined += np + nn;
                acc.active += np + nn;
                let any_row = pm.any_dim(1, false).logical_or(&nm.any_dim(1, false));
                acc.contributing += count(&any_row);
                let sd = s.detach();
                acc.add_pos(&sd, &pm);
                acc.add_neg(&sd, &nm);
                if single {
                    let mean = losses.mean(kind);
                    mean.backward();
                    value = Some(mean);
                } else {
                    // Averaged over all B anchors of the global batch.
                    let part = losses.sum(kind) * (1.0 / b as f64);
                    sum += losses.detach().sum(Kind::Double).double_value(&[]);
                    part.backward();
                }
                start += len;
            }
            let pairs = acc.sum_with(shard, &[n_pos as f64, n_neg as f64])?;
            if pairs[0] <= 1.0 && pairs[1] <= 1.0 {
                // PML: `all(len(x) <= 1 for x in indices_tuple)` → zero loss.
                let stats = StatsAcc::default().finish(b);
                return Ok(LossOutput {
                    loss: zero_loss(emb),
                    stats,
                });
            }
            let value = value.unwrap_or_else(|| scalar(sum / b as f64, kind, emb.device()));
            Ok(LossOutput {
                loss: leaf.finish(&value, None),
                stats: acc.finish(b),
            })
        })
    }
}

impl MetricLoss for MultiSimilarityLoss {
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
        match self.epsilon {
            Some(e) => format!(
                "multi_similarity(alpha={}, beta={}, base={}, epsilon={e})",
                self.alpha, self.beta, self.base
            ),
            None => format!(
                "multi_similarity(alpha={}, beta={}, base={}, all pairs)",
                self.alpha, self.beta, self.base
            ),
        }
    }
}
