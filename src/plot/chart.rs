//! Line charts: axes with numbered ticks (linear or log), one coloured line per series,
//! a legend, and optional dashed vertical markers.
use image::RgbImage;

use super::canvas::{text_width, Canvas, GLYPH};
use crate::error::{Error, Result};

/// Pixels left of the plot area (rotated y label and tick numbers).
pub const MARGIN_LEFT: u32 = 80;
/// Pixels right of the plot area.
pub const MARGIN_RIGHT: u32 = 20;
/// Pixels above the plot area (title).
pub const MARGIN_TOP: u32 = 30;
/// Pixels below the plot area (tick numbers and x label).
pub const MARGIN_BOTTOM: u32 = 45;
/// Background colour.
pub const BACKGROUND: [u8; 3] = [255, 255, 255];
/// Colour of axes, tick marks and text.
pub const INK: [u8; 3] = [0, 0, 0];
/// Colour of the grid lines at the ticks.
pub const GRID: [u8; 3] = [225, 225, 225];
/// Series colours in order (matplotlib's tab10); series i gets `PALETTE[i % 10]`,
/// vertical marker j gets `PALETTE[(n_series + j) % 10]`.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];
/// Series with at most this many plottable points also get a 3×3 dot at each point.
pub const DOTS_UP_TO: usize = 30;

/// One named line of (x, y) points, drawn in the order given.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// The points; non-finite ones (and non-positive ones on a log axis) break the line.
    pub points: Vec<(f64, f64)>,
}

/// What to draw: titles, axis kinds and the series.
#[derive(Clone, Debug, Default)]
pub struct ChartSpec {
    /// Text above the plot.
    pub title: String,
    /// Text below the x axis.
    pub x_label: String,
    /// Text beside the y axis (reading upwards).
    pub y_label: String,
    /// Log10 x axis.
    pub log_x: bool,
    /// Log10 y axis.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// A dashed vertical line at data coordinate `x`, listed in the legend as `name`.
#[derive(Clone, Debug)]
pub struct VLine {
    /// Data x coordinate.
    pub x: f64,
    /// Legend text.
    pub name: String,
}

/// The mapping from data to pixel coordinates of one chart.
///
/// The plot area spans columns `left..=right` and rows `top..=bottom`. The x range is
/// the data's (markers included) exactly; the y range is the data's widened by 5% of its
/// span at each end. Log axes map log10 of the value. A range of zero span is widened to
/// ±10% of its value (±1 at zero).
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Pixel column of the smallest x.
    pub left: f64,
    /// Pixel column of the largest x.
    pub right: f64,
    /// Pixel row of the largest y.
    pub top: f64,
    /// Pixel row of the smallest y.
    pub bottom: f64,
    /// Shown x range, in axis units (log10 of the value on a log axis).
    pub x_range: (f64, f64),
    /// Shown y range, in axis units (log10 of the value on a log axis).
    pub y_range: (f64, f64),
    /// Whether x is log10.
    pub log_x: bool,
    /// Whether y is log10.
    pub log_y: bool,
}

impl Frame {
    /// The layout of `spec` (with markers at `marks`) on a `width`×`height` image.
    /// Errors with [`Error::Input`] when no series has a plottable point or the image
    /// is too small for the margins.
    pub fn new(spec: &ChartSpec, marks: &[VLine], width: u32, height: u32) -> Result<Frame> {
        if width < MARGIN_LEFT + MARGIN_RIGHT + 40 || height < MARGIN_TOP + MARGIN_BOTTOM + 40 {
            return Err(Error::Input(format!(
                "chart '{}': {width}x{height} is too small",
                spec.title
            )));
        }
        let pts: Vec<(f64, f64)> = spec
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter_map(|&(x, y)| Some((axis(x, spec.log_x)?, axis(y, spec.log_y)?)))
            .collect();
        if pts.is_empty() {
            return Err(Error::Input(format!(
                "chart '{}': no series has a plottable point",
                spec.title
            )));
        }
        let xs = pts
            .iter()
            .map(|p| p.0)
            .chain(marks.iter().filter_map(|m| axis(m.x, spec.log_x)));
        let (xlo, xhi) = widen(min_max(xs), 0.0);
        let (ylo, yhi) = widen(min_max(pts.iter().map(|p| p.1)), 0.05);
        Ok(Frame {
            left: f64::from(MARGIN_LEFT),
            right: f64::from(width - MARGIN_RIGHT),
            top: f64::from(MARGIN_TOP),
            bottom: f64::from(height - MARGIN_BOTTOM),
            x_range: (xlo, xhi),
            y_range: (ylo, yhi),
            log_x: spec.log_x,
            log_y: spec.log_y,
        })
    }

    /// Pixel column of data x, or `None` if x cannot be shown (not finite, or ≤ 0 on a log axis).
    pub fn px(&self, x: f64) -> Option<f64> {
        let t = axis(x, self.log_x)?;
        Some(
            self.left
                + (t - self.x_range.0) / (self.x_range.1 - self.x_range.0)
                    * (self.right - self.left),
        )
    }

    /// Pixel row of data y, or `None` if y cannot be shown.
    pub fn py(&self, y: f64) -> Option<f64> {
        let t = axis(y, self.log_y)?;
        Some(
            self.bottom
                - (t - self.y_range.0) / (self.y_range.1 - self.y_range.0)
                    * (self.bottom - self.top),
        )
    }
}

/// Renders `spec` on a `width`×`height` image: title, axes with numbered ticks, one line
/// per series in [`PALETTE`] colours, and a legend in the emptiest corner.
/// Non-finite points are skipped (the line breaks there).
/// Errors with [`Error::Input`] when there is nothing to plot.
///
/// ```
/// use dml::plot::{render_chart, ChartSpec, Series};
/// let spec = ChartSpec {
///     title: "loss".into(), x_label: "step".into(), y_label: "loss".into(),
///     log_x: false, log_y: false,
///     series: vec![Series { name: "loss".into(), points: vec![(0.0, 1.0), (1.0, 0.5)] }],
/// };
/// let img = render_chart(&spec, 640, 400)?;
/// assert_eq!(img.dimensions(), (640, 400));
/// # Ok::<(), dml::Error>(())
/// ```
pub fn render_chart(spec: &ChartSpec, width: u32, height: u32) -> Result<RgbImage> {
    render_chart_marked(spec, &[], width, height)
}

/// [`render_chart`] with dashed vertical markers (in the legend after the series).
pub fn render_chart_marked(
    spec: &ChartSpec,
    marks: &[VLine],
    width: u32,
    height: u32,
) -> Result<RgbImage> {
    let f = Frame::new(spec, marks, width, height)?;
    let mut c = Canvas::new(width, height, BACKGROUND);
    let (l, r, t, b) = (f.left as i64, f.right as i64, f.top as i64, f.bottom as i64);

    for (v, label) in ticks(f.x_range, f.log_x) {
        let x = (f.left + (v - f.x_range.0) / (f.x_range.1 - f.x_range.0) * (f.right - f.left))
            .round() as i64;
        c.fill_rect(x, t, 1, b - t, GRID);
        c.fill_rect(x, b + 1, 1, 4, INK);
        c.text(x - text_width(&label, 1) / 2, b + 8, &label, 1, INK);
    }
    for (v, label) in ticks(f.y_range, f.log_y) {
        let y = (f.bottom - (v - f.y_range.0) / (f.y_range.1 - f.y_range.0) * (f.bottom - f.top))
            .round() as i64;
        c.fill_rect(l + 1, y, r - l, 1, GRID);
        c.fill_rect(l - 4, y, 4, 1, INK);
        c.text(l - 7 - text_width(&label, 1), y - 4, &label, 1, INK);
    }
    c.fill_rect(l, t, 1, b - t + 1, INK);
    c.fill_rect(l, b, r - l + 1, 1, INK);

    let title_x = (i64::from(width) - text_width(&spec.title, 1)) / 2;
    c.text(title_x.max(0), 11, &spec.title, 1, INK);
    let xl_x = (l + r - text_width(&spec.x_label, 1)) / 2;
    c.text(xl_x, i64::from(height) - 16, &spec.x_label, 1, INK);
    let yl_y = (t + b + text_width(&spec.y_label, 1)) / 2;
    c.text_up(6, yl_y, &spec.y_label, INK);

    let n = spec.series.len();
    for (j, m) in marks.iter().enumerate() {
        if let Some(x) = f.px(m.x) {
            c.dashed_vline(
                x.round() as i64,
                (t, b - 1),
                (6, 4),
                2,
                PALETTE[(n + j) % 10],
            );
        }
    }
    for (i, s) in spec.series.iter().enumerate() {
        draw_series(&mut c, &f, s, PALETTE[i % 10]);
    }

    let mut entries: Vec<(&str, [u8; 3])> = spec
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), PALETTE[i % 10]))
        .collect();
    entries.extend(
        marks
            .iter()
            .enumerate()
            .map(|(j, m)| (m.name.as_str(), PALETTE[(n + j) % 10])),
    );
    legend(&mut c, (l, t, r, b), &entries);
    Ok(c.img)
}

/// Draws one series: segments between consecutive plottable points, dots if few points.
fn draw_series(c: &mut Canvas, f: &Frame, s: &Series, colour: [u8; 3]) {
    let pix: Vec<Option<(i64, i64)>> = s
        .points
        .iter()
        .map(|&(x, y)| Some((f.px(x)?.round() as i64, f.py(y)?.round() as i64)))
        .collect();
    for w in pix.windows(2) {
        if let [Some(a), Some(b)] = w {
            c.line(*a, *b, 2, colour);
        }
    }
    let shown: Vec<(i64, i64)> = pix.iter().flatten().copied().collect();
    if shown.len() <= DOTS_UP_TO {
        for (x, y) in shown {
            c.fill_rect(x - 1, y - 1, 3, 3, colour);
        }
    }
}

/// Legend box, 6 px inside a corner of the plot area: a 16×8 swatch, then the name, one
/// 12-px row per entry. The corner is the one (in the order top-right, top-left,
/// bottom-right, bottom-left) whose box covers the fewest drawn data pixels.
fn legend(
    c: &mut Canvas,
    (left, top, right, bottom): (i64, i64, i64, i64),
    entries: &[(&str, [u8; 3])],
) {
    if entries.is_empty() {
        return;
    }
    let text_w = entries
        .iter()
        .map(|e| text_width(e.0, 1))
        .max()
        .unwrap_or(0);
    let w = 6 + 16 + 6 + text_w + 6;
    let h = 4 + 12 * entries.len() as i64;
    let corners = [
        (right - 6 - w, top + 6),
        (left + 7, top + 6),
        (right - 6 - w, bottom - 6 - h),
        (left + 7, bottom - 6 - h),
    ];
    let covered = |&(x, y): &(i64, i64)| {
        let (iw, ih) = (i64::from(c.img.width()), i64::from(c.img.height()));
        (y.max(0)..(y + h).min(ih))
            .flat_map(|yy| (x.max(0)..(x + w).min(iw)).map(move |xx| (xx, yy)))
            .filter(|&(xx, yy)| {
                let p = c.img.get_pixel(xx as u32, yy as u32).0;
                p != BACKGROUND && p != GRID
            })
            .count()
    };
    let (x, y) = corners
        .iter()
        .copied()
        .min_by_key(covered)
        .unwrap_or(corners[0]);
    c.fill_rect(x, y, w, h, BACKGROUND);
    c.rect_outline(x, y, w, h, 1, [160, 160, 160]);
    for (i, (name, colour)) in entries.iter().enumerate() {
        let ry = y + 4 + 12 * i as i64;
        c.fill_rect(x + 6, ry, 16, i64::from(GLYPH), *colour);
        c.text(x + 28, ry, name, 1, INK);
    }
}

/// The axis coordinate of v: v itself, or log10(v) on a log axis; `None` if not shown.
fn axis(v: f64, log: bool) -> Option<f64> {
    let t = if log {
        if v > 0.0 {
            v.log10()
        } else {
            f64::NAN
        }
    } else {
        v
    };
    t.is_finite().then_some(t)
}

fn min_max(it: impl Iterator<Item = f64>) -> (f64, f64) {
    it.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// Widens (lo, hi) by `frac` of its span at each end; a zero span becomes ±10% of the value.
fn widen((lo, hi): (f64, f64), frac: f64) -> (f64, f64) {
    let span = hi - lo;
    if span <= f64::EPSILON * lo.abs().max(hi.abs()).max(f64::MIN_POSITIVE) {
        let pad = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        return (lo - pad, hi + pad);
    }
    (lo - frac * span, hi + frac * span)
}

/// Tick positions (axis units) in `range` with their labels. Log axes tick whole decades
/// (every other one past ten), else 1, 2, 5 × 10^k, else linear ticks of the value.
pub fn ticks(range: (f64, f64), log: bool) -> Vec<(f64, String)> {
    let (lo, hi) = range;
    if log {
        let (k0, k1) = (lo.ceil() as i64, hi.floor() as i64);
        if k1 - k0 >= 1 {
            let every = if k1 - k0 >= 10 { 2 } else { 1 };
            return (k0..=k1)
                .filter(|k| (k - k0) % every == 0)
                .map(|k| (k as f64, decade(k)))
                .collect();
        }
        let mut out = Vec::new();
        for k in lo.floor() as i64..=hi.ceil() as i64 {
            for m in [1.0f64, 2.0, 5.0] {
                let t = m.log10() + k as f64;
                if t >= lo && t <= hi {
                    out.push((t, format_number(m * 10f64.powi(k as i32))));
                }
            }
        }
        if out.len() >= 2 {
            return out;
        }
        let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
        return linear_ticks(a, b)
            .into_iter()
            .filter(|v| *v > 0.0)
            .map(|v| (v.log10(), format_number(v)))
            .collect();
    }
    linear_ticks(lo, hi)
        .into_iter()
        .map(|v| (v, format_number(v)))
        .collect()
}

/// Multiples of a 1-2-5 step giving about five ticks in [lo, hi].
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    if !(raw > 0.0 && raw.is_finite()) {
        return vec![];
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let (k0, k1) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    (k0..=k1)
        .map(|k| if k == 0 { 0.0 } else { k as f64 * step })
        .collect()
}

/// "1e-5", or the plain number for 10^0 … 10^4.
fn decade(k: i64) -> String {
    if (0..=4).contains(&k) {
        10i64.pow(k as u32).to_string()
    } else {
        format!("1e{k}")
    }
}

/// A short label for v: at most four significant digits, plain between 1e-3 and 1e5,
/// else scientific ("2.5e-4"), trailing zeros trimmed.
pub fn format_number(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { format!("{v}") };
    }
    if (1e-3..1e5).contains(&a) {
        let decimals = (3 - a.log10().floor() as i64).clamp(0, 6) as usize;
        let s = format!("{v:.decimals$}");
        return if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
    }
    let s = format!("{v:.3e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let m = if m.contains('.') {
                m.trim_end_matches('0').trim_end_matches('.')
            } else {
                m
            };
            format!("{m}e{e}")
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(format_number(0.30000000000000004), "0.3");
        assert_eq!(format_number(0.00025), "2.5e-4");
        assert_eq!(format_number(-1234.5678), "-1235");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(1.0e6), "1e6");
    }

    #[test]
    fn ticks_are_1_2_5_multiples() {
        // span 0..1: raw step 0.2 → step 0.2 → 0, 0.2, 0.4, 0.6, 0.8, 1
        let t: Vec<String> = ticks((0.0, 1.0), false).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        // log range 1e-6..1: whole decades, exponents -6..0
        let t: Vec<String> = ticks((-6.0, 0.0), true).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1", "1"]);
    }
}
