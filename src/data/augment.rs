//! Image transforms on u8 HWC RGB pixels, as pure functions: torchvision's
//! `RandomResizedCrop` + `RandomHorizontalFlip` for training and `Resize` +
//! `CenterCrop` for testing.
//!
//! Resampling reproduces Pillow's antialiased bilinear filter (`Image.resize(...,
//! BILINEAR)`, which torchvision calls on PIL images) including its 22-bit fixed-point
//! arithmetic and Pillow 13's choice of which pass runs first, so results match Pillow 13
//! (the venv's) to the byte.
use crate::rng::SplitMix64;

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// A crop rectangle in the source image, then an optional horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropParams {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Mirror left–right after resizing.
    pub flip: bool,
}

/// Draws a random resized crop of an `h × w` image the way torchvision's
/// `RandomResizedCrop.get_params` does (up to 10 tries of area fraction in `scale` and
/// log-uniform aspect ratio in `ratio`, then a centre crop clamped to `ratio`), then a
/// flip with probability ½.
///
/// ```
/// use dml::{data::augment::random_resized_crop_params, rng::SplitMix64};
/// let mut rng = SplitMix64::keyed(&[1, 2, 3]);
/// let p = random_resized_crop_params(&mut rng, 256, 320, [0.16, 1.0], [0.75, 4.0 / 3.0]);
/// assert!(p.top + p.height <= 256 && p.left + p.width <= 320);
/// ```
pub fn random_resized_crop_params(
    rng: &mut SplitMix64,
    h: usize,
    w: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> CropParams {
    let (top, left, height, width) = crop_box(rng, h, w, scale, ratio);
    let flip = rng.next_f64() < 0.5;
    CropParams {
        top,
        left,
        height,
        width,
        flip,
    }
}

fn crop_box(
    rng: &mut SplitMix64,
    h: usize,
    w: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.uniform(scale[0], scale[1]);
        let aspect = rng.uniform(log_lo, log_hi).exp();
        let cw = (target * aspect).sqrt().round_ties_even() as usize;
        let ch = (target / aspect).sqrt().round_ties_even() as usize;
        if cw > 0 && cw <= w && ch > 0 && ch <= h {
            let top = rng.below(h - ch + 1);
            let left = rng.below(w - cw + 1);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (lo, hi) = (ratio[0].min(ratio[1]), ratio[0].max(ratio[1]));
    let (ch, cw) = if in_ratio < lo {
        (((w as f64) / lo).round_ties_even() as usize, w)
    } else if in_ratio > hi {
        (h, ((h as f64) * hi).round_ties_even() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Crops `p` out of the `h × w` HWC image `img`, resizes it to `out_size × out_size`
/// with Pillow's antialiased bilinear filter, and mirrors it if `p.flip`.
///
/// ```
/// use dml::data::augment::{resized_crop, CropParams};
/// let img = vec![128u8; 8 * 8 * 3];
/// let p = CropParams { top: 2, left: 2, height: 4, width: 4, flip: true };
/// assert_eq!(resized_crop(&img, 8, 8, &p, 6), vec![128u8; 6 * 6 * 3]);
/// ```
pub fn resized_crop(img: &[u8], h: usize, w: usize, p: &CropParams, out_size: usize) -> Vec<u8> {
    let mut out = vec![0u8; out_size * out_size * 3];
    resized_crop_into(img, h, w, p, out_size, &mut out);
    out
}

/// [`resized_crop`] into a caller's `out_size × out_size × 3` buffer.
pub fn resized_crop_into(
    img: &[u8],
    h: usize,
    w: usize,
    p: &CropParams,
    out_size: usize,
    out: &mut [u8],
) {
    debug_assert!(p.top + p.height <= h && p.left + p.width <= w);
    debug_assert_eq!(img.len(), h * w * 3);
    debug_assert_eq!(out.len(), out_size * out_size * 3);
    let region = Region {
        img,
        stride: w * 3,
        top: p.top,
        left: p.left,
        height: p.height,
        width: p.width,
    };
    resample(&region, out_size, out_size, p.flip, out);
}

/// The test transform: resizes the shorter side to `resize` (torchvision `Resize`,
/// Pillow bilinear, antialiased), then takes the centre `crop × crop` (torchvision
/// `CenterCrop`, zero-padded if the image is smaller).
///
/// ```
/// let img = vec![9u8; 10 * 20 * 3];
/// let out = dml::data::augment::resize_center_crop(&img, 10, 20, 8, 6);
/// assert_eq!(out, vec![9u8; 6 * 6 * 3]);
/// ```
pub fn resize_center_crop(img: &[u8], h: usize, w: usize, resize: usize, crop: usize) -> Vec<u8> {
    let (nh, nw) = if w <= h {
        (((resize * h) as f64 / w as f64) as usize, resize)
    } else {
        (resize, ((resize * w) as f64 / h as f64) as usize)
    };
    let region = Region {
        img,
        stride: w * 3,
        top: 0,
        left: 0,
        height: h,
        width: w,
    };
    let mut resized = vec![0u8; nh * nw * 3];
    resample(&region, nh, nw, false, &mut resized);
    let mut out = vec![0u8; crop * crop * 3];
    // torchvision pads to at least crop × crop (left/top get the floor of half the
    // padding) and then crops at round((size - crop) / 2) of the padded image.
    let offset = |size: usize| -> isize {
        if crop > size {
            -(((crop - size) / 2) as isize)
        } else {
            ((size - crop) as f64 / 2.0).round_ties_even() as isize
        }
    };
    let (oy, ox) = (offset(nh), offset(nw));
    for y in 0..crop {
        let sy = y as isize + oy;
        if sy < 0 || sy >= nh as isize {
            continue;
        }
        for x in 0..crop {
            let sx = x as isize + ox;
            if sx < 0 || sx >= nw as isize {
                continue;
            }
            let s = (sy as usize * nw + sx as usize) * 3;
            out[(y * crop + x) * 3..(y * crop + x) * 3 + 3].copy_from_slice(&resized[s..s + 3]);
        }
    }
    out
}

/// A rectangle of an HWC image.
struct Region<'a> {
    img: &'a [u8],
    stride: usize,
    top: usize,
    left: usize,
    height: usize,
    width: usize,
}

/// Fixed-point filter taps of one axis, padded to a common width: output `i` reads the
/// `ksize` inputs from `start[i]` with weights `taps[i * ksize..]`. Pillow's taps are
/// kept as they are; padding taps are zero, so the sums (and the rounding) are Pillow's.
#[derive(Default)]
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    taps: Vec<i32>,
    /// Pillow's unpadded taps (`ksize` of Pillow per output) while the table is built.
    raw: Vec<i32>,
    /// `(first input, non-zero span start, end)` per output while the table is built.
    spans: Vec<(usize, usize, usize)>,
}

impl Coeffs {
    /// The inputs that any output reads: from the lowest `start` to the end of the
    /// highest window (Pillow's `ybox_first`, `ybox_last`).
    fn span(&self) -> (usize, usize) {
        let first = self.start.iter().copied().min().unwrap_or(0);
        let last = self.start.iter().copied().max().unwrap_or(0) + self.ksize;
        (first, last)
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter,
/// mapping `in_size` inputs onto `out_size` outputs, written into `c` (reusing its
/// buffers). Pillow's zero taps at either end of a window are dropped (adding zero
/// changes no sum), the table is padded to the widest remaining window, and windows that
/// would run past the input are moved left with their taps shifted right, so that every
/// output reads exactly `c.ksize` inputs. With `flip`, the table is stored in mirrored
/// output order.
fn coeffs_into(c: &mut Coeffs, in_size: usize, out_size: usize, flip: bool) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let ksize = filterscale.ceil() as usize * 2 + 1; // bilinear support is 1
                                                     // First pass: Pillow's taps and the widest span of non-zero taps.
    c.raw.clear();
    c.raw.resize(out_size * ksize, 0);
    c.spans.clear();
    let mut kpad = 1;
    for (xx, row) in c.raw.chunks_exact_mut(ksize).enumerate() {
        let (xmin, n) = pillow_taps(xx, scale, in_size, row);
        let (a, b) = nonzero_span(&row[..n]);
        kpad = kpad.max(b.saturating_sub(a));
        c.spans.push((xmin, a, b));
    }
    let kpad = kpad.min(in_size).max(1);
    c.ksize = kpad;
    c.start.clear();
    c.start.resize(out_size, 0);
    c.taps.clear();
    c.taps.resize(out_size * kpad, 0);
    for (xx, (row, &(xmin, a, b))) in c.raw.chunks_exact(ksize).zip(&c.spans).enumerate() {
        let first = xmin + a;
        let x0 = first.min(in_size - kpad);
        let slot = if flip { out_size - 1 - xx } else { xx };
        c.start[slot] = x0;
        let shift = first - x0;
        c.taps[slot * kpad + shift..slot * kpad + shift + (b - a)].copy_from_slice(&row[a..b]);
    }
}

/// Pillow's fixed-point taps of output `xx` into `row`; returns `(xmin, n)`: the taps
/// `row[..n]` weight inputs `xmin..xmin + n`.
fn pillow_taps(xx: usize, scale: f64, in_size: usize, row: &mut [i32]) -> (usize, usize) {
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = row.len();
    let center = (xx as f64 + 0.5) * scale;
    let ss = 1.0 / filterscale;
    // C's (int) cast truncates towards zero.
    let xmin = ((center - support + 0.5) as i64).max(0) as usize;
    let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
    let n = xmax.saturating_sub(xmin).min(ksize);
    // Pillow's bilinear filter; evaluated twice per tap (for the sum, then for the
    // normalised value), with identical results, so that no buffer is needed.
    let weight = |x: usize| {
        let t = (((x + xmin) as f64 - center + 0.5) * ss).abs();
        if t < 1.0 {
            1.0 - t
        } else {
            0.0
        }
    };
    let ww: f64 = (0..n).map(weight).sum();
    for (x, tap) in row.iter_mut().enumerate().take(n) {
        let kx = weight(x);
        let v = if ww != 0.0 { kx / ww } else { kx };
        let f = v * (1u32 << PRECISION_BITS) as f64;
        *tap = if v < 0.0 {
            (f - 0.5) as i32
        } else {
            (f + 0.5) as i32
        };
    }
    (xmin, n)
}

/// The range of `row` from its first to past its last non-zero entry (empty if none).
fn nonzero_span(row: &[i32]) -> (usize, usize) {
    match row.iter().position(|&t| t != 0) {
        Some(a) => (
            a,
            row.len() - row.iter().rev().position(|&t| t != 0).unwrap_or(0),
        ),
        None => (0, 0),
    }
}

#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Per-thread buffers reused across images: the image between the passes, and the
/// rest.
#[derive(Default)]
struct Scratch {
    between: Vec<u8>,
    passes: Passes,
}

/// The tap tables of both passes and the horizontal pass's own buffers.
#[derive(Default)]
struct Passes {
    horizontal: Coeffs,
    vertical: Coeffs,
    /// The horizontal pass's input, transposed.
    columns: Vec<u8>,
    /// The horizontal pass's output, transposed.
    resized_columns: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Resizes `r` to `out_h × out_w` (two passes, u8 in between, in Pillow's order: see
/// [`vertical_first`]), mirroring columns if `flip`.
fn resample(r: &Region, out_h: usize, out_w: usize, flip: bool, out: &mut [u8]) {
    if out_h == 0 || out_w == 0 {
        return;
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        resample_with(r, out_h, out_w, flip, out, &mut s);
    });
}

/// Pillow 13's pass order (`ImagingResampleInner` after Pillow PR #9549): the vertical
/// pass runs first when the height shrinks by more than twice as many pixels as the
/// width does. `tools/pillow_pass_order.py` checks this against Pillow on random shapes
/// (Pillow 13: right on all 1,495 that tell the orders apart); up to Pillow 12 the
/// horizontal pass always ran first. Only matters when both passes run.
fn vertical_first(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> bool {
    let shrink_h = in_h as i64 - out_h as i64;
    let shrink_w = in_w as i64 - out_w as i64;
    shrink_h > 0 && shrink_h > 2 * shrink_w
}

fn resample_with(
    r: &Region,
    out_h: usize,
    out_w: usize,
    flip: bool,
    out: &mut [u8],
    scratch: &mut Scratch,
) {
    let Scratch { between, passes } = scratch;
    let (need_h, need_v) = (r.width != out_w, r.height != out_h);
    let origin = r.top * r.stride + r.left * 3;
    if need_h {
        coeffs_into(&mut passes.horizontal, r.width, out_w, flip);
    }
    if need_v {
        coeffs_into(&mut passes.vertical, r.height, out_h, false);
    }
    if need_h && need_v && vertical_first(r.height, r.width, out_h, out_w) {
        // Vertical pass over the columns the horizontal pass reads, then horizontal.
        let ch = &mut passes.horizontal;
        let (first, last) = ch.span();
        let cols = last - first;
        ch.start.iter_mut().for_each(|x| *x -= first);
        let src = &r.img[origin + first * 3..];
        let rows = grown(between, out_h * cols * 3);
        vertical_pass(src, r.stride, &passes.vertical, 0, cols * 3, rows);
        horizontal_pass(rows, cols * 3, cols, passes, out);
        return;
    }
    // Horizontal pass over the rows the vertical pass reads (Pillow's ybox_first/last).
    let cv = &passes.vertical;
    let (first, last) = match need_v {
        false => (0, out_h),
        true => cv.span(),
    };
    let src = &r.img[origin + first * r.stride..];
    let row_len = out_w * 3;
    let horizontal = |passes: &mut Passes, dst: &mut [u8]| match need_h {
        true => horizontal_pass(src, r.stride, r.width, passes, dst),
        false => copy_rows(src, r.stride, flip, dst, row_len),
    };
    if !need_v {
        horizontal(passes, out);
        return;
    }
    let rows = grown(between, (last - first) * row_len);
    horizontal(passes, rows);
    vertical_pass(rows, row_len, &passes.vertical, first, row_len, out);
}

/// The first `len` bytes of `buf`, grown if needed (never cleared: every byte is
/// written before it is read).
fn grown(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// The rows of `dst` (`row_len` bytes each) copied from rows `stride` bytes apart in
/// `src`, mirrored if `flip`: the horizontal pass when the width does not change.
fn copy_rows(src: &[u8], stride: usize, flip: bool, dst: &mut [u8], row_len: usize) {
    for (y, d) in dst.chunks_exact_mut(row_len).enumerate() {
        d.copy_from_slice(&src[y * stride..y * stride + row_len]);
        if flip {
            mirror(d);
        }
    }
}

/// Horizontal pass with the taps the caller built in `passes.horizontal` (the flip
/// folded in): each row of `dst` from the row of `in_w` pixels that starts `stride`
/// bytes after the previous one in `src`. Run as the vertical pass on the transposed
/// rows, then transposed back: summing along contiguous memory with one tap per output
/// row vectorises, gathering each output pixel's inputs along a row does not. The sums
/// and their rounding are the same, so the result is too.
fn horizontal_pass(src: &[u8], stride: usize, in_w: usize, passes: &mut Passes, dst: &mut [u8]) {
    let Passes {
        horizontal: ch,
        columns,
        resized_columns,
        ..
    } = passes;
    let out_w = ch.start.len();
    let rows = dst.len() / (out_w * 3);
    let column_len = rows * 3;
    let columns = grown(columns, in_w * column_len);
    transpose(src, stride, rows, in_w, columns);
    let resized = grown(resized_columns, out_w * column_len);
    vertical_pass(columns, column_len, ch, 0, column_len, resized);
    transpose(resized, column_len, out_w, rows, dst);
}

/// Writes the `rows × cols` pixels of `src` (rows `stride` bytes apart) to `dst`
/// transposed: `cols` rows of `rows` pixels each, packed.
fn transpose(src: &[u8], stride: usize, rows: usize, cols: usize, dst: &mut [u8]) {
    let column_len = rows * 3;
    for y0 in (0..rows).step_by(TILE) {
        let n = TILE.min(rows - y0);
        for x0 in (0..cols).step_by(TILE) {
            let m = TILE.min(cols - x0);
            let at = y0 * stride + x0 * 3;
            let to = x0 * column_len + y0 * 3;
            if n == TILE && m == TILE {
                transpose_tile(&src[at..], stride, &mut dst[to..], column_len);
                continue;
            }
            for i in 0..m {
                for j in 0..n {
                    let (s, d) = (at + j * stride + i * 3, to + i * column_len + j * 3);
                    dst[d..d + 3].copy_from_slice(&src[s..s + 3]);
                }
            }
        }
    }
}

/// Pixels per side of the tiles that [`transpose`] moves at once.
const TILE: usize = 8;

/// One full `TILE × TILE` tile of [`transpose`]: rows `stride` bytes apart in `src`,
/// columns `column_len` bytes apart in `dst`.
#[inline(always)]
fn transpose_tile(src: &[u8], stride: usize, dst: &mut [u8], column_len: usize) {
    let mut tile = [[0u8; 3 * TILE]; TILE];
    for (j, row) in tile.iter_mut().enumerate() {
        row.copy_from_slice(&src[j * stride..j * stride + 3 * TILE]);
    }
    for i in 0..TILE {
        let d = &mut dst[i * column_len..i * column_len + 3 * TILE];
        for (j, row) in tile.iter().enumerate() {
            d[j * 3..j * 3 + 3].copy_from_slice(&row[i * 3..i * 3 + 3]);
        }
    }
}

/// Vertical pass: output row `i` of `out` (rows of `row_len` bytes) sums the rows
/// `c.start[i] - first ..` of `src`, which start `stride` bytes apart.
fn vertical_pass(
    src: &[u8],
    stride: usize,
    c: &Coeffs,
    first: usize,
    row_len: usize,
    out: &mut [u8],
) {
    let args = (src, stride, c, first, row_len);
    match c.ksize {
        2..=6 if split_ok(c) => vertical_split(args, out),
        _ => vertical_any(args, out),
    }
}

/// [`vertical`] for `c.ksize` in 2..=6 and taps that pass [`split_ok`], compiled for
/// AVX2 and SSE4.1 besides the x86-64 baseline (SSE2) and picked at run time from the
/// CPU's features (the `multiversion` crate); every clone computes the same integers.
#[multiversion::multiversion(targets("x86_64+avx2", "x86_64+sse4.1"))]
fn vertical_split(args: VerticalIn, out: &mut [u8]) {
    match args.2.ksize {
        2 => vertical::<2>(args, out),
        3 => vertical::<3>(args, out),
        4 => vertical::<4>(args, out),
        5 => vertical::<5>(args, out),
        _ => vertical::<6>(args, out),
    }
}

/// Splits a tap `t` (non-negative, below 2²⁴) as `t = hi · 2¹⁵ + m · 2⁸ + l` with
/// `m < 2⁷` and `l < 2⁸`, so that each product with a u8 pixel fits a u16.
fn split_tap(t: i32) -> (u16, u16, u16) {
    (
        (t >> 15) as u16,
        ((t >> 8) & 0x7f) as u16,
        (t & 0xff) as u16,
    )
}

/// Pillow's `clip8(HALF + Σ p · t)` from the split sums of [`split_tap`]:
/// `Σ p · t = (Σ p · hi) · 2¹⁵ + (Σ p · m) · 2⁸ + Σ p · l`. `Σ p · hi ≤ 255 · 128` is
/// exact in a wrapping u16 (see [`split_ok`]); the other two are summed in u32. Only
/// 16-bit multiplies are involved, which vectorise on every x86-64 (32-bit ones do not
/// before SSE4.1).
#[inline(always)]
fn mac<const K: usize>(p: [u8; K], hi: [u16; K], m: [u16; K], l: [u16; K]) -> u8 {
    let (mut sh, mut sm, mut sl) = (0u16, 0u32, 0u32);
    for j in 0..K {
        let p = u16::from(p[j]);
        sh = sh.wrapping_add(p.wrapping_mul(hi[j]));
        sm += u32::from(p.wrapping_mul(m[j]));
        sl += u32::from(p.wrapping_mul(l[j]));
    }
    clip8(((i32::from(sh)) << 15) + ((sm << 8) + sl) as i32 + HALF)
}

/// What the vertical kernels read: `(src, stride, taps, first, row_len)` as in
/// [`vertical_pass`].
type VerticalIn<'a> = (&'a [u8], usize, &'a Coeffs, usize, usize);

/// The vertical pass with `K` taps per output row, summed with [`mac`]; inlined into
/// each clone of [`vertical_split`].
#[inline(always)]
fn vertical<const K: usize>((src, stride, c, first, row_len): VerticalIn, out: &mut [u8]) {
    for ((orow, &y0), taps) in out
        .chunks_exact_mut(row_len)
        .zip(&c.start)
        .zip(c.taps.chunks_exact(K))
    {
        let at = (y0 - first) * stride;
        let split: [(u16, u16, u16); K] = std::array::from_fn(|j| split_tap(taps[j]));
        let hi: [u16; K] = std::array::from_fn(|j| split[j].0);
        let m: [u16; K] = std::array::from_fn(|j| split[j].1);
        let l: [u16; K] = std::array::from_fn(|j| split[j].2);
        let rows: [&[u8]; K] =
            std::array::from_fn(|j| &src[at + j * stride..at + j * stride + row_len]);
        for (i, o) in orow.iter_mut().enumerate() {
            *o = mac::<K>(std::array::from_fn(|j| rows[j][i]), hi, m, l);
        }
    }
}

/// Whether [`mac`]'s split sums are exact for these taps: all taps non-negative and
/// each output's `Σ hi ≤ 128` (so that `Σ p · hi ≤ 32 640` fits a u16 and the total an
/// i32). Pillow's bilinear taps sum to 2²² give or take rounding, so this always holds.
fn split_ok(c: &Coeffs) -> bool {
    c.taps
        .chunks_exact(c.ksize.max(1))
        .all(|t| t.iter().all(|&v| v >= 0) && t.iter().map(|&v| v >> 15).sum::<i32>() <= 128)
}

/// [`vertical`] for any number of taps.
fn vertical_any((src, stride, c, first, row_len): VerticalIn, out: &mut [u8]) {
    let k = c.ksize;
    let mut acc = vec![0i32; row_len];
    for ((orow, &y0), taps) in out
        .chunks_exact_mut(row_len)
        .zip(&c.start)
        .zip(c.taps.chunks_exact(k))
    {
        let at = (y0 - first) * stride;
        acc.fill(HALF);
        for (j, &t) in taps.iter().enumerate() {
            let row = &src[at + j * stride..at + j * stride + row_len];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * t;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

/// Reverses the order of the RGB pixels of one row.
fn mirror(row: &mut [u8]) {
    let n = row.len() / 3;
    for i in 0..n / 2 {
        for c in 0..3 {
            row.swap(i * 3 + c, (n - 1 - i) * 3 + c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_halving_averages_pairs() {
        // Downscaling 4 -> 2 with support 2: output 0 has centre 1.0, inputs 0..3 at
        // distances 0.5, 0.5, 1.5 → weights ½·(0.75, 0.75, 0.25) normalised to
        // (3/7, 3/7, 1/7); for a row [0, 70, 140, 210] that is 30 + 20 = 50.
        let row: Vec<u8> = [0u8, 70, 140, 210]
            .iter()
            .flat_map(|&v| [v, v, v])
            .collect();
        let r = Region {
            img: &row,
            stride: 12,
            top: 0,
            left: 0,
            height: 1,
            width: 4,
        };
        let mut out = vec![0u8; 6];
        resample(&r, 1, 2, false, &mut out);
        assert_eq!(out[0], 50);
        // Output 1: centre 3.0, inputs 1..4 at distances 1.5, 0.5, 0.5 → (1/7, 3/7, 3/7):
        // 10 + 60 + 90 = 160.
        assert_eq!(out[3], 160);
    }

    #[test]
    fn transpose_moves_every_pixel_once() {
        // 19 × 13 pixels (neither a multiple of the tile) inside rows of 15 pixels,
        // each pixel's bytes encoding its position: pixel (y, x) = [y, x, y ^ x].
        let (rows, cols, stride) = (19, 13, 15 * 3);
        let mut src = vec![0u8; rows * stride];
        for y in 0..rows {
            for x in 0..cols {
                let at = y * stride + x * 3;
                src[at..at + 3].copy_from_slice(&[y as u8, x as u8, (y ^ x) as u8]);
            }
        }
        let mut dst = vec![0u8; rows * cols * 3];
        transpose(&src, stride, rows, cols, &mut dst);
        for x in 0..cols {
            for y in 0..rows {
                let at = (x * rows + y) * 3;
                assert_eq!(dst[at..at + 3], [y as u8, x as u8, (y ^ x) as u8]);
            }
        }
        let mut back = vec![0u8; rows * cols * 3];
        transpose(&dst, rows * 3, cols, rows, &mut back);
        for y in 0..rows {
            assert_eq!(
                back[y * cols * 3..(y + 1) * cols * 3],
                src[y * stride..y * stride + cols * 3]
            );
        }
    }

    #[test]
    fn fallback_is_centre_crop_clamped_to_ratio() {
        // scale > 1 never fits, so the fallback runs: a 100×400 image (ratio 4) with
        // max ratio 4/3 keeps height 100 and width round(133.33) = 133, centred.
        let mut rng = SplitMix64::keyed(&[0]);
        let p = random_resized_crop_params(&mut rng, 100, 400, [2.0, 3.0], [0.75, 4.0 / 3.0]);
        assert_eq!((p.top, p.left, p.height, p.width), (0, 133, 100, 133));
    }
}
