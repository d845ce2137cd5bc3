//! Group Loss (Elezi et al. 2020), after the official code (dvl-tum/group_loss:
//! gtg.py, dynamics.py); reference `tools/group_loss_ref.py`.
//!
//! On features f `[B, F]` and classifier logits `[B, C]` of the global batch:
//! 1. `W = ReLU(Pearson correlation of the rows of f)`, diagonal kept;
//! 2. priors X: the first `anchors` samples of each class (in batch order) get one-hot
//!    rows, the others `softmax(logits / T)`;
//! 3. `iterations` replicator steps `X ← X ⊙ (W X)`, rows renormalised to sum 1;
//! 4. loss = NLL(log(X + 1e-12), y) + `ce_weight` · CE(logits, y), both means over B.
use tch::Tensor;

use super::stats::{count, StatsAcc};
use super::LossOutput;
use crate::config::LossConfig;
use crate::error::{Error, Result};

/// Group Loss hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupLoss {
    /// Softmax temperature T of the priors.
    pub temperature: f64,
    /// Labelled anchors per class (one-hot priors).
    pub anchors: usize,
    /// Replicator-dynamics iterations.
    pub iterations: usize,
    /// Weight of the cross-entropy term.
    pub ce_weight: f64,
}

impl GroupLoss {
    /// From `loss.group_*`.
    pub fn from_config(c: &LossConfig) -> Self {
        GroupLoss {
            temperature: c.group_temperature,
            anchors: c.group_anchors,
            iterations: c.group_iterations,
            ce_weight: c.group_ce_weight,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> String {
        format!(
            "group(T={}, anchors={}, iterations={}, ce_weight={})",
            self.temperature, self.anchors, self.iterations, self.ce_weight
        )
    }

    /// `W = ReLU(corr(f))`, `[B, B]`.
    pub fn affinity(f: &Tensor) -> Tensor {
        let x = f - f.mean_dim([1i64].as_slice(), true, f.kind());
        let norms = x.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        let w = x.matmul(&x.tr()) / norms.outer(&norms);
        w.relu()
    }

    /// Boolean `[B]` mask of the labelled anchors: the first `anchors` samples of each
    /// class in batch order.
    pub fn anchor_mask(&self, labels: &Tensor) -> Result<Tensor> {
        let l = Vec::<i64>::try_from(labels.to_device(tch::Device::Cpu))
            .map_err(|e| Error::Input(format!("group loss: labels: {e}")))?;
        let mut seen = std::collections::HashMap::<i64, usize>::new();
        let mask: Vec<bool> = l
            .iter()
            .map(|y| {
                let c = seen.entry(*y).or_insert(0);
                *c += 1;
                *c <= self.anchors
            })
            .collect();
        Ok(Tensor::from_slice(&mask).to_device(labels.device()))
    }

    /// Checks features `f` `[B, F]`, `logits` `[B, C]` and `labels` `[B]` (in range of
    /// the classifier); returns C. Cheap: run on every rank, also those that leave the
    /// loss to another (see [`crate::loss::Objective`]).
    pub fn check(&self, f: &Tensor, logits: &Tensor, labels: &Tensor) -> Result<i64> {
        super::check_inputs(f, labels)?;
        let (b, c) = match logits.size().as_slice() {
            [b, c] => (*b, *c),
            s => {
                return Err(Error::Input(format!(
                    "group loss: logits must be [B, C], got {s:?}"
                )))
            }
        };
        if b != f.size()[0] || logits.kind() != f.kind() {
            return Err(Error::Input(format!(
                "group loss: logits {:?} ({:?}) do not match features {:?} ({:?})",
                logits.size(),
                logits.kind(),
                f.size(),
                f.kind()
            )));
        }
        let labels = labels.to_device(f.device());
        if b > 0 {
            let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
            if lo < 0 || hi >= c {
                return Err(Error::Input(format!(
                    "group loss: labels range over [{lo}, {hi}] but the classifier has {c} classes"
                )));
            }
        }
        Ok(c)
    }

    /// Group Loss of features `f` `[B, F]`, classifier `logits` `[B, C]` and `labels`
    /// `[B]` (class indices into the logits' columns).
    ///
    /// ```
    /// use dml::loss::GroupLoss;
    /// let g = GroupLoss { temperature: 24.0, anchors: 1, iterations: 1, ce_weight: 1.0 };
    /// let f = tch::Tensor::randn([6, 5], (tch::Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
    /// let logits = tch::Tensor::randn([6, 3], (tch::Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
    /// let labels = tch::Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2]);
    /// let out = g.compute_with_logits(&f, &logits, &labels)?;
    /// out.loss.backward();
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn compute_with_logits(
        &self,
        f: &Tensor,
        logits: &Tensor,
        labels: &Tensor,
    ) -> Result<LossOutput> {
        let c = self.check(f, logits, labels)?;
        let b = f.size()[0];
        let labels = labels.to_device(f.device());
        let kind = f.kind();
        let w = Self::affinity(f);
        let anchors = self.anchor_mask(&labels)?;
        let soft = (logits / self.temperature).softmax(1, kind);
        let onehot = labels.one_hot(c).to_kind(kind);
        let mut x = soft.where_self(&anchors.logical_not().unsqueeze(1), &onehot);
        for _ in 0..self.iterations {
            x = &x * w.matmul(&x);
            x = &x / x.sum_dim_intlist([1i64].as_slice(), true, kind);
        }
        let nll = (&x + 1e-12).log().nll_loss(&labels);
        let ce = logits.log_softmax(1, kind).nll_loss(&labels);
        let loss = nll + ce * self.ce_weight;
        let stats = tch::no_grad(|| {
            let mut acc = StatsAcc::default();
            let unl = count(&anchors.logical_not());
            acc.mined = unl;
            acc.active = unl;
            acc.contributing = b;
            let xn = crate::ops::normalize(&f.detach());
            let s = xn.matmul(&xn.tr());
            let (pos, neg) = super::distance::label_masks(&labels, 0, b);
            acc.add_pos(&s, &pos);
            acc.add_neg(&s, &neg);
            acc.finish(b)
        });
        Ok(LossOutput { loss, stats })
    }
}
