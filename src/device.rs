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

/// How many intra-op threads a rank uses, and why (for the start-up log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadChoice {
    /// libtorch intra-op threads.
    pub threads: usize,
    /// Where the number came from, e.g. `"2 cores / 2 ranks on this node"`.
    pub reason: String,
}

/// The intra-op thread count of a rank: `requested` (`train.threads`) if positive, else
/// `omp` (`OMP_NUM_THREADS`) if it is a positive number, else the cores this rank may
/// use. `allowed` is the number of CPUs the process may run on (its affinity mask, cgroup
/// quota included) and `online` the node's CPUs: a rank bound to a subset of the node
/// (mpirun's default `--bind-to core`, Slurm's `--cpu-bind`) uses its own CPUs, an unbound
/// rank the node's CPUs divided among the `ranks_on_node`. Loader workers are not given
/// cores of their own: they wait on a bounded prefetch queue most of the step (a
/// decode-bound run shows as `images_per_s` below what `step_s` allows).
///
/// ```
/// use dml::device::choose_threads;
/// assert_eq!(choose_threads(0, None, 16, 16, 4).threads, 4); // unbound: 16 cores / 4 ranks
/// assert_eq!(choose_threads(0, None, 1, 16, 4).threads, 1); // bound to one core
/// assert_eq!(choose_threads(0, Some("3"), 16, 16, 4).threads, 3);
/// assert_eq!(choose_threads(6, Some("3"), 16, 16, 4).threads, 6); // the config wins
/// ```
pub fn choose_threads(
    requested: usize,
    omp: Option<&str>,
    allowed: usize,
    online: usize,
    ranks_on_node: usize,
) -> ThreadChoice {
    if requested > 0 {
        return ThreadChoice {
            threads: requested,
            reason: "train.threads".into(),
        };
    }
    if let Some(n) = omp
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return ThreadChoice {
            threads: n,
            reason: "OMP_NUM_THREADS".into(),
        };
    }
    let (allowed, ranks) = (allowed.max(1), ranks_on_node.max(1));
    if allowed < online {
        return ThreadChoice {
            threads: allowed,
            reason: format!("this rank is bound to {allowed} of the node's {online} CPUs"),
        };
    }
    ThreadChoice {
        threads: (allowed / ranks).max(1),
        reason: format!("{allowed} cores / {ranks} ranks on this node"),
    }
}

/// The node's online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-3,8-11`), or
/// `None` where that file cannot be read.
fn online_cpus() -> Option<usize> {
    count_cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?)
}

/// The number of CPUs in a kernel CPU list (`0-3,8-11`, `0`, `0,2`).
fn count_cpu_list(text: &str) -> Option<usize> {
    let mut n = 0;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1,
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    Some(n)
}

/// Chooses ([`choose_threads`]) and sets libtorch's intra-op threads for a rank that
/// shares its node with `ranks_on_node` ranks; returns the choice.
pub fn set_threads(requested: usize, ranks_on_node: usize) -> ThreadChoice {
    let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
    let online = online_cpus().unwrap_or(allowed).max(allowed);
    let omp = std::env::var("OMP_NUM_THREADS").ok();
    let choice = choose_threads(requested, omp.as_deref(), allowed, online, ranks_on_node);
    tch::set_num_threads(choice.threads as i32);
    choice
}

/// The machine's RAM in bytes (`MemTotal` of /proc/meminfo), or `None` where unknown.
pub fn memory_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// This process's peak resident set size in MiB (`VmHWM` of /proc/self/status), or NaN
/// where unknown; the benchmarks report it.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-3,8-11\n"), Some(8));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0,2,5-6"), Some(4));
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn threads_follow_binding_environment_and_config() {
        // Unbound: the node's cores shared by its ranks, never fewer than one.
        let c = choose_threads(0, None, 2, 2, 1);
        assert_eq!(
            (c.threads, c.reason.as_str()),
            (2, "2 cores / 1 ranks on this node")
        );
        assert_eq!(choose_threads(0, None, 2, 2, 3).threads, 1);
        // Bound by the launcher to 2 of 8 CPUs: those 2, whatever the rank count.
        assert_eq!(choose_threads(0, None, 2, 8, 4).threads, 2);
        // An empty or non-numeric OMP_NUM_THREADS is ignored.
        assert_eq!(choose_threads(0, Some(""), 8, 8, 2).threads, 4);
        assert_eq!(choose_threads(0, Some("0"), 8, 8, 2).threads, 4);
        assert_eq!(
            choose_threads(0, Some(" 5 "), 8, 8, 2).reason,
            "OMP_NUM_THREADS"
        );
    }
}
