//! Typed configuration: TOML sections into structs, `--set section.key=value`
//! overrides, validation whose messages name the key and the allowed values.
//!
//! Every struct rejects unknown keys (the message lists the known ones) and has the
//! defaults of the quickstart; `Config::to_toml` gives the resolved file written to
//! `RUN/config.toml`.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `[data]`: dataset files and image geometry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training split (`.dmlds`).
    pub train: String,
    /// Test split; empty for none.
    pub test: String,
    /// Validation split; empty for none.
    pub val: String,
    /// Gallery split of a query/gallery test protocol (In-Shop): `test` is then the
    /// query split. Empty (default): the test split is searched against itself.
    pub gallery: String,
    /// Side of the square crop fed to the trunk.
    pub image_size: usize,
    /// Shorter side the test transform resizes to before the centre crop.
    pub resize: usize,
    /// Smallest and largest area fraction of the random resized crop.
    pub crop_scale: [f64; 2],
    /// Smallest and largest aspect ratio of the random resized crop.
    pub crop_ratio: [f64; 2],
    /// Random horizontal flip of training crops (probability ½), as torchvision's
    /// `RandomHorizontalFlip`; false for data whose mirror image is another class
    /// (glyphs, text, some products).
    pub flip: bool,
    /// torchvision's `ColorJitter(brightness, contrast, saturation, hue)` on each
    /// training crop after the flip (Pillow-identical); zeros (default) turn it off.
    pub color_jitter: [f64; 4],
    /// torchvision's `RandomGrayscale(p)` after the jitter; 0 (default) never.
    pub grayscale_p: f64,
    /// Loader worker threads per rank.
    pub workers: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
}

impl DataConfig {
    /// `color_jitter` as the loader's [`crate::data::color::ColorJitter`].
    pub fn color_jitter(&self) -> crate::data::color::ColorJitter {
        let [brightness, contrast, saturation, hue] = self.color_jitter;
        crate::data::color::ColorJitter {
            brightness,
            contrast,
            saturation,
            hue,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            train: "data/synth/train.dmlds".into(),
            test: "data/synth/test.dmlds".into(),
            val: String::new(),
            gallery: String::new(),
            image_size: 224,
            resize: 256,
            crop_scale: [0.16, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip: true,
            color_jitter: [0.0; 4],
            grayscale_p: 0.0,
            workers: 4,
            prefetch: 4,
        }
    }
}

/// The largest `data.image_size` and `data.resize`.
pub const MAX_IMAGE_SIDE: usize = 8192;
/// The largest `model.embedding_dim` and `model.horde_dim`.
pub const MAX_DIM: usize = 1 << 16;

/// `bytes` as `12.3 GiB` (binary units).
fn bytes_text(bytes: f64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{v:.0} bytes"),
        _ => format!("{v:.1} {}", units[unit]),
    }
}

/// `[sampler]`: the **global** batch is `classes_per_batch × samples_per_class`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// N, classes per global batch.
    pub classes_per_batch: usize,
    /// K, images per class.
    pub samples_per_class: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            classes_per_batch: 8,
            samples_per_class: 4,
        }
    }
}

/// BatchNorm handling on feature maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnMode {
    /// Running statistics and affine parameters fixed (DML practice; exact across ranks).
    Frozen,
    /// Per-rank batch statistics, like DDP without SyncBN.
    Train,
}

/// What the model returns (see `model::head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// Global average pool → linear → L2 normalisation.
    Linear,
    /// Pooled trunk features, no projection or normalisation (untrained baseline, and
    /// Group Loss's features).
    Pool,
    /// Batch Feature Erasing (Dai et al. 2019): a global and an erasing branch.
    Bfe,
    /// Combination of Global Descriptors (Jun et al. 2019).
    Cgd,
    /// HORDE high-order regularizer (Jacob et al. 2019).
    Horde,
}

/// `[model]`: trunk and head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// torchvision name of the trunk, e.g. `resnet18`, `resnet50`.
    pub trunk: String,
    /// Path of a safetensors file of torchvision weights; empty for random init.
    pub pretrained: String,
    /// SHA-256 (hex) of `pretrained`: empty in a user's config; recorded in
    /// `RUN/config.toml` when the run starts, and a file that no longer matches it is
    /// refused (a resumed run would otherwise start from other weights).
    pub pretrained_sha256: String,
    /// Missing, unexpected or wrong-shape keys are an error (true) or a warning.
    pub pretrained_strict: bool,
    /// BatchNorm mode.
    pub bn: BnMode,
    /// Embedding dimension of the linear head.
    pub embedding_dim: usize,
    /// Head kind.
    pub head: HeadKind,
    /// Stride of the last stage (1 keeps a larger final map, as BFE and CGD do).
    pub last_stride: usize,
    /// Channels-last memory format on CUDA.
    pub channels_last: bool,
    /// BFE: height and width of the erased rectangle as fractions of the feature map
    /// (official: 0.5 × 0.5 for CUB, Cars, SOP, In-Shop; 0.33 × 1.0 for re-ID).
    pub bfe_erase: [f64; 2],
    /// CGD: the global descriptors, in order, from `S` (average), `M` (max) and `G`
    /// (GeM); `model.embedding_dim` is split evenly between them.
    pub cgd_descriptors: String,
    /// CGD: the GeM exponent p.
    pub gem_p: f64,
    /// HORDE: the highest moment order (orders 2 … `horde_order` regularise; official 5).
    pub horde_order: usize,
    /// HORDE: dimension of the high-order projections (official 8192).
    pub horde_dim: usize,
    /// HORDE: learned projections (true) or fixed ±1 random Maclaurin projections.
    pub horde_learned: bool,
    /// Training classes of the classifier that Group Loss (and the heads with an
    /// auxiliary classifier) need; 0 = none, or, when one is needed, the number of
    /// labels of `data.train` (the resolved value is written to `RUN/config.toml`).
    pub classes: usize,
}

impl ModelConfig {
    /// The dimension of each embedding the head returns (the losses' inputs, in order):
    /// one of `embedding_dim` for the linear and CGD heads, the trunk's channels for the
    /// pool head, [`BFE_DIMS`] for BFE, and HORDE's orders 1 … `horde_order` (order 1 of
    /// `embedding_dim`, the higher orders of `embedding_dim` when learned, else of
    /// `horde_dim`). Empty for an unknown trunk under the pool head.
    ///
    /// ```
    /// use dml::config::{HeadKind, ModelConfig};
    /// let m = ModelConfig { head: HeadKind::Horde, embedding_dim: 64, horde_order: 3,
    ///     horde_dim: 256, horde_learned: false, ..ModelConfig::default() };
    /// assert_eq!(m.embedding_dims(), vec![64, 256, 256]);
    /// ```
    pub fn embedding_dims(&self) -> Vec<usize> {
        match self.head {
            HeadKind::Linear | HeadKind::Cgd => vec![self.embedding_dim],
            HeadKind::Pool => trunk_channels(&self.trunk).into_iter().collect(),
            HeadKind::Bfe => BFE_DIMS.to_vec(),
            HeadKind::Horde => {
                let higher = match self.horde_learned {
                    true => self.embedding_dim,
                    false => self.horde_dim,
                };
                std::iter::once(self.embedding_dim)
                    .chain(std::iter::repeat_n(
                        higher,
                        self.horde_order.saturating_sub(1),
                    ))
                    .collect()
            }
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            trunk: "resnet18".into(),
            pretrained: String::new(),
            pretrained_sha256: String::new(),
            pretrained_strict: true,
            bn: BnMode::Frozen,
            embedding_dim: 128,
            head: HeadKind::Linear,
            last_stride: 2,
            channels_last: false,
            bfe_erase: [0.5, 0.5],
            cgd_descriptors: "SG".into(),
            gem_p: 3.0,
            horde_order: 5,
            horde_dim: 8192,
            horde_learned: true,
            classes: 0,
        }
    }
}

/// Metric loss names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossName {
    /// Triplet margin loss (hard or soft margin) over mined triplets.
    Triplet,
    /// Multi-Similarity loss (Wang et al. 2019).
    MultiSimilarity,
    /// Group Loss (Elezi et al. 2020).
    Group,
    /// Margin loss (Wu et al. 2017) with a fixed boundary β, as Divide and Conquer
    /// trains it (needs `miner.name = "dnc_cutoff"`).
    Margin,
}

/// `[loss]`: the metric loss and its hyperparameters (papers' defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Which loss.
    pub name: LossName,
    /// Triplet margin m in `[d_ap − d_an + m]₊`; the margin loss's m in
    /// `[d_ap − β + m]₊ + [β − d_an + m]₊`.
    pub margin: f64,
    /// Margin loss: the fixed boundary β between positive and negative distances
    /// (Divide and Conquer: 1.2, not optimised).
    pub margin_beta: f64,
    /// Soft margin `softplus(d_ap − d_an)` instead of the hinge (triplet-reid's default).
    pub soft_margin: bool,
    /// Multi-Similarity α (positive scale).
    pub ms_alpha: f64,
    /// Multi-Similarity β (negative scale).
    pub ms_beta: f64,
    /// Multi-Similarity λ (similarity offset, PML's `base`).
    pub ms_base: f64,
    /// Distance of the triplet loss: `auto` (Euclidean for triplet, cosine similarity
    /// for Multi-Similarity), `euclidean` (on L2-normalised embeddings, PML's
    /// `LpDistance`) or `cosine` (PML's `CosineSimilarity`).
    pub distance: LossDistance,
    /// Group Loss: softmax temperature T of the priors `softmax(logits / T)`
    /// (official code: CUB 24, Cars 79, SOP 54).
    pub group_temperature: f64,
    /// Group Loss: labelled anchors per class in the batch, given one-hot priors
    /// (official code: CUB 2, Cars 3, SOP 2).
    pub group_anchors: usize,
    /// Group Loss: replicator-dynamics iterations (official default 1).
    pub group_iterations: usize,
    /// Group Loss: weight of the cross-entropy term on the logits (official code: 1).
    pub group_ce_weight: f64,
    /// Weight of the cross-entropy term of each classifier head (not Group Loss's).
    pub ce_weight: f64,
    /// Label smoothing ε of that cross-entropy (BFE and CGD: 0.1).
    pub ce_smoothing: f64,
    /// Temperature that divides the logits first (CGD: 0.5).
    pub ce_temperature: f64,
}

/// The distance a metric loss works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossDistance {
    /// The loss's usual distance: Euclidean for triplet, cosine for Multi-Similarity.
    Auto,
    /// Euclidean distance between L2-normalised embeddings.
    Euclidean,
    /// Cosine similarity.
    Cosine,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            name: LossName::Triplet,
            margin: 0.2,
            margin_beta: 1.2,
            soft_margin: false,
            ms_alpha: 2.0,
            ms_beta: 40.0,
            ms_base: 0.5,
            distance: LossDistance::Auto,
            group_temperature: 24.0,
            group_anchors: 2,
            group_iterations: 1,
            group_ce_weight: 1.0,
            ce_weight: 1.0,
            ce_smoothing: 0.1,
            ce_temperature: 1.0,
        }
    }
}

/// Miner names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinerName {
    /// Hardest positive and hardest negative per anchor.
    BatchHard,
    /// Every valid triplet.
    BatchAll,
    /// Negatives farther than the positive but within the margin.
    SemiHard,
    /// Multi-Similarity pair mining with ε.
    MultiSimilarity,
    /// Divide and Conquer's sampler for the margin loss: per anchor, the closest
    /// negatives at distance ≥ `miner.cutoff`, as many as the batch's positives per anchor.
    DncCutoff,
    /// No mining: all pairs or triplets.
    None,
}

/// `[miner]`: which pairs or triplets the loss sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinerConfig {
    /// Which miner.
    pub name: MinerName,
    /// Multi-Similarity miner ε.
    pub epsilon: f64,
    /// `dnc_cutoff` miner: negatives closer than this (Euclidean, normalised
    /// embeddings) are picked only when too few lie farther (official: 0.5).
    pub cutoff: f64,
}

impl Default for MinerConfig {
    fn default() -> Self {
        MinerConfig {
            name: MinerName::BatchHard,
            epsilon: 0.1,
            cutoff: 0.5,
        }
    }
}

/// Optimiser names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimName {
    /// Adam with L2 weight decay added to the gradient.
    Adam,
    /// AdamW, decoupled weight decay.
    Adamw,
}

/// `[optim]`: the optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Adam or AdamW.
    pub name: OptimName,
    /// Base learning rate (the cyclic policies' lower bound).
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Adam β₁, β₂.
    pub betas: [f64; 2],
    /// Adam ε.
    pub eps: f64,
    /// Learning-rate multiplier of the head (and loss parameters) against the trunk.
    pub head_lr_mult: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            name: OptimName::Adam,
            lr: 1e-4,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            head_lr_mult: 1.0,
        }
    }
}

/// Learning-rate policies (Smith 2017; torch's CyclicLR modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrPolicy {
    /// `optim.lr` throughout.
    Constant,
    /// Triangular cycles between `optim.lr` and `lr.max_lr`.
    Triangular,
    /// Triangular with the amplitude halved each cycle.
    Triangular2,
    /// Triangular with the amplitude scaled by γ^iteration.
    ExpRange,
    /// Piecewise constant: `optim.lr` times γ^(milestones passed), as torch's
    /// `MultiStepLR`, or times `lr.factors[i]` after the i-th milestone.
    Multistep,
}

/// `[lr]`: learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrConfig {
    /// The policy.
    pub policy: LrPolicy,
    /// Upper bound of the cyclic policies.
    pub max_lr: f64,
    /// Half-cycle length in iterations.
    pub step_size: usize,
    /// γ of `exp_range`, and of `multistep` without `factors`.
    pub gamma: f64,
    /// `multistep`: the steps (0-based optimiser step indices) at which the rate changes,
    /// increasing.
    pub milestones: Vec<usize>,
    /// `multistep`: milestones in epochs (torch's `MultiStepLR` stepped once per epoch);
    /// converted to `milestones` in steps from the sampler's epoch length when the run
    /// starts. Set this or `milestones`, not both.
    pub milestone_epochs: Vec<usize>,
    /// `multistep`: the factor of `optim.lr` before the first milestone and after each
    /// (one more than the milestones); empty: γ^(milestones passed).
    pub factors: Vec<f64>,
}

impl Default for LrConfig {
    fn default() -> Self {
        LrConfig {
            policy: LrPolicy::Constant,
            max_lr: 1e-3,
            step_size: 2000,
            gamma: 1.0,
            milestones: Vec::new(),
            milestone_epochs: Vec::new(),
            factors: Vec::new(),
        }
    }
}

/// `[swa]`: stochastic weight averaging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SwaConfig {
    /// First step that enters the average; 0 disables SWA.
    pub start: usize,
    /// Average every this many steps.
    pub every: usize,
}

/// Numeric precision of the training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// float32 (default).
    F32,
    /// float64: a verification mode on CPU (world-size invariance to 1e-9).
    F64,
    /// bfloat16 autocast on CUDA.
    Bf16,
}

/// `[train]`: the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total optimiser steps (ignored when `epochs` > 0).
    pub steps: usize,
    /// If positive, train this many sampler epochs instead of `steps`.
    pub epochs: usize,
    /// Seed of everything random (sampler, augmentation, initialisation).
    pub seed: u64,
    /// Numeric precision.
    pub precision: Precision,
    /// `cpu`, `cuda` or `auto`.
    pub device: String,
    /// Checkpoint every this many steps (and at the end); 0 only at the end.
    pub checkpoint_every: usize,
    /// Number of step checkpoints kept (older ones are deleted).
    pub keep_checkpoints: usize,
    /// libtorch intra-op threads per rank; 0 (default): `OMP_NUM_THREADS` if set, else
    /// the cores this rank may run on (its CPU binding, or the node's cores divided by
    /// the ranks on the node when unbound; see `device::choose_threads`).
    pub threads: usize,
    /// Rank 0 prints a plain progress line every this many steps (and at the last step),
    /// also when stderr is not a terminal (mpirun, Slurm); 0 never. Validation results
    /// are printed whenever they are computed.
    pub log_every: usize,
    /// Clip the total L2 norm of the (reduced) gradients to this value, as
    /// `torch.nn.utils.clip_grad_norm_`; 0 (default) never clips.
    pub max_grad_norm: f64,
    /// Warn (a line from rank 0, `warning` in metrics.jsonl) when the weights' L2 norm
    /// exceeds this multiple of its value when the run started or resumed (a blow-up
    /// that has not reached NaN yet), and again at each further factor of 10; checked
    /// every `log_every` steps (`grad_norm`, `weight_norm`, `weight_growth` in
    /// metrics.jsonl); 0 never.
    pub warn_weight_growth: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 100,
            epochs: 0,
            seed: 0,
            precision: Precision::F32,
            device: "auto".into(),
            checkpoint_every: 50,
            keep_checkpoints: 3,
            threads: 0,
            log_every: 50,
            max_grad_norm: 0.0,
            warn_weight_growth: 100.0,
        }
    }
}

/// `[eval]`: evaluation during and after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate on the validation split every this many steps (and at the end); 0 never.
    /// The validation split is `data.val` if set, else fold `fold` of `folds` contiguous
    /// parts of the sorted training classes, which the sampler then leaves out
    /// ("A Metric Learning Reality Check").
    pub every: usize,
    /// Images per forward pass when embedding.
    pub batch_size: usize,
    /// Number of class folds of the training split.
    pub folds: usize,
    /// Which fold (0-based) validates when `data.val` is empty.
    pub fold: usize,
    /// Validation metric that chooses `RUN/best/` (higher is better).
    pub metric: String,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every: 0,
            batch_size: 64,
            folds: 4,
            fold: 0,
            metric: "mean_average_precision_at_r".into(),
        }
    }
}

/// Communicator backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// `local` for one process, else `nccl` on CUDA and `mpi` on CPU.
    Auto,
    /// One process, no communication.
    Local,
    /// MPI collectives on CPU tensors.
    Mpi,
    /// NCCL on CUDA tensors.
    Nccl,
}

/// `[dist]`: distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// Backend.
    pub backend: Backend,
    /// Gradient all-reduce bucket size in MiB; 0 (default): 1 MiB for a model on the
    /// CPU (MPI through host memory is fastest with cache-sized buckets, BENCHMARKS.md
    /// "Communication"), 25 MiB on CUDA (PyTorch DDP's bucket size).
    pub bucket_mb: f64,
    /// All-reduce gradient buckets during the backward on a communication thread
    /// (`comm::GradReducer`; MPI on CPU tensors). `false`: the same buckets after the
    /// backward, on the training thread (bit for bit the same result).
    pub overlap: bool,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            backend: Backend::Auto,
            bucket_mb: 0.0,
            overlap: true,
        }
    }
}

/// How the student is compared with the teacher ("Learning metrics from teachers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistillKind {
    /// Mean ‖f_s − f_t‖₂ over the batch (same embedding dimension).
    Absolute,
    /// ‖D_s − D_t‖_F of the global batch's Euclidean distance matrices.
    Relative,
}

/// `[distill]`: student–teacher distillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// Run directory of the teacher (its `config.toml` and `model.safetensors`); empty
    /// for no distillation.
    pub teacher: String,
    /// Absolute or relative teacher.
    pub kind: DistillKind,
    /// λ, the weight of the distillation term (official: absolute 1.0 / 1.5 / 2.0,
    /// relative 0.3 / 0.1 / 1.0 on CUB / Cars / SOP).
    pub weight: f64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            teacher: String::new(),
            kind: DistillKind::Relative,
            weight: 1.0,
        }
    }
}

/// `[dnc]`: Divide and Conquer (Sanakoyeu et al. 2019,
/// CompVis/metric-learning-divide-and-conquer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DncConfig {
    /// K, the number of clusters and of embedding slices; 1 turns Divide and Conquer off.
    pub clusters: usize,
    /// Re-cluster the training set every this many steps (official: every 2 epochs).
    pub recluster_every: usize,
    /// First step of the final stage, which trains the whole embedding on the plain N×K
    /// sampler (official: `--finetune-epoch`, 190 of 200 epochs in its README command).
    pub final_step: usize,
    /// First step from which the loss sees the whole embedding while batches still come
    /// from the clusters (official: epochs ≥ finetune_epoch · 8 / 19, i.e. from epoch 80 for
    /// finetune epoch 190); 0: slices until `final_step`.
    pub full_embedding_step: usize,
    /// k-means restarts (official 5).
    pub kmeans_restarts: usize,
    /// k-means iterations per restart (official 100).
    pub kmeans_iterations: usize,
}

impl Default for DncConfig {
    fn default() -> Self {
        DncConfig {
            clusters: 1,
            recluster_every: 0,
            final_step: 0,
            full_embedding_step: 0,
            kmeans_restarts: 5,
            kmeans_iterations: 100,
        }
    }
}

/// `[xbm]`: cross-batch memory (Wang et al., "Cross-Batch Memory for Embedding Learning",
/// CVPR 2020; msight-tech/research-xbm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XbmConfig {
    /// Rows of the memory (a ring of the last `size` gathered embeddings and labels); 0
    /// turns the memory off. The official SOP setting is 55,000 at batch 64.
    pub size: usize,
    /// First step (1-based) that enqueues into the memory and adds its loss; before it the
    /// memory is empty, as in the official code (`XBM.START_ITERATION`).
    pub start: usize,
    /// Weight of the memory loss against the in-batch loss (official `XBM.WEIGHT`, 1.0).
    pub weight: f64,
}

impl Default for XbmConfig {
    fn default() -> Self {
        XbmConfig {
            size: 0,
            start: 0,
            weight: 1.0,
        }
    }
}

/// The whole configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[data]`
    pub data: DataConfig,
    /// `[sampler]`
    pub sampler: SamplerConfig,
    /// `[model]`
    pub model: ModelConfig,
    /// `[loss]`
    pub loss: LossConfig,
    /// `[miner]`
    pub miner: MinerConfig,
    /// `[optim]`
    pub optim: OptimConfig,
    /// `[lr]`
    pub lr: LrConfig,
    /// `[swa]`
    pub swa: SwaConfig,
    /// `[train]`
    pub train: TrainConfig,
    /// `[eval]`
    pub eval: EvalConfig,
    /// `[dist]`
    pub dist: DistConfig,
    /// `[distill]`
    pub distill: DistillConfig,
    /// `[dnc]`
    pub dnc: DncConfig,
    /// `[xbm]`
    pub xbm: XbmConfig,
}

/// Parses `value` as a TOML value (number, bool, array, quoted string); anything that
/// is not valid TOML is taken as a bare string.
fn parse_value(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

/// The first key of `table` that does not deserialise on its own (a wrong type, an
/// unknown key or section) and what is wrong with it: serde's message names the expected
/// type but not where. `None` if every key is fine alone.
fn locate_type_error(table: &toml::Table) -> Option<(String, String)> {
    let alone = |section: &str, value: toml::Value| -> Option<String> {
        let mut t = toml::Table::new();
        t.insert(section.to_string(), value);
        toml::Value::Table(t)
            .try_into::<Config>()
            .err()
            .map(|e| e.message().trim().to_string())
    };
    for (section, value) in table {
        match value {
            toml::Value::Table(keys) => {
                for (key, v) in keys {
                    let mut one = toml::Table::new();
                    one.insert(key.clone(), v.clone());
                    if let Some(msg) = alone(section, toml::Value::Table(one)) {
                        return Some((format!("{section}.{key}"), msg));
                    }
                }
            }
            other => {
                if let Some(msg) = alone(section, other.clone()) {
                    return Some((section.clone(), msg));
                }
            }
        }
    }
    None
}

/// Applies one `section.key=value` override to a TOML table.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (path, value) = assignment.split_once('=').ok_or_else(|| {
        Error::Config(format!(
            "override `{assignment}` is not of the form section.key=value"
        ))
    })?;
    let (section, key) = path.trim().split_once('.').ok_or_else(|| {
        Error::Config(format!(
            "override key `{}` must be section.key, e.g. train.steps",
            path.trim()
        ))
    })?;
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let sec = entry
        .as_table_mut()
        .ok_or_else(|| Error::Config(format!("`{section}` is a value, not a section")))?;
    sec.insert(key.to_string(), parse_value(value.trim()));
    Ok(())
}

/// Every `model.trunk` name (torchvision's model names, and `bninception` with the
/// names of the PyTorch port DML code uses); `model::trunk::build` builds each.
pub const TRUNKS: [&str; 20] = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "inception_v3",
    "mobilenet_v2",
    "bninception",
];

/// Checks `model.trunk` and `model.last_stride` (1 or 2; 1 only for the ResNets).
/// [`Config::validate`] calls it, and so does `model::trunk::build`.
///
/// ```
/// assert!(dml::config::check_trunk("resnet50", 1).is_ok());
/// let e = dml::config::check_trunk("resnet19", 2).unwrap_err().to_string();
/// assert!(e.contains("model.trunk: is `resnet19`, allowed: resnet18, resnet34"), "{e}");
/// assert!(dml::config::check_trunk("densenet121", 1).is_err());
/// ```
pub fn check_trunk(arch: &str, last_stride: usize) -> Result<()> {
    if !TRUNKS.contains(&arch) {
        return Err(Error::Config(format!(
            "model.trunk: is `{arch}`, allowed: {}",
            TRUNKS.join(", ")
        )));
    }
    if !matches!(last_stride, 1 | 2) {
        return Err(Error::Config(format!(
            "model.last_stride: is {last_stride}, allowed: 1, 2"
        )));
    }
    if last_stride != 2 && !arch.starts_with("resnet") {
        return Err(Error::Config(format!(
            "model.last_stride: is {last_stride}, but only the resnet trunks have a stride-1 \
             last stage, not model.trunk = `{arch}`; use 2"
        )));
    }
    Ok(())
}

/// Channels of the last feature map of trunk `arch` (what the head sees), or `None` for
/// a name outside [`TRUNKS`]. The config checks the heads' shapes with it before anything
/// is built; `tests/trunk_parity.rs` checks that every trunk `model::trunk::build` makes
/// has these channels.
///
/// ```
/// assert_eq!(dml::config::trunk_channels("resnet50"), Some(2048));
/// assert_eq!(dml::config::trunk_channels("vgg16"), None);
/// ```
pub fn trunk_channels(arch: &str) -> Option<usize> {
    Some(match arch {
        "resnet18" | "resnet34" => 512,
        "resnet50" | "resnet101" | "resnet152" | "inception_v3" | "efficientnet_b5" => 2048,
        "densenet121" | "bninception" => 1024,
        "densenet161" => 2208,
        "densenet169" => 1664,
        "densenet201" => 1920,
        "efficientnet_b0" | "efficientnet_b1" | "mobilenet_v2" => 1280,
        "efficientnet_b2" => 1408,
        "efficientnet_b3" => 1536,
        "efficientnet_b4" => 1792,
        "efficientnet_b6" => 2304,
        "efficientnet_b7" => 2560,
        _ => return None,
    })
}

/// The widths of the BFE head's two embeddings, the global branch's and the erasing
/// branch's reductions (official: 512 and 1024, whatever `model.embedding_dim` says).
pub const BFE_DIMS: [usize; 2] = [512, 1024];

/// Checks `model.cgd_descriptors` (1 to 3 letters of `S` average, `M` max, `G` GeM) for
/// an embedding of `dim` dimensions, which must divide evenly between them, and
/// `model.gem_p` when `G` is used. [`Config::validate`] calls it for `model.head =
/// "cgd"`, and so does the CGD head.
pub fn check_cgd_descriptors(spec: &str, dim: usize, gem_p: f64) -> Result<()> {
    let n = spec.chars().count();
    if !(1..=3).contains(&n) {
        return Err(Error::Config(format!(
            "model.cgd_descriptors: is {spec:?}; give 1 to 3 letters of S (average), M (max), G (GeM)"
        )));
    }
    if let Some(other) = spec.chars().find(|c| !matches!(c, 'S' | 'M' | 'G')) {
        return Err(Error::Config(format!(
            "model.cgd_descriptors: is {spec:?}, unknown descriptor `{other}`; allowed: S (average), M (max), G (GeM)"
        )));
    }
    if spec.contains('G') && !(gem_p.is_finite() && gem_p > 0.0) {
        return Err(Error::Config(format!(
            "model.gem_p: is {gem_p}, the GeM exponent must be positive and finite"
        )));
    }
    if dim == 0 || dim % n != 0 {
        return Err(Error::Config(format!(
            "model.embedding_dim: is {dim}, must be a positive multiple of the {n} descriptors \
             of model.cgd_descriptors = {spec:?}"
        )));
    }
    Ok(())
}

/// Checks `model.bfe_erase`: both fractions in [0, 1]. [`Config::validate`] calls it,
/// and so does the BFE head.
pub fn check_bfe_erase(erase: [f64; 2]) -> Result<()> {
    if erase.iter().any(|r| !(0.0..=1.0).contains(r)) {
        return Err(Error::Config(format!(
            "model.bfe_erase: is {erase:?}, both fractions must lie in [0, 1]"
        )));
    }
    Ok(())
}

/// The config spelling of a head (`model.head`).
pub fn head_name(h: HeadKind) -> &'static str {
    match h {
        HeadKind::Linear => "linear",
        HeadKind::Pool => "pool",
        HeadKind::Bfe => "bfe",
        HeadKind::Cgd => "cgd",
        HeadKind::Horde => "horde",
    }
}

/// The config spelling of a miner name.
pub fn miner_name(m: MinerName) -> &'static str {
    match m {
        MinerName::BatchHard => "batch_hard",
        MinerName::BatchAll => "batch_all",
        MinerName::SemiHard => "semi_hard",
        MinerName::MultiSimilarity => "multi_similarity",
        MinerName::DncCutoff => "dnc_cutoff",
        MinerName::None => "none",
    }
}

/// Checks the `[loss]` and `[miner]` keys and their pairing: a triplet loss needs a
/// triplet miner (`batch_hard`, `batch_all`, `semi_hard`, `none`), Multi-Similarity a
/// pair miner (`multi_similarity`, `none`) and cosine similarities, the margin loss
/// D&C's `dnc_cutoff` sampler (and only it) and Euclidean distances, Group Loss
/// `miner.name = none`. [`Config::validate`] calls it, and so does `loss::build`.
///
/// ```
/// use dml::config::{check_loss, LossConfig, LossName, MinerConfig, MinerName};
/// let loss = LossConfig { name: LossName::MultiSimilarity, ..Default::default() };
/// let miner = MinerConfig { name: MinerName::BatchHard, ..Default::default() };
/// let e = check_loss(&loss, &miner).unwrap_err().to_string();
/// assert!(e.contains("use miner.name = multi_similarity or none"), "{e}");
/// ```
pub fn check_loss(loss: &LossConfig, miner: &MinerConfig) -> Result<()> {
    let bad = |key: &str, v: f64, need: &str| Err(Error::Config(format!("{key}: is {v}, {need}")));
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let non_negative = |v: f64| v.is_finite() && v >= 0.0;
    for (key, v) in [
        ("loss.margin", loss.margin),
        ("miner.cutoff", miner.cutoff),
        ("miner.epsilon", miner.epsilon),
        ("loss.group_ce_weight", loss.group_ce_weight),
    ] {
        if !non_negative(v) {
            return bad(key, v, "must be finite and ≥ 0");
        }
    }
    for (key, v) in [
        ("loss.ms_alpha", loss.ms_alpha),
        ("loss.ms_beta", loss.ms_beta),
        ("loss.margin_beta", loss.margin_beta),
        ("loss.group_temperature", loss.group_temperature),
    ] {
        if !positive(v) {
            return bad(key, v, "must be positive");
        }
    }
    if !loss.ms_base.is_finite() {
        return bad("loss.ms_base", loss.ms_base, "must be finite");
    }
    if loss.group_iterations == 0 {
        return Err(Error::Config(
            "loss.group_iterations: is 0, must be at least 1".into(),
        ));
    }
    let miner_is = miner_name(miner.name);
    let pairing = |msg: String| Err(Error::Config(msg));
    match (loss.name, miner.name) {
        (
            LossName::Triplet,
            MinerName::BatchHard | MinerName::BatchAll | MinerName::SemiHard | MinerName::None,
        ) => {}
        (LossName::Triplet, MinerName::DncCutoff) => {
            return pairing(
                "miner.name: dnc_cutoff is the sampler of loss.name = margin: with loss.name = \
                 triplet use miner.name = batch_hard, batch_all, semi_hard or none"
                    .into(),
            )
        }
        (LossName::Triplet, _) => {
            return pairing(format!(
                "miner.name: {miner_is} mines pairs, but loss.name = triplet needs triplets: use \
                 miner.name = batch_hard, batch_all, semi_hard or none"
            ))
        }
        (LossName::MultiSimilarity, MinerName::MultiSimilarity | MinerName::None) => {}
        (LossName::MultiSimilarity, _) => {
            return pairing(format!(
                "miner.name: {miner_is} mines triplets, but loss.name = multi_similarity weighs \
                 pairs: use miner.name = multi_similarity or none"
            ))
        }
        (LossName::Margin, MinerName::DncCutoff) => {}
        (LossName::Margin, _) => {
            return pairing(format!(
                "miner.name: {miner_is} is not a sampler of loss.name = margin: use miner.name = \
                 dnc_cutoff"
            ))
        }
        (LossName::Group, MinerName::None) => {}
        (LossName::Group, _) => {
            return pairing(format!(
                "miner.name: {miner_is} has no meaning for loss.name = group (Group Loss uses the \
                 whole batch): use miner.name = none"
            ))
        }
    }
    match (loss.name, loss.distance) {
        (LossName::MultiSimilarity, LossDistance::Euclidean) => pairing(
            "loss.distance: euclidean is not defined for loss.name = multi_similarity (it works \
             on cosine similarities): use loss.distance = auto or cosine"
                .into(),
        ),
        (LossName::Margin, LossDistance::Cosine) => pairing(
            "loss.distance: cosine is not defined for loss.name = margin (it works on Euclidean \
             distances): use loss.distance = auto or euclidean"
                .into(),
        ),
        _ => Ok(()),
    }
}

impl Config {
    /// Parses TOML text, applies overrides, and validates.
    ///
    /// ```
    /// let c = dml::config::Config::parse("[train]\nsteps = 7", &["sampler.classes_per_batch=4".into()])?;
    /// assert_eq!((c.train.steps, c.sampler.classes_per_batch), (7, 4));
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Config(format!("not valid TOML: {e}")))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: Config = table.clone().try_into().map_err(|e: toml::de::Error| {
            let Some((key, msg)) = locate_type_error(&table) else {
                return Error::Config(e.message().trim().to_string());
            };
            let from_set = overrides.iter().any(|o| o.starts_with(&format!("{key}=")));
            let origin = if from_set { " (from --set)" } else { "" };
            Error::Config(format!("{key}{origin}: {msg}"))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        // Reading a FIFO would block until a writer appears.
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            return Err(Error::Config(format!(
                "{} is not a regular file: give a TOML config file",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, overrides).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The config with every file path (`data.train`, `data.test`, `data.val`,
    /// `data.gallery`, `model.pretrained`, `distill.teacher`) made absolute against the
    /// current directory, so that a run directory's `config.toml` works from anywhere.
    /// Symbolic links are kept as written.
    pub fn with_absolute_paths(&self) -> Result<Config> {
        let mut cfg = self.clone();
        for path in [
            &mut cfg.data.train,
            &mut cfg.data.test,
            &mut cfg.data.val,
            &mut cfg.data.gallery,
            &mut cfg.model.pretrained,
            &mut cfg.distill.teacher,
        ] {
            if !path.is_empty() && Path::new(path.as_str()).is_relative() {
                let absolute = std::path::absolute(path.as_str())
                    .map_err(|e| Error::Config(format!("cannot make {path} absolute: {e}")))?;
                *path = absolute.to_string_lossy().into_owned();
            }
        }
        Ok(cfg)
    }

    /// Checks that the loader's buffers for `world` ranks, `local_ranks` of them on this
    /// node, fit in `memory` bytes (the node's RAM): each rank keeps up to
    /// `prefetch + 2·workers + 1` batches of its `N·K / world` images as u8 pixels and
    /// float32 tensors (5 bytes per value, 3·S² values per image).
    pub fn check_memory(&self, world: usize, local_ranks: usize, memory: u64) -> Result<()> {
        let per_rank = self.global_batch().div_ceil(world.max(1)) as f64;
        let side = self.data.image_size as f64;
        let batches = (self.data.prefetch + 2 * self.data.workers + 1) as f64;
        let need = batches * per_rank * 3.0 * side * side * 5.0 * local_ranks.max(1) as f64;
        if need > memory as f64 {
            return Err(Error::Config(format!(
                "data.image_size = {}, sampler N·K = {} over {world} rank(s), data.prefetch = {} and data.workers = {}: the loaders of the {} rank(s) on this node need {} ({batches} batches of {per_rank} images × 3 × {}² × 5 bytes per rank), more than this machine's {}; lower data.image_size, data.prefetch or data.workers, or the batch",
                self.data.image_size,
                self.global_batch(),
                self.data.prefetch,
                self.data.workers,
                local_ranks.max(1),
                bytes_text(need),
                self.data.image_size,
                bytes_text(memory as f64)
            )));
        }
        Ok(())
    }

    /// The resolved configuration as TOML text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Config(format!("cannot serialise: {e}")))
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<()> {
        let fail = |key: &str, msg: String| Err(Error::Config(format!("{key}: {msg}")));
        if self.sampler.classes_per_batch < 2 {
            return fail(
                "sampler.classes_per_batch",
                format!(
                    "is {}, needs at least 2 so that negatives exist",
                    self.sampler.classes_per_batch
                ),
            );
        }
        if self.sampler.samples_per_class < 2 {
            return fail(
                "sampler.samples_per_class",
                format!(
                    "is {}, needs at least 2 so that positives exist",
                    self.sampler.samples_per_class
                ),
            );
        }
        if self.data.image_size < 16 {
            return fail(
                "data.image_size",
                format!("is {}, needs at least 16", self.data.image_size),
            );
        }
        for (key, side) in [
            ("data.image_size", self.data.image_size),
            ("data.resize", self.data.resize),
        ] {
            if side > MAX_IMAGE_SIDE {
                let one = 3.0 * (side as f64).powi(2) * 4.0;
                return fail(
                    key,
                    format!(
                        "is {side}, at most {MAX_IMAGE_SIDE}: one image's float32 input alone would need 3 × {side}² × 4 bytes = {} (typical: 224–512)",
                        bytes_text(one)
                    ),
                );
            }
        }
        if self.data.resize < self.data.image_size {
            return fail(
                "data.resize",
                format!(
                    "is {}, must be at least data.image_size ({})",
                    self.data.resize, self.data.image_size
                ),
            );
        }
        let [s0, s1] = self.data.crop_scale;
        if !(0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
            return fail(
                "data.crop_scale",
                format!("is [{s0}, {s1}], needs 0 < min ≤ max ≤ 1"),
            );
        }
        let [r0, r1] = self.data.crop_ratio;
        if !(0.0 < r0 && r0 <= r1) {
            return fail(
                "data.crop_ratio",
                format!("is [{r0}, {r1}], needs 0 < min ≤ max"),
            );
        }
        let [b, c, s, h] = self.data.color_jitter;
        if ![b, c, s, h]
            .iter()
            .all(|v| (0.0..f64::INFINITY).contains(v))
            || h > 0.5
        {
            return fail(
                "data.color_jitter",
                format!("is [{b}, {c}, {s}, {h}]: brightness, contrast, saturation ≥ 0 and hue in [0, 0.5]"),
            );
        }
        if !(0.0..=1.0).contains(&self.data.grayscale_p) {
            return fail(
                "data.grayscale_p",
                format!("is {}, must lie in [0, 1]", self.data.grayscale_p),
            );
        }
        if self.data.workers == 0 || self.data.prefetch == 0 {
            return fail("data.workers / data.prefetch", "must be at least 1".into());
        }
        if self.model.embedding_dim == 0 {
            return fail("model.embedding_dim", "must be positive".into());
        }
        for (key, dim) in [
            ("model.embedding_dim", self.model.embedding_dim),
            ("model.horde_dim", self.model.horde_dim),
        ] {
            if dim > MAX_DIM {
                return fail(
                    key,
                    format!(
                        "is {dim}, at most {MAX_DIM}: a 2048-channel trunk's projection alone would need 2048 × {dim} × 4 bytes = {}",
                        bytes_text(2048.0 * dim as f64 * 4.0)
                    ),
                );
            }
        }
        check_trunk(&self.model.trunk, self.model.last_stride)?;
        self.validate_head()?;
        check_loss(&self.loss, &self.miner)?;
        for (key, v) in [
            ("train.max_grad_norm", self.train.max_grad_norm),
            ("train.warn_weight_growth", self.train.warn_weight_growth),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return fail(key, format!("is {v}, must be ≥ 0 (0 turns it off)"));
            }
        }
        if self.optim.lr.is_nan() || self.optim.lr <= 0.0 {
            return fail(
                "optim.lr",
                format!("is {}, must be positive", self.optim.lr),
            );
        }
        let [beta1, beta2] = self.optim.betas;
        if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2)) {
            return fail(
                "optim.betas",
                format!(
                    "are [{beta1}, {beta2}], each must be in [0, 1) (Adam's default [0.9, 0.999])"
                ),
            );
        }
        if !(self.optim.eps > 0.0 && self.optim.eps.is_finite()) {
            return fail(
                "optim.eps",
                format!(
                    "is {}, must be positive and finite (Adam's default 1e-8)",
                    self.optim.eps
                ),
            );
        }
        for (key, v) in [
            ("optim.weight_decay", self.optim.weight_decay),
            ("optim.head_lr_mult", self.optim.head_lr_mult),
            ("loss.ce_weight", self.loss.ce_weight),
            ("distill.weight", self.distill.weight),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return fail(key, format!("is {v}, must be finite and ≥ 0"));
            }
        }
        if self.train.precision == Precision::Bf16 && self.train.device == "cpu" {
            return fail(
                "train.precision",
                "is \"bf16\", which needs CUDA, but train.device = \"cpu\": use train.precision = \"f32\" on the CPU, or train.device = \"cuda\"".into(),
            );
        }
        if !self.data.gallery.is_empty() && self.data.test.is_empty() {
            return fail(
                "data.gallery",
                "is set but data.test is empty: the query/gallery protocol takes its queries \
                 from data.test"
                    .into(),
            );
        }
        if self.lr.policy == LrPolicy::Multistep {
            self.validate_multistep()?;
        } else if self.lr.policy != LrPolicy::Constant {
            if self.lr.max_lr.is_nan() || self.lr.max_lr < self.optim.lr {
                return fail(
                    "lr.max_lr",
                    format!(
                        "is {}, must be at least optim.lr ({}) for a cyclic policy",
                        self.lr.max_lr, self.optim.lr
                    ),
                );
            }
            if self.lr.step_size == 0 {
                return fail("lr.step_size", "must be positive".into());
            }
        }
        if self.swa.start > 0 && self.swa.every == 0 {
            return fail("swa.every", "must be positive when swa.start is set".into());
        }
        if self.train.steps == 0 && self.train.epochs == 0 {
            return fail(
                "train.steps",
                "train.steps or train.epochs must be positive".into(),
            );
        }
        if !matches!(self.train.device.as_str(), "auto" | "cpu" | "cuda") {
            return fail(
                "train.device",
                format!("is `{}`, allowed: auto, cpu, cuda", self.train.device),
            );
        }
        if self.train.keep_checkpoints == 0 {
            return fail("train.keep_checkpoints", "must be at least 1".into());
        }
        if self.eval.batch_size == 0 {
            return fail("eval.batch_size", "must be positive".into());
        }
        if self.eval.folds < 2 || self.eval.fold >= self.eval.folds {
            return fail(
                "eval.fold",
                format!(
                    "is {} of eval.folds = {}; needs folds ≥ 2 and 0 ≤ fold < folds",
                    self.eval.fold, self.eval.folds
                ),
            );
        }
        const METRICS: [&str; 4] = [
            "precision_at_1",
            "r_precision",
            "mean_average_precision_at_r",
            "recall_at_1",
        ];
        if !METRICS.contains(&self.eval.metric.as_str()) {
            return fail(
                "eval.metric",
                format!("is `{}`, allowed: {}", self.eval.metric, METRICS.join(", ")),
            );
        }
        if !(self.loss.ce_smoothing >= 0.0 && self.loss.ce_smoothing < 1.0) {
            return fail(
                "loss.ce_smoothing",
                format!("is {}, needs 0 ≤ ε < 1", self.loss.ce_smoothing),
            );
        }
        if !(self.loss.ce_temperature > 0.0 && self.loss.ce_temperature.is_finite()) {
            return fail(
                "loss.ce_temperature",
                format!("is {}, must be positive", self.loss.ce_temperature),
            );
        }
        if self.dnc.clusters > 1 {
            if self.dnc.recluster_every == 0 || self.dnc.final_step == 0 {
                return fail(
                    "dnc.recluster_every / dnc.final_step",
                    format!(
                        "dnc.clusters = {} needs positive dnc.recluster_every and \
                         dnc.final_step (steps)",
                        self.dnc.clusters
                    ),
                );
            }
            let dims = self.model.embedding_dims();
            if let Some(d) = dims.iter().find(|&&d| d % self.dnc.clusters != 0) {
                let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
                return fail(
                    "dnc.clusters",
                    format!(
                        "is {}, must divide the dimension of every embedding the head \
                         returns: model.head = \"{}\" on model.trunk = `{}` returns \
                         embeddings of {} dimensions, and {d} does not divide by {}",
                        self.dnc.clusters,
                        head_name(self.model.head),
                        self.model.trunk,
                        dims.join(", "),
                        self.dnc.clusters
                    ),
                );
            }
            if self.dnc.full_embedding_step > self.dnc.final_step {
                return fail(
                    "dnc.full_embedding_step",
                    format!(
                        "is {}, after dnc.final_step ({}): the whole embedding already trains \
                         from dnc.final_step on",
                        self.dnc.full_embedding_step, self.dnc.final_step
                    ),
                );
            }
            if self.dnc.kmeans_restarts == 0 || self.dnc.kmeans_iterations == 0 {
                return fail(
                    "dnc.kmeans_restarts / dnc.kmeans_iterations",
                    "must be at least 1".into(),
                );
            }
        }
        self.validate_xbm()?;
        if !(self.dist.bucket_mb >= 0.0 && self.dist.bucket_mb.is_finite()) {
            return fail(
                "dist.bucket_mb",
                "must be a finite size in MiB, or 0 to choose by device".into(),
            );
        }
        Ok(())
    }

    /// Checks the keys of `model.head`'s kind.
    fn validate_head(&self) -> Result<()> {
        let m = &self.model;
        match m.head {
            HeadKind::Cgd => check_cgd_descriptors(&m.cgd_descriptors, m.embedding_dim, m.gem_p),
            HeadKind::Bfe => {
                match trunk_channels(&m.trunk) {
                    Some(c) if c % 4 != 0 => {
                        return Err(Error::Config(format!(
                            "model.head: \"bfe\" needs a trunk whose channels divide by 4 (the \
                             extra bottleneck's width is C/4); model.trunk = `{}` has {c}",
                            m.trunk
                        )))
                    }
                    _ => {}
                }
                check_bfe_erase(m.bfe_erase)
            }
            HeadKind::Horde if m.horde_order == 0 || m.horde_dim == 0 => {
                Err(Error::Config(format!(
                    "model.horde_order / model.horde_dim: are {} / {}, both must be positive \
                 (official 5 / 8192)",
                    m.horde_order, m.horde_dim
                )))
            }
            _ => Ok(()),
        }
    }

    /// Checks what the Reality Check protocol (`dml reality-check`) needs beyond
    /// [`validate`](Self::validate): validation every `eval.every` steps to pick each
    /// fold's model, a test split, and no separate validation split (folds are cut from
    /// `data.train`).
    pub fn validate_reality_check(&self) -> Result<()> {
        if self.eval.every == 0 {
            return Err(Error::Config(
                "eval.every: is 0; the Reality Check protocol picks each fold's model on \
                 validation: set eval.every > 0"
                    .into(),
            ));
        }
        if self.data.test.is_empty() || !self.data.val.is_empty() {
            return Err(Error::Config(
                "data.test / data.val: the Reality Check protocol needs data.test set and \
                 data.val empty (folds are cut from data.train)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks `[xbm]`: a memory at least one global batch long, a finite weight, and a
    /// loss that mines pairs or triplets against it.
    fn validate_xbm(&self) -> Result<()> {
        let x = &self.xbm;
        if x.size == 0 {
            return Ok(());
        }
        let fail = |key: &str, msg: String| Err(Error::Config(format!("{key}: {msg}")));
        let batch = self.sampler.classes_per_batch * self.sampler.samples_per_class;
        if x.size < batch {
            return fail(
                "xbm.size",
                format!(
                    "is {}, smaller than the global batch ({batch} = sampler.classes_per_batch × sampler.samples_per_class): the memory must hold at least one batch",
                    x.size
                ),
            );
        }
        if !(x.weight >= 0.0 && x.weight.is_finite()) {
            return fail(
                "xbm.weight",
                format!("is {}, must be finite and ≥ 0", x.weight),
            );
        }
        match self.loss.name {
            LossName::Triplet | LossName::MultiSimilarity | LossName::Margin => {}
            LossName::Group => {
                return fail(
                    "xbm.size",
                    "a memory has no meaning for loss.name = group: Group Loss refines class \
                     probabilities over the batch's own similarity graph, and the memory's \
                     rows have no logits; use loss.name = triplet, multi_similarity or margin"
                        .into(),
                )
            }
        }
        if !self.distill.teacher.is_empty() {
            return fail(
                "xbm.size",
                "a memory has no meaning with distill.teacher: distillation compares the \
                 student with the teacher on the same batch, and the memory holds no \
                 teacher embeddings; set xbm.size = 0 or distill.teacher = \"\""
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks the `multistep` keys: increasing milestones given one way, factors that
    /// match them, a positive γ.
    fn validate_multistep(&self) -> Result<()> {
        let lr = &self.lr;
        let fail = |key: &str, msg: String| Err(Error::Config(format!("{key}: {msg}")));
        let (key, milestones) = match (lr.milestones.is_empty(), lr.milestone_epochs.is_empty()) {
            (false, false) => {
                return fail(
                    "lr.milestones / lr.milestone_epochs",
                    "both are set: give the milestones in steps or in epochs, not both".into(),
                )
            }
            (true, false) => ("lr.milestone_epochs", &lr.milestone_epochs),
            _ => ("lr.milestones", &lr.milestones),
        };
        if milestones.is_empty() {
            return fail(
                "lr.milestones",
                "lr.policy = multistep needs lr.milestones (steps) or lr.milestone_epochs".into(),
            );
        }
        if milestones.windows(2).any(|w| w[0] >= w[1]) {
            return fail(
                key,
                format!("is {milestones:?}, must be strictly increasing"),
            );
        }
        if !lr.factors.is_empty() {
            if lr.factors.len() != milestones.len() + 1 {
                return fail(
                    "lr.factors",
                    format!(
                        "has {} entries, needs one more than {key} ({}): the factor before the \
                         first milestone and after each",
                        lr.factors.len(),
                        milestones.len()
                    ),
                );
            }
            if lr.factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
                return fail(
                    "lr.factors",
                    format!("is {:?}, must be positive", lr.factors),
                );
            }
        } else if !(lr.gamma.is_finite() && lr.gamma > 0.0) {
            return fail("lr.gamma", format!("is {}, must be positive", lr.gamma));
        }
        Ok(())
    }

    /// Global batch size N·K.
    pub fn global_batch(&self) -> usize {
        self.sampler.classes_per_batch * self.sampler.samples_per_class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_refused_with_the_bytes_they_would_need() {
        let err = Config::parse(
            "",
            &["data.image_size=100000".into(), "data.resize=100000".into()],
        )
        .unwrap_err()
        .to_string();
        // 3 × 100000² × 4 bytes = 1.2e11 bytes = 111.8 GiB.
        assert!(
            err.contains("data.image_size: is 100000, at most 8192"),
            "{err}"
        );
        assert!(err.contains("= 111.8 GiB"), "{err}");
        let err = Config::parse("", &["model.embedding_dim=1000000".into()])
            .unwrap_err()
            .to_string();
        // 2048 × 10⁶ × 4 bytes = 7.63 GiB.
        assert!(err.contains("model.embedding_dim: is 1000000"), "{err}");
        assert!(err.contains("= 7.6 GiB"), "{err}");
    }

    /// Names, pairings and head keys are refused by `Config::parse` itself, each naming
    /// the key and what is allowed, before any file is opened (issue 21).
    #[test]
    fn head_shapes_optimiser_ranges_and_precision_are_checked_when_parsing() {
        let parse = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::parse("", &sets).map_err(|e| e.to_string())
        };
        let dnc = ["dnc.recluster_every=10", "dnc.final_step=20"];
        let with_dnc = |sets: &[&'static str]| {
            let mut all = dnc.to_vec();
            all.extend_from_slice(sets);
            parse(&all)
        };
        // D&C slices every embedding the head returns, not model.embedding_dim alone:
        // BFE's are 512 and 1024 whatever embedding_dim says (384 / 3 would pass).
        let e = with_dnc(&[
            "model.head=bfe",
            "model.embedding_dim=384",
            "dnc.clusters=3",
        ])
        .unwrap_err();
        assert!(
            e.contains("dnc.clusters: is 3")
                && e.contains("embeddings of 512, 1024 dimensions, and 512 does not divide by 3"),
            "{e}"
        );
        // The pool head's embedding is the trunk's 512 channels: 100 does not matter.
        with_dnc(&[
            "model.head=pool",
            "model.embedding_dim=100",
            "dnc.clusters=4",
        ])
        .unwrap();
        let e = with_dnc(&["model.head=pool", "dnc.clusters=3"]).unwrap_err();
        assert!(e.contains("embeddings of 512 dimensions"), "{e}");
        // Fixed HORDE projections keep horde_dim for orders 2 and up.
        let horde = [
            "model.head=horde",
            "model.embedding_dim=64",
            "model.horde_dim=100",
        ];
        let e = with_dnc(&[&horde[..], &["model.horde_learned=false", "dnc.clusters=8"]].concat())
            .unwrap_err();
        assert!(
            e.contains("embeddings of 64, 100, 100, 100, 100 dimensions"),
            "{e}"
        );
        with_dnc(&[&horde[..], &["model.horde_learned=true", "dnc.clusters=8"]].concat()).unwrap();
        let cases: [(&[&str], &str); 6] = [
            (
                &["optim.betas=[1.0, 0.999]"],
                "optim.betas: are [1, 0.999], each must be in [0, 1)",
            ),
            (&["optim.betas=[0.9, -0.1]"], "optim.betas: are [0.9, -0.1]"),
            (
                &["optim.eps=0"],
                "optim.eps: is 0, must be positive and finite",
            ),
            (
                &["optim.weight_decay=-0.01"],
                "optim.weight_decay: is -0.01, must be finite and ≥ 0",
            ),
            (&["optim.head_lr_mult=nan"], "optim.head_lr_mult: is NaN"),
            (
                &["train.precision=bf16", "train.device=cpu"],
                "train.precision: is \"bf16\", which needs CUDA, but train.device = \"cpu\"",
            ),
        ];
        for (sets, want) in cases {
            let e = parse(sets).unwrap_err();
            assert!(e.contains(want), "{sets:?}: {e}");
        }
        // bf16 on `auto` is decided on the machine (device::kind), not here.
        parse(&["train.precision=bf16"]).unwrap();
    }

    #[test]
    fn names_pairings_and_head_keys_are_checked_when_parsing() {
        let err = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::parse("", &sets).unwrap_err().to_string()
        };
        let cases: [(&[&str], &str); 12] = [
            (&["model.trunk=resnet19"], "model.trunk: is `resnet19`, allowed: resnet18, resnet34, resnet50"),
            (&["model.trunk=densenet121", "model.last_stride=1"], "model.last_stride: is 1, but only the resnet trunks"),
            (&["model.last_stride=3"], "model.last_stride: is 3, allowed: 1, 2"),
            (&["miner.name=multi_similarity"], "miner.name: multi_similarity mines pairs, but loss.name = triplet"),
            (&["loss.name=multi_similarity", "miner.name=semi_hard"], "use miner.name = multi_similarity or none"),
            (&["loss.name=margin"], "miner.name: batch_hard is not a sampler of loss.name = margin: use miner.name = dnc_cutoff"),
            (&["loss.name=group"], "miner.name: batch_hard has no meaning for loss.name = group"),
            (&["loss.name=multi_similarity", "miner.name=none", "loss.distance=euclidean"], "loss.distance: euclidean is not defined"),
            (&["loss.margin=-1"], "loss.margin: is -1, must be finite and ≥ 0"),
            (&["model.head=cgd", "model.cgd_descriptors=SX"], "model.cgd_descriptors: is \"SX\", unknown descriptor `X`; allowed: S"),
            (&["model.head=cgd", "model.cgd_descriptors=SMG", "model.embedding_dim=128"], "model.embedding_dim: is 128, must be a positive multiple of the 3"),
            (&["model.head=bfe", "model.bfe_erase=[0.5, 1.5]"], "model.bfe_erase: is [0.5, 1.5]"),
        ];
        for (sets, want) in cases {
            let e = err(sets);
            assert!(e.contains(want), "{sets:?}: {e}");
        }
        let e = err(&["model.head=horde", "model.horde_dim=0"]);
        assert!(
            e.contains("model.horde_order / model.horde_dim: are 5 / 0"),
            "{e}"
        );
        // Every registered trunk parses, with the stride each family allows.
        for t in TRUNKS {
            Config::parse("", &[format!("model.trunk={t}")]).unwrap();
        }
        Config::parse(
            "",
            &["model.trunk=resnet50".into(), "model.last_stride=1".into()],
        )
        .unwrap();
        // The Reality Check protocol's own needs.
        let rc = Config::parse("", &["data.test=t.dmlds".into(), "eval.every=0".into()]).unwrap();
        let e = rc.validate_reality_check().unwrap_err().to_string();
        assert!(e.contains("eval.every: is 0"), "{e}");
    }

    #[test]
    fn cross_batch_memory_combinations_without_a_meaning_are_refused() {
        let err = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::parse("", &sets).unwrap_err().to_string()
        };
        // The default global batch is 8 × 4 = 32 rows.
        let e = err(&["xbm.size=31"]);
        assert!(
            e.contains("xbm.size: is 31, smaller than the global batch (32"),
            "{e}"
        );
        let e = err(&["xbm.size=64", "loss.name=group", "miner.name=none"]);
        assert!(e.contains("no meaning for loss.name = group"), "{e}");
        let e = err(&["xbm.size=64", "distill.teacher=runs/t"]);
        assert!(e.contains("no meaning with distill.teacher"), "{e}");
        Config::parse(
            "",
            &[
                "xbm.size=64".into(),
                "loss.name=margin".into(),
                "miner.name=dnc_cutoff".into(),
            ],
        )
        .unwrap();
        let e = err(&["xbm.size=64", "xbm.weight=-1"]);
        assert!(e.contains("xbm.weight: is -1"), "{e}");
        // Off by default; a memory of exactly one batch is allowed.
        assert_eq!(Config::parse("", &[]).unwrap().xbm.size, 0);
        Config::parse("", &["xbm.size=32".into()]).unwrap();
    }

    #[test]
    fn loader_buffers_beyond_the_machines_memory_are_refused() {
        let cfg = Config::parse(
            "[sampler]\nclasses_per_batch = 64\nsamples_per_class = 8\n[data]\nimage_size = 1024\nresize = 1024\nworkers = 4\nprefetch = 4\n",
            &[],
        )
        .unwrap();
        // 13 batches × 256 images × 3 × 1024² × 5 bytes = 49,920 MiB = 48.75 GiB per
        // rank at W = 2.
        let err = cfg.check_memory(2, 1, 24 << 30).unwrap_err().to_string();
        assert!(err.contains("need 48.8 GiB"), "{err}");
        assert!(err.contains("this machine's 24.0 GiB"), "{err}");
        // Sixteen ranks on sixteen nodes: 13 × 32 × 15 MiB = 6.1 GiB each.
        cfg.check_memory(16, 1, 24 << 30).unwrap();
        // Eight of them on one node: 48.75 GiB.
        assert!(cfg.check_memory(16, 8, 24 << 30).is_err());
    }

    #[test]
    fn a_type_error_names_the_key_its_origin_and_the_type() {
        let set = ["sampler.classes_per_batch=\"eight\"".to_string()];
        let e = Config::parse("[train]\nsteps = 3", &set)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config: sampler.classes_per_batch (from --set): invalid type: string \"eight\", expected usize"
        );
        let e = Config::parse("[train]\nsteps = \"many\"", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config: train.steps: invalid type: string \"many\", expected usize"
        );
        let e = Config::parse("[tran]\nsteps = 3", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config: tran.steps: unknown field `tran`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_lists_known_ones() {
        let e = Config::parse("[train]\nstpes = 3", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("stpes") && e.contains("steps") && e.contains("seed"),
            "{e}"
        );
    }

    #[test]
    fn bad_enum_lists_allowed_values() {
        let e = Config::parse("", &["loss.name=contrastive".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("contrastive") && e.contains("multi_similarity"),
            "{e}"
        );
    }

    #[test]
    fn override_types_and_validation() {
        let c = Config::parse("", &["optim.lr=0.5".into(), "train.device=cpu".into()]).unwrap();
        assert_eq!(c.optim.lr, 0.5);
        assert_eq!(c.train.device, "cpu");
        let e = Config::parse("", &["sampler.samples_per_class=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sampler.samples_per_class"), "{e}");
        assert!(Config::parse("", &["trainsteps=3".into()]).is_err());
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = Config::parse(
            "",
            &["model.bn=train".into(), "lr.policy=triangular2".into()],
        )
        .unwrap();
        let back = Config::parse(&c.to_toml().unwrap(), &[]).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn multistep_keys_are_checked() {
        let parse = |sets: &[&str]| {
            let mut all = vec!["lr.policy=multistep".to_string()];
            all.extend(sets.iter().map(|s| s.to_string()));
            Config::parse("", &all)
        };
        let err = |sets: &[&str]| parse(sets).unwrap_err().to_string();
        assert!(err(&[]).contains("lr.milestones"));
        assert!(err(&["lr.milestones=[5, 5]"]).contains("strictly increasing"));
        let both = err(&["lr.milestones=[5]", "lr.milestone_epochs=[1]"]);
        assert!(both.contains("not both"), "{both}");
        let factors = err(&["lr.milestones=[5, 9]", "lr.factors=[1.0, 0.1]"]);
        assert!(
            factors.contains("lr.factors") && factors.contains("one more"),
            "{factors}"
        );
        assert!(err(&["lr.milestones=[5]", "lr.gamma=0"]).contains("lr.gamma"));
        let ok = parse(&["lr.milestone_epochs=[60, 80]", "lr.gamma=0.1"]).unwrap();
        assert_eq!(ok.lr.milestone_epochs, vec![60, 80]);
        // A cyclic policy's max_lr is not required of multistep.
        assert!(parse(&["lr.milestones=[3]", "lr.max_lr=0"]).is_ok());
    }

    #[test]
    fn dnc_full_embedding_step_must_not_follow_the_final_step() {
        let sets = |full: usize| {
            vec![
                "dnc.clusters=2".to_string(),
                "dnc.recluster_every=10".into(),
                "dnc.final_step=50".into(),
                format!("dnc.full_embedding_step={full}"),
            ]
        };
        let e = Config::parse("", &sets(60)).unwrap_err().to_string();
        assert!(
            e.contains("dnc.full_embedding_step") && e.contains("50"),
            "{e}"
        );
        assert!(Config::parse("", &sets(20)).is_ok());
    }
}
