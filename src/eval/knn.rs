//! Exact k-nearest-neighbour search by blocked matrix products and `topk`.
//!
//! Similarity is the inner product of L2-normalised embeddings (cosine, the default)
//! or, with `euclidean`, the negative squared Euclidean distance. Rows are processed in
//! blocks so that only a few `rows × cols` blocks of similarities exist at once (never
//! `N × N`). Ties are broken deterministically: among equal similarities the
//! reference with the **smaller index** comes first, both inside the list and at its
//! boundary (which of several tied references make it into the top k). This is
//! the order faiss's `IndexFlatL2` search produces as well.
//!
//! With `same_source` the query set *is* the reference set and each query's own row
//! is excluded by index (not by distance), so duplicates of a query stay candidates.
//! On the CPU the similarity matrix is then computed by blocks of its upper triangle only
//! (it is symmetric): half the multiply-adds of a query × reference search.
//!
//! Each row's candidates are kept as the best `k + 1`. Their values are exact whatever
//! order `topk` breaks ties in; when the `k`-th and `(k + 1)`-th are equal (a tie at the
//! boundary) the row is recomputed in full and every reference at least as similar as
//! the `k`-th is considered, so the smallest indices win.
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

mod scan;

/// At most this many similarities (f32) are materialised per block: 256 MiB.
pub const BLOCK_ELEMENTS: usize = 1 << 26;

/// The k nearest references of every query, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Knn {
    /// Neighbours per query.
    pub k: usize,
    /// Reference indices, row-major `n_query × k`.
    pub indices: Vec<i64>,
    /// Similarities (cosine) or squared distances (Euclidean), row-major `n_query × k`.
    pub scores: Vec<f32>,
}

/// How to search.
#[derive(Debug, Clone, Copy)]
pub struct KnnOptions {
    /// Squared Euclidean distance on the raw embeddings instead of cosine similarity.
    pub euclidean: bool,
    /// The most query rows per block (further limited by [`BLOCK_ELEMENTS`]).
    pub chunk: usize,
    /// Where the products and `topk` run.
    pub device: Device,
}

/// The number of query rows per block for `n_ref` references.
pub fn block_rows(chunk: usize, n_ref: usize) -> usize {
    chunk.max(1).min((BLOCK_ELEMENTS / n_ref.max(1)).max(1))
}

/// The references as the search sees them: on the device, f32, normalised for cosine,
/// with their squared norms for Euclidean ranking (`2 q·r − |r|²`, i.e. `−|q − r|² + |q|²`).
pub(crate) struct Prepared {
    /// `[m, d]` rows.
    pub x: Tensor,
    /// `[m]` squared norms (Euclidean only).
    pub sq: Option<Tensor>,
}

impl Prepared {
    fn new(x: &Tensor, opts: &KnnOptions) -> Result<Prepared> {
        let x = x.f_to_device(opts.device)?.f_to_kind(Kind::Float)?;
        if opts.euclidean {
            let sq = x
                .f_square()?
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
            Ok(Prepared { x, sq: Some(sq) })
        } else {
            Ok(Prepared {
                x: crate::ops::try_normalize(&x)?,
                sq: None,
            })
        }
    }

    /// Ranking scores of query row `q` `[1, d]` against every reference: `[m]`.
    fn row_scores(&self, q: &Tensor) -> Result<Tensor> {
        let s = self.x.f_mv(&q.f_view(-1)?)?;
        Ok(match &self.sq {
            Some(sq) => s.f_mul_scalar(2.0)?.f_sub(sq)?,
            None => s,
        })
    }
}

/// Exact kNN of `query` (n × d) among `reference` (m × d); `k` is capped at the
/// number of candidates (m, or m − 1 with `same_source`).
///
/// ```
/// use tch::{Device, Tensor};
/// use dml::eval::knn::{knn, KnnOptions};
/// let r = Tensor::from_slice(&[1f32, 0., 0., 1., 1., 1.]).view([3, 2]);
/// let opts = KnnOptions { euclidean: false, chunk: 4096, device: Device::Cpu };
/// let nn = knn(&r, &r, 1, true, &opts)?;
/// assert_eq!(nn.indices, vec![2, 2, 0]); // [1,1] ties between rows 0 and 1: smaller index
/// # Ok::<(), dml::Error>(())
/// ```
pub fn knn(
    query: &Tensor,
    reference: &Tensor,
    k: usize,
    same_source: bool,
    opts: &KnnOptions,
) -> Result<Knn> {
    let (n, m) = (query.size()[0] as usize, reference.size()[0] as usize);
    if same_source && n != m {
        return Err(Error::Input(format!(
            "same-source kNN needs as many queries as references ({n} vs {m})"
        )));
    }
    let candidates = m - usize::from(same_source && m > 0);
    let k = k.min(candidates);
    if k == 0 || n == 0 {
        return Ok(Knn {
            k,
            indices: Vec::new(),
            scores: Vec::new(),
        });
    }
    let r = Prepared::new(reference, opts)?;
    let q_prep = match same_source {
        true => None,
        false => Some(Prepared::new(query, opts)?),
    };
    let (q, q_sq) = match &q_prep {
        Some(p) => (&p.x, &p.sq),
        None => (&r.x, &r.sq),
    };
    let k_top = (k + 1).min(m);
    let lists = if opts.device == Device::Cpu {
        scan::top_candidates(q, &r, k_top, same_source, scan_block(opts.chunk))?
    } else {
        device_top_candidates(q, &r, k_top, same_source, block_rows(opts.chunk, m))?
    };
    let mut indices = Vec::with_capacity(n * k);
    let mut scores = Vec::with_capacity(n * k);
    for (i, top) in lists.into_iter().enumerate() {
        let full_row = || -> Result<Tensor> {
            let s = r.row_scores(&q.f_narrow(0, i as i64, 1)?)?;
            if same_source {
                let _ = s.f_narrow(0, i as i64, 1)?.f_fill_(f64::NEG_INFINITY)?;
            }
            Ok(s)
        };
        let own = same_source.then_some(i as i64);
        for (v, j) in best_k(top, k, own, full_row)? {
            indices.push(j);
            scores.push(v);
        }
    }
    if let Some(q_sq) = q_sq {
        // Back from the ranking score 2 q·r − |r|² to |q − r|².
        let q_sq = Vec::<f32>::try_from(q_sq.f_to_device(Device::Cpu)?)?;
        for (i, row) in scores.chunks_mut(k).enumerate() {
            for s in row {
                *s = (q_sq[i] - *s).max(0.0);
            }
        }
    }
    Ok(Knn { k, indices, scores })
}

/// The block side of the CPU scan: `chunk` rows, at most 4,096 (64 MiB blocks).
fn scan_block(chunk: usize) -> usize {
    chunk.clamp(1, 4096)
}

/// The best `k_top` (score, index) candidates of every query row, unordered, by one
/// product of each block of query rows with all references and `topk` on the device.
fn device_top_candidates(
    q: &Tensor,
    r: &Prepared,
    k_top: usize,
    same_source: bool,
    rows: usize,
) -> Result<Vec<Vec<(f32, i64)>>> {
    let n = q.size()[0] as usize;
    let rt = r.x.f_transpose(0, 1)?.f_contiguous()?;
    let mut lists = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let mut sim = q.f_narrow(0, start as i64, len as i64)?.f_mm(&rt)?;
        if let Some(sq) = &r.sq {
            sim = sim.f_mul_scalar(2.0)?.f_sub(&sq.f_unsqueeze(0)?)?;
        }
        if same_source {
            let _ = sim
                .f_diagonal(start as i64, 0, 1)?
                .f_fill_(f64::NEG_INFINITY)?;
        }
        let (v, i) = sim.f_topk(k_top as i64, 1, true, false)?;
        let v = Vec::<f32>::try_from(v.f_to_device(Device::Cpu)?.f_contiguous()?.f_view(-1)?)?;
        let i = Vec::<i64>::try_from(i.f_to_device(Device::Cpu)?.f_contiguous()?.f_view(-1)?)?;
        for row in 0..len {
            let span = row * k_top..(row + 1) * k_top;
            lists.push(
                v[span.clone()]
                    .iter()
                    .copied()
                    .zip(i[span].iter().copied())
                    .collect(),
            );
        }
        start += len;
    }
    Ok(lists)
}

/// The `k` best of a row's `k + 1` best candidates, ordered by score then index.
/// On a tie at the boundary (or with fewer than `k` candidates, which only −∞ scores
/// cause), `full_row` gives the row's scores against every reference and the tied
/// references are resolved by index; `own` (the query itself) is never a candidate.
fn best_k(
    mut top: Vec<(f32, i64)>,
    k: usize,
    own: Option<i64>,
    full_row: impl FnOnce() -> Result<Tensor>,
) -> Result<Vec<(f32, i64)>> {
    let order = |a: &(f32, i64), b: &(f32, i64)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    top.sort_by(order);
    if top.len() < k || (top.len() > k && top[k].0 == top[k - 1].0) {
        top = at_least_kth(&full_row()?, k)?;
        top.retain(|&(_, j)| Some(j) != own);
        top.sort_by(order);
    }
    top.truncate(k);
    Ok(top)
}

/// Every (score, index) of `row` whose score is at least the row's `k`-th best.
fn at_least_kth(row: &Tensor, k: usize) -> Result<Vec<(f32, i64)>> {
    let (kth, _) = row.f_topk(k as i64, 0, true, true)?;
    let threshold = kth.f_double_value(&[k as i64 - 1])?;
    let idx = row.f_ge(threshold)?.f_nonzero()?.f_view(-1)?;
    let vals = row.f_index_select(0, &idx)?;
    let vals = Vec::<f32>::try_from(vals.f_to_device(Device::Cpu)?)?;
    let idx = Vec::<i64>::try_from(idx.f_to_device(Device::Cpu)?)?;
    Ok(vals.into_iter().zip(idx).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force on integer points, where f32 arithmetic is exact and ties are many:
    /// every other row sorted by squared distance, then index.
    fn brute(points: &[[f32; 3]], k: usize) -> Vec<i64> {
        let mut out = Vec::new();
        for (i, p) in points.iter().enumerate() {
            let mut d: Vec<(f32, i64)> = points
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, q)| {
                    let s: f32 = p.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum();
                    (s, j as i64)
                })
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            out.extend(d[..k].iter().map(|p| p.1));
        }
        out
    }

    #[test]
    fn same_source_blocks_equal_brute_force_with_ties_for_every_block_size() {
        // 37 points on a 3×3×3 grid with repeats: many exact ties and duplicates.
        let points: Vec<[f32; 3]> = (0..37)
            .map(|i| [(i % 3) as f32, ((i / 3) % 3) as f32, ((i * 7) % 3) as f32])
            .collect();
        let flat: Vec<f32> = points.iter().flatten().copied().collect();
        let x = Tensor::from_slice(&flat).view([37, 3]);
        for k in [1, 5, 12, 36] {
            let want = brute(&points, k);
            for chunk in [1, 4, 7, 36, 64] {
                let opts = KnnOptions {
                    euclidean: true,
                    chunk,
                    device: Device::Cpu,
                };
                let nn = knn(&x, &x, k, true, &opts).unwrap();
                assert_eq!(nn.indices, want, "k {k} chunk {chunk}");
                // The query/reference path on the same rows agrees once each row's own
                // index is dropped (or, when k + 1 duplicates with smaller indices push
                // it out, the last entry).
                let rect = knn(&x, &x, k + 1, false, &opts).unwrap();
                let mut from_rect = Vec::new();
                for (i, row) in rect.indices.chunks(k + 1).enumerate() {
                    let mut row = row.to_vec();
                    match row.iter().position(|&j| j == i as i64) {
                        Some(p) => row.remove(p),
                        None => row.remove(k),
                    };
                    from_rect.extend(row);
                }
                assert_eq!(from_rect, want, "rectangular, k {k} chunk {chunk}");
            }
        }
    }
}
