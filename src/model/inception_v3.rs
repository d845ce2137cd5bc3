//! torchvision's Inception v3 without the classifier and the auxiliary logits
//! (`transform_input = False`): `Conv2d_1a_3x3` … `Mixed_7c`, 2048 channels.
use tch::{nn, Tensor};

use super::layers::{conv_bn_act, Act, ConvBnAct, ConvInit, ConvOpts};
use super::trunk::Trunk;

/// `BasicConv2d(cin, cout, kernel, stride, padding)`: conv (no bias) → BN(eps 1e-3) → ReLU.
#[allow(clippy::too_many_arguments)]
fn basic(
    p: &nn::Path,
    name: &str,
    cin: i64,
    cout: i64,
    k: [i64; 2],
    s: i64,
    pad: [i64; 2],
    bns: &mut Vec<String>,
) -> ConvBnAct {
    let o = ConvOpts {
        k,
        stride: [s, s],
        padding: pad,
        groups: 1,
        bias: false,
        init: ConvInit::TruncNormal(0.1),
    };
    conv_bn_act(
        &(p / name),
        ("conv", "bn"),
        cin,
        cout,
        o,
        (1e-3, 0.1),
        Act::Relu,
        bns,
    )
}

/// A chain of BasicConv2d.
#[derive(Debug)]
struct Chain(Vec<ConvBnAct>);

impl Chain {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for c in &self.0 {
            y = c.forward(&y, train);
        }
        y
    }
}

/// How a Mixed block's pooling branch works.
#[derive(Debug)]
enum Pool {
    /// avg_pool 3×3 stride 1 pad 1, then a 1×1 BasicConv2d.
    AvgConv(Box<ConvBnAct>),
    /// max_pool 3×3 stride 2.
    Max,
}

/// One Mixed block: branches concatenated along channels. A branch is a chain, possibly
/// ending in a split into two parallel convolutions (InceptionE).
#[derive(Debug)]
struct Mixed {
    branches: Vec<(Chain, Option<(ConvBnAct, ConvBnAct)>)>,
    pool: Pool,
}

impl Mixed {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut outs = Vec::new();
        for (chain, split) in &self.branches {
            let y = chain.forward(x, train);
            match split {
                Some((a, b)) => outs.push(Tensor::cat(
                    &[a.forward(&y, train), b.forward(&y, train)],
                    1,
                )),
                None => outs.push(y),
            }
        }
        let pooled = match &self.pool {
            Pool::AvgConv(c) => {
                let y = x.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None::<i64>);
                c.forward(&y, train)
            }
            Pool::Max => x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false),
        };
        outs.push(pooled);
        Tensor::cat(&outs, 1)
    }
}

const K1: [i64; 2] = [1, 1];
const K3: [i64; 2] = [3, 3];
const P0: [i64; 2] = [0, 0];
const P1: [i64; 2] = [1, 1];

fn inception_a(p: &nn::Path, cin: i64, pool_features: i64, bns: &mut Vec<String>) -> Mixed {
    let b1 = Chain(vec![basic(p, "branch1x1", cin, 64, K1, 1, P0, bns)]);
    let b5 = Chain(vec![
        basic(p, "branch5x5_1", cin, 48, K1, 1, P0, bns),
        basic(p, "branch5x5_2", 48, 64, [5, 5], 1, [2, 2], bns),
    ]);
    let b3 = Chain(vec![
        basic(p, "branch3x3dbl_1", cin, 64, K1, 1, P0, bns),
        basic(p, "branch3x3dbl_2", 64, 96, K3, 1, P1, bns),
        basic(p, "branch3x3dbl_3", 96, 96, K3, 1, P1, bns),
    ]);
    let pool = Pool::AvgConv(Box::new(basic(
        p,
        "branch_pool",
        cin,
        pool_features,
        K1,
        1,
        P0,
        bns,
    )));
    Mixed {
        branches: vec![(b1, None), (b5, None), (b3, None)],
        pool,
    }
}

fn inception_b(p: &nn::Path, cin: i64, bns: &mut Vec<String>) -> Mixed {
    let b3 = Chain(vec![basic(p, "branch3x3", cin, 384, K3, 2, P0, bns)]);
    let bd = Chain(vec![
        basic(p, "branch3x3dbl_1", cin, 64, K1, 1, P0, bns),
        basic(p, "branch3x3dbl_2", 64, 96, K3, 1, P1, bns),
        basic(p, "branch3x3dbl_3", 96, 96, K3, 2, P0, bns),
    ]);
    Mixed {
        branches: vec![(b3, None), (bd, None)],
        pool: Pool::Max,
    }
}

fn inception_c(p: &nn::Path, cin: i64, c7: i64, bns: &mut Vec<String>) -> Mixed {
    let (k17, p17, k71, p71) = ([1, 7], [0, 3], [7, 1], [3, 0]);
    let b1 = Chain(vec![basic(p, "branch1x1", cin, 192, K1, 1, P0, bns)]);
    let b7 = Chain(vec![
        basic(p, "branch7x7_1", cin, c7, K1, 1, P0, bns),
        basic(p, "branch7x7_2", c7, c7, k17, 1, p17, bns),
        basic(p, "branch7x7_3", c7, 192, k71, 1, p71, bns),
    ]);
    let bd = Chain(vec![
        basic(p, "branch7x7dbl_1", cin, c7, K1, 1, P0, bns),
        basic(p, "branch7x7dbl_2", c7, c7, k71, 1, p71, bns),
        basic(p, "branch7x7dbl_3", c7, c7, k17, 1, p17, bns),
        basic(p, "branch7x7dbl_4", c7, c7, k71, 1, p71, bns),
        basic(p, "branch7x7dbl_5", c7, 192, k17, 1, p17, bns),
    ]);
    let pool = Pool::AvgConv(Box::new(basic(p, "branch_pool", cin, 192, K1, 1, P0, bns)));
    Mixed {
        branches: vec![(b1, None), (b7, None), (bd, None)],
        pool,
    }
}

fn inception_d(p: &nn::Path, cin: i64, bns: &mut Vec<String>) -> Mixed {
    let b3 = Chain(vec![
        basic(p, "branch3x3_1", cin, 192, K1, 1, P0, bns),
        basic(p, "branch3x3_2", 192, 320, K3, 2, P0, bns),
    ]);
    let b7 = Chain(vec![
        basic(p, "branch7x7x3_1", cin, 192, K1, 1, P0, bns),
        basic(p, "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3], bns),
        basic(p, "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0], bns),
        basic(p, "branch7x7x3_4", 192, 192, K3, 2, P0, bns),
    ]);
    Mixed {
        branches: vec![(b3, None), (b7, None)],
        pool: Pool::Max,
    }
}

fn inception_e(p: &nn::Path, cin: i64, bns: &mut Vec<String>) -> Mixed {
    let (k13, p13, k31, p31) = ([1, 3], [0, 1], [3, 1], [1, 0]);
    let b1 = Chain(vec![basic(p, "branch1x1", cin, 320, K1, 1, P0, bns)]);
    let b3 = Chain(vec![basic(p, "branch3x3_1", cin, 384, K1, 1, P0, bns)]);
    let b3s = (
        basic(p, "branch3x3_2a", 384, 384, k13, 1, p13, bns),
        basic(p, "branch3x3_2b", 384, 384, k31, 1, p31, bns),
    );
    let bd = Chain(vec![
        basic(p, "branch3x3dbl_1", cin, 448, K1, 1, P0, bns),
        basic(p, "branch3x3dbl_2", 448, 384, K3, 1, P1, bns),
    ]);
    let bds = (
        basic(p, "branch3x3dbl_3a", 384, 384, k13, 1, p13, bns),
        basic(p, "branch3x3dbl_3b", 384, 384, k31, 1, p31, bns),
    );
    let pool = Pool::AvgConv(Box::new(basic(p, "branch_pool", cin, 192, K1, 1, P0, bns)));
    Mixed {
        branches: vec![(b1, None), (b3, Some(b3s)), (bd, Some(bds))],
        pool,
    }
}

/// A torchvision Inception v3 trunk (no aux logits, no input transform).
#[derive(Debug)]
pub struct InceptionV3 {
    stem1: Chain,
    stem2: Chain,
    mixed: Vec<Mixed>,
    bns: Vec<String>,
}

impl InceptionV3 {
    /// Builds `inception_v3` under `p` (inputs of at least 75×75).
    pub fn new(p: &nn::Path) -> InceptionV3 {
        let mut bns = Vec::new();
        let b = &mut bns;
        let stem1 = Chain(vec![
            basic(p, "Conv2d_1a_3x3", 3, 32, K3, 2, P0, b),
            basic(p, "Conv2d_2a_3x3", 32, 32, K3, 1, P0, b),
            basic(p, "Conv2d_2b_3x3", 32, 64, K3, 1, P1, b),
        ]);
        let stem2 = Chain(vec![
            basic(p, "Conv2d_3b_1x1", 64, 80, K1, 1, P0, b),
            basic(p, "Conv2d_4a_3x3", 80, 192, K3, 1, P0, b),
        ]);
        let mixed = vec![
            inception_a(&(p / "Mixed_5b"), 192, 32, b),
            inception_a(&(p / "Mixed_5c"), 256, 64, b),
            inception_a(&(p / "Mixed_5d"), 288, 64, b),
            inception_b(&(p / "Mixed_6a"), 288, b),
            inception_c(&(p / "Mixed_6b"), 768, 128, b),
            inception_c(&(p / "Mixed_6c"), 768, 160, b),
            inception_c(&(p / "Mixed_6d"), 768, 160, b),
            inception_c(&(p / "Mixed_6e"), 768, 192, b),
            inception_d(&(p / "Mixed_7a"), 768, b),
            inception_e(&(p / "Mixed_7b"), 1280, b),
            inception_e(&(p / "Mixed_7c"), 2048, b),
        ];
        InceptionV3 {
            stem1,
            stem2,
            mixed,
            bns,
        }
    }
}

impl Trunk for InceptionV3 {
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let pool = |t: Tensor| t.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        let y = pool(self.stem1.forward(x, bn_train));
        let mut y = pool(self.stem2.forward(&y, bn_train));
        for m in &self.mixed {
            y = m.forward(&y, bn_train);
        }
        y
    }

    fn out_channels(&self) -> usize {
        2048
    }

    fn batchnorm_prefixes(&self) -> Vec<String> {
        self.bns.clone()
    }
}
