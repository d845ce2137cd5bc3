//! Exact k-nearest-neighbour search by chunked matrix products and `topk`.
//!
//! Similarity is the inner product of L2-normalised embeddings (cosine, the default)
//! or, with `euclidean`, the negative squared Euclidean distance. Query rows are
//! processed in blocks so that at most `rows × N_ref` similarities exist at once
//! (never `N × N`). Ties are broken deterministically: among equal similarities the
//! reference with the **smaller index** comes first, both inside the list and at its
//! boundary (which of several tied references make it into the top k). This is
//! the order faiss's `IndexFlat` search produces as well.
//!
//! With `same_source` the query set *is* the reference set and each query's own row
//! is excluded by index (not by distance), so duplicates of a query stay candidates.
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

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

/// Rows of unit L2 norm (zero rows stay zero), as `F.normalize(x, dim=1)`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?;
    Ok(x.f_div(&norm.f_clamp_min(1e-12)?)?)
}

/// The number of query rows per block for `n_ref` references.
pub fn block_rows(chunk: usize, n_ref: usize) -> usize {
    chunk.max(1).min((BLOCK_ELEMENTS / n_ref.max(1)).max(1))
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
    let dev = opts.device;
    let prep = |x: &Tensor| -> Result<Tensor> {
        let x = x.f_to_device(dev)?.f_to_kind(Kind::Float)?;
        if opts.euclidean {
            Ok(x)
        } else {
            l2_normalize(&x)
        }
    };
    let r = prep(reference)?;
    let q = if same_source {
        r.shallow_clone()
    } else {
        prep(query)?
    };
    let rt = r.f_transpose(0, 1)?.f_contiguous()?;
    // Euclidean: rank by 2 q·r − |r|², i.e. −|q − r|² + |q|².
    let r_sq = if opts.euclidean {
        Some(
            r.f_square()?
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?,
        )
    } else {
        None
    };
    let k_top = (k + 1).min(m);
    let rows = block_rows(opts.chunk, m);
    let mut indices = Vec::with_capacity(n * k);
    let mut scores = Vec::with_capacity(n * k);
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let qb = q.f_narrow(0, start as i64, len as i64)?;
        let mut sim = qb.f_mm(&rt)?;
        if let Some(r_sq) = &r_sq {
            sim = sim.f_mul_scalar(2.0)?.f_sub(&r_sq.f_unsqueeze(0)?)?;
        }
        if same_source {
            let _ = sim
                .f_diagonal(start as i64, 0, 1)?
                .f_fill_(f64::NEG_INFINITY)?;
        }
        let (vals, idx) = sim.f_topk(k_top as i64, 1, true, false)?;
        let vals: Vec<f32> =
            Vec::<f32>::try_from(vals.f_to_device(Device::Cpu)?.f_contiguous()?.f_view(-1)?)?;
        let idx: Vec<i64> =
            Vec::<i64>::try_from(idx.f_to_device(Device::Cpu)?.f_contiguous()?.f_view(-1)?)?;
        for i in 0..len {
            // topk runs unsorted (faster); the k + 1 best are ordered here.
            let mut top: Vec<(f32, i64)> = vals[i * k_top..(i + 1) * k_top]
                .iter()
                .copied()
                .zip(idx[i * k_top..(i + 1) * k_top].iter().copied())
                .collect();
            top.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut pairs: Vec<(f32, i64)> = if k_top > k && top[k].0 == top[k - 1].0 {
                // A tie at the boundary: take every reference at least as similar as the
                // k-th and keep the smallest indices among the tied ones.
                boundary_candidates(&sim, i, top[k - 1].0)?
            } else {
                top.truncate(k);
                top
            };
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(v, j) in &pairs[..k] {
                indices.push(j);
                scores.push(v);
            }
        }
        start += len;
    }
    if let Some(q_sq) = opts.euclidean.then(|| squared_norms(&q)).transpose()? {
        for (i, row) in scores.chunks_mut(k).enumerate() {
            for s in row {
                *s = (q_sq[i] - *s).max(0.0);
            }
        }
    }
    Ok(Knn { k, indices, scores })
}

fn squared_norms(x: &Tensor) -> Result<Vec<f32>> {
    let s = x
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
        .f_to_device(Device::Cpu)?;
    Ok(Vec::<f32>::try_from(s)?)
}

/// All (similarity, index) pairs of block row `i` with similarity ≥ `threshold`.
fn boundary_candidates(sim: &Tensor, i: usize, threshold: f32) -> Result<Vec<(f32, i64)>> {
    let row = sim.f_get(i as i64)?;
    let idx = row.f_ge(threshold as f64)?.f_nonzero()?.f_view(-1)?;
    let vals = row.f_index_select(0, &idx)?;
    let vals = Vec::<f32>::try_from(vals.f_to_device(Device::Cpu)?)?;
    let idx = Vec::<i64>::try_from(idx.f_to_device(Device::Cpu)?)?;
    Ok(vals.into_iter().zip(idx).collect())
}
