//! The LR range test's picture.
use std::path::Path;

use super::chart::{render_chart_marked, ChartSpec, Series, VLine};
use super::run::{ema, CHART_SIZE, EMA_BETA};
use super::save_png;
use crate::error::Result;

/// Writes the LR range test picture to `path`: raw and smoothed (bias-corrected EMA,
/// β = [`EMA_BETA`]) loss against learning rate on a log x axis, with dashed vertical
/// markers at `suggested` = (base lr, max lr) and at `collapsed`, the rate at which the
/// embedding had collapsed ([`crate::train::lr_find::SPREAD_COLLAPSED`]), if any. Size
/// [`CHART_SIZE`].
///
/// ```no_run
/// let pts: Vec<(f64, f64)> = (0..50).map(|i| (1e-6 * 1.3f64.powi(i), 1.0 / (1.0 + i as f64))).collect();
/// dml::plot::plot_lr_range(&pts, (1e-4, 1e-3), None, std::path::Path::new("lr_find.png"))?;
/// # Ok::<(), dml::Error>(())
/// ```
pub fn plot_lr_range(
    points: &[(f64, f64)],
    suggested: (f64, f64),
    collapsed: Option<f64>,
    path: &Path,
) -> Result<()> {
    let smooth = ema(&points.iter().map(|p| p.1).collect::<Vec<_>>(), EMA_BETA);
    let spec = ChartSpec {
        title: "LR range test".into(),
        x_label: "learning rate".into(),
        y_label: "loss".into(),
        log_x: true,
        log_y: false,
        series: vec![
            Series {
                name: "loss".into(),
                points: points.to_vec(),
            },
            Series {
                name: format!("smoothed (EMA {EMA_BETA})"),
                points: points.iter().zip(smooth).map(|(p, s)| (p.0, s)).collect(),
            },
        ],
    };
    let collapsed = collapsed.unwrap_or(f64::NAN);
    let marks: Vec<VLine> = [
        (suggested.0, "base lr"),
        (suggested.1, "max lr"),
        (collapsed, "collapsed"),
    ]
    .into_iter()
    .filter(|(x, _)| x.is_finite() && *x > 0.0)
    .map(|(x, n)| VLine {
        x,
        name: format!("{n} {}", super::chart::format_number(x)),
    })
    .collect();
    let img = render_chart_marked(&spec, &marks, CHART_SIZE.0, CHART_SIZE.1)?;
    save_png(&img, path)
}
