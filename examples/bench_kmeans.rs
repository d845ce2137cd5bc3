//! Benchmark of the NMI/AMI clustering (`dml::eval::metrics::clustering_scores`: k-means
//! with k = number of classes on the L2-normalised embeddings, [`KMeansOptions::for_metrics`])
//! on the data that `tools/bench_eval.py gen` writes; compare with
//! `tools/bench_kmeans.py` (faiss.Kmeans(niter=20) as PML's AccuracyCalculator runs it).
//!
//! ```text
//! cargo run --release --example bench_kmeans -- /tmp/bench_eval 2 1 [cuda] [plain]
//! ```
//! Arguments: data directory (e.npy, l.npy), threads, repeats, optional `cuda`.
use std::time::Instant;

use dml::eval::cluster::{ami, nmi};
use dml::eval::kmeans::{kmeans, KMeansOptions};
use dml::eval::npy::{read_f32_2d, read_labels};
use dml::ops::try_normalize;
use tch::{Device, Tensor};

fn main() -> dml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).map_or("/tmp/bench_eval", String::as_str));
    let threads: i32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let repeats: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let device = if args.iter().any(|a| a == "cuda") {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    tch::set_num_threads(threads);
    let (data, [n, d]) = read_f32_2d(&dir.join("e.npy"))?;
    let labels = read_labels(&dir.join("l.npy"))?;
    let e = Tensor::from_slice(&data).view([n as i64, d as i64]);
    drop(data);
    let mut classes = labels.clone();
    classes.sort_unstable();
    classes.dedup();
    let k = classes.len();
    let opts = KMeansOptions::for_metrics(k, 0);
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeats {
        let t = Instant::now();
        let x = try_normalize(&e.to_device(device))?;
        last = Some(kmeans(&x, k, &opts)?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let (nmi_v, ami_v, inertia) = last.map_or((f64::NAN, f64::NAN, f64::NAN), |c| {
        (
            nmi(&labels, &c.assignment),
            ami(&labels, &c.assignment),
            c.inertia,
        )
    });
    println!(
        "{{\"tool\": \"dml\", \"n\": {n}, \"d\": {d}, \"k\": {k}, \"threads\": {threads}, \"device\": \"{device:?}\", \"init\": \"{:?}\", \"restarts\": {}, \"median_s\": {:.3}, \"times_s\": {times:?}, \"inertia\": {inertia:.3}, \"NMI\": {nmi_v:.6}, \"AMI\": {ami_v:.6}}}",
        opts.init,
        opts.restarts,
        times[times.len() / 2],
    );
    Ok(())
}
