//! The threaded loaders and the augmentation: invariance to workers, prefetch and ranks,
//! tensor conversion, evaluation order, and resampling against Pillow
//! (oracle: tools/augment_oracle.py).
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dml::data::augment::{
    random_resized_crop_params, resize_center_crop, resized_crop, CropParams,
};
use dml::data::format::{Dataset, DatasetWriter, Metadata};
use dml::data::loader::{Batch, Images, Loader, TrainLoaderOptions};
use dml::data::sampler::Sampler;
use dml::rng::SplitMix64;

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
const ORACLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/augment_oracle.py");

fn random_image(h: usize, w: usize, key: u64) -> Vec<u8> {
    let mut rng = SplitMix64::keyed(&[key, h as u64, w as u64]);
    // Smooth-ish content plus noise so that the filters see real gradients.
    (0..h * w * 3)
        .map(|i| {
            let (y, x) = ((i / 3) / w, (i / 3) % w);
            let base = (y * 5 + x * 3 + (i % 3) * 60) % 256;
            ((base + rng.below(40)) % 256) as u8
        })
        .collect()
}

/// 6 classes × 5 images of varying shapes.
fn tiny_dataset(dir: &Path) -> Arc<Dataset> {
    let path = dir.join("tiny.dmlds");
    let mut w = DatasetWriter::create(&path).unwrap();
    let shapes = [(20, 28), (24, 24), (30, 18), (19, 23), (26, 31)];
    for i in 0..30usize {
        let (h, wd) = shapes[i % shapes.len()];
        w.push(
            &random_image(h, wd, i as u64),
            h as u32,
            wd as u32,
            (i % 6) as u32,
        )
        .unwrap();
    }
    let meta = Metadata {
        class_names: (0..6).map(|c| format!("c{c}")).collect(),
        ..Default::default()
    };
    w.finish(meta).unwrap();
    Arc::new(Dataset::open(&path).unwrap())
}

fn options(workers: usize, prefetch: usize, rank: usize, world: usize) -> TrainLoaderOptions {
    TrainLoaderOptions {
        image_size: 16,
        crop_scale: [0.3, 1.0],
        crop_ratio: [0.75, 4.0 / 3.0],
        workers,
        prefetch,
        seed: 77,
        rank,
        world,
        prepare: None,
        flip: true,
        color_jitter: Default::default(),
        grayscale_p: 0.0,
    }
}

fn collect(ds: &Arc<Dataset>, opts: TrainLoaderOptions, start: u64, end: u64) -> Vec<Batch> {
    let sampler = Sampler::new(ds.labels(), 4, 2, 77).unwrap();
    let mut l = Loader::train(ds.clone(), sampler, opts, start, end).unwrap();
    let mut out = Vec::new();
    while let Some(b) = l.try_next().unwrap() {
        out.push(b);
    }
    out
}

#[test]
fn train_batches_do_not_depend_on_workers_or_prefetch() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let a = collect(&ds, options(1, 1, 0, 1), 2, 9);
    let b = collect(&ds, options(3, 4, 0, 1), 2, 9);
    assert_eq!(a.len(), 7);
    assert_eq!(
        a.iter().map(|b| b.step).collect::<Vec<_>>(),
        (2..9).collect::<Vec<_>>()
    );
    assert_eq!(a, b);
    // Each sample is the documented pure function of (seed, step, position).
    let sampler = Sampler::new(ds.labels(), 4, 2, 77).unwrap();
    for batch in &a {
        assert_eq!(batch.indices, sampler.global_batch(batch.step));
        for (pos, &idx) in batch.indices.iter().enumerate() {
            assert_eq!(batch.labels[pos], ds.label(idx) as i64);
            let img = ds.image(idx);
            let mut rng = SplitMix64::keyed(&[77, batch.step, pos as u64]);
            let p = random_resized_crop_params(
                &mut rng,
                img.height,
                img.width,
                [0.3, 1.0],
                [0.75, 4.0 / 3.0],
            );
            let want = resized_crop(img.pixels, img.height, img.width, &p, 16);
            assert_eq!(&batch.pixels[pos * 768..(pos + 1) * 768], &want[..]);
        }
    }
}

#[test]
fn rank_slices_equal_the_single_rank_batch() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let whole = collect(&ds, options(2, 2, 0, 1), 0, 5);
    let r0 = collect(&ds, options(1, 3, 0, 2), 0, 5);
    let r1 = collect(&ds, options(3, 1, 1, 2), 0, 5);
    for ((w, a), b) in whole.iter().zip(&r0).zip(&r1) {
        assert_eq!(a.len(), 4);
        assert_eq!([a.pixels.clone(), b.pixels.clone()].concat(), w.pixels);
        assert_eq!([a.labels.clone(), b.labels.clone()].concat(), w.labels);
        assert_eq!([a.indices.clone(), b.indices.clone()].concat(), w.indices);
    }
}

#[test]
fn worker_errors_surface_and_drop_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    // A sampler over 1000 labels points past the 30-image file.
    let labels: Vec<u32> = (0..1000).map(|i| i % 6).collect();
    let sampler = Sampler::new(&labels, 4, 2, 1).unwrap();
    let mut l = Loader::train(ds.clone(), sampler, options(2, 2, 0, 1), 0, 50).unwrap();
    let mut err = None;
    for _ in 0..50 {
        match l.try_next() {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
        }
    }
    let err = err.expect("an out-of-range index must fail");
    assert!(err.contains("out of range"), "{err}");

    // Dropping after two of 10 000 steps returns promptly.
    let (tx, rx) = std::sync::mpsc::channel();
    let ds2 = ds.clone();
    std::thread::spawn(move || {
        let sampler = Sampler::new(ds2.labels(), 4, 2, 1).unwrap();
        let mut l = Loader::train(ds2, sampler, options(3, 2, 0, 1), 0, 10_000).unwrap();
        l.try_next().unwrap();
        l.try_next().unwrap();
        drop(l);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("dropping the loader hung");
}

/// The CPU path (one pass in Rust) gives bit for bit what torch's element-wise ops give
/// for `(x.permute / 255 − mean) / std`, the formula of torchvision's ToTensor +
/// Normalize, in float32 and float64.
#[test]
fn to_tensor_on_cpu_equals_torch_ops_bit_for_bit() {
    use dml::data::loader::{IMAGENET_MEAN, IMAGENET_STD};
    let (b, s) = (3usize, 5usize);
    let mut rng = SplitMix64::keyed(&[11]);
    let pixels: Vec<u8> = (0..b * s * s * 3)
        .map(|_| (rng.next_u64() % 256) as u8)
        .collect();
    let batch = Batch {
        step: 0,
        pixels: pixels.clone(),
        labels: vec![0; b],
        indices: vec![0; b],
        size: s,
        images: None,
    };
    for kind in [tch::Kind::Float, tch::Kind::Double] {
        let x = tch::Tensor::from_slice(&pixels)
            .view([b as i64, s as i64, s as i64, 3])
            .permute([0, 3, 1, 2])
            .to_kind(kind);
        let mean = tch::Tensor::from_slice(&IMAGENET_MEAN)
            .to_kind(kind)
            .view([1, 3, 1, 1]);
        let std = tch::Tensor::from_slice(&IMAGENET_STD)
            .to_kind(kind)
            .view([1, 3, 1, 1]);
        let want = ((x / 255.0 - mean) / std).contiguous();
        let got = batch.to_tensor(tch::Device::Cpu, kind);
        assert_eq!(got.size(), want.size());
        assert!(got.is_contiguous());
        assert!(got.equal(&want), "{kind:?}: differs from torch's ops");
    }
}

/// With `prepare`, the workers normalise each batch (bit for bit `to_tensor` of its
/// pixels, which then hands out that tensor without a copy) and write later batches into
/// buffers handed back with `recycle`: a buffer recycled before the first batch is
/// received (and kept alive here, so no allocation can reuse its address) holds one of
/// the first three batches (the third is built only after the first is received).
#[test]
fn prepared_images_equal_to_tensor_and_reuse_recycled_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    for kind in [tch::Kind::Float, tch::Kind::Double] {
        let mut opts = options(1, 1, 0, 1);
        opts.prepare = Some(kind);
        let sampler = Sampler::new(ds.labels(), 4, 2, 77).unwrap();
        let mut l = Loader::train(ds.clone(), sampler, opts, 0, 5).unwrap();
        let mine = tch::Tensor::zeros([8, 3, 16, 16], (kind, tch::Device::Cpu));
        l.recycle(Batch {
            step: 0,
            pixels: Vec::new(),
            labels: Vec::new(),
            indices: Vec::new(),
            size: 16,
            images: Some(Images(mine.shallow_clone())),
        });
        let mut reused_at = None;
        for step in 0..5 {
            let b = l.try_next().unwrap().unwrap();
            let images = b
                .images
                .as_ref()
                .expect("prepared images")
                .0
                .shallow_clone();
            let plain = Batch {
                images: None,
                ..b.clone()
            };
            let want = plain.to_tensor(tch::Device::Cpu, kind);
            assert!(
                images.equal(&want),
                "{kind:?} step {step}: differs from to_tensor"
            );
            let handed = b.to_tensor(tch::Device::Cpu, kind);
            assert_eq!(handed.data_ptr(), images.data_ptr(), "to_tensor copied");
            if images.data_ptr() == mine.data_ptr() {
                reused_at.get_or_insert(step);
            }
        }
        assert!(
            reused_at.is_some_and(|s| s <= 2),
            "{kind:?}: the recycled buffer was not reused by batch 0, 1 or 2 ({reused_at:?})"
        );
    }
}

#[test]
fn to_tensor_normalises_one_pixel() {
    // One 2×2 image; pixel (y=1, x=0) is (255, 0, 128).
    let mut pixels = vec![0u8; 12];
    pixels[6..9].copy_from_slice(&[255, 0, 128]);
    let b = Batch {
        step: 0,
        pixels,
        labels: vec![3],
        indices: vec![0],
        size: 2,
        images: None,
    };
    let x = b.to_tensor(tch::Device::Cpu, tch::Kind::Float);
    assert_eq!(x.size(), [1, 3, 2, 2]);
    // (v / 255 − mean) / std with ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225):
    //   R: (1 − 0.485) / 0.229 = 2.2489083
    //   G: (0 − 0.456) / 0.224 = −2.0357143
    //   B: (128/255 − 0.406) / 0.225 = (0.5019608 − 0.406) / 0.225 = 0.4264924
    for (c, want) in [(0, 2.2489083), (1, -2.0357143), (2, 0.4264924)] {
        let got = x.double_value(&[0, c, 1, 0]);
        assert!((got - want).abs() < 1e-6, "channel {c}: {got} vs {want}");
    }
    // A zero pixel elsewhere: R = −0.485 / 0.229 = −2.1179039.
    assert!((x.double_value(&[0, 0, 0, 1]) + 2.1179039).abs() < 1e-6);
    let xd = b.to_tensor(tch::Device::Cpu, tch::Kind::Double);
    assert!((xd.double_value(&[0, 2, 1, 0]) - 0.426_492_374_727_668_9).abs() < 1e-12);
}

#[test]
fn eval_loader_keeps_index_order() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let indices = vec![5, 3, 0, 7, 2, 29, 11];
    let mut l = Loader::eval(ds.clone(), indices.clone(), 3, 12, 14, 3);
    let mut got = Vec::new();
    let mut steps = Vec::new();
    while let Some(b) = l.try_next().unwrap() {
        steps.push(b.step);
        for (i, &idx) in b.indices.iter().enumerate() {
            let img = ds.image(idx);
            let want = resize_center_crop(img.pixels, img.height, img.width, 14, 12);
            assert_eq!(&b.pixels[i * 432..(i + 1) * 432], &want[..]);
            assert_eq!(b.labels[i], ds.label(idx) as i64);
        }
        got.extend(b.indices);
    }
    assert_eq!(steps, [0, 1, 2]);
    assert_eq!(got, indices);
}

/// Runs the Pillow oracle on `img` and returns its concatenated outputs.
fn pillow(img: &[u8], h: usize, w: usize, ops: &[String]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("in.raw"), dir.path().join("out.raw"));
    std::fs::write(&src, img).unwrap();
    let out = Command::new(PYTHON)
        .arg(ORACLE)
        .arg(&src)
        .args([h.to_string(), w.to_string()])
        .arg(&dst)
        .args(ops)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&dst).unwrap()
}

#[test]
fn augment_matches_pillow() {
    let (h, w) = (61, 83);
    let img = random_image(h, w, 5);
    let crops = [
        CropParams {
            top: 0,
            left: 0,
            height: 61,
            width: 83,
            flip: false,
        }, // downscale both
        CropParams {
            top: 7,
            left: 11,
            height: 20,
            width: 13,
            flip: true,
        }, // upscale both
        CropParams {
            top: 30,
            left: 2,
            height: 31,
            width: 80,
            flip: false,
        }, // mixed
        CropParams {
            top: 5,
            left: 40,
            height: 24,
            width: 24,
            flip: true,
        }, // identity size
        CropParams {
            top: 1,
            left: 3,
            height: 59,
            width: 17,
            flip: true,
        },
    ];
    let mut ops = Vec::new();
    let mut ours = Vec::new();
    for p in &crops {
        ops.push(format!(
            "crop:{},{},{},{},24,{}",
            p.top, p.left, p.height, p.width, p.flip as u8
        ));
        ours.extend(resized_crop(&img, h, w, p, 24));
    }
    // Random crops as the loader draws them, at a training-like size.
    let mut rng = SplitMix64::keyed(&[3]);
    for _ in 0..6 {
        let p = random_resized_crop_params(&mut rng, h, w, [0.08, 1.0], [0.75, 4.0 / 3.0]);
        ops.push(format!(
            "crop:{},{},{},{},40,{}",
            p.top, p.left, p.height, p.width, p.flip as u8
        ));
        ours.extend(resized_crop(&img, h, w, &p, 40));
    }
    for (resize, crop) in [(40, 32), (61, 50), (70, 64), (20, 24)] {
        ops.push(format!("test:{resize},{crop}"));
        ours.extend(resize_center_crop(&img, h, w, resize, crop));
    }
    let theirs = pillow(&img, h, w, &ops);
    assert_eq!(ours.len(), theirs.len());
    let max = ours
        .iter()
        .zip(&theirs)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .unwrap();
    // The crop 59×17 → 24×24 takes Pillow 13's vertical-first order (the height shrinks
    // by more than twice what the width does); with the horizontal pass first it was
    // 1 off in some bytes.
    assert_eq!(max, 0, "max abs diff {max}");
}

/// Crops that take the resampler's less common paths (oracle: tools/augment_oracle.py):
/// one-pixel-wide and one-pixel-high crops (a single tap), crops narrower than the
/// output, exact-size axes, and strong downscales whose windows are wider than the
/// specialised kernels (more than 6 taps, and more than 64), and both sides of Pillow
/// 13's pass-order rule (vertical first iff the height shrinks by more than twice the
/// width's shrink).
#[test]
fn augment_edge_cases_match_pillow() {
    let (h, w) = (61, 83);
    let img = random_image(h, w, 9);
    // (top, left, height, width, size, flip)
    let crops = [
        (4, 9, 20, 1, 24, true),
        (10, 3, 1, 30, 24, false),
        (60, 82, 1, 1, 5, true),
        (0, 0, 2, 2, 24, false),
        (5, 70, 3, 13, 40, true),
        (0, 0, 61, 83, 5, true),
        (0, 0, 61, 83, 9, false),
        (3, 1, 40, 9, 9, true),
        (0, 0, 61, 83, 61, false),
        (0, 0, 61, 83, 1, true),
        (2, 0, 50, 83, 2, false),
        (0, 0, 61, 40, 20, true), // height shrinks by 41 > 2 × 20: vertical first
        (0, 0, 61, 41, 20, false), // height shrinks by 41 < 2 × 21: horizontal first
        (1, 2, 60, 5, 3, true),   // vertical first, 41-tap vertical window
        (0, 0, 61, 20, 2, false), // vertical first, width and height both > 6 taps
        (0, 30, 61, 9, 40, true), // vertical first while the width grows
    ];
    let mut ops = Vec::new();
    let mut ours = Vec::new();
    for &(top, left, height, width, size, flip) in &crops {
        ops.push(format!(
            "crop:{top},{left},{height},{width},{size},{}",
            flip as u8
        ));
        let p = CropParams {
            top,
            left,
            height,
            width,
            flip,
        };
        ours.extend(resized_crop(&img, h, w, &p, size));
    }
    for (resize, crop) in [(7, 5), (3, 3), (83, 70)] {
        ops.push(format!("test:{resize},{crop}"));
        ours.extend(resize_center_crop(&img, h, w, resize, crop));
    }
    let theirs = pillow(&img, h, w, &ops);
    assert_eq!(ours.len(), theirs.len());
    let diffs = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
    assert_eq!(diffs, 0, "{diffs} bytes differ from Pillow");
}

#[test]
fn data_flip_false_keeps_the_same_crops_unmirrored() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let flipped = collect(&ds, options(2, 2, 0, 1), 0, 6);
    let plain = collect(
        &ds,
        TrainLoaderOptions {
            flip: false,
            ..options(2, 2, 0, 1)
        },
        0,
        6,
    );
    let mut mirrored = 0;
    for (f, p) in flipped.iter().zip(&plain) {
        assert_eq!(f.indices, p.indices);
        for (pos, &idx) in p.indices.iter().enumerate() {
            let img = ds.image(idx);
            let mut rng = SplitMix64::keyed(&[77, p.step, pos as u64]);
            let mut params = random_resized_crop_params(
                &mut rng,
                img.height,
                img.width,
                [0.3, 1.0],
                [0.75, 4.0 / 3.0],
            );
            let drew_flip = params.flip;
            params.flip = false;
            let want = resized_crop(img.pixels, img.height, img.width, &params, 16);
            let at = pos * 768..(pos + 1) * 768;
            assert_eq!(&p.pixels[at.clone()], &want[..], "no image is mirrored");
            // With flipping on, the same crop, mirrored where the draw said so.
            mirrored += drew_flip as usize;
            let row_mirror: Vec<u8> = want
                .chunks(16 * 3)
                .flat_map(|row| row.chunks(3).rev().flatten().copied().collect::<Vec<_>>())
                .collect();
            let expected = if drew_flip { &row_mirror } else { &want };
            assert_eq!(&f.pixels[at], &expected[..]);
        }
    }
    assert!(mirrored > 5, "only {mirrored} flips drawn");
}

#[test]
fn colour_jitter_and_grayscale_follow_the_crop_as_documented() {
    use dml::data::color::{apply_jitter, to_grayscale, ColorJitter};
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let jitter = ColorJitter {
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.4,
        hue: 0.1,
    };
    let opts = TrainLoaderOptions {
        color_jitter: jitter,
        grayscale_p: 0.3,
        ..options(2, 2, 0, 1)
    };
    let mut grey = 0;
    for batch in collect(&ds, opts, 0, 4) {
        for (pos, &idx) in batch.indices.iter().enumerate() {
            let img = ds.image(idx);
            let mut rng = SplitMix64::keyed(&[77, batch.step, pos as u64]);
            let p = random_resized_crop_params(
                &mut rng,
                img.height,
                img.width,
                [0.3, 1.0],
                [0.75, 4.0 / 3.0],
            );
            let mut want = resized_crop(img.pixels, img.height, img.width, &p, 16);
            apply_jitter(&mut want, &jitter.draw(&mut rng));
            if rng.next_f64() < 0.3 {
                to_grayscale(&mut want);
                grey += 1;
            }
            assert_eq!(&batch.pixels[pos * 768..(pos + 1) * 768], &want[..]);
        }
    }
    assert!(grey > 0, "no crop turned grey");
}
