//! A tiny rasteriser over an [`RgbImage`]: pixels, rectangles, Bresenham lines and
//! 8×8 bitmap text (font8x8). Everything outside the image is clipped silently.
use image::{Rgb, RgbImage};

/// Width and height in pixels of one glyph at scale 1 (font8x8 is 8×8).
pub const GLYPH: u32 = 8;

/// An image being drawn on, with integer pixel coordinates (x right, y down).
pub struct Canvas {
    /// The pixels drawn so far.
    pub img: RgbImage,
}

impl Canvas {
    /// A `width`×`height` canvas filled with `bg`.
    ///
    /// ```
    /// let c = dml::plot::canvas::Canvas::new(4, 3, [255, 255, 255]);
    /// assert_eq!(c.img.dimensions(), (4, 3));
    /// ```
    pub fn new(width: u32, height: u32, bg: [u8; 3]) -> Canvas {
        Canvas {
            img: RgbImage::from_pixel(width, height, Rgb(bg)),
        }
    }

    /// Sets pixel (x, y) to `c` if it lies inside the image.
    pub fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0
            && y >= 0
            && (x as u64) < u64::from(self.img.width())
            && (y as u64) < u64::from(self.img.height())
        {
            self.img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }

    /// Fills the `w`×`h` rectangle whose top-left corner is (x, y).
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, c);
            }
        }
    }

    /// Draws the outline of the `w`×`h` rectangle at (x, y), `t` pixels thick, inside it.
    pub fn rect_outline(&mut self, x: i64, y: i64, w: i64, h: i64, t: i64, c: [u8; 3]) {
        self.fill_rect(x, y, w, t, c);
        self.fill_rect(x, y + h - t, w, t, c);
        self.fill_rect(x, y, t, h, c);
        self.fill_rect(x + w - t, y, t, h, c);
    }

    /// Draws a line from (x0, y0) to (x1, y1) with Bresenham's algorithm, with a square
    /// pen `pen` pixels wide (pen 1 is the plain one-pixel line).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), pen: i64, c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let off = (pen - 1) / 2;
        loop {
            self.fill_rect(x - off, y - off, pen, pen, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws a vertical dashed line at column x from y0 to y1 (inclusive): `on` pixels
    /// drawn, `off` skipped, repeating, `pen` pixels wide.
    pub fn dashed_vline(
        &mut self,
        x: i64,
        (y0, y1): (i64, i64),
        (on, off): (i64, i64),
        pen: i64,
        c: [u8; 3],
    ) {
        let period = (on + off).max(1);
        for y in y0.min(y1)..=y0.max(y1) {
            if (y - y0.min(y1)) % period < on {
                self.fill_rect(x - (pen - 1) / 2, y, pen, 1, c);
            }
        }
    }

    /// Writes `text` with its top-left corner at (x, y), each glyph `scale` times 8×8.
    /// Characters outside ASCII are drawn as '?'.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, c: [u8; 3]) {
        let s = i64::from(scale.max(1));
        for (i, ch) in text.chars().enumerate() {
            let glyph = glyph(ch);
            let gx = x + i as i64 * i64::from(GLYPH) * s;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        self.fill_rect(gx + col * s, y + row as i64 * s, s, s, c);
                    }
                }
            }
        }
    }

    /// Writes `text` turned 90° anticlockwise (reading upwards), its baseline-left corner
    /// at (x, y): the string runs from y upwards, glyph tops face left.
    pub fn text_up(&mut self, x: i64, y: i64, text: &str, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let glyph = glyph(ch);
            let base = y - i as i64 * i64::from(GLYPH);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        self.put(x + row as i64, base - col, c);
                    }
                }
            }
        }
    }
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> i64 {
    text.chars().count() as i64 * i64::from(GLYPH * scale.max(1))
}

/// The 8×8 bitmap of `ch` (bit 0 of each row byte is the leftmost pixel).
fn glyph(ch: char) -> [u8; 8] {
    let code = if ch.is_ascii() {
        ch as usize
    } else {
        '?' as usize
    };
    font8x8::legacy::BASIC_LEGACY[code]
}
