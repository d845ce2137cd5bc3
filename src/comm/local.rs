//! The single-process communicator: every collective is the identity.
use tch::Tensor;

use super::Comm;
use crate::error::{Error, Result};

/// World of one: rank 0 of 1, on node-local rank 0 of 1.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Comm for Local {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_world(&self) -> usize {
        1
    }
    fn name(&self) -> &'static str {
        "local"
    }
    /// A copy of `local` (a new tensor, like the gathered tensor of the other backends);
    /// a scalar becomes a vector of one, as with more ranks.
    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        let t = local.f_detach_copy()?;
        Ok(if t.dim() == 0 { t.f_reshape([1])? } else { t })
    }
    fn all_reduce_sum(&self, _t: &mut Tensor) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _t: &mut Tensor, root: usize) -> Result<()> {
        if root != 0 {
            return Err(Error::Dist(format!(
                "broadcast from rank {root} in a world of 1"
            )));
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
