//! CPU candidate search: blocked matrix products scanned into per-row heaps.
//!
//! Each block of scores is copied out of libtorch once and scanned in Rust: an entry
//! enters a row's list only if it beats the row's current `k_top`-th best (its
//! threshold), so after the first block almost every entry costs one comparison,
//! where `topk` would select over the whole block again (faiss's flat search works
//! the same way).
//!
//! With `same_source` the score matrix is symmetric up to the Euclidean offset
//! (`S_ij = 2 x_i·x_j − |x_j|²`), so for every pair of row blocks `(I, J)` with `J ≥ I`
//! one product `G = X_I X_Jᵀ` feeds the lists of `I`'s rows (along the rows of `G`)
//! and of `J`'s rows (along its columns): `n² d / 2` multiply-adds instead of `n² d`.
//! Each row's own entry is excluded by index.
//!
//! Peak memory: one `b × b'` block in libtorch and its copy, and the lists,
//! `n · k_top` (score, index) pairs.
use tch::{Kind, Tensor};

use super::Prepared;
use crate::error::Result;

/// The best `k_top` candidates of each of `n` rows, as unordered min-heaps.
struct Lists {
    k_top: usize,
    vals: Vec<f32>,
    idx: Vec<i64>,
    len: Vec<usize>,
    /// The heap minimum once full, −∞ before: entries must beat it to enter.
    threshold: Vec<f32>,
}

impl Lists {
    fn new(n: usize, k_top: usize) -> Lists {
        Lists {
            k_top,
            vals: vec![f32::NEG_INFINITY; n * k_top],
            idx: vec![-1; n * k_top],
            len: vec![0; n],
            threshold: vec![f32::NEG_INFINITY; n],
        }
    }

    /// The lists of rows `[a0, a0 + a_len)` and `[b0, b0 + b_len)`, which must not
    /// overlap and come in that order, to be filled by two threads.
    fn two_ranges(&mut self, a0: usize, a_len: usize, b0: usize, b_len: usize) -> [Rows<'_>; 2] {
        let k = self.k_top;
        let (vals_a, vals_b) = self.vals[a0 * k..(b0 + b_len) * k].split_at_mut((b0 - a0) * k);
        let (idx_a, idx_b) = self.idx[a0 * k..(b0 + b_len) * k].split_at_mut((b0 - a0) * k);
        let (len_a, len_b) = self.len[a0..b0 + b_len].split_at_mut(b0 - a0);
        let (th_a, th_b) = self.threshold[a0..b0 + b_len].split_at_mut(b0 - a0);
        [
            Rows {
                k,
                vals: &mut vals_a[..a_len * k],
                idx: &mut idx_a[..a_len * k],
                len: &mut len_a[..a_len],
                threshold: &mut th_a[..a_len],
            },
            Rows {
                k,
                vals: vals_b,
                idx: idx_b,
                len: len_b,
                threshold: th_b,
            },
        ]
    }

    /// Row `i`'s candidates, unordered.
    fn row(&self, i: usize) -> Vec<(f32, i64)> {
        let k = self.k_top;
        let n = self.len[i];
        (0..n)
            .map(|c| (self.vals[i * k + c], self.idx[i * k + c]))
            .collect()
    }
}

/// A run of consecutive rows' lists, indexed from 0.
struct Rows<'a> {
    k: usize,
    vals: &'a mut [f32],
    idx: &'a mut [i64],
    len: &'a mut [usize],
    threshold: &'a mut [f32],
}

impl Rows<'_> {
    /// Offers `(v, j)` to row `row` (call only when `v > threshold[row]`).
    fn offer(&mut self, row: usize, v: f32, j: i64) {
        let k = self.k;
        let vals = &mut self.vals[row * k..(row + 1) * k];
        let idx = &mut self.idx[row * k..(row + 1) * k];
        let len = &mut self.len[row];
        if *len < k {
            // Sift up.
            let mut c = *len;
            *len += 1;
            while c > 0 {
                let p = (c - 1) / 2;
                if vals[p] <= v {
                    break;
                }
                vals[c] = vals[p];
                idx[c] = idx[p];
                c = p;
            }
            vals[c] = v;
            idx[c] = j;
            if *len == k {
                self.threshold[row] = vals[0];
            }
            return;
        }
        // Replace the minimum and sift down.
        let mut c = 0;
        loop {
            let l = 2 * c + 1;
            if l >= k {
                break;
            }
            let m = if l + 1 < k && vals[l + 1] < vals[l] {
                l + 1
            } else {
                l
            };
            if vals[m] >= v {
                break;
            }
            vals[c] = vals[m];
            idx[c] = idx[m];
            c = m;
        }
        vals[c] = v;
        idx[c] = j;
        self.threshold[row] = vals[0];
    }
}

/// The best `k_top` (score, reference index) candidates of every query row, unordered.
/// `q` is `[n, d]` on the CPU; with `same_source` it is `r.x` itself and only the
/// upper triangle of blocks is computed. `b` is the block side in rows.
pub(crate) fn top_candidates(
    q: &Tensor,
    r: &Prepared,
    k_top: usize,
    same_source: bool,
    b: usize,
) -> Result<Vec<Vec<(f32, i64)>>> {
    let n = q.size()[0] as usize;
    let m = r.x.size()[0] as usize;
    let sq: Option<Vec<f32>> = match &r.sq {
        Some(t) => Some(Vec::<f32>::try_from(t)?),
        None => None,
    };
    let mut rows = Lists::new(n, k_top);
    let mut buf: Vec<f32> = Vec::new();
    // Products are written into reused outputs: a fresh 64 MiB tensor per block costs
    // page faults comparable to the scan.
    let mut outputs: Vec<((usize, usize), Tensor)> = Vec::new();
    let b = b.max(1);
    let mut i0 = 0;
    while i0 < n {
        let bi = b.min(n - i0);
        let qi = q.f_narrow(0, i0 as i64, bi as i64)?;
        let mut j0 = if same_source { i0 } else { 0 };
        while j0 < m {
            let bj = b.min(m - j0);
            let out = match outputs.iter().position(|(shape, _)| *shape == (bi, bj)) {
                Some(p) => &outputs[p].1,
                None => {
                    let t = Tensor::f_empty([bi as i64, bj as i64], (Kind::Float, q.device()))?;
                    outputs.push(((bi, bj), t));
                    &outputs[outputs.len() - 1].1
                }
            };
            let rt = r.x.f_narrow(0, j0 as i64, bj as i64)?.f_transpose(0, 1)?;
            let g = qi.f_mm_out(out, &rt)?;
            buf.resize(bi * bj, 0.0);
            g.f_copy_data(&mut buf, bi * bj)?;
            let block = Block {
                g: &buf,
                i0,
                bi,
                j0,
                bj,
            };
            block.scan(&mut rows, sq.as_deref(), same_source);
            j0 += bj;
        }
        i0 += bi;
    }
    Ok((0..n).map(|i| rows.row(i)).collect())
}

/// One block of inner products `G[a, c] = q_{i0+a} · x_{j0+c}`.
struct Block<'a> {
    g: &'a [f32],
    i0: usize,
    bi: usize,
    j0: usize,
    bj: usize,
}

impl Block<'_> {
    /// Offers every entry to its query row and, for an off-diagonal block of a
    /// same-source search, to the row of its column as well. Two threads: one per
    /// direction, or one per half of the block's rows.
    fn scan(&self, lists: &mut Lists, sq: Option<&[f32]>, same_source: bool) {
        let diagonal = same_source && self.i0 == self.j0;
        if same_source && !diagonal {
            let [rows_i, rows_j] = lists.two_ranges(self.i0, self.bi, self.j0, self.bj);
            std::thread::scope(|s| {
                s.spawn(|| self.scan_rows(rows_i, 0, self.bi, sq, false));
                self.scan_columns(rows_j, sq);
            });
        } else {
            let half = self.bi / 2;
            let [top, bottom] = lists.two_ranges(self.i0, half, self.i0 + half, self.bi - half);
            std::thread::scope(|s| {
                s.spawn(|| self.scan_rows(top, 0, half, sq, diagonal));
                self.scan_rows(bottom, half, self.bi, sq, diagonal);
            });
        }
    }

    /// Block rows `[a0, a1)` (their lists in `lists`, from 0) against the block's
    /// references; `diagonal` skips each row's own column.
    fn scan_rows(
        &self,
        mut lists: Rows<'_>,
        a0: usize,
        a1: usize,
        sq: Option<&[f32]>,
        diagonal: bool,
    ) {
        let sq_j = sq.map(|s| &s[self.j0..self.j0 + self.bj]);
        for a in a0..a1 {
            let local = a - a0;
            let g_row = &self.g[a * self.bj..(a + 1) * self.bj];
            let mut threshold = lists.threshold[local];
            for (c, &g) in g_row.iter().enumerate() {
                let s = match sq_j {
                    Some(sq) => 2.0 * g - sq[c],
                    None => g,
                };
                if s > threshold && !(diagonal && c == a) {
                    lists.offer(local, s, (self.j0 + c) as i64);
                    threshold = lists.threshold[local];
                }
            }
        }
    }

    /// Every block column's row (the lists of rows `[j0, j0 + bj)`) against the
    /// block's query rows as references.
    fn scan_columns(&self, mut lists: Rows<'_>, sq: Option<&[f32]>) {
        for a in 0..self.bi {
            let g_row = &self.g[a * self.bj..(a + 1) * self.bj];
            let sq_a = sq.map_or(0.0, |s| s[self.i0 + a]);
            let reference = (self.i0 + a) as i64;
            for (c, &g) in g_row.iter().enumerate() {
                let s = if sq.is_some() { 2.0 * g - sq_a } else { g };
                if s > lists.threshold[c] {
                    lists.offer(c, s, reference);
                }
            }
        }
    }
}
