//! The training loop, top to bottom. Rank 0 owns every side effect (config, metrics,
//! checkpoints, progress); every rank runs the same steps on its slice of the batch.
pub mod checkpoint;
pub mod log;
pub mod step;

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use tch::{Device, Kind};

use crate::config::Config;
use crate::data::loader::{TrainLoader, TrainLoaderOptions};
use crate::data::sampler::{rank_slice, Sampler};
use crate::data::Dataset;
use crate::dist::{self, Comm};
use crate::error::{Error, Result};
use crate::loss::MetricLoss;
use crate::model::Model;
use crate::optim::{learning_rate, Adam, ParamGroup};
use checkpoint::LoopState;

/// Trains `cfg` into the run directory `run`; with `resume`, continues from its newest
/// checkpoint. Returns the number of steps completed.
///
/// ```no_run
/// # fn demo(comm: &dyn dml::dist::Comm) -> dml::Result<()> {
/// let cfg = dml::config::Config::load("configs/quickstart.toml".as_ref(), &[])?;
/// dml::train::run(&cfg, comm, "runs/quick".as_ref(), false)?;
/// # Ok(()) }
/// ```
pub fn run(cfg: &Config, comm: &dyn Comm, run: &Path, resume: bool) -> Result<usize> {
    let rank = comm.rank();
    let text = cfg.to_toml()?;
    let Setup { train, sampler, mut model, objective, device, kind, total } = setup(cfg, comm)?;
    let mut optim = Adam::new(param_groups(&model, cfg.optim.head_lr_mult), &cfg.optim);
    let mut start = 0;
    if resume {
        let state = checkpoint::load_latest(run, &mut model, &mut optim)?;
        if state.train_len != train.len() || state.seed != cfg.train.seed {
            return Err(Error::Train(format!("{}: checkpoint was made with another training file or seed", run.display())));
        }
        start = state.step;
    }
    for (_, mut var) in model.named_variables() {
        comm.broadcast(&mut var, 0)?;
    }
    if rank == 0 {
        std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
        checkpoint::write_synced(&run.join("config.toml"), text.as_bytes())?;
    }
    let loader = TrainLoader::new(train.clone(), sampler, loader_options(cfg, comm), start as u64, total as u64)?;
    let mut log = log::RunLog::open(run, rank, start, total)?;
    let bucket = (cfg.dist.bucket_mb * (1 << 20) as f64) as usize;
    let save = |model: &Model, optim: &Adam, step: usize| -> Result<()> {
        let state = LoopState { step, seed: cfg.train.seed, train_len: train.len() };
        match rank {
            0 => checkpoint::save(run, model, optim, &state, cfg.train.keep_checkpoints),
            _ => Ok(()),
        }
    };
    for batch in loader {
        let step = batch.step as usize;
        let lr = learning_rate(&cfg.lr, cfg.optim.lr, step);
        optim.zero_grad();
        let images = batch.to_tensor(device, kind);
        let labels = tch::Tensor::from_slice(&batch.labels).to_device(device);
        let out = step::forward_backward(&model, objective.as_ref(), comm, &images, &labels, bucket, step + 1)?;
        optim.step(lr)?;
        let stats = serde_json::to_value(&out.stats).unwrap_or(json!({}));
        log.step(step + 1, out.loss, lr, cfg.global_batch(), stats)?;
        let every = cfg.train.checkpoint_every;
        if (every > 0 && (step + 1) % every == 0) || step + 1 == total {
            save(&model, &optim, step + 1)?;
        }
    }
    log.finish();
    if rank == 0 {
        model.save(&run.join("model.safetensors"))?;
    }
    comm.barrier()?;
    Ok(total)
}

/// What a run is built from, identically on every rank.
pub struct Setup {
    /// The memory-mapped training split.
    pub train: Arc<Dataset>,
    /// The global N×K sampler.
    pub sampler: Sampler,
    /// The model, initialised from `train.seed`.
    pub model: Model,
    /// Miner + loss over the gathered global batch.
    pub objective: Box<dyn MetricLoss>,
    /// This rank's device.
    pub device: Device,
    /// Parameter kind.
    pub kind: Kind,
    /// Total steps of the run.
    pub total: usize,
}

/// Checks that every rank has the same config and that the world size divides the
/// batch, then opens the data and builds the model and objective.
pub fn setup(cfg: &Config, comm: &dyn Comm) -> Result<Setup> {
    dist::check_same_everywhere(comm, "the resolved config", cfg.to_toml()?.as_bytes())?;
    rank_slice(cfg.global_batch(), comm.rank(), comm.world())?;
    let train = Arc::new(Dataset::open(Path::new(&cfg.data.train))?);
    let sampler = Sampler::new(train.labels(), cfg.sampler.classes_per_batch, cfg.sampler.samples_per_class, cfg.train.seed)?;
    let total = match cfg.train.epochs {
        0 => cfg.train.steps,
        e => e * sampler.batches_per_epoch(),
    };
    let device = crate::device::select(&cfg.train, comm.local_rank())?;
    let kind = crate::device::kind(cfg.train.precision, device)?;
    let model = Model::new(&cfg.model, device, kind, cfg.train.seed)?;
    let objective = crate::loss::build(&cfg.loss, &cfg.miner)?;
    Ok(Setup { train, sampler, model, objective, device, kind, total })
}

/// The training loader settings of this rank.
pub fn loader_options(cfg: &Config, comm: &dyn Comm) -> TrainLoaderOptions {
    TrainLoaderOptions {
        image_size: cfg.data.image_size,
        crop_scale: cfg.data.crop_scale,
        crop_ratio: cfg.data.crop_ratio,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
        seed: cfg.train.seed,
        rank: comm.rank(),
        world: comm.world(),
    }
}

/// Trunk parameters at the base learning rate, head parameters at `head_lr_mult` × it.
fn param_groups(model: &Model, head_lr_mult: f64) -> Vec<ParamGroup> {
    let (trunk, head): (Vec<_>, Vec<_>) = model
        .trainable()
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .partition(|(n, _)| n.starts_with("trunk."));
    vec![
        ParamGroup { name: "trunk".into(), params: trunk, lr_mult: 1.0 },
        ParamGroup { name: "head".into(), params: head, lr_mult: head_lr_mult },
    ]
}
