//! Divide and Conquer's reclustering step, after `lib/clustering.py` of
//! CompVis/metric-learning-divide-and-conquer: k-means on the L2-normalised features of
//! the whole training set, new clusters relabelled to match the previous clustering
//! (`reassign_clusters`: `linear_sum_assignment` on the L1 distances between the
//! clusters' membership vectors), and within each cluster the classes that have a
//! single sample there are dropped (their sample gets no cluster).
//!
//! Minimising `Σ ‖1_{new i} − 1_{old π(i)}‖₁ = Σ (|new i| + |old π(i)| − 2·|new i ∩ old π(i)|)`
//! over perfect matchings π is the same as maximising the total overlap
//! `Σ |new i ∩ old π(i)|`, since the sizes sum to the same constant for every π; that
//! overlap is what [`relabel`] maximises with [`max_weight_matching`].
use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::hungarian::max_weight_matching;
use crate::error::{Error, Result};
use crate::eval::kmeans::{kmeans, KMeansInit, KMeansOptions};
use crate::ops::try_normalize;

/// The k-means settings of the official code: 100 iterations, 5 restarts
/// (k-means++ starts), seeded by `seed`.
///
/// ```
/// let o = dml::dnc::cluster::dnc_kmeans_options(7);
/// assert_eq!((o.iterations, o.restarts, o.seed), (100, 5, 7));
/// ```
pub fn dnc_kmeans_options(seed: u64) -> KMeansOptions {
    KMeansOptions {
        restarts: 5,
        iterations: 100,
        seed,
        init: KMeansInit::PlusPlus,
    }
}

/// Reclusters the training set into `k` clusters: the cluster of each sample, or `None`
/// where the sample's class has no other sample in that cluster.
///
/// `features` is `[n, d]` (any float kind, any device; rows are L2-normalised here),
/// `labels` the class of each of the `n` samples, `previous` the result of the last
/// reclustering (same samples, same order), whose ids the new clusters take over by
/// maximum overlap. The result is a pure function of the inputs and `opts.seed`: run
/// on the same features with the same libtorch build and thread count it is identical
/// on every rank (to rule out float differences between machines, cluster on one rank
/// and broadcast, as METHODS.md's "Global part" says).
///
/// Errors: [`Error::Input`] when the lengths disagree, `k` is 0 or larger than `n`, or
/// `previous` names a cluster `≥ k`.
///
/// ```no_run
/// use tch::{Device, Kind, Tensor};
/// use dml::dnc::cluster::{dnc_kmeans_options, recluster};
/// let features = Tensor::randn([1000, 64], (Kind::Float, Device::Cpu));
/// let labels: Vec<u32> = (0..1000).map(|i| i / 10).collect();
/// let first = recluster(&features, &labels, 4, None, &dnc_kmeans_options(0))?;
/// let next = recluster(&features, &labels, 4, Some(&first), &dnc_kmeans_options(1))?;
/// # Ok::<(), dml::Error>(())
/// ```
pub fn recluster(
    features: &Tensor,
    labels: &[u32],
    k: usize,
    previous: Option<&[Option<usize>]>,
    opts: &KMeansOptions,
) -> Result<Vec<Option<usize>>> {
    let n = features.size().first().copied().unwrap_or(0) as usize;
    if labels.len() != n {
        return Err(Error::Input(format!(
            "D&C recluster: {n} feature rows but {} labels",
            labels.len()
        )));
    }
    let x = try_normalize(&features.f_to_kind(Kind::Float)?)?;
    let c = kmeans(&x, k, opts)?;
    let mut assign: Vec<usize> = c.assignment.iter().map(|&a| a as usize).collect();
    if let Some(prev) = previous {
        assign = relabel(&assign, prev, k)?;
    }
    Ok(drop_single_samples(labels, &assign))
}

/// `current` (cluster per sample, in `0..k`) renamed so that the total overlap with
/// `previous` is maximal: new cluster `i` becomes old cluster `π(i)` for the
/// maximum-weight matching `π` of the overlap matrix. Samples without a previous
/// cluster (`None`) do not count towards the overlap.
///
/// ```
/// use dml::dnc::cluster::relabel;
/// let prev = [Some(1), Some(1), Some(0), None];
/// assert_eq!(relabel(&[0, 0, 1, 1], &prev, 2)?, vec![1, 1, 0, 0]);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn relabel(current: &[usize], previous: &[Option<usize>], k: usize) -> Result<Vec<usize>> {
    if previous.len() != current.len() {
        return Err(Error::Input(format!(
            "D&C relabel: {} samples now but {} in the previous clustering",
            current.len(),
            previous.len()
        )));
    }
    let mut overlap = vec![vec![0i64; k]; k];
    for (&c, p) in current.iter().zip(previous) {
        if let Some(p) = *p {
            if p >= k || c >= k {
                return Err(Error::Input(format!(
                    "D&C relabel: cluster {} outside 0..{k}",
                    p.max(c)
                )));
            }
            overlap[c][p] += 1;
        }
    }
    let to_old = max_weight_matching(&overlap);
    Ok(current.iter().map(|&c| to_old[c]).collect())
}

/// The clustering with the samples whose class has no other sample in their cluster
/// set to `None` (the official code drops such classes from the cluster's dataset).
///
/// ```
/// use dml::dnc::cluster::drop_single_samples;
/// // Class 7 has one sample in cluster 0 and two in cluster 1.
/// let out = drop_single_samples(&[7, 7, 7, 3, 3], &[0, 1, 1, 0, 0]);
/// assert_eq!(out, vec![None, Some(1), Some(1), Some(0), Some(0)]);
/// ```
pub fn drop_single_samples(labels: &[u32], assign: &[usize]) -> Vec<Option<usize>> {
    let mut count: HashMap<(usize, u32), usize> = HashMap::new();
    for (&l, &c) in labels.iter().zip(assign) {
        *count.entry((c, l)).or_default() += 1;
    }
    labels
        .iter()
        .zip(assign)
        .map(|(&l, &c)| (count[&(c, l)] > 1).then_some(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// 4 planted clusters of 60 samples in 16-d: cluster c lies around 10·e_c (noise σ =
    /// 0.3, far below the distance √200 between centres), classes 3c and 3c + 1 and
    /// 3c + 2 have 20 samples each in cluster c. Returns features, labels, clusters.
    fn planted() -> (Tensor, Vec<u32>, Vec<usize>) {
        tch::manual_seed(11);
        let per = 60usize;
        let mut rows = Vec::new();
        let (mut labels, mut clusters) = (Vec::new(), Vec::new());
        for s in 0..4 * per {
            // Interleave the clusters so the row order says nothing about them.
            let c = s % 4;
            let mut centre = vec![0f32; 16];
            centre[c] = 10.0;
            rows.push(Tensor::from_slice(&centre));
            labels.push((3 * c + (s / 4) % 3) as u32);
            clusters.push(c);
        }
        let x = Tensor::stack(&rows, 0)
            + Tensor::randn([4 * per as i64, 16], (Kind::Float, Device::Cpu)) * 0.3;
        (x, labels, clusters)
    }

    fn opts() -> KMeansOptions {
        KMeansOptions {
            restarts: 2,
            iterations: 50,
            seed: 4,
            init: KMeansInit::PlusPlus,
        }
    }

    #[test]
    fn finds_the_planted_clusters() {
        let (x, labels, planted) = planted();
        let got = recluster(&x, &labels, 4, None, &opts()).unwrap();
        // Same partition: found cluster ↔ planted cluster is a bijection.
        let mut map = HashMap::new();
        for (g, &p) in got.iter().zip(&planted) {
            let g = g.expect("no class is a single sample here");
            assert_eq!(*map.entry(g).or_insert(p), p);
        }
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn relabelling_returns_a_permuted_previous_assignment() {
        let (x, labels, planted) = planted();
        let perm = [2usize, 0, 3, 1];
        let previous: Vec<Option<usize>> = planted.iter().map(|&c| Some(perm[c])).collect();
        let got = recluster(&x, &labels, 4, Some(&previous), &opts()).unwrap();
        assert_eq!(got, previous);
    }

    #[test]
    fn relabelling_keeps_ids_under_partial_overlap() {
        // New clusters {0,1,2} and {3,4,5}; previous ids 1,1,0 and 0,None,1. Overlaps:
        // new0∩old1 = 2, new0∩old0 = 1, new1∩old0 = 1, new1∩old1 = 1 (the None sample
        // counts for nothing). new0→1, new1→0 totals 3 > 1 + 1 for the other matching.
        let prev = [Some(1), Some(1), Some(0), Some(0), None, Some(1)];
        let got = relabel(&[0, 0, 0, 1, 1, 1], &prev, 2).unwrap();
        assert_eq!(got, vec![1, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn single_sample_classes_are_dropped_per_cluster() {
        // Cluster 0: classes 5 (×3), 6 (×1) → 6 dropped. Cluster 1: classes 6 (×2),
        // 5 (×1), 9 (×1) → 5 and 9 dropped. Cluster 2: class 9 (×1) → dropped, empty.
        let labels = [5, 5, 5, 6, 6, 6, 5, 9, 9];
        let assign = [0, 0, 0, 0, 1, 1, 1, 1, 2];
        let want = vec![
            Some(0),
            Some(0),
            Some(0),
            None,
            Some(1),
            Some(1),
            None,
            None,
            None,
        ];
        assert_eq!(drop_single_samples(&labels, &assign), want);
    }

    #[test]
    fn identical_input_gives_identical_output() {
        tch::manual_seed(2);
        let x = Tensor::randn([300, 24], (Kind::Float, Device::Cpu));
        let labels: Vec<u32> = (0..300).map(|i| i % 37).collect();
        let a = recluster(&x, &labels, 6, None, &opts()).unwrap();
        let b = recluster(&x.copy(), &labels, 6, None, &opts()).unwrap();
        assert_eq!(a, b);
        let c = recluster(&x, &labels, 6, Some(&a), &opts()).unwrap();
        let d = recluster(&x, &labels, 6, Some(&b), &opts()).unwrap();
        assert_eq!(c, d);
        // Same features, same seed: reclustering against itself keeps every id.
        assert_eq!(c, a);
    }

    #[test]
    fn mismatched_lengths_are_input_errors() {
        let x = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        assert!(matches!(
            recluster(&x, &[0, 1], 2, None, &opts()),
            Err(Error::Input(_))
        ));
        assert!(matches!(
            relabel(&[0, 1], &[Some(0)], 2),
            Err(Error::Input(_))
        ));
        assert!(matches!(
            relabel(&[0, 1], &[Some(0), Some(2)], 2),
            Err(Error::Input(_))
        ));
    }
}
