//! Building blocks shared by the trunks: convolutions with torchvision's init schemes
//! and BatchNorm layers that record their VarStore paths.
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// How a convolution's weight is initialised (torchvision's schemes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConvInit {
    /// `kaiming_normal_(w, mode="fan_out", nonlinearity="relu")` (ResNet, MobileNet, EfficientNet).
    KaimingFanOut,
    /// `kaiming_normal_(w)` with its defaults, fan-in (DenseNet).
    KaimingFanIn,
    /// `trunc_normal_(w, std, a=-2, b=2)` (Inception v3).
    TruncNormal(f64),
    /// torch.nn.Conv2d's own default: weight and bias uniform in ±1/√fan_in
    /// (BN-Inception, which has no init scheme of its own).
    TorchDefault,
}

/// A 2-d convolution with torchvision's parameter names (`weight`, optional `bias`).
#[derive(Debug)]
pub struct Conv {
    ws: Tensor,
    bs: Option<Tensor>,
    stride: [i64; 2],
    padding: [i64; 2],
    groups: i64,
}

/// Options of a [`Conv`]: kernel, stride, padding as (height, width).
#[derive(Debug, Clone, Copy)]
pub struct ConvOpts {
    /// Kernel size.
    pub k: [i64; 2],
    /// Stride.
    pub stride: [i64; 2],
    /// Zero padding.
    pub padding: [i64; 2],
    /// Groups (channels for a depthwise convolution).
    pub groups: i64,
    /// With a bias (initialised to zero).
    pub bias: bool,
    /// Weight initialisation.
    pub init: ConvInit,
}

impl ConvOpts {
    /// Square kernel `k`, stride `s`, padding `p`, no bias, Kaiming fan-out init.
    pub fn new(k: i64, s: i64, p: i64) -> Self {
        ConvOpts {
            k: [k, k],
            stride: [s, s],
            padding: [p, p],
            groups: 1,
            bias: false,
            init: ConvInit::KaimingFanOut,
        }
    }

    /// Same options with `groups`.
    pub fn groups(mut self, g: i64) -> Self {
        self.groups = g;
        self
    }

    /// Same options with a bias.
    pub fn bias(mut self) -> Self {
        self.bias = true;
        self
    }

    /// Same options with another weight init.
    pub fn init(mut self, init: ConvInit) -> Self {
        self.init = init;
        self
    }
}

/// Builds a convolution under `p` (variables `p.weight`, `p.bias`).
pub fn conv(p: &nn::Path, cin: i64, cout: i64, o: ConvOpts) -> Conv {
    let dims = [cout, cin / o.groups, o.k[0], o.k[1]];
    let ws = match o.init {
        ConvInit::KaimingFanOut | ConvInit::KaimingFanIn => {
            let fan = if o.init == ConvInit::KaimingFanOut {
                nn::init::FanInOut::FanOut
            } else {
                nn::init::FanInOut::FanIn
            };
            p.var(
                "weight",
                &dims,
                nn::Init::Kaiming {
                    dist: nn::init::NormalOrUniform::Normal,
                    fan,
                    non_linearity: nn::init::NonLinearity::ReLU,
                },
            )
        }
        ConvInit::TruncNormal(std) => {
            let w = p.var("weight", &dims, nn::Init::Const(0.));
            tch::no_grad(|| {
                let r = (Tensor::randn(dims, (w.kind(), w.device())) * std).clamp(-2.0, 2.0);
                let mut w = w.shallow_clone();
                w.copy_(&r);
            });
            w
        }
        ConvInit::TorchDefault => p.var("weight", &dims, torch_default(&dims)),
    };
    let bias_init = match o.init {
        ConvInit::TorchDefault => torch_default(&dims),
        _ => nn::Init::Const(0.),
    };
    let bs = o.bias.then(|| p.var("bias", &[cout], bias_init));
    Conv {
        ws,
        bs,
        stride: o.stride,
        padding: o.padding,
        groups: o.groups,
    }
}

/// Uniform in ±1/√fan_in for a convolution weight of shape `dims`.
fn torch_default(dims: &[i64; 4]) -> nn::Init {
    let bound = 1.0 / ((dims[1] * dims[2] * dims[3]) as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

impl Conv {
    /// Applies the convolution.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.ws,
            self.bs.as_ref(),
            self.stride,
            self.padding,
            [1, 1],
            self.groups,
        )
    }
}

/// The VarStore path of `p` as a dotted string (`trunk.layer1.0.bn1`).
pub fn path_name(p: &nn::Path) -> String {
    p.components().collect::<Vec<_>>().join(".")
}

/// A BatchNorm2d with weight 1, bias 0, running statistics as buffers.
#[derive(Debug)]
pub struct Bn {
    bn: nn::BatchNorm,
    eps: f64,
}

thread_local! {
    /// The momentum every [`Bn`] of this thread uses in training mode instead of its
    /// own, while [`with_bn_momentum`] runs.
    static MOMENTUM_OVERRIDE: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every [`Bn`] in training mode updating its running statistics with
/// `momentum` instead of its own (what `torch.optim.swa_utils.update_bn` does by setting
/// `momentum = None`, a cumulative average).
///
/// ```
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let bn = dml::model::layers::bn(&vs.root(), 2, 1e-5, 0.1, &mut vec![]);
/// let x = Tensor::randn([4, 2, 3, 3], (Kind::Float, Device::Cpu));
/// let _ = dml::model::layers::with_bn_momentum(1.0, || bn.forward(&x, true));
/// // Momentum 1: the running mean is this batch's mean.
/// let mean = x.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float);
/// assert!(vs.variables()["running_mean"].allclose(&mean, 1e-6, 1e-6, false));
/// ```
pub fn with_bn_momentum<T>(momentum: f64, f: impl FnOnce() -> T) -> T {
    let old = MOMENTUM_OVERRIDE.with(|m| m.replace(Some(momentum)));
    let out = f();
    MOMENTUM_OVERRIDE.with(|m| m.set(old));
    out
}

/// Builds a BatchNorm2d under `p` with `eps` and `momentum`, and records its path in `bns`.
pub fn bn(p: &nn::Path, c: i64, eps: f64, momentum: f64, bns: &mut Vec<String>) -> Bn {
    bns.push(path_name(p));
    let bn = nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig {
            eps,
            momentum,
            ws_init: nn::Init::Const(1.),
            bs_init: nn::Init::Const(0.),
            ..Default::default()
        },
    );
    Bn { bn, eps }
}

impl Bn {
    /// Batch statistics (updating the running ones) when `train`, running statistics otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match MOMENTUM_OVERRIDE.with(|m| m.get()).filter(|_| train) {
            None => self.bn.forward_t(x, train),
            Some(momentum) => Tensor::batch_norm(
                x,
                self.bn.ws.as_ref(),
                self.bn.bs.as_ref(),
                Some(&self.bn.running_mean),
                Some(&self.bn.running_var),
                true,
                momentum,
                self.eps,
                true,
            ),
        }
    }
}

/// Activation after a convolution + BatchNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// None (a linear projection).
    Identity,
    /// ReLU.
    Relu,
    /// ReLU6 (MobileNet v2).
    Relu6,
    /// SiLU / swish (EfficientNet).
    Silu,
}

impl Act {
    /// Applies the activation.
    pub fn apply(self, x: Tensor) -> Tensor {
        match self {
            Act::Identity => x,
            Act::Relu => x.relu(),
            Act::Relu6 => x.relu6(),
            Act::Silu => x.silu(),
        }
    }
}

/// torchvision's `Conv2dNormActivation` (`p.0` conv, `p.1` BatchNorm) or Inception's
/// `BasicConv2d` (`p.conv`, `p.bn`), chosen by the sub-path names.
#[derive(Debug)]
pub struct ConvBnAct {
    conv: Conv,
    bn: Bn,
    act: Act,
}

/// BatchNorm settings `(eps, momentum)`.
pub type BnCfg = (f64, f64);

/// Builds a conv (`p/names.0`) + BatchNorm (`p/names.1`) + activation.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act(
    p: &nn::Path,
    names: (&str, &str),
    cin: i64,
    cout: i64,
    o: ConvOpts,
    bn_cfg: BnCfg,
    act: Act,
    bns: &mut Vec<String>,
) -> ConvBnAct {
    ConvBnAct {
        conv: conv(&(p / names.0), cin, cout, o),
        bn: bn(&(p / names.1), cout, bn_cfg.0, bn_cfg.1, bns),
        act,
    }
}

impl ConvBnAct {
    /// conv → BatchNorm → activation.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.act
            .apply(self.bn.forward(&self.conv.forward(x), train))
    }
}
