//! A linear classifier over the training classes, applied after the gather.
use tch::{nn, Tensor};

/// `torch.nn.Linear(dim, classes, bias)` with torch's default initialisation
/// (weight and bias uniform in ±1/√dim).
#[derive(Debug)]
pub struct Classifier {
    fc: nn::Linear,
}

impl Classifier {
    /// A classifier under `p` (which should lie under `head/post`).
    pub fn new(p: &nn::Path, dim: usize, classes: usize, bias: bool) -> Classifier {
        Classifier {
            fc: torch_linear(p, dim, classes, bias),
        }
    }

    /// Logits `[B, classes]` of features `[B, dim]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.fc)
    }
}

/// `torch.nn.Linear(cin, cout, bias)` with torch's default initialisation: weight and
/// bias uniform in ±1/√cin (kaiming_uniform with a = √5 for the weight).
pub fn torch_linear(p: &nn::Path, cin: usize, cout: usize, bias: bool) -> nn::Linear {
    let bound = 1.0 / (cin as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        p,
        cin as i64,
        cout as i64,
        nn::LinearConfig {
            ws_init: init,
            bs_init: bias.then_some(init),
            bias,
        },
    )
}
