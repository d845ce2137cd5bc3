//! Trunks against torchvision (DESIGN.md invariant 6, weight import).
//!
//! Oracle: `tools/torchvision_to_safetensors.py` run with the venv's python during the
//! test: it exports a randomly initialised torchvision model (torch.manual_seed(0), with
//! `--perturb-bn` so that BatchNorm statistics matter) and torchvision's feature map in
//! eval mode on a fixed input (torch.manual_seed(1), randn [2, 3, S, S]). dml imports
//! the files with strict loading and must give the same map (≤ 1e-4 of its max |·|).
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use dml::config::{self, BnMode, HeadKind, ModelConfig};
use dml::model::{trunk, weights, Model};
use dml::Error;
use tch::{Device, Kind, Tensor};

fn tool() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tools/torchvision_to_safetensors.py"
    ))
}

/// (arch, input size, last_stride) of every parity case.
const CASES: [(&str, i64, usize); 7] = [
    ("resnet18", 64, 2),
    // 64 px: stride 16 with last_stride 1 → a 4×4 map.
    ("resnet50", 64, 1),
    ("densenet121", 64, 2),
    ("efficientnet_b0", 64, 2),
    ("mobilenet_v2", 64, 2),
    ("inception_v3", 96, 2),
    // Not in torchvision: tools/bninception.py, through the same export tool.
    ("bninception", 96, 2),
];

/// Exports every case once per test process, in one python process (importing torch
/// costs seconds): the tool's `main` is called once per case with the CLI arguments
/// `--arch A --random --perturb-bn --threads 1 --last-stride L --input-size S --out A.safetensors
/// --features A.features.safetensors`.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("trunk_parity");
        std::fs::create_dir_all(&dir).unwrap();
        let mut calls = String::new();
        for (arch, size, ls) in CASES {
            let w = dir.join(format!("{arch}.safetensors"));
            let f = dir.join(format!("{arch}.features.safetensors"));
            calls += &format!(
                "t.main(['--arch', '{arch}', '--random', '--perturb-bn', '--threads', '1', '--last-stride', '{ls}', \
                 '--input-size', '{size}', '--out', r'{}', '--features', r'{}'])\n",
                w.display(),
                f.display()
            );
        }
        let tools = tool().parent().unwrap().to_path_buf();
        let script = format!(
            "import sys\nsys.path.insert(0, r'{}')\nimport torchvision_to_safetensors as t\n{calls}",
            tools.display()
        );
        common::run_python(["-c", &script]);
        dir
    })
}

/// Model::new under a lock: torch's global RNG is shared by the test threads, and
/// "same seed, same init" only holds when no other test draws in between.
fn new_model(c: &ModelConfig, kind: Kind, seed: u64) -> dml::Result<Model> {
    locked(|| Model::new(c, Device::Cpu, kind, seed))
}

/// Runs `f` (which draws from torch's RNG) while no other test does.
fn locked<T>(f: impl FnOnce() -> T) -> T {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

fn cfg(arch: &str, pretrained: &Path, last_stride: usize) -> ModelConfig {
    ModelConfig {
        trunk: arch.into(),
        pretrained: pretrained.to_string_lossy().into_owned(),
        pretrained_strict: true,
        head: HeadKind::Pool,
        last_stride,
        ..ModelConfig::default()
    }
}

fn read(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// max |a − b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    let diff = (&a - &b).abs().max().double_value(&[]);
    diff / b.abs().max().double_value(&[]).max(1e-30)
}

/// Torchvision-normalised RGB whose Caffe conversion (BGR in [0, 255] minus
/// (104, 117, 128)) is `bgr`: the inverse of `BnInception::convert_input`, in float64.
fn from_caffe_bgr(bgr: &Tensor) -> Tensor {
    let mean = [0.485, 0.456, 0.406];
    let std = [0.229, 0.224, 0.225];
    let caffe = [104.0, 117.0, 128.0];
    let x = bgr.to_kind(Kind::Double).flip([1]);
    let channel = |c: usize| {
        // RGB channel c was BGR channel 2 − c.
        ((x.narrow(1, c as i64, 1) + caffe[2 - c]) / 255.0 - mean[c]) / std[c]
    };
    Tensor::cat(&[channel(0), channel(1), channel(2)], 1).to_kind(bgr.kind())
}

#[test]
fn bninception_sees_caffe_bgr_from_the_loaders_pixels() {
    // Pixels through the loader's normalisation, then the trunk's conversion: BGR in
    // [0, 255] minus (104, 117, 128), what the ported ImageNet weights expect.
    let pixels: Vec<u8> = (0..2 * 5 * 5 * 3).map(|i| (i * 37 % 256) as u8).collect();
    let batch = dml::data::loader::Batch {
        step: 0,
        pixels: pixels.clone(),
        labels: vec![0, 1],
        indices: vec![0, 1],
        size: 5,
        images: None,
    };
    let normalised = batch.to_tensor(tch::Device::Cpu, Kind::Double);
    let x = Tensor::from_slice(&pixels)
        .view([2, 5, 5, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Double);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let trunk = dml::model::trunk::build(&(vs.root() / "trunk"), "bninception", 2).unwrap();
    let got = trunk.convert_input(&normalised);
    let caffe = Tensor::from_slice(&[104.0, 117.0, 128.0]).view([1, 3, 1, 1]);
    let want = x.flip([1]) - caffe;
    let err = (&got - &want).abs().max().double_value(&[]);
    assert!(err <= 1e-9, "BGR conversion off by {err}");
    // The torchvision trunks take the normalised images as they are.
    let resnet = dml::model::trunk::build(&(vs.root() / "r"), "resnet18", 2).unwrap();
    assert!(resnet.convert_input(&normalised).equal(&normalised));
}

fn parity(arch: &str, size: i64, last_stride: usize, kind: Kind) {
    tch::set_num_threads(1);
    let case = CASES.iter().find(|c| c.0 == arch).unwrap();
    assert_eq!((case.1, case.2), (size, last_stride));
    let w = fixtures().join(format!("{arch}.safetensors"));
    let f = fixtures().join(format!("{arch}.features.safetensors"));
    let model = new_model(&cfg(arch, &w, last_stride), kind, 7).unwrap();
    let fx = read(&f);
    let want = &fx["features"];
    // The model takes torchvision-normalised images and converts them to its trunk's
    // convention; the fixture's input is already in that convention.
    let input = match arch {
        "bninception" => from_caffe_bgr(&fx["input"]),
        _ => fx["input"].shallow_clone(),
    };
    let got = tch::no_grad(|| model.feature_map(&input.to_kind(kind), false));
    assert_eq!(got.size(), want.size(), "{arch}: feature map shape");
    assert_eq!(got.kind(), kind);
    let err = rel_err(&got, want);
    assert!(err <= 1e-4, "{arch}: relative error {err:e}");
    // head = pool: the embedding is the global average of that map.
    let pooled = tch::no_grad(|| model.forward(&input.to_kind(kind), false));
    assert_eq!(model.embedding_dim() as i64, want.size()[1]);
    let err = rel_err(&pooled, &want.mean_dim(&[2i64, 3][..], false, Kind::Float));
    assert!(err <= 1e-4, "{arch}: pooled relative error {err:e}");
}

#[test]
fn resnet18_matches_torchvision() {
    parity("resnet18", 64, 2, Kind::Float);
}

#[test]
fn resnet18_f64_matches_torchvision_and_is_all_f64() {
    parity("resnet18", 64, 2, Kind::Double);
    let m = new_model(&ModelConfig::default(), Kind::Double, 0).unwrap();
    for (name, t) in m.named_variables() {
        assert_eq!(t.kind(), Kind::Double, "{name}");
    }
}

#[test]
fn resnet50_last_stride_1_matches_torchvision() {
    parity("resnet50", 64, 1, Kind::Float);
}

#[test]
fn densenet121_matches_torchvision() {
    parity("densenet121", 64, 2, Kind::Float);
}

#[test]
fn efficientnet_b0_matches_torchvision() {
    parity("efficientnet_b0", 64, 2, Kind::Float);
}

#[test]
fn mobilenet_v2_matches_torchvision() {
    parity("mobilenet_v2", 64, 2, Kind::Float);
}

#[test]
fn inception_v3_matches_torchvision() {
    parity("inception_v3", 96, 2, Kind::Float);
}

/// BN-Inception against the PyTorch definition in tools/bninception.py (the names of
/// Cadene/pretrained-models.pytorch, whose ImageNet weights DML papers start from).
#[test]
fn bninception_matches_the_pytorch_port() {
    parity("bninception", 96, 2, Kind::Float);
}

#[test]
fn unknown_trunk_lists_known_names() {
    let c = ModelConfig {
        trunk: "vgg16".into(),
        ..ModelConfig::default()
    };
    let err = new_model(&c, Kind::Float, 0).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Config(_)), "{msg}");
    for name in trunk::known() {
        assert!(msg.contains(name), "{msg} lacks {name}");
    }
    assert!(
        msg.contains("vgg16") && msg.contains("efficientnet_b7"),
        "{msg}"
    );
}

#[test]
fn strict_load_names_missing_unexpected_and_wrong_shape() {
    // A file made from resnet18's own variables, with conv1.weight removed, an extra
    // tensor, bn1.weight of the wrong shape and a num_batches_tracked (ignored).
    let m = new_model(&ModelConfig::default(), Kind::Float, 0).unwrap();
    let mut tensors: Vec<(String, Tensor)> = m
        .named_variables()
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("trunk.").map(|s| (s.to_string(), t)))
        .filter(|(n, _)| n != "conv1.weight")
        .map(|(n, t)| {
            if n == "bn1.weight" {
                (n, Tensor::ones([3], (Kind::Float, Device::Cpu)))
            } else {
                (n, t.detach().zero_() + 0.5)
            }
        })
        .collect();
    let n_vars = tensors.len();
    tensors.push((
        "extra.weight".into(),
        Tensor::ones([2], (Kind::Float, Device::Cpu)),
    ));
    tensors.push((
        "bn1.num_batches_tracked".into(),
        Tensor::zeros([], (Kind::Int64, Device::Cpu)),
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();

    let mut m = new_model(&ModelConfig::default(), Kind::Float, 0).unwrap();
    let err = weights::load_pretrained(&mut m.vs, &path, "trunk.", true).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Config(_)), "{msg}");
    for needle in [
        "conv1.weight",
        "extra.weight",
        "bn1.weight: file [3] vs model [64]",
    ] {
        assert!(msg.contains(needle), "{msg} lacks {needle}");
    }
    assert!(!msg.contains("num_batches_tracked"), "{msg}");

    let r = weights::load_pretrained(&mut m.vs, &path, "trunk.", false).unwrap();
    assert_eq!(r.missing, vec!["conv1.weight".to_string()]);
    assert_eq!(r.unexpected, vec!["extra.weight".to_string()]);
    assert_eq!(r.wrong_shape.len(), 1);
    // Everything but bn1.weight was copied (value 0.5).
    assert_eq!(r.loaded, n_vars - 1);
    let v = m.vs.variables();
    assert_eq!(
        v["trunk.layer1.0.conv1.weight"]
            .mean(Kind::Float)
            .double_value(&[]),
        0.5
    );
    assert_eq!(
        v["trunk.bn1.running_var"]
            .mean(Kind::Float)
            .double_value(&[]),
        0.5
    );
    assert_eq!(
        v["trunk.bn1.weight"].mean(Kind::Float).double_value(&[]),
        1.0
    );

    // Through the config: a missing file and a strict mismatch are config errors.
    let c = ModelConfig {
        pretrained: path.to_string_lossy().into_owned(),
        ..ModelConfig::default()
    };
    let msg = new_model(&c, Kind::Float, 0).unwrap_err().to_string();
    assert!(msg.contains("extra.weight"), "{msg}");
}

#[test]
fn frozen_batchnorm_is_not_trainable() {
    // resnet18: 20 convolutions (conv1, 8 blocks × 2, 3 downsamples) and 20 BatchNorms
    // (bn1, 8 × 2, 3 downsample.1), each BN with weight and bias; head.fc weight + bias.
    let frozen = new_model(&ModelConfig::default(), Kind::Float, 0).unwrap();
    let names: Vec<&str> = frozen.trainable().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 20 + 2, "{names:?}");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert!(
        names.contains(&"head.fc.weight") && names.contains(&"trunk.layer2.0.downsample.0.weight")
    );
    let vars = frozen.vs.variables();
    assert!(!vars["trunk.layer2.0.downsample.1.weight"].requires_grad());
    assert!(!vars["trunk.bn1.bias"].requires_grad());
    assert!(vars["trunk.conv1.weight"].requires_grad());

    let c = ModelConfig {
        bn: BnMode::Train,
        ..ModelConfig::default()
    };
    let train = new_model(&c, Kind::Float, 0).unwrap();
    assert_eq!(train.trainable().len(), 20 + 40 + 2);
    // 20 BNs × (weight, bias, running_mean, running_var) + 20 convs + head.
    assert_eq!(train.named_variables().len(), 80 + 20 + 2);
}

#[test]
fn heads_and_init() {
    tch::set_num_threads(1);
    let x = locked(|| Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)));
    // head = linear: L2-normalised embedding_dim vectors.
    let m = new_model(&ModelConfig::default(), Kind::Float, 3).unwrap();
    let e = m.forward(&x, false);
    assert_eq!(e.size(), vec![2, 128]);
    let norms = e.norm_scalaropt_dim(2.0, &[1i64][..], false);
    assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    // head = pool: the trunk's channels (resnet50: 2048).
    let c = ModelConfig {
        trunk: "resnet50".into(),
        head: HeadKind::Pool,
        ..ModelConfig::default()
    };
    let p = new_model(&c, Kind::Float, 3).unwrap();
    assert_eq!(p.embedding_dim(), 2048);
    assert_eq!(p.forward(&x, false).size(), vec![2, 2048]);

    // Same seed, same init; another seed, another one.
    let a = new_model(&ModelConfig::default(), Kind::Float, 3).unwrap();
    let w = |m: &Model| m.vs.variables()["trunk.layer3.1.conv2.weight"].copy();
    assert!(w(&a).equal(&w(&m)));
    let b = new_model(&ModelConfig::default(), Kind::Float, 4).unwrap();
    assert!(!w(&a).equal(&w(&b)));

    // torchvision's ResNet init: kaiming_normal_(fan_out, relu): conv1 [64, 3, 7, 7] has
    // std √(2 / (64·49)) = 0.02526; 9408 draws give the sample std within ±3 %.
    // BN weight 1, bias 0, running mean 0, running var 1.
    let v = a.vs.variables();
    let std = v["trunk.conv1.weight"].std(true).double_value(&[]);
    assert!((std / (2.0f64 / 3136.0).sqrt() - 1.0).abs() < 0.03, "{std}");
    assert_eq!(
        v["trunk.layer1.0.bn1.weight"]
            .mean(Kind::Float)
            .double_value(&[]),
        1.0
    );
    assert_eq!(
        v["trunk.layer1.0.bn1.bias"].abs().max().double_value(&[]),
        0.0
    );
    assert_eq!(
        v["trunk.layer1.0.bn1.running_var"]
            .mean(Kind::Float)
            .double_value(&[]),
        1.0
    );
}

#[test]
fn batchnorm_prefixes_and_last_stride() {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let t = locked(|| trunk::build(&(vs.root() / "trunk"), "resnet50", 1)).unwrap();
    let p = t.batchnorm_prefixes();
    // resnet50: bn1 + 16 blocks × 3 + 4 downsamples = 53 BatchNorms.
    assert_eq!(p.len(), 53);
    assert!(p.contains(&"trunk.layer1.0.bn1".to_string()));
    assert!(p.contains(&"trunk.layer4.0.downsample.1".to_string()));
    let x = Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    // 64 / 16 = 4 with layer4 at stride 1.
    assert_eq!(t.forward(&x, false).size(), vec![1, 2048, 4, 4]);
    // Rejected before anything is drawn.
    assert!(trunk::build(&vs.root(), "densenet121", 1).is_err());
    assert!(trunk::build(&vs.root(), "resnet18", 3).is_err());
}

/// `model.channels_last`: weights and inputs in NHWC memory order give the same
/// embeddings and gradients as the default layout (CPU convolutions support both; on
/// CUDA it selects cuDNN's NHWC kernels).
#[test]
fn channels_last_gives_the_same_embeddings_and_gradients() {
    tch::set_num_threads(1);
    let x = locked(|| Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu)));
    let base = ModelConfig {
        embedding_dim: 16,
        ..ModelConfig::default()
    };
    let nhwc = ModelConfig {
        channels_last: true,
        ..base.clone()
    };
    let (a, b) = (
        new_model(&base, Kind::Float, 5).unwrap(),
        new_model(&nhwc, Kind::Float, 5).unwrap(),
    );
    let w = b.vs.variables()["trunk.layer1.0.conv1.weight"].shallow_clone();
    assert_eq!(w.stride()[1], 1, "weights are stored channels-last");
    let (ea, eb) = (a.forward(&x, false), b.forward(&x, false));
    let de = (&ea - &eb).abs().max().double_value(&[]);
    assert!(de < 1e-5, "embeddings differ by {de}");
    // A loss with a non-zero gradient (the squared norm of unit vectors would have none).
    let target = locked(|| Tensor::randn([4, 16], (Kind::Float, Device::Cpu)));
    (&ea * &target).sum(Kind::Float).backward();
    (&eb * &target).sum(Kind::Float).backward();
    for name in ["head.fc.weight", "trunk.layer4.1.conv2.weight"] {
        let g = |m: &Model| m.vs.variables()[name].grad();
        let d = (g(&a) - g(&b)).abs().max().double_value(&[]);
        let scale = g(&a).abs().max().double_value(&[]);
        assert!(
            d <= 1e-3 * scale,
            "{name}: gradient differs by {d} (scale {scale})"
        );
    }
}

/// The config checks head shapes (D&C's slices, BFE's C/4 bottleneck) with
/// `config::trunk_channels` before anything is built: every trunk must have those channels.
#[test]
fn every_trunk_has_the_channels_the_config_expects() {
    for name in trunk::known() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        // Initialising draws from torch's RNG: under the lock, as `new_model`.
        let t = locked(|| trunk::build(&(vs.root() / "trunk"), name, 2)).unwrap();
        assert_eq!(
            Some(t.out_channels()),
            config::trunk_channels(name),
            "{name}"
        );
    }
}

/// `ModelConfig::embedding_dims` (what the config checks D&C's slicing against) is what
/// every head returns.
#[test]
fn every_head_returns_the_embedding_sizes_the_config_expects() {
    let base = ModelConfig {
        embedding_dim: 48,
        horde_order: 3,
        horde_dim: 20,
        ..ModelConfig::default()
    };
    let cases = [
        (HeadKind::Linear, true),
        (HeadKind::Pool, true),
        (HeadKind::Bfe, true),
        (HeadKind::Cgd, true),
        (HeadKind::Horde, true),
        (HeadKind::Horde, false),
    ];
    for (head, learned) in cases {
        let c = ModelConfig {
            head,
            horde_learned: learned,
            cgd_descriptors: "SG".into(),
            ..base.clone()
        };
        let m = new_model(&c, Kind::Float, 0).unwrap();
        let x = locked(|| Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)));
        let out = tch::no_grad(|| m.forward_global(&m.forward_local(&x, None), None));
        let dims: Vec<usize> = out
            .embeddings
            .iter()
            .map(|e| e.size()[1] as usize)
            .collect();
        assert_eq!(dims, c.embedding_dims(), "{head:?}, learned {learned}");
    }
}
