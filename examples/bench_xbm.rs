//! dml side of the cross-batch memory benchmark (PML side: tools/bench_xbm.py; both run
//! by tools/bench_xbm.sh).
//!
//! ```text
//! target/release/examples/bench_xbm LOSS SIZE [B] [D] [THREADS] [STEPS]
//! ```
//! Fills a memory of SIZE rows with random f32 batches of B rows (labels: 4 images per
//! class, class ids drawn from SIZE / 4 classes, as SOP's 55,000-row memory holds about
//! 11,000 products), then times STEPS steps of what the memory adds to a training step:
//! enqueue the batch, the memory loss of its B anchors against the SIZE rows (LOSS:
//! ms_miner, triplet_batch_hard or margin_dnc: D&C's sampler), and its backward. Prints one JSON line with every
//! step's seconds, the median and the process's peak RSS (VmHWM).
use std::time::Instant;

use dml::config::XbmConfig;
use dml::loss::xbm::CrossBatchMemory;
use dml::loss::{
    Distance, MarginLoss, MetricLoss, MultiSimilarityLoss, Shard, TripletLoss, TripletMiner,
};
use tch::{Kind, Tensor};

fn make(name: &str) -> Box<dyn MetricLoss> {
    match name {
        "ms_miner" => Box::new(MultiSimilarityLoss::new(2.0, 40.0, 0.5, Some(0.1))),
        "triplet_batch_hard" => Box::new(TripletLoss::new(
            0.2,
            false,
            TripletMiner::BatchHard,
            Distance::Euclidean,
        )),
        "margin_dnc" => Box::new(MarginLoss::new(0.2, 1.2, 0.5)),
        other => panic!("unknown loss {other} (ms_miner, triplet_batch_hard, margin_dnc)"),
    }
}

/// A batch of `b` random rows, 4 per class, classes drawn from `classes`.
fn batch(b: i64, d: i64, classes: i64) -> (Tensor, Tensor) {
    let opts = (Kind::Int64, tch::Device::Cpu);
    let ids = Tensor::randint(classes, [b / 4], opts);
    let labels = ids.repeat_interleave_self_int(4, 0, None::<i64>);
    (
        Tensor::randn([b, d], (Kind::Float, tch::Device::Cpu)),
        labels,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: i64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let name = args.get(1).map(String::as_str).unwrap_or("ms_miner");
    let size = arg(2, 55_000);
    let b = arg(3, 64);
    let d = arg(4, 512);
    let threads = arg(5, 2);
    let steps = arg(6, 10).max(1) as usize;
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let loss = make(name);
    let classes = (size / 4).max(2);
    let mut memory = CrossBatchMemory::new(&XbmConfig {
        size: size as usize,
        ..Default::default()
    });
    while memory.len() < size {
        let (e, l) = batch(b, d, classes);
        let _slots = memory.enqueue(&[e], &l).expect("enqueue");
    }
    let mut times = Vec::new();
    for _ in 0..steps {
        let (e, l) = batch(b, d, classes);
        let emb = e.set_requires_grad(true);
        let t = Instant::now();
        let own = memory.enqueue(&[emb.detach()], &l).expect("enqueue");
        let view = memory.view(0, &own, None).expect("view");
        let out = loss
            .compute_memory_shard(&emb, &l, &view, &Shard::whole(b))
            .expect("memory loss");
        out.loss.backward();
        times.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{{\"impl\": \"dml\", \"loss\": \"{name}\", \"size\": {size}, \"B\": {b}, \"D\": {d}, \"threads\": {threads}, \"times_s\": {times:?}, \"median_s\": {}, \"peak_rss_mb\": {:.1}}}",
        sorted[sorted.len() / 2],
        dml::device::peak_rss_mib()
    );
}
