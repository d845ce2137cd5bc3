//! The only `unsafe` code in dml, each piece behind a safe function:
//!
//! * [`map_readonly`]: memory-mapping a dataset file read-only;
//! * [`set_cuda_autocast_bf16`]: the C++ shim (csrc/autocast.cpp) that sets the dtype of
//!   CUDA autocast, which tch does not expose;
//! * [`cpu_data`] / [`cpu_data_mut`]: a CPU tensor's elements as a slice, so that MPI
//!   reads and writes tensor memory without host copies;
//! * [`GradReadyHooks`] and [`set_grad`]: torch's post-accumulate-grad hooks and
//!   `param.grad = view` through the C++ shim (csrc/grad_hooks.cpp), for the gradient
//!   all-reduce overlapped with the backward; [`SendComm`], an MPI communicator a
//!   communication thread may own;
//! * [`try_lock_exclusive`]: `flock` on a run directory's lock file;
//! * [`install_stop_handlers`]: SIGTERM / SIGUSR1 handlers that only record the signal
//!   (preemption: the training loop stops after the current step);
//! * [`fused_adam`]: torch's fused Adam/AdamW kernels through the C++ shim
//!   (csrc/fused_adam.cpp), which tch does not expose either;
//! * `nccl` (with the `nccl` feature): the raw NCCL and CUDA runtime calls of
//!   `comm::nccl`. Both libraries are loaded when first used (`libnccl.so.2` and
//!   `libcudart.so.13`, which libtorch's CUDA build has already loaded), so a machine
//!   without CUDA builds and runs dml; the struct layouts and enums come from `cudarc`'s
//!   bindings of NCCL 2.29. Every wrapper checks its tensors (CUDA, on the communicator's
//!   GPU, contiguous, a supported kind, matching lengths) before handing NCCL their
//!   device pointers.
//!
//! One file per concern: [`mod@file`], [`signal`], [`tensor`], [`mpi`], [`shim`] (the C++
//! shim) and `nccl`; the crate root allows `unsafe` here and nowhere else
//! (`#![deny(unsafe_code)]` in lib.rs).
pub mod file;
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod shim;
pub mod signal;
pub mod tensor;

pub use file::{map_readonly, try_lock_exclusive};
pub use mpi::SendComm;
pub use shim::{
    cuda_autocast_is_bf16, fused_adam, set_cuda_autocast_bf16, set_grad, AdamHyper, GradReadyHooks,
};
pub use signal::{install_stop_handlers, stop_signal};
pub use tensor::{cpu_data, cpu_data_mut};
