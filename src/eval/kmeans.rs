//! Seeded k-means (Lloyd iterations from k-means++ or random initial centres, several
//! restarts; the run with the lowest inertia wins), for the NMI/AMI clustering metrics
//! and the Divide-and-Conquer reclustering.
//!
//! Distances are squared Euclidean, computed in blocks of rows (`|c|² − 2 x·c`) on the
//! tensor's device, so memory stays bounded by [`super::knn::BLOCK_ELEMENTS`]. A cluster
//! that loses all its points keeps its previous centre.
//!
//! The assignment step prunes rows with Hamerly's bounds (Hamerly 2010, "Making k-means
//! even faster"): every row keeps an upper bound on the distance to its centre and a lower
//! bound on the distance to every other centre, both moved by the centres' drift; only
//! rows whose bounds overlap are compared with all centres again. The result is the same
//! as plain Lloyd (up to ties and a float margin); at SOP size most rows are skipped after
//! the first iterations, which is what makes k = 11,316 affordable.
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// How the initial centres of each restart are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KMeansInit {
    /// k-means++ (Arthur & Vassilvitskii 2007): `k` sequential passes over the data.
    #[default]
    PlusPlus,
    /// `k` distinct rows drawn uniformly from the seeded RNG, as faiss.Kmeans does
    /// (PML's AccuracyCalculator clusters with `faiss.Kmeans(niter=20)`).
    Random,
}

/// k-means settings.
#[derive(Debug, Clone, Copy)]
pub struct KMeansOptions {
    /// Independent starts; the lowest final inertia is kept.
    pub restarts: usize,
    /// The most Lloyd iterations per start (stops early once assignments are stable).
    pub iterations: usize,
    /// Seed of the initial draws (restart r uses the key `[seed, r]`).
    pub seed: u64,
    /// Initial centres.
    pub init: KMeansInit,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        KMeansOptions {
            restarts: 3,
            iterations: 20,
            seed: 0,
            init: KMeansInit::PlusPlus,
        }
    }
}

/// Above this many clusters the NMI/AMI metrics use [`KMeansOptions::for_metrics`]'s
/// faiss-like settings (random initial centres, one start): k-means++ needs `k`
/// sequential passes over the data, which at SOP size (k = 11,316) alone takes minutes.
pub const RANDOM_INIT_ABOVE: usize = 1024;

impl KMeansOptions {
    /// The settings of the NMI/AMI metrics for `k` clusters: the default (k-means++,
    /// 3 restarts, 20 iterations) up to [`RANDOM_INIT_ABOVE`] clusters, above it
    /// faiss.Kmeans's as used by PML (random distinct rows, one start, 20 iterations).
    ///
    /// ```
    /// use dml::eval::kmeans::{KMeansInit, KMeansOptions};
    /// assert_eq!(KMeansOptions::for_metrics(100, 0).init, KMeansInit::PlusPlus);
    /// assert_eq!(KMeansOptions::for_metrics(11_316, 0).init, KMeansInit::Random);
    /// ```
    pub fn for_metrics(k: usize, seed: u64) -> KMeansOptions {
        if k > RANDOM_INIT_ABOVE {
            KMeansOptions {
                restarts: 1,
                iterations: 20,
                seed,
                init: KMeansInit::Random,
            }
        } else {
            KMeansOptions {
                seed,
                ..KMeansOptions::default()
            }
        }
    }
}

/// A clustering: the centre index of every row and the sum of squared distances.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// Cluster of each row, in `0..k`.
    pub assignment: Vec<i64>,
    /// Σ‖x − c(x)‖² of the assignment.
    pub inertia: f64,
}

/// Clusters the rows of `x` (n × d) into `k` clusters.
///
/// ```
/// use tch::Tensor;
/// use dml::eval::kmeans::{kmeans, KMeansOptions};
/// let x = Tensor::from_slice(&[0f32, 0., 0., 0.1, 5., 5., 5., 5.1]).view([4, 2]);
/// let c = kmeans(&x, 2, &KMeansOptions::default())?;
/// assert_eq!(c.assignment[0], c.assignment[1]);
/// assert_ne!(c.assignment[0], c.assignment[2]);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn kmeans(x: &Tensor, k: usize, opts: &KMeansOptions) -> Result<Clustering> {
    kmeans_with(x, k, opts, true)
}

/// [`kmeans`] with Hamerly pruning on or off (off: every row against every centre at
/// every iteration; kept to test that pruning changes nothing).
fn kmeans_with(x: &Tensor, k: usize, opts: &KMeansOptions, prune: bool) -> Result<Clustering> {
    let n = x.size()[0] as usize;
    if k == 0 || k > n {
        return Err(Error::Input(format!(
            "k-means: k = {k} clusters for {n} points"
        )));
    }
    let x = x.f_to_kind(Kind::Float)?.f_contiguous()?;
    let x_sq = x
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
    // Float slack of the bound tests, in distance units: rows closer to a tie than this
    // are always compared with every centre again.
    let scale = x_sq.f_max()?.double_value(&[]).sqrt();
    let margin = 1e-4 * scale.max(1e-12);
    let mut best: Option<Clustering> = None;
    for r in 0..opts.restarts.max(1) {
        let mut rng = SplitMix64::keyed(&[opts.seed, r as u64]);
        let mut centres = match opts.init {
            KMeansInit::PlusPlus => plus_plus(&x, &x_sq, k, &mut rng)?,
            KMeansInit::Random => random_rows(&x, k, &mut rng)?,
        };
        let mut st = full_assign(&x, &x_sq, &centres)?;
        for _ in 0..opts.iterations {
            let new = update(&x, &st.assign, &centres)?;
            let changed = if prune {
                let drift =
                    new.f_sub(&centres)?
                        .f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?;
                centres = new;
                pruned_assign(&x, &x_sq, &centres, &drift, &mut st, margin)?
            } else {
                centres = new;
                let next = full_assign(&x, &x_sq, &centres)?;
                let changed = next.assign.f_ne_tensor(&st.assign)?.f_sum(Kind::Int64)?;
                st = next;
                changed.int64_value(&[])
            };
            if changed == 0 {
                break;
            }
        }
        let inertia = exact_sq(&x, &x_sq, &centres, &st.assign)?
            .f_sum(Kind::Double)?
            .double_value(&[]);
        if best.as_ref().is_none_or(|b| inertia < b.inertia) {
            let assignment = Vec::<i64>::try_from(st.assign.f_to_device(Device::Cpu)?)?;
            best = Some(Clustering {
                assignment,
                inertia,
            });
        }
    }
    best.ok_or_else(|| Error::Input("k-means: no restart".into()))
}

/// `k` distinct rows, drawn by a partial Fisher–Yates shuffle of `0..n`.
fn random_rows(x: &Tensor, k: usize, rng: &mut SplitMix64) -> Result<Tensor> {
    let n = x.size()[0] as usize;
    let mut idx: Vec<i64> = (0..n as i64).collect();
    for i in 0..k {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    idx.truncate(k);
    let idx = Tensor::from_slice(&idx).f_to_device(x.device())?;
    Ok(x.f_index_select(0, &idx)?)
}

/// Assignment with Hamerly bounds (distances, not squared).
struct Bounds {
    /// Centre of every row (i64).
    assign: Tensor,
    /// Upper bound on the distance of each row to its centre.
    upper: Tensor,
    /// Lower bound on the distance of each row to every other centre.
    lower: Tensor,
}

/// Exact squared distance of every row to its assigned centre.
fn exact_sq(x: &Tensor, x_sq: &Tensor, centres: &Tensor, assign: &Tensor) -> Result<Tensor> {
    let c = centres.f_index_select(0, assign)?;
    let c_sq = c
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
    let dots = x
        .f_mul(&c)?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
    Ok(x_sq
        .f_sub(&dots.f_mul_scalar(2.0)?)?
        .f_add(&c_sq)?
        .f_clamp_min(0.0)?)
}

/// Nearest and second-nearest centre of every row of `x` (blocked): the assignment,
/// the distance to the nearest and to the second nearest (+∞ when k = 1).
///
/// One GEMM per block gives `|c|² − 2 x·c` directly: the rows are extended by a 1 and
/// the centres by their squared norm, `[x, 1] · [−2c, |c|²]ᵀ`, written into one reused
/// block (no separate scaling and subtraction passes over the `rows × k` block, and no
/// fresh allocation of it per block).
fn full_assign(x: &Tensor, x_sq: &Tensor, centres: &Tensor) -> Result<Bounds> {
    let n = x.size()[0] as usize;
    let k = centres.size()[0] as usize;
    let c_sq = centres
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
    let c_aug = Tensor::f_cat(&[centres.f_mul_scalar(-2.0)?, c_sq.f_unsqueeze(1)?], 1)?
        .f_transpose(0, 1)?
        .f_contiguous()?;
    let rows = super::knn::block_rows(4096, k);
    let block = Tensor::f_empty([rows.min(n) as i64, k as i64], (Kind::Float, x.device()))?;
    let ones = Tensor::f_ones([rows.min(n) as i64, 1], (Kind::Float, x.device()))?;
    let (mut assigns, mut uppers, mut lowers) = (Vec::new(), Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let xb = Tensor::f_cat(
            &[
                x.f_narrow(0, start as i64, len as i64)?,
                ones.f_narrow(0, 0, len as i64)?,
            ],
            1,
        )?;
        let xs = x_sq.f_narrow(0, start as i64, len as i64)?.f_unsqueeze(1)?;
        let d = block.f_narrow(0, 0, len as i64)?;
        let _ = xb.f_mm_out(&d, &c_aug)?;
        let (vals, arg) = d.f_topk(k.min(2) as i64, 1, false, true)?;
        let dist = vals.f_add(&xs)?.f_clamp_min(0.0)?.f_sqrt()?;
        assigns.push(arg.f_select(1, 0)?);
        uppers.push(dist.f_select(1, 0)?);
        lowers.push(if k >= 2 {
            dist.f_select(1, 1)?
        } else {
            Tensor::f_full([len as i64], f64::INFINITY, (Kind::Float, x.device()))?
        });
        start += len;
    }
    Ok(Bounds {
        assign: Tensor::f_cat(&assigns, 0)?,
        upper: Tensor::f_cat(&uppers, 0)?,
        lower: Tensor::f_cat(&lowers, 0)?,
    })
}

/// One Hamerly assignment step after the centres moved by `drift` (k): moves the
/// bounds, tightens the upper bound of the rows whose bounds overlap, and compares only
/// the rows that still overlap with every centre. Returns how many rows changed centre.
fn pruned_assign(
    x: &Tensor,
    x_sq: &Tensor,
    centres: &Tensor,
    drift: &Tensor,
    st: &mut Bounds,
    margin: f64,
) -> Result<i64> {
    let k = centres.size()[0];
    st.upper = st.upper.f_add(&drift.f_index_select(0, &st.assign)?)?;
    if k >= 2 {
        // Every other centre moved at most the largest drift among the other centres.
        let (top, arg) = drift.f_topk(2, 0, true, true)?;
        let (m1, m2) = (top.f_select(0, 0)?, top.f_select(0, 1)?);
        let own_is_max = st.assign.f_eq_tensor(&arg.f_select(0, 0)?)?;
        let m = m2.f_where_self(&own_is_max, &m1)?;
        st.lower = st.lower.f_sub(&m)?;
    }
    let open = st.upper.f_add_scalar(margin)?.f_gt_tensor(&st.lower)?;
    let rows = open.f_nonzero()?.f_view(-1)?;
    if rows.size()[0] == 0 {
        return Ok(0);
    }
    // Tighten the upper bound of the open rows to their exact distance.
    let xr = x.f_index_select(0, &rows)?;
    let xr_sq = x_sq.f_index_select(0, &rows)?;
    let ar = st.assign.f_index_select(0, &rows)?;
    let exact = exact_sq(&xr, &xr_sq, centres, &ar)?.f_sqrt()?;
    let _ = st
        .upper
        .f_index_put_(&[Some(rows.shallow_clone())], &exact, false)?;
    let lr = st.lower.f_index_select(0, &rows)?;
    let still = exact.f_add_scalar(margin)?.f_gt_tensor(&lr)?;
    let sub = still.f_nonzero()?.f_view(-1)?;
    if sub.size()[0] == 0 {
        return Ok(0);
    }
    let rows = rows.f_index_select(0, &sub)?;
    let xr = xr.f_index_select(0, &sub)?;
    let xr_sq = xr_sq.f_index_select(0, &sub)?;
    let fresh = full_assign(&xr, &xr_sq, centres)?;
    let old = st.assign.f_index_select(0, &rows)?;
    let changed = fresh
        .assign
        .f_ne_tensor(&old)?
        .f_sum(Kind::Int64)?
        .int64_value(&[]);
    let idx = [Some(rows)];
    let _ = st.assign.f_index_put_(&idx, &fresh.assign, false)?;
    let _ = st.upper.f_index_put_(&idx, &fresh.upper, false)?;
    let _ = st.lower.f_index_put_(&idx, &fresh.lower, false)?;
    Ok(changed)
}

/// Squared distances of every row to one point `c` (1 × d).
fn dist_to(x: &Tensor, x_sq: &Tensor, c: &Tensor) -> Result<Tensor> {
    let c_sq = c.f_square()?.f_sum(Kind::Float)?;
    let dots = x.f_mv(&c.f_view(-1)?)?;
    Ok(x_sq
        .f_sub(&dots.f_mul_scalar(2.0)?)?
        .f_add(&c_sq)?
        .f_clamp_min(0.0)?)
}

/// k-means++ (Arthur & Vassilvitskii 2007): each new centre drawn with probability
/// proportional to the squared distance to the nearest centre so far.
fn plus_plus(x: &Tensor, x_sq: &Tensor, k: usize, rng: &mut SplitMix64) -> Result<Tensor> {
    let n = x.size()[0] as usize;
    let mut chosen = Vec::with_capacity(k);
    let mut taken = vec![false; n];
    let first = rng.below(n);
    chosen.push(first as i64);
    taken[first] = true;
    let mut d2 = dist_to(x, x_sq, &x.f_narrow(0, first as i64, 1)?)?;
    while chosen.len() < k {
        let w = Vec::<f32>::try_from(d2.f_to_device(Device::Cpu)?)?;
        let total: f64 = w.iter().map(|&v| v as f64).sum();
        let next = if total > 0.0 {
            let target = rng.next_f64() * total;
            let mut acc = 0.0;
            let mut pick = None;
            for (i, &v) in w.iter().enumerate() {
                acc += v as f64;
                if acc > target && v > 0.0 {
                    pick = Some(i);
                    break;
                }
            }
            // Rounding can leave the target past the last positive weight.
            pick.or_else(|| w.iter().rposition(|&v| v > 0.0))
                .unwrap_or(0)
        } else {
            // Fewer distinct points than clusters: any row not chosen yet.
            let free: Vec<usize> = (0..n).filter(|&i| !taken[i]).collect();
            free[rng.below(free.len())]
        };
        chosen.push(next as i64);
        taken[next] = true;
        let dn = dist_to(x, x_sq, &x.f_narrow(0, next as i64, 1)?)?;
        d2 = d2.f_minimum(&dn)?;
    }
    let idx = Tensor::from_slice(&chosen).f_to_device(x.device())?;
    Ok(x.f_index_select(0, &idx)?)
}

/// Centres as the means of their rows; an empty cluster keeps its old centre.
fn update(x: &Tensor, assign: &Tensor, old: &Tensor) -> Result<Tensor> {
    let (k, d) = (old.size()[0], old.size()[1]);
    let sums = Tensor::f_zeros([k, d], (Kind::Float, x.device()))?.f_index_add(0, assign, x)?;
    let ones = Tensor::f_ones([x.size()[0]], (Kind::Float, x.device()))?;
    let counts = Tensor::f_zeros([k], (Kind::Float, x.device()))?.f_index_add(0, assign, &ones)?;
    let empty = counts.f_eq(0.0)?.f_unsqueeze(1)?;
    let means = sums.f_div(&counts.f_clamp_min(1.0)?.f_unsqueeze(1)?)?;
    Ok(means.f_where_self(&empty.f_logical_not()?, old)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 600 points around 30 random centres in 16-d (torch's seeded generator).
    fn blobs() -> Tensor {
        tch::manual_seed(3);
        let centres = Tensor::randn([30, 16], (Kind::Float, Device::Cpu));
        let which = Tensor::randint(30, [600], (Kind::Int64, Device::Cpu));
        centres.index_select(0, &which) + Tensor::randn([600, 16], (Kind::Float, Device::Cpu)) * 0.6
    }

    #[test]
    fn hamerly_pruning_gives_plain_lloyd_result() {
        let x = blobs();
        for init in [KMeansInit::PlusPlus, KMeansInit::Random] {
            let opts = KMeansOptions {
                restarts: 2,
                iterations: 30,
                seed: 5,
                init,
            };
            let pruned = kmeans_with(&x, 40, &opts, true).unwrap();
            let plain = kmeans_with(&x, 40, &opts, false).unwrap();
            assert_eq!(pruned.assignment, plain.assignment, "{init:?}");
            assert!((pruned.inertia - plain.inertia).abs() < 1e-6 * plain.inertia);
        }
    }

    #[test]
    fn inertia_is_the_sum_of_squared_distances_to_the_cluster_means() {
        let x = blobs();
        let opts = KMeansOptions {
            init: KMeansInit::Random,
            ..KMeansOptions::default()
        };
        let c = kmeans(&x, 12, &opts).unwrap();
        // Recompute Σ‖x − mean(cluster)‖² in f64 from the assignment alone.
        let rows = Vec::<Vec<f32>>::try_from(&x).unwrap();
        let mut sums = vec![vec![0f64; 16]; 12];
        let mut counts = [0f64; 12];
        for (r, &a) in rows.iter().zip(&c.assignment) {
            counts[a as usize] += 1.0;
            for (s, &v) in sums[a as usize].iter_mut().zip(r) {
                *s += v as f64;
            }
        }
        let mut inertia = 0.0;
        for (r, &a) in rows.iter().zip(&c.assignment) {
            let a = a as usize;
            for (j, &v) in r.iter().enumerate() {
                inertia += (v as f64 - sums[a][j] / counts[a]).powi(2);
            }
        }
        assert!(
            (inertia - c.inertia).abs() < 1e-3 * inertia,
            "{inertia} vs {}",
            c.inertia
        );
    }

    #[test]
    fn random_init_draws_distinct_rows_deterministically() {
        let x = Tensor::arange(50, (Kind::Float, Device::Cpu)).view([50, 1]);
        let mut a = SplitMix64::keyed(&[9, 0]);
        let mut b = SplitMix64::keyed(&[9, 0]);
        let ca = Vec::<f32>::try_from(random_rows(&x, 50, &mut a).unwrap().view(-1)).unwrap();
        let cb = Vec::<f32>::try_from(random_rows(&x, 50, &mut b).unwrap().view(-1)).unwrap();
        assert_eq!(ca, cb);
        let mut sorted = ca.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, (0..50).map(|v| v as f32).collect::<Vec<_>>());
    }
}
