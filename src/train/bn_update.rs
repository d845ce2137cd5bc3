//! SWA's last step when BatchNorm trains (`model.bn = "train"`): re-estimate the running
//! statistics of the averaged weights over one epoch of training batches, as
//! `torch.optim.swa_utils.update_bn` (timgaripov/swa's `bn_update`).
use super::Trainer;
use crate::error::{Error, Result};
use crate::model::layers::with_bn_momentum;
use crate::optim::{update_bn, BnStats};

/// Resets the running statistics of every BatchNorm on feature maps and recomputes
/// them as the exact average over one sampler epoch of training batches (each rank
/// its slice, in training mode, momentum `1 / (batches seen + 1)`), then averages them
/// over the ranks so that every rank, and the saved model, holds the same statistics.
/// BatchNorm over vectors after the gather (BFE, CGD heads) keeps its running
/// statistics from training.
///
/// ```no_run
/// # fn demo(trainer: &dml::train::Trainer) -> dml::Result<()> {
/// dml::train::bn_update::reestimate_bn(trainer)?;
/// # Ok(()) }
/// ```
pub fn reestimate_bn(trainer: &Trainer) -> Result<()> {
    let (model, comm) = (&trainer.model, trainer.comm);
    let buffers = model.map_batchnorm_buffers();
    let mut stats = BnStats::from_named(&buffers)?;
    if stats.is_empty() {
        return Ok(());
    }
    let batches = trainer.sampler.batches_per_epoch();
    let mut loader = trainer.loader(trainer.sampler.clone(), 0, batches)?;
    update_bn(&mut stats, batches, |b, momentum| {
        let batch = loader.try_next()?.ok_or_else(|| {
            Error::Train(format!(
                "BatchNorm update: the loader ended after {b} batches"
            ))
        })?;
        let images = batch.to_tensor(model.device(), model.kind());
        let _ = with_bn_momentum(momentum, || model.forward_local(&images, Some(0)));
        Ok(())
    })?;
    let world = comm.world() as f64;
    if world > 1.0 {
        tch::no_grad(|| -> Result<()> {
            for s in stats.iter_mut() {
                for t in [&mut s.running_mean, &mut s.running_var] {
                    comm.all_reduce_sum(t)?;
                    let _ = t.f_div_scalar_(world)?;
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}
