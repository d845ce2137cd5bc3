//! `model.head = "horde"`: HORDE, cascaded high-order moments as a regulariser
//! (Jacob et al., ICCV 2019; pierre-jacob/ICCV2019-Horde, `CascadedKOrder` in
//! `kerastools/models/horde_models.py` and `PartialKOrderBlock` in
//! `kerastools/layers/horde_layers.py`).
//!
//! On the trunk's last map `x` `[b, C, h, w]`, with 1×1 projections `W` from `C` to
//! `horde_dim` (no bias):
//! * order 1: average pool → linear `C → embedding_dim` (no bias) → L2;
//! * order 2: `T₂ = (W₂ₐ x) ⊙ (W₂ x)` per pixel;
//! * order k ≥ 3: `T_k = T_{k−1} ⊙ (W_k x)` (only the second input is projected);
//! * each order k ≥ 2: average pool → linear `horde_dim → embedding_dim` (no bias) → L2
//!   with learned projections; with fixed ±1 random Maclaurin projections
//!   (`horde_learned = false`) the official code skips that linear layer and the
//!   order's embedding is the L2-normalised pooled moment itself (`horde_dim`-d).
//!
//! Every weight is Glorot-uniform initialised (Keras's default for `Dense` and the
//! official choice for trainable projections). The projections, pooling and the
//! per-order linear layers act before the gather (their gradients are summed across
//! ranks); only the L2 normalisations (and an optional classifier) act after it.
//! Every order's embedding gets the metric loss; only order 1 is used at test time.
use tch::{nn, Kind, Tensor};

use super::basic::avg_pool;
use super::{Classifier, Head, HeadOutput, Pass};
use crate::ops::normalize;

/// Glorot (Xavier) uniform bound `√(6 / (fan_in + fan_out))`.
fn glorot(fan_in: usize, fan_out: usize) -> nn::Init {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A `[cout, cin, 1, 1]` projection: trainable Glorot-uniform, or fixed ±1 (random
/// Maclaurin, drawn from torch's seeded generator and not trainable).
fn projection(p: &nn::Path, name: &str, cin: usize, cout: usize, learned: bool) -> Tensor {
    let dims = [cout as i64, cin as i64, 1, 1];
    if learned {
        p.var(name, &dims, glorot(cin, cout))
    } else {
        let signs = Tensor::rand(dims, (Kind::Float, p.device())).ge(0.5);
        let pm = signs.to_kind(Kind::Float) * 2.0 - 1.0;
        p.add(name, pm, false)
    }
}

/// A linear layer without bias, Glorot-uniform initialised (Keras `Dense`).
fn dense(p: &nn::Path, cin: usize, cout: usize) -> nn::Linear {
    nn::linear(
        p,
        cin as i64,
        cout as i64,
        nn::LinearConfig {
            ws_init: glorot(cin, cout),
            bs_init: None,
            bias: false,
        },
    )
}

/// The HORDE head; see the module documentation.
///
/// Variables under `head`: `fc1` (order 1), `w2a`, `w2` … `w{order}` (the 1×1
/// projections, `[horde_dim, C, 1, 1]`) and, when learned, `fc2` … `fc{order}`.
#[derive(Debug)]
pub struct HordeHead {
    fc1: nn::Linear,
    first: Option<Tensor>,
    proj: Vec<Tensor>,
    fcs: Vec<nn::Linear>,
    dim: usize,
    classifier: Option<Classifier>,
}

impl HordeHead {
    /// Builds the head on `channels` input channels: orders 1 … `order` (≥ 1), moments
    /// of dimension `horde_dim`, embeddings of dimension `dim`, learned or fixed
    /// projections, and an optional classifier on the unnormalised order-1 embedding.
    ///
    /// ```
    /// use dml::model::head::{Head, HordeHead, Pass};
    /// use tch::{nn, Device, Kind, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let head = HordeHead::new(&(vs.root() / "head"), 16, 8, 3, 32, true, None);
    /// let map = Tensor::randn([4, 16, 3, 3], (Kind::Float, Device::Cpu));
    /// let out = head.global(&head.local(&map, Pass::eval()), Pass::eval());
    /// assert_eq!(out.embeddings.len(), 3); // orders 1, 2, 3
    /// assert_eq!(out.test.size(), vec![4, 8]); // order 1
    /// ```
    pub fn new(
        p: &nn::Path,
        channels: usize,
        dim: usize,
        order: usize,
        horde_dim: usize,
        learned: bool,
        classifier: Option<Classifier>,
    ) -> HordeHead {
        let fc1 = dense(&(p / "fc1"), channels, dim);
        let first = (order >= 2).then(|| projection(p, "w2a", channels, horde_dim, learned));
        let proj = (2..=order)
            .map(|k| projection(p, &format!("w{k}"), channels, horde_dim, learned))
            .collect();
        let fcs = match learned {
            true => (2..=order)
                .map(|k| dense(&(p / format!("fc{k}")), horde_dim, dim))
                .collect(),
            false => Vec::new(),
        };
        HordeHead {
            fc1,
            first,
            proj,
            fcs,
            dim,
            classifier,
        }
    }
}

/// A 1×1 convolution without bias.
fn conv1x1(x: &Tensor, w: &Tensor) -> Tensor {
    x.conv2d(w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
}

impl Head for HordeHead {
    fn local(&self, map: &Tensor, _pass: Pass) -> Vec<Tensor> {
        let mut parts = vec![avg_pool(map).apply(&self.fc1)];
        let Some(first) = &self.first else {
            return parts;
        };
        let mut moment = conv1x1(map, first);
        for (k, w) in self.proj.iter().enumerate() {
            // Not `*=`: that would multiply in place the factor the backward pass needs.
            moment = &moment * conv1x1(map, w);
            let pooled = avg_pool(&moment);
            parts.push(match self.fcs.get(k) {
                Some(fc) => pooled.apply(fc),
                None => pooled,
            });
        }
        parts
    }

    fn global(&self, parts: &[Tensor], _pass: Pass) -> HeadOutput {
        let embeddings: Vec<Tensor> = parts.iter().map(normalize).collect();
        HeadOutput {
            test: embeddings[0].shallow_clone(),
            logits: self
                .classifier
                .iter()
                .map(|c| c.forward(&parts[0]))
                .collect(),
            embeddings,
        }
    }

    fn dim(&self) -> usize {
        self.dim
    }
}
