//! The `dml` command line: synth, prepare, info, train, eval, embed, lr-find, plot,
//! reality-check.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use dml::comm::{self, Comm};
use dml::config::{Backend, Config};
use dml::data::Dataset;
use dml::embed::companion_files;
use dml::eval::metrics::Metrics;
use dml::eval::run::{embed_to_file, eval_files, evaluate_model, load_run, LoadedRun};
use dml::train::RunEnd;

#[derive(Parser)]
#[command(
    name = "dml",
    version,
    about = "Deep metric learning on one GPU, many GPUs and many nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a learnable synthetic dataset: DIR/train.dmlds and DIR/test.dmlds.
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        classes: usize,
        #[arg(long, default_value_t = 40)]
        per_class: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Convert an image dataset into memory-mapped .dmlds files with its standard splits.
    Prepare {
        /// imagefolder, csv, cub200, cars196, sop or inshop.
        #[arg(long)]
        format: String,
        #[arg(long)]
        src: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Shorter side of the stored images.
        #[arg(long, default_value_t = 256)]
        size: u32,
    },
    /// Describe a .dmlds file; --verify also checks its checksum.
    Info {
        file: PathBuf,
        #[arg(long)]
        verify: bool,
    },
    /// Train (under mpirun: one rank per process).
    Train {
        #[arg(long, required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Continue the run in this directory from its newest checkpoint.
        #[arg(long, conflicts_with_all = ["config", "out"])]
        resume: Option<PathBuf>,
        /// Override a config key: --set section.key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long, required_unless_present = "resume")]
        out: Option<PathBuf>,
        /// With --config and --out: if the run directory already holds a checkpoint,
        /// continue it as --resume would (for requeued cluster jobs).
        #[arg(long, conflicts_with = "resume")]
        resume_if_exists: bool,
    },
    /// Retrieval metrics of a run (on its own test split, or on --data), or of saved
    /// embeddings.
    Eval {
        /// A run directory (its final model), RUN/best or RUN/checkpoints/step-N.
        run: Option<PathBuf>,
        /// Evaluate on this file instead of the run's data.test (and data.gallery).
        #[arg(long, requires = "run")]
        data: Option<PathBuf>,
        /// Gallery file for query/gallery protocols (In-Shop); --data is then the query.
        #[arg(long, requires = "data")]
        gallery: Option<PathBuf>,
        #[arg(long, conflicts_with = "run", requires = "labels")]
        embeddings: Option<PathBuf>,
        #[arg(long)]
        labels: Option<PathBuf>,
        #[arg(long, requires = "query_labels")]
        query_embeddings: Option<PathBuf>,
        #[arg(long)]
        query_labels: Option<PathBuf>,
        /// Print one JSON object with PML's metric names.
        #[arg(long)]
        json: bool,
        /// Draw queries with their top retrievals (green: correct, red: wrong) into a PNG.
        #[arg(long, requires = "run")]
        grid: Option<PathBuf>,
    },
    /// LR range test: a linear ramp of the learning rate; writes DIR/lr_find.png and
    /// DIR/lr_find.jsonl and prints the suggested optim.lr and lr.max_lr.
    LrFind {
        #[command(flatten)]
        run: ConfigArgs,
        #[arg(long, default_value_t = 1e-6)]
        start: f64,
        #[arg(long, default_value_t = 1e-1)]
        end: f64,
        #[arg(long, default_value_t = 100)]
        steps: usize,
    },
    /// Draw a run's loss, learning rate, mining statistics and validation metrics into
    /// RUN/plots/*.png.
    Plot { run: PathBuf },
    /// "A Metric Learning Reality Check" protocol: one model per fold of the training
    /// classes, test metrics per fold and concatenated (OUT/reality_check.md, .json).
    RealityCheck {
        #[command(flatten)]
        run: ConfigArgs,
    },
    /// Write a run's embeddings of a dataset file to E.npy (labels beside it).
    Embed {
        /// A run directory (its final model), RUN/best or RUN/checkpoints/step-N.
        run: PathBuf,
        /// The dataset file; default: the run's data.test.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

/// `--config FILE [--set KEY=VALUE]... --out DIR`, shared by the commands that start
/// from a config.
#[derive(clap::Args)]
struct ConfigArgs {
    #[arg(long)]
    config: PathBuf,
    /// Override a config key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[arg(long)]
    out: PathBuf,
}

impl ConfigArgs {
    /// The config file with the overrides applied.
    fn load(&self) -> Result<Config> {
        Ok(Config::load(&self.config, &self.set)?)
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.cmd) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs `f` with a communicator; an error on any rank aborts every rank (no hang).
fn with_comm(backend: Backend, f: impl FnOnce(&dyn Comm) -> Result<()>) -> Result<()> {
    let comm = comm::init(backend)?;
    if let Err(e) = f(comm.as_ref()) {
        if comm.world() > 1 {
            eprintln!("error on rank {} of {}: {e:#}", comm.rank(), comm.world());
            comm.abort(1);
        }
        return Err(e);
    }
    Ok(())
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Synth {
            out,
            classes,
            per_class,
            size,
            seed,
        } => {
            dml::data::synth::generate(&out, classes, per_class, size, seed)?;
            eprintln!(
                "wrote {}/train.dmlds and {}/test.dmlds",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Cmd::Prepare {
            format,
            src,
            out,
            size,
        } => {
            let format = format.parse()?;
            let report = dml::data::prepare::prepare(format, &src, &out, size)?;
            eprintln!("{report}");
            Ok(())
        }
        Cmd::Info { file, verify } => {
            let ds = Dataset::open(&file)?;
            println!("{}", dml::data::format::info_report(&ds));
            if verify {
                ds.verify()?;
                println!("checksum OK");
            }
            Ok(())
        }
        Cmd::Train {
            config,
            resume,
            set,
            out,
            resume_if_exists,
        } => {
            let resume = match (resume, &out) {
                (None, Some(o))
                    if resume_if_exists && !dml::train::checkpoint::list(o)?.is_empty() =>
                {
                    Some(o.clone())
                }
                (r, _) => r,
            };
            let (cfg, run, resuming) = match (resume, config, out) {
                (Some(run), _, _) => (Config::load(&run.join("config.toml"), &set)?, run, true),
                (None, Some(c), Some(o)) => (Config::load(&c, &set)?, o, false),
                _ => bail!("give --config FILE --out RUN, or --resume RUN"),
            };
            let mut stopped = false;
            with_comm(cfg.dist.backend, |comm| {
                let threads = dml::device::set_threads(cfg.train.threads, comm.local_world());
                if comm.rank() == 0 {
                    eprintln!(
                        "dml: {} rank(s), {} on this node; {} intra-op thread(s) per rank ({})",
                        comm.world(),
                        comm.local_world(),
                        threads.threads,
                        threads.reason
                    );
                }
                dml::sys::install_stop_handlers().map_err(anyhow::Error::msg)?;
                match dml::train::run(&cfg, comm, &run, resuming)? {
                    RunEnd::Finished(steps) if comm.rank() == 0 => eprintln!(
                        "trained {steps} steps; model in {}",
                        run.join("model.safetensors").display()
                    ),
                    RunEnd::Stopped { step, signal } => {
                        if comm.rank() == 0 {
                            eprintln!(
                                "stopped by {signal} after step {step}; checkpoint {}; \
                                 continue with: dml train --resume {} (exit status {})",
                                dml::train::checkpoint::dir_for(&run, step).display(),
                                run.display(),
                                dml::train::EXIT_STOPPED
                            );
                        }
                        stopped = true;
                    }
                    RunEnd::Finished(_) => {}
                }
                Ok(())
            })?;
            if stopped {
                std::process::exit(dml::train::EXIT_STOPPED);
            }
            Ok(())
        }
        Cmd::Eval {
            run,
            data,
            gallery,
            embeddings,
            labels,
            query_embeddings,
            query_labels,
            json,
            grid,
        } => {
            let metrics = match (run, data, embeddings, labels) {
                (Some(run), data, None, _) => {
                    let mut result = None;
                    with_comm(Backend::Auto, |comm| {
                        let LoadedRun {
                            cfg, model, opts, ..
                        } = load_run_told(comm, &run)?;
                        let (query, gallery) =
                            eval_files(&cfg, data.as_deref(), gallery.as_deref())?;
                        if comm.rank() == 0 {
                            match &gallery {
                                None => eprintln!("data: {}", query.display()),
                                Some(g) => eprintln!(
                                    "data: queries {}, gallery {}",
                                    query.display(),
                                    g.display()
                                ),
                            }
                        }
                        result = evaluate_model(
                            &model,
                            opts,
                            comm,
                            &query,
                            gallery.as_deref(),
                            grid.as_deref(),
                        )?;
                        if let (Some(g), 0) = (&grid, comm.rank()) {
                            eprintln!("wrote {}", g.display());
                        }
                        Ok(())
                    })?;
                    result
                }
                (None, None, Some(e), Some(l)) => {
                    Some(dml::eval::evaluate_npy(&dml::eval::NpyEvalArgs {
                        embeddings: e,
                        labels: l,
                        query_embeddings,
                        query_labels,
                    })?)
                }
                _ => bail!("give RUN [--data FILE], or --embeddings E.npy --labels L.npy"),
            };
            if let Some(m) = metrics {
                print_metrics(&m, json);
            }
            Ok(())
        }
        Cmd::LrFind {
            run,
            start,
            end,
            steps,
        } => {
            let (cfg, out) = (run.load()?, run.out);
            with_comm(cfg.dist.backend, |comm| {
                dml::device::set_threads(cfg.train.threads, comm.local_world());
                let ramp = dml::train::lr_find::LrRamp { start, end, steps };
                let r = dml::train::lr_find::lr_find(&cfg, comm, ramp)?;
                if comm.rank() == 0 {
                    let png = r.write(&out)?;
                    eprintln!("wrote {} and lr_find.jsonl", png.display());
                    if r.low_spread_steps > 0 {
                        println!(
                            "{} of {} steps left out of the suggestion: their embedding spread was below {:.0}% of its peak (collapsing)",
                            r.low_spread_steps,
                            r.points.len(),
                            100.0 * dml::train::lr_find::SPREAD_KEPT
                        );
                    }
                    if let Some(lr) = r.collapsed_at {
                        println!("the embedding collapsed at lr {lr:.3e}: the ramp ended there");
                    }
                    println!(
                        "suggested: optim.lr = {:.3e}  lr.max_lr = {:.3e}",
                        r.base, r.max
                    );
                }
                Ok(())
            })
        }
        Cmd::Plot { run } => {
            for p in dml::plot::plot_run(&run)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::RealityCheck { run } => {
            let (cfg, out) = (run.load()?, run.out);
            with_comm(cfg.dist.backend, |comm| {
                dml::device::set_threads(cfg.train.threads, comm.local_world());
                let report = dml::train::reality_check::run(&cfg, comm, &out)?;
                if comm.rank() == 0 {
                    println!("{}", dml::train::reality_check::markdown(&report));
                }
                Ok(())
            })
        }
        Cmd::Embed { run, data, out } => with_comm(Backend::Auto, |comm| {
            let LoadedRun {
                cfg, model, opts, ..
            } = load_run_told(comm, &run)?;
            let (data, _) = eval_files(&cfg, data.as_deref(), None)?;
            let [rows, dims] = embed_to_file(&model, opts, comm, &data, &out)?;
            if comm.rank() == 0 {
                let [l, p, c] = companion_files(&out);
                eprintln!(
                    "wrote {} ({rows} × {dims} embeddings of {}), {}, {}, {}",
                    out.display(),
                    data.display(),
                    l.display(),
                    p.display(),
                    c.display()
                );
            }
            Ok(())
        }),
    }
}

fn print_metrics(m: &Metrics, json: bool) {
    if json {
        println!("{}", m.to_json());
    } else {
        println!("{}", m.table());
    }
}

/// [`load_run`], rank 0 saying which weights it loaded.
fn load_run_told(comm: &dyn Comm, path: &Path) -> Result<LoadedRun> {
    let run = load_run(comm, path)?;
    if comm.rank() == 0 {
        eprintln!(
            "weights: {} ({})",
            run.weights.weights.display(),
            run.weights.what
        );
    }
    Ok(run)
}
