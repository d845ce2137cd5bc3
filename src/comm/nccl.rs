//! The NCCL communicator (feature `nccl`): CUDA tensors, one GPU per rank.
//!
//! Bootstrap as llm.c does it: MPI ([`Mpi`]) gives the rank, the world and the node-local
//! rank; rank `r` uses GPU `cuda:<node-local rank>`; rank 0 makes an NCCL unique id, which
//! is broadcast (128 bytes) over MPI; every rank then creates its NCCL communicator
//! (`ncclCommInitRankConfig`, non-blocking). The MPI communicator stays inside for the
//! header agreement before each collective, the barrier, `abort`, and for CPU tensors.
//!
//! Each collective on CUDA tensors:
//! 1. exchanges headers over MPI (collective, kind, shape, root): a mismatch between ranks
//!    is an [`Error::Dist`] on every rank, not a hang;
//! 2. enqueues the NCCL call on the default CUDA stream (libtorch's stream, so it is
//!    ordered with the kernels that produce and consume the tensor);
//! 3. waits for it: polls `ncclCommGetAsyncError` and the default stream until both are
//!    done, for at most [`TIMEOUT`] (300 s; there is no `dist.timeout_s` config key yet).
//!    On an asynchronous error or the timeout it aborts the NCCL communicator
//!    (`ncclCommAbort`) and returns [`Error::Dist`] naming the collective and the rank;
//!    the caller then ends the job with [`Comm::abort`].
//!
//! Collectives on CPU tensors (config hashes, counters) go through the inner MPI
//! communicator unchanged, when every rank passes a CPU tensor (checked).
//!
//! All raw calls live in [`crate::sys::nccl`].
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::header::{self, Mem, Op};
use super::mpi::Mpi;
use super::Comm;
use crate::error::{Error, Result};
use crate::sys::nccl::{self as raw, Communicator, State};

/// How long a collective (or the communicator's creation) may take before it counts as
/// hung: a dead or stuck peer then costs at most this long.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// The NCCL communicator: NCCL for CUDA tensors on GPU `cuda:<local_rank>`, the inner
/// MPI communicator for bootstrap, agreement, barrier, abort and CPU tensors.
pub struct Nccl {
    // Dropped first: the NCCL communicator is destroyed before MPI is finalised.
    comm: Communicator,
    device: usize,
    timeout: Duration,
    mpi: Mpi,
}

impl Nccl {
    /// Initialises MPI, then NCCL on GPU `cuda:<node-local rank>`, with the collective
    /// timeout [`TIMEOUT`]. Errors (no CUDA, too few GPUs on a node, NCCL not loadable)
    /// are reported on every rank.
    ///
    /// ```no_run
    /// use dml::comm::Comm;
    /// let comm = dml::comm::nccl::Nccl::init()?;
    /// println!("rank {} of {} on cuda:{}", comm.rank(), comm.world(), comm.local_rank());
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn init() -> Result<Self> {
        Self::with_timeout(TIMEOUT)
    }

    /// [`Nccl::init`] with another collective timeout.
    ///
    /// ```no_run
    /// let comm = dml::comm::nccl::Nccl::with_timeout(std::time::Duration::from_secs(60))?;
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn with_timeout(timeout: Duration) -> Result<Self> {
        if !tch::Cuda::is_available() {
            return Err(Error::Config(no_cuda()));
        }
        let mpi = Mpi::init()?;
        let (rank, world, device) = (mpi.rank(), mpi.world(), mpi.local_rank());
        // Local preparation; a failure on any rank stops every rank.
        let gpus = tch::Cuda::device_count().max(0) as usize;
        let prepared = if device >= gpus {
            Err(format!(
                "node-local rank {device} needs GPU cuda:{device} but {gpus} GPU(s) are \
                 visible: start at most one rank per GPU on each node (check \
                 CUDA_VISIBLE_DEVICES)"
            ))
        } else {
            raw::set_device(device).and_then(|_| {
                if rank == 0 {
                    raw::unique_id()
                } else {
                    raw::version().map(|_| [0u8; 128])
                }
            })
        };
        let id = agree_ok(&mpi, "NCCL set-up", prepared)?;
        // The unique id, from rank 0 to every rank, over MPI.
        let mut id_t = Tensor::f_from_slice(&id[..])?;
        mpi.broadcast(&mut id_t, 0)?;
        let mut id = [0u8; 128];
        id_t.f_copy_data(&mut id, 128)?;
        let comm = Communicator::init_rank(&id, world, rank, device, true);
        let comm = agree_ok(&mpi, "ncclCommInitRankConfig", comm)?;
        let nccl = Nccl {
            comm,
            device,
            timeout,
            mpi,
        };
        let ready = nccl.wait("communicator creation");
        agree_ok(
            &nccl.mpi,
            "NCCL communicator creation",
            ready.map_err(|e| e.to_string()),
        )?;
        Ok(nccl)
    }

    /// Aborts the NCCL communicator and builds the error for `what` on this rank.
    fn fail(&self, what: &str, why: &str) -> Error {
        self.comm.abort();
        Error::Dist(format!(
            "nccl {what} failed on rank {} of {} (cuda:{}): {why}; the NCCL communicator \
             was aborted",
            self.mpi.rank(),
            self.mpi.world(),
            self.device
        ))
    }

    /// Waits until NCCL has nothing in progress and the default stream is idle, at most
    /// `self.timeout`.
    fn wait(&self, what: &str) -> Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(10);
        loop {
            match self.comm.state() {
                State::Failed(e) => return Err(self.fail(what, &e)),
                State::InProgress => {}
                State::Ready => {
                    if raw::default_stream_idle().map_err(|e| self.fail(what, &e))? {
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > self.timeout {
                return Err(self.fail(
                    what,
                    &format!(
                        "not finished after {} s (a peer died, hung, or is in another \
                         collective)",
                        self.timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// The MPI header agreement for a collective on CUDA tensors; a tensor on another
    /// rank's GPU is reported as such.
    fn agree(&self, op: Op, t: Option<&Tensor>, arg: i64) -> Result<()> {
        let mut mine = header::encode(op, t, arg);
        if let Some(Device::Cuda(d)) = t.map(|t| t.device()) {
            if d != self.device {
                mine[2] = header::OTHER_GPU;
            }
        }
        let all = self.mpi.exchange_headers(&mine);
        header::check_on(op, &all, Mem::Cuda)?;
        if self.comm.is_aborted() {
            return Err(Error::Dist(format!(
                "nccl {}: the NCCL communicator of rank {} was aborted after an earlier error",
                op_name(op),
                self.mpi.rank()
            )));
        }
        Ok(())
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::AllGather => "all_gather",
        Op::AllReduceSum => "all_reduce_sum",
        Op::Broadcast => "broadcast",
        Op::Barrier => "barrier",
    }
}

/// The message of `dist.backend = "nccl"` without CUDA.
fn no_cuda() -> String {
    "dist.backend = \"nccl\" needs CUDA, and libtorch sees no CUDA device \
     (tch::Cuda::is_available() is false): run on a GPU node (check nvidia-smi and \
     CUDA_VISIBLE_DEVICES), or set dist.backend = \"mpi\" for CPU tensors"
        .into()
}

/// Gathers every rank's success over MPI: `Ok` on every rank when every rank
/// succeeded, else the same [`Error::Dist`] on every rank naming the failed ranks (and,
/// on a failed rank, its own reason).
fn agree_ok<T>(mpi: &Mpi, what: &str, mine: std::result::Result<T, String>) -> Result<T> {
    let flag = Tensor::from_slice(&[i64::from(mine.is_err())]);
    let all = mpi.all_gather(&flag)?;
    let mut v = vec![0i64; all.numel()];
    let n = v.len();
    all.f_copy_data(&mut v, n)?;
    let failed: Vec<usize> = (0..n).filter(|&r| v[r] != 0).collect();
    match mine {
        Ok(x) if failed.is_empty() => Ok(x),
        Ok(_) => Err(Error::Dist(format!(
            "{what} failed on rank(s) {failed:?} (see their messages); rank {} stops too",
            mpi.rank()
        ))),
        Err(e) => Err(Error::Dist(format!(
            "{what} failed on rank {} (of failed rank(s) {failed:?}): {e}",
            mpi.rank()
        ))),
    }
}

impl Comm for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn world(&self) -> usize {
        self.mpi.world()
    }
    fn local_rank(&self) -> usize {
        self.mpi.local_rank()
    }
    fn local_world(&self) -> usize {
        self.mpi.local_world()
    }
    fn name(&self) -> &'static str {
        "nccl"
    }
    /// CUDA tensors of kind f32, f64, bf16, i64 or u8 through `ncclAllGather`; CPU
    /// tensors through MPI.
    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        if local.device() == Device::Cpu {
            return self.mpi.all_gather(local);
        }
        self.agree(Op::AllGather, Some(local), 0)?;
        let src = local.f_contiguous()?;
        let mut size = local.size();
        if size.is_empty() {
            size = vec![self.world() as i64];
        } else {
            size[0] *= self.world() as i64;
        }
        let mut out = Tensor::f_empty(&size[..], (local.kind(), local.device()))?;
        self.comm
            .all_gather(&src, &mut out)
            .map_err(|e| self.fail("all_gather", &e))?;
        self.wait("all_gather")?;
        Ok(out)
    }
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        if t.device() == Device::Cpu {
            return self.mpi.all_reduce_sum(t);
        }
        self.agree(Op::AllReduceSum, Some(t), 0)?;
        in_place(t, |c| {
            self.comm
                .all_reduce_sum(c)
                .map_err(|e| self.fail("all_reduce_sum", &e))?;
            self.wait("all_reduce_sum")
        })
    }
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        if t.device() == Device::Cpu {
            return self.mpi.broadcast(t, root);
        }
        self.agree(Op::Broadcast, Some(t), root as i64)?;
        in_place(t, |c| {
            self.comm
                .broadcast(c, root)
                .map_err(|e| self.fail("broadcast", &e))?;
            self.wait("broadcast")
        })
    }
    fn barrier(&self) -> Result<()> {
        // Every collective above has finished on the GPU before it returned, so an MPI
        // barrier orders the ranks' CUDA work too.
        self.mpi.barrier()
    }
    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}

/// Runs `f` on `t` when it is contiguous, else on a contiguous copy that is then
/// copied back into `t` (outside autograd).
fn in_place(t: &mut Tensor, f: impl FnOnce(&mut Tensor) -> Result<()>) -> Result<()> {
    if t.is_contiguous() {
        return f(t);
    }
    let mut c = t.f_contiguous()?;
    f(&mut c)?;
    tch::no_grad(|| t.f_copy_(&c))?;
    Ok(())
}

/// The kinds this backend moves on CUDA.
pub const KINDS: [Kind; 5] = header::SUPPORTED_CUDA;
