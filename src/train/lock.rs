//! The run directory's lock: rank 0 holds an exclusive lock on `RUN/dml.lock` for the
//! run's life, so that a second `dml train` (or `--resume`) on the same directory fails
//! at once instead of interleaving checkpoints and metrics with the first.
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = "dml.lock";

/// An exclusive lock on a run directory; released when dropped or when the process ends.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl RunLock {
    /// Creates `run` if needed and locks it, writing this process's pid and host into
    /// the lock file. A directory locked by another process is an error naming that
    /// process's pid and host.
    ///
    /// ```no_run
    /// let lock = dml::train::lock::RunLock::acquire("runs/quick".as_ref())?;
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn acquire(run: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
        let path = run.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if !crate::sys::try_lock_exclusive(&file).map_err(|e| Error::io(&path, e))? {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                h => h.to_string(),
            };
            return Err(Error::Input(format!(
                "{} is in use by {holder} (lock {}): wait for that run to end, or give \
                 another --out",
                run.display(),
                path.display()
            )));
        }
        let me = format!("dml pid {} on host {}\n", std::process::id(), host_name());
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(me.as_bytes()))
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// This machine's host name (Linux), or `unknown`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_run_fails_naming_the_holder_and_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::acquire(&run).unwrap();
        let held = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(
            held,
            format!("dml pid {} on host {}\n", std::process::id(), host_name())
        );
        // flock is per open file: a second open in this process conflicts like another
        // process would.
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(err.contains(held.trim()), "{err}");
        assert!(err.contains("another --out"), "{err}");
        drop(first);
        RunLock::acquire(&run).unwrap();
    }
}
