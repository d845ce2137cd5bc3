//! Chunked evaluation with exact gradients in bounded memory.
//!
//! A loss over the batch is a function of the normalised embeddings `x̂ = normalize(E)`
//! through a distance matrix whose rows (anchors) it reads independently. The losses
//! here therefore:
//!
//! 1. make a detached **leaf** copy `x̃` of `x̂` that requires grad;
//! 2. for each chunk of anchor rows, build that chunk's `[rows, B]` distances from `x̃`,
//!    the chunk's loss terms, and call `backward` at once, which adds the chunk's
//!    gradient into `x̃.grad` and frees the chunk's graph;
//! 3. return `value + S − S.detach()` with `S = Σ x̂ ⊙ x̃.grad`: its value is the loss
//!    and its gradient with respect to `E` is `x̃.grad` pulled back through the
//!    normalisation, i.e. the exact gradient.
//!
//! With one chunk (B small enough for the budget) the operations are those of PML on
//! the whole matrix, so values and gradients agree to rounding.
use tch::{Kind, Tensor};

use crate::ops::normalize;

/// Default size of one chunk's largest tensor, in elements (64 MiB of f32).
pub const DEFAULT_BUDGET: i64 = 1 << 24;

/// The normalised embeddings (in the caller's graph) and their detached leaf copy.
pub struct Leaf {
    /// `normalize(emb)`, differentiable with respect to `emb`.
    pub xn: Tensor,
    /// `xn.detach()` as a leaf that requires grad; chunks back-propagate into it.
    pub leaf: Tensor,
}

impl Leaf {
    /// Normalises `emb` and makes the leaf.
    pub fn new(emb: &Tensor) -> Self {
        let xn = normalize(emb);
        let leaf = xn.detach().set_requires_grad(true);
        Leaf { xn, leaf }
    }

    /// Rows `start..start+len` of the leaf (the leaf itself when they are all rows, so
    /// that the one-chunk case runs PML's exact operations).
    pub fn rows(&self, start: i64, len: i64) -> Tensor {
        if start == 0 && len == self.leaf.size()[0] {
            self.leaf.shallow_clone()
        } else {
            self.leaf.narrow(0, start, len)
        }
    }

    /// The loss tensor: `value` (0-d) carrying the accumulated leaf gradient, multiplied
    /// by `grad_scale`, as its gradient.
    pub fn finish(&self, value: &Tensor, grad_scale: Option<f64>) -> Tensor {
        let mut g = self.leaf.grad();
        if !g.defined() {
            g = self.leaf.zeros_like();
        }
        if let Some(s) = grad_scale {
            g *= s;
        }
        let sur = (&self.xn * g).sum(self.xn.kind());
        value.detach() + &sur - sur.detach()
    }
}

/// PML's zero loss: `sum(emb * 0)`, 0 with a graph to `emb`.
pub fn zero_loss(emb: &Tensor) -> Tensor {
    (emb * 0.0).sum(emb.kind())
}

/// Runs `f` with gradient recording on (the chunks call `backward` inside).
pub fn with_grad<T>(f: impl FnOnce() -> T) -> T {
    tch::with_grad(f)
}

/// A 0-d tensor of `kind` holding `v`.
pub fn scalar(v: f64, kind: Kind, device: tch::Device) -> Tensor {
    Tensor::from(v).to_kind(kind).to_device(device)
}
