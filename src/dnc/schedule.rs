//! Divide and Conquer in the training loop (Sanakoyeu et al. 2019;
//! CompVis/metric-learning-divide-and-conquer): training runs in phases. Every
//! `dnc.recluster_every` steps until `dnc.final_step`, the training images are embedded
//! in shards on all ranks (the trunk's pooled features), rank 0 clusters them into K
//! clusters matched to the previous clustering and broadcasts the result, and the
//! phase's batches come from [`ClusterSampler`]: step `t` draws from cluster `t mod K`
//! and its metric loss sees slice `t mod K` of the embedding ([`slice_of_step`]); from
//! `dnc.full_embedding_step` on (when set) the loss sees the whole embedding while the
//! batches still come from the clusters, as the official code does from epoch
//! `finetune_epoch · 8 / 19`. From `dnc.final_step` on, the plain N×K sampler trains
//! the whole embedding.
//!
//! The clustering of the current phase is saved with every checkpoint, so resuming
//! inside a phase continues with the same clusters (resume determinism).
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::comm::Comm;
use crate::config::{Config, DncConfig};
use crate::data::sampler::{BatchPlan, Sampler};
use crate::data::Dataset;
use crate::dnc::cluster::recluster;
use crate::dnc::sampler::ClusterSampler;
use crate::embed::{trunk_features, EmbedOptions};
use crate::error::{Error, Result};
use crate::eval::kmeans::{KMeansInit, KMeansOptions};
use crate::model::{HeadOutput, Model};
use crate::rng::mix64;

/// The embedding slice that the loss of 0-based step `t` sees, as (index, count), in a
/// phase with `slices` slices: slice `t mod K` before `dnc.full_embedding_step` (when
/// set), else `None`, the whole embedding.
///
/// ```
/// let mut cfg = dml::config::DncConfig::default();
/// cfg.full_embedding_step = 5;
/// assert_eq!(dml::dnc::schedule::slice_of_step(&cfg, 4, 2), Some((0, 2)));
/// assert_eq!(dml::dnc::schedule::slice_of_step(&cfg, 5, 2), None);
/// ```
pub fn slice_of_step(cfg: &DncConfig, t: usize, slices: usize) -> Option<(usize, usize)> {
    let whole = cfg.full_embedding_step > 0 && t >= cfg.full_embedding_step;
    (slices > 1 && !whole).then_some((t % slices, slices))
}

/// The clustering of the phase in progress, saved with checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DncState {
    /// First step (0-based) of the phase.
    pub phase_start: usize,
    /// Cluster of every image of the training file, −1 for none.
    pub clusters: Vec<i64>,
}

/// What the loop runs next: the batches of steps `start..end` and the embedding slice
/// each step trains ([`Slicing::slice_of`]). Without D&C one phase covers the whole run
/// with the plain sampler and the whole embedding.
pub struct Phase {
    /// The batches.
    pub plan: Box<dyn BatchPlan>,
    /// One past the last step (0-based) of the phase.
    pub end: usize,
    /// Which embedding slice each step of the phase trains.
    pub slicing: Slicing,
}

/// How a phase's steps slice the embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slicing {
    /// K during the clustered stage, 1 in the final stage or without D&C.
    pub slices: usize,
    /// `dnc.full_embedding_step` (0: unset).
    pub full_embedding_step: usize,
}

impl Slicing {
    /// The embedding slice, (index, count), that the loss of 0-based step `t` sees;
    /// `None` for the whole embedding ([`slice_of_step`]).
    pub fn slice_of(&self, t: usize) -> Option<(usize, usize)> {
        let cfg = DncConfig {
            full_embedding_step: self.full_embedding_step,
            ..DncConfig::default()
        };
        slice_of_step(&cfg, t, self.slices)
    }
}

/// Divide and Conquer's view of a head output: every embedding restricted to slice `c`
/// of `k` equal slices of its dimensions, L2-normalised again
/// (CompVis/metric-learning-divide-and-conquer, lib/model.py). `k = 1` leaves the
/// output unchanged.
pub fn slice_output(out: HeadOutput, c: usize, k: usize) -> Result<HeadOutput> {
    if k <= 1 {
        return Ok(out);
    }
    let embeddings = out
        .embeddings
        .iter()
        .map(|e| {
            let d = e.size()[1] as usize;
            if d % k != 0 || c >= k {
                return Err(Error::Config(format!(
                    "dnc.clusters: is {k}, must divide the embedding dimension {d}"
                )));
            }
            let w = (d / k) as i64;
            Ok(crate::ops::normalize(&e.narrow(1, c as i64 * w, w)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(HeadOutput {
        embeddings,
        logits: out.logits,
        test: out.test,
    })
}

/// The cluster sampler as a [`BatchPlan`].
struct ClusterPlan {
    sampler: ClusterSampler,
    batch: usize,
}

impl BatchPlan for ClusterPlan {
    fn batch_size(&self) -> usize {
        self.batch
    }

    fn global_batch(&self, step: u64) -> Vec<usize> {
        self.sampler.global_batch(step).1
    }
}

/// The phase schedule of a run.
pub struct Schedule {
    /// The clustering in use (saved with checkpoints).
    pub state: Option<DncState>,
    train: Arc<Dataset>,
    indices: Vec<usize>,
    sampler: Sampler,
}

impl Schedule {
    /// A schedule over the images `indices` of `train` (the plain `sampler`'s), resumed
    /// from `state` if given.
    pub fn new(
        train: Arc<Dataset>,
        indices: Vec<usize>,
        sampler: Sampler,
        state: Option<DncState>,
    ) -> Schedule {
        Schedule {
            state,
            train,
            indices,
            sampler,
        }
    }

    /// The phase that starts at step `start` (0-based): the plain `sampler` without
    /// D&C or in the final stage; otherwise the clustering saved for this phase (on
    /// resume) or a new one computed with `model` now.
    pub fn phase(
        &mut self,
        start: usize,
        total: usize,
        cfg: &Config,
        model: &Model,
        comm: &dyn Comm,
    ) -> Result<Phase> {
        let d = &cfg.dnc;
        if d.clusters <= 1 || start >= d.final_step {
            self.state = None;
            return Ok(Phase {
                plan: Box::new(self.sampler.clone()),
                end: total,
                slicing: Slicing {
                    slices: 1,
                    full_embedding_step: d.full_embedding_step,
                },
            });
        }
        let boundary = (start / d.recluster_every + 1) * d.recluster_every;
        let end = boundary.min(d.final_step).min(total);
        let phase_start = start - start % d.recluster_every;
        let reuse = self
            .state
            .as_ref()
            .is_some_and(|s| s.phase_start == phase_start && start > phase_start);
        if !reuse {
            let previous = self.state.as_ref().map(|s| to_options(&s.clusters));
            let clusters = self.cluster(cfg, model, comm, previous, start)?;
            self.state = Some(DncState {
                phase_start,
                clusters,
            });
        }
        let clusters = to_options(self.state.as_ref().map_or(&[][..], |s| &s.clusters[..]));
        let (n, k) = (cfg.sampler.classes_per_batch, cfg.sampler.samples_per_class);
        let seed = mix64(cfg.train.seed ^ (phase_start as u64).wrapping_mul(0x9e37));
        let sampler = ClusterSampler::new(self.train.labels(), &clusters, d.clusters, n, k, seed)
            .map_err(|e| match e {
            Error::Train(m) => Error::Train(format!(
                "{m}: lower dnc.clusters or sampler.classes_per_batch"
            )),
            other => other,
        })?;
        Ok(Phase {
            plan: Box::new(ClusterPlan {
                sampler,
                batch: n * k,
            }),
            end,
            slicing: Slicing {
                slices: d.clusters,
                full_embedding_step: d.full_embedding_step,
            },
        })
    }

    /// Embeds the training images on all ranks, clusters them on rank 0 and broadcasts
    /// the cluster of every image of the file (−1 for none).
    fn cluster(
        &self,
        cfg: &Config,
        model: &Model,
        comm: &dyn Comm,
        previous: Option<Vec<Option<usize>>>,
        step: usize,
    ) -> Result<Vec<i64>> {
        let train = &self.train;
        let opts = EmbedOptions::from_config(cfg);
        let (features, _) = trunk_features(model, comm, train.clone(), &self.indices, opts)?;
        let mut full = Tensor::full([train.len() as i64], -1i64, (Kind::Int64, tch::Device::Cpu));
        if comm.rank() == 0 {
            let labels: Vec<u32> = self.indices.iter().map(|&i| train.label(i)).collect();
            let prev: Option<Vec<Option<usize>>> =
                previous.map(|p| self.indices.iter().map(|&i| p[i]).collect());
            let kopts = KMeansOptions {
                restarts: cfg.dnc.kmeans_restarts,
                iterations: cfg.dnc.kmeans_iterations,
                seed: mix64(cfg.train.seed ^ step as u64),
                init: KMeansInit::PlusPlus,
            };
            let assign = recluster(
                &features,
                &labels,
                cfg.dnc.clusters,
                prev.as_deref(),
                &kopts,
            )?;
            let idx =
                Tensor::from_slice(&self.indices.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let vals: Vec<i64> = assign.iter().map(|c| c.map_or(-1, |c| c as i64)).collect();
            full = full.index_put(&[Some(idx)], &Tensor::from_slice(&vals), false);
        }
        comm.broadcast(&mut full, 0)?;
        Ok(Vec::<i64>::try_from(&full)?)
    }
}

/// −1 → `None`, c → `Some(c)`.
fn to_options(c: &[i64]) -> Vec<Option<usize>> {
    c.iter().map(|&v| (v >= 0).then_some(v as usize)).collect()
}
