//! Checkpoints: `RUN/checkpoints/step-N/` with the weights, the optimiser state, the SWA
//! average and the cross-batch memory (if any) and the loop state (step and sampler state; the loader's random
//! numbers are a pure function of seed, step and position, so they need no state).
//! Written by rank 0 to `step-N.tmp`; every file and the directory are synced, then it
//! is renamed and the parent synced ([`publish_dir`]), so neither a crash nor a power
//! loss leaves a half-written checkpoint; older ones beyond `train.keep_checkpoints` are
//! pruned.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::sampler::SamplerState;
use crate::error::{Error, Result};
use crate::loss::xbm::CrossBatchMemory;
use crate::model::{tensor_file, Model};
use crate::optim::{Adam, Swa};

/// Loop state stored beside the tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoopState {
    /// Steps completed.
    pub step: usize,
    /// The sampler's state after `step` steps (checked against the sampler on resume).
    pub sampler: SamplerState,
    /// Divide and Conquer's clustering of the phase in progress.
    #[serde(default)]
    pub dnc: Option<crate::dnc::schedule::DncState>,
}

/// The cross-batch memory's file in a checkpoint directory.
pub const MEMORY_FILE: &str = "xbm.safetensors";

/// The checkpoint directory for `step`.
pub fn dir_for(run: &Path, step: usize) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step}"))
}

/// Writes a checkpoint atomically and prunes old ones, keeping `keep`. A checkpoint that
/// cannot be written (a full disk, a quota) leaves nothing behind (its `step-N.tmp` is
/// removed) and the error says which complete checkpoint a resume continues from.
pub fn save(
    run: &Path,
    model: &Model,
    optim: &Adam,
    swa: Option<&Swa>,
    memory: Option<&CrossBatchMemory>,
    state: &LoopState,
    keep: usize,
) -> Result<()> {
    let dir = dir_for(run, state.step);
    let tmp = dir.with_extension("tmp");
    let written =
        write_files(&tmp, model, optim, swa, memory, state).and_then(|()| publish_dir(&tmp, &dir));
    if let Err(e) = written {
        let what = format!("the checkpoint of step {}", state.step);
        return Err(not_written(run, &what, &tmp, e));
    }
    let mut steps = list(run)?;
    steps.sort_unstable();
    while steps.len() > keep {
        let old = dir_for(run, steps.remove(0));
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The files of a checkpoint, into the fresh directory `tmp`.
fn write_files(
    tmp: &Path,
    model: &Model,
    optim: &Adam,
    swa: Option<&Swa>,
    memory: Option<&CrossBatchMemory>,
    state: &LoopState,
) -> Result<()> {
    remove_leftover(tmp)?;
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    model.save(&tmp.join("model.safetensors"))?;
    tensor_file::write(&tmp.join("optimizer.safetensors"), &optim.state())?;
    if let Some(swa) = swa {
        tensor_file::write(&tmp.join("swa.safetensors"), &swa.state())?;
    }
    if let Some(memory) = memory {
        tensor_file::write(&tmp.join(MEMORY_FILE), &memory.state())?;
    }
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Train(e.to_string()))?;
    write_synced(&tmp.join("state.json"), json.as_bytes())
}

/// Removes `path` (a directory or a file) if it exists: what an interrupted save left.
fn remove_leftover(path: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    removed.map_err(|e| Error::io(path, e))
}

/// What a run directory offers a resume, for error messages: the newest complete
/// checkpoint and the command that continues from it, or that none was written yet.
pub fn resume_note(run: &Path) -> String {
    match list(run).ok().and_then(|s| s.into_iter().max()) {
        Some(step) => format!(
            "the newest checkpoint, {}, is kept (dml train --resume {} continues from it)",
            dir_for(run, step).display(),
            run.display()
        ),
        None => "no checkpoint was written yet".to_string(),
    }
}

/// The error of `what` (a checkpoint, the final model) that could not be written to
/// `run`, after removing its temporary file or directory `tmp`: the cause, whether the
/// temporary files are gone, and [`resume_note`].
pub fn not_written(run: &Path, what: &str, tmp: &Path, cause: Error) -> Error {
    let cleaned = match remove_leftover(tmp) {
        Ok(()) => "its temporary files were removed".to_string(),
        Err(e) => format!("its temporary files could not be removed either ({e}): delete them"),
    };
    Error::Train(format!(
        "{what} could not be written ({cause}); {cleaned}; free space on the disk of {} (or \
         copy the run to another disk); {}",
        run.display(),
        resume_note(run)
    ))
}

/// Makes the finished temporary directory `tmp` durable and renames it to `dir`: every
/// file in it and `tmp` itself are synced, a previous `dir` is replaced, and the parent
/// directory is synced after the rename, so that a power loss leaves either the old
/// state or the complete new one.
pub fn publish_dir(tmp: &Path, dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(tmp).map_err(|e| Error::io(tmp, e))? {
        let path = entry.map_err(|e| Error::io(tmp, e))?.path();
        sync_path(&path)?;
    }
    sync_path(tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
    sync_path(dir.parent().unwrap_or(Path::new(".")))
}

/// Syncs the finished file `tmp`, renames it to `path` and syncs the directory.
pub fn publish_file(tmp: &Path, path: &Path) -> Result<()> {
    sync_path(tmp)?;
    std::fs::rename(tmp, path).map_err(|e| Error::io(path, e))?;
    sync_path(path.parent().unwrap_or(Path::new(".")))
}

/// Syncs a file, or a directory's entries, to disk.
pub fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to `path` and syncs it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Steps of the complete checkpoints in `run` (temporary ones are ignored).
pub fn list(run: &Path) -> Result<Vec<usize>> {
    let dir = run.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) {
            steps.push(n);
        }
    }
    Ok(steps)
}

/// Loads the newest checkpoint of `run` into `model`, `optim`, `swa` and `memory`;
/// returns its loop state.
pub fn load_latest(
    run: &Path,
    model: &mut Model,
    optim: &mut Adam,
    swa: Option<&mut Swa>,
    memory: Option<&mut CrossBatchMemory>,
) -> Result<LoopState> {
    let step = list(run)?.into_iter().max().ok_or_else(|| {
        Error::Train(format!(
            "{}: no checkpoint to resume from (checkpoints/step-N is missing)",
            run.display()
        ))
    })?;
    let dir = dir_for(run, step);
    let text = std::fs::read_to_string(dir.join("state.json"))
        .map_err(|e| Error::io(dir.join("state.json"), e))?;
    let state: LoopState = serde_json::from_str(&text)
        .map_err(|e| Error::Train(format!("{}: {e}", dir.join("state.json").display())))?;
    model.load(&dir.join("model.safetensors"))?;
    let opt = tensor_file::read(&dir.join("optimizer.safetensors"))?;
    optim.load_state(&opt)?;
    if let Some(swa) = swa {
        let path = dir.join("swa.safetensors");
        if !path.is_file() {
            return Err(Error::Train(format!(
                "{} is missing: was the run started without swa.start?",
                path.display()
            )));
        }
        let avg = tensor_file::read(&path)?;
        swa.load_state(&avg)?;
    }
    if let Some(memory) = memory {
        let path = dir.join(MEMORY_FILE);
        if !path.is_file() {
            return Err(Error::Train(format!(
                "{} is missing: was the run started without xbm.size?",
                path.display()
            )));
        }
        memory.load_state(&tensor_file::read(&path)?, model.device())?;
    }
    Ok(state)
}
