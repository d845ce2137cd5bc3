//! Retrieval grids: a query per row, then its top-k retrievals framed green (same class)
//! or red (different class).
use std::path::Path;

use image::{imageops, RgbImage};

use super::canvas::Canvas;
use crate::error::{Error, Result};

/// Width of the coloured frame around each tile.
pub const BORDER: u32 = 3;
/// Space between cells and around the grid.
pub const PAD: u32 = 4;
/// Extra space between the query column and the retrievals.
pub const GAP: u32 = 12;
/// Frame of a correct retrieval.
pub const GREEN: [u8; 3] = [0, 170, 0];
/// Frame of a wrong retrieval.
pub const RED: [u8; 3] = [220, 0, 0];
/// Frame of the query.
pub const QUERY: [u8; 3] = [64, 64, 64];
/// Fill of the letterbox bars and the background.
pub const LETTERBOX: [u8; 3] = [0, 0, 0];
/// Background between cells.
pub const BACKGROUND: [u8; 3] = [255, 255, 255];

/// Top-left corner of the cell (frame included, `tile + 2·BORDER` square) in row `row`,
/// column `col` (column 0 is the query, column j ≥ 1 the j-th retrieval).
pub fn cell_origin(row: usize, col: usize, tile: u32) -> (u32, u32) {
    let cell = tile + 2 * BORDER;
    let x = PAD + col as u32 * (cell + PAD) + if col >= 1 { GAP } else { 0 };
    (x, PAD + row as u32 * (cell + PAD))
}

/// Size of the grid image for `rows` queries and at most `k` retrievals per query.
pub fn grid_size(rows: usize, k: usize, tile: u32) -> (u32, u32) {
    let cell = tile + 2 * BORDER;
    let (x, _) = cell_origin(0, k, tile);
    let (_, y) = cell_origin(rows, 0, tile);
    (x + cell + PAD, y)
}

/// Writes the retrieval grid of `queries` to `path` (PNG). Row i shows image
/// `queries[i]`, then images `neighbours[i][j]` framed [`GREEN`] if `correct[i][j]` else
/// [`RED`], each fitted into a `tile`-pixel square (aspect kept, letterboxed). `image(i)`
/// returns the RGB u8 HWC pixels, height and width of image i. Geometry: [`cell_origin`],
/// [`grid_size`].
///
/// ```no_run
/// let mut solid = |_i: usize| Ok((vec![128u8; 8 * 8 * 3], 8, 8));
/// dml::plot::retrieval_grid(&[0], &[vec![1, 2]], &[vec![true, false]], 64, &mut solid,
///                           std::path::Path::new("grid.png"))?;
/// # Ok::<(), dml::Error>(())
/// ```
pub fn retrieval_grid(
    queries: &[usize],
    neighbours: &[Vec<usize>],
    correct: &[Vec<bool>],
    tile: u32,
    image: &mut dyn FnMut(usize) -> Result<(Vec<u8>, usize, usize)>,
    path: &Path,
) -> Result<()> {
    let img = render_grid(queries, neighbours, correct, tile, image)?;
    super::save_png(&img, path)
}

/// [`retrieval_grid`] without writing: the grid image.
pub fn render_grid(
    queries: &[usize],
    neighbours: &[Vec<usize>],
    correct: &[Vec<bool>],
    tile: u32,
    image: &mut dyn FnMut(usize) -> Result<(Vec<u8>, usize, usize)>,
) -> Result<RgbImage> {
    if queries.is_empty() || tile == 0 {
        return Err(Error::Input(
            "retrieval grid: no queries or a zero tile size".into(),
        ));
    }
    if neighbours.len() != queries.len() || correct.len() != queries.len() {
        return Err(Error::Input(format!(
            "retrieval grid: {} queries but {} neighbour rows and {} correctness rows",
            queries.len(),
            neighbours.len(),
            correct.len()
        )));
    }
    if let Some(i) = (0..queries.len()).find(|&i| neighbours[i].len() != correct[i].len()) {
        return Err(Error::Input(format!(
            "retrieval grid: row {i} has {} neighbours but {} correctness flags",
            neighbours[i].len(),
            correct[i].len()
        )));
    }
    let k = neighbours.iter().map(Vec::len).max().unwrap_or(0);
    let (w, h) = grid_size(queries.len(), k, tile);
    let mut c = Canvas::new(w, h, BACKGROUND);
    for (row, &q) in queries.iter().enumerate() {
        let cells = std::iter::once((q, QUERY)).chain(
            neighbours[row]
                .iter()
                .zip(&correct[row])
                .map(|(&n, &ok)| (n, if ok { GREEN } else { RED })),
        );
        for (col, (idx, frame)) in cells.enumerate() {
            let (x, y) = cell_origin(row, col, tile);
            let cell = i64::from(tile + 2 * BORDER);
            c.rect_outline(
                i64::from(x),
                i64::from(y),
                cell,
                cell,
                i64::from(BORDER),
                frame,
            );
            let t = fit(idx, image, tile)?;
            imageops::replace(&mut c.img, &t, i64::from(x + BORDER), i64::from(y + BORDER));
        }
    }
    Ok(c.img)
}

/// Image `idx` resized to fit a `tile` square (longer side = tile) and centred on
/// [`LETTERBOX`].
fn fit(
    idx: usize,
    image: &mut dyn FnMut(usize) -> Result<(Vec<u8>, usize, usize)>,
    tile: u32,
) -> Result<RgbImage> {
    let (px, h, w) = image(idx)?;
    let len = px.len();
    let bad = || {
        Error::Input(format!(
            "retrieval grid: image {idx} has {len} bytes, not {h}x{w}x3"
        ))
    };
    if h == 0 || w == 0 || h.checked_mul(w).and_then(|n| n.checked_mul(3)) != Some(px.len()) {
        return Err(bad());
    }
    let (hu, wu) = (
        u32::try_from(h).map_err(|_| bad())?,
        u32::try_from(w).map_err(|_| bad())?,
    );
    let src = RgbImage::from_raw(wu, hu, px).ok_or_else(bad)?;
    let scale = f64::from(tile) / f64::from(hu.max(wu));
    let nw = ((f64::from(wu) * scale).round() as u32).clamp(1, tile);
    let nh = ((f64::from(hu) * scale).round() as u32).clamp(1, tile);
    let small = imageops::resize(&src, nw, nh, imageops::FilterType::Triangle);
    let mut out = RgbImage::from_pixel(tile, tile, image::Rgb(LETTERBOX));
    imageops::replace(
        &mut out,
        &small,
        i64::from((tile - nw) / 2),
        i64::from((tile - nh) / 2),
    );
    Ok(out)
}
