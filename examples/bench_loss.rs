//! dml side of the loss benchmark (PML side: tools/bench_loss.py).
//!
//! ```text
//! cargo run --release --example bench_loss -- LOSS B [D] [THREADS] [REPEATS]
//! ```
//! prints one JSON line like tools/bench_loss.py: forward + backward of loss + miner on
//! CPU, float32, N×K labels with K = 4, REPEATS runs (default 3), median, and the process's peak RSS
//! (VmHWM). LOSS: triplet_batch_hard, triplet_batch_all, triplet_semi_hard, ms_miner,
//! ms_none.
use std::time::Instant;

use dml::loss::{Distance, MetricLoss, MultiSimilarityLoss, TripletLoss, TripletMiner};
use tch::{Kind, Tensor};

fn make(name: &str) -> Box<dyn MetricLoss> {
    let t = |m| Box::new(TripletLoss::new(0.2, false, m, Distance::Euclidean));
    match name {
        "triplet_batch_hard" => t(TripletMiner::BatchHard),
        "triplet_batch_all" => t(TripletMiner::All),
        "triplet_semi_hard" => t(TripletMiner::SemiHard),
        "ms_miner" => Box::new(MultiSimilarityLoss::new(2.0, 40.0, 0.5, Some(0.1))),
        "ms_none" => Box::new(MultiSimilarityLoss::new(2.0, 40.0, 0.5, None)),
        other => panic!("unknown loss {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("triplet_batch_hard");
    let b: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(512);
    let d: i64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(512);
    let threads: i32 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2);
    let repeats: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(3);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let labels = Tensor::arange(b / 4, (Kind::Int64, tch::Device::Cpu)).repeat_interleave_self_int(
        4,
        0,
        None::<i64>,
    );
    let emb0 = Tensor::randn([b, d], (Kind::Float, tch::Device::Cpu));
    let loss = make(name);
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let emb = emb0.copy().set_requires_grad(true);
        let t = Instant::now();
        let out = loss.compute(&emb, &labels).expect("loss");
        out.loss.backward();
        times.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{{\"impl\": \"dml\", \"loss\": \"{name}\", \"B\": {b}, \"D\": {d}, \"threads\": {threads}, \"times_s\": {times:?}, \"median_s\": {}, \"peak_rss_mb\": {:.1}}}",
        sorted[sorted.len() / 2],
        dml::device::peak_rss_mib()
    );
}
