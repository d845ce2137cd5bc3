//! torchvision's DenseNet-121/161/169/201 without the classifier. The trunk output is
//! `relu(features(x))`, the map torchvision pools.
use tch::{nn, Tensor};

use super::layers::{bn, conv, Bn, Conv, ConvInit, ConvOpts};
use super::trunk::Trunk;
use crate::error::{Error, Result};

fn opts(k: i64, s: i64, p: i64) -> ConvOpts {
    // DenseNet uses `kaiming_normal_(w)`: fan-in.
    ConvOpts::new(k, s, p).init(ConvInit::KaimingFanIn)
}

/// BN-ReLU-conv1×1 (bottleneck to 4k) then BN-ReLU-conv3×3 (k new channels).
#[derive(Debug)]
struct DenseLayer {
    norm1: Bn,
    conv1: Conv,
    norm2: Bn,
    conv2: Conv,
}

impl DenseLayer {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.conv1.forward(&self.norm1.forward(x, train).relu());
        self.conv2.forward(&self.norm2.forward(&y, train).relu())
    }
}

/// BN-ReLU-conv1×1-avgpool2 between dense blocks.
#[derive(Debug)]
struct Transition {
    norm: Bn,
    conv: Conv,
}

/// A torchvision DenseNet trunk (`features.conv0` … `features.norm5`).
#[derive(Debug)]
pub struct DenseNet {
    conv0: Conv,
    norm0: Bn,
    blocks: Vec<(Vec<DenseLayer>, Option<Transition>)>,
    norm5: Bn,
    out: i64,
    bns: Vec<String>,
}

impl DenseNet {
    /// Builds `densenet121`, `densenet161`, `densenet169` or `densenet201` under `p`.
    pub fn new(p: &nn::Path, arch: &str) -> Result<DenseNet> {
        let (growth, config, init): (i64, [usize; 4], i64) = match arch {
            "densenet121" => (32, [6, 12, 24, 16], 64),
            "densenet161" => (48, [6, 12, 36, 24], 96),
            "densenet169" => (32, [6, 12, 32, 32], 64),
            "densenet201" => (32, [6, 12, 48, 32], 64),
            other => {
                return Err(Error::Config(format!(
                    "model.trunk: unknown densenet `{other}`"
                )))
            }
        };
        let (eps, mom) = (1e-5, 0.1);
        let f = p / "features";
        let mut bns = Vec::new();
        let conv0 = conv(&(&f / "conv0"), 3, init, opts(7, 2, 3));
        let norm0 = bn(&(&f / "norm0"), init, eps, mom, &mut bns);
        let mut c = init;
        let mut blocks = Vec::new();
        for (i, &n) in config.iter().enumerate() {
            let bp = &f / format!("denseblock{}", i + 1);
            let mut layers = Vec::new();
            for j in 0..n {
                let lp = &bp / format!("denselayer{}", j + 1);
                let cin = c + j as i64 * growth;
                let mid = 4 * growth;
                layers.push(DenseLayer {
                    norm1: bn(&(&lp / "norm1"), cin, eps, mom, &mut bns),
                    conv1: conv(&(&lp / "conv1"), cin, mid, opts(1, 1, 0)),
                    norm2: bn(&(&lp / "norm2"), mid, eps, mom, &mut bns),
                    conv2: conv(&(&lp / "conv2"), mid, growth, opts(3, 1, 1)),
                });
            }
            c += n as i64 * growth;
            let transition = (i + 1 < config.len()).then(|| {
                let tp = &f / format!("transition{}", i + 1);
                let t = Transition {
                    norm: bn(&(&tp / "norm"), c, eps, mom, &mut bns),
                    conv: conv(&(&tp / "conv"), c, c / 2, opts(1, 1, 0)),
                };
                c /= 2;
                t
            });
            blocks.push((layers, transition));
        }
        let norm5 = bn(&(&f / "norm5"), c, eps, mom, &mut bns);
        Ok(DenseNet {
            conv0,
            norm0,
            blocks,
            norm5,
            out: c,
            bns,
        })
    }
}

impl Trunk for DenseNet {
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let mut y = self
            .norm0
            .forward(&self.conv0.forward(x), bn_train)
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for (layers, transition) in &self.blocks {
            let mut feats = vec![y];
            for l in layers {
                let cat = Tensor::cat(&feats, 1);
                feats.push(l.forward(&cat, bn_train));
            }
            y = Tensor::cat(&feats, 1);
            if let Some(t) = transition {
                y = t
                    .conv
                    .forward(&t.norm.forward(&y, bn_train).relu())
                    .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
            }
        }
        self.norm5.forward(&y, bn_train).relu()
    }

    fn out_channels(&self) -> usize {
        self.out as usize
    }

    fn batchnorm_prefixes(&self) -> Vec<String> {
        self.bns.clone()
    }
}
