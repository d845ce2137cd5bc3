//! torchvision's ResNet-18/34/50/101/152 (v1.5: stride on the 3×3 convolution) without
//! the classifier, with an optional stride-1 layer4.
use tch::{nn, Tensor};

use super::layers::{bn, conv, Bn, Conv, ConvOpts};
use super::trunk::Trunk;
use crate::error::{Error, Result};

/// Residual block: basic (two 3×3) or bottleneck (1×1, 3×3, 1×1 with expansion 4);
/// also BFE's extra bottleneck on the trunk map.
#[derive(Debug)]
pub(crate) struct Block {
    convs: Vec<(Conv, Bn)>,
    downsample: Option<(Conv, Bn)>,
}

impl Block {
    /// Builds a block under `p` from `cin` channels with `width` (×4 out for a
    /// bottleneck), recording its BatchNorm paths in `bns`; returns it and its output
    /// channels.
    pub(crate) fn new(
        p: &nn::Path,
        cin: i64,
        width: i64,
        stride: i64,
        bottleneck: bool,
        bns: &mut Vec<String>,
    ) -> (Block, i64) {
        let mut convs = Vec::new();
        let cout = if bottleneck {
            let cout = width * 4;
            let specs = [
                (cin, width, ConvOpts::new(1, 1, 0)),
                (width, width, ConvOpts::new(3, stride, 1)),
                (width, cout, ConvOpts::new(1, 1, 0)),
            ];
            for (i, (a, b, o)) in specs.into_iter().enumerate() {
                let c = conv(&(p / format!("conv{}", i + 1)), a, b, o);
                let n = bn(&(p / format!("bn{}", i + 1)), b, 1e-5, 0.1, bns);
                convs.push((c, n));
            }
            cout
        } else {
            let specs = [
                (cin, width, ConvOpts::new(3, stride, 1)),
                (width, width, ConvOpts::new(3, 1, 1)),
            ];
            for (i, (a, b, o)) in specs.into_iter().enumerate() {
                let c = conv(&(p / format!("conv{}", i + 1)), a, b, o);
                let n = bn(&(p / format!("bn{}", i + 1)), b, 1e-5, 0.1, bns);
                convs.push((c, n));
            }
            width
        };
        let downsample = (stride != 1 || cin != cout).then(|| {
            let d = p / "downsample";
            (
                conv(&(&d / "0"), cin, cout, ConvOpts::new(1, stride, 0)),
                bn(&(&d / "1"), cout, 1e-5, 0.1, bns),
            )
        });
        (Block { convs, downsample }, cout)
    }

    /// Applies the block; `train` selects BatchNorm batch statistics.
    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (c, n)) in self.convs.iter().enumerate() {
            y = n.forward(&c.forward(&y), train);
            if i < last {
                y = y.relu();
            }
        }
        let identity = match &self.downsample {
            Some((c, n)) => n.forward(&c.forward(x), train),
            None => x.shallow_clone(),
        };
        (y + identity).relu()
    }
}

/// A torchvision ResNet trunk (`conv1` … `layer4`).
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv,
    bn1: Bn,
    layers: Vec<Vec<Block>>,
    out: i64,
    bns: Vec<String>,
}

impl ResNet {
    /// Builds `resnet18` … `resnet152` under `p`; `last_stride` is layer4's stride (1 or 2).
    pub fn new(p: &nn::Path, arch: &str, last_stride: usize) -> Result<ResNet> {
        let (depths, bottleneck): ([usize; 4], bool) = match arch {
            "resnet18" => ([2, 2, 2, 2], false),
            "resnet34" => ([3, 4, 6, 3], false),
            "resnet50" => ([3, 4, 6, 3], true),
            "resnet101" => ([3, 4, 23, 3], true),
            "resnet152" => ([3, 8, 36, 3], true),
            other => {
                return Err(Error::Config(format!(
                    "model.trunk: unknown resnet `{other}`"
                )))
            }
        };
        let mut bns = Vec::new();
        let conv1 = conv(&(p / "conv1"), 3, 64, ConvOpts::new(7, 2, 3));
        let bn1 = bn(&(p / "bn1"), 64, 1e-5, 0.1, &mut bns);
        let mut cin = 64;
        let mut layers = Vec::new();
        for (i, &depth) in depths.iter().enumerate() {
            let width = 64 << i;
            let first_stride = match i {
                0 => 1,
                3 => last_stride as i64,
                _ => 2,
            };
            let lp = p / format!("layer{}", i + 1);
            let mut blocks = Vec::new();
            for j in 0..depth {
                let stride = if j == 0 { first_stride } else { 1 };
                let (b, cout) = Block::new(
                    &(&lp / j.to_string()),
                    cin,
                    width,
                    stride,
                    bottleneck,
                    &mut bns,
                );
                cin = cout;
                blocks.push(b);
            }
            layers.push(blocks);
        }
        Ok(ResNet {
            conv1,
            bn1,
            layers,
            out: cin,
            bns,
        })
    }
}

impl Trunk for ResNet {
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let mut y = self
            .bn1
            .forward(&self.conv1.forward(x), bn_train)
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for blocks in &self.layers {
            for b in blocks {
                y = b.forward(&y, bn_train);
            }
        }
        y
    }

    fn out_channels(&self) -> usize {
        self.out as usize
    }

    fn batchnorm_prefixes(&self) -> Vec<String> {
        self.bns.clone()
    }
}
