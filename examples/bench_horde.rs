//! Forward + backward time of the HORDE head on CPU, the peer of `tools/bench_horde.py`.
//!
//! `cargo run --release --example bench_horde -- [BATCH] [CHANNELS] [SIDE] [ORDER] [DIM] [THREADS] [REPS]`
//! (defaults: 32 2048 7 5 8192 2 5: a ResNet-50 map, the official orders and moment
//! size, 512-d embeddings). Per repetition: both halves of the head on a map that
//! requires grad, `Σ_k mean(emb_k)` backward, gradients zeroed; one warm-up, then the
//! median of REPS wall times is printed in ms.
use std::time::Instant;

use dml::config::{HeadKind, ModelConfig};
use dml::model::head::{self, Pass};
use tch::{nn, Device, Kind, Tensor};

fn main() -> dml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let defaults = ["32", "2048", "7", "5", "8192", "2", "5"];
    let mut v = Vec::new();
    for (i, d) in defaults.iter().enumerate() {
        let s = args.get(i + 1).map(String::as_str).unwrap_or(d);
        v.push(
            s.parse::<usize>()
                .map_err(|e| dml::Error::Input(format!("bad number `{s}`: {e}")))?,
        );
    }
    let (batch, channels, side, order, dim, threads, reps) =
        (v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        head: HeadKind::Horde,
        embedding_dim: 512,
        horde_order: order,
        horde_dim: dim,
        ..ModelConfig::default()
    };
    let h = head::build(&(vs.root() / "head"), &cfg, channels)?;
    let dims = [batch, channels, side, side].map(|d| d as i64);
    let x = Tensor::randn(dims, (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let pass = Pass {
        train: true,
        bn_maps: false,
        key: [0, 0],
    };
    let mut times = Vec::new();
    for rep in 0..=reps {
        let t0 = Instant::now();
        let out = h.global(&h.local(&x, pass), pass);
        let loss = out
            .embeddings
            .iter()
            .map(|e| e.mean(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        loss.backward();
        for mut p in vs.trainable_variables() {
            p.zero_grad();
        }
        let mut g = x.grad();
        let _ = g.zero_();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if rep > 0 {
            times.push(ms);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "dml horde map [{batch}, {channels}, {side}, {side}] order {order} dim {dim} threads {threads}: median {median:.1} ms of {reps} (forward+backward)"
    );
    Ok(())
}
