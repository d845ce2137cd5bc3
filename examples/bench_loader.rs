//! Loader throughput per worker thread: 224×224 random resized crop + flip from a
//! synth-like `.dmlds` (stored shorter side 256), u8 out.
//!
//! ```text
//! cargo run --release --example bench_loader -- [DIR] [IMAGES]
//! ```
//! Writes `DIR/bench.dmlds` (default `tmp/bench_loader`, 512 images) if it is missing,
//! then reports the median of 3 runs of (a) the augmentation alone on one thread and
//! (b) the training `Loader` with one worker (sampler + augmentation + channel), per CPU
//! second of the whole process and per CPU second of the worker alone.
//! `tools/bench_loader.py DIR` runs torchvision on the same images saved as JPEG.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dml::data::augment::{random_resized_crop_params, resized_crop_into};
use dml::data::format::{Dataset, DatasetWriter, Metadata};
use dml::data::loader::{Loader, TrainLoaderOptions};
use dml::data::sampler::Sampler;
use dml::rng::SplitMix64;

const SIZE: usize = 224;
const SCALE: [f64; 2] = [0.16, 1.0];
const RATIO: [f64; 2] = [0.75, 4.0 / 3.0];

/// Smooth colour gradients with a little noise, shorter side 256, longer 256..384.
fn write_dataset(path: &Path, count: usize) -> dml::Result<()> {
    let mut w = DatasetWriter::create(path)?;
    for i in 0..count {
        let mut rng = SplitMix64::keyed(&[i as u64]);
        let long = 256 + rng.below(129);
        let (h, wd) = if i % 2 == 0 { (256, long) } else { (long, 256) };
        let (a, b) = (rng.below(7) + 1, rng.below(5) + 1);
        let mut px = vec![0u8; h * wd * 3];
        for (j, p) in px.iter_mut().enumerate() {
            let (y, x, c) = ((j / 3) / wd, (j / 3) % wd, j % 3);
            *p = ((y * a + x * b + c * 85 + rng.below(16)) % 256) as u8;
        }
        w.push(&px, h as u32, wd as u32, (i % 32) as u32)?;
    }
    w.finish(Metadata {
        class_names: (0..32).map(|c| format!("class{c:02}")).collect(),
        preprocessing: "synthetic gradients, shorter side 256".into(),
        ..Default::default()
    })
}

/// CPU time of the calling thread in seconds (Linux schedstat, nanoseconds), so that
/// the per-core figure does not depend on other load on the machine.
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s: String| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns * 1e-9)
}

/// CPU time (user + system) of the whole process in seconds, at clock-tick precision.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state field.
    match f.len() > 12 {
        true => (f[10] + f[11]) / 100.0,
        false => f64::NAN,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> dml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("tmp/bench_loader", |s| s.as_str()));
    let count: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(512);
    std::fs::create_dir_all(&dir).map_err(|e| dml::Error::io(&dir, e))?;
    let path = dir.join("bench.dmlds");
    if !path.exists() {
        write_dataset(&path, count)?;
    }
    let ds = Arc::new(Dataset::open(&path)?);
    let n = ds.len();
    // Touch every page once so that the page cache is warm for every run.
    let warm: u64 = (0..n).map(|i| ds.image(i).pixels[0] as u64).sum();
    println!(
        "dataset: {} ({n} images, checksum byte sum {warm})",
        path.display()
    );

    let (mut augment, mut augment_cpu): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut out = vec![0u8; SIZE * SIZE * 3];
    for run in 0..3u64 {
        let images = 2 * n;
        let (t, c) = (Instant::now(), thread_cpu());
        for i in 0..images {
            let img = ds.image(i % n);
            let mut rng = SplitMix64::keyed(&[run, i as u64]);
            let p = random_resized_crop_params(&mut rng, img.height, img.width, SCALE, RATIO);
            resized_crop_into(img.pixels, img.height, img.width, &p, SIZE, &mut out);
        }
        augment.push(images as f64 / t.elapsed().as_secs_f64());
        augment_cpu.push(images as f64 / (thread_cpu() - c));
    }
    println!(
        "augment, 1 thread:     {:>6.0} img/s wall, {:>6.0} img/s per CPU-second (median of 3)",
        median(augment),
        median(augment_cpu.clone())
    );

    // The record CRC-32 that the loaders check on every read (`Dataset::checked_image`).
    let mut crc_cpu = Vec::new();
    for _ in 0..3 {
        let images = 2 * n;
        let c = thread_cpu();
        let mut ok = 0usize;
        for i in 0..images {
            ok += ds.checked_image(i % n).is_ok() as usize;
        }
        assert_eq!(ok, images, "a record failed its CRC-32");
        crc_cpu.push(images as f64 / (thread_cpu() - c));
    }
    let crc = median(crc_cpu.clone());
    println!(
        "record CRC-32, 1 thread: {crc:>6.0} img/s per CPU-second (median of 3): {:.1} % of the augmentation's CPU time",
        100.0 * median(augment_cpu.clone()) / crc
    );

    let (mut loader, mut loader_cpu, mut worker_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..3u64 {
        let sampler = Sampler::new(ds.labels(), 16, 4, run)?;
        // Four passes over the images: at clock-tick precision (10 ms) the process's CPU
        // time is then good to about 1 %.
        let steps = (4 * n / 64) as u64;
        let opts = TrainLoaderOptions {
            image_size: SIZE,
            crop_scale: SCALE,
            crop_ratio: RATIO,
            workers: 1,
            prefetch: 2,
            seed: run,
            rank: 0,
            world: 1,
            prepare: None,
            flip: true,
            color_jitter: Default::default(),
            grayscale_p: 0.0,
        };
        let (t, c, main) = (Instant::now(), process_cpu(), thread_cpu());
        let mut l = Loader::train(ds.clone(), sampler, opts, 0, steps)?;
        let mut images = 0;
        while let Some(b) = l.try_next()? {
            images += b.len();
        }
        drop(l);
        loader.push(images as f64 / t.elapsed().as_secs_f64());
        let (all, consumer) = (process_cpu() - c, thread_cpu() - main);
        loader_cpu.push(images as f64 / all);
        // The worker has exited (joined by the drop); its time stays in the process's.
        worker_cpu.push(images as f64 / (all - consumer));
    }
    println!(
        "TrainLoader, 1 worker: {:>6.0} img/s wall, {:>6.0} img/s per CPU-second (median of 3)",
        median(loader),
        median(loader_cpu)
    );
    println!(
        "TrainLoader, 1 worker: {:>6.0} img/s per worker CPU-second, the consumer thread \
         excluded, as tools/bench_loader.py counts torchvision's worker (median of 3)",
        median(worker_cpu)
    );
    Ok(())
}
