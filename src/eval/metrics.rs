//! Retrieval metrics of "A Metric Learning Reality Check" with the names and
//! definitions of pytorch-metric-learning's `AccuracyCalculator`.
//!
//! * `R` of a query = number of references with its label (minus one in same-source
//!   evaluation, where the query itself is excluded from its own neighbours by index).
//! * Queries with `R = 0` are left out of every kNN metric (PML's "lone" queries).
//! * `precision_at_1`: the nearest reference has the query's label.
//! * `r_precision`: hits among the first `min(R, k)` neighbours / `min(R, k)`.
//! * `mean_average_precision_at_r`: (1/R) Σ_{i ≤ min(R,k)} P@i · [i-th is a hit].
//! * `recall_at_K` (K = 1, 2, 4, 8, 16, 32, 10, 20, 30, 40, 50): at least one hit among
//!   the first K neighbours (the DML definition, not PML's `precision_at_k`).
//! * `NMI`, `AMI`: k-means on the query embeddings (L2-normalised in cosine mode) with
//!   k = number of distinct query labels, against the query labels (scikit-learn's
//!   definitions, arithmetic normalisation).
//!
//! The kNN uses `k = max(max R, 50)` neighbours (at most the number of candidates, and at
//! most `k_max` when given — then R-metrics of classes larger than `k_max` are truncated).
use std::collections::{BTreeMap, HashMap};

use tch::{Device, Kind, Tensor};

use super::cluster;
use super::kmeans::{kmeans, KMeansOptions};
use super::knn::{knn, KnnOptions};
use crate::error::{Error, Result};
use crate::ops::try_normalize;

/// The K of the `recall_at_K` metrics.
pub const RECALL_KS: [usize; 11] = [1, 2, 4, 8, 16, 32, 10, 20, 30, 40, 50];

/// Evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Cap on the number of neighbours retrieved (`None`: `max(max R, 50)`).
    pub k_max: Option<usize>,
    /// Squared Euclidean distance on raw embeddings instead of cosine similarity.
    pub euclidean: bool,
    /// The most query rows per kNN block (memory ≈ rows × N_ref × 4 bytes, ≤ 256 MiB).
    pub chunk: usize,
    /// Where the kNN and k-means run.
    pub device: Device,
    /// Compute NMI and AMI (k-means on the queries).
    pub nmi: bool,
    /// Seed of k-means.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            k_max: None,
            euclidean: false,
            chunk: 4096,
            device: Device::Cpu,
            nmi: true,
            seed: 0,
        }
    }
}

/// Named metric values (PML's names); NaN where no query had a match in the references.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics(pub BTreeMap<String, f64>);

/// The order of [`Metrics::table`].
fn canonical_order() -> Vec<String> {
    let mut v: Vec<String> = [
        "precision_at_1",
        "r_precision",
        "mean_average_precision_at_r",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut ks = RECALL_KS.to_vec();
    ks.sort_unstable();
    v.extend(ks.iter().map(|k| format!("recall_at_{k}")));
    v.extend(["NMI".to_string(), "AMI".to_string()]);
    v
}

impl Metrics {
    /// The value of metric `k`, if computed.
    pub fn get(&self, k: &str) -> Option<f64> {
        self.0.get(k).copied()
    }

    /// One JSON object `{"name": value, ...}`; NaN is written as `null`.
    pub fn to_json(&self) -> String {
        let obj: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| {
                let v = serde_json::Number::from_f64(*v)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number);
                (k.clone(), v)
            })
            .collect();
        serde_json::Value::Object(obj).to_string()
    }

    /// A two-column text table, headline metrics first.
    pub fn table(&self) -> String {
        let order = canonical_order();
        let mut names: Vec<&String> = order.iter().filter(|n| self.0.contains_key(*n)).collect();
        names.extend(self.0.keys().filter(|k| !order.contains(k)));
        let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
        names
            .iter()
            .map(|n| format!("{n:<width$}  {:.4}\n", self.0[*n]))
            .collect()
    }
}

/// Checks a 2-d float matrix with `n` labels; `what` names it in errors.
pub fn check_embeddings(x: &Tensor, labels: usize, what: &str) -> Result<(usize, usize)> {
    let size = x.size();
    if size.len() != 2 {
        return Err(Error::Input(format!(
            "{what}: expected a 2-d (N, D) matrix, got shape {size:?}"
        )));
    }
    let (n, d) = (size[0] as usize, size[1] as usize);
    if n == 0 || d == 0 {
        return Err(Error::Input(format!("{what}: empty ({n} × {d})")));
    }
    if n != labels {
        return Err(Error::Input(format!(
            "{what}: {n} embeddings but {labels} labels"
        )));
    }
    let finite = x.f_isfinite()?.f_all()?.int64_value(&[]) != 0;
    if !finite {
        return Err(Error::Input(format!(
            "{what}: contains NaN or infinite values"
        )));
    }
    Ok((n, d))
}

/// Evaluates `query` against `reference` (each row an embedding, with its label).
///
/// With `same_source` the two are the same set (pass the same tensor and labels): each
/// query's own row is excluded from its neighbours and from its R.
///
/// ```
/// use tch::Tensor;
/// use dml::eval::metrics::{evaluate, EvalOptions};
/// let e = Tensor::from_slice(&[1f32, 0., 0.9, 0.1, 0., 1., 0.1, 0.9]).view([4, 2]);
/// let l = [0i64, 0, 1, 1];
/// let m = evaluate(&e, &l, &e, &l, true, &EvalOptions::default())?;
/// assert_eq!(m.get("precision_at_1"), Some(1.0));
/// # Ok::<(), dml::Error>(())
/// ```
pub fn evaluate(
    query: &Tensor,
    query_labels: &[i64],
    reference: &Tensor,
    reference_labels: &[i64],
    same_source: bool,
    opts: &EvalOptions,
) -> Result<Metrics> {
    let (nq, dq) = check_embeddings(query, query_labels.len(), "query embeddings")?;
    let (nr, dr) = check_embeddings(reference, reference_labels.len(), "reference embeddings")?;
    if dq != dr {
        return Err(Error::Input(format!(
            "query embeddings have dimension {dq} but reference embeddings {dr}"
        )));
    }
    if same_source && (nq != nr || query_labels != reference_labels) {
        return Err(Error::Input(
            "same-source evaluation needs identical query and reference sets".into(),
        ));
    }
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for l in reference_labels {
        *counts.entry(*l).or_default() += 1;
    }
    let self_count = usize::from(same_source);
    let r_of: Vec<usize> = query_labels
        .iter()
        .map(|l| {
            counts
                .get(l)
                .copied()
                .unwrap_or(0)
                .saturating_sub(self_count)
        })
        .collect();
    let r_max = r_of.iter().copied().max().unwrap_or(0);
    let mut k = r_max.max(50);
    if let Some(cap) = opts.k_max {
        k = k.min(cap.max(1));
    }
    let kopts = KnnOptions {
        euclidean: opts.euclidean,
        chunk: opts.chunk,
        device: opts.device,
    };
    let nn = knn(query, reference, k, same_source, &kopts)?;
    let mut m = knn_metrics(&nn.indices, nn.k, query_labels, reference_labels, &r_of);
    if opts.nmi {
        let (nmi, ami) = clustering_scores(query, query_labels, opts)?;
        m.insert("NMI".into(), nmi);
        m.insert("AMI".into(), ami);
    }
    Ok(Metrics(m))
}

/// k-means on the queries and NMI/AMI of the clusters against the labels.
pub fn clustering_scores(query: &Tensor, labels: &[i64], opts: &EvalOptions) -> Result<(f64, f64)> {
    let classes = {
        let mut l = labels.to_vec();
        l.sort_unstable();
        l.dedup();
        l.len()
    };
    let x = query.f_to_device(opts.device)?.f_to_kind(Kind::Float)?;
    let x = if opts.euclidean {
        x
    } else {
        try_normalize(&x)?
    };
    let kopts = KMeansOptions::for_metrics(classes, opts.seed);
    let c = kmeans(&x, classes, &kopts)?;
    Ok((
        cluster::nmi(labels, &c.assignment),
        cluster::ami(labels, &c.assignment),
    ))
}

/// The kNN metrics from neighbour indices (`n_query × k`, best first) and each query's R.
pub fn knn_metrics(
    indices: &[i64],
    k: usize,
    query_labels: &[i64],
    reference_labels: &[i64],
    r_of: &[usize],
) -> BTreeMap<String, f64> {
    let mut p1 = 0.0;
    let mut rp = 0.0;
    let mut map_r = 0.0;
    let mut recall = [0.0f64; RECALL_KS.len()];
    let mut used = 0usize;
    for (q, (&label, &r)) in query_labels.iter().zip(r_of).enumerate() {
        if r == 0 {
            continue;
        }
        used += 1;
        let row = &indices[q * k..(q + 1) * k];
        let hit: Vec<bool> = row
            .iter()
            .map(|&j| reference_labels[j as usize] == label)
            .collect();
        if hit.first() == Some(&true) {
            p1 += 1.0;
        }
        let upto = r.min(k);
        let mut hits = 0usize;
        let mut ap = 0.0;
        for (i, &h) in hit[..upto].iter().enumerate() {
            if h {
                hits += 1;
                ap += hits as f64 / (i + 1) as f64;
            }
        }
        rp += hits as f64 / upto as f64;
        map_r += ap / r as f64;
        let first_hit = hit.iter().position(|&h| h);
        for (slot, &kk) in recall.iter_mut().zip(RECALL_KS.iter()) {
            if first_hit.is_some_and(|p| p < kk) {
                *slot += 1.0;
            }
        }
    }
    let norm = |x: f64| if used == 0 { f64::NAN } else { x / used as f64 };
    let mut m = BTreeMap::new();
    m.insert("precision_at_1".to_string(), norm(p1));
    m.insert("r_precision".to_string(), norm(rp));
    m.insert("mean_average_precision_at_r".to_string(), norm(map_r));
    for (v, kk) in recall.iter().zip(RECALL_KS.iter()) {
        m.insert(format!("recall_at_{kk}"), norm(*v));
    }
    m
}
