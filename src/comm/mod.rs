//! Everything about ranks: the communicator, its backends, and the collectives the
//! trainer builds on them (bucketed gradient all-reduce, cross-rank consistency checks).
//!
//! One process per GPU (or per CPU slot) is started by `mpirun`/`srun`; [`init`] finds
//! out whether this process is one of several and returns the matching [`Comm`]:
//! [`local::Local`] for a single process, [`mpi::Mpi`] for CPU tensors across ranks,
//! `nccl::Nccl` for CUDA tensors (built with the `nccl` feature).
//! All collectives are blocking and must be called in the same order on every rank.
use tch::Tensor;

use crate::config::Backend;
use crate::error::{Error, Result};

mod grads;
mod header;
pub mod launcher;
pub mod local;
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
mod reducer;

pub use grads::{all_reduce_grads, average_grads};
pub use reducer::{GradReducer, GradSync};

/// A communicator handle a communication thread owns ([`Comm::grad_channel`]).
pub trait GradChannel: Send {
    /// Replaces the CPU tensor `t` by its element-wise sum over all ranks, with
    /// the same agreement check as [`Comm::all_reduce_sum`].
    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()>;
}

/// A communicator: this process is rank [`Comm::rank`] of [`Comm::world`] processes.
///
/// Every collective must be entered by every rank, in the same order, with tensors of the
/// same shape and kind; a mismatch is detected and reported as [`Error::Dist`] on every
/// rank (never a hang or silent garbage).
pub trait Comm {
    /// This process's rank in `0..world()`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn world(&self) -> usize;
    /// The rank among the processes on this node (from MPI's shared-memory split, not
    /// from environment variables); a process uses GPU `local_rank()`.
    fn local_rank(&self) -> usize;
    /// The number of processes on this node.
    fn local_world(&self) -> usize;
    /// The backend's name: `"local"`, `"mpi"` or `"nccl"`.
    fn name(&self) -> &'static str;
    /// A second, thread-owned handle for the gradient all-reduce overlapped with the
    /// backward ([`GradReducer`]); a collective (every rank calls it together, and every
    /// rank gets one or none). `None` (the default) where the backend has none: the
    /// reducer then reduces its buckets on the calling thread after the backward.
    fn grad_channel(&self) -> Result<Option<Box<dyn GradChannel>>> {
        Ok(None)
    }
    /// Concatenates every rank's `local` along dim 0 in rank order. Supports f32, f64,
    /// i64 and u8 tensors of equal shape on every rank.
    fn all_gather(&self, local: &Tensor) -> Result<Tensor>;
    /// Replaces `t` by the element-wise sum of `t` over all ranks.
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()>;
    /// Replaces `t` by rank `root`'s `t` on every rank.
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()>;
    /// Waits until every rank has reached the barrier.
    fn barrier(&self) -> Result<()>;
    /// Ends the whole job with exit status `code` (`MPI_Abort` under MPI, so that the
    /// launcher kills every other rank; `process::exit` for a single process).
    fn abort(&self, code: i32) -> !;
}

/// Opens the communicator for `backend`.
///
/// * `Auto`: MPI when this process was started by a launcher (`mpirun`, `srun`,
///   `mpiexec`) with more than one process, else [`local::Local`].
/// * `Local`: a single process, whatever the environment says.
/// * `Mpi`: MPI; a clear [`Error::Config`] when the process was not started by a launcher.
/// * `Nccl`: NCCL for CUDA tensors on GPU `cuda:<node-local rank>`, bootstrapped over
///   MPI (a single rank when not started by a launcher). Needs a dml built with
///   `--features nccl` and CUDA; without either, an [`Error::Config`] that says which is
///   missing. `Auto` never picks NCCL (it cannot see `train.device`): on GPUs set
///   `dist.backend = "nccl"`.
///
/// MPI is initialised here, once per process, and finalised when the returned
/// communicator is dropped: keep it for the whole run.
///
/// ```no_run
/// let comm = dml::comm::init(dml::config::Backend::Auto)?;
/// println!("rank {} of {} ({})", comm.rank(), comm.world(), comm.name());
/// # Ok::<(), dml::Error>(())
/// ```
pub fn init(backend: Backend) -> Result<Box<dyn Comm>> {
    match backend {
        Backend::Local => Ok(Box::new(local::Local)),
        Backend::Auto => match launcher::detect() {
            Some(l) if l.world.is_none_or(|w| w > 1) => Ok(Box::new(mpi::Mpi::init()?)),
            _ => Ok(Box::new(local::Local)),
        },
        Backend::Mpi => match launcher::detect() {
            Some(_) => Ok(Box::new(mpi::Mpi::init()?)),
            None => Err(Error::Config(format!(
                "dist.backend = \"mpi\" but this process was not started by an MPI launcher \
                 (none of {} is set): run it as `mpirun -np W dml ...` (or launch/mpirun.sh, \
                 srun --mpi=pmix), or set dist.backend = \"local\"",
                launcher::VARS.join(", ")
            ))),
        },
        #[cfg(feature = "nccl")]
        Backend::Nccl => Ok(Box::new(nccl::Nccl::init()?)),
        #[cfg(not(feature = "nccl"))]
        Backend::Nccl => Err(Error::Config(
            "dist.backend = \"nccl\" but this dml was not built with the NCCL backend \
             (CUDA tensors on GPUs): rebuild it with `cargo build --release --features nccl` \
             and run it on a machine with CUDA, or set dist.backend = \"mpi\" (CPU tensors)"
                .into(),
        )),
    }
}

/// Sums `values` across ranks, in place: one all-reduce of a CPU f64 tensor (the counts
/// and partial sums of the sharded objective; integers are exact below 2⁵³). A no-op
/// when the world is 1.
///
/// ```
/// let mut v = [1.0, 2.0];
/// dml::comm::sum_f64s(&dml::comm::local::Local, &mut v)?;
/// assert_eq!(v, [1.0, 2.0]);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn sum_f64s(comm: &dyn Comm, values: &mut [f64]) -> Result<()> {
    if comm.world() == 1 || values.is_empty() {
        return Ok(());
    }
    let mut t = Tensor::from_slice(values);
    comm.all_reduce_sum(&mut t)?;
    let n = values.len();
    t.f_copy_data(values, n)?;
    Ok(())
}

/// How many ranks pass `true`, the same count on every rank: one all-reduce of one
/// integer (a stop signal, a capability every rank must have).
///
/// ```
/// assert_eq!(dml::comm::ranks_with(&dml::comm::local::Local, true)?, 1);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn ranks_with(comm: &dyn Comm, flag: bool) -> Result<usize> {
    let mut t = Tensor::from_slice(&[i64::from(flag)]);
    comm.all_reduce_sum(&mut t)?;
    Ok(t.f_int64_value(&[0])? as usize)
}

/// FNV-1a, 64 bits: the hash [`check_same_everywhere`] compares across ranks.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Checks that `bytes` (a resolved config, a dataset checksum, a parameter count…) is the
/// same on every rank, by comparing a 64-bit hash and the length. On a mismatch every rank
/// returns [`Error::Dist`] naming `what` and the ranks whose value differs from rank 0's.
///
/// ```no_run
/// # fn demo(comm: &dyn dml::comm::Comm) -> dml::Result<()> {
/// dml::comm::check_same_everywhere(comm, "the resolved config", b"lr = 0.001")?;
/// # Ok(()) }
/// ```
pub fn check_same_everywhere(comm: &dyn Comm, what: &str, bytes: &[u8]) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let mine = Tensor::from_slice(&[fnv1a64(bytes) as i64, bytes.len() as i64]);
    let all = comm.all_gather(&mine)?;
    let mut v = vec![0i64; all.numel()];
    let n = v.len();
    all.f_copy_data(&mut v, n)?;
    let differ: Vec<usize> = (1..comm.world())
        .filter(|&r| v[2 * r..2 * r + 2] != v[0..2])
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    let detail: Vec<String> = differ
        .iter()
        .map(|&r| {
            format!(
                "rank {r}: {} bytes, hash {:016x}",
                v[2 * r + 1],
                v[2 * r] as u64
            )
        })
        .collect();
    Err(Error::Dist(format!(
        "{what} differs between ranks: rank(s) {differ:?} differ from rank 0 ({} bytes, hash {:016x}; {}). \
         Every rank must be started with the same inputs.",
        v[1],
        v[0] as u64,
        detail.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // Reference values of FNV-1a 64 (Fowler/Noll/Vo test suite): "" -> offset basis,
        // "a" -> 0xaf63dc4c8601ec8c, "foobar" -> 0x85944171f73967e8.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
