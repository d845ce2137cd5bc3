//! An MPI communicator a communication thread may own.

/// An MPI communicator that may be moved to, and used from, another thread: the
/// gradient reducer's communication thread owns one (a duplicate of the world).
///
/// Only [`SendComm::new`] makes one, and only when MPI was initialised with at least
/// `MPI_THREAD_SERIALIZED`; the owner must still never call MPI at the same time as
/// another thread (dml's reducer hands the communication to its thread for the
/// backward, during which the main thread makes no MPI call, and waits for it after).
pub struct SendComm(mpi::topology::SimpleCommunicator);

// SAFETY: an MPI communicator handle is an opaque value valid on every thread of the
// process once MPI provides MPI_THREAD_SERIALIZED or more (checked in `new`); calls are
// serialised by the owner (see the type's docs).
unsafe impl Send for SendComm {}

impl SendComm {
    /// `comm` as a [`SendComm`], if `provided` (the threading level MPI granted) allows
    /// calls from more than the main thread; `None` otherwise.
    pub fn new(
        comm: mpi::topology::SimpleCommunicator,
        provided: mpi::Threading,
    ) -> Option<SendComm> {
        matches!(
            provided,
            mpi::Threading::Serialized | mpi::Threading::Multiple
        )
        .then_some(SendComm(comm))
    }

    /// The communicator.
    pub fn comm(&self) -> &mpi::topology::SimpleCommunicator {
        &self.0
    }
}
