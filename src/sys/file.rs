//! Files: memory-mapping a dataset read-only, `flock` on a run directory's lock file.
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

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` if another open
/// file holds it. The kernel releases it when the file is closed or the process ends
/// (a crash leaves no stale lock).
pub fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor that `file` owns for the duration of the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}
