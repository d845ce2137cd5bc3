//! Choosing the compute device, numeric kind and CPU thread count of a rank.
use tch::{Device, Kind};

use crate::config::{Precision, TrainConfig};
use crate::error::{Error, Result};

/// The device of this rank: `cuda:<local_rank>` when CUDA is asked for (or `auto` and
/// available), else the CPU.
pub fn select(cfg: &TrainConfig, local_rank: usize) -> Result<Device> {
    let cuda = tch::Cuda::is_available();
    match cfg.device.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" if !cuda => Err(Error::Config(
            "train.device = \"cuda\" but no CUDA device is visible; use train.device = \"cpu\" or \"auto\"".into(),
        )),
        "cuda" | "auto" if cuda => {
            let n = tch::Cuda::device_count() as usize;
            if local_rank >= n {
                return Err(Error::Config(format!(
                    "node-local rank {local_rank} has no GPU ({n} visible); start at most {n} ranks per node"
                )));
            }
            Ok(Device::Cuda(local_rank))
        }
        _ => Ok(Device::Cpu),
    }
}

/// The parameter kind for `train.precision` on `device` (bf16 autocasts from float32).
pub fn kind(precision: Precision, device: Device) -> Result<Kind> {
    match precision {
        Precision::F32 => Ok(Kind::Float),
        Precision::F64 => Ok(Kind::Double),
        Precision::Bf16 if device.is_cuda() => Ok(Kind::Float),
        Precision::Bf16 => Err(Error::Config(
            "train.precision = \"bf16\" needs CUDA; use \"f32\" on CPU".into(),
        )),
    }
}

/// Sets libtorch's intra-op threads: `OMP_NUM_THREADS` if given, else the cores divided
/// among the ranks sharing this machine.
pub fn set_threads(ranks_on_node: usize) {
    let threads = std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / ranks_on_node.max(1)).max(1)
        });
    tch::set_num_threads(threads as i32);
}
