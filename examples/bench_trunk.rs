//! Forward + backward time of a trunk on CPU, the peer of `tools/bench_trunk.py`.
//!
//! `cargo run --release --example bench_trunk -- [ARCH] [BATCH] [SIZE] [THREADS] [REPS]`
//! (defaults: resnet50 16 224 2 5). Per repetition: feature map in train mode (batch
//! statistics, every parameter trainable), `mean().backward()`, gradients zeroed; one
//! warm-up, then the median of REPS wall times is printed in ms.
use std::time::Instant;

use dml::config::{BnMode, HeadKind, ModelConfig};
use dml::model::Model;
use tch::{Device, Kind, Tensor};

fn main() -> dml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let arch = arg(1, "resnet50");
    let parse = |s: String| {
        s.parse::<i64>()
            .map_err(|e| dml::Error::Input(format!("bad number `{s}`: {e}")))
    };
    let (batch, size, threads, reps) = (
        parse(arg(2, "16"))?,
        parse(arg(3, "224"))?,
        parse(arg(4, "2"))?,
        parse(arg(5, "5"))?,
    );
    tch::set_num_threads(threads as i32);
    let cfg = ModelConfig {
        trunk: arch.clone(),
        bn: BnMode::Train,
        head: HeadKind::Pool,
        ..ModelConfig::default()
    };
    let model = Model::new(&cfg, Device::Cpu, Kind::Float, 0)?;
    tch::manual_seed(1);
    let x = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
    let mut times = Vec::new();
    for rep in 0..=reps {
        let t0 = Instant::now();
        let loss = model.feature_map(&x, true).mean(Kind::Float);
        loss.backward();
        for (_, p) in model.trainable() {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if rep > 0 {
            times.push(ms);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "dml {arch} batch {batch} size {size} threads {threads}: median {median:.1} ms of {reps} (forward+backward)"
    );
    Ok(())
}
