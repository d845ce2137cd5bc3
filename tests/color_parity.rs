//! Colour augmentation against torchvision on PIL images (the venv's torchvision 0.28 /
//! Pillow 13 as the oracle, run live): the HSV and L conversions over every one of the
//! 2^24 RGB (and HSV) values, and `adjust_brightness` / `contrast` / `saturation` / `hue`
//! and `rgb_to_grayscale` on random images at factors inside and outside [0, 1].
mod common;

use std::process::Command;

use dml::data::color::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, hsv_to_rgb, luma,
    rgb_to_hsv, to_grayscale,
};

const ORACLE: &str = r#"
import sys, numpy as np
from PIL import Image
import torchvision.transforms.functional as F
out = sys.argv[1]
v = np.arange(1 << 24, dtype=np.uint32)
rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
img = Image.fromarray(rgb, "RGB")
open(out + "/hsv.bin", "wb").write(img.convert("HSV").tobytes())
open(out + "/l.bin", "wb").write(img.convert("L").tobytes())
open(out + "/rgb.bin", "wb").write(Image.frombytes("HSV", (4096, 4096), rgb.tobytes()).convert("RGB").tobytes())
cases = [("brightness", f) for f in (0.3, 0.77, 1.0, 1.6)] + \
        [("contrast", f) for f in (0.2, 1.0, 1.9)] + \
        [("saturation", f) for f in (0.0, 0.5, 2.3)] + \
        [("hue", f) for f in (-0.5, -0.13, 0.07, 0.5)] + [("grayscale", 0.0)]
rng = np.random.default_rng(0)
with open(out + "/cases.txt", "w") as listing:
    for k, (op, f) in enumerate(cases):
        a = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
        # Half of the images smooth, so that blends and hue shifts see gradients too.
        if k % 2:
            a = (np.linspace(0, 255, 17 * 23 * 3).reshape(17, 23, 3) * rng.random()).astype(np.uint8)
        im = Image.fromarray(a, "RGB")
        if op == "grayscale":
            r = F.rgb_to_grayscale(im, num_output_channels=3)
        else:
            r = getattr(F, "adjust_" + op)(im, f)
        open(f"{out}/in{k}.bin", "wb").write(a.tobytes())
        open(f"{out}/out{k}.bin", "wb").write(np.asarray(r.convert("RGB")).tobytes())
        listing.write(f"{op} {f!r}\n")
"#;

#[test]
fn colour_adjustments_match_torchvision_on_pil_to_the_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Command::new(common::python());
    c.args(["-c", ORACLE]).arg(tmp.path());
    common::ok(c);
    let read = |name: &str| std::fs::read(tmp.path().join(name)).unwrap();

    let (hsv, l, rgb) = (read("hsv.bin"), read("l.bin"), read("rgb.bin"));
    let mut bad = (0usize, 0usize, 0usize);
    for v in 0..1usize << 24 {
        let [a, b, c] = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        if rgb_to_hsv(a, b, c) != [hsv[3 * v], hsv[3 * v + 1], hsv[3 * v + 2]] {
            bad.0 += 1;
        }
        if luma(a, b, c) != l[v] {
            bad.1 += 1;
        }
        if hsv_to_rgb(a, b, c) != [rgb[3 * v], rgb[3 * v + 1], rgb[3 * v + 2]] {
            bad.2 += 1;
        }
    }
    assert_eq!(
        bad,
        (0, 0, 0),
        "RGB→HSV, RGB→L, HSV→RGB values that differ from Pillow"
    );

    let cases = String::from_utf8(read("cases.txt")).unwrap();
    for (k, line) in cases.lines().enumerate() {
        let (op, f) = line.split_once(' ').unwrap();
        let f: f64 = f.parse().unwrap();
        let mut px = read(&format!("in{k}.bin"));
        match op {
            "brightness" => adjust_brightness(&mut px, f),
            "contrast" => adjust_contrast(&mut px, f),
            "saturation" => adjust_saturation(&mut px, f),
            "hue" => adjust_hue(&mut px, f),
            _ => to_grayscale(&mut px),
        }
        assert_eq!(px, read(&format!("out{k}.bin")), "{op} {f}");
    }
}
