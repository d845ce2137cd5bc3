//! One training step with exact gradients through the all-gather (DESIGN.md).
//!
//! Each rank embeds its slice, all-gathers detached copies into the global batch `E`,
//! computes the whole objective on `E` (identical on every rank), takes `G = dL/dE`,
//! back-propagates its own rows of `G` through its local graph, and the trunk and head
//! gradients are summed across ranks.
use tch::Tensor;

use crate::data::loader::Batch;
use crate::dist::{self, Comm};
use crate::error::{Error, Result};
use crate::loss::{MetricLoss, MiningStats};
use crate::model::Model;
use crate::optim::Adam;

/// What one step produced.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The global objective (identical on every rank).
    pub loss: f64,
    /// Mining statistics of the global batch.
    pub stats: MiningStats,
}

/// Forward, global objective, and backward for one batch; leaves the summed gradients in
/// the model's parameters (zero them before the next step). `step` only labels errors.
pub fn forward_backward(
    model: &Model,
    objective: &dyn MetricLoss,
    comm: &dyn Comm,
    images: &Tensor,
    labels: &Tensor,
    bucket_bytes: usize,
    step: usize,
) -> Result<StepOutput> {
    let local = model.forward(images, true);
    let rows = local.size()[0];
    let global = comm.all_gather(&local.detach())?.set_requires_grad(true);
    let global_labels = comm.all_gather(labels)?;
    let out = objective.compute(&global, &global_labels)?;
    let loss = out.loss.double_value(&[]);
    if !loss.is_finite() {
        return Err(Error::Train(format!(
            "loss is {loss} at step {step}; the last good checkpoint is kept. Lower optim.lr or check the data"
        )));
    }
    let grads = Tensor::run_backward(&[&out.loss], &[&global], false, false);
    let own = grads[0].narrow(0, comm.rank() as i64 * rows, rows);
    (local * own).sum(model.kind()).backward();
    let params: Vec<Tensor> = model
        .trainable()
        .iter()
        .map(|(_, t)| t.shallow_clone())
        .collect();
    dist::all_reduce_grads(comm, &params, bucket_bytes)?;
    Ok(StepOutput {
        loss,
        stats: out.stats,
    })
}

/// One optimiser step on `batch` at learning rate `lr`: zero the gradients, move the batch
/// to the model's device, [`forward_backward`], and update. `step` (1-based) labels errors.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &Model,
    objective: &dyn MetricLoss,
    comm: &dyn Comm,
    optim: &mut Adam,
    batch: &Batch,
    lr: f64,
    bucket_bytes: usize,
    step: usize,
) -> Result<StepOutput> {
    optim.zero_grad();
    let images = batch.to_tensor(model.device(), model.kind());
    let labels = Tensor::from_slice(&batch.labels).to_device(model.device());
    let out = forward_backward(model, objective, comm, &images, &labels, bucket_bytes, step)?;
    optim.step(lr)?;
    Ok(out)
}
