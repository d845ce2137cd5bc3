//! Margin loss (Wu et al. 2017) with Divide and Conquer's negative sampler, as the
//! official D&C code trains it (CompVis/metric-learning-divide-and-conquer,
//! `lib/loss/margin_loss.py` and `lib/loss/sampler.py`); reference:
//! `tools/margin_ref.py`, parity test: `tests/margin_parity.rs`.
//!
//! **Sampler** (`miner.name = "dnc_cutoff"`), on the L2-normalised batch x̂ `[B, D]`:
//! - `d = sqrt(max(max(‖x̂ᵢ‖² + ‖x̂ⱼ‖² − 2 x̂ᵢ·x̂ⱼ, 0), 1e-4))` (the official `pdist`, so
//!   the diagonal is 0.01), in the embeddings' dtype;
//! - positives of anchor i: the other indices with its label (a duplicate row drawn
//!   with replacement is a positive); `num_neg = ⌊Σᵢ #posᵢ / B⌋`, the same for every
//!   anchor (K − 1 for an N×K batch);
//! - negatives of anchor i: the `num_neg` smallest entries of
//!   `dᵢⱼ + 10⁶·([j positive] + [dᵢⱼ < cutoff])`: the closest negatives at distance
//!   ≥ cutoff. When fewer exist, masked entries fill up, as in the official code:
//!   first those masked once (negatives closer than the cutoff, the anchor itself,
//!   positives beyond it), then those masked twice (positives closer than the cutoff).
//!   The two masks are *added* as the official code's 2019 uint8 tensors did. The
//!   order is exactly lexicographic in (mask count, d, index), ties going to the
//!   lowest index (the official f32 sum `d + 10⁶·k` rounds d to 1/16 among masked
//!   entries; that rounding is not reproduced). One deviation: the anchor itself is
//!   always masked once, also for `cutoff ≤ 0.01` where the official code would pick
//!   it as an unmasked "negative" at d = 0.01; for any larger cutoff (0.5 by default)
//!   this is the official rule.
//! - triplets: anchor i zips its positives (ascending index) with its negatives
//!   (ascending index): `tᵢ = min(#posᵢ, num_neg)` triplets, the first tᵢ of each list.
//!   In an N×K batch both lists have K − 1 entries. This is what the official
//!   truncation of the running triplet lists amounts to, anchor by anchor.
//!
//! **Loss** over the T triplets: `d_ap = sqrt(‖x̂_p − x̂_a‖² + 1e-8)`, `d_an` likewise,
//! `L = Σ ([d_ap − β + m]₊ + [β − d_an + m]₊) / (#{[d_ap − β + m]₊ > 0} + #{[β − d_an + m]₊ > 0})`,
//! both kinds of non-zero terms counted (Wu et al.'s MXNet code, PML's `MarginLoss`,
//! the official code under 2019 PyTorch); 0 with a graph when no term is active.
//! β is fixed (`loss.margin_beta`, D&C 1.2; the official criterion is not in the
//! optimiser), and there is no β regularisation (ν = 0).
//!
//! **Against a cross-batch memory** (`dnc_sample_memory`) the candidates are the
//! memory's detached rows, and the sampler runs as a miner wrapped by PML's
//! `CrossBatchMemory` would: every memory row of the anchor's label is a positive, its
//! own copy included (counted in `num_neg`, masked as a positive), and the triplets whose
//! positive is that copy are removed after sampling. The loss is the same formula with
//! the anchors from the batch (`tests/xbm_parity.rs`, oracle `tools/make_xbm_fixtures.py`).
//!
//! **Bounds.** The sampler builds the `[B, B]` distance matrix and sorts each row on
//! the CPU (O(B² log B)); the loss itself is O(T·D) with T ≤ B·(B − 1). Meant for
//! D&C's global batches (a few hundred embeddings), not for thousands. Selection is
//! plain deterministic code on the gathered batch, hence the same on every rank.
use tch::{Kind, Tensor};

use super::chunk::{zero_loss, DEFAULT_BUDGET};
use super::stats::{count, StatsAcc};
use super::xbm::{MemoryView, Reference};
use super::{check_inputs, LossOutput, MetricLoss, Shard};
use crate::error::Result;
use crate::ops::normalize;

/// The 10⁻⁴ floor of the official `pdist` before the square root.
const PDIST_EPS: f64 = 1e-4;
/// The 10⁻⁸ inside the loss's square roots.
const SQRT_EPS: f64 = 1e-8;

/// Margin loss with D&C's cutoff sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct MarginLoss {
    /// Margin m.
    pub margin: f64,
    /// Fixed boundary β.
    pub beta: f64,
    /// Sampler cutoff: negatives closer than this are masked.
    pub cutoff: f64,
    /// Largest distance chunk against a cross-batch memory, in elements (see
    /// [`super::chunk`]).
    pub budget: i64,
}

/// The sampled triplets, as indices into the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Triplets {
    /// Anchor of each triplet (non-decreasing).
    pub anchors: Vec<i64>,
    /// Positive of each triplet.
    pub positives: Vec<i64>,
    /// Negative of each triplet.
    pub negatives: Vec<i64>,
}

/// Rows `start..start + len` of [`pdist`]`(x)`: `[len, B]`; the whole matrix op for op
/// when they are all rows (the squared norms otherwise come from a row-wise sum, which
/// can differ from the matrix diagonal in the last bit).
pub fn pdist_rows(x: &Tensor, start: i64, len: i64) -> Tensor {
    let b = x.size()[0];
    if start == 0 && len == b {
        return pdist(x);
    }
    let kind = x.kind();
    let rows = x.narrow(0, start, len);
    let prod = rows.mm(&x.tr());
    let sq = x.square().sum_dim_intlist([1i64].as_slice(), false, kind);
    let row_sq = sq.narrow(0, start, len).unsqueeze(1);
    ((row_sq + sq.unsqueeze(0)) - prod * 2.0)
        .clamp_min(0.0)
        .clamp_min(PDIST_EPS)
        .sqrt()
}

/// The official `pdist` of the rows of `x` `[B, D]`: `[B, B]`, op for op.
pub fn pdist(x: &Tensor) -> Tensor {
    let prod = x.mm(&x.tr());
    let norm = prod.diag(0).unsqueeze(1).expand_as(&prod);
    ((&norm + norm.tr()) - prod * 2.0)
        .clamp_min(0.0)
        .clamp_min(PDIST_EPS)
        .sqrt()
}

/// D&C's sampler on the normalised embeddings `xn` `[B, D]` (any graph is ignored)
/// with `labels` `[B]` i64.
///
/// ```
/// use dml::loss::margin::dnc_sample;
/// // Two classes of two on the unit circle; every negative is beyond the cutoff, and
/// // num_neg = 4 positives / 4 anchors = 1: each anchor's closest negative.
/// let x = tch::Tensor::from_slice(&[1.0f64, 0.0, 0.8, 0.6, 0.0, 1.0, -0.6, 0.8]).view([4, 2]);
/// let labels = tch::Tensor::from_slice(&[0i64, 0, 1, 1]);
/// let t = dnc_sample(&x, &labels, 0.5)?;
/// assert_eq!(t.anchors, vec![0, 1, 2, 3]);
/// assert_eq!(t.positives, vec![1, 0, 3, 2]);
/// assert_eq!(t.negatives, vec![2, 2, 1, 1]);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn dnc_sample(xn: &Tensor, labels: &Tensor, cutoff: f64) -> Result<Triplets> {
    dnc_sample_rows(xn, labels, cutoff, &Shard::whole(xn.size()[0]))
}

/// [`dnc_sample`] for the anchors of `shard` only (every row stays a candidate positive
/// and negative; `num_neg` is that of the whole batch).
pub fn dnc_sample_rows(
    xn: &Tensor,
    labels: &Tensor,
    cutoff: f64,
    shard: &Shard,
) -> Result<Triplets> {
    check_inputs(xn, labels)?;
    let b = xn.size()[0] as usize;
    shard.check(b as i64)?;
    let (first, own) = (shard.start as usize, shard.len as usize);
    let d = pdist_rows(&xn.detach(), shard.start, shard.len)
        .to_kind(Kind::Double)
        .to_device(tch::Device::Cpu)
        .view([-1]);
    let d = Vec::<f64>::try_from(&d)?;
    let labels = Vec::<i64>::try_from(&labels.to_device(tch::Device::Cpu))?;
    // Σᵢ #posᵢ over the whole batch: Σ_c n_c (n_c − 1).
    let mut per_class = std::collections::HashMap::<i64, usize>::new();
    for &y in &labels {
        *per_class.entry(y).or_insert(0) += 1;
    }
    let total: usize = per_class.values().map(|&n| n * (n - 1)).sum();
    let positives: Vec<Vec<usize>> = (first..first + own)
        .map(|i| {
            (0..b)
                .filter(|&j| j != i && labels[j] == labels[i])
                .collect()
        })
        .collect();
    let mut out = Triplets::default();
    if b == 0 {
        return Ok(out);
    }
    let num_neg = total / b;
    for (r, pos) in positives.iter().enumerate() {
        let i = first + r;
        let row = &d[r * b..(r + 1) * b];
        select(
            row,
            &labels,
            labels[i],
            Some(i),
            pos,
            num_neg,
            cutoff,
            i as i64,
            &mut out,
        );
    }
    Ok(out)
}

/// Anchor `anchor`'s triplets from one row of distances `row` to the candidates (labels
/// `cand_labels`), `pos` its positives among them in ascending order, `self_col` the
/// anchor's own column when the candidates are its batch: the `num_neg` candidates first
/// in (mask count, d, index) order are its negatives, zipped in index order with its
/// first positives.
#[allow(clippy::too_many_arguments)]
fn select(
    row: &[f64],
    cand_labels: &[i64],
    label: i64,
    self_col: Option<usize>,
    pos: &[usize],
    num_neg: usize,
    cutoff: f64,
    anchor: i64,
    out: &mut Triplets,
) {
    if num_neg == 0 || num_neg > row.len() {
        return;
    }
    let masks = |j: usize| {
        let near = u8::from(row[j] < cutoff);
        if Some(j) == self_col {
            near.max(1)
        } else {
            near + u8::from(cand_labels[j] == label)
        }
    };
    let mut order: Vec<usize> = (0..row.len()).collect();
    // The num_neg first in (mask count, d, index) order: a total order, so the
    // selection is unique; only its set matters (negatives go in index order).
    order.select_nth_unstable_by(num_neg - 1, |&x, &y| {
        masks(x)
            .cmp(&masks(y))
            .then(row[x].total_cmp(&row[y]))
            .then(x.cmp(&y))
    });
    let mut neg = order[..num_neg].to_vec();
    neg.sort_unstable();
    for k in 0..pos.len().min(num_neg) {
        out.anchors.push(anchor);
        out.positives.push(pos[k] as i64);
        out.negatives.push(neg[k] as i64);
    }
}

/// D&C's sampler for the shard's anchors (rows of the normalised batch `xn`, labels
/// `labels`) against a cross-batch memory, as PML's `CrossBatchMemory` runs a miner: the
/// memory's rows are the candidates, an anchor's own copy in it (slot `memory.own[i]`)
/// is one of its positives like any other row of its label (so `num_neg = ⌊Σᵢ #posᵢ /
/// B⌋` over all B anchors counts it, and it is masked as a positive), and the triplets
/// whose positive is that copy are removed after sampling (`remove_self_comparisons`).
/// Positives and negatives index the memory's rows. The distances are computed
/// `budget` elements at a time.
pub(crate) fn dnc_sample_memory(
    xn: &Tensor,
    labels: &Tensor,
    memory: &Reference,
    cutoff: f64,
    shard: &Shard,
    budget: i64,
) -> Result<Triplets> {
    check_inputs(xn, labels)?;
    let b = xn.size()[0];
    shard.check(b)?;
    let m = memory.rows.size()[0];
    let cpu = |t: &Tensor| Vec::<i64>::try_from(&t.to_device(tch::Device::Cpu));
    let (labels, mem_labels, own) = (cpu(labels)?, cpu(&memory.labels)?, cpu(&memory.own)?);
    let mut per_class = std::collections::HashMap::<i64, usize>::new();
    for &y in &mem_labels {
        *per_class.entry(y).or_insert(0) += 1;
    }
    let count = |y: &i64| per_class.get(y).copied().unwrap_or(0);
    let mut out = Triplets::default();
    if b == 0 || m == 0 {
        return Ok(out);
    }
    let num_neg = labels.iter().map(count).sum::<usize>() / b as usize;
    let (x, rows) = (xn.detach(), &memory.rows);
    let row_sq = |t: &Tensor| {
        t.square()
            .sum_dim_intlist([1i64].as_slice(), false, t.kind())
    };
    let mem_sq = row_sq(rows).unsqueeze(0);
    let step = super::distance::chunk_rows(shard.len, m, budget);
    let mut start = shard.start;
    while start < shard.start + shard.len {
        let len = step.min(shard.start + shard.len - start);
        let a = x.narrow(0, start, len);
        let d = ((row_sq(&a).unsqueeze(1) + &mem_sq) - a.mm(&rows.tr()) * 2.0)
            .clamp_min(0.0)
            .clamp_min(PDIST_EPS)
            .sqrt()
            .to_kind(Kind::Double)
            .to_device(tch::Device::Cpu)
            .view([-1]);
        let d = Vec::<f64>::try_from(&d)?;
        for r in 0..len as usize {
            let i = start as usize + r;
            let row = &d[r * m as usize..(r + 1) * m as usize];
            let pos: Vec<usize> = (0..m as usize)
                .filter(|&j| mem_labels[j] == labels[i])
                .collect();
            let from = out.anchors.len();
            select(
                row,
                &mem_labels,
                labels[i],
                None,
                &pos,
                num_neg,
                cutoff,
                i as i64,
                &mut out,
            );
            // remove_self_comparisons: the triplets whose positive is the anchor's copy.
            let mut k = from;
            while k < out.anchors.len() {
                if out.positives[k] == own[i] {
                    out.anchors.remove(k);
                    out.positives.remove(k);
                    out.negatives.remove(k);
                } else {
                    k += 1;
                }
            }
        }
        start += len;
    }
    Ok(out)
}

impl MarginLoss {
    /// The margin loss with margin m, boundary β and sampler cutoff.
    ///
    /// ```
    /// use dml::loss::{MarginLoss, MetricLoss};
    /// let loss = MarginLoss::new(0.2, 1.2, 0.5);
    /// let emb = tch::Tensor::from_slice(&[1.0f64, 0.0, 0.8, 0.6, 0.0, 1.0, -0.6, 0.8]).view([4, 2]);
    /// let labels = tch::Tensor::from_slice(&[0i64, 0, 1, 1]);
    /// let out = loss.compute(&emb.set_requires_grad(true), &labels)?;
    /// out.loss.backward();
    /// assert_eq!(out.stats.mined, 4);
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn new(margin: f64, beta: f64, cutoff: f64) -> Self {
        MarginLoss {
            margin,
            beta,
            cutoff,
            budget: DEFAULT_BUDGET,
        }
    }

    /// The same loss with another chunk budget for its memory distances (elements).
    pub fn with_budget(mut self, budget: i64) -> Self {
        self.budget = budget.max(1);
        self
    }
}

impl MarginLoss {
    /// The loss over triplets `t` whose anchors are rows of the normalised batch `xn`
    /// (the graph to `emb`) and whose positives and negatives are rows of `candidates`
    /// (`xn` itself, or a memory's detached rows), divided by the active terms of all
    /// shares of `shard`.
    fn triplet_terms(
        &self,
        emb: &Tensor,
        xn: &Tensor,
        candidates: &Tensor,
        t: &Triplets,
        shard: &Shard,
    ) -> Result<LossOutput> {
        let b = emb.size()[0];
        let dev = emb.device();
        let idx = |v: &[i64]| Tensor::from_slice(v).to_device(dev);
        let (ai, pi, ni) = (idx(&t.anchors), idx(&t.positives), idx(&t.negatives));
        let a = xn.index_select(0, &ai);
        let p = candidates.index_select(0, &pi);
        let ng = candidates.index_select(0, &ni);
        let kind = emb.kind();
        let sq_ap = (&p - &a)
            .square()
            .sum_dim_intlist([1i64].as_slice(), false, kind);
        let sq_an = (&ng - &a)
            .square()
            .sum_dim_intlist([1i64].as_slice(), false, kind);
        let d_ap = (&sq_ap + SQRT_EPS).sqrt();
        let d_an = (&sq_an + SQRT_EPS).sqrt();
        let pos_loss = ((&d_ap - self.beta) + self.margin).relu();
        let neg_loss = ((d_an.neg() + self.beta) + self.margin).relu();
        let (pos_on, neg_on) = (pos_loss.gt(0.0), neg_loss.gt(0.0));
        // Anchors with a non-zero term.
        let on = pos_on.logical_or(&neg_on).to_kind(Kind::Int64);
        let per_anchor = Tensor::zeros([b], (Kind::Int64, dev)).index_add(0, &ai, &on);
        let triplets = Tensor::ones([t.anchors.len() as i64], (Kind::Int64, dev));
        let sim = |sq: &Tensor| (sq.detach() * -0.5) + 1.0;
        let mut acc = StatsAcc {
            active: count(&pos_on) + count(&neg_on),
            mined: t.anchors.len() as i64,
            contributing: count(&per_anchor.gt(0)),
            ..StatsAcc::default()
        };
        acc.add_pos(&sim(&sq_ap), &triplets);
        acc.add_neg(&sim(&sq_an), &triplets);
        // Divided by the active pairs of the whole batch.
        acc.sum_with(shard, &[])?;
        let loss = if acc.active > 0 {
            (pos_loss + neg_loss).sum(kind) / acc.active as f64
        } else {
            zero_loss(emb)
        };
        Ok(LossOutput {
            loss,
            stats: acc.finish(b),
        })
    }
}

impl MetricLoss for MarginLoss {
    fn compute_shard(&self, emb: &Tensor, labels: &Tensor, shard: &Shard) -> Result<LossOutput> {
        check_inputs(emb, labels)?;
        let xn = normalize(emb);
        let t = dnc_sample_rows(&xn, labels, self.cutoff, shard)?;
        self.triplet_terms(emb, &xn, &xn, &t, shard)
    }

    /// The shard's anchors sampled against the memory by `dnc_sample_memory` (PML's
    /// `CrossBatchMemory` wrapping `MarginLoss` and this sampler as its miner), the
    /// memory's rows detached, divided by the active terms of the whole batch.
    fn compute_memory_shard(
        &self,
        emb: &Tensor,
        labels: &Tensor,
        memory: &MemoryView,
        shard: &Shard,
    ) -> Result<LossOutput> {
        check_inputs(emb, labels)?;
        let reference = Reference::new(memory, emb)?;
        let xn = normalize(emb);
        let t = dnc_sample_memory(&xn, labels, &reference, self.cutoff, shard, self.budget)?;
        self.triplet_terms(emb, &xn, &reference.rows, &t, shard)
    }

    fn name(&self) -> String {
        format!(
            "margin(dnc_cutoff, margin={}, beta={}, cutoff={})",
            self.margin, self.beta, self.cutoff
        )
    }
}
