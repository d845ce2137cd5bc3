//! Retrieval evaluation ("A Metric Learning Reality Check"): exact chunked kNN,
//! PML-compatible metrics (P@1, R-Precision, MAP@R, Recall@K), NMI/AMI from seeded
//! k-means, and `.npy` input/output for `dml eval --embeddings`.
use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::error::{Error, Result};

pub mod cluster;
pub mod kmeans;
pub mod knn;
pub mod metrics;
pub mod npy;
pub mod run;

use metrics::{evaluate, EvalOptions, Metrics};

/// Files for `dml eval --embeddings E.npy --labels L.npy [--query-embeddings Q.npy --query-labels QL.npy]`.
#[derive(Debug, Clone)]
pub struct NpyEvalArgs {
    /// Reference (gallery) embeddings, `(N, D)` float32/float64.
    pub embeddings: PathBuf,
    /// Reference labels, `(N,)` integers.
    pub labels: PathBuf,
    /// Query embeddings; without them the references are evaluated against themselves.
    pub query_embeddings: Option<PathBuf>,
    /// Query labels (required with `query_embeddings`).
    pub query_labels: Option<PathBuf>,
}

/// Loads an embedding file and its labels, checking them and naming the files in errors.
fn load(emb: &Path, lab: &Path) -> Result<(Tensor, Vec<i64>)> {
    let (data, [n, d]) = npy::read_f32_2d(emb)?;
    let labels = npy::read_labels(lab)?;
    if n == 0 || d == 0 {
        return Err(Error::Input(format!(
            "{}: no embeddings (shape ({n}, {d}))",
            emb.display()
        )));
    }
    if labels.len() != n {
        return Err(Error::Input(format!(
            "{} has {n} embeddings but {} has {} labels",
            emb.display(),
            lab.display(),
            labels.len()
        )));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "{}: non-finite value {} in row {}",
            emb.display(),
            data[i],
            i / d
        )));
    }
    let t = Tensor::from_slice(&data).f_view([n as i64, d as i64])?;
    Ok((t, labels))
}

/// Evaluates embeddings stored as `.npy`: same-source without query files, query/gallery
/// with them. Default [`EvalOptions`] (cosine, CPU, NMI on).
///
/// ```no_run
/// use dml::eval::{evaluate_npy, NpyEvalArgs};
/// let m = evaluate_npy(&NpyEvalArgs {
///     embeddings: "e.npy".into(),
///     labels: "l.npy".into(),
///     query_embeddings: None,
///     query_labels: None,
/// })?;
/// println!("{}", m.to_json());
/// # Ok::<(), dml::Error>(())
/// ```
pub fn evaluate_npy(args: &NpyEvalArgs) -> Result<Metrics> {
    let (r, rl) = load(&args.embeddings, &args.labels)?;
    let opts = EvalOptions::default();
    match (&args.query_embeddings, &args.query_labels) {
        (None, None) => evaluate(&r, &rl, &r, &rl, true, &opts),
        (Some(qe), Some(ql)) => {
            let (q, qlab) = load(qe, ql)?;
            if q.size()[1] != r.size()[1] {
                return Err(Error::Input(format!(
                    "{} has dimension {} but {} has {}",
                    qe.display(),
                    q.size()[1],
                    args.embeddings.display(),
                    r.size()[1]
                )));
            }
            evaluate(&q, &qlab, &r, &rl, false, &opts)
        }
        _ => Err(Error::Input(
            "--query-embeddings and --query-labels go together".into(),
        )),
    }
}
