//! The only `unsafe` code in dml: memory-mapping a dataset file read-only, and the
//! C++ shim (csrc/autocast.cpp) that sets CUDA autocast to bfloat16.
//!
//! (The NCCL calls of `dist::nccl` will be added here too, behind safe wrappers.)
use std::fs::File;

/// Maps `file` read-only into memory.
///
/// Dataset files are written once (to a temporary name, then renamed) and never
/// modified in place, which is the condition `memmap2` asks callers to uphold.
pub fn map_readonly(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: dml never writes to a dataset file after its atomic rename; a user who
    // truncates it underneath a running job gets SIGBUS, as with any mmap reader.
    unsafe { memmap2::Mmap::map(file) }
}

extern "C" {
    fn dml_set_cuda_autocast_dtype(bf16: i32);
    fn dml_cuda_autocast_dtype_is_bf16() -> i32;
}

/// Sets the dtype CUDA autocast casts to: bfloat16 (`true`) or float16 (`false`, torch's
/// default), as `torch.autocast("cuda", dtype=...)` does. A thread-local libtorch
/// setting: call it on the thread that runs the training step. Works without a GPU.
///
/// ```
/// dml::sys::set_cuda_autocast_bf16(true);
/// assert!(dml::sys::cuda_autocast_is_bf16());
/// ```
pub fn set_cuda_autocast_bf16(bf16: bool) {
    // SAFETY: a C shim (csrc/autocast.cpp) around at::autocast::set_autocast_dtype, which
    // only stores a value in libtorch's autocast state.
    unsafe { dml_set_cuda_autocast_dtype(i32::from(bf16)) }
}

/// True if CUDA autocast casts to bfloat16 (see [`set_cuda_autocast_bf16`]).
pub fn cuda_autocast_is_bf16() -> bool {
    // SAFETY: reads libtorch's autocast state through the C shim.
    unsafe { dml_cuda_autocast_dtype_is_bf16() != 0 }
}
