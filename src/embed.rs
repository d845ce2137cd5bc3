//! Embedding a whole dataset file with a model, in shards across ranks.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::comm::Comm;
use crate::config::Config;
use crate::data::loader::Loader;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Model;

/// Test-transform settings for embedding.
#[derive(Debug, Clone, Copy)]
pub struct EmbedOptions {
    /// Crop side fed to the model.
    pub image_size: usize,
    /// Shorter side before the centre crop.
    pub resize: usize,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Loader threads.
    pub workers: usize,
}

impl EmbedOptions {
    /// The test transform and batch size of a run's config.
    pub fn from_config(cfg: &Config) -> EmbedOptions {
        EmbedOptions {
            image_size: cfg.data.image_size,
            resize: cfg.data.resize,
            batch_size: cfg.eval.batch_size,
            workers: cfg.data.workers,
        }
    }
}

/// The files [`write_embeddings`] writes for `E.npy`: `E_labels.npy`, `E_paths.txt`
/// and `E_classes.txt`.
pub fn companion_files(out: &Path) -> [PathBuf; 3] {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    ["_labels.npy", "_paths.txt", "_classes.txt"]
        .map(|end| out.with_file_name(format!("{stem}{end}")))
}

/// Writes the embeddings of `ds` (`[N, D]`, file order) to `out` (`E.npy`, float32) and
/// beside it `E_labels.npy` (int64 labels), `E_paths.txt` (the source path of each row,
/// one per line) and `E_classes.txt` (line `l` is the name of label `l`). Newlines in a
/// path or name are written as `\n` so that line `i` is row `i`.
pub fn write_embeddings(out: &Path, emb: &Tensor, labels: &[i64], ds: &Dataset) -> Result<()> {
    let rows = emb.size()[0] as usize;
    let cols = emb.size()[1] as usize;
    let flat = Vec::<f32>::try_from(emb.contiguous().view(-1))?;
    crate::eval::npy::write_f32(out, &flat, [rows, cols])?;
    let [labels_path, paths_path, classes_path] = companion_files(out);
    crate::eval::npy::write_i64(&labels_path, labels)?;
    let line = |s: &str| format!("{}\n", s.replace('\n', "\\n").replace('\r', "\\r"));
    let sources = &ds.meta().sources;
    let paths: String = (0..rows)
        .map(|i| line(sources.get(i).map(String::as_str).unwrap_or("")))
        .collect();
    std::fs::write(&paths_path, paths).map_err(|e| Error::io(&paths_path, e))?;
    let classes: String = ds.meta().class_names.iter().map(|c| line(c)).collect();
    std::fs::write(&classes_path, classes).map_err(|e| Error::io(&classes_path, e))?;
    Ok(())
}

/// Embeds every image of `ds` (test transform, BatchNorm in eval mode). Rank r embeds a
/// contiguous shard; the shards are all-gathered, so every rank returns the whole
/// `[N, D]` float32 CPU tensor in file order, and the labels.
///
/// ```no_run
/// # fn demo(model: &dml::model::Model, comm: &dyn dml::comm::Comm, ds: std::sync::Arc<dml::data::Dataset>) -> dml::Result<()> {
/// let opts = dml::embed::EmbedOptions { image_size: 224, resize: 256, batch_size: 64, workers: 2 };
/// let (emb, labels) = dml::embed::embed_dataset(model, comm, ds, opts)?;
/// assert_eq!(emb.size()[0] as usize, labels.len());
/// # Ok(()) }
/// ```
pub fn embed_dataset(
    model: &Model,
    comm: &dyn Comm,
    ds: Arc<Dataset>,
    opts: EmbedOptions,
) -> Result<(Tensor, Vec<i64>)> {
    let all: Vec<usize> = (0..ds.len()).collect();
    embed_indices(model, comm, ds, &all, opts)
}

/// Embeds the images `indices` of `ds` (in that order), sharded across ranks like
/// [`embed_dataset`]; every rank returns the `[indices.len(), D]` embeddings and labels.
///
/// ```no_run
/// # fn demo(model: &dml::model::Model, comm: &dyn dml::comm::Comm, ds: std::sync::Arc<dml::data::Dataset>) -> dml::Result<()> {
/// let opts = dml::embed::EmbedOptions { image_size: 224, resize: 256, batch_size: 64, workers: 2 };
/// let (emb, labels) = dml::embed::embed_indices(model, comm, ds, &[0, 5, 9], opts)?;
/// assert_eq!((emb.size()[0], labels.len()), (3, 3));
/// # Ok(()) }
/// ```
pub fn embed_indices(
    model: &Model,
    comm: &dyn Comm,
    ds: Arc<Dataset>,
    indices: &[usize],
    opts: EmbedOptions,
) -> Result<(Tensor, Vec<i64>)> {
    let dim = model.embedding_dim();
    sharded(model, comm, ds, indices, opts, dim, |x| {
        model.forward(x, false)
    })
}

/// Like [`embed_indices`], but the trunk's average-pooled features `[n, C]` (the
/// penultimate features Divide and Conquer clusters).
///
/// ```no_run
/// # fn demo(model: &dml::model::Model, comm: &dyn dml::comm::Comm, ds: std::sync::Arc<dml::data::Dataset>) -> dml::Result<()> {
/// let opts = dml::embed::EmbedOptions { image_size: 224, resize: 256, batch_size: 64, workers: 2 };
/// let (f, _) = dml::embed::trunk_features(model, comm, ds, &[0, 5, 9], opts)?;
/// assert_eq!(f.size()[1] as usize, model.trunk_channels());
/// # Ok(()) }
/// ```
pub fn trunk_features(
    model: &Model,
    comm: &dyn Comm,
    ds: Arc<Dataset>,
    indices: &[usize],
    opts: EmbedOptions,
) -> Result<(Tensor, Vec<i64>)> {
    let dim = model.trunk_channels();
    sharded(model, comm, ds, indices, opts, dim, |x| {
        model.trunk_pooled(x)
    })
}

/// Runs `f` (no grad) over a shard of `indices` per rank and gathers `[n, dim]` rows.
fn sharded(
    model: &Model,
    comm: &dyn Comm,
    ds: Arc<Dataset>,
    indices: &[usize],
    opts: EmbedOptions,
    dim: usize,
    f: impl Fn(&Tensor) -> Tensor,
) -> Result<(Tensor, Vec<i64>)> {
    let n = indices.len();
    let world = comm.world();
    let shard = n.div_ceil(world).max(1);
    let start = (comm.rank() * shard).min(n);
    let end = (start + shard).min(n);
    // Pad short shards with the last image so that every rank gathers equal shapes.
    let mut mine: Vec<usize> = indices[start..end].to_vec();
    let pad = indices.last().copied().unwrap_or(0);
    while mine.len() < shard {
        mine.push(pad);
    }
    let labels: Vec<i64> = indices.iter().map(|&i| ds.label(i) as i64).collect();
    let device = model.device();
    let kind = model.kind();
    let mut loader = Loader::eval(
        ds,
        mine,
        opts.batch_size,
        opts.image_size,
        opts.resize,
        opts.workers,
    );
    let mut parts = Vec::new();
    while let Some(batch) = loader.try_next()? {
        let x = batch.to_tensor(device, kind);
        let e = tch::no_grad(|| f(&x));
        parts.push(e.to_kind(Kind::Float).to_device(Device::Cpu));
    }
    let local = if parts.is_empty() {
        Tensor::zeros([0, dim as i64], (Kind::Float, Device::Cpu))
    } else {
        Tensor::cat(&parts, 0)
    };
    let all = comm.all_gather(&local)?.narrow(0, 0, n as i64);
    Ok((all, labels))
}
