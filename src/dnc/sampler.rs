//! The cluster-aware sampler of Divide and Conquer: the batch of step `t` comes from
//! cluster `t mod C`, so batches alternate between the clusters as in the official
//! code (CompVis/metric-learning-divide-and-conquer, `train.py` cycles through one
//! data loader per cluster built in `lib/clustering.py::make_clustered_dataloaders`),
//! and is an N×K class-balanced batch of that cluster's samples.
//!
//! Each cluster has its own [`Sampler`] over its samples, seeded from the run's seed,
//! the cluster id and a hash of the whole clustering, so the batch of a step is a pure
//! function of `(seed, step, labels, clustering, N, K)`: every rank computes the same
//! global batch, and resuming needs only the step and the clustering.
use crate::data::sampler::Sampler;
use crate::error::{Error, Result};
use crate::rng::{mix64, SplitMix64};

/// Key tag of the per-cluster sampler seeds.
const CLUSTER_TAG: u64 = 0xd1c0;

/// One N×K [`Sampler`] per cluster; step `t` draws from cluster `t mod C`.
///
/// ```
/// use dml::dnc::sampler::ClusterSampler;
/// let labels = [0, 0, 1, 1, 2, 2, 3, 3];
/// let clusters = [Some(0), Some(0), Some(0), Some(0), Some(1), Some(1), Some(1), Some(1)];
/// let s = ClusterSampler::new(&labels, &clusters, 2, 2, 2, 7)?;
/// let (c, batch) = s.global_batch(3);
/// assert_eq!(c, 1);
/// assert!(batch.iter().all(|&i| clusters[i] == Some(1)));
/// # Ok::<(), dml::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClusterSampler {
    samplers: Vec<Sampler>,
    fingerprint: u64,
}

impl ClusterSampler {
    /// Samplers of `classes_per_batch` (N) classes × `samples_per_class` (K) images for
    /// each of the `num_clusters` clusters; `clusters[i]` is the cluster of sample `i`
    /// (`None`: in no cluster, never drawn), `labels[i]` its class.
    ///
    /// Errors: [`Error::Input`] when the lengths disagree or a cluster id is
    /// `≥ num_clusters`; [`Error::Train`] naming the cluster when one has fewer than N
    /// classes (the caller decides: fewer clusters, a smaller N, or reclustering).
    pub fn new(
        labels: &[u32],
        clusters: &[Option<usize>],
        num_clusters: usize,
        classes_per_batch: usize,
        samples_per_class: usize,
        seed: u64,
    ) -> Result<ClusterSampler> {
        if labels.len() != clusters.len() {
            return Err(Error::Input(format!(
                "D&C sampler: {} labels but {} cluster entries",
                labels.len(),
                clusters.len()
            )));
        }
        if num_clusters == 0 {
            return Err(Error::Input("D&C sampler: zero clusters".into()));
        }
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); num_clusters];
        for (i, c) in clusters.iter().enumerate() {
            if let Some(c) = *c {
                let m = members.get_mut(c).ok_or_else(|| {
                    Error::Input(format!(
                        "D&C sampler: sample {i} in cluster {c} but there are {num_clusters} clusters"
                    ))
                })?;
                m.push(i);
            }
        }
        let fingerprint = clusters.iter().fold(mix64(clusters.len() as u64), |h, c| {
            mix64(h ^ c.map_or(0, |c| c as u64 + 1))
        });
        let mut samplers = Vec::with_capacity(num_clusters);
        for (c, idx) in members.into_iter().enumerate() {
            let mut classes: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
            classes.sort_unstable();
            classes.dedup();
            if classes.len() < classes_per_batch.max(1) {
                return Err(Error::Train(format!(
                    "D&C cluster {c} has {} classes ({} samples) but a batch needs \
                     sampler.classes_per_batch = {classes_per_batch} classes",
                    classes.len(),
                    idx.len()
                )));
            }
            let key = SplitMix64::keyed(&[seed, CLUSTER_TAG, c as u64, fingerprint]).next_u64();
            samplers.push(Sampler::for_indices(
                labels,
                idx,
                classes_per_batch,
                samples_per_class,
                key,
            )?);
        }
        Ok(ClusterSampler {
            samplers,
            fingerprint,
        })
    }

    /// Number of clusters C.
    pub fn num_clusters(&self) -> usize {
        self.samplers.len()
    }

    /// A hash of the clustering the sampler was built from (to save with checkpoints
    /// and check on resume).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The cluster of step `step` (`step mod C`) and its N·K dataset indices,
    /// class-grouped as [`Sampler::global_batch`]'s; the cluster's sampler is at its own
    /// step `step div C`.
    pub fn global_batch(&self, step: u64) -> (usize, Vec<usize>) {
        let c = self.samplers.len() as u64;
        let cluster = (step % c) as usize;
        (cluster, self.samplers[cluster].global_batch(step / c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 clusters; cluster c holds the 5 classes 10c..=10c+4 with 12 samples each, less
    /// every 7th sample, which is in no cluster.
    fn setup() -> (Vec<u32>, Vec<Option<usize>>) {
        let mut labels = Vec::new();
        let mut clusters = Vec::new();
        for i in 0..180u32 {
            let class = i % 30;
            let c = (class / 10) as usize;
            labels.push(10 * c as u32 + class % 10 / 2);
            clusters.push((i % 7 != 0).then_some(c));
        }
        (labels, clusters)
    }

    #[test]
    fn batches_alternate_and_stay_in_their_cluster() {
        let (labels, clusters) = setup();
        let s = ClusterSampler::new(&labels, &clusters, 3, 4, 2, 1).unwrap();
        for step in 0..60u64 {
            let (c, batch) = s.global_batch(step);
            assert_eq!(c, (step % 3) as usize);
            assert_eq!(batch.len(), 8);
            assert!(batch.iter().all(|&i| clusters[i] == Some(c)), "step {step}");
            // 4 distinct classes of 2 consecutive samples each.
            let mut cls: Vec<u32> = batch.chunks(2).map(|p| labels[p[0]]).collect();
            assert!(batch.chunks(2).all(|p| labels[p[0]] == labels[p[1]]));
            cls.dedup();
            assert_eq!(cls.len(), 4);
        }
    }

    #[test]
    fn deterministic_and_keyed_by_seed_and_clustering() {
        let (labels, clusters) = setup();
        let a = ClusterSampler::new(&labels, &clusters, 3, 4, 2, 1).unwrap();
        let b = ClusterSampler::new(&labels, &clusters, 3, 4, 2, 1).unwrap();
        let other_seed = ClusterSampler::new(&labels, &clusters, 3, 4, 2, 2).unwrap();
        let mut moved = clusters.clone();
        moved[0] = Some(0); // one more sample in cluster 0
        let other_clustering = ClusterSampler::new(&labels, &moved, 3, 4, 2, 1).unwrap();
        let all = |s: &ClusterSampler| (0..30).map(|t| s.global_batch(t)).collect::<Vec<_>>();
        assert_eq!(all(&a), all(&b));
        assert_ne!(all(&a), all(&other_seed));
        assert_ne!(all(&a), all(&other_clustering));
        assert_ne!(a.fingerprint(), other_clustering.fingerprint());
    }

    #[test]
    fn a_cluster_with_too_few_classes_is_a_train_error() {
        let (labels, clusters) = setup();
        // Cluster 2 has 5 classes: N = 6 fails and names it (cluster 0 fails first).
        let err = ClusterSampler::new(&labels, &clusters, 3, 6, 2, 1).unwrap_err();
        assert!(
            matches!(&err, Error::Train(m) if m.contains("cluster 0 has 5 classes")),
            "{err}"
        );
        // A fourth, empty cluster.
        let err = ClusterSampler::new(&labels, &clusters, 4, 2, 2, 1).unwrap_err();
        assert!(
            matches!(&err, Error::Train(m) if m.contains("cluster 3 has 0 classes")),
            "{err}"
        );
        let bad: Vec<Option<usize>> = clusters.iter().map(|_| Some(5)).collect();
        assert!(matches!(
            ClusterSampler::new(&labels, &bad, 3, 2, 2, 1),
            Err(Error::Input(_))
        ));
    }
}
