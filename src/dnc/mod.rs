//! Divide and Conquer (Sanakoyeu et al., CVPR 2019; official code
//! CompVis/metric-learning-divide-and-conquer): the training set is reclustered every
//! few epochs into K clusters of the (L2-normalised) embedding, cluster `c` trains
//! slice `c` of the embedding, and batches alternate between the clusters.
//!
//! The pieces here are pure functions of their inputs, so every rank computes the same
//! clustering and the same batches from the same gathered features:
//! - [`hungarian`]: maximum-weight matching, to keep cluster ids stable across
//!   reclusterings;
//! - [`cluster`]: k-means + relabelling + dropping single-sample classes
//!   (`lib/clustering.py`);
//! - [`sampler`]: the cluster-aware N×K batch of each step;
//! - [`schedule`]: the phases of a run (when to recluster, which batches and which
//!   embedding slice each step trains), saved with checkpoints, and the sliced view of
//!   a head's output.
//!
//! The margin loss with D&C's sampler lives with the other losses
//! (`loss::margin`); the training loop only asks [`schedule::Schedule`] for its phases.

pub mod cluster;
pub mod hungarian;
pub mod sampler;
pub mod schedule;
