//! Evaluation during training on a validation split made the Reality Check's way: a
//! class-disjoint part of the training classes (or a separate `data.val` file). The best
//! model by `eval.metric` on validation — never on test — is kept in `RUN/best/`.
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::comm::Comm;
use crate::config::Config;
use crate::data::Dataset;
use crate::embed::{embed_indices, EmbedOptions};
use crate::error::{Error, Result};
use crate::eval::metrics::{evaluate, EvalOptions, Metrics};
use crate::model::Model;
use crate::train::checkpoint::write_synced;

/// Splits the dataset indices by class into (train, validation): the sorted classes are
/// cut into `folds` contiguous parts and part `fold` validates.
///
/// ```
/// let labels = [0u32, 0, 1, 1, 2, 2, 3, 3];
/// let (train, val) = dml::train::validate::split_by_class_fold(&labels, 4, 1);
/// assert_eq!(val, vec![2, 3]);
/// assert_eq!(train, vec![0, 1, 4, 5, 6, 7]);
/// ```
pub fn split_by_class_fold(labels: &[u32], folds: usize, fold: usize) -> (Vec<usize>, Vec<usize>) {
    let classes: Vec<u32> = labels
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let c = classes.len();
    let lo = fold * c / folds;
    let hi = (fold + 1) * c / folds;
    let val_classes: BTreeSet<u32> = classes[lo..hi].iter().copied().collect();
    (0..labels.len()).partition(|&i| !val_classes.contains(&labels[i]))
}

/// The validation set of a run and the best value seen so far.
pub struct Validation {
    data: Arc<Dataset>,
    indices: Vec<usize>,
    metric: String,
    best: Option<f64>,
    opts: EmbedOptions,
}

impl Validation {
    /// Builds the validation set for `cfg` (None when `eval.every` is 0) and returns the
    /// training indices the sampler may draw from.
    pub fn from_config(
        cfg: &Config,
        train: &Arc<Dataset>,
    ) -> Result<(Option<Validation>, Vec<usize>)> {
        let all: Vec<usize> = (0..train.len()).collect();
        if cfg.eval.every == 0 {
            return Ok((None, all));
        }
        let opts = EmbedOptions::from_config(cfg);
        let metric = cfg.eval.metric.clone();
        if !cfg.data.val.is_empty() {
            let data = Arc::new(Dataset::open(Path::new(&cfg.data.val))?);
            let indices = (0..data.len()).collect();
            return Ok((
                Some(Validation {
                    data,
                    indices,
                    metric,
                    best: None,
                    opts,
                }),
                all,
            ));
        }
        let (train_idx, val_idx) =
            split_by_class_fold(train.labels(), cfg.eval.folds, cfg.eval.fold);
        if val_idx.is_empty() || train_idx.is_empty() {
            return Err(Error::Config(format!(
                "eval.fold: fold {} of {} leaves no {} classes in {}; use fewer eval.folds or set data.val",
                cfg.eval.fold,
                cfg.eval.folds,
                if val_idx.is_empty() { "validation" } else { "training" },
                cfg.data.train
            )));
        }
        let v = Validation {
            data: train.clone(),
            indices: val_idx,
            metric,
            best: None,
            opts,
        };
        Ok((Some(v), train_idx))
    }

    /// Restores the best value of a resumed run from `RUN/best/best.json`.
    pub fn restore_best(&mut self, run: &Path) {
        let path = run.join("best").join("best.json");
        self.best = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("value").and_then(serde_json::Value::as_f64));
    }

    /// Embeds the validation images on all ranks and evaluates them (same source). On
    /// rank 0, a new best model is written to `RUN/best/` (atomically). Returns the metrics
    /// with keys prefixed `val_`, ready for metrics.jsonl.
    pub fn run(
        &mut self,
        model: &Model,
        comm: &dyn Comm,
        run: &Path,
        step: usize,
    ) -> Result<serde_json::Value> {
        let (emb, labels) =
            embed_indices(model, comm, self.data.clone(), &self.indices, self.opts)?;
        let metrics = evaluate(&emb, &labels, &emb, &labels, true, &EvalOptions::default())?;
        let value = metric_value(&metrics, &self.metric)?;
        let improved = self.best.is_none_or(|b| value > b);
        if improved {
            self.best = Some(value);
            if comm.rank() == 0 {
                save_best(model, run, step, &self.metric, value)?;
            }
        }
        let mut obj = serde_json::Map::new();
        for (k, v) in &metrics.0 {
            obj.insert(format!("val_{k}"), json!(v));
        }
        obj.insert("val_best".into(), json!(improved));
        Ok(serde_json::Value::Object(obj))
    }
}

fn metric_value(m: &Metrics, name: &str) -> Result<f64> {
    m.get(name).ok_or_else(|| {
        Error::Config(format!(
            "eval.metric: `{name}` is not among the computed metrics"
        ))
    })
}

/// Writes `RUN/best/{model.safetensors,best.json}` through a temporary directory,
/// durably ([`super::checkpoint::publish_dir`]).
fn save_best(model: &Model, run: &Path, step: usize, metric: &str, value: f64) -> Result<()> {
    let dir = run.join("best");
    let tmp = run.join("best.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    model.save(&tmp.join("model.safetensors"))?;
    let info = json!({ "step": step, "metric": metric, "value": value });
    write_synced(&tmp.join("best.json"), info.to_string().as_bytes())?;
    super::checkpoint::publish_dir(&tmp, &dir)
}
