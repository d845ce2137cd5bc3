//! PNG pictures: line charts of a run's metrics (`dml plot`), the LR range test, and
//! retrieval grids (`dml eval --grid`). A small rasteriser ([`canvas`]) with an 8×8
//! bitmap font; no torch.
pub mod canvas;
pub mod chart;
pub mod grid;
pub mod lr_range;
pub mod run;

use std::path::Path;

pub use chart::{render_chart, render_chart_marked, ChartSpec, Frame, Series, VLine};
pub use grid::{render_grid, retrieval_grid};
pub use lr_range::plot_lr_range;
pub use run::plot_run;

use crate::error::{Error, Result};

/// Writes `img` to `path` as PNG, creating the parent directory.
///
/// ```no_run
/// let img = image::RgbImage::new(2, 2);
/// dml::plot::save_png(&img, std::path::Path::new("out/x.png"))?;
/// # Ok::<(), dml::Error>(())
/// ```
pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))
}
