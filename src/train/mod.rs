//! The training loop, top to bottom. Rank 0 owns every side effect (config, metrics,
//! checkpoints, progress); every rank runs the same steps on its slice of the batch.
pub mod bn_update;
pub mod checkpoint;
pub mod dnc;
pub mod lock;
pub mod log;
pub mod lr_find;
pub mod reality_check;
pub mod step;
pub mod validate;

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::config::{BnMode, Config, HeadKind, Precision};
use crate::data::loader::{Loader, TrainLoaderOptions};
use crate::data::sampler::{rank_slice, Sampler};
use crate::data::Dataset;
use crate::dist::{self, Comm};
use crate::error::{Error, Result};
use crate::loss::xbm::CrossBatchMemory;
use crate::loss::Objective;
use crate::model::Model;
use crate::optim::{learning_rate, Adam, ParamGroup, Swa};
use checkpoint::LoopState;
use validate::Validation;

/// How a [`run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// All steps trained; the number of steps.
    Finished(usize),
    /// A rank received SIGTERM or SIGUSR1: every rank stopped after `step`, whose
    /// checkpoint is written; `dml train --resume RUN` continues from it.
    Stopped {
        /// The last step trained and checkpointed.
        step: usize,
        /// The signal, as seen by rank 0 (`"a signal on another rank"` if not its own).
        signal: String,
    },
}

/// The exit status of `dml train` stopped by a signal (EX_TEMPFAIL): requeue and resume.
pub const EXIT_STOPPED: i32 = 75;

/// Trains `cfg` into the run directory `run`; with `resume`, continues from its newest
/// checkpoint. SIGTERM or SIGUSR1 on any rank stops every rank after the current step
/// with a checkpoint ([`RunEnd::Stopped`]; one tiny all-reduce per step agrees on it).
///
/// ```no_run
/// # fn demo(comm: &dyn dml::dist::Comm) -> dml::Result<()> {
/// let cfg = dml::config::Config::load("configs/quickstart.toml".as_ref(), &[])?;
/// dml::train::run(&cfg, comm, "runs/quick".as_ref(), false)?;
/// # Ok(()) }
/// ```
pub fn run(cfg: &Config, comm: &dyn Comm, run: &Path, resume: bool) -> Result<RunEnd> {
    let _lock = match comm.rank() {
        0 => Some(claim_run_dir(run, resume)?),
        _ => None,
    };
    let Setup {
        cfg,
        train,
        indices,
        sampler,
        mut model,
        objective,
        teacher,
        total,
        validation,
    } = setup(cfg, comm)?;
    let cfg = &cfg;
    let mut lp = Loop {
        optim: Adam::new(param_groups(&model, cfg.optim.head_lr_mult), &cfg.optim),
        swa: (cfg.swa.start > 0).then(|| Swa::new(model.trainable())),
        validation,
        weight_watch: None,
    };
    let mut memory = (cfg.xbm.size > 0).then(|| CrossBatchMemory::new(&cfg.xbm));
    let (start, dnc_state) = match resume {
        true => lp.resume(run, &mut model, memory.as_mut(), &sampler)?,
        false => (0, None),
    };
    let memory = memory.map(RefCell::new);
    broadcast_model(&model, comm)?;
    lp.weight_watch = Some((weights_norm(&model)?, cfg.train.warn_weight_growth));
    if comm.rank() == 0 {
        std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
        checkpoint::write_synced(&run.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    }
    let mut log = log::RunLog::open(run, comm.rank(), start, total, cfg.train.log_every)?;
    let mut schedule = dnc::Schedule::new(train.clone(), indices, sampler.clone(), dnc_state);
    let mut env = step_env(cfg, &model, &objective, comm, teacher.as_ref());
    env.memory = memory.as_ref();
    let mut next = start;
    while next < total {
        let phase = schedule.phase(next, total, cfg, &model, comm)?;
        let slices = phase.slices;
        let mut opts = loader_options(cfg, comm);
        // On the CPU the workers also normalise each batch, into recycled buffers.
        opts.prepare = (model.device() == tch::Device::Cpu).then_some(model.kind());
        let mut loader = Loader::train(
            train.clone(),
            phase.plan,
            opts,
            next as u64,
            phase.end as u64,
        )?;
        while let Some(batch) = loader.try_next()? {
            let step = batch.step as usize + 1; // optimiser steps completed after this one
            let lr = learning_rate(&cfg.lr, cfg.optim.lr, step - 1);
            let slice = dnc::slice_of_step(&cfg.dnc, step - 1, slices);
            let out = step::train_step(&env, &mut lp.optim, &batch, lr, step, slice)
                .map_err(|e| with_checkpoint_note(e, run))?;
            loader.recycle(batch);
            let extra = lp.after_step(cfg, comm, run, &model, step, total, &out)?;
            log.step(step, out.loss, lr, cfg.global_batch(), extra)?;
            let state = LoopState {
                step,
                sampler: sampler.state(step as u64),
                dnc: schedule.state.clone(),
            };
            let mem = memory.as_ref();
            lp.checkpoint(cfg, comm, run, &model, mem, &state, total, false)?;
            if let Some(signal) = stop_requested(comm)? {
                lp.checkpoint(cfg, comm, run, &model, mem, &state, total, true)?;
                comm.barrier()?;
                return Ok(RunEnd::Stopped { step, signal });
            }
        }
        next = phase.end;
    }
    log.finish();
    if let Some(avg) = lp.swa.as_ref().filter(|a| a.n_averaged() > 0) {
        model.set_trainable(avg.averaged())?;
        if cfg.model.bn == BnMode::Train {
            bn_update::reestimate_bn(&model, cfg, comm, train.clone(), sampler.clone())?;
        }
    }
    if comm.rank() == 0 {
        let tmp = run.join("model.safetensors.tmp");
        model.save(&tmp)?;
        checkpoint::publish_file(&tmp, &run.join("model.safetensors"))?;
    }
    comm.barrier()?;
    Ok(RunEnd::Finished(total))
}

/// Locks the run directory for this process; a new run (not `resume`) must not find
/// checkpoints there.
fn claim_run_dir(run: &Path, resume: bool) -> Result<lock::RunLock> {
    let lock = lock::RunLock::acquire(run)?;
    if !resume && !checkpoint::list(run)?.is_empty() {
        return Err(Error::Input(format!(
            "{} already holds checkpoints: use --resume {} or another --out",
            run.display(),
            run.display()
        )));
    }
    Ok(lock)
}

/// A failed step's error with what is on disk: the newest checkpoint to resume from,
/// or that there is none yet.
fn with_checkpoint_note(e: Error, run: &Path) -> Error {
    let Error::Train(msg) = e else { return e };
    let newest = checkpoint::list(run).ok().and_then(|s| s.into_iter().max());
    Error::Train(match newest {
        Some(step) => format!(
            "{msg}; the newest checkpoint, {}, is kept (dml train --resume {} continues from it)",
            checkpoint::dir_for(run, step).display(),
            run.display()
        ),
        None => format!("{msg}; no checkpoint was written yet"),
    })
}

/// Whether any rank received a stop signal (an all-reduce of one flag, so that every
/// rank stops after the same step), with the signal's name as rank 0 saw it.
fn stop_requested(comm: &dyn Comm) -> Result<Option<String>> {
    let mine = crate::sys::stop_signal();
    Ok((dist::ranks_with(comm, mine.is_some())? > 0)
        .then(|| mine.unwrap_or("a signal on another rank").to_string()))
}

/// The state the loop carries from step to step besides the model.
struct Loop {
    optim: Adam,
    swa: Option<Swa>,
    validation: Option<Validation>,
    /// The weights' norm when this process started (or resumed) the run, and the growth
    /// over it that the next warning waits for.
    weight_watch: Option<(f64, f64)>,
}

impl Loop {
    /// Loads the newest checkpoint of `run`: the step to continue from and the D&C
    /// clustering in use.
    fn resume(
        &mut self,
        run: &Path,
        model: &mut Model,
        memory: Option<&mut CrossBatchMemory>,
        sampler: &Sampler,
    ) -> Result<(usize, Option<dnc::DncState>)> {
        let state =
            checkpoint::load_latest(run, model, &mut self.optim, self.swa.as_mut(), memory)?;
        sampler.check_state(&state.sampler)?;
        if let Some(v) = self.validation.as_mut() {
            v.restore_best(run);
        }
        Ok((state.step, state.dnc))
    }

    /// SWA averaging and validation after step `step`; returns the fields to log.
    #[allow(clippy::too_many_arguments)]
    fn after_step(
        &mut self,
        cfg: &Config,
        comm: &dyn Comm,
        run: &Path,
        model: &Model,
        step: usize,
        total: usize,
        out: &step::StepOutput,
    ) -> Result<serde_json::Value> {
        if let Some(avg) = self
            .swa
            .as_mut()
            .filter(|_| Swa::should_average(&cfg.swa, step))
        {
            avg.update(model.trainable())?;
        }
        let mut extra = serde_json::to_value(&out.stats).unwrap_or(json!({}));
        merge(
            &mut extra,
            json!({
                "step_s": out.step_seconds,
                "comm_s": out.comm_seconds,
                "comm_wait_s": out.comm_wait_seconds,
                "objective_s": out.objective_seconds,
                "embedding_spread": out.embedding_spread,
            }),
        );
        if let Some(m) = &out.memory {
            merge(
                &mut extra,
                json!({
                    "xbm_rows": m.rows,
                    "xbm_loss": m.loss,
                    "xbm_active": m.stats.active,
                    "xbm_mined": m.stats.mined,
                    "xbm_pos_sim_mean": m.stats.pos_sim_mean,
                    "xbm_neg_sim_mean": m.stats.neg_sim_mean,
                }),
            );
        }
        let every = cfg.train.log_every;
        match out.grad_norm {
            Some(norm) if every > 0 && (step % every == 0 || step == 1) => {
                merge(&mut extra, self.watch_weights(cfg, model, step, norm)?)
            }
            Some(norm) => merge(&mut extra, json!({ "grad_norm": norm })),
            None => {}
        }
        let every = cfg.eval.every;
        if let Some(v) = self
            .validation
            .as_mut()
            .filter(|_| every > 0 && (step % every == 0 || step == total))
        {
            merge(&mut extra, v.run(model, comm, run, step)?);
        }
        Ok(extra)
    }

    /// `grad_norm` and `weight_norm` of a measured step, and the weights' growth since
    /// the start with a warning each time it passes
    /// `train.warn_weight_growth` and every further factor of 10 (a blow-up that has not
    /// reached NaN yet).
    fn watch_weights(
        &mut self,
        cfg: &Config,
        model: &Model,
        step: usize,
        grad_norm: f64,
    ) -> Result<serde_json::Value> {
        let norm = weights_norm(model)?;
        let limit = cfg.train.warn_weight_growth;
        let (first, next) = *self.weight_watch.get_or_insert((norm, limit));
        let growth = norm / first.max(f64::MIN_POSITIVE);
        let mut fields = json!({
            "grad_norm": grad_norm,
            "weight_norm": norm,
            "weight_growth": growth,
        });
        if limit > 0.0 && (growth >= next || !norm.is_finite() || !grad_norm.is_finite()) {
            self.weight_watch = Some((first, growth.max(next) * 10.0));
            merge(
                &mut fields,
                json!({ "warning": format!(
                    "step {step}: the weights' norm is {norm:.3e}, {growth:.3e}× its {first:.3e} at the start (gradient norm {grad_norm:.3e}); the run may be diverging: lower optim.lr or set train.max_grad_norm"
                ) }),
            );
        }
        Ok(fields)
    }

    /// Rank 0 writes a checkpoint every `train.checkpoint_every` steps and at the end;
    /// with `now`, at this step unless it was just written.
    #[allow(clippy::too_many_arguments)]
    fn checkpoint(
        &self,
        cfg: &Config,
        comm: &dyn Comm,
        run: &Path,
        model: &Model,
        memory: Option<&RefCell<CrossBatchMemory>>,
        state: &LoopState,
        total: usize,
        now: bool,
    ) -> Result<()> {
        let every = cfg.train.checkpoint_every;
        let due = (every > 0 && state.step % every == 0) || state.step == total;
        if comm.rank() != 0 || due == now {
            return Ok(());
        }
        checkpoint::save(
            run,
            model,
            &self.optim,
            self.swa.as_ref(),
            memory.map(|m| m.borrow()).as_deref(),
            state,
            cfg.train.keep_checkpoints,
        )
    }
}

/// The L2 norm of all trainable weights together.
fn weights_norm(model: &Model) -> Result<f64> {
    let weights: Vec<tch::Tensor> = model.trainable().iter().map(|(_, p)| p.detach()).collect();
    match step::total_norm(&weights)? {
        Some(norm) => Ok(norm.f_double_value(&[])?),
        None => Ok(0.0),
    }
}

/// Rank 0's weights and buffers on every rank (identical initialisation or resume).
fn broadcast_model(model: &Model, comm: &dyn Comm) -> Result<()> {
    for (_, mut var) in model.named_variables() {
        comm.broadcast(&mut var, 0)?;
    }
    Ok(())
}

/// What every training step of a run shares (bucket size, overlap, the gradient reducer);
/// decides autocast once (see [`use_autocast`]).
pub fn step_env<'a>(
    cfg: &Config,
    model: &'a Model,
    objective: &'a Objective,
    comm: &'a dyn Comm,
    teacher: Option<&'a Model>,
) -> step::StepEnv<'a> {
    let bucket_bytes = bucket_bytes(cfg, model.device());
    step::StepEnv {
        model,
        objective,
        comm,
        teacher,
        bucket_bytes,
        grads: dist::GradSync::new(bucket_bytes, cfg.dist.overlap),
        autocast: use_autocast(cfg, model),
        max_grad_norm: cfg.train.max_grad_norm,
        grad_norm_every: cfg.train.log_every,
        memory: None,
        memory_start: cfg.xbm.start,
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
/// # fn demo(comm: &dyn dml::dist::Comm) -> dml::Result<()> {
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

/// Adds the fields of `more` (an object) to `into` (an object).
fn merge(into: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), more) {
        a.extend(b);
    }
}

/// What a run is built from, identically on every rank.
pub struct Setup {
    /// The config with the values resolved from the data (`model.classes`,
    /// `lr.milestones` from `lr.milestone_epochs`).
    pub cfg: Config,
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

/// Checks that every rank has the same config and that the world size divides the
/// batch, then opens the data and builds the model and objective.
pub fn setup(cfg: &Config, comm: &dyn Comm) -> Result<Setup> {
    let cfg = &cfg.with_absolute_paths()?;
    dist::check_same_everywhere(comm, "the resolved config", cfg.to_toml()?.as_bytes())?;
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
    let mut cfg = resolve_milestones(resolve_classes(cfg, &train)?, sampler.batches_per_epoch());
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
    Ok(Setup {
        cfg,
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
