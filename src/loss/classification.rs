//! Cross-entropy with label smoothing and temperature, the classification term of the
//! heads with a classifier (BFE's `CrossEntropyLabelSmooth`, CGD's
//! `LabelSmoothingCrossEntropyLoss`).
use tch::Tensor;

use super::Shard;

/// `mean_i [(1 − ε)·(−log p_i[y_i]) + ε·mean_c(−log p_i[c])]` with
/// `p = softmax(logits / T)`; equal to
/// `torch.nn.functional.cross_entropy(logits / T, y, label_smoothing=ε)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothedCrossEntropy {
    /// Label smoothing ε in `[0, 1)`.
    pub smoothing: f64,
    /// Temperature T > 0.
    pub temperature: f64,
}

impl SmoothedCrossEntropy {
    /// The mean loss of `logits` `[B, C]` against class indices `labels` `[B]`.
    ///
    /// ```
    /// use dml::loss::classification::SmoothedCrossEntropy;
    /// // Two classes, equal logits: −log ½ whatever ε.
    /// let ce = SmoothedCrossEntropy { smoothing: 0.1, temperature: 0.5 };
    /// let l = ce.compute(&tch::Tensor::zeros([1, 2], tch::kind::FLOAT_CPU), &tch::Tensor::from_slice(&[1i64]));
    /// assert!((l.double_value(&[]) - 2f64.ln()).abs() < 1e-6);
    /// ```
    pub fn compute(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        let kind = logits.kind();
        let logp = (logits / self.temperature).log_softmax(1, kind);
        let nll = logp.nll_loss(labels);
        if self.smoothing == 0.0 {
            return nll;
        }
        let uniform = -logp.mean_dim([1i64].as_slice(), false, kind).mean(kind);
        nll * (1.0 - self.smoothing) + uniform * self.smoothing
    }

    /// This share's part of [`SmoothedCrossEntropy::compute`] over the global batch: the
    /// terms of the shard's rows, divided by the whole batch's size (the parts of all
    /// shares sum to the mean). The whole loss, op for op, when the shard is the whole batch.
    pub fn compute_shard(&self, logits: &Tensor, labels: &Tensor, shard: &Shard) -> Tensor {
        let b = logits.size()[0];
        if shard.covers(b) {
            return self.compute(logits, labels);
        }
        let kind = logits.kind();
        let own = logits.narrow(0, shard.start, shard.len);
        let y = labels.narrow(0, shard.start, shard.len);
        let logp = (own / self.temperature).log_softmax(1, kind);
        let scale = 1.0 / b.max(1) as f64;
        let nll = logp.nll_loss_nd::<Tensor>(&y, None, tch::Reduction::Sum, -100) * scale;
        if self.smoothing == 0.0 {
            return nll;
        }
        let uniform = -logp.mean_dim([1i64].as_slice(), false, kind).sum(kind) * scale;
        nll * (1.0 - self.smoothing) + uniform * self.smoothing
    }
}
