//! One training step with exact gradients through the all-gather (DESIGN.md).
//!
//! Each rank runs its half of the model ([`Model::forward_local`]) on its slice,
//! all-gathers detached copies of the per-sample tensors into the global batch `E`
//! (leaves that require grad), runs the head's global half on `E` (identical on every
//! rank: BatchNorm over vectors sees the global batch), and computes **its share** of the
//! objective: the terms whose anchor is one of its own rows, against all of `E`, divided
//! by global counts ([`crate::loss::Shard`]), on detached leaf copies of the head's
//! outputs. One backward of the share gives the partial gradient of those inputs over
//! all rows; the partials are summed across ranks (an all-reduce of `[B, d]`), and every
//! rank back-propagates the sum through the head's global half, which gives
//! `G = dL/dE` and the gradients of the parameters after the gather exactly as one
//! process would. Each rank then back-propagates its own rows of `G` through its local
//! graph. Gradients before the gather (trunk, local head) are summed across ranks during
//! that backward ([`GradSync`]), those after it averaged (they are the same on every
//! rank).
use std::cell::RefCell;

use tch::Tensor;

use crate::comm::{self, Comm, GradSync};
use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::loss::xbm::{CrossBatchMemory, MemoryView};
use crate::loss::{MiningStats, Objective, Shard};
use crate::model::{HeadOutput, Model};
use crate::optim::Adam;

/// What every step works with besides the batch.
pub struct StepEnv<'a> {
    /// The model being trained.
    pub model: &'a Model,
    /// The objective over the global batch.
    pub objective: &'a Objective,
    /// The communicator.
    pub comm: &'a dyn Comm,
    /// A frozen teacher for distillation.
    pub teacher: Option<&'a Model>,
    /// Gradient all-reduce bucket size in bytes.
    pub bucket_bytes: usize,
    /// The sum across ranks of the gradients before the gather (`dist.bucket_mb`,
    /// `dist.overlap`).
    pub grads: GradSync,
    /// Run this rank's half of the model under CUDA autocast (`train.precision = "bf16"`;
    /// the dtype is set by [`crate::sys::set_cuda_autocast_bf16`]). The per-sample
    /// tensors are cast back to the parameters' kind before the gather.
    pub autocast: bool,
    /// Clip the gradients' total L2 norm to this (`train.max_grad_norm`; 0: never).
    pub max_grad_norm: f64,
    /// Measure the gradients' norm every this many steps even without clipping
    /// (`train.log_every`; 0: only when clipping).
    pub grad_norm_every: usize,
    /// The cross-batch memory (`[xbm]`), the same on every rank; each step from
    /// `memory_start` on enqueues its global batch into it and adds the memory loss.
    pub memory: Option<&'a RefCell<CrossBatchMemory>>,
    /// `xbm.start`: the first step (1-based) that uses the memory.
    pub memory_start: usize,
}

/// What the cross-batch memory contributed to a step.
#[derive(Debug, Clone)]
pub struct MemoryStep {
    /// Rows of the memory the loss read (this step's batch included).
    pub rows: i64,
    /// The memory loss, unweighted.
    pub loss: f64,
    /// Mining statistics of the batch against the memory.
    pub stats: MiningStats,
}

/// What one step produced.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The global objective (the sum of every rank's share; identical on every rank).
    pub loss: f64,
    /// Mining statistics of the global batch.
    pub stats: MiningStats,
    /// Seconds this rank spent in [`forward_backward`].
    pub step_seconds: f64,
    /// Of those, seconds spent in collectives (all-gathers and the gradient
    /// all-reduce, including waiting for the other ranks).
    pub comm_seconds: f64,
    /// Of the collectives, seconds the step was blocked on the gradient all-reduce after
    /// its own backward had finished (what the overlap with the backward did not hide;
    /// all of it with `dist.overlap = false`).
    pub comm_wait_seconds: f64,
    /// Of the step, seconds in this rank's share of the objective and its backward to the
    /// gathered embeddings (collectives inside it included).
    pub objective_seconds: f64,
    /// The total L2 norm of the reduced gradients before clipping (identical on every
    /// rank), on the steps it was measured.
    pub grad_norm: Option<f64>,
    /// The spread of the global batch's test embeddings, [`embedding_spread`]: near 0
    /// when every image maps to the same point (a collapsed embedding).
    pub embedding_spread: f64,
    /// The cross-batch memory's part, on the steps that used it.
    pub memory: Option<MemoryStep>,
}

/// Runs `f`, adding its duration in seconds to `acc`.
fn timed<T>(acc: &mut f64, f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let out = f();
    *acc += t.elapsed().as_secs_f64();
    out
}

/// Forward, global objective, and backward for one batch of step `step` (1-based);
/// leaves the reduced gradients in the model's parameters (zero them before the next
/// step). With `slice = Some((c, k))` (Divide and Conquer) the metric losses see slice
/// `c` of `k` of every embedding.
pub fn forward_backward(
    env: &StepEnv,
    images: &Tensor,
    labels: &Tensor,
    step: usize,
    slice: Option<(usize, usize)>,
) -> Result<StepOutput> {
    let (model, comm) = (env.model, env.comm);
    let started = std::time::Instant::now();
    let mut comm_s = 0.0;
    let key = Some(step.saturating_sub(1) as u64);
    let parts: Vec<Tensor> = tch::autocast(env.autocast, || model.forward_local(images, key))
        .into_iter()
        .map(|p| match p.kind() == model.kind() {
            true => p,
            false => p.to_kind(model.kind()),
        })
        .collect();
    let rows = images.size()[0];
    let gathered = timed(&mut comm_s, || {
        parts
            .iter()
            .map(|p| Ok(comm.all_gather(&p.detach())?.set_requires_grad(true)))
            .collect::<Result<Vec<Tensor>>>()
    })?;
    let global_labels = timed(&mut comm_s, || comm.all_gather(labels))?;
    let teacher = match env.teacher {
        Some(t) => {
            let e = tch::no_grad(|| t.forward(&images.to_kind(t.kind()), false));
            Some(timed(&mut comm_s, || {
                comm.all_gather(&e.to_kind(model.kind()))
            })?)
        }
        None => None,
    };
    let mut out = model.forward_global(&gathered, key);
    let spread = embedding_spread(&out.test)?;
    // The memory takes the whole embeddings (its views slice them as the step does).
    let memory = match env.memory.filter(|_| step >= env.memory_start) {
        Some(cell) => {
            let mut memory = cell.borrow_mut();
            let own = memory.enqueue(&out.embeddings, &global_labels)?;
            let views = (0..out.embeddings.len())
                .map(|i| memory.view(i, &own, slice))
                .collect::<Result<Vec<_>>>()?;
            Some(views)
        }
        None => None,
    };
    if let Some((c, k)) = slice {
        out = crate::dnc::schedule::slice_output(out, c, k)?;
    }
    let share = objective_backward(
        env,
        &out,
        &global_labels,
        teacher.as_ref(),
        memory.as_deref(),
        rows,
        step,
    )?;
    comm_s += share.comm_seconds;
    let own_rows = parts
        .iter()
        .zip(&gathered)
        .filter_map(|(p, g)| {
            let grad = g.grad();
            grad.defined()
                .then(|| (p * grad.narrow(0, comm.rank() as i64 * rows, rows)).sum(model.kind()))
        })
        .reduce(|a, b| a + b);
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    for (name, t) in model.trainable() {
        match Model::after_gather(name) {
            true => post.push(t.shallow_clone()),
            false => pre.push(t.shallow_clone()),
        }
    }
    // Own rows of G through the local graph; the trunk's gradients are summed across
    // ranks during (or after) that backward.
    let wait_s = env.grads.backward_and_sum(comm, &pre, || {
        if let Some(s) = own_rows {
            s.backward();
        }
    })?;
    comm_s += wait_s;
    timed(&mut comm_s, || {
        comm::average_grads(comm, &post, env.bucket_bytes)
    })?;
    Ok(StepOutput {
        grad_norm: None,
        embedding_spread: spread,
        memory: share.memory,
        loss: share.loss,
        stats: share.stats,
        step_seconds: started.elapsed().as_secs_f64(),
        comm_seconds: comm_s,
        comm_wait_seconds: wait_s,
        objective_seconds: share.seconds,
    })
}

/// The spread of a batch of embeddings `e` (`[B, d]`): `1 − ‖mean_i ê_i‖²` of the
/// L2-normalised rows ê_i, which is the mean of `1 − cos(e_i, e_j)` over all B² ordered
/// pairs (self-pairs included). 0 when every row points the same way; `1 − 1/B` for B
/// orthogonal rows; about 1 for many rows spread over the sphere.
///
/// ```
/// use tch::Tensor;
/// let same = Tensor::from_slice(&[1.0f64, 2.0, 2.0, 4.0]).view([2, 2]);
/// assert!(dml::train::step::embedding_spread(&same)?.abs() < 1e-12);
/// let orthogonal = Tensor::from_slice(&[3.0f64, 0.0, 0.0, 0.5]).view([2, 2]);
/// assert!((dml::train::step::embedding_spread(&orthogonal)? - 0.5).abs() < 1e-12);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn embedding_spread(e: &Tensor) -> Result<f64> {
    let mean = tch::no_grad(|| {
        crate::ops::normalize(&e.to_kind(tch::Kind::Double)).mean_dim(
            [0i64].as_slice(),
            false,
            tch::Kind::Double,
        )
    });
    let squared = f64::try_from(mean.dot(&mean))?;
    Ok(1.0 - squared)
}

/// What [`objective_backward`] leaves besides the gradients.
struct ShareOutput {
    loss: f64,
    stats: MiningStats,
    memory: Option<MemoryStep>,
    seconds: f64,
    comm_seconds: f64,
}

/// This rank's share of the objective on the head's output `out` over the global batch
/// (own rows `rank·rows ..`), its backward, the sum of all ranks' partial gradients of the
/// objective's inputs, and one backward of that sum through `out`'s graph (the head's
/// global half): afterwards the gathered tensors hold `G = dL/dE` and the post-gather
/// parameters their gradients, as on one process.
fn objective_backward(
    env: &StepEnv,
    out: &HeadOutput,
    labels: &Tensor,
    teacher: Option<&Tensor>,
    memory: Option<&[MemoryView]>,
    rows: i64,
    step: usize,
) -> Result<ShareOutput> {
    let (model, comm) = (env.model, env.comm);
    let objective_started = std::time::Instant::now();
    let shard_comm = std::cell::Cell::new(0.0);
    let sum = |v: &mut [f64]| {
        let t = std::time::Instant::now();
        let r = comm::sum_f64s(comm, v);
        shard_comm.set(shard_comm.get() + t.elapsed().as_secs_f64());
        r
    };
    let shard = Shard::new(comm.rank() as i64 * rows, rows, comm.rank() == 0, &sum);
    // The objective's inputs as leaves: each rank's share back-propagates into them.
    let inputs = out.leaves();
    let objective = env
        .objective
        .compute_shard(&inputs, labels, teacher, &shard)?;
    let mut loss = objective.value;
    let mut share = objective.share;
    let memory = match memory {
        Some(views) => {
            let m = env.objective.memory_shard(&inputs, labels, views, &shard)?;
            loss += env.objective.memory_weight() * m.value;
            share = &share + &m.share;
            Some(MemoryStep {
                rows: m.rows,
                loss: m.value,
                stats: m.stats,
            })
        }
        None => None,
    };
    if !loss.is_finite() {
        return Err(Error::Train(format!(
            "loss is {loss} at step {step}: lower optim.lr (or set train.max_grad_norm), or check the data"
        )));
    }
    if share.requires_grad() {
        share.backward();
    }
    // dL/d(inputs) = Σ_r dL_r/d(inputs), the same on every rank, then back through the
    // head's global half: G = dL/dE (and the post-gather gradients) as on one process.
    let input_leaves = inputs.tensors();
    let reduce_started = std::time::Instant::now();
    comm::all_reduce_grads(comm, &input_leaves, env.bucket_bytes)?;
    let comm_seconds = shard_comm.get() + reduce_started.elapsed().as_secs_f64();
    let through_head = out
        .tensors()
        .iter()
        .zip(&input_leaves)
        .filter_map(|(o, l)| {
            let g = l.grad();
            g.defined().then(|| (o * g).sum(model.kind()))
        })
        .reduce(|a, b| a + b);
    if let Some(surrogate) = through_head.filter(|s| s.requires_grad()) {
        surrogate.backward();
    }
    Ok(ShareOutput {
        loss,
        stats: objective.stats,
        memory,
        seconds: objective_started.elapsed().as_secs_f64(),
        comm_seconds,
    })
}

/// One optimiser step on `batch` at learning rate `lr`: zero the gradients, move the batch
/// to the model's device, [`forward_backward`], and update. `step` is 1-based.
pub fn train_step(
    env: &StepEnv,
    optim: &mut Adam,
    batch: &Batch,
    lr: f64,
    step: usize,
    slice: Option<(usize, usize)>,
) -> Result<StepOutput> {
    optim.zero_grad();
    let model = env.model;
    let images = batch.to_tensor(model.device(), model.kind());
    let labels = Tensor::from_slice(&batch.labels).to_device(model.device());
    let mut out = forward_backward(env, &images, &labels, step, slice)?;
    let every = env.grad_norm_every;
    if env.max_grad_norm > 0.0 || (every > 0 && (step % every == 0 || step == 1)) {
        let grads: Vec<Tensor> = model
            .trainable()
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect();
        out.grad_norm = Some(clip_grad_norm(&grads, env.max_grad_norm)?);
    }
    optim.step(lr)?;
    Ok(out)
}

/// The L2 norm of `tensors` together: the norm of their per-tensor norms, as
/// `torch.nn.utils.clip_grad_norm_` computes it (a 0-d tensor of their kind; `None` for
/// no tensors).
pub fn total_norm(tensors: &[Tensor]) -> Result<Option<Tensor>> {
    if tensors.is_empty() {
        return Ok(None);
    }
    let norms: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.f_norm())
        .collect::<std::result::Result<_, _>>()?;
    Ok(Some(Tensor::f_stack(&norms, 0)?.f_norm()?))
}

/// The [`total_norm`] of `grads`; with `max_norm` > 0 the gradients are scaled in place
/// by `max_norm / (norm + 1e-6)` when that is below 1, as `clip_grad_norm_` does.
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<f64> {
    let Some(total) = total_norm(grads)? else {
        return Ok(0.0);
    };
    let norm = total.f_double_value(&[])?;
    if max_norm > 0.0 {
        let coef = (Tensor::from(max_norm)
            .to_kind(total.kind())
            .to_device(total.device())
            / (&total + 1e-6))
            .clamp_max(1.0);
        if coef.f_double_value(&[])? < 1.0 {
            tch::no_grad(|| {
                for g in grads {
                    let _ = g.shallow_clone().f_mul_(&coef.to_device(g.device()));
                }
            });
        }
    }
    Ok(norm)
}
