//! The plain heads: global average pooling, with or without a linear embedding.
use tch::{nn, Tensor};

use super::classifier::{torch_linear, Classifier};
use super::{Head, HeadOutput, Pass};
use crate::ops::normalize;

/// Global average pooling of `[B, C, h, w]` into `[B, C]`.
pub fn avg_pool(map: &Tensor) -> Tensor {
    map.mean_dim([2i64, 3].as_slice(), false, map.kind())
}

/// Global max pooling of `[B, C, h, w]` into `[B, C]`, as `nn.AdaptiveMaxPool2d(1)`:
/// among tied maxima the gradient goes to one position (the first), where `amax` would
/// split it between them. Ties are common after a ReLU or an erased rectangle (a
/// channel that is zero everywhere).
pub fn max_pool(map: &Tensor) -> Tensor {
    map.adaptive_max_pool2d([1, 1]).0.flatten(1, -1)
}

/// `model.head = "linear"`: average pool → linear → L2 normalisation. The linear layer
/// acts before the gather; the normalisation (row-wise) and the optional classifier on
/// the unnormalised projection act after it.
#[derive(Debug)]
pub struct LinearHead {
    fc: nn::Linear,
    dim: usize,
    classifier: Option<Classifier>,
}

impl LinearHead {
    /// The projection `head.fc` from `channels` to `dim`, and an optional classifier.
    pub fn new(
        p: &nn::Path,
        channels: usize,
        dim: usize,
        classifier: Option<Classifier>,
    ) -> LinearHead {
        LinearHead {
            fc: torch_linear(&(p / "fc"), channels, dim, true),
            dim,
            classifier,
        }
    }
}

impl Head for LinearHead {
    fn local(&self, map: &Tensor, _pass: Pass) -> Vec<Tensor> {
        vec![avg_pool(map).apply(&self.fc)]
    }

    fn global(&self, parts: &[Tensor], _pass: Pass) -> HeadOutput {
        let e = normalize(&parts[0]);
        HeadOutput {
            embeddings: vec![e.shallow_clone()],
            logits: self
                .classifier
                .iter()
                .map(|c| c.forward(&parts[0]))
                .collect(),
            test: e,
        }
    }

    fn dim(&self) -> usize {
        self.dim
    }
}

/// `model.head = "pool"`: the average-pooled trunk features, neither projected nor
/// normalised (the untrained baseline, and Group Loss's features with a classifier).
#[derive(Debug)]
pub struct PoolHead {
    dim: usize,
    classifier: Option<Classifier>,
}

impl PoolHead {
    /// Pooling of `channels` features, with an optional classifier.
    pub fn new(channels: usize, classifier: Option<Classifier>) -> PoolHead {
        PoolHead {
            dim: channels,
            classifier,
        }
    }
}

impl Head for PoolHead {
    fn local(&self, map: &Tensor, _pass: Pass) -> Vec<Tensor> {
        vec![avg_pool(map)]
    }

    fn global(&self, parts: &[Tensor], _pass: Pass) -> HeadOutput {
        let f = parts[0].shallow_clone();
        HeadOutput {
            embeddings: vec![f.shallow_clone()],
            logits: self.classifier.iter().map(|c| c.forward(&f)).collect(),
            test: f,
        }
    }

    fn dim(&self) -> usize {
        self.dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn max_pool_sends_the_gradient_of_tied_maxima_to_the_first() {
        // torch.nn.functional.adaptive_max_pool2d(x, 1) on [[1, 3], [3, 2]]: max 3, and
        // x.grad after .sum().backward() is [[0, 1], [0, 0]] (amax would give ½, ½).
        let x = Tensor::from_slice(&[1.0f64, 3.0, 3.0, 2.0])
            .view([1, 1, 2, 2])
            .set_requires_grad(true);
        let y = max_pool(&x);
        assert_eq!(y.size(), [1, 1]);
        assert_eq!(y.double_value(&[0, 0]), 3.0);
        y.sum(Kind::Double).backward();
        let g: Vec<f64> = Vec::try_from(x.grad().flatten(0, -1)).unwrap();
        assert_eq!(g, [0.0, 1.0, 0.0, 0.0]);
    }
}
