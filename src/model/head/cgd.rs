//! `model.head = "cgd"`: Combination of multiple Global Descriptors (Jun et al. 2019;
//! naver/cgd, training per leftthomas/CGD `model.py`).
//!
//! Local half (before the gather): each descriptor of `model.cgd_descriptors`, in order,
//! of the trunk map (C-d each): `S` = average pool, `M` = max pool, `G` = GeM
//! `(mean(clamp(x, 1e-6)^p))^(1/p)` with `p = model.gem_p`. (leftthomas/CGD computes
//! GeM as `mean(x^p).clamp(0)^(1/p)`; on the non-negative maps of a ReLU trunk the two
//! differ only where a whole channel is below 1e-6.)
//!
//! Global half: descriptor i → Linear(C, embedding_dim / n, no bias) → L2 normalise;
//! their concatenation L2-normalised again is the embedding (the metric loss) and the
//! test embedding. With `model.classes > 0`, the auxiliary head on the raw **first**
//! descriptor, BatchNorm1d(C) → Linear(C, classes), gives the logits (the trainer's
//! smoothed, temperature-scaled cross-entropy). Parameters keep the official names
//! (`head.post.main_modules.{i}.0`, `head.post.auxiliary_module.{0,1}`) and torch's
//! default initialisation.
use tch::{nn, nn::ModuleT, Tensor};

use super::classifier::{torch_linear, Classifier};
use super::{Head, HeadOutput, Pass};
use crate::error::Result;
use crate::ops::normalize;

/// One global descriptor of a feature map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Descriptor {
    /// `S`: sum (average) pooling, SPoC.
    Average,
    /// `M`: max pooling, MAC.
    Max,
    /// `G`: generalised mean pooling with exponent p.
    Gem(f64),
}

impl Descriptor {
    /// The descriptor `[b, C]` of a map `[b, C, h, w]`.
    pub fn apply(self, map: &Tensor) -> Tensor {
        let dims = [2i64, 3];
        match self {
            Descriptor::Average => map.mean_dim(dims.as_slice(), false, map.kind()),
            Descriptor::Max => super::basic::max_pool(map),
            Descriptor::Gem(p) => map
                .clamp_min(1e-6)
                .pow_tensor_scalar(p)
                .mean_dim(dims.as_slice(), false, map.kind())
                .pow_tensor_scalar(1.0 / p),
        }
    }
}

/// Parses `model.cgd_descriptors` (1 to 3 letters of `S`, `M`, `G`) for an embedding of
/// `dim` dimensions, which must divide evenly between them; `gem_p` is G's exponent.
///
/// ```
/// use dml::model::head::cgd::{parse_descriptors, Descriptor};
/// let d = parse_descriptors("SG", 1536, 3.0)?;
/// assert_eq!(d, vec![Descriptor::Average, Descriptor::Gem(3.0)]);
/// assert!(parse_descriptors("SX", 1536, 3.0).is_err());
/// assert!(parse_descriptors("SMG", 128, 3.0).is_err());
/// # Ok::<(), dml::Error>(())
/// ```
pub fn parse_descriptors(spec: &str, dim: usize, gem_p: f64) -> Result<Vec<Descriptor>> {
    crate::config::check_cgd_descriptors(spec, dim, gem_p)?;
    Ok(spec
        .chars()
        .map(|c| match c {
            'S' => Descriptor::Average,
            'M' => Descriptor::Max,
            _ => Descriptor::Gem(gem_p),
        })
        .collect())
}

/// The CGD head; see the module documentation.
#[derive(Debug)]
pub struct CgdHead {
    descriptors: Vec<Descriptor>,
    main: Vec<nn::Linear>,
    auxiliary: Option<(nn::BatchNorm, Classifier)>,
    dim: usize,
}

impl CgdHead {
    /// Builds the head under `p` (`head`) on a map of `channels` channels: the
    /// descriptors of `spec`, an embedding of `dim` dimensions, GeM exponent `gem_p`, and
    /// the auxiliary classifier over `classes` if positive.
    pub fn new(
        p: &nn::Path,
        channels: usize,
        spec: &str,
        dim: usize,
        gem_p: f64,
        classes: usize,
    ) -> Result<CgdHead> {
        let descriptors = parse_descriptors(spec, dim, gem_p)?;
        let k = dim / descriptors.len();
        let post = p / "post";
        let main = (0..descriptors.len())
            .map(|i| {
                torch_linear(
                    &(&post / "main_modules" / i.to_string() / "0"),
                    channels,
                    k,
                    false,
                )
            })
            .collect();
        let auxiliary = (classes > 0).then(|| {
            let a = &post / "auxiliary_module";
            (
                nn::batch_norm1d(&a / "0", channels as i64, Default::default()),
                Classifier::new(&(&a / "1"), channels, classes, true),
            )
        });
        Ok(CgdHead {
            descriptors,
            main,
            auxiliary,
            dim,
        })
    }
}

impl Head for CgdHead {
    fn local(&self, map: &Tensor, _pass: Pass) -> Vec<Tensor> {
        self.descriptors.iter().map(|d| d.apply(map)).collect()
    }

    fn global(&self, parts: &[Tensor], pass: Pass) -> HeadOutput {
        let each: Vec<Tensor> = parts
            .iter()
            .zip(&self.main)
            .map(|(x, fc)| normalize(&x.apply(fc)))
            .collect();
        let e = normalize(&Tensor::cat(&each, 1));
        let logits = self
            .auxiliary
            .iter()
            .map(|(bn, c)| c.forward(&bn.forward_t(&parts[0], pass.train)))
            .collect();
        HeadOutput {
            embeddings: vec![e.shallow_clone()],
            logits,
            test: e,
        }
    }

    fn dim(&self) -> usize {
        self.dim
    }
}
