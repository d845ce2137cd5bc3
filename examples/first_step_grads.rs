//! Runs the first training step of a config and writes the all-reduced gradients (rank 0)
//! to a safetensors file: `mpirun -np W first_step_grads CONFIG OUT [key=value...]`.
//! The distributed tests compare W = 1 and W = 2 (DESIGN.md, invariant 1).
use std::path::Path;

use anyhow::{Context, Result};
use dml::config::Config;
use dml::train::{step::forward_backward, Trainer};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (cfg_path, out) = match (args.get(1), args.get(2)) {
        (Some(c), Some(o)) => (c, o),
        _ => anyhow::bail!("usage: first_step_grads CONFIG OUT.safetensors [section.key=value...]"),
    };
    let cfg = Config::load(Path::new(cfg_path), &args[3..])?;
    let comm = dml::comm::init(cfg.dist.backend)?;
    dml::device::set_threads(0, comm.local_world());
    let s = Trainer::new(&cfg, comm.as_ref())?;
    let mut loader = s.loader(s.sampler.clone(), 0, 1)?;
    let batch = loader.next().context("no batch")?;
    let images = batch.to_tensor(s.model.device(), s.model.kind());
    let labels = tch::Tensor::from_slice(&batch.labels);
    let out_step = forward_backward(&s.env(), &images, &labels, 1, None)?;
    if comm.rank() == 0 {
        let grads: Vec<(String, tch::Tensor)> = s
            .model
            .trainable()
            .iter()
            .map(|(n, t)| (n.clone(), t.grad()))
            .collect();
        tch::Tensor::write_safetensors(&grads, out)?;
        println!("loss {}", out_step.loss);
    }
    Ok(())
}
