//! Gradient all-reduce speed: `mpirun -np 2 bench_allreduce [REPEATS]`.
//!
//! A ResNet-18-sized gradient set (11.69M f32 in 62 tensors, the shapes of torchvision's
//! resnet18 trainable parameters) is summed across ranks with `comm::all_reduce_grads`
//! at bucket sizes 1, 4, 25 and 100 MB, and one collective per parameter. Rank 0 prints
//! a Markdown table of median and min times (BENCHMARKS.md, "Communication").
use std::time::Instant;

use dml::comm;
use tch::{Device, Kind, Tensor};

/// torchvision resnet18's trainable parameter shapes, in state_dict order (62 tensors).
fn resnet18_shapes() -> Vec<Vec<i64>> {
    let mut s = vec![vec![64, 3, 7, 7], vec![64], vec![64]];
    let mut cin = 64;
    for (stage, cout) in [64i64, 128, 256, 512].into_iter().enumerate() {
        for block in 0..2 {
            let c_in = if block == 0 { cin } else { cout };
            s.extend([vec![cout, c_in, 3, 3], vec![cout], vec![cout]]);
            s.extend([vec![cout, cout, 3, 3], vec![cout], vec![cout]]);
            if block == 0 && stage > 0 {
                s.extend([vec![cout, c_in, 1, 1], vec![cout], vec![cout]]);
            }
        }
        cin = cout;
    }
    s.extend([vec![1000, 512], vec![1000]]);
    s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> dml::Result<()> {
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let comm = comm::init(dml::config::Backend::Auto)?;
    let params: Vec<Tensor> = resnet18_shapes()
        .iter()
        .map(|s| Tensor::zeros(&s[..], (Kind::Float, Device::Cpu)).set_requires_grad(true))
        .collect();
    for p in &params {
        p.sum(Kind::Float).backward(); // gradient of ones
    }
    let n: i64 = params.iter().map(|p| p.numel() as i64).sum();
    let rows: [(&str, Option<usize>); 5] = [
        ("1 MB", Some(1 << 20)),
        ("4 MB", Some(4 << 20)),
        ("25 MB", Some(25 << 20)),
        ("100 MB", Some(100 << 20)),
        ("per parameter", None),
    ];
    if comm.rank() == 0 {
        println!(
            "{} ranks ({}), {} tensors, {:.2}M f32 ({:.1} MB), {repeats} repeats after 2 warm-ups\n",
            comm.world(),
            comm.name(),
            params.len(),
            n as f64 / 1e6,
            n as f64 * 4.0 / 1e6
        );
        println!("| bucket | collectives | median ms | min ms | GB/s (median) |");
        println!("|---|---|---|---|---|");
    }
    for (name, bucket) in rows {
        let mut times = Vec::new();
        for i in 0..repeats + 2 {
            comm.barrier()?;
            let t = Instant::now();
            match bucket {
                Some(b) => comm::all_reduce_grads(comm.as_ref(), &params, b)?,
                None => {
                    for p in &params {
                        comm.all_reduce_sum(&mut p.grad())?;
                    }
                }
            }
            if i >= 2 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let calls = bucket.map_or(params.len(), |b| (n as usize * 4).div_ceil(b));
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut times);
        if comm.rank() == 0 {
            println!(
                "| {name} | {calls} | {med:.1} | {min:.1} | {:.2} |",
                n as f64 * 4.0 / 1e9 / (med / 1e3)
            );
        }
    }
    Ok(())
}
