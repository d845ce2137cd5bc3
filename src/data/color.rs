//! Colour augmentation on u8 HWC RGB pixels, as torchvision applies it to PIL images:
//! `ColorJitter(brightness, contrast, saturation, hue)` (the four adjustments in a random
//! order, each with a factor drawn uniformly) and `RandomGrayscale(p)`. Each adjustment
//! reproduces Pillow 13 to the byte: `ImageEnhance.Brightness` / `Contrast` / `Color`
//! (`Image.blend` in single-precision floats, truncated), `convert("L")` (ITU-R 601-2 in
//! 16-bit fixed point), and torchvision's hue shift through Pillow's HSV conversions
//! (whose single/double-precision mix is kept as it is).
use crate::rng::SplitMix64;

/// `data.color_jitter`: torchvision's `ColorJitter` arguments; 0 turns an adjustment off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ColorJitter {
    /// Brightness factor drawn from `[max(0, 1 − b), 1 + b]`.
    pub brightness: f64,
    /// Contrast factor drawn from `[max(0, 1 − c), 1 + c]`.
    pub contrast: f64,
    /// Saturation factor drawn from `[max(0, 1 − s), 1 + s]`.
    pub saturation: f64,
    /// Hue shift drawn from `[−h, h]`, at most 0.5.
    pub hue: f64,
}

/// One image's draw of [`ColorJitter`]: the adjustments in the order they apply.
#[derive(Debug, Clone, PartialEq)]
pub struct JitterParams {
    /// `(adjustment, factor)` in application order.
    pub steps: Vec<(Adjust, f64)>,
}

/// One colour adjustment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjust {
    /// `ImageEnhance.Brightness`.
    Brightness,
    /// `ImageEnhance.Contrast`.
    Contrast,
    /// `ImageEnhance.Color`.
    Saturation,
    /// torchvision's `adjust_hue`.
    Hue,
}

impl ColorJitter {
    /// True when no adjustment is on.
    pub fn is_off(&self) -> bool {
        self.brightness == 0.0 && self.contrast == 0.0 && self.saturation == 0.0 && self.hue == 0.0
    }

    /// Draws the order (a uniform permutation, as `torch.randperm(4)`) and the factor of
    /// every adjustment that is on.
    pub fn draw(&self, rng: &mut SplitMix64) -> JitterParams {
        let mut order = [
            Adjust::Brightness,
            Adjust::Contrast,
            Adjust::Saturation,
            Adjust::Hue,
        ];
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let around_one = |r: f64, rng: &mut SplitMix64| {
            let lo = (1.0 - r).max(0.0);
            lo + (1.0 + r - lo) * rng.next_f64()
        };
        let mut steps = Vec::new();
        for a in order {
            let factor = match a {
                Adjust::Brightness if self.brightness > 0.0 => around_one(self.brightness, rng),
                Adjust::Contrast if self.contrast > 0.0 => around_one(self.contrast, rng),
                Adjust::Saturation if self.saturation > 0.0 => around_one(self.saturation, rng),
                Adjust::Hue if self.hue > 0.0 => -self.hue + 2.0 * self.hue * rng.next_f64(),
                _ => continue,
            };
            steps.push((a, factor));
        }
        JitterParams { steps }
    }
}

/// Applies `p`'s adjustments in order to `px` (HWC RGB) in place.
pub fn apply_jitter(px: &mut [u8], p: &JitterParams) {
    for &(a, f) in &p.steps {
        match a {
            Adjust::Brightness => adjust_brightness(px, f),
            Adjust::Contrast => adjust_contrast(px, f),
            Adjust::Saturation => adjust_saturation(px, f),
            Adjust::Hue => adjust_hue(px, f),
        }
    }
}

/// Pillow's `Image.blend(degenerate, image, alpha)` for one value: `d + α·(x − d)` in
/// single precision, truncated (clamped to [0, 255] when α lies outside [0, 1]).
fn blend(degenerate: u8, x: u8, alpha: f32) -> u8 {
    let v = degenerate as i32 as f32 + alpha * (x as i32 - degenerate as i32) as f32;
    if v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        v as u8
    }
}

/// `convert("L")` of one RGB pixel: ITU-R 601-2 luma in 16-bit fixed point.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `ImageEnhance.Brightness(img).enhance(f)`: a blend with black.
pub fn adjust_brightness(px: &mut [u8], f: f64) {
    let f = f as f32;
    for v in px.iter_mut() {
        *v = blend(0, *v, f);
    }
}

/// `ImageEnhance.Contrast(img).enhance(f)`: a blend with the image's mean luma, rounded.
pub fn adjust_contrast(px: &mut [u8], f: f64) {
    let n = px.len() / 3;
    if n == 0 {
        return;
    }
    let sum: u64 = px
        .chunks_exact(3)
        .map(|p| luma(p[0], p[1], p[2]) as u64)
        .sum();
    let mean = (sum as f64 / n as f64 + 0.5) as u8;
    let f = f as f32;
    for v in px.iter_mut() {
        *v = blend(mean, *v, f);
    }
}

/// `ImageEnhance.Color(img).enhance(f)`: a blend with the pixel's own luma.
pub fn adjust_saturation(px: &mut [u8], f: f64) {
    let f = f as f32;
    for p in px.chunks_exact_mut(3) {
        let l = luma(p[0], p[1], p[2]);
        for v in p.iter_mut() {
            *v = blend(l, *v, f);
        }
    }
}

/// torchvision's `adjust_hue` on a PIL image: to Pillow's HSV, `H += int(f·255)` with
/// u8 wrap-around, back to RGB.
pub fn adjust_hue(px: &mut [u8], f: f64) {
    let shift = (f * 255.0) as i32 as u8;
    for p in px.chunks_exact_mut(3) {
        let [h, s, v] = rgb_to_hsv(p[0], p[1], p[2]);
        let rgb = hsv_to_rgb(h.wrapping_add(shift), s, v);
        p.copy_from_slice(&rgb);
    }
}

/// `RandomGrayscale`'s output: every pixel's luma in all three channels.
pub fn to_grayscale(px: &mut [u8]) {
    for p in px.chunks_exact_mut(3) {
        let l = luma(p[0], p[1], p[2]);
        p.fill(l);
    }
}

/// Pillow's `convert("HSV")` of one RGB pixel (libImaging/Convert.c, after colorsys):
/// single-precision ratios, double-precision hue wrap, truncation to u8.
pub fn rgb_to_hsv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let rc = (maxc - r) as f32 / cr;
    let gc = (maxc - g) as f32 / cr;
    let bc = (maxc - b) as f32 / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    let clip = |v: f64| (v as i32).clamp(0, 255) as u8;
    [clip(h as f64 * 255.0), clip(s as f64 * 255.0), maxc]
}

/// Pillow's `convert("RGB")` of one HSV pixel (libImaging/Convert.c, after colorsys).
pub fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let sector = (h as f32 as f64 * 6.0 / 255.0).floor() as i32;
    let f = (h as f32 as f64 * 6.0 / 255.0 - sector as f32 as f64) as f32;
    let fs = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let round = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = round(vf * (1.0 - fs as f64));
    let q = round(vf * (1.0 - (fs * f) as f64));
    let t = round(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    match sector % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draw_permutes_the_adjustments_that_are_on_with_factors_in_range() {
        let j = ColorJitter {
            brightness: 0.4,
            contrast: 0.0,
            saturation: 1.5,
            hue: 0.1,
        };
        let mut seen_first = std::collections::HashSet::new();
        for k in 0..200u64 {
            let p = j.draw(&mut SplitMix64::keyed(&[k]));
            assert_eq!(p.steps.len(), 3, "contrast is off");
            seen_first.insert(format!("{:?}", p.steps[0].0));
            for &(a, f) in &p.steps {
                match a {
                    Adjust::Brightness => assert!((0.6..=1.4).contains(&f)),
                    Adjust::Saturation => assert!((0.0..=2.5).contains(&f)),
                    Adjust::Hue => assert!((-0.1..=0.1).contains(&f)),
                    Adjust::Contrast => panic!("contrast is off"),
                }
            }
        }
        assert_eq!(
            seen_first.len(),
            3,
            "every adjustment comes first sometimes"
        );
        assert!(ColorJitter::default().is_off());
    }

    #[test]
    fn hand_derived_values() {
        // L = (255·19595 + 0x8000) >> 16 = 76 for pure red; white stays 255.
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(255, 255, 255), 255);
        // Brightness 0.5 of 255: 127.5 truncates to 127; 1.5 × 200 clips to 255.
        let mut px = [255u8, 200, 1];
        adjust_brightness(&mut px, 0.5);
        assert_eq!(px, [127, 100, 0]);
        // Pure red is hue 0, saturation 255; a shift of 1/3 (85) is pure green.
        assert_eq!(rgb_to_hsv(255, 0, 0), [0, 255, 255]);
        assert_eq!(hsv_to_rgb(85, 255, 255), [0, 255, 0]);
    }
}
