//! Image transforms on u8 HWC RGB pixels, as pure functions: torchvision's
//! `RandomResizedCrop` + `RandomHorizontalFlip` for training and `Resize` +
//! `CenterCrop` for testing.
//!
//! Resampling reproduces Pillow's antialiased bilinear filter (`Image.resize(...,
//! BILINEAR)`, which torchvision calls on PIL images) including its 22-bit fixed-point
//! arithmetic and its horizontal-then-vertical order, so results match Pillow to the
//! byte (the tests allow 1).
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

/// Fixed-point filter taps of one axis: output `i` reads `len[i]` inputs from
/// `start[i]` with weights `taps[i * ksize..]`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    taps: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter,
/// mapping `in_size` inputs onto `out_size` outputs.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut c = Coeffs {
        ksize,
        start: Vec::with_capacity(out_size),
        len: Vec::with_capacity(out_size),
        taps: vec![0; out_size * ksize],
    };
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates towards zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            let t = t.abs();
            *kx = if t < 1.0 { 1.0 - t } else { 0.0 };
            ww += *kx;
        }
        let row = &mut c.taps[xx * ksize..xx * ksize + n];
        for (tap, &kx) in row.iter_mut().zip(&k[..n]) {
            let v = if ww != 0.0 { kx / ww } else { kx };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            *tap = if v < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        c.start.push(xmin);
        c.len.push(n);
    }
    c
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `r` to `out_h × out_w` (horizontal pass first, u8 in between, like Pillow),
/// mirroring columns if `flip`.
fn resample(r: &Region, out_h: usize, out_w: usize, flip: bool, out: &mut [u8]) {
    let cv = coeffs(r.height, out_h);
    let first = cv.start.first().copied().unwrap_or(0);
    let last = match out_h {
        0 => 0,
        _ => cv.start[out_h - 1] + cv.len[out_h - 1],
    };
    let rows = last - first;
    let row_len = out_w * 3;
    // Horizontal pass over the rows the vertical pass reads.
    let mut tmp = vec![0u8; rows * row_len];
    if r.width == out_w {
        for y in 0..rows {
            let s = (r.top + first + y) * r.stride + r.left * 3;
            let dst = &mut tmp[y * row_len..(y + 1) * row_len];
            dst.copy_from_slice(&r.img[s..s + row_len]);
            if flip {
                mirror(dst);
            }
        }
    } else {
        let ch = coeffs(r.width, out_w);
        for y in 0..rows {
            let s = (r.top + first + y) * r.stride + r.left * 3;
            let src = &r.img[s..s + r.width * 3];
            let dst = &mut tmp[y * row_len..(y + 1) * row_len];
            for xx in 0..out_w {
                let (x0, n) = (ch.start[xx], ch.len[xx]);
                let taps = &ch.taps[xx * ch.ksize..xx * ch.ksize + n];
                let px = &src[x0 * 3..(x0 + n) * 3];
                let (mut a, mut b, mut c) = (HALF, HALF, HALF);
                for (t, p) in taps.iter().zip(px.chunks_exact(3)) {
                    a += p[0] as i32 * t;
                    b += p[1] as i32 * t;
                    c += p[2] as i32 * t;
                }
                let ox = if flip { out_w - 1 - xx } else { xx };
                dst[ox * 3] = clip8(a);
                dst[ox * 3 + 1] = clip8(b);
                dst[ox * 3 + 2] = clip8(c);
            }
        }
    }
    // Vertical pass.
    if r.height == out_h {
        out.copy_from_slice(&tmp[..out_h * row_len]);
        return;
    }
    let mut acc = vec![0i32; row_len];
    for yy in 0..out_h {
        let (y0, n) = (cv.start[yy] - first, cv.len[yy]);
        let taps = &cv.taps[yy * cv.ksize..yy * cv.ksize + n];
        acc.fill(HALF);
        for (i, &t) in taps.iter().enumerate() {
            let row = &tmp[(y0 + i) * row_len..(y0 + i + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * t;
            }
        }
        for (o, &a) in out[yy * row_len..(yy + 1) * row_len].iter_mut().zip(&acc) {
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
    fn fallback_is_centre_crop_clamped_to_ratio() {
        // scale > 1 never fits, so the fallback runs: a 100×400 image (ratio 4) with
        // max ratio 4/3 keeps height 100 and width round(133.33) = 133, centred.
        let mut rng = SplitMix64::keyed(&[0]);
        let p = random_resized_crop_params(&mut rng, 100, 400, [2.0, 3.0], [0.75, 4.0 / 3.0]);
        assert_eq!((p.top, p.left, p.height, p.width), (0, 133, 100, 133));
    }
}
