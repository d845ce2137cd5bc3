//! Distances between L2-normalised embeddings, computed with the same libtorch
//! operations as PML (`LpDistance` → `torch.cdist`, `CosineSimilarity` → `matmul`),
//! so that values and gradients agree to the last bits where possible.
use tch::Tensor;

use crate::config::{LossDistance, LossName};

/// The distance a loss works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    /// Euclidean distance of L2-normalised embeddings (PML `LpDistance()`, the default).
    Euclidean,
    /// Cosine similarity (PML `CosineSimilarity()`), an inverted distance.
    Cosine,
}

impl Distance {
    /// Resolves `loss.distance` for `loss.name` (`auto`: Euclidean for triplet and
    /// Group Loss, cosine for Multi-Similarity).
    pub fn resolve(d: LossDistance, loss: LossName) -> Self {
        match (d, loss) {
            (LossDistance::Euclidean, _) => Distance::Euclidean,
            (LossDistance::Cosine, _) => Distance::Cosine,
            (LossDistance::Auto, LossName::MultiSimilarity) => Distance::Cosine,
            (LossDistance::Auto, _) => Distance::Euclidean,
        }
    }

    /// The "badness" matrix of `rows` `[R, D]` against `all` `[B, D]` (both already
    /// normalised): larger is farther. Euclidean: the distance itself (`cdist`);
    /// cosine: the negated similarity, so that one code path mines both.
    pub fn badness(self, rows: &Tensor, all: &Tensor) -> Tensor {
        match self {
            Distance::Euclidean => Tensor::cdist(rows, all, 2.0, None::<i64>),
            Distance::Cosine => -rows.matmul(&all.tr()),
        }
    }

    /// Cosine similarity from badness values of normalised embeddings
    /// (Euclidean: `1 − d²/2`; cosine: `−badness`).
    pub fn similarity(self, badness: &Tensor) -> Tensor {
        match self {
            Distance::Euclidean => 1.0 - badness * badness * 0.5,
            Distance::Cosine => -badness,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Distance::Euclidean => "euclidean",
            Distance::Cosine => "cosine",
        }
    }
}

/// Label masks of rows `start..start+len` against the whole batch: `(positive, negative)`
/// `[len, B]` booleans; a sample is not its own positive (PML's `get_matches_and_diffs`),
/// a duplicate row at another index is.
pub fn label_masks(labels: &Tensor, start: i64, len: i64) -> (Tensor, Tensor) {
    let b = labels.size()[0];
    let rows = labels.narrow(0, start, len).unsqueeze(1);
    let same = rows.eq_tensor(&labels.unsqueeze(0));
    let opts = (tch::Kind::Int64, labels.device());
    let row_idx = Tensor::arange_start(start, start + len, opts).unsqueeze(1);
    let col_idx = Tensor::arange(b, opts).unsqueeze(0);
    let not_self = row_idx.ne_tensor(&col_idx);
    let neg = same.logical_not();
    (same.logical_and(&not_self), neg)
}

/// Label masks of the batch's rows `start..start+len` against a cross-batch memory's
/// labels `mem_labels` `[M]`: `(positive, negative, own)` `[len, M]` booleans, where
/// `positive` **includes** each row's own copy in the memory (slot `own[row]`, PML mines
/// with it and removes it afterwards) and `own` marks that copy.
pub fn memory_masks(
    labels: &Tensor,
    start: i64,
    len: i64,
    mem_labels: &Tensor,
    own: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let m = mem_labels.size()[0];
    let rows = labels.narrow(0, start, len).unsqueeze(1);
    let same = rows.eq_tensor(&mem_labels.unsqueeze(0));
    let slots = Tensor::arange(m, (tch::Kind::Int64, labels.device())).unsqueeze(0);
    let own_mask = slots.eq_tensor(&own.narrow(0, start, len).unsqueeze(1));
    let neg = same.logical_not();
    (same, neg, own_mask)
}

/// Rows per chunk so that a chunk holds at most `budget` elements of `per_row` each
/// (at least 1, at most `b`).
pub fn chunk_rows(b: i64, per_row: i64, budget: i64) -> i64 {
    (budget / per_row.max(1)).clamp(1, b.max(1))
}
