//! Heads: what turns the trunk's feature map into embeddings (and logits).
//!
//! A head has two halves around the all-gather (DESIGN.md, "Exact gradients through
//! the all-gather"):
//! * [`Head::local`] maps this rank's feature map `[b, C, h, w]` to per-sample tensors
//!   `[b, d_i]` — everything that acts on feature maps (pooling, HORDE's projections,
//!   BFE's erasing branch). Its parameters live under `head.*` and their gradients are
//!   **summed** across ranks, like the trunk's.
//! * [`Head::global`] maps the gathered per-sample tensors of the **global** batch to
//!   the embeddings the losses see, the classifier logits and the test embedding —
//!   everything after the last per-sample tensor (BatchNorm over vectors, classifiers).
//!   Its parameters live under `head.post.*` and are computed identically on every
//!   rank, forward and backward (the trainer back-propagates the summed gradient of the
//!   objective's inputs through them), so their gradients are **averaged**, which only
//!   keeps the ranks bitwise together.
//!
//! Model code knows nothing of ranks: outside training (evaluation, embedding) the two
//! halves simply run back to back on one batch.
use tch::{nn, Tensor};

use crate::config::{HeadKind, ModelConfig};
use crate::error::{Error, Result};

mod basic;
pub mod bfe;
pub mod cgd;
pub mod classifier;
mod horde;

pub use basic::{avg_pool as basic_avg_pool, LinearHead, PoolHead};
pub use bfe::BfeHead;
pub use cgd::CgdHead;
pub use classifier::Classifier;
pub use horde::HordeHead;

/// VarStore prefix of the parameters that act after the gather.
pub const POST_GATHER: &str = "head.post.";

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Training (BatchNorm over vectors uses batch statistics; random erasing is on) or
    /// evaluation.
    pub train: bool,
    /// BatchNorm on feature maps uses batch statistics (training with `model.bn = "train"`).
    pub bn_maps: bool,
    /// Key of anything random that must agree over the global batch: `(train.seed, step)`.
    pub key: [u64; 2],
}

impl Pass {
    /// Evaluation: running statistics everywhere, nothing random.
    pub fn eval() -> Pass {
        Pass {
            train: false,
            bn_maps: false,
            key: [0, 0],
        }
    }
}

/// A head's output on a (global) batch.
#[derive(Debug)]
pub struct HeadOutput {
    /// The embeddings that each get the metric loss, `[B, D_i]` (one for the plain
    /// heads; one per branch for BFE, one per order for HORDE).
    pub embeddings: Vec<Tensor>,
    /// Classifier logits `[B, classes]`, each with a cross-entropy term (Group Loss uses
    /// the first as its priors).
    pub logits: Vec<Tensor>,
    /// The embedding used at test time, `[B, dim]`.
    pub test: Tensor,
}

impl HeadOutput {
    /// Detached copies of every tensor that require grad (leaves), in the same places.
    pub fn leaves(&self) -> HeadOutput {
        let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
        HeadOutput {
            embeddings: self.embeddings.iter().map(leaf).collect(),
            logits: self.logits.iter().map(leaf).collect(),
            test: leaf(&self.test),
        }
    }

    /// Every tensor: the embeddings, the logits, then the test embedding.
    pub fn tensors(&self) -> Vec<Tensor> {
        self.embeddings
            .iter()
            .chain(&self.logits)
            .chain(std::iter::once(&self.test))
            .map(Tensor::shallow_clone)
            .collect()
    }
}

/// The head of a model; see the module documentation for the two halves.
pub trait Head: std::fmt::Debug {
    /// Per-sample tensors `[b, d_i]` of this rank's feature map `map` `[b, C, h, w]`.
    fn local(&self, map: &Tensor, pass: Pass) -> Vec<Tensor>;
    /// Embeddings, logits and test embedding of the gathered per-sample tensors.
    fn global(&self, parts: &[Tensor], pass: Pass) -> HeadOutput;
    /// Dimension of the test embedding.
    fn dim(&self) -> usize;
    /// VarStore paths of the BatchNorm layers on feature maps (frozen with
    /// `model.bn = "frozen"`, like the trunk's).
    fn map_batchnorms(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Builds the head of `cfg` under `p` (`head`) on a trunk with `channels` output
/// channels.
///
/// ```
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let cfg = dml::config::ModelConfig { embedding_dim: 8, ..Default::default() };
/// let head = dml::model::head::build(&(vs.root() / "head"), &cfg, 16)?;
/// let map = Tensor::randn([4, 16, 3, 3], (Kind::Float, Device::Cpu));
/// let pass = dml::model::head::Pass::eval();
/// let out = head.global(&head.local(&map, pass), pass);
/// assert_eq!(out.test.size(), vec![4, 8]);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn build(p: &nn::Path, cfg: &ModelConfig, channels: usize) -> Result<Box<dyn Head>> {
    let classifier = |dim: usize| {
        (cfg.classes > 0)
            .then(|| Classifier::new(&(p / "post" / "classifier"), dim, cfg.classes, true))
    };
    match cfg.head {
        HeadKind::Linear => {
            if cfg.embedding_dim == 0 {
                return Err(Error::Config("model.embedding_dim must be positive".into()));
            }
            Ok(Box::new(LinearHead::new(
                p,
                channels,
                cfg.embedding_dim,
                classifier(cfg.embedding_dim),
            )))
        }
        HeadKind::Pool => Ok(Box::new(PoolHead::new(channels, classifier(channels)))),
        HeadKind::Horde => {
            if cfg.embedding_dim == 0 || cfg.horde_order == 0 || cfg.horde_dim == 0 {
                return Err(Error::Config(
                    "model.embedding_dim, model.horde_order and model.horde_dim must be positive"
                        .into(),
                ));
            }
            Ok(Box::new(HordeHead::new(
                p,
                channels,
                cfg.embedding_dim,
                cfg.horde_order,
                cfg.horde_dim,
                cfg.horde_learned,
                classifier(cfg.embedding_dim),
            )))
        }
        HeadKind::Bfe => Ok(Box::new(BfeHead::new(
            p,
            channels,
            cfg.bfe_erase,
            cfg.classes,
        )?)),
        HeadKind::Cgd => Ok(Box::new(CgdHead::new(
            p,
            channels,
            &cfg.cgd_descriptors,
            cfg.embedding_dim,
            cfg.gem_p,
            cfg.classes,
        )?)),
    }
}
