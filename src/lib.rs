//! dml: a deep metric learning trainer that runs one process per GPU under `mpirun`,
//! mines over the all-gathered global batch with exact gradients, and reads
//! memory-mapped preprocessed datasets.
//!
//! The module tree follows the data flow of one step (`docs/architecture.md`):
//! [`data`] (dataset files, sampler, loader) → [`model`] (the head's local half) →
//! [`comm`] (the all-gather) → [`model::head`] (the global half) → [`loss`] →
//! [`train::step`] (backward, gradients reduced during it) → [`optim`]; [`config`]
//! is read and checked first, [`train`] runs the loop, [`eval`] scores the embedding.
//!
//! `unsafe` code is refused everywhere except in [`sys`], the one module of foreign
//! calls (MPI/NCCL/CUDA symbols, signals, file locks).
#![deny(unsafe_code)]

pub mod comm;
pub mod config;
pub mod data;
pub mod device;
pub mod dnc;
pub mod embed;
pub mod error;
pub mod eval;
pub mod loss;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod rng;
#[allow(unsafe_code)]
pub mod sys;
pub mod train;

pub use error::{Error, Result};
