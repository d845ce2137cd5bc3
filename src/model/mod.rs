//! Models: a trunk returning the last feature map, and a head producing the embedding.
//!
//! Model code knows nothing of ranks: [`Model::forward`] maps this rank's images to
//! this rank's embeddings; the trainer gathers them.
pub mod resnet;
pub mod weights;

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::config::{BnMode, HeadKind, ModelConfig};
use crate::error::{Error, Result};

/// The trunk families dml builds.
#[derive(Debug)]
enum Trunk {
    ResNet(resnet::ResNet),
}

impl Trunk {
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        match self {
            Trunk::ResNet(r) => r.forward(x, bn_train),
        }
    }

    fn out_channels(&self) -> usize {
        match self {
            Trunk::ResNet(r) => r.out_channels(),
        }
    }

    fn batchnorm_prefixes(&self) -> &[String] {
        match self {
            Trunk::ResNet(r) => r.batchnorm_prefixes(),
        }
    }
}

/// Trunk + head with its parameters in one `VarStore` (keys `trunk.*`, `head.*`).
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
    trunk: Trunk,
    fc: Option<nn::Linear>,
    bn: BnMode,
    trainable: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("trunk", &self.trunk)
            .field("params", &self.trainable.len())
            .finish()
    }
}

/// True if `name` (a VarStore key) belongs to one of the BatchNorm layers.
fn in_batchnorm(name: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        name.strip_prefix("trunk.")
            .and_then(|n| n.strip_prefix(p.as_str()))
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

impl Model {
    /// Builds the model with parameters initialised from `seed` (identical on every rank).
    pub fn new(cfg: &ModelConfig, device: Device, kind: Kind, seed: u64) -> Result<Model> {
        tch::manual_seed(seed as i64);
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let trunk = match cfg.trunk.as_str() {
            t if t.starts_with("resnet") => Trunk::ResNet(resnet::ResNet::new(
                &(&root / "trunk"),
                t,
                cfg.last_stride,
            )?),
            other => {
                return Err(Error::Config(format!(
                    "model.trunk: unknown trunk `{other}`; known: resnet18, resnet34, resnet50, resnet101, resnet152"
                )))
            }
        };
        let fc = match cfg.head {
            HeadKind::Linear => Some(nn::linear(
                &root / "head" / "fc",
                trunk.out_channels() as i64,
                cfg.embedding_dim as i64,
                Default::default(),
            )),
            HeadKind::Pool => None,
        };
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
        }
        let bn_prefixes = trunk.batchnorm_prefixes().to_vec();
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
            fc,
            bn: cfg.bn,
            trainable,
        })
    }

    /// Embeddings of a batch of normalised images `[B, 3, H, W]`. `train` selects the
    /// BatchNorm behaviour (batch statistics only with `model.bn = "train"`).
    pub fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        let bn_train = train && self.bn == BnMode::Train;
        let map = self.trunk.forward(images, bn_train);
        let pooled = map.mean_dim(&[2i64, 3][..], false, map.kind());
        match &self.fc {
            Some(fc) => {
                let e = pooled.apply(fc);
                let norm = e.norm_scalaropt_dim(2.0, &[1i64][..], true).clamp_min(1e-12);
                e / norm
            }
            None => pooled,
        }
    }

    /// Trainable parameters by name, sorted (the same order on every rank).
    pub fn trainable(&self) -> &[(String, Tensor)] {
        &self.trainable
    }

    /// Output dimension.
    pub fn embedding_dim(&self) -> usize {
        match &self.fc {
            Some(fc) => fc.ws.size()[0] as usize,
            None => self.trunk.out_channels(),
        }
    }

    /// Floating-point kind of the parameters.
    pub fn kind(&self) -> Kind {
        self.vs.kind()
    }

    /// Device of the parameters.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Every variable (parameters and BatchNorm buffers) by name, sorted.
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Writes every variable to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let vars = self.named_variables();
        let cpu: Vec<(String, Tensor)> = vars
            .iter()
            .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu)))
            .collect();
        Tensor::write_safetensors(&cpu, path)?;
        Ok(())
    }

    /// Loads every variable from a safetensors file written by [`Model::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved = Tensor::read_safetensors(path)
            .map_err(|e| Error::Train(format!("cannot read weights {}: {e}", path.display())))?;
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
