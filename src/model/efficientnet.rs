//! torchvision's EfficientNet-B0 … B7 without the classifier: `features.0` … `features.8`.
//! Stochastic depth is not applied (a deterministic trunk; as in eval mode).
use tch::{nn, Tensor};

use super::layers::{conv, conv_bn_act, Act, BnCfg, Conv, ConvBnAct, ConvOpts};
use super::trunk::Trunk;
use crate::error::{Error, Result};

/// torchvision's `_make_divisible(v, 8)`.
fn make_divisible(v: f64) -> i64 {
    let new_v = (((v + 4.0) as i64) / 8 * 8).max(8);
    if (new_v as f64) < 0.9 * v {
        new_v + 8
    } else {
        new_v
    }
}

/// Squeeze-and-excitation: GAP → 1×1 conv (SiLU) → 1×1 conv (sigmoid) → scale.
#[derive(Debug)]
struct Se {
    fc1: Conv,
    fc2: Conv,
}

impl Se {
    fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.adaptive_avg_pool2d([1, 1]);
        let s = self.fc2.forward(&self.fc1.forward(&s).silu()).sigmoid();
        s * x
    }
}

/// MBConv: optional 1×1 expansion, k×k depthwise, SE, 1×1 projection.
#[derive(Debug)]
struct MbConv {
    expand: Option<ConvBnAct>,
    dw: ConvBnAct,
    se: Se,
    project: ConvBnAct,
    residual: bool,
}

impl MbConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &nn::Path,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        ratio: f64,
        bn_cfg: BnCfg,
        bns: &mut Vec<String>,
    ) -> MbConv {
        let p = p / "block";
        let hidden = make_divisible(cin as f64 * ratio);
        let mut i = 0;
        let mut next = || {
            i += 1;
            (i - 1).to_string()
        };
        let expand = (hidden != cin).then(|| {
            let o = ConvOpts::new(1, 1, 0);
            conv_bn_act(
                &(&p / next()),
                ("0", "1"),
                cin,
                hidden,
                o,
                bn_cfg,
                Act::Silu,
                bns,
            )
        });
        let o = ConvOpts::new(k, stride, (k - 1) / 2).groups(hidden);
        let dw = conv_bn_act(
            &(&p / next()),
            ("0", "1"),
            hidden,
            hidden,
            o,
            bn_cfg,
            Act::Silu,
            bns,
        );
        let sq = (cin / 4).max(1);
        let sp = &p / next();
        let se = Se {
            fc1: conv(&(&sp / "fc1"), hidden, sq, ConvOpts::new(1, 1, 0).bias()),
            fc2: conv(&(&sp / "fc2"), sq, hidden, ConvOpts::new(1, 1, 0).bias()),
        };
        let o = ConvOpts::new(1, 1, 0);
        let project = conv_bn_act(
            &(&p / next()),
            ("0", "1"),
            hidden,
            cout,
            o,
            bn_cfg,
            Act::Identity,
            bns,
        );
        MbConv {
            expand,
            dw,
            se,
            project,
            residual: stride == 1 && cin == cout,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = match &self.expand {
            Some(e) => e.forward(x, train),
            None => x.shallow_clone(),
        };
        let y = self.se.forward(&self.dw.forward(&y, train));
        let y = self.project.forward(&y, train);
        if self.residual {
            y + x
        } else {
            y
        }
    }
}

/// A torchvision EfficientNet (v1) trunk.
#[derive(Debug)]
pub struct EfficientNet {
    stem: ConvBnAct,
    blocks: Vec<MbConv>,
    last: ConvBnAct,
    out: i64,
    bns: Vec<String>,
}

impl EfficientNet {
    /// Builds `efficientnet_b0` … `efficientnet_b7` under `p`.
    pub fn new(p: &nn::Path, arch: &str) -> Result<EfficientNet> {
        let (width, depth): (f64, f64) = match arch {
            "efficientnet_b0" => (1.0, 1.0),
            "efficientnet_b1" => (1.0, 1.1),
            "efficientnet_b2" => (1.1, 1.2),
            "efficientnet_b3" => (1.2, 1.4),
            "efficientnet_b4" => (1.4, 1.8),
            "efficientnet_b5" => (1.6, 2.2),
            "efficientnet_b6" => (1.8, 2.6),
            "efficientnet_b7" => (2.0, 3.1),
            other => {
                return Err(Error::Config(format!(
                    "model.trunk: unknown efficientnet `{other}`"
                )))
            }
        };
        // b5–b7 use BatchNorm(eps=1e-3, momentum=0.01); b0–b4 torch's defaults.
        let bn_cfg: BnCfg = if width >= 1.6 {
            (1e-3, 0.01)
        } else {
            (1e-5, 0.1)
        };
        // (expand ratio, kernel, stride, in, out, layers)
        let setting: [(f64, i64, i64, i64, i64, usize); 7] = [
            (1.0, 3, 1, 32, 16, 1),
            (6.0, 3, 2, 16, 24, 2),
            (6.0, 5, 2, 24, 40, 2),
            (6.0, 3, 2, 40, 80, 3),
            (6.0, 5, 1, 80, 112, 3),
            (6.0, 5, 2, 112, 192, 4),
            (6.0, 3, 1, 192, 320, 1),
        ];
        let ch = |c: i64| make_divisible(c as f64 * width);
        let f = p / "features";
        let mut bns = Vec::new();
        let c0 = ch(32);
        let o = ConvOpts::new(3, 2, 1);
        let stem = conv_bn_act(
            &(&f / "0"),
            ("0", "1"),
            3,
            c0,
            o,
            bn_cfg,
            Act::Silu,
            &mut bns,
        );
        let mut blocks = Vec::new();
        let mut cin = c0;
        for (s, &(ratio, k, stride, _, cout, n)) in setting.iter().enumerate() {
            let cout = ch(cout);
            let n = (n as f64 * depth).ceil() as usize;
            let sp = &f / (s + 1).to_string();
            for j in 0..n {
                let st = if j == 0 { stride } else { 1 };
                let q = &sp / j.to_string();
                blocks.push(MbConv::new(&q, cin, cout, k, st, ratio, bn_cfg, &mut bns));
                cin = cout;
            }
        }
        let out = 4 * cin;
        let q = &f / (setting.len() + 1).to_string();
        let o = ConvOpts::new(1, 1, 0);
        let last = conv_bn_act(&q, ("0", "1"), cin, out, o, bn_cfg, Act::Silu, &mut bns);
        Ok(EfficientNet {
            stem,
            blocks,
            last,
            out,
            bns,
        })
    }
}

impl Trunk for EfficientNet {
    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let mut y = self.stem.forward(x, bn_train);
        for b in &self.blocks {
            y = b.forward(&y, bn_train);
        }
        self.last.forward(&y, bn_train)
    }

    fn out_channels(&self) -> usize {
        self.out as usize
    }

    fn batchnorm_prefixes(&self) -> Vec<String> {
        self.bns.clone()
    }
}
