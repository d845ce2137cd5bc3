//! The sharded objective alone, forward and backward to the gathered embeddings:
//!
//! ```text
//! mpirun -np W target/release/examples/bench_objective --batch B --dim D --loss L --miner M \
//!     [--precision f32|f64] [--steps S] [--classes C] [--distill absolute|relative] \
//!     [--set section.key=value]... [--dump FILE.safetensors]
//! ```
//!
//! Every rank makes the same global batch: random L2-normalised embeddings `[B, D]` from a
//! fixed seed (identical for every W), labels in groups of 4 (`i / 4`); with `--classes C`
//! also classifier logits `E·P` (`P` `[D, C]` random, the labels taken mod C: the cross-entropy term,
//! and Group Loss's priors), with `--distill` a random teacher `[B, D]`. Each step every
//! rank computes its share of the objective ([`dml::loss::Objective::compute_shard`],
//! the anchors of rows `rank·B/W ..`), back-propagates it into the embeddings and sums the
//! partial gradients across ranks (what `train::step` does), after one warm-up step.
//!
//! Rank 0 prints one JSON line: `world`, `batch`, `dim`, `loss_name`, `miner`,
//! `objective_s` (median over steps of the slowest rank's seconds), `loss` (the first
//! step's global loss) and `grad_sum` (Σ |dL/dE| over all B rows at the first step).
//! `--dump` writes the first step's loss and full gradient `[B, D]` (rank 0), which
//! `tests/sharded_objective.rs` compares across world sizes.
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dml::config::Config;
use dml::loss::{Objective, Shard};
use dml::model::HeadOutput;
use tch::{Device, Kind, Tensor};

struct Args {
    batch: i64,
    dim: i64,
    loss: String,
    miner: String,
    precision: String,
    steps: usize,
    classes: i64,
    distill: Option<String>,
    sets: Vec<String>,
    dump: Option<String>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        batch: 4096,
        dim: 128,
        loss: "multi_similarity".into(),
        miner: "multi_similarity".into(),
        precision: "f32".into(),
        steps: 5,
        classes: 0,
        distill: None,
        sets: Vec::new(),
        dump: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--batch" => a.batch = value()?.parse().context("--batch")?,
            "--dim" => a.dim = value()?.parse().context("--dim")?,
            "--loss" => a.loss = value()?,
            "--miner" => a.miner = value()?,
            "--precision" => a.precision = value()?,
            "--steps" => a.steps = value()?.parse().context("--steps")?,
            "--classes" => a.classes = value()?.parse().context("--classes")?,
            "--distill" => a.distill = Some(value()?),
            "--set" => a.sets.push(value()?),
            "--dump" => a.dump = Some(value()?),
            other => bail!(
                "unknown argument {other} (see the doc comment of examples/bench_objective.rs)"
            ),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The same pseudo-random `[rows, cols]` on every rank and for every world size.
fn randn(rows: i64, cols: i64, seed: i64, kind: Kind) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([rows, cols], (Kind::Double, Device::Cpu)).to_kind(kind)
}

fn main() -> Result<()> {
    let a = parse()?;
    let comm = dml::comm::init(dml::config::Backend::Auto)?;
    let (rank, world) = (comm.rank() as i64, comm.world() as i64);
    if a.batch % world != 0 {
        bail!("--batch {} is not divisible by the {world} ranks", a.batch);
    }
    let kind = match a.precision.as_str() {
        "f32" => Kind::Float,
        "f64" => Kind::Double,
        p => bail!("--precision {p}: use f32 or f64"),
    };
    let mut sets = vec![
        format!("loss.name={}", a.loss),
        format!("miner.name={}", a.miner),
    ];
    if let Some(d) = &a.distill {
        sets.push("distill.teacher=bench".into());
        sets.push(format!("distill.kind={d}"));
    }
    sets.extend(a.sets.iter().cloned());
    let cfg = Config::parse("", &sets)?;
    let objective = Objective::build(&cfg)?;
    let rows = a.batch / world;
    let emb = dml::ops::normalize(&randn(a.batch, a.dim, 7, kind));
    let groups: Vec<i64> = (0..a.batch).map(|i| i / 4).collect();
    let labels = match a.classes > 0 {
        true => Tensor::from_slice(&groups.iter().map(|g| g % a.classes).collect::<Vec<_>>()),
        false => Tensor::from_slice(&groups),
    };
    let proj = (a.classes > 0).then(|| randn(a.dim, a.classes, 8, kind));
    let teacher = a.distill.as_ref().map(|_| randn(a.batch, a.dim, 9, kind));
    let sum = |v: &mut [f64]| dml::comm::sum_f64s(comm.as_ref(), v);
    let shard = Shard::new(rank * rows, rows, rank == 0, &sum);
    let mut times = Vec::new();
    let mut first: Option<(f64, Tensor)> = None;
    for step in 0..=a.steps {
        comm.barrier()?;
        let t = Instant::now();
        let e = emb.detach().set_requires_grad(true);
        let out = HeadOutput {
            embeddings: vec![e.shallow_clone()],
            logits: proj.iter().map(|p| e.matmul(p)).collect(),
            test: e.shallow_clone(),
        };
        let o = objective.compute_shard(&out, &labels, teacher.as_ref(), &shard)?;
        if o.share.requires_grad() {
            o.share.backward();
        }
        let mut g = e.grad();
        if !g.defined() {
            g = e.zeros_like();
        }
        comm.all_reduce_sum(&mut g)?;
        let mine = Tensor::from_slice(&[t.elapsed().as_secs_f64()]);
        let slowest = comm.all_gather(&mine)?.max().double_value(&[]);
        if step == 0 {
            first = Some((o.value, g));
        } else {
            times.push(slowest);
        }
    }
    let (loss, grad) = first.context("no step ran")?;
    if rank == 0 {
        let grad_sum = grad.abs().sum(Kind::Double).double_value(&[]);
        let objective_s = if times.is_empty() { 0.0 } else { median(times) };
        println!(
            "{}",
            serde_json::json!({
                "world": world, "batch": a.batch, "dim": a.dim, "loss_name": a.loss,
                "miner": a.miner, "objective_s": objective_s, "loss": loss, "grad_sum": grad_sum,
            })
        );
        if let Some(path) = &a.dump {
            let l = Tensor::from_slice(&[loss]);
            Tensor::write_safetensors(&[("loss", l), ("grad", grad.to_kind(Kind::Double))], path)?;
        }
    }
    Ok(())
}
