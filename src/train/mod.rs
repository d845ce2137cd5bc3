//! The training loop, top to bottom. Rank 0 owns every side effect (config, metrics,
//! checkpoints, progress); every rank runs the same steps on its slice of the batch.
pub mod bn_update;
pub mod checkpoint;
pub mod lock;
pub mod log;
pub mod lr_find;
pub mod reality_check;
pub mod setup;
pub mod step;
pub mod validate;

use std::cell::RefCell;
use std::path::Path;

use serde_json::json;

use crate::comm::{self, Comm};
use crate::config::{BnMode, Config};
use crate::data::sampler::Sampler;
use crate::dnc::schedule::Schedule;
use crate::error::{Error, Result};
use crate::loss::xbm::CrossBatchMemory;
use crate::model::Model;
use crate::optim::{learning_rate, Adam, Swa};
use checkpoint::LoopState;
pub use setup::{load_model, loader_options, Trainer};
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
/// # fn demo(comm: &dyn dml::comm::Comm) -> dml::Result<()> {
/// let cfg = dml::config::Config::load("configs/quickstart.toml".as_ref(), &[])?;
/// dml::train::run(&cfg, comm, "runs/quick".as_ref(), false)?;
/// # Ok(()) }
/// ```
pub fn run(cfg: &Config, comm: &dyn Comm, run: &Path, resume: bool) -> Result<RunEnd> {
    let _lock = match comm.rank() {
        0 => Some(claim_run_dir(run, resume)?),
        _ => None,
    };
    let mut t = Trainer::new(cfg, comm)?;
    let mut lp = Loop {
        optim: t.optimizer(),
        swa: (t.cfg.swa.start > 0).then(|| Swa::new(t.model.trainable())),
        validation: t.validation.take(),
        weight_watch: None,
        cfg: &t.cfg,
        comm,
        run,
        total: t.total,
    };
    let mut memory = (t.cfg.xbm.size > 0).then(|| CrossBatchMemory::new(&t.cfg.xbm));
    let (start, dnc_state) = match resume {
        true => lp.resume(&mut t.model, memory.as_mut(), &t.sampler)?,
        false => (0, None),
    };
    let memory = memory.map(RefCell::new);
    t.broadcast_model()?;
    lp.weight_watch = Some((weights_norm(&t.model)?, t.cfg.train.warn_weight_growth));
    write_run_config(&t, run)?;
    let (cfg, total) = (&t.cfg, t.total);
    let mut log = log::RunLog::open(run, comm.rank(), start, total, cfg.train.log_every)?;
    let mut schedule = Schedule::new(
        t.train.clone(),
        t.indices.clone(),
        t.sampler.clone(),
        dnc_state,
    );
    let mut env = t.env();
    env.memory = memory.as_ref();
    let mut next = start;
    while next < total {
        let phase = schedule.phase(next, total, cfg, &t.model, comm)?;
        let mut loader = t.loader(phase.plan, next, phase.end)?;
        while let Some(batch) = loader.try_next()? {
            let step = batch.step as usize + 1; // optimiser steps completed after this one
            let lr = learning_rate(&cfg.lr, cfg.optim.lr, step - 1);
            let slice = phase.slicing.slice_of(step - 1);
            let out = step::train_step(&env, &mut lp.optim, &batch, lr, step, slice)
                .map_err(|e| with_checkpoint_note(e, run))?;
            loader.recycle(batch);
            let extra = lp.after_step(&t.model, step, &out)?;
            log.step(step, out.loss, lr, cfg.global_batch(), extra)?;
            let state = LoopState {
                step,
                sampler: t.sampler.state(step as u64),
                dnc: schedule.state.clone(),
            };
            let mem = memory.as_ref();
            lp.checkpoint(&t.model, mem, &state, false)?;
            if let Some(signal) = stop_requested(comm)? {
                lp.checkpoint(&t.model, mem, &state, true)?;
                comm.barrier()?;
                return Ok(RunEnd::Stopped { step, signal });
            }
        }
        next = phase.end;
    }
    log.finish();
    drop(env);
    save_final_model(&t, lp.swa.as_ref(), run)?;
    Ok(RunEnd::Finished(total))
}

/// Rank 0 writes the resolved config to `RUN/config.toml` (creating the directory).
fn write_run_config(t: &Trainer, run: &Path) -> Result<()> {
    if t.comm.rank() == 0 {
        std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
        checkpoint::write_synced(&run.join("config.toml"), t.cfg.to_toml()?.as_bytes())?;
    }
    Ok(())
}

/// The end of a finished run: the SWA average in place of the weights when it has one
/// (with BatchNorm statistics re-estimated for a training-mode BatchNorm), and rank 0
/// publishing `RUN/model.safetensors`; every rank waits for it.
fn save_final_model(t: &Trainer, swa: Option<&Swa>, run: &Path) -> Result<()> {
    if let Some(avg) = swa.filter(|a| a.n_averaged() > 0) {
        t.model.set_trainable(avg.averaged())?;
        if t.cfg.model.bn == BnMode::Train {
            bn_update::reestimate_bn(t)?;
        }
    }
    if t.comm.rank() == 0 {
        let tmp = run.join("model.safetensors.tmp");
        let saved = t
            .model
            .save(&tmp)
            .and_then(|()| checkpoint::publish_file(&tmp, &run.join("model.safetensors")));
        if let Err(e) = saved {
            let what = "the final model.safetensors";
            return Err(checkpoint::not_written(run, what, &tmp, e));
        }
    }
    t.comm.barrier()
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
    Error::Train(format!("{msg}; {}", checkpoint::resume_note(run)))
}

/// Whether any rank received a stop signal (an all-reduce of one flag, so that every
/// rank stops after the same step), with the signal's name as rank 0 saw it.
fn stop_requested(comm: &dyn Comm) -> Result<Option<String>> {
    let mine = crate::sys::stop_signal();
    Ok((comm::ranks_with(comm, mine.is_some())? > 0)
        .then(|| mine.unwrap_or("a signal on another rank").to_string()))
}

/// The state the loop carries from step to step besides the model, and the run it
/// belongs to.
struct Loop<'a> {
    optim: Adam,
    swa: Option<Swa>,
    validation: Option<Validation>,
    /// The weights' norm when this process started (or resumed) the run, and the growth
    /// over it that the next warning waits for.
    weight_watch: Option<(f64, f64)>,
    /// The resolved config.
    cfg: &'a Config,
    comm: &'a dyn Comm,
    /// The run directory.
    run: &'a Path,
    /// Total steps of the run.
    total: usize,
}

impl Loop<'_> {
    /// Loads the newest checkpoint of `run`: the step to continue from and the D&C
    /// clustering in use.
    fn resume(
        &mut self,
        model: &mut Model,
        memory: Option<&mut CrossBatchMemory>,
        sampler: &Sampler,
    ) -> Result<(usize, Option<crate::dnc::schedule::DncState>)> {
        let state =
            checkpoint::load_latest(self.run, model, &mut self.optim, self.swa.as_mut(), memory)?;
        sampler.check_state(&state.sampler)?;
        if let Some(v) = self.validation.as_mut() {
            v.restore_best(self.run);
        }
        Ok((state.step, state.dnc))
    }

    /// SWA averaging and validation after step `step`; returns the fields to log.
    fn after_step(
        &mut self,
        model: &Model,
        step: usize,
        out: &step::StepOutput,
    ) -> Result<serde_json::Value> {
        let (cfg, total) = (self.cfg, self.total);
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
                merge(&mut extra, self.watch_weights(model, step, norm)?)
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
            merge(&mut extra, v.run(model, self.comm, self.run, step)?);
        }
        Ok(extra)
    }

    /// `grad_norm` and `weight_norm` of a measured step, and the weights' growth since
    /// the start with a warning each time it passes
    /// `train.warn_weight_growth` and every further factor of 10 (a blow-up that has not
    /// reached NaN yet).
    fn watch_weights(
        &mut self,
        model: &Model,
        step: usize,
        grad_norm: f64,
    ) -> Result<serde_json::Value> {
        let norm = weights_norm(model)?;
        let limit = self.cfg.train.warn_weight_growth;
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
    /// when `stopping` (a signal), the one of this step that the schedule did not write.
    fn checkpoint(
        &self,
        model: &Model,
        memory: Option<&RefCell<CrossBatchMemory>>,
        state: &LoopState,
        stopping: bool,
    ) -> Result<()> {
        let cfg = self.cfg;
        let every = cfg.train.checkpoint_every;
        let due = (every > 0 && state.step % every == 0) || state.step == self.total;
        let write = match stopping {
            false => due,
            true => !due,
        };
        if self.comm.rank() != 0 || !write {
            return Ok(());
        }
        checkpoint::save(
            self.run,
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

/// Adds the fields of `more` (an object) to `into` (an object).
fn merge(into: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), more) {
        a.extend(b);
    }
}
