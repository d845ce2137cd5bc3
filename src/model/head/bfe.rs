//! `model.head = "bfe"`: Batch Feature Erasing / Batch DropBlock (Dai et al., ICCV 2019;
//! daizuozhuo/batch-dropblock-network, `models/networks.py` classes `BFE` and `BatchDrop`).
//!
//! On the trunk's last map (the recipes set `model.last_stride = 1`, as the official
//! ResNet-50 with a stride-1 layer4):
//! * global branch: average pool → Linear(C, 512) (the official 1×1 convolution on the
//!   1×1 map) → BatchNorm1d → ReLU;
//! * erasing branch: an extra bottleneck block (C → C, width C/4, map BatchNorms) →
//!   BatchDrop → global max pool → Linear(C, 1024) → BatchNorm1d → ReLU.
//!
//! BatchDrop zeroes **one** rectangle of `round(h·H) × round(w·W)` (`model.bfe_erase =
//! [h, w]`) for the whole global batch, in training only; its position is uniform over
//! the valid starts (the official `random.randint(0, H − rh)`) and drawn from the
//! `(train.seed, step)` key, so every rank erases the same rectangle. (The official
//! code rounds the size down with `int`; with the recipes' 0.5 ratios and even maps the
//! two agree.)
//!
//! Local half (before the gather): both pooled C-d vectors. Global half: the two
//! Linear + BatchNorm1d + ReLU reductions (BatchNorm over the global batch) and, with
//! `model.classes > 0`, the classifiers Linear(512, classes) and Linear(1024, classes).
//! Embeddings = `[global 512, erasing 1024]` (a metric loss on each), logits = both,
//! test embedding = their concatenation (1536-d, as the official evaluation).
//! `model.embedding_dim` is not used: the branch sizes are the official 512 and 1024.
//!
//! The two reductions' Linear layers have **no bias** (the official ones do): a
//! BatchNorm with batch statistics follows and removes it, so its gradient is zero up
//! to rounding, which Adam would turn into a random walk of ±lr per step (and break
//! world-size invariance in f64).
//!
//! Initialisation follows the official `weights_init_kaiming`: linear weights
//! Kaiming-normal over fan-out with zero bias, BatchNorm1d weights N(1, 0.02) with zero
//! bias; the extra bottleneck is initialised like torchvision's ResNet blocks.
//!
//! Note: the official triplet loss uses the raw Euclidean distance; ours (PML's
//! `LpDistance`) L2-normalises the embeddings first.
use tch::{nn, nn::ModuleT, Tensor};

use super::{Head, HeadOutput, Pass};
use crate::error::{Error, Result};
use crate::model::resnet::Block;
use crate::rng::SplitMix64;

/// Width of the global branch's reduction (official; `config::BFE_DIMS`).
pub const GLOBAL_DIM: usize = crate::config::BFE_DIMS[0];
/// Width of the erasing branch's reduction (official; `config::BFE_DIMS`).
pub const ERASE_DIM: usize = crate::config::BFE_DIMS[1];
/// Tag of the BatchDrop draw in the `(seed, step, tag)` key.
const ERASE_TAG: u64 = 0xBFE0;

/// The erased rectangle of a feature map: rows `top..top + height`, columns
/// `left..left + width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// First erased row.
    pub top: i64,
    /// First erased column.
    pub left: i64,
    /// Erased rows.
    pub height: i64,
    /// Erased columns.
    pub width: i64,
}

/// The rectangle BatchDrop erases on an `h × w` map at training key `key`
/// (`[train.seed, step]`): `round(ratio[0]·h) × round(ratio[1]·w)` at a position
/// uniform over the valid starts.
///
/// ```
/// use dml::model::head::bfe::erase_rect;
/// let r = erase_rect(8, 4, [0.5, 0.5], [0, 3]);
/// assert_eq!((r.height, r.width), (4, 2));
/// assert!(r.top <= 4 && r.left <= 2);
/// assert_eq!(r, erase_rect(8, 4, [0.5, 0.5], [0, 3]));
/// ```
pub fn erase_rect(h: i64, w: i64, ratio: [f64; 2], key: [u64; 2]) -> Rect {
    let height = ((ratio[0] * h as f64).round() as i64).clamp(0, h);
    let width = ((ratio[1] * w as f64).round() as i64).clamp(0, w);
    let mut rng = SplitMix64::keyed(&[key[0], key[1], ERASE_TAG]);
    let top = rng.below((h - height + 1) as usize) as i64;
    let left = rng.below((w - width + 1) as usize) as i64;
    Rect {
        top,
        left,
        height,
        width,
    }
}

/// Zeroes `rect` in every channel of every sample of `x` `[b, C, h, w]`.
pub fn batch_drop(x: &Tensor, rect: Rect) -> Tensor {
    let size = x.size();
    let mask = Tensor::ones([1, 1, size[2], size[3]], (x.kind(), x.device()));
    if rect.height > 0 && rect.width > 0 {
        let _ = mask
            .narrow(2, rect.top, rect.height)
            .narrow(3, rect.left, rect.width)
            .fill_(0.0);
    }
    x * mask
}

/// Linear → BatchNorm1d → ReLU, the official `reduction` (`p.0`, `p.1`).
#[derive(Debug)]
struct Reduction {
    fc: nn::Linear,
    bn: nn::BatchNorm,
}

impl Reduction {
    fn new(p: &nn::Path, cin: usize, cout: usize) -> Reduction {
        let bn = nn::BatchNormConfig {
            ws_init: nn::Init::Randn {
                mean: 1.0,
                stdev: 0.02,
            },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        Reduction {
            fc: kaiming_linear(&(p / "0"), cin, cout, false),
            bn: nn::batch_norm1d(p / "1", cout as i64, bn),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&x.apply(&self.fc), train).relu()
    }
}

/// The official `weights_init_kaiming` of a Linear: `kaiming_normal_(w, a=0,
/// mode="fan_out")`, bias 0 (if any).
fn kaiming_linear(p: &nn::Path, cin: usize, cout: usize, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        cin as i64,
        cout as i64,
        nn::LinearConfig {
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity: nn::init::NonLinearity::ReLU,
            },
            bs_init: bias.then_some(nn::Init::Const(0.0)),
            bias,
        },
    )
}

/// The BFE head; see the module documentation.
#[derive(Debug)]
pub struct BfeHead {
    res_part2: Block,
    bns: Vec<String>,
    erase: [f64; 2],
    global_reduction: Reduction,
    reduction: Reduction,
    classifiers: Option<(nn::Linear, nn::Linear)>,
}

impl BfeHead {
    /// Builds the head under `p` (`head`) on a map of `channels` channels, erasing
    /// `erase = [height, width]` fractions, with classifiers over `classes` if positive.
    pub fn new(p: &nn::Path, channels: usize, erase: [f64; 2], classes: usize) -> Result<BfeHead> {
        if channels == 0 || channels % 4 != 0 {
            return Err(Error::Config(format!(
                "model.head = \"bfe\" needs a trunk whose channels divide by 4 (the extra \
                 bottleneck's width is C/4), got {channels}"
            )));
        }
        crate::config::check_bfe_erase(erase)?;
        let mut bns = Vec::new();
        let c = channels as i64;
        let (res_part2, _) = Block::new(&(p / "res_part2"), c, c / 4, 1, true, &mut bns);
        let post = p / "post";
        let classifiers = (classes > 0).then(|| {
            (
                kaiming_linear(&(&post / "global_softmax"), GLOBAL_DIM, classes, true),
                kaiming_linear(&(&post / "softmax"), ERASE_DIM, classes, true),
            )
        });
        Ok(BfeHead {
            res_part2,
            bns,
            erase,
            global_reduction: Reduction::new(&(&post / "global_reduction"), channels, GLOBAL_DIM),
            reduction: Reduction::new(&(&post / "reduction"), channels, ERASE_DIM),
            classifiers,
        })
    }
}

impl Head for BfeHead {
    fn local(&self, map: &Tensor, pass: Pass) -> Vec<Tensor> {
        let global = super::basic::avg_pool(map);
        let mut x = self.res_part2.forward(map, pass.bn_maps);
        if pass.train {
            let size = x.size();
            x = batch_drop(&x, erase_rect(size[2], size[3], self.erase, pass.key));
        }
        let erased = super::basic::max_pool(&x);
        vec![global, erased]
    }

    fn global(&self, parts: &[Tensor], pass: Pass) -> HeadOutput {
        let g = self.global_reduction.forward(&parts[0], pass.train);
        let e = self.reduction.forward(&parts[1], pass.train);
        let logits = self
            .classifiers
            .iter()
            .flat_map(|(cg, ce)| [g.apply(cg), e.apply(ce)])
            .collect();
        HeadOutput {
            test: Tensor::cat(&[&g, &e], 1),
            embeddings: vec![g, e],
            logits,
        }
    }

    fn dim(&self) -> usize {
        GLOBAL_DIM + ERASE_DIM
    }

    fn map_batchnorms(&self) -> Vec<String> {
        self.bns.clone()
    }
}
