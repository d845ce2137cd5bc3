//! Rank 0's side effects during training: `RUN/metrics.jsonl` and the progress bar.
use std::collections::VecDeque;
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
    rate: Throughput,
}

/// Images per second over the last [`Throughput::WINDOW`] steps (fewer at the start):
/// the current speed, which a pause (D&C's clustering, validation, a checkpoint) affects
/// only while it is in the window, where an average since the start would carry it to
/// the end of the run.
#[derive(Debug, Default)]
struct Throughput {
    /// `(seconds since the start, images)` of the window's steps, oldest first.
    steps: VecDeque<(f64, usize)>,
}

impl Throughput {
    const WINDOW: usize = 20;

    /// Records a step of `images` that ended `at` seconds after the log opened; returns
    /// the rate over the window (the first step's span starts when the log opened).
    fn push(&mut self, at: f64, images: usize) -> f64 {
        if self.steps.len() > Self::WINDOW {
            self.steps.pop_front();
        }
        self.steps.push_back((at, images));
        // Once the window is full, the oldest entry only marks where it starts.
        let full = self.steps.len() > Self::WINDOW;
        let since = if full { self.steps[0].0 } else { 0.0 };
        let n: usize = self.steps.iter().skip(full as usize).map(|&(_, i)| i).sum();
        n as f64 / (at - since).max(1e-9)
    }
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
                rate: Throughput::default(),
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
            rate: Throughput::default(),
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
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        let ips = self.rate.push(elapsed, batch);
        let mut obj = json!({
            "step": step,
            "loss": loss,
            "lr": lr,
            "images_per_s": ips,
            "elapsed_s": elapsed,
        });
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

#[cfg(test)]
mod tests {
    use super::Throughput;

    #[test]
    fn throughput_is_the_rate_of_the_last_steps() {
        let mut t = Throughput::default();
        // 64 images every 0.5 s: 128 img/s from the first step on.
        for i in 1..=30 {
            assert!((t.push(0.5 * i as f64, 64) - 128.0).abs() < 1e-9);
        }
        // A 10 s pause before step 31 (ending at 15 + 10 + 0.5 s): the window, steps
        // 12..=31 from step 11's end at 5.5 s, holds 20 · 64 images in 20 s, not 10 s…
        let r = t.push(25.5, 64);
        assert!((r - 64.0).abs() < 1e-9, "{r}");
        // …and is gone 20 steps later.
        let mut at = 25.5;
        for _ in 0..20 {
            at += 0.5;
            t.push(at, 64);
        }
        assert!((t.push(at + 0.5, 64) - 128.0).abs() < 1e-9);
    }
}
