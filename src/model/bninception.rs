//! BN-Inception (Ioffe & Szegedy 2015), the trunk of "A Metric Learning Reality Check"
//! and of most DML papers, with the parameter names of the PyTorch port the DML code
//! bases use (Cadene/pretrained-models.pytorch `bninception`: `conv1_7x7_s2`,
//! `inception_3a_1x1_bn`, …), so that its ImageNet weights import one to one
//! (`tools/torchvision_to_safetensors.py --arch bninception --weights
//! bn_inception-239d2248.pth`). Those weights expect BGR pixels in [0, 255] minus
//! (104, 117, 128) (Caffe's convention); [`Trunk::convert_input`] turns the loaders'
//! torchvision-normalised RGB into exactly that, so the ported weights see the inputs
//! they were trained on. Reference: `tools/bninception.py`.
use tch::Tensor;

use super::layers::{bn, conv, Bn, Conv, ConvInit, ConvOpts};
use super::trunk::Trunk;
use crate::data::loader::{IMAGENET_MEAN, IMAGENET_STD};
use tch::nn;

/// How an Inception block pools in its last branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolKind {
    /// 3×3 average, stride 1, padding 1 (padding counted), then a projection.
    Avg,
    /// 3×3 max, stride 1, padding 1, then a projection (block 5b).
    Max1,
    /// 3×3 max, stride 2, no projection (the reduction blocks 3c and 4e).
    Max2,
}

/// One block: (name, in, 1×1, 3×3 reduce, 3×3, double reduce, double 3×3, pool,
/// pool projection, stride of the 3×3 branches).
type Spec = (
    &'static str,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    PoolKind,
    i64,
    i64,
);

const BLOCKS: [Spec; 10] = [
    ("3a", 192, 64, 64, 64, 64, 96, PoolKind::Avg, 32, 1),
    ("3b", 256, 64, 64, 96, 64, 96, PoolKind::Avg, 64, 1),
    ("3c", 320, 0, 128, 160, 64, 96, PoolKind::Max2, 0, 2),
    ("4a", 576, 224, 64, 96, 96, 128, PoolKind::Avg, 128, 1),
    ("4b", 576, 192, 96, 128, 96, 128, PoolKind::Avg, 128, 1),
    ("4c", 576, 160, 128, 160, 128, 160, PoolKind::Avg, 128, 1),
    ("4d", 608, 96, 128, 192, 160, 192, PoolKind::Avg, 128, 1),
    ("4e", 608, 0, 128, 192, 192, 256, PoolKind::Max2, 0, 2),
    ("5a", 1056, 352, 192, 320, 160, 224, PoolKind::Avg, 128, 1),
    ("5b", 1024, 352, 192, 320, 192, 224, PoolKind::Max1, 128, 1),
];

/// Convolution (with bias) + BatchNorm (eps 1e-5, the port's momentum 0.9) + ReLU,
/// named `NAME` and `NAME_bn`.
#[derive(Debug)]
struct Unit {
    conv: Conv,
    bn: Bn,
}

impl Unit {
    fn new(
        p: &nn::Path,
        name: &str,
        cin: i64,
        cout: i64,
        k: i64,
        s: i64,
        bns: &mut Vec<String>,
    ) -> Unit {
        let opts = ConvOpts::new(k, s, k / 2)
            .bias()
            .init(ConvInit::TorchDefault);
        Unit {
            conv: conv(&(p / name), cin, cout, opts),
            bn: bn(&(p / format!("{name}_bn")), cout, 1e-5, 0.9, bns),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward(&self.conv.forward(x), train).relu()
    }
}

/// An Inception block: its branches concatenated along channels.
#[derive(Debug)]
struct Block {
    one: Option<Unit>,
    three: [Unit; 2],
    double: [Unit; 3],
    pool: PoolKind,
    proj: Option<Unit>,
}

impl Block {
    fn new(p: &nn::Path, spec: Spec, bns: &mut Vec<String>) -> Block {
        let (name, cin, c1, r3, c3, rd, cd, pool, proj, s) = spec;
        let n = |b: &str| format!("inception_{name}_{b}");
        Block {
            one: (c1 > 0).then(|| Unit::new(p, &n("1x1"), cin, c1, 1, 1, bns)),
            three: [
                Unit::new(p, &n("3x3_reduce"), cin, r3, 1, 1, bns),
                Unit::new(p, &n("3x3"), r3, c3, 3, s, bns),
            ],
            double: [
                Unit::new(p, &n("double_3x3_reduce"), cin, rd, 1, 1, bns),
                Unit::new(p, &n("double_3x3_1"), rd, cd, 3, 1, bns),
                Unit::new(p, &n("double_3x3_2"), cd, cd, 3, s, bns),
            ],
            pool,
            proj: (proj > 0).then(|| Unit::new(p, &n("pool_proj"), cin, proj, 1, 1, bns)),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut outs = Vec::with_capacity(4);
        if let Some(u) = &self.one {
            outs.push(u.forward(x, train));
        }
        let chain = |units: &[Unit]| {
            units
                .iter()
                .fold(x.shallow_clone(), |y, u| u.forward(&y, train))
        };
        outs.push(chain(&self.three));
        outs.push(chain(&self.double));
        let pooled = match self.pool {
            PoolKind::Avg => x.avg_pool2d([3, 3], [1, 1], [1, 1], true, true, None),
            PoolKind::Max1 => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], true),
            PoolKind::Max2 => x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true),
        };
        outs.push(match &self.proj {
            Some(u) => u.forward(&pooled, train),
            None => pooled,
        });
        Tensor::cat(&outs, 1)
    }
}

/// The BN-Inception trunk: images → the 1024-channel map of block 5b (stride 32).
#[derive(Debug)]
pub struct BnInception {
    stem: [Unit; 3],
    blocks: Vec<Block>,
    bns: Vec<String>,
}

impl BnInception {
    /// Builds the trunk under `p` with torch's default initialisation.
    pub fn new(p: &nn::Path) -> BnInception {
        let mut bns = Vec::new();
        let stem = [
            Unit::new(p, "conv1_7x7_s2", 3, 64, 7, 2, &mut bns),
            Unit::new(p, "conv2_3x3_reduce", 64, 64, 1, 1, &mut bns),
            Unit::new(p, "conv2_3x3", 64, 192, 3, 1, &mut bns),
        ];
        let blocks = BLOCKS.iter().map(|s| Block::new(p, *s, &mut bns)).collect();
        BnInception { stem, blocks, bns }
    }
}

impl Trunk for BnInception {
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let pool = |y: Tensor| y.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
        let y = pool(self.stem[0].forward(x, bn_train));
        let y = self.stem[2].forward(&self.stem[1].forward(&y, bn_train), bn_train);
        self.blocks
            .iter()
            .fold(pool(y), |y, b| b.forward(&y, bn_train))
    }

    fn out_channels(&self) -> usize {
        1024
    }

    fn batchnorm_prefixes(&self) -> Vec<String> {
        self.bns.clone()
    }

    /// BGR in [0, 255] minus (104, 117, 128) from torchvision-normalised RGB:
    /// `255·(x·std + mean) − caffe_mean`, channels reversed.
    fn convert_input(&self, x: &Tensor) -> Tensor {
        let (kind, device) = (x.kind(), x.device());
        let per_channel = |v: [f64; 3]| {
            Tensor::from_slice(&v)
                .to_kind(kind)
                .to_device(device)
                .view([1, 3, 1, 1])
        };
        let [m, s] = [IMAGENET_MEAN, IMAGENET_STD].map(|v| [v[2], v[1], v[0]]);
        let scale = per_channel(s.map(|v| 255.0 * v));
        let shift = per_channel([0, 1, 2].map(|c| 255.0 * m[c] - CAFFE_MEAN_BGR[c]));
        let bgr = x.flip([1]);
        bgr * scale + shift
    }
}

/// The per-channel means (B, G, R) the ported ImageNet weights subtract.
pub const CAFFE_MEAN_BGR: [f64; 3] = [104.0, 117.0, 128.0];
