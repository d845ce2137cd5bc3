//! The protocol of "A Metric Learning Reality Check" (Musgrave et al. 2020): four folds of
//! the training classes, each validating on a contiguous quarter; one model per fold
//! (the best by the validation metric); test metrics per fold and for the concatenation
//! of the four folds' embeddings.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use tch::Tensor;

use crate::comm::Comm;
use crate::config::Config;
use crate::data::Dataset;
use crate::embed::{embed_dataset, EmbedOptions};
use crate::error::{Error, Result};
use crate::eval::metrics::{evaluate, EvalOptions, Metrics};

use super::checkpoint::{self, write_synced};

/// Test metrics per fold and of the concatenated embedding.
#[derive(Debug, Clone)]
pub struct RealityCheckReport {
    /// Metrics of fold f's best model on the test split.
    pub folds: Vec<Metrics>,
    /// Metrics of the concatenated (and re-normalised) embeddings of all folds.
    pub concatenated: Metrics,
    /// Embedding size of one fold and of the concatenation.
    pub dims: (usize, usize),
}

/// Trains one model per fold into `out/fold-F` (resuming a fold that has checkpoints, skipping
/// one that finished), then evaluates each fold's best model on `data.test` (against itself,
/// or as queries against `data.gallery` when that is set). Rank 0 writes
/// `out/reality_check.md` and `out/reality_check.json`.
///
/// ```no_run
/// # fn demo(comm: &dyn dml::comm::Comm) -> dml::Result<()> {
/// let cfg = dml::config::Config::load("configs/quickstart.toml".as_ref(), &["eval.every=50".into()])?;
/// let report = dml::train::reality_check::run(&cfg, comm, "runs/rc".as_ref())?;
/// println!("{}", report.concatenated.table());
/// # Ok(()) }
/// ```
pub fn run(cfg: &Config, comm: &dyn Comm, out: &Path) -> Result<RealityCheckReport> {
    cfg.validate_reality_check()?;
    let test = Arc::new(Dataset::open(Path::new(&cfg.data.test))?);
    let gallery = match cfg.data.gallery.as_str() {
        "" => None,
        g => Some(Arc::new(Dataset::open(Path::new(g))?)),
    };
    let mut per_fold = Vec::new();
    let mut embeddings = Vec::new();
    let mut gallery_embeddings = Vec::new();
    let (mut labels, mut gallery_labels) = (Vec::new(), Vec::new());
    for fold in 0..cfg.eval.folds {
        let mut fc = cfg.clone();
        fc.eval.fold = fold;
        let dir = out.join(format!("fold-{fold}"));
        if !dir.join("model.safetensors").exists() {
            let resume = !checkpoint::list(&dir)?.is_empty();
            super::run(&fc, comm, &dir, resume)?;
        }
        let model = super::load_model(&fc, comm, &best_weights(&dir))?;
        let (emb, lab) = embed_dataset(&model, comm, test.clone(), EmbedOptions::from_config(cfg))?;
        labels = lab;
        if let Some(g) = &gallery {
            let (g_emb, g_lab) =
                embed_dataset(&model, comm, g.clone(), EmbedOptions::from_config(cfg))?;
            gallery_labels = g_lab;
            gallery_embeddings.push(g_emb);
        }
        per_fold.push(test_metrics(
            (&emb, &labels),
            gallery_embeddings
                .last()
                .map(|g| (g, gallery_labels.as_slice())),
        )?);
        embeddings.push(emb);
    }
    let cat = concat_normalised(&embeddings);
    let gallery_cat =
        (!gallery_embeddings.is_empty()).then(|| concat_normalised(&gallery_embeddings));
    let concatenated = test_metrics(
        (&cat, &labels),
        gallery_cat.as_ref().map(|g| (g, gallery_labels.as_slice())),
    )?;
    let d = embeddings
        .first()
        .map(|e| e.size()[1] as usize)
        .unwrap_or(0);
    let report = RealityCheckReport {
        folds: per_fold,
        concatenated,
        dims: (d, cat.size()[1] as usize),
    };
    if comm.rank() == 0 {
        write_report(&report, out)?;
    }
    Ok(report)
}

/// The test metrics of query embeddings: against themselves (same source) or, with
/// `data.gallery`, against the gallery's.
fn test_metrics(query: (&Tensor, &[i64]), gallery: Option<(&Tensor, &[i64])>) -> Result<Metrics> {
    let opts = EvalOptions::default();
    match gallery {
        Some((g, gl)) => evaluate(query.0, query.1, g, gl, false, &opts),
        None => evaluate(query.0, query.1, query.0, query.1, true, &opts),
    }
}

/// The folds' embeddings side by side, rows re-normalised to unit length.
fn concat_normalised(parts: &[Tensor]) -> Tensor {
    crate::ops::normalize(&Tensor::cat(parts, 1))
}

/// `best/model.safetensors` when validation chose one, else the final model.
fn best_weights(dir: &Path) -> PathBuf {
    let best = dir.join("best").join("model.safetensors");
    if best.exists() {
        best
    } else {
        dir.join("model.safetensors")
    }
}

const COLUMNS: [&str; 3] = [
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
];

/// The report as a Markdown table.
pub fn markdown(r: &RealityCheckReport) -> String {
    let mut s =
        String::from("| model | dim | P@1 | R-Precision | MAP@R |\n|---|---|---|---|---|\n");
    let row = |name: String, dim: usize, m: &Metrics| {
        let v: Vec<String> = COLUMNS
            .iter()
            .map(|k| format!("{:.4}", m.get(k).unwrap_or(f64::NAN)))
            .collect();
        format!("| {name} | {dim} | {} |\n", v.join(" | "))
    };
    for (f, m) in r.folds.iter().enumerate() {
        s += &row(format!("fold {f}"), r.dims.0, m);
    }
    s += &row("concatenated".into(), r.dims.1, &r.concatenated);
    s
}

fn write_report(r: &RealityCheckReport, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_synced(&out.join("reality_check.md"), markdown(r).as_bytes())?;
    let folds: Vec<serde_json::Value> = r.folds.iter().map(|m| json!(m.0)).collect();
    let obj = json!({
        "folds": folds,
        "concatenated": r.concatenated.0,
        "fold_dim": r.dims.0,
        "concatenated_dim": r.dims.1,
    });
    write_synced(&out.join("reality_check.json"), obj.to_string().as_bytes())
}
