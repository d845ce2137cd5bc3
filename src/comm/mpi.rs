//! The MPI communicator (Open MPI, MPICH… through the `mpi` crate): CPU tensors.
use std::cell::RefCell;

use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use mpi::Threading;
use tch::kind::Element;
use tch::{Kind, Tensor};

use super::header::{self, Op};
use super::Comm;
use crate::error::{Error, Result};

/// Largest number of elements handed to one MPI call (MPI counts are C ints).
const CHUNK: usize = 1 << 28;

/// MPI's world communicator, and this node's shared-memory sub-communicator.
///
/// MPI is initialised by [`Mpi::init`] and finalised when this value is dropped.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_world: usize,
    /// Send buffers of the in-place all-reduces, kept between calls.
    scratch: RefCell<Scratch>,
    /// The thread support MPI granted.
    threading: Threading,
    // Dropped last: finalises MPI after the communicators above are freed.
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI (once per process) and splits the world by node.
    ///
    /// ```no_run
    /// use dml::comm::Comm;
    /// let comm = dml::comm::mpi::Mpi::init()?;
    /// println!("rank {} of {}, GPU {}", comm.rank(), comm.world(), comm.local_rank());
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn init() -> Result<Self> {
        // A rank waiting in a collective yields its core instead of spinning on it: the
        // core is then free for this rank's compute while its communication thread waits
        // for a bucket (BENCHMARKS.md "The step"). Open MPI reads it at initialisation;
        // a value set by the user wins, other MPIs ignore it.
        if std::env::var_os("OMPI_MCA_mpi_yield_when_idle").is_none() {
            std::env::set_var("OMPI_MCA_mpi_yield_when_idle", "1");
        }
        // Serialized: the gradient reducer's communication thread makes MPI calls while
        // the main thread makes none (comm::reducer); Open MPI grants it.
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| {
                Error::Dist(
                    "MPI was already initialised in this process: comm::init must be called \
                     once, and its communicator kept for the whole run"
                        .into(),
                )
            })?;
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        let node = world.split_shared(world.rank());
        let (local_rank, local_world) = (node.rank() as usize, node.size() as usize);
        Ok(Mpi {
            world,
            rank,
            size,
            local_rank,
            local_world,
            scratch: RefCell::default(),
            threading,
            _universe: universe,
        })
    }

    /// Exchanges headers and checks that every rank is in the same collective with a
    /// compatible tensor: the error (if any) is the same on every rank.
    fn agree(&self, op: Op, t: Option<&Tensor>, arg: i64) -> Result<()> {
        agree(&self.world, op, t, arg)
    }

    /// Every rank's header, in rank order (an MPI all-gather): the agreement step that
    /// the nccl backend reuses before its own collectives.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(super) fn exchange_headers(&self, mine: &[i64; header::LEN]) -> Vec<i64> {
        exchange_headers(&self.world, mine)
    }

    /// A duplicate of the world communicator for the gradient reducer's communication
    /// thread (a collective: every rank calls it together), or `None` when MPI did not
    /// grant `MPI_THREAD_SERIALIZED`.
    fn duplicate_for_thread(&self) -> Option<MpiGradChannel> {
        let dup = self.world.duplicate();
        crate::sys::SendComm::new(dup, self.threading).map(|comm| MpiGradChannel {
            comm,
            scratch: Scratch::default(),
        })
    }

    fn gather_typed<T: Element + Equivalence + Default + Clone>(
        &self,
        t: &Tensor,
    ) -> Result<Tensor> {
        let n = t.numel();
        let mine = host_vec::<T>(t)?;
        let mut all = vec![T::default(); n * self.size];
        if n <= CHUNK {
            self.world.all_gather_into(&mine[..], &mut all[..]);
        } else {
            // Rank-major output: gather chunk by chunk into a scratch, then place.
            let mut scratch = vec![T::default(); CHUNK * self.size];
            for start in (0..n).step_by(CHUNK) {
                let len = CHUNK.min(n - start);
                let recv = &mut scratch[..len * self.size];
                self.world.all_gather_into(&mine[start..start + len], recv);
                for r in 0..self.size {
                    all[r * n + start..r * n + start + len]
                        .clone_from_slice(&recv[r * len..(r + 1) * len]);
                }
            }
        }
        let mut size = t.size();
        if size.is_empty() {
            size = vec![self.size as i64];
        } else {
            size[0] *= self.size as i64;
        }
        Ok(Tensor::f_from_slice(&all)?.f_view(&size[..])?)
    }

    fn broadcast_typed<T: Element + Equivalence + Default + Clone>(
        &self,
        t: &mut Tensor,
        root: usize,
    ) -> Result<()> {
        let root = self.world.process_at_rank(root as i32);
        if let Some(data) = crate::sys::cpu_data_mut::<T>(t) {
            for chunk in data.chunks_mut(CHUNK) {
                root.broadcast_into(chunk);
            }
            return Ok(());
        }
        let mut buf = host_vec::<T>(t)?;
        for chunk in buf.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
        write_back(t, &buf)
    }
}

/// Every rank's header on `world`, in rank order (an MPI all-gather).
fn exchange_headers(world: &SimpleCommunicator, mine: &[i64; header::LEN]) -> Vec<i64> {
    let mut all = vec![0i64; header::LEN * world.size() as usize];
    world.all_gather_into(&mine[..], &mut all[..]);
    all
}

/// Checks that every rank of `world` is in the same collective with a compatible tensor:
/// the error (if any) is the same on every rank.
fn agree(world: &SimpleCommunicator, op: Op, t: Option<&Tensor>, arg: i64) -> Result<()> {
    let all = exchange_headers(world, &header::encode(op, t, arg));
    header::check(op, &all, true)
}

/// Send buffers of the in-place all-reduces, kept between calls (no allocation and no
/// page faults on every gradient bucket).
#[derive(Default)]
struct Scratch {
    f32: Vec<f32>,
    f64: Vec<f64>,
}

/// [`Comm::all_reduce_sum`] on `world`: the agreement check, then the sum by kind.
fn all_reduce_sum_on(
    world: &SimpleCommunicator,
    t: &mut Tensor,
    scratch: &mut Scratch,
) -> Result<()> {
    agree(world, Op::AllReduceSum, Some(t), 0)?;
    match t.kind() {
        Kind::Float => reduce_typed::<f32>(world, t, &mut scratch.f32),
        Kind::Double => reduce_typed::<f64>(world, t, &mut scratch.f64),
        Kind::Int64 => reduce_typed::<i64>(world, t, &mut Vec::new()),
        Kind::Uint8 => reduce_typed::<u8>(world, t, &mut Vec::new()),
        k => Err(Error::Dist(format!(
            "all_reduce_sum: unsupported kind {k:?}"
        ))),
    }
}

/// Sums `t` over `world`'s ranks: in place on a contiguous CPU tensor's memory (its
/// elements copied into `scratch` as the send buffer), else through host copies.
fn reduce_typed<T: Element + Equivalence + Default + Clone>(
    world: &SimpleCommunicator,
    t: &mut Tensor,
    scratch: &mut Vec<T>,
) -> Result<()> {
    let sum = mpi::collective::SystemOperation::sum();
    if let Some(data) = crate::sys::cpu_data_mut::<T>(t) {
        for chunk in data.chunks_mut(CHUNK) {
            scratch.clear();
            scratch.extend_from_slice(chunk);
            world.all_reduce_into(&scratch[..], chunk, sum);
        }
        return Ok(());
    }
    let mine = host_vec::<T>(t)?;
    let mut out = vec![T::default(); mine.len()];
    for start in (0..mine.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(mine.len());
        world.all_reduce_into(&mine[start..end], &mut out[start..end], sum);
    }
    write_back(t, &out)
}

/// A duplicate of the world communicator, owned by the gradient reducer's communication
/// thread ([`Mpi::grad_channel`]).
pub struct MpiGradChannel {
    comm: crate::sys::SendComm,
    scratch: Scratch,
}

impl super::GradChannel for MpiGradChannel {
    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        all_reduce_sum_on(self.comm.comm(), t, &mut self.scratch)
    }
}

/// `t`'s elements, row-major, in a new vector.
fn host_vec<T: Element + Default + Clone>(t: &Tensor) -> Result<Vec<T>> {
    let mut v = vec![T::default(); t.numel()];
    let n = v.len();
    t.f_copy_data(&mut v, n)?;
    Ok(v)
}

/// Overwrites `t` in place with `data` (same number of elements), outside autograd.
fn write_back<T: Element>(t: &mut Tensor, data: &[T]) -> Result<()> {
    let src = Tensor::f_from_slice(data)?.f_view(&t.size()[..])?;
    tch::no_grad(|| t.f_copy_(&src))?;
    Ok(())
}

impl Comm for Mpi {
    /// A duplicate of the world for a communication thread, if every rank has one
    /// (MPI granted `MPI_THREAD_SERIALIZED` everywhere; agreed by an all-reduce).
    fn grad_channel(&self) -> Result<Option<Box<dyn super::GradChannel>>> {
        let channel = self.duplicate_for_thread();
        let everywhere = super::ranks_with(self, channel.is_some())? == self.size;
        Ok(channel
            .filter(|_| everywhere)
            .map(|c| Box::new(c) as Box<dyn super::GradChannel>))
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_world(&self) -> usize {
        self.local_world
    }
    fn name(&self) -> &'static str {
        "mpi"
    }
    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        self.agree(Op::AllGather, Some(local), 0)?;
        match local.kind() {
            Kind::Float => self.gather_typed::<f32>(local),
            Kind::Double => self.gather_typed::<f64>(local),
            Kind::Int64 => self.gather_typed::<i64>(local),
            Kind::Uint8 => self.gather_typed::<u8>(local),
            k => Err(Error::Dist(format!("all_gather: unsupported kind {k:?}"))),
        }
    }
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        all_reduce_sum_on(&self.world, t, &mut self.scratch.borrow_mut())
    }
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        self.agree(Op::Broadcast, Some(t), root as i64)?;
        match t.kind() {
            Kind::Float => self.broadcast_typed::<f32>(t, root),
            Kind::Double => self.broadcast_typed::<f64>(t, root),
            Kind::Int64 => self.broadcast_typed::<i64>(t, root),
            Kind::Uint8 => self.broadcast_typed::<u8>(t, root),
            k => Err(Error::Dist(format!("broadcast: unsupported kind {k:?}"))),
        }
    }
    fn barrier(&self) -> Result<()> {
        // The header exchange is itself a barrier (an all-gather), and checks the order.
        self.agree(Op::Barrier, None, 0)
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
