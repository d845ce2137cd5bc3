//! Benchmark of `dml::eval::metrics::evaluate` (same-source kNN metrics) on the data that
//! `tools/bench_eval.py gen` writes; compare with `tools/bench_eval.py pml|faiss`.
//!
//! ```text
//! cargo run --release --example bench_eval -- /tmp/bench_eval 2 3 [cuda] [nmi]
//! ```
//! Arguments: data directory (e.npy, l.npy), threads, repeats, optional `cuda`, `nmi`.
use std::time::Instant;

use dml::eval::metrics::{evaluate, EvalOptions};
use dml::eval::npy::{read_f32_2d, read_labels};
use tch::{Device, Tensor};

fn main() -> dml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).map_or("/tmp/bench_eval", String::as_str));
    let threads: i32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let repeats: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let device = if args.iter().any(|a| a == "cuda") {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let nmi = args.iter().any(|a| a == "nmi");
    tch::set_num_threads(threads);
    let (data, [n, d]) = read_f32_2d(&dir.join("e.npy"))?;
    let labels = read_labels(&dir.join("l.npy"))?;
    let e = Tensor::from_slice(&data).view([n as i64, d as i64]);
    drop(data);
    let opts = EvalOptions {
        device,
        nmi,
        ..EvalOptions::default()
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeats {
        let t = Instant::now();
        last = Some(evaluate(&e, &labels, &e, &labels, true, &opts)?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let m = last.unwrap_or_else(|| dml::eval::metrics::Metrics(Default::default()));
    println!(
        "{{\"tool\": \"dml\", \"n\": {n}, \"d\": {d}, \"threads\": {threads}, \"device\": \"{device:?}\", \"median_s\": {:.3}, \"times_s\": {times:?}, \"peak_rss_mib\": {:.0}, \"precision_at_1\": {:.6}, \"mean_average_precision_at_r\": {:.6}}}",
        times[times.len() / 2],
        dml::device::peak_rss_mib(),
        m.get("precision_at_1").unwrap_or(f64::NAN),
        m.get("mean_average_precision_at_r").unwrap_or(f64::NAN),
    );
    Ok(())
}
