//! Rank 0's side effects during training: `RUN/metrics.jsonl`, the progress bar (on a
//! terminal) and plain progress and validation lines (always, for mpirun and Slurm logs).
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
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
    total: usize,
    log_every: usize,
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
    pub fn open(
        run: &Path,
        rank: usize,
        start: usize,
        total: usize,
        log_every: usize,
    ) -> Result<RunLog> {
        let path = run.join("metrics.jsonl");
        if rank != 0 {
            return Ok(RunLog {
                path,
                file: None,
                bar: None,
                started: Instant::now(),
                rate: Throughput::default(),
                total,
                log_every,
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
            total,
            log_every,
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
        let due = self.log_every > 0 && (step % self.log_every == 0 || step == self.total);
        if due {
            let eta = self.total.saturating_sub(step) as f64 * batch as f64 / ips.max(1e-9);
            self.println(&progress_line(&obj, self.total, eta));
        }
        if let Some(line) = validation_line(&obj) {
            self.println(&line);
        }
        if let Some(warning) = obj.get("warning").and_then(Value::as_str) {
            self.println(&format!("warning: {warning}"));
        }
        Ok(())
    }

    /// Prints a line on stderr (rank 0 only): above the progress bar on a terminal, as
    /// a plain line otherwise (the bar is hidden there).
    pub fn println(&self, msg: &str) {
        let Some(bar) = &self.bar else { return };
        if std::io::stderr().is_terminal() && !bar.is_hidden() {
            bar.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    /// Finishes the progress bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// `step 150/3000  loss 0.4132  lr 3.0e-04  412 img/s  active 1210  eta 00:21:30` from
/// a metrics line (`active` only when the loss mines).
fn progress_line(m: &Value, total: usize, eta_seconds: f64) -> String {
    let num = |k: &str| m.get(k).and_then(Value::as_f64);
    let mut line = format!(
        "step {}/{total}  loss {:.4}  lr {:.1e}  {:.0} img/s",
        m.get("step").and_then(Value::as_u64).unwrap_or(0),
        num("loss").unwrap_or(f64::NAN),
        num("lr").unwrap_or(f64::NAN),
        num("images_per_s").unwrap_or(0.0),
    );
    if let Some(active) = m.get("active").and_then(Value::as_u64) {
        line.push_str(&format!("  active {active}"));
    }
    let s = eta_seconds.max(0.0).round() as u64;
    line.push_str(&format!(
        "  eta {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    ));
    line
}

/// `val step 1000  P@1 0.6120  R-Precision 0.3310  MAP@R 0.2214  (best)` when the
/// metrics line holds a validation; `None` otherwise.
fn validation_line(m: &Value) -> Option<String> {
    let obj = m.as_object()?;
    let shown = [
        ("val_precision_at_1", "P@1"),
        ("val_r_precision", "R-Precision"),
        ("val_mean_average_precision_at_r", "MAP@R"),
    ];
    let parts: Vec<String> = shown
        .iter()
        .filter_map(|(k, name)| obj.get(*k).map(|v| (name, v)))
        .map(|(name, v)| match v.as_f64() {
            Some(x) => format!("{name} {x:.4}"),
            None => format!("{name} n/a"),
        })
        .collect();
    if parts.is_empty() {
        return None;
    }
    let step = obj.get("step").and_then(Value::as_u64).unwrap_or(0);
    let best = match obj.get("val_best").and_then(Value::as_bool) {
        Some(true) => "  (best)",
        _ => "",
    };
    Some(format!("val step {step}  {}{best}", parts.join("  ")))
}

#[cfg(test)]
mod tests {
    use super::{progress_line, validation_line, Throughput};
    use serde_json::json;

    #[test]
    fn plain_lines_say_progress_and_validation() {
        let m = json!({"step": 150, "loss": 0.41316, "lr": 3e-4, "images_per_s": 411.6,
                       "active": 1210, "elapsed_s": 20.0});
        // 2850 steps left at 64 images / 411.6 img/s = 443.1 s.
        assert_eq!(
            progress_line(&m, 3000, 2850.0 * 64.0 / 411.6),
            "step 150/3000  loss 0.4132  lr 3.0e-4  412 img/s  active 1210  eta 00:07:23"
        );
        assert_eq!(
            progress_line(
                &json!({"step": 5, "loss": 1.0, "lr": 0.1, "images_per_s": 2.0}),
                5,
                0.0
            ),
            "step 5/5  loss 1.0000  lr 1.0e-1  2 img/s  eta 00:00:00"
        );
        assert_eq!(validation_line(&m), None);
        let v = json!({"step": 1000, "val_precision_at_1": 0.612, "val_r_precision": 0.331,
                       "val_mean_average_precision_at_r": 0.22137, "val_NMI": 0.5, "val_best": true});
        assert_eq!(
            validation_line(&v).unwrap(),
            "val step 1000  P@1 0.6120  R-Precision 0.3310  MAP@R 0.2214  (best)"
        );
        let v = json!({"step": 2000, "val_precision_at_1": null, "val_best": false});
        assert_eq!(validation_line(&v).unwrap(), "val step 2000  P@1 n/a");
    }

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
