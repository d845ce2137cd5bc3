//! The trunk interface and the registry of torchvision architectures.
//!
//! Every trunk keeps torchvision's parameter and buffer names under its path (e.g.
//! `trunk.layer1.0.conv1.weight`), drops the classifier and returns the last feature map.
use tch::{nn, Tensor};

use super::{bninception, densenet, efficientnet, inception_v3, mobilenet_v2, resnet};
use crate::error::Result;

/// A convolutional trunk: images `[B, 3, H, W]` → last feature map `[B, C, h, w]`.
pub trait Trunk: std::fmt::Debug {
    /// Feature map of `x`; `bn_train` selects batch statistics (true) or running ones.
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor;
    /// Channels `C` of the feature map.
    fn out_channels(&self) -> usize;
    /// VarStore paths of every BatchNorm layer, e.g. `trunk.layer1.0.bn1`.
    fn batchnorm_prefixes(&self) -> Vec<String>;
    /// The trunk's own input convention from images normalised the torchvision way
    /// (RGB, `(x/255 − mean) / std` with ImageNet's statistics), which is what the
    /// loaders produce for every trunk; torchvision trunks take them as they are.
    fn convert_input(&self, x: &Tensor) -> Tensor {
        x.shallow_clone()
    }
}

/// Every trunk name [`build`] accepts: [`crate::config::TRUNKS`].
pub fn known() -> Vec<&'static str> {
    crate::config::TRUNKS.to_vec()
}

/// Builds the trunk `arch` under `p` with torchvision's initialisation (from the
/// current `tch::manual_seed` state). `last_stride` (1 or 2) is the stride of ResNet's
/// layer4; other families only accept 2.
///
/// ```
/// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let t = dml::model::trunk::build(&(vs.root() / "trunk"), "resnet18", 2)?;
/// assert_eq!(t.out_channels(), 512);
/// assert!(dml::model::trunk::build(&vs.root(), "vgg16", 2).is_err());
/// # Ok::<(), dml::Error>(())
/// ```
pub fn build(p: &nn::Path, arch: &str, last_stride: usize) -> Result<Box<dyn Trunk>> {
    crate::config::check_trunk(arch, last_stride)?;
    Ok(match arch {
        a if a.starts_with("resnet") => Box::new(resnet::ResNet::new(p, a, last_stride)?),
        a if a.starts_with("densenet") => Box::new(densenet::DenseNet::new(p, a)?),
        a if a.starts_with("efficientnet") => Box::new(efficientnet::EfficientNet::new(p, a)?),
        "inception_v3" => Box::new(inception_v3::InceptionV3::new(p)),
        "bninception" => Box::new(bninception::BnInception::new(p)),
        _ => Box::new(mobilenet_v2::MobileNetV2::new(p)),
    })
}
