//! Rank 0's side effects during training: `RUN/metrics.jsonl` and the progress bar.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Appends one JSON object per step to `RUN/metrics.jsonl` and drives the progress bar.
/// Does nothing on ranks other than 0.
pub struct RunLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    bar: Option<ProgressBar>,
    started: Instant,
    images: usize,
}

impl RunLog {
    /// Opens the log of `run` for steps `start..total`. On resume, lines of steps after
    /// `start` (written after the last checkpoint of a crashed run) are dropped.
    pub fn open(run: &Path, rank: usize, start: usize, total: usize) -> Result<RunLog> {
        let path = run.join("metrics.jsonl");
        if rank != 0 {
            return Ok(RunLog {
                path,
                file: None,
                bar: None,
                started: Instant::now(),
                images: 0,
            });
        }
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s as usize <= start)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(&path, kept).map_err(|e| Error::io(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start as u64);
        Ok(RunLog {
            path,
            file: Some(file),
            bar: Some(bar),
            started: Instant::now(),
            images: 0,
        })
    }

    /// Records step `step` (1-based count of completed steps) with extra fields.
    pub fn step(
        &mut self,
        step: usize,
        loss: f64,
        lr: f64,
        batch: usize,
        extra: Value,
    ) -> Result<()> {
        self.images += batch;
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let ips = self.images as f64 / secs;
        let mut obj = json!({ "step": step, "loss": loss, "lr": lr, "images_per_s": ips });
        if let (Some(o), Value::Object(e)) = (obj.as_object_mut(), extra) {
            o.extend(e);
        }
        writeln!(file, "{obj}").map_err(|e| Error::io(&self.path, e))?;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {loss:.4}  {ips:.0} img/s"));
            bar.set_position(step as u64);
        }
        Ok(())
    }

    /// Prints a line above the progress bar (rank 0 only).
    pub fn println(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.println(msg);
        }
    }

    /// Finishes the progress bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
