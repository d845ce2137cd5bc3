//! Models: a trunk returning the last feature map, and a head producing the embeddings.
//!
//! Model code knows nothing of ranks: [`Model::forward_local`] maps this rank's images
//! to per-sample tensors, the trainer gathers them, and [`Model::forward_global`] maps
//! the gathered global batch to embeddings and logits ([`head`] explains the split).
//! [`Model::forward`] runs both halves on one batch (evaluation, embedding).
pub mod bninception;
pub mod densenet;
pub mod efficientnet;
pub mod head;
pub mod inception_v3;
pub mod layers;
pub mod mobilenet_v2;
pub mod resnet;
pub mod tensor_file;
pub mod trunk;
pub mod weights;

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::config::{BnMode, ModelConfig};
use crate::error::{Error, Result};

pub use head::{Head, HeadOutput, Pass};
pub use trunk::Trunk;

/// Trunk + head with its parameters in one `VarStore` (keys `trunk.*`, `head.*`; the
/// head's parameters after the gather under `head.post.*`).
///
/// ```no_run
/// use dml::config::ModelConfig;
/// let m = dml::model::Model::new(&ModelConfig::default(), tch::Device::Cpu, tch::Kind::Float, 0)?;
/// let e = m.forward(&tch::Tensor::zeros([2, 3, 64, 64], (tch::Kind::Float, tch::Device::Cpu)), false);
/// assert_eq!(e.size(), vec![2, 128]);
/// # Ok::<(), dml::Error>(())
/// ```
pub struct Model {
    /// All parameters and buffers.
    pub vs: nn::VarStore,
    trunk: Box<dyn Trunk>,
    head: Box<dyn Head>,
    bn: BnMode,
    seed: u64,
    map_bns: Vec<String>,
    channels_last: bool,
    trainable: Vec<(String, Tensor)>,
}

/// The same 4-d tensor `[N, C, H, W]` stored channels-last (NHWC strides), what
/// `x.contiguous(memory_format=torch.channels_last)` gives; other tensors unchanged.
///
/// ```
/// let x = tch::Tensor::randn([2, 3, 4, 5], tch::kind::FLOAT_CPU);
/// let y = dml::model::channels_last(&x);
/// assert_eq!(y.stride(), vec![60, 1, 15, 3]);
/// assert!(y.equal(&x));
/// ```
pub fn channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("trunk", &self.trunk)
            .field("params", &self.trainable.len())
            .finish()
    }
}

/// True if `name` (a VarStore key) belongs to one of the BatchNorm layers (full paths).
fn in_batchnorm(name: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        name.strip_prefix(p.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

impl Model {
    /// Builds the model with parameters initialised from `seed` (identical on every rank).
    pub fn new(cfg: &ModelConfig, device: Device, kind: Kind, seed: u64) -> Result<Model> {
        tch::manual_seed(seed as i64);
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let trunk = trunk::build(&(&root / "trunk"), &cfg.trunk, cfg.last_stride)?;
        let head = head::build(&(&root / "head"), cfg, trunk.out_channels())?;
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        if !cfg.pretrained.is_empty() {
            let report = weights::load_pretrained(
                &mut vs,
                Path::new(&cfg.pretrained),
                "trunk.",
                cfg.pretrained_strict,
            )?;
            if !report.missing.is_empty() || !report.unexpected.is_empty() {
                eprintln!(
                    "warning: model.pretrained {}: {} missing and {} unexpected keys",
                    cfg.pretrained,
                    report.missing.len(),
                    report.unexpected.len()
                );
            }
            if !cfg.pretrained_sha256.is_empty() {
                weights::check_sha256(Path::new(&cfg.pretrained), &cfg.pretrained_sha256)?;
            }
        }
        if cfg.channels_last {
            tch::no_grad(|| {
                for (_, mut v) in vs.variables() {
                    if v.dim() == 4 {
                        v.set_data(&channels_last(&v));
                    }
                }
            });
        }
        let mut bn_prefixes = trunk.batchnorm_prefixes();
        bn_prefixes.extend(head.map_batchnorms());
        let mut trainable: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .filter(|(name, t)| {
                let frozen = cfg.bn == BnMode::Frozen && in_batchnorm(name, &bn_prefixes);
                if frozen {
                    let _ = t.set_requires_grad(false);
                }
                !frozen
            })
            .collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Model {
            vs,
            trunk,
            head,
            bn: cfg.bn,
            seed,
            map_bns: bn_prefixes,
            channels_last: cfg.channels_last,
            trainable,
        })
    }

    /// The pass of training step `step` (0-based), or evaluation for `None`.
    pub fn pass(&self, step: Option<u64>) -> Pass {
        match step {
            Some(step) => Pass {
                train: true,
                bn_maps: self.bn == BnMode::Train,
                key: [self.seed, step],
            },
            None => Pass::eval(),
        }
    }

    /// This rank's half: per-sample tensors `[b, d_i]` of normalised images
    /// `[b, 3, H, W]`, to be all-gathered (training step `step`, or evaluation).
    pub fn forward_local(&self, images: &Tensor, step: Option<u64>) -> Vec<Tensor> {
        let pass = self.pass(step);
        let map = self.trunk.forward(&self.trunk_input(images), pass.bn_maps);
        self.head.local(&map, pass)
    }

    /// The global half: embeddings, logits and test embedding of the gathered
    /// per-sample tensors of [`Model::forward_local`].
    pub fn forward_global(&self, parts: &[Tensor], step: Option<u64>) -> HeadOutput {
        self.head.global(parts, self.pass(step))
    }

    /// Test embeddings of a batch of normalised images `[B, 3, H, W]`: both halves on
    /// one batch. `train` runs them as in training step 0 (BatchNorm batch statistics
    /// per `model.bn`), otherwise in evaluation mode.
    pub fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        let step = train.then_some(0);
        self.forward_global(&self.forward_local(images, step), step)
            .test
    }

    /// The trunk's average-pooled feature map `[B, C]` in evaluation mode (what Divide
    /// and Conquer clusters: the penultimate features, before the head).
    pub fn trunk_pooled(&self, images: &Tensor) -> Tensor {
        head::basic_avg_pool(&self.trunk.forward(&self.trunk_input(images), false))
    }

    /// Normalised images in the trunk's own input convention
    /// ([`trunk::Trunk::convert_input`]), channels-last if `model.channels_last`.
    fn trunk_input(&self, images: &Tensor) -> Tensor {
        let x = self.trunk.convert_input(images);
        match self.channels_last {
            true => channels_last(&x),
            false => x,
        }
    }

    /// Channels of the trunk's feature map.
    pub fn trunk_channels(&self) -> usize {
        self.trunk.out_channels()
    }

    /// True if the VarStore key `name` is a parameter after the gather (its gradient is
    /// averaged across ranks, not summed).
    pub fn after_gather(name: &str) -> bool {
        name.starts_with(head::POST_GATHER)
    }

    /// The trunk's last feature map `[B, C, h, w]` of normalised images `[B, 3, H, W]`;
    /// `train` as in [`Model::forward`].
    pub fn feature_map(&self, images: &Tensor, train: bool) -> Tensor {
        let bn_train = train && self.bn == BnMode::Train;
        self.trunk.forward(&self.trunk_input(images), bn_train)
    }

    /// Trainable parameters by name, sorted (the same order on every rank).
    pub fn trainable(&self) -> &[(String, Tensor)] {
        &self.trainable
    }

    /// Copies `values` (names and shapes as [`Model::trainable`], e.g. an SWA average)
    /// into the trainable parameters.
    pub fn set_trainable(&self, values: &[(String, Tensor)]) -> Result<()> {
        if values.len() != self.trainable.len() {
            return Err(Error::Train(format!(
                "{} tensors given, the model has {} trainable parameters",
                values.len(),
                self.trainable.len()
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for ((name, p), (vname, v)) in self.trainable.iter().zip(values) {
                if name != vname || p.size() != v.size() {
                    return Err(Error::Train(format!(
                        "`{vname}` {:?} does not match parameter `{name}` {:?}",
                        v.size(),
                        p.size()
                    )));
                }
                let mut p = p.shallow_clone();
                p.f_copy_(v)?;
            }
            Ok(())
        })
    }

    /// Output dimension.
    pub fn embedding_dim(&self) -> usize {
        self.head.dim()
    }

    /// Floating-point kind of the parameters.
    pub fn kind(&self) -> Kind {
        self.vs.kind()
    }

    /// Device of the parameters.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The running statistics (`running_mean`, `running_var`) of every BatchNorm on
    /// feature maps (trunk and head), by name, sorted.
    pub fn map_batchnorm_buffers(&self) -> Vec<(String, Tensor)> {
        self.named_variables()
            .into_iter()
            .filter(|(n, _)| n.ends_with(".running_mean") || n.ends_with(".running_var"))
            .filter(|(n, _)| in_batchnorm(n, &self.map_bns))
            .collect()
    }

    /// Every variable (parameters and BatchNorm buffers) by name, sorted.
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Writes every variable to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        tensor_file::write(path, &self.named_variables())
    }

    /// Loads every variable from a safetensors file written by [`Model::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved = tensor_file::read(path)?;
        let saved: std::collections::HashMap<String, Tensor> = saved.into_iter().collect();
        tch::no_grad(|| -> Result<()> {
            for (name, t) in self.vs.variables() {
                let src = saved.get(&name).ok_or_else(|| {
                    Error::Train(format!("{}: no tensor `{name}`", path.display()))
                })?;
                if src.size() != t.size() {
                    return Err(Error::Train(format!(
                        "{}: `{name}` has shape {:?}, the model expects {:?}",
                        path.display(),
                        src.size(),
                        t.size()
                    )));
                }
                let mut t = t;
                t.f_copy_(src)?;
            }
            Ok(())
        })
    }
}
