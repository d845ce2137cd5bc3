//! `dml plot RUN`: charts of a run's `metrics.jsonl` written to `RUN/plots/`.
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::{Map, Value};

use super::chart::{render_chart, ChartSpec, Series};
use super::save_png;
use crate::error::{Error, Result};

/// Size of loss.png, lr.png, validation.png, and of mining.png when it has one panel.
pub const CHART_SIZE: (u32, u32) = (800, 500);
/// Height of each of mining.png's two stacked panels (counts above, similarities and
/// fractions below) when both kinds of statistics are present.
pub const PANEL_HEIGHT: u32 = 400;
/// Mining statistics counted in pairs or triplets (mining.png's first panel), the
/// cross-batch memory's among them when the run has one.
pub const MINING_COUNTS: [&str; 4] = ["active", "mined", "xbm_active", "xbm_mined"];
/// Mining statistics in [-1, 1] and the embedding's spread (mining.png's second panel).
pub const MINING_RATIOS: [&str; 6] = [
    "pos_sim_mean",
    "neg_sim_mean",
    "contributing_fraction",
    "embedding_spread",
    "xbm_pos_sim_mean",
    "xbm_neg_sim_mean",
];
/// Smoothing factor of the "smoothed" loss line (bias-corrected exponential moving average).
pub const EMA_BETA: f64 = 0.9;

/// Reads `RUN/metrics.jsonl` and writes `RUN/plots/loss.png`, `lr.png`, `mining.png` (if
/// any line has a mining statistic) and `validation.png` (if any line has a `val_` key).
/// Returns the written paths. A missing file, a line that is not a JSON object with a
/// numeric `step`, or a non-numeric `loss`/`lr`, is an error naming the file and line.
///
/// ```no_run
/// for p in dml::plot::plot_run(std::path::Path::new("runs/quickstart"))? {
///     println!("{}", p.display());
/// }
/// # Ok::<(), dml::Error>(())
/// ```
pub fn plot_run(run: &Path) -> Result<Vec<PathBuf>> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let rows = parse(&path, &text)?;
    let dir = run.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut written = Vec::new();
    let mut write = |name: &str, img: RgbImage| -> Result<()> {
        let p = dir.join(name);
        save_png(&img, &p)?;
        written.push(p);
        Ok(())
    };

    let loss = series_of(&rows, "loss", "loss");
    let mut loss_series = vec![loss.clone()];
    let finite: Vec<f64> = loss
        .points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .collect();
    if finite.len() >= 10 {
        let smooth = ema(
            &loss.points.iter().map(|p| p.1).collect::<Vec<_>>(),
            EMA_BETA,
        );
        let points = loss
            .points
            .iter()
            .zip(smooth)
            .map(|(p, s)| (p.0, s))
            .collect();
        loss_series.push(Series {
            name: format!("smoothed (EMA {EMA_BETA})"),
            points,
        });
    }
    write(
        "loss.png",
        chart("training loss", "loss", loss_series, CHART_SIZE.1)?,
    )?;
    write(
        "lr.png",
        chart(
            "learning rate",
            "lr",
            vec![series_of(&rows, "lr", "lr")],
            CHART_SIZE.1,
        )?,
    )?;

    let group = |keys: &[&str]| -> Vec<Series> {
        keys.iter()
            .map(|k| series_of(&rows, k, k))
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let panels: Vec<(&str, Vec<Series>)> = [
        ("mining: counts", group(&MINING_COUNTS)),
        ("mining: similarities", group(&MINING_RATIOS)),
    ]
    .into_iter()
    .filter(|(_, s)| !s.is_empty())
    .collect();
    if !panels.is_empty() {
        let h = if panels.len() == 1 {
            CHART_SIZE.1
        } else {
            PANEL_HEIGHT
        };
        let imgs = panels
            .into_iter()
            .map(|(t, s)| chart(t, "value", s, h))
            .collect::<Result<Vec<_>>>()?;
        write("mining.png", stack(&imgs))?;
    }

    let mut val_keys: Vec<&str> = Vec::new();
    for r in &rows {
        for (k, v) in r {
            if k.starts_with("val_") && v.is_number() && !val_keys.contains(&k.as_str()) {
                val_keys.push(k);
            }
        }
    }
    if !val_keys.is_empty() {
        let s = val_keys
            .iter()
            .map(|k| series_of(&rows, k, &k["val_".len()..]))
            .collect();
        write(
            "validation.png",
            chart("validation", "metric", s, CHART_SIZE.1)?,
        )?;
    }
    Ok(written)
}

/// One chart against `step`, `CHART_SIZE.0` wide.
fn chart(title: &str, y_label: &str, series: Vec<Series>, height: u32) -> Result<RgbImage> {
    let spec = ChartSpec {
        title: title.into(),
        x_label: "step".into(),
        y_label: y_label.into(),
        log_x: false,
        log_y: false,
        series,
    };
    render_chart(&spec, CHART_SIZE.0, height)
}

/// Images of equal width, one above the other.
fn stack(imgs: &[RgbImage]) -> RgbImage {
    let w = imgs.iter().map(RgbImage::width).max().unwrap_or(1);
    let mut out = RgbImage::new(w, imgs.iter().map(RgbImage::height).sum());
    let mut y = 0;
    for img in imgs {
        image::imageops::replace(&mut out, img, 0, i64::from(y));
        y += img.height();
    }
    out
}

/// (step, value of `key`) of every line that has it; JSON null (NaN written by
/// serde_json) becomes NaN.
fn series_of(rows: &[Map<String, Value>], key: &str, name: &str) -> Series {
    let points = rows
        .iter()
        .filter_map(|r| {
            let step = r.get("step")?.as_f64()?;
            match r.get(key)? {
                Value::Null => Some((step, f64::NAN)),
                v => Some((step, v.as_f64()?)),
            }
        })
        .collect();
    Series {
        name: name.into(),
        points,
    }
}

/// Parses the lines of metrics.jsonl (blank lines skipped), checking `step`, `loss`, `lr`.
fn parse(path: &Path, text: &str) -> Result<Vec<Map<String, Value>>> {
    let bad = |n: usize, msg: String| Error::Input(format!("{}: line {n}: {msg}", path.display()));
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(bad(n, "not a JSON object".into())),
            Err(e) => return Err(bad(n, format!("not valid JSON ({e})"))),
        };
        if !obj.get("step").is_some_and(Value::is_number) {
            return Err(bad(n, "no numeric `step`".into()));
        }
        for key in ["loss", "lr"] {
            if obj
                .get(key)
                .is_some_and(|v| !(v.is_number() || v.is_null()))
            {
                return Err(bad(n, format!("`{key}` is not a number")));
            }
        }
        rows.push(obj);
    }
    if !rows.iter().any(|r| r.contains_key("loss")) {
        return Err(Error::Input(format!(
            "{}: no line has a `loss`",
            path.display()
        )));
    }
    Ok(rows)
}

/// Bias-corrected exponential moving average of `xs` (non-finite values are passed
/// through as NaN and do not enter the average).
pub fn ema(xs: &[f64], beta: f64) -> Vec<f64> {
    let (mut avg, mut n) = (0.0, 0);
    xs.iter()
        .map(|&x| {
            if !x.is_finite() {
                return f64::NAN;
            }
            n += 1;
            avg = beta * avg + (1.0 - beta) * x;
            avg / (1.0 - beta.powi(n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_is_bias_corrected() {
        // beta 0.5: avg1 = 0.5·2 = 1 → 1/(1-0.5) = 2; avg2 = 0.5·1 + 0.5·4 = 2.5 → 2.5/0.75.
        let e = ema(&[2.0, f64::NAN, 4.0], 0.5);
        assert_eq!(e[0], 2.0);
        assert!(e[1].is_nan());
        assert!((e[2] - 2.5 / 0.75).abs() < 1e-12);
    }
}
