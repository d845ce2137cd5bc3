//! torchvision's MobileNet v2 (width 1.0) without the classifier: `features.0` … `features.18`.
use tch::{nn, Tensor};

use super::layers::{conv_bn_act, Act, BnCfg, ConvBnAct, ConvOpts};
use super::trunk::Trunk;

const BN: BnCfg = (1e-5, 0.1);

/// Inverted residual: optional 1×1 expansion, 3×3 depthwise, 1×1 linear projection.
#[derive(Debug)]
struct InvertedResidual {
    layers: Vec<ConvBnAct>,
    residual: bool,
}

impl InvertedResidual {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64, t: i64, bns: &mut Vec<String>) -> Self {
        let p = p / "conv";
        let hidden = cin * t;
        let mut layers = Vec::new();
        if t != 1 {
            let q = &p / layers.len().to_string();
            layers.push(conv_bn_act(
                &q,
                ("0", "1"),
                cin,
                hidden,
                ConvOpts::new(1, 1, 0),
                BN,
                Act::Relu6,
                bns,
            ));
        }
        let q = &p / layers.len().to_string();
        let dw = ConvOpts::new(3, stride, 1).groups(hidden);
        layers.push(conv_bn_act(
            &q,
            ("0", "1"),
            hidden,
            hidden,
            dw,
            BN,
            Act::Relu6,
            bns,
        ));
        // The projection is two entries of the Sequential: conv.{n} and conv.{n+1}.
        let n = layers.len();
        let (c, b) = (n.to_string(), (n + 1).to_string());
        layers.push(conv_bn_act(
            &p,
            (&c, &b),
            hidden,
            cout,
            ConvOpts::new(1, 1, 0),
            BN,
            Act::Identity,
            bns,
        ));
        InvertedResidual {
            layers,
            residual: stride == 1 && cin == cout,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for l in &self.layers {
            y = l.forward(&y, train);
        }
        if self.residual {
            y + x
        } else {
            y
        }
    }
}

/// A torchvision MobileNet v2 trunk (1280 channels, stride 32).
#[derive(Debug)]
pub struct MobileNetV2 {
    stem: ConvBnAct,
    blocks: Vec<InvertedResidual>,
    last: ConvBnAct,
    bns: Vec<String>,
}

impl MobileNetV2 {
    /// Builds `mobilenet_v2` under `p`.
    pub fn new(p: &nn::Path) -> MobileNetV2 {
        let f = p / "features";
        let mut bns = Vec::new();
        let stem = conv_bn_act(
            &(&f / "0"),
            ("0", "1"),
            3,
            32,
            ConvOpts::new(3, 2, 1),
            BN,
            Act::Relu6,
            &mut bns,
        );
        let setting: [(i64, i64, usize, i64); 7] = [
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ];
        let mut cin = 32;
        let mut blocks = Vec::new();
        for (t, c, n, s) in setting {
            for i in 0..n {
                let q = &f / (blocks.len() + 1).to_string();
                blocks.push(InvertedResidual::new(
                    &q,
                    cin,
                    c,
                    if i == 0 { s } else { 1 },
                    t,
                    &mut bns,
                ));
                cin = c;
            }
        }
        let q = &f / (blocks.len() + 1).to_string();
        let last = conv_bn_act(
            &q,
            ("0", "1"),
            cin,
            1280,
            ConvOpts::new(1, 1, 0),
            BN,
            Act::Relu6,
            &mut bns,
        );
        MobileNetV2 {
            stem,
            blocks,
            last,
            bns,
        }
    }
}

impl Trunk for MobileNetV2 {
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let mut y = self.stem.forward(x, bn_train);
        for b in &self.blocks {
            y = b.forward(&y, bn_train);
        }
        self.last.forward(&y, bn_train)
    }

    fn out_channels(&self) -> usize {
        1280
    }

    fn batchnorm_prefixes(&self) -> Vec<String> {
        self.bns.clone()
    }
}
