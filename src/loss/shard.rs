//! This process's share of the objective over the global batch (DESIGN.md, "Sharded
//! objective").
//!
//! Every term of the objective is a sum over anchors (rows of the global batch), so the
//! process of rank r computes only the terms whose anchor is one of its own rows, against
//! **all** rows: `L = Σ_r L_r(E)`. What a term divides by (the number of non-zero
//! triplets, of active margin pairs, a Frobenius norm's sum of squares) is summed over
//! the shares first, through [`Shard::sum`], so that every share divides by the global
//! count. Back-propagating `L_r` gives a partial `dL_r/dE` over all rows; the trainer sums
//! the partials across ranks.
//!
//! The loss code knows nothing of ranks: the trainer hands it a `Shard` whose `sum`
//! is an all-reduce, and [`Shard::whole`] is the one-process case (every row, no
//! communication), in which every loss runs exactly as it did unsharded.
use crate::error::Result;

/// Sums a few f64s over all shares, in place (identity for one share).
pub type SumFn<'a> = &'a dyn Fn(&mut [f64]) -> Result<()>;

fn sum_of_one(_: &mut [f64]) -> Result<()> {
    Ok(())
}

/// The anchors of the global batch whose terms this share computes, and how the shares'
/// partial sums meet.
///
/// ```
/// let s = dml::loss::Shard::whole(8);
/// assert!(s.covers(8));
/// let mut v = [1.0, 2.0];
/// s.sum(&mut v)?;
/// assert_eq!(v, [1.0, 2.0]);
/// # Ok::<(), dml::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct Shard<'a> {
    /// First own row of the global batch.
    pub start: i64,
    /// Number of own rows.
    pub len: i64,
    /// True on exactly one share: the one that computes the terms that are not sharded
    /// (Group Loss), whose gradient then reaches the others through the sum of partials.
    pub lead: bool,
    sum: SumFn<'a>,
}

impl std::fmt::Debug for Shard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Shard(rows {}..{}{})",
            self.start,
            self.start + self.len,
            if self.lead { ", lead" } else { "" }
        )
    }
}

impl<'a> Shard<'a> {
    /// Rows `start..start + len`; `sum` adds a slice of f64s over all shares in place
    /// (every share calls it the same number of times, in the same order).
    pub fn new(start: i64, len: i64, lead: bool, sum: SumFn<'a>) -> Self {
        Shard {
            start,
            len,
            lead,
            sum,
        }
    }

    /// All `b` rows in one share: no communication.
    pub fn whole(b: i64) -> Shard<'static> {
        Shard {
            start: 0,
            len: b,
            lead: true,
            sum: &sum_of_one,
        }
    }

    /// True if this share is the whole batch of `b` rows (the unsharded computation).
    pub fn covers(&self, b: i64) -> bool {
        self.start == 0 && self.len == b
    }

    /// Sums `values` over all shares, in place.
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        (self.sum)(values)
    }

    /// Checks that the rows lie within a batch of `b` rows.
    pub fn check(&self, b: i64) -> Result<()> {
        if self.start < 0 || self.len < 0 || self.start + self.len > b {
            return Err(crate::error::Error::Input(format!(
                "loss: the share of rows {}..{} does not lie within the global batch of {b} rows",
                self.start,
                self.start + self.len
            )));
        }
        Ok(())
    }
}
