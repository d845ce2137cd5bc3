//! Evaluating a trained run (`dml eval RUN`, `dml embed RUN`): which config and weights
//! a path names (a run directory, `RUN/best`, `RUN/checkpoints/step-N` or a weights
//! file inside one), which files it is evaluated on (the run's own test and gallery
//! splits unless others are given), and the retrieval metrics and picture.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Tensor;

use crate::comm::Comm;
use crate::config::Config;
use crate::data::Dataset;
use crate::embed::{embed_dataset, EmbedOptions};
use crate::error::{Error, Result};
use crate::eval::metrics::{evaluate, EvalOptions, Metrics};
use crate::model::Model;

/// The config and weights a path names.
#[derive(Debug, Clone, PartialEq)]
pub struct RunWeights {
    /// The run directory's `config.toml`.
    pub config: PathBuf,
    /// The weights: `model.safetensors` of the run, of `best/` or of a checkpoint.
    pub weights: PathBuf,
    /// What the weights are, for messages: `final model`, `best by MAP@R … at step N`,
    /// `checkpoint of step N`.
    pub what: String,
}

/// A run's model ready to embed: its config, the model with the weights of the path,
/// the test transform, and which weights those are.
pub struct LoadedRun {
    /// The run's config.
    pub cfg: Config,
    /// The model on this rank's device.
    pub model: Model,
    /// The run's test transform and evaluation batch.
    pub opts: EmbedOptions,
    /// Where the weights came from.
    pub weights: RunWeights,
}

/// The model a run path names (a run, `RUN/best`, `RUN/checkpoints/step-N`, see
/// [`RunWeights::locate`]), with the run's config and test transform, with
/// `train.threads` applied to this process.
///
/// ```no_run
/// # fn demo(comm: &dyn dml::comm::Comm) -> dml::Result<()> {
/// let run = dml::eval::run::load_run(comm, "runs/quick/best".as_ref())?;
/// println!("{} ({})", run.weights.weights.display(), run.weights.what);
/// # Ok(()) }
/// ```
pub fn load_run(comm: &dyn Comm, path: &Path) -> Result<LoadedRun> {
    let weights = RunWeights::locate(path)?;
    let cfg = weights.load_config()?;
    crate::device::set_threads(cfg.train.threads, comm.local_world());
    let model = weights.load_model(&cfg, comm)?;
    let opts = EmbedOptions::from_config(&cfg);
    Ok(LoadedRun {
        cfg,
        model,
        opts,
        weights,
    })
}

impl RunWeights {
    /// Finds the config and weights of `path`: a run directory (its final
    /// `model.safetensors`), `RUN/best`, `RUN/checkpoints/step-N`, or a `.safetensors`
    /// file in one of them. A run without a final model is an error that lists the
    /// weights it has.
    ///
    /// ```no_run
    /// let w = dml::eval::run::RunWeights::locate("runs/quick/best".as_ref())?;
    /// assert!(w.config.ends_with("runs/quick/config.toml"));
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn locate(path: &Path) -> Result<RunWeights> {
        if !path.exists() {
            return Err(Error::Input(format!(
                "{} does not exist: give a run directory (dml train --out), RUN/best or \
                 RUN/checkpoints/step-N",
                path.display()
            )));
        }
        let (dir, weights) = if path.is_dir() {
            (path.to_path_buf(), path.join("model.safetensors"))
        } else {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (dir, path.to_path_buf())
        };
        let run = dir
            .ancestors()
            .take(3)
            .find(|d| d.join("config.toml").is_file())
            .ok_or_else(|| {
                Error::Input(format!(
                    "{}: no config.toml here or in the two directories above; is it a dml \
                     run directory (dml train --out), RUN/best or RUN/checkpoints/step-N?",
                    path.display()
                ))
            })?
            .to_path_buf();
        if !weights.is_file() {
            return Err(Error::Input(format!(
                "{} does not exist (has the run finished?); weights this run has: {}",
                weights.display(),
                available_weights(&run)
            )));
        }
        let what = describe(&run, &dir);
        Ok(RunWeights {
            config: run.join("config.toml"),
            weights,
            what,
        })
    }

    /// The run's resolved config.
    pub fn load_config(&self) -> Result<Config> {
        Config::load(&self.config, &[])
    }

    /// The model of `cfg` with these weights, on this rank's device.
    pub fn load_model(&self, cfg: &Config, comm: &dyn Comm) -> Result<Model> {
        crate::train::load_model(cfg, comm, &self.weights)
    }
}

/// What the weights in `dir` (inside the run directory `run`) are.
fn describe(run: &Path, dir: &Path) -> String {
    let step_of = |d: &Path| {
        d.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<usize>().ok())
    };
    if dir == run {
        return "final model".into();
    }
    if dir == run.join("best") {
        let best = std::fs::read_to_string(dir.join("best.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        return match best {
            Some(b) => format!(
                "best on validation ({} {:.4} at step {})",
                b["metric"].as_str().unwrap_or("?"),
                b["value"].as_f64().unwrap_or(f64::NAN),
                b["step"]
            ),
            None => "best on validation".into(),
        };
    }
    match step_of(dir) {
        Some(step) => format!("checkpoint of step {step}"),
        None => format!("weights in {}", dir.display()),
    }
}

/// The weights a run directory holds, for an error message.
fn available_weights(run: &Path) -> String {
    let mut found = Vec::new();
    if run.join("model.safetensors").is_file() {
        found.push(run.display().to_string());
    }
    if run.join("best").join("model.safetensors").is_file() {
        found.push(run.join("best").display().to_string());
    }
    let mut steps = crate::train::checkpoint::list(run).unwrap_or_default();
    steps.sort_unstable();
    found.extend(steps.iter().map(|&s| {
        crate::train::checkpoint::dir_for(run, s)
            .display()
            .to_string()
    }));
    match found.is_empty() {
        true => "none".into(),
        false => found.join(", "),
    }
}

/// The files to evaluate on: `data` (and `gallery`) when given, else the run's own
/// `data.test` (and `data.gallery`). Each must exist; a relative path recorded by an
/// older run is named as such.
pub fn eval_files(
    cfg: &Config,
    data: Option<&Path>,
    gallery: Option<&Path>,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let (query, gallery) = match data {
        Some(d) => (d.to_path_buf(), gallery.map(Path::to_path_buf)),
        None if cfg.data.test.is_empty() => {
            return Err(Error::Input(
                "the run's config has no data.test: give --data FILE".into(),
            ))
        }
        None => (
            PathBuf::from(&cfg.data.test),
            match (gallery, cfg.data.gallery.as_str()) {
                (Some(g), _) => Some(g.to_path_buf()),
                (None, "") => None,
                (None, g) => Some(PathBuf::from(g)),
            },
        ),
    };
    for (file, key) in [
        (Some(&query), "data.test"),
        (gallery.as_ref(), "data.gallery"),
    ] {
        if let Some(f) = file.filter(|f| !f.exists()) {
            let hint = match (data.is_none(), f.is_relative()) {
                (true, true) => format!(
                    " (the run's {key}, relative to the current directory {}: run from \
                     the directory it was trained in, or give --data FILE)",
                    std::env::current_dir()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                ),
                (true, false) => format!(" (the run's {key}; give --data FILE)"),
                (false, _) => String::new(),
            };
            return Err(Error::Input(format!(
                "{} does not exist{hint}",
                f.display()
            )));
        }
    }
    Ok((query, gallery))
}

/// Retrieval metrics of `model` on `query` searched against itself, or against
/// `gallery` (query/gallery protocols); with `grid`, rank 0 also draws queries and
/// their retrievals into a PNG. Every rank embeds its share; rank 0 returns the
/// metrics, the others `None`.
pub fn evaluate_model(
    model: &Model,
    opts: EmbedOptions,
    comm: &dyn Comm,
    query: &Path,
    gallery: Option<&Path>,
    grid: Option<&Path>,
) -> Result<Option<Metrics>> {
    let query = Arc::new(Dataset::open(query)?);
    let (qe, ql) = embed_dataset(model, comm, query.clone(), opts)?;
    let (reference, re, rl) = match gallery {
        None => (query.clone(), qe.shallow_clone(), ql.clone()),
        Some(g) => {
            let g = Arc::new(Dataset::open(g)?);
            let (ge, gl) = embed_dataset(model, comm, g.clone(), opts)?;
            (g, ge, gl)
        }
    };
    let same_source = gallery.is_none();
    let metrics = evaluate(&qe, &ql, &re, &rl, same_source, &EvalOptions::default())?;
    if let (Some(path), 0) = (grid, comm.rank()) {
        let q = Retrieved {
            data: &query,
            emb: &qe,
            labels: &ql,
        };
        let r = Retrieved {
            data: &reference,
            emb: &re,
            labels: &rl,
        };
        draw_grid(path, &q, &r, same_source)?;
    }
    Ok((comm.rank() == 0).then_some(metrics))
}

/// `dml embed`: embeds `data` with `model` (every rank its share) and rank 0 writes the
/// embeddings to `out` (`E.npy`) with its companion files
/// ([`crate::embed::write_embeddings`]). Returns the embeddings' `[rows, dimensions]`.
pub fn embed_to_file(
    model: &Model,
    opts: EmbedOptions,
    comm: &dyn Comm,
    data: &Path,
    out: &Path,
) -> Result<[i64; 2]> {
    let ds = Arc::new(Dataset::open(data)?);
    let (emb, labels) = embed_dataset(model, comm, ds.clone(), opts)?;
    if comm.rank() == 0 {
        crate::embed::write_embeddings(out, &emb, &labels, &ds)?;
    }
    Ok([emb.size()[0], emb.size()[1]])
}

/// A dataset with its embeddings and labels.
struct Retrieved<'a> {
    data: &'a Dataset,
    emb: &'a Tensor,
    labels: &'a [i64],
}

/// Eight queries spread over the query file with their five nearest references.
fn draw_grid(
    path: &Path,
    query: &Retrieved,
    reference: &Retrieved,
    same_source: bool,
) -> Result<()> {
    const ROWS: usize = 8;
    const K: i64 = 5;
    let n = query.labels.len();
    let queries: Vec<usize> = (0..ROWS.min(n))
        .map(|i| i * n / ROWS.min(n).max(1))
        .collect();
    let idx = Tensor::from_slice(&queries.iter().map(|&q| q as i64).collect::<Vec<_>>());
    let sims = query.emb.index_select(0, &idx).matmul(&reference.emb.tr());
    if same_source {
        for (row, &q) in queries.iter().enumerate() {
            let _ = sims.get(row as i64).get(q as i64).fill_(f64::NEG_INFINITY);
        }
    }
    let k = K
        .min(reference.labels.len() as i64 - i64::from(same_source))
        .max(1);
    let (_, top) = sims.topk(k, 1, true, true);
    let mut neighbours = Vec::new();
    let mut correct = Vec::new();
    for (row, &q) in queries.iter().enumerate() {
        let nb: Vec<usize> = Vec::<i64>::try_from(top.get(row as i64))?
            .into_iter()
            .map(|v| v as usize)
            .collect();
        correct.push(
            nb.iter()
                .map(|&r| reference.labels[r] == query.labels[q])
                .collect(),
        );
        // The grid's callback sees query indices first, then reference indices
        // offset by n.
        neighbours.push(nb.iter().map(|&r| r + n).collect());
    }
    let mut pixels = |i: usize| -> Result<(Vec<u8>, usize, usize)> {
        let img = match i < n {
            true => query.data.checked_image(i)?,
            false => reference.data.checked_image(i - n)?,
        };
        Ok((img.pixels.to_vec(), img.height, img.width))
    };
    crate::plot::retrieval_grid(&queries, &neighbours, &correct, 96, &mut pixels, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory with a config, a final model, best/ and two checkpoints.
    fn run_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        std::fs::write(run.join("config.toml"), "").unwrap();
        std::fs::write(run.join("model.safetensors"), "").unwrap();
        std::fs::create_dir_all(run.join("best")).unwrap();
        std::fs::write(run.join("best/model.safetensors"), "").unwrap();
        std::fs::write(
            run.join("best/best.json"),
            r#"{"step": 40, "metric": "mean_average_precision_at_r", "value": 0.3125}"#,
        )
        .unwrap();
        for step in [3, 6] {
            let d = crate::train::checkpoint::dir_for(run, step);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("model.safetensors"), "").unwrap();
        }
        dir
    }

    #[test]
    fn a_run_its_best_and_its_checkpoints_share_the_runs_config() {
        let dir = run_dir();
        let run = dir.path();
        let config = run.join("config.toml");
        let cases = [
            (
                run.to_path_buf(),
                run.join("model.safetensors"),
                "final model",
            ),
            (
                run.join("best"),
                run.join("best/model.safetensors"),
                "best on validation (mean_average_precision_at_r 0.3125 at step 40)",
            ),
            (
                run.join("checkpoints/step-6"),
                run.join("checkpoints/step-6/model.safetensors"),
                "checkpoint of step 6",
            ),
            (
                run.join("checkpoints/step-3/model.safetensors"),
                run.join("checkpoints/step-3/model.safetensors"),
                "checkpoint of step 3",
            ),
        ];
        for (path, weights, what) in cases {
            let w = RunWeights::locate(&path).unwrap();
            assert_eq!(w.config, config, "{}", path.display());
            assert_eq!(w.weights, weights);
            assert_eq!(w.what, what);
        }
    }

    #[test]
    fn an_unfinished_run_lists_the_weights_it_has() {
        let dir = run_dir();
        let run = dir.path();
        std::fs::remove_file(run.join("model.safetensors")).unwrap();
        let err = RunWeights::locate(run).unwrap_err().to_string();
        assert!(err.contains("has the run finished?"), "{err}");
        for has in ["best", "checkpoints/step-3", "checkpoints/step-6"] {
            assert!(err.contains(&run.join(has).display().to_string()), "{err}");
        }
        let err = RunWeights::locate(&run.join("nothing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        let elsewhere = tempfile::tempdir().unwrap();
        let err = RunWeights::locate(elsewhere.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no config.toml"), "{err}");
    }

    #[test]
    fn eval_files_default_to_the_runs_test_and_gallery_splits() {
        let dir = tempfile::tempdir().unwrap();
        let (test, gallery) = (dir.path().join("q.dmlds"), dir.path().join("g.dmlds"));
        std::fs::write(&test, "").unwrap();
        std::fs::write(&gallery, "").unwrap();
        let mut cfg = Config::default();
        cfg.data.test = test.display().to_string();
        assert_eq!(eval_files(&cfg, None, None).unwrap(), (test.clone(), None));
        cfg.data.gallery = gallery.display().to_string();
        assert_eq!(
            eval_files(&cfg, None, None).unwrap(),
            (test.clone(), Some(gallery.clone()))
        );
        // --data replaces both of the run's files.
        assert_eq!(
            eval_files(&cfg, Some(&gallery), None).unwrap(),
            (gallery.clone(), None)
        );
        cfg.data.test = "no/such/test.dmlds".into();
        let err = eval_files(&cfg, None, None).unwrap_err().to_string();
        assert!(err.contains("relative to the current directory"), "{err}");
        cfg.data.test.clear();
        let err = eval_files(&cfg, None, None).unwrap_err().to_string();
        assert!(err.contains("give --data FILE"), "{err}");
    }
}
