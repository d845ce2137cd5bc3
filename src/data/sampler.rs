//! The distributed N×K sampler: every step's **global** batch holds N distinct classes
//! × K images each, and rank `r` of `W` trains on the contiguous slice
//! [`rank_slice`]`(N·K, r, W)` of it.
//!
//! The batch of step `t` is a pure function of `(labels, N, K, seed, t)`, so resuming
//! at step `t` needs no saved iterator state, and every rank computes the same global
//! batch without talking to the others.
//!
//! Within epoch `e = t / batches_per_epoch`:
//! - classes come from permutations `P_0, P_1, …` of all classes, each keyed by
//!   `(seed, e, j)`; permutation `P_j` is cut into `⌊C / N⌋` batches of `N` classes (the
//!   `C mod N` left over are skipped for that permutation), so a batch never repeats a
//!   class;
//! - the `j`-th permutation takes images from slot `j` of each of its classes: a class
//!   with `n ≥ K` images is shuffled (keyed by `(seed, e, class, cycle)`) and cut into
//!   `⌊n / K⌋` disjoint slots per cycle, so its images do not repeat within an epoch
//!   until all have been seen; a class with `n < K` images is drawn with replacement, as
//!   in PML's `MPerClassSampler`.
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::{mix64, SplitMix64};

/// Key tag of the class permutations.
const CLASS_TAG: u64 = 0xc1a5;
/// Key tag of the per-class image shuffles.
const IMAGE_TAG: u64 = 0x1a6e;

/// Which dataset images form the global batch of each step: what the training loader
/// reads. Implemented by [`Sampler`] and by Divide and Conquer's cluster sampler.
pub trait BatchPlan: Send + Sync + 'static {
    /// Size of every global batch (N·K).
    fn batch_size(&self) -> usize;
    /// Dataset indices of the global batch of step `step` (0-based), in batch order.
    fn global_batch(&self, step: u64) -> Vec<usize>;
}

impl BatchPlan for Box<dyn BatchPlan> {
    fn batch_size(&self) -> usize {
        self.as_ref().batch_size()
    }

    fn global_batch(&self, step: u64) -> Vec<usize> {
        self.as_ref().global_batch(step)
    }
}

impl BatchPlan for Sampler {
    fn batch_size(&self) -> usize {
        Sampler::batch_size(self)
    }

    fn global_batch(&self, step: u64) -> Vec<usize> {
        Sampler::global_batch(self, step)
    }
}

/// The global N×K batch sampler.
///
/// ```
/// use dml::data::sampler::Sampler;
/// let labels = [0, 0, 1, 1, 2, 2, 3, 3];
/// let s = Sampler::new(&labels, 2, 2, 7)?;
/// let batch = s.global_batch(0);
/// assert_eq!(batch.len(), 4);
/// assert_eq!(labels[batch[0]], labels[batch[1]]);
/// # Ok::<(), dml::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Dataset indices of each class, classes in ascending label order.
    classes: Vec<Vec<usize>>,
    n: usize,
    k: usize,
    seed: u64,
    len: usize,
    fingerprint: u64,
}

/// What identifies a sampler's stream of batches, saved with checkpoints: on resume,
/// [`Sampler::check_state`] refuses a state made from other labels, N, K or seed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SamplerState {
    /// Seed of the run.
    pub seed: u64,
    /// The next step to sample.
    pub step: u64,
    /// Number of images in the training split.
    pub dataset_len: u64,
    /// Number of classes with at least one image.
    pub num_classes: u64,
    /// A hash of every label, in dataset order.
    pub labels_hash: u64,
    /// N: classes per global batch.
    pub classes_per_batch: u64,
    /// K: images per class.
    pub samples_per_class: u64,
}

impl Sampler {
    /// A sampler of `classes_per_batch` (N) classes × `samples_per_class` (K) images.
    ///
    /// Fails with [`Error::Config`] naming `sampler.classes_per_batch` if N·K is zero
    /// or the labels have fewer than N classes.
    pub fn new(
        labels: &[u32],
        classes_per_batch: usize,
        samples_per_class: usize,
        seed: u64,
    ) -> Result<Sampler> {
        let (n, k) = (classes_per_batch, samples_per_class);
        if n == 0 || k == 0 {
            return Err(Error::Config(format!(
                "sampler.classes_per_batch × sampler.samples_per_class is {n} × {k}; both must be at least 1"
            )));
        }
        let max = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        let mut by_label: Vec<Vec<usize>> = vec![Vec::new(); max];
        for (i, &l) in labels.iter().enumerate() {
            by_label[l as usize].push(i);
        }
        let classes: Vec<Vec<usize>> = by_label.into_iter().filter(|c| !c.is_empty()).collect();
        if classes.len() < n {
            return Err(Error::Config(format!(
                "sampler.classes_per_batch is {n} but the training split has only {} classes; \
                 lower sampler.classes_per_batch to at most {}",
                classes.len(),
                classes.len()
            )));
        }
        let fingerprint = labels
            .iter()
            .fold(mix64(labels.len() as u64), |h, &l| mix64(h ^ l as u64));
        Ok(Sampler {
            classes,
            n,
            k,
            seed,
            len: labels.len(),
            fingerprint,
        })
    }

    /// A sampler over the dataset images `indices` only (e.g. the training classes left
    /// after a validation fold is taken out); batches hold dataset indices.
    ///
    /// ```
    /// use dml::data::sampler::Sampler;
    /// let labels = [0, 0, 1, 1, 2, 2, 3, 3];
    /// let s = Sampler::for_indices(&labels, vec![0, 1, 4, 5, 6, 7], 2, 2, 7)?;
    /// assert!(s.global_batch(0).iter().all(|&i| labels[i] != 1));
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn for_indices(
        labels: &[u32],
        indices: Vec<usize>,
        classes_per_batch: usize,
        samples_per_class: usize,
        seed: u64,
    ) -> Result<Sampler> {
        let sub: Vec<u32> = indices.iter().map(|&i| labels[i]).collect();
        let mut s = Sampler::new(&sub, classes_per_batch, samples_per_class, seed)?;
        for class in &mut s.classes {
            for i in class.iter_mut() {
                *i = indices[*i];
            }
        }
        Ok(s)
    }

    /// Batches per epoch, as PML's `MPerClassSampler` counts them:
    /// `max(1, dataset_len / (N·K))`.
    pub fn batches_per_epoch(&self) -> usize {
        (self.len / (self.n * self.k)).max(1)
    }

    /// N·K, the global batch size.
    pub fn batch_size(&self) -> usize {
        self.n * self.k
    }

    /// Number of classes with at least one image.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The N·K dataset indices of step `step`'s global batch, class-grouped: K
    /// consecutive indices per class, N distinct classes.
    pub fn global_batch(&self, step: u64) -> Vec<usize> {
        let bpe = self.batches_per_epoch() as u64;
        let epoch = step / bpe;
        let b = (step % bpe) as usize;
        let per_perm = self.classes.len() / self.n;
        let (perm, slot) = (b / per_perm, b % per_perm);
        let mut order: Vec<usize> = (0..self.classes.len()).collect();
        SplitMix64::keyed(&[self.seed, epoch, CLASS_TAG, perm as u64]).shuffle(&mut order);
        let mut out = Vec::with_capacity(self.n * self.k);
        for &c in &order[slot * self.n..(slot + 1) * self.n] {
            self.class_images(c, epoch, perm as u64, &mut out);
        }
        out
    }

    /// Appends K images of class `c` for use number `use_` of epoch `epoch`.
    fn class_images(&self, c: usize, epoch: u64, use_: u64, out: &mut Vec<usize>) {
        let images = &self.classes[c];
        let (n, k) = (images.len(), self.k);
        if n < k {
            let mut rng = SplitMix64::keyed(&[self.seed, epoch, IMAGE_TAG, c as u64, use_, 1]);
            out.extend((0..k).map(|_| images[rng.below(n)]));
            return;
        }
        let slots = (n / k) as u64;
        let (cycle, slot) = (use_ / slots, (use_ % slots) as usize);
        let mut order = images.clone();
        SplitMix64::keyed(&[self.seed, epoch, IMAGE_TAG, c as u64, cycle]).shuffle(&mut order);
        out.extend_from_slice(&order[slot * k..(slot + 1) * k]);
    }

    /// The state to save so that training resumes at `step`.
    pub fn state(&self, step: u64) -> SamplerState {
        SamplerState {
            seed: self.seed,
            step,
            dataset_len: self.len as u64,
            num_classes: self.classes.len() as u64,
            labels_hash: self.fingerprint,
            classes_per_batch: self.n as u64,
            samples_per_class: self.k as u64,
        }
    }

    /// Checks that `s` was saved by a sampler with the same labels, N, K and seed.
    pub fn check_state(&self, s: &SamplerState) -> Result<()> {
        let me = self.state(s.step);
        let fields = [
            ("train.seed", me.seed, s.seed),
            ("training split size", me.dataset_len, s.dataset_len),
            ("number of classes", me.num_classes, s.num_classes),
            ("labels hash", me.labels_hash, s.labels_hash),
            (
                "sampler.classes_per_batch",
                me.classes_per_batch,
                s.classes_per_batch,
            ),
            (
                "sampler.samples_per_class",
                me.samples_per_class,
                s.samples_per_class,
            ),
        ];
        for (name, now, saved) in fields {
            if now != saved {
                return Err(Error::Train(format!(
                    "the saved sampler state has {name} = {saved}, this run has {now}; \
                     resume with the training split and [sampler] settings of the saved run"
                )));
            }
        }
        Ok(())
    }
}

/// The contiguous slice of a `global_batch`-sized batch that rank `rank` of `world`
/// trains on.
///
/// ```
/// let r = dml::data::sampler::rank_slice(12, 1, 3)?;
/// assert_eq!(r, 4..8);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn rank_slice(global_batch: usize, rank: usize, world: usize) -> Result<Range<usize>> {
    if world == 0 || rank >= world {
        return Err(Error::Dist(format!(
            "rank {rank} is not in a world of size {world}"
        )));
    }
    if global_batch % world != 0 {
        let lower = global_batch / world * world;
        let upper = lower + world;
        let examples = match lower {
            0 => format!("{upper}"),
            _ => format!("{lower} or {upper}"),
        };
        return Err(Error::Config(format!(
            "the global batch sampler.classes_per_batch × sampler.samples_per_class = {global_batch} \
             is not divisible by the world size {world}; choose N×K divisible by {world} \
             (e.g. {examples}) or run with a number of processes that divides {global_batch}"
        )));
    }
    let per = global_batch / world;
    Ok(rank * per..(rank + 1) * per)
}
