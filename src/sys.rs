//! The only `unsafe` code in dml: memory-mapping a dataset file read-only.
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
