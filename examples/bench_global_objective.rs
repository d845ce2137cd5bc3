//! The price of the global objective: `mpirun -np 2 bench_global_objective [REPEATS]`.
//!
//! For global batches B = 512, 2048 and 8192 (N×K labels, K = 4, 128-d L2-normalised
//! embeddings, f32, CPU), each rank holds B/W rows and runs batch-hard triplet loss
//! forward + backward either
//! * **global** (what dml does): all-gather the detached rows, loss on all B rows, take
//!   this rank's rows of dL/dE and back-propagate them into the local rows; or
//! * **per rank** (open-metric-learning, PML's "efficient" mode): loss on the local B/W
//!   rows only — cheaper, but it mines within a rank's slice, not the global batch.
//!
//! Rank 0 prints a Markdown table: medians over REPEATS (default 5) of each, the
//! all-gather alone, and the ratio (BENCHMARKS.md, "Communication").
use std::time::Instant;

use dml::loss::{Distance, MetricLoss, TripletLoss, TripletMiner};
use tch::{Kind, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> dml::Result<()> {
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let comm = dml::dist::init(dml::config::Backend::Auto)?;
    let (rank, world) = (comm.rank() as i64, comm.world() as i64);
    let loss = TripletLoss::new(0.2, false, TripletMiner::BatchHard, Distance::Euclidean);
    if rank == 0 {
        println!("| global batch B | per rank | all-gather ms | global objective ms | per-rank objective ms | global / per-rank |");
        println!("|---|---|---|---|---|---|");
    }
    for b in [512i64, 2048, 8192] {
        let rows = b / world;
        tch::manual_seed(rank);
        let local = Tensor::randn([rows, 128], (Kind::Float, tch::Device::Cpu));
        let labels: Vec<i64> = (rank * rows..(rank + 1) * rows).map(|i| i / 4).collect();
        let labels = Tensor::from_slice(&labels);
        let (mut gather, mut global, mut per_rank) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats + 1 {
            comm.barrier()?;
            let t = Instant::now();
            let e = local.set_requires_grad(true);
            let g = comm.all_gather(&e.detach())?;
            let gl = comm.all_gather(&labels)?;
            let t_gather = t.elapsed().as_secs_f64();
            let g = g.set_requires_grad(true);
            let out = loss.compute(&g, &gl)?;
            let grad = Tensor::run_backward(&[&out.loss], &[&g], false, false);
            (&e * grad[0].narrow(0, rank * rows, rows))
                .sum(Kind::Float)
                .backward();
            let t_global = t.elapsed().as_secs_f64();
            comm.barrier()?;
            let t = Instant::now();
            let e = local.set_requires_grad(true);
            loss.compute(&e, &labels)?.loss.backward();
            let t_local = t.elapsed().as_secs_f64();
            gather.push(t_gather * 1e3);
            global.push(t_global * 1e3);
            per_rank.push(t_local * 1e3);
        }
        // Drop the warm-up.
        let (g, gl, pr) = (
            median(gather[1..].to_vec()),
            median(global[1..].to_vec()),
            median(per_rank[1..].to_vec()),
        );
        if rank == 0 {
            println!(
                "| {b} | {rows} | {g:.1} | {gl:.1} | {pr:.1} | {:.2} |",
                gl / pr
            );
        }
    }
    comm.barrier()?;
    Ok(())
}
