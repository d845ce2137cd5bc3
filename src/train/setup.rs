//! What every training program is built from — `train::run`, `lr_find`,
//! `reality_check` (through `run`) and the BatchNorm update of SWA: a [`Trainer`] built
//! once per process, identically on every rank, and what it hands out (the step's
//! environment, loaders, the optimiser).
use std::path::Path;
use std::sync::Arc;

use crate::comm::{self, Comm};
use crate::config::{Config, DistillKind, HeadKind, Precision};
use crate::data::loader::{Loader, TrainLoaderOptions};
use crate::data::sampler::{rank_slice, BatchPlan, Sampler};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::loss::Objective;
use crate::model::Model;
use crate::optim::{Adam, ParamGroup};

use super::step::StepEnv;
use super::validate::Validation;

/// A run's data, model and objective, the same on every rank.
pub struct Trainer<'a> {
    /// The config with the values resolved from the data (`model.classes`,
    /// `lr.milestones` from `lr.milestone_epochs`) and absolute paths.
    pub cfg: Config,
    /// This process's communicator.
    pub comm: &'a dyn Comm,
    /// The memory-mapped training split.
    pub train: Arc<Dataset>,
    /// The training images the sampler draws from (all but the validation classes).
    pub indices: Vec<usize>,
    /// The global N×K sampler.
    pub sampler: Sampler,
    /// The model, initialised from `train.seed`.
    pub model: Model,
    /// The objective over the gathered global batch.
    pub objective: Objective,
    /// The frozen teacher of `distill.teacher`.
    pub teacher: Option<Model>,
    /// Total steps of the run.
    pub total: usize,
    /// Evaluation during training (`eval.every` > 0).
    pub validation: Option<Validation>,
}

impl<'a> Trainer<'a> {
    /// Checks that every rank has the same config and that the world size divides the
    /// batch, then opens the data and builds the model and objective.
    pub fn new(cfg: &Config, comm: &'a dyn Comm) -> Result<Trainer<'a>> {
        let cfg = &cfg.with_absolute_paths()?;
        comm::check_same_everywhere(comm, "the resolved config", cfg.to_toml()?.as_bytes())?;
        rank_slice(cfg.global_batch(), comm.rank(), comm.world())?;
        if let Some(memory) = crate::device::memory_total() {
            cfg.check_memory(comm.world(), comm.local_world(), memory)?;
        }
        let train = Arc::new(Dataset::open(Path::new(&cfg.data.train))?);
        let (validation, train_indices) = Validation::from_config(cfg, &train)?;
        let (n, k) = (cfg.sampler.classes_per_batch, cfg.sampler.samples_per_class);
        let sampler =
            Sampler::for_indices(train.labels(), train_indices.clone(), n, k, cfg.train.seed)?;
        let total = match cfg.train.epochs {
            0 => cfg.train.steps,
            e => e * sampler.batches_per_epoch(),
        };
        let mut cfg =
            resolve_milestones(resolve_classes(cfg, &train)?, sampler.batches_per_epoch());
        let device = crate::device::select(&cfg.train, comm.local_rank())?;
        let kind = crate::device::kind(cfg.train.precision, device)?;
        let model = Model::new(&cfg.model, device, kind, cfg.train.seed)?;
        if !cfg.model.pretrained.is_empty() && cfg.model.pretrained_sha256.is_empty() {
            // Recorded once the weights are loaded; a resumed run's model checks against it.
            let path = Path::new(&cfg.model.pretrained);
            cfg.model.pretrained_sha256 = crate::model::weights::sha256_file(path)?;
        }
        let objective = Objective::build(&cfg)?;
        let teacher = match cfg.distill.teacher.as_str() {
            "" => None,
            dir => Some(load_teacher(Path::new(dir), comm)?),
        };
        if let Some(t) = &teacher {
            check_teacher_dim(&cfg, model.embedding_dim(), t.embedding_dim())?;
        }
        Ok(Trainer {
            cfg,
            comm,
            train,
            indices: train_indices,
            sampler,
            model,
            objective,
            teacher,
            total,
            validation,
        })
    }

    /// Adam (or AdamW) over the model's trainable weights: the trunk's at `optim.lr`, the
    /// head's at `optim.head_lr_mult` × it.
    pub fn optimizer(&self) -> Adam {
        Adam::new(
            param_groups(&self.model, self.cfg.optim.head_lr_mult),
            &self.cfg.optim,
        )
    }

    /// Rank 0's weights and buffers on every rank (identical initialisation or resume).
    pub fn broadcast_model(&self) -> Result<()> {
        for (_, mut var) in self.model.named_variables() {
            self.comm.broadcast(&mut var, 0)?;
        }
        Ok(())
    }

    /// This rank's loader of the batches of steps `start..end` (0-based) of `plan`. On
    /// the CPU the workers also normalise each batch, bit for bit as
    /// [`Batch::to_tensor`](crate::data::loader::Batch::to_tensor) would, into buffers
    /// the loop hands back ([`Loader::recycle`]).
    pub fn loader(&self, plan: impl BatchPlan, start: usize, end: usize) -> Result<Loader> {
        let mut opts = loader_options(&self.cfg, self.comm);
        opts.prepare = (self.model.device() == tch::Device::Cpu).then_some(self.model.kind());
        Loader::train(self.train.clone(), plan, opts, start as u64, end as u64)
    }

    /// What every training step shares (bucket size, overlap, the gradient reducer);
    /// decides autocast once (see `use_autocast`). No cross-batch memory: the loop
    /// that keeps one sets [`StepEnv::memory`].
    pub fn env(&self) -> StepEnv<'_> {
        let (cfg, model) = (&self.cfg, &self.model);
        let bucket_bytes = bucket_bytes(cfg, model.device());
        StepEnv {
            model,
            objective: &self.objective,
            comm: self.comm,
            teacher: self.teacher.as_ref(),
            bucket_bytes,
            grads: comm::GradSync::new(bucket_bytes, cfg.dist.overlap),
            autocast: use_autocast(cfg, model),
            max_grad_norm: cfg.train.max_grad_norm,
            grad_norm_every: cfg.train.log_every,
            memory: None,
            memory_start: cfg.xbm.start,
        }
    }
}

/// True for `train.precision = "bf16"` on CUDA; sets CUDA autocast to bfloat16 on
/// this thread.
fn use_autocast(cfg: &Config, model: &Model) -> bool {
    let on = cfg.train.precision == Precision::Bf16 && model.device().is_cuda();
    if on {
        crate::sys::set_cuda_autocast_bf16(true);
    }
    on
}

/// `dist.bucket_mb` in bytes; 0 chooses by device (1 MiB on the CPU, 25 MiB on CUDA).
fn bucket_bytes(cfg: &Config, device: tch::Device) -> usize {
    let mb = match cfg.dist.bucket_mb {
        mb if mb > 0.0 => mb,
        _ if device.is_cuda() => 25.0,
        _ => 1.0,
    };
    ((mb * (1 << 20) as f64) as usize).max(1)
}

/// The model of `cfg` on this rank's device with the weights of a safetensors file
/// (a finished run's `model.safetensors`, `best/model.safetensors` or a checkpoint's).
/// The file holds every weight, so `model.pretrained` is not read: a run evaluates
/// after its initial weights moved.
///
/// ```no_run
/// # fn demo(comm: &dyn dml::comm::Comm) -> dml::Result<()> {
/// let cfg = dml::config::Config::load("runs/quick/config.toml".as_ref(), &[])?;
/// let model = dml::train::load_model(&cfg, comm, "runs/quick/model.safetensors".as_ref())?;
/// # Ok(()) }
/// ```
pub fn load_model(cfg: &Config, comm: &dyn Comm, weights: &Path) -> Result<Model> {
    let device = crate::device::select(&cfg.train, comm.local_rank())?;
    let kind = crate::device::kind(cfg.train.precision, device)?;
    let architecture = crate::config::ModelConfig {
        pretrained: String::new(),
        pretrained_sha256: String::new(),
        ..cfg.model.clone()
    };
    let mut model = Model::new(&architecture, device, kind, cfg.train.seed)?;
    model.load(weights)?;
    Ok(model)
}

/// `cfg` with `model.classes` taken from the training split when a classifier is
/// needed (Group Loss, the BFE and CGD heads) and none was given; a classifier too
/// small for the split's labels is an error here, once, rather than in every step.
fn resolve_classes(cfg: &Config, train: &Dataset) -> Result<Config> {
    let mut cfg = cfg.clone();
    let labels = train
        .labels()
        .iter()
        .map(|&l| l as usize + 1)
        .max()
        .unwrap_or(0);
    let needs = cfg.loss.name == crate::config::LossName::Group
        || matches!(cfg.model.head, HeadKind::Bfe | HeadKind::Cgd);
    if needs && cfg.model.classes == 0 {
        cfg.model.classes = labels;
    }
    if cfg.model.classes > 0 && cfg.model.classes < labels {
        return Err(Error::Config(format!(
            "model.classes is {}, but {} has labels up to {}: set model.classes to at least \
             {labels} (or 0 to take it from data.train)",
            cfg.model.classes,
            train.path().display(),
            labels - 1
        )));
    }
    Ok(cfg)
}

/// `cfg` with `lr.milestone_epochs` converted to `lr.milestones` in steps: epoch `e`
/// starts at step `e · batches_per_epoch` (the sampler's epoch length). The resolved
/// config (written to `RUN/config.toml`, read on resume) then holds steps only.
fn resolve_milestones(mut cfg: Config, batches_per_epoch: usize) -> Config {
    let epochs = std::mem::take(&mut cfg.lr.milestone_epochs);
    if !epochs.is_empty() {
        cfg.lr.milestones = epochs.iter().map(|e| e * batches_per_epoch).collect();
    }
    cfg
}

/// The frozen teacher of a finished run directory: its `config.toml` and
/// `model.safetensors`, on this rank's device.
fn load_teacher(dir: &Path, comm: &dyn Comm) -> Result<Model> {
    let config = dir.join("config.toml");
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(Error::Config(format!(
            "distill.teacher = {}: {} does not exist; point it at a finished dml run",
            dir.display(),
            weights.display()
        )));
    }
    let tcfg = Config::load(&config, &[])?;
    let model = load_model(&tcfg, comm, &weights)?;
    for (_, t) in model.named_variables() {
        let _ = t.set_requires_grad(false);
    }
    Ok(model)
}

/// `distill.kind = "absolute"` compares the student's and the teacher's test embeddings
/// one to one: their sizes must agree (checked here, before the first step).
fn check_teacher_dim(cfg: &Config, student: usize, teacher: usize) -> Result<()> {
    if cfg.distill.kind == DistillKind::Absolute && student != teacher {
        // The pool and BFE heads' sizes do not follow model.embedding_dim.
        let resize = match cfg.model.head {
            HeadKind::Pool | HeadKind::Bfe => "choose a student head and trunk of that size",
            _ => "set model.embedding_dim to that size",
        };
        return Err(Error::Config(format!(
            "distill.kind = \"absolute\" compares embeddings one to one, but the student \
             (model.head = \"{}\") has {student} dimensions and the teacher in {} has {teacher}: \
             {resize} ({teacher}), or use distill.kind = \"relative\"",
            crate::config::head_name(cfg.model.head),
            cfg.distill.teacher
        )));
    }
    Ok(())
}

/// The training loader settings of this rank.
pub fn loader_options(cfg: &Config, comm: &dyn Comm) -> TrainLoaderOptions {
    TrainLoaderOptions {
        image_size: cfg.data.image_size,
        flip: cfg.data.flip,
        color_jitter: cfg.data.color_jitter(),
        grayscale_p: cfg.data.grayscale_p,
        crop_scale: cfg.data.crop_scale,
        crop_ratio: cfg.data.crop_ratio,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
        seed: cfg.train.seed,
        rank: comm.rank(),
        world: comm.world(),
        prepare: None,
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
        ParamGroup {
            name: "trunk".into(),
            params: trunk,
            lr_mult: 1.0,
        },
        ParamGroup {
            name: "head".into(),
            params: head,
            lr_mult: head_lr_mult,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestone_epochs_become_steps_of_the_sampler_epoch() {
        let mut cfg = Config::default();
        cfg.lr.milestone_epochs = vec![2, 5];
        let cfg = resolve_milestones(cfg, 7);
        // Epoch e starts at step 7·e: 14 and 35; the epoch list is consumed.
        assert_eq!(cfg.lr.milestones, vec![14, 35]);
        assert!(cfg.lr.milestone_epochs.is_empty());
        // Milestones given in steps stay as they are.
        let mut cfg = Config::default();
        cfg.lr.milestones = vec![3];
        assert_eq!(resolve_milestones(cfg, 7).lr.milestones, vec![3]);
    }
}
