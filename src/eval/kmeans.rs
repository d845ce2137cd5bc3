//! Seeded k-means (k-means++ initialisation, Lloyd iterations, several restarts; the
//! run with the lowest inertia wins), for the NMI/AMI clustering metrics.
//!
//! Distances are squared Euclidean, computed in blocks of rows (`|c|² − 2 x·c`) on the
//! tensor's device, so memory stays bounded by [`super::knn::BLOCK_ELEMENTS`]. A cluster
//! that loses all its points keeps its previous centre.
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// k-means settings.
#[derive(Debug, Clone, Copy)]
pub struct KMeansOptions {
    /// Independent k-means++ starts; the lowest final inertia is kept.
    pub restarts: usize,
    /// The most Lloyd iterations per start (stops early once assignments are stable).
    pub iterations: usize,
    /// Seed of the k-means++ draws (restart r uses the key `[seed, r]`).
    pub seed: u64,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        KMeansOptions {
            restarts: 3,
            iterations: 20,
            seed: 0,
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
    let n = x.size()[0] as usize;
    if k == 0 || k > n {
        return Err(Error::Input(format!(
            "k-means: k = {k} clusters for {n} points"
        )));
    }
    let x = x.f_to_kind(Kind::Float)?;
    let x_sq = x
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
    let mut best: Option<Clustering> = None;
    for r in 0..opts.restarts.max(1) {
        let mut rng = SplitMix64::keyed(&[opts.seed, r as u64]);
        let mut centres = plus_plus(&x, &x_sq, k, &mut rng)?;
        let (mut assign, mut inertia) = assign_rows(&x, &x_sq, &centres)?;
        for _ in 0..opts.iterations {
            centres = update(&x, &assign, &centres)?;
            let (a, i) = assign_rows(&x, &x_sq, &centres)?;
            let stable = a.f_eq_tensor(&assign)?.f_all()?.int64_value(&[]) != 0;
            assign = a;
            inertia = i;
            if stable {
                break;
            }
        }
        if best.as_ref().is_none_or(|b| inertia < b.inertia) {
            let assignment = Vec::<i64>::try_from(assign.f_to_device(Device::Cpu)?)?;
            best = Some(Clustering {
                assignment,
                inertia,
            });
        }
    }
    best.ok_or_else(|| Error::Input("k-means: no restart".into()))
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

/// Nearest centre of every row (blocked) and the total inertia.
fn assign_rows(x: &Tensor, x_sq: &Tensor, centres: &Tensor) -> Result<(Tensor, f64)> {
    let n = x.size()[0] as usize;
    let k = centres.size()[0] as usize;
    let c_sq = centres
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
    let ct = centres.f_transpose(0, 1)?.f_contiguous()?;
    let rows = super::knn::block_rows(4096, k);
    let mut assigns = Vec::new();
    let mut inertia = 0.0;
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let xb = x.f_narrow(0, start as i64, len as i64)?;
        let d = c_sq
            .f_unsqueeze(0)?
            .f_sub(&xb.f_mm(&ct)?.f_mul_scalar(2.0)?)?;
        let (minv, arg) = d.f_min_dim(1, false)?;
        let xs = x_sq.f_narrow(0, start as i64, len as i64)?;
        inertia += minv
            .f_add(&xs)?
            .f_clamp_min(0.0)?
            .f_sum(Kind::Double)?
            .double_value(&[]);
        assigns.push(arg);
        start += len;
    }
    Ok((Tensor::f_cat(&assigns, 0)?, inertia))
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
