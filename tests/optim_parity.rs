//! Parity of dml::optim with torch.optim (Adam, AdamW, CyclicLR, AveragedModel,
//! update_bn). Fixtures: tests/fixtures/optim/, made by
//! `.venv/bin/python tools/make_optim_fixtures.py --out tests/fixtures/optim`
//! (torch 2.13; the command is also recorded in cases.json and the safetensors metadata).
use std::collections::HashMap;
use std::path::PathBuf;

use dml::config::{LrConfig, LrPolicy, OptimConfig, OptimName, SwaConfig};
use dml::optim::{
    bn_momentum_for, learning_rate, lr_range, update_bn, Adam, BnStats, ParamGroup, Swa,
};
use dml::Error;
use serde_json::Value;
use tch::{Kind, Tensor};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture_dir().join(name))
        .unwrap()
        .into_iter()
        .collect()
}

/// A float64 fixture tensor as numbers (the fixtures hold every float bit-exactly;
/// cases.json gives only names and structure).
fn f64s(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t).unwrap()
}

/// max |a − b| / max |b|: the difference relative to the tensor's scale.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    assert_eq!(a.kind(), b.kind());
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    (a - &b).abs().max().double_value(&[]) / scale
}

fn tol(tag: &str) -> f64 {
    if tag == "f32" {
        1e-6
    } else {
        1e-12
    }
}

fn bit_equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}

/// Parameters (fresh leaves requiring grad, from `values`) grouped as in cases.json.
fn make_groups(
    spec: &Value,
    fx: &HashMap<String, Tensor>,
    values: &HashMap<String, Tensor>,
) -> Vec<ParamGroup> {
    let lr_mult = f64s(&fx["lr_mult"]);
    spec["groups"]
        .as_array()
        .unwrap()
        .iter()
        .zip(lr_mult)
        .map(|(g, lr_mult)| ParamGroup {
            name: g["name"].as_str().unwrap().to_string(),
            lr_mult,
            params: g["params"]
                .as_object()
                .unwrap()
                .keys()
                .map(|p| (p.clone(), values[p].detach().copy().set_requires_grad(true)))
                .collect(),
        })
        .collect()
}

fn optim_config(cname: &str, fx: &HashMap<String, Tensor>) -> OptimConfig {
    let [weight_decay, b1, b2, eps] = f64s(&fx[&format!("{cname}.hyper")])[..] else {
        panic!("{cname}.hyper has four entries");
    };
    OptimConfig {
        name: if cname == "adamw" {
            OptimName::Adamw
        } else {
            OptimName::Adam
        },
        lr: 1.0, // unused by Adam: the learning rate is passed to step()
        weight_decay,
        betas: [b1, b2],
        eps,
        head_lr_mult: 1.0,
    }
}

/// Gives every parameter that has a fixture gradient at step `k` exactly that gradient:
/// d/dp Σ p·g = g, accumulated onto a zeroed (or undefined) gradient.
fn set_grads(adam: &Adam, fx: &HashMap<String, Tensor>, k: usize) {
    for g in adam.groups() {
        for (name, p) in &g.params {
            if let Some(grad) = fx.get(&format!("grad.{k}.{name}")) {
                (p * grad).sum(p.kind()).backward();
            }
        }
    }
}

fn params_of(adam: &Adam) -> HashMap<String, Tensor> {
    adam.groups()
        .iter()
        .flat_map(|g| g.params.iter().map(|(n, p)| (n.clone(), p.detach().copy())))
        .collect()
}

fn run_steps(
    adam: &mut Adam,
    fx: &HashMap<String, Tensor>,
    lrs: &[f64],
    steps: std::ops::Range<usize>,
) {
    for k in steps {
        set_grads(adam, fx, k);
        adam.step(lrs[k]).unwrap();
        adam.zero_grad();
    }
}

#[test]
fn adam_and_adamw_match_torch() {
    let spec = cases()["adam"].clone();
    for tag in ["f32", "f64"] {
        let fx = load(&format!("adam_{tag}.safetensors"));
        let lrs = f64s(&fx["lrs"]);
        let init: HashMap<String, Tensor> = fx
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("init.")
                    .map(|p| (p.to_string(), v.shallow_clone()))
            })
            .collect();
        for cname in spec["cases"].as_object().unwrap().keys() {
            let mut adam = Adam::new(make_groups(&spec, &fx, &init), &optim_config(cname, &fx));
            let mut worst = 0.0f64;
            for k in 0..lrs.len() {
                run_steps(&mut adam, &fx, &lrs, k..k + 1);
                if k < 2 {
                    // `d` has no gradient in steps 0 and 1: it must not move.
                    let d = &params_of(&adam)["d"];
                    assert!(
                        bit_equal(d, &init["d"]),
                        "{tag} {cname}: `d` moved at step {k}"
                    );
                }
                for (name, p) in params_of(&adam) {
                    // torch.optim.Adam(fused=True) runs the same kernel: bit for bit.
                    let fused = &fx[&format!("{cname}_fused.param.{k}.{name}")];
                    assert!(
                        bit_equal(&p, fused),
                        "{tag} {cname} step {k} {name}: differs from torch's fused Adam"
                    );
                    // The default single-tensor path rounds differently in float32.
                    let want = &fx[&format!("{cname}.param.{k}.{name}")];
                    let d = rel_diff(&p, want);
                    worst = worst.max(d);
                    assert!(
                        d <= tol(tag),
                        "{tag} {cname} step {k} {name}: rel diff {d:e}"
                    );
                }
            }
            let state: HashMap<String, Tensor> = adam.state().into_iter().collect();
            for (key, t) in &state {
                let want = &fx[&format!("{cname}.{}", swap_state_key(key))];
                if key.ends_with(".step") {
                    assert!(bit_equal(t, want), "{tag} {cname} {key}: {t:?} vs {want:?}");
                } else {
                    let d = rel_diff(t, want);
                    assert!(d <= tol(tag), "{tag} {cname} {key}: rel diff {d:e}");
                    let fused = &fx[&format!("{cname}_fused.{}", swap_state_key(key))];
                    assert!(
                        bit_equal(t, fused),
                        "{tag} {cname} {key}: differs from fused"
                    );
                }
            }
            assert_eq!(state["d.step"].int64_value(&[0]), 3);
            assert_eq!(state["a.step"].int64_value(&[0]), 5);
            eprintln!(
                "{tag} {cname}: worst parameter rel diff vs torch's single-tensor path {worst:e}"
            );
        }
    }
}

/// `NAME.exp_avg` (dml) → `exp_avg.NAME` (fixture).
fn swap_state_key(key: &str) -> String {
    let (name, what) = key.split_once('.').unwrap();
    format!("{what}.{name}")
}

#[test]
fn adam_state_round_trip_resumes_bit_exactly() {
    let spec = cases()["adam"].clone();
    for tag in ["f32", "f64"] {
        let fx = load(&format!("adam_{tag}.safetensors"));
        let lrs = f64s(&fx["lrs"]);
        let init: HashMap<String, Tensor> = fx
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("init.")
                    .map(|p| (p.to_string(), v.shallow_clone()))
            })
            .collect();
        for cname in spec["cases"].as_object().unwrap().keys() {
            let cfg = optim_config(cname, &fx);
            let mut straight = Adam::new(make_groups(&spec, &fx, &init), &cfg);
            run_steps(&mut straight, &fx, &lrs, 0..2);
            let saved_params = params_of(&straight);
            let saved_state = straight.state();
            run_steps(&mut straight, &fx, &lrs, 2..lrs.len());

            let mut resumed = Adam::new(make_groups(&spec, &fx, &saved_params), &cfg);
            resumed.load_state(&saved_state).unwrap();
            run_steps(&mut resumed, &fx, &lrs, 2..lrs.len());
            let (a, b) = (params_of(&straight), params_of(&resumed));
            for (name, p) in &a {
                assert!(bit_equal(p, &b[name]), "{tag} {name}: resumed run differs");
            }
            for ((ka, ta), (kb, tb)) in straight.state().iter().zip(resumed.state().iter()) {
                assert_eq!(ka, kb);
                assert!(bit_equal(ta, tb), "{tag} state {ka} differs after resume");
            }
        }
    }
}

#[test]
fn adam_load_state_names_bad_entries() {
    let spec = cases()["adam"].clone();
    let fx = load("adam_f32.safetensors");
    let init: HashMap<String, Tensor> = fx
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("init.")
                .map(|p| (p.to_string(), v.shallow_clone()))
        })
        .collect();
    let mut adam = Adam::new(make_groups(&spec, &fx, &init), &OptimConfig::default());
    let good = adam.state();
    let expect_train = |r: dml::Result<()>, needle: &str| match r {
        Err(Error::Train(m)) => assert!(m.contains(needle), "message `{m}` lacks `{needle}`"),
        other => panic!("expected Error::Train naming {needle}, got {other:?}"),
    };
    let missing: Vec<_> = good
        .iter()
        .filter(|(k, _)| k != "c.exp_avg")
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    expect_train(adam.load_state(&missing), "c.exp_avg");
    let misshaped: Vec<_> = good
        .iter()
        .map(|(k, t)| {
            let t = if k == "a.exp_avg_sq" {
                t.reshape([4, 3])
            } else {
                t.shallow_clone()
            };
            (k.clone(), t)
        })
        .collect();
    expect_train(adam.load_state(&misshaped), "a.exp_avg_sq");
    let mut extra: Vec<_> = good
        .iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    extra.push((
        "z.exp_avg".into(),
        Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
    ));
    expect_train(adam.load_state(&extra), "z.exp_avg");
    adam.load_state(&good).unwrap();
}

#[test]
fn cyclic_lr_matches_torch_for_three_cycles() {
    let mut exact = 0;
    let mut total = 0;
    let fx = load("clr.safetensors");
    for (c, case) in cases()["clr"].as_array().unwrap().iter().enumerate() {
        let [base, max_lr, step_size, gamma] = f64s(&fx[&format!("hyper.{c}")])[..] else {
            panic!("hyper.{c} has four entries");
        };
        let policy = match case["policy"].as_str().unwrap() {
            "triangular" => LrPolicy::Triangular,
            "triangular2" => LrPolicy::Triangular2,
            "exp_range" => LrPolicy::ExpRange,
            p => panic!("unknown policy {p}"),
        };
        let cfg = LrConfig {
            policy,
            max_lr,
            step_size: step_size as usize,
            gamma,
            ..LrConfig::default()
        };
        let lrs = f64s(&fx[&format!("lrs.{c}")]);
        assert!(lrs.len() > 6 * cfg.step_size, "fixture covers three cycles");
        for (i, &want) in lrs.iter().enumerate() {
            let got = learning_rate(&cfg, base, i);
            assert!(
                (got - want).abs() <= 1e-14 * want.abs(),
                "{policy:?} s={} it {i}: {got} vs torch {want}",
                cfg.step_size
            );
            if got != want {
                eprintln!("{policy:?} {i} {got:e} {want:e}");
            }
            exact += usize::from(got == want);
            total += 1;
        }
    }
    eprintln!("CyclicLR: {exact}/{total} learning rates bit-identical to torch");
    // Constant: the base rate at every iteration, whatever the cyclic fields say.
    let cfg = LrConfig {
        policy: LrPolicy::Constant,
        max_lr: 1.0,
        step_size: 3,
        gamma: 0.5,
        ..LrConfig::default()
    };
    for i in [0, 1, 3, 6, 1000] {
        assert_eq!(learning_rate(&cfg, 2e-4, i), 2e-4);
    }
}

/// `multistep` against torch's `MultiStepLR` (γ per milestone) and `LambdaLR` with
/// explicit factors (BFE's warm-up staircase), from tools/make_optim_fixtures.py.
#[test]
fn multistep_lr_matches_torch_multisteplr_and_lambdalr() {
    let fx = load("multistep.safetensors");
    let cases = cases()["multistep"].as_array().unwrap().clone();
    assert_eq!(cases.len(), 3);
    for (c, case) in cases.iter().enumerate() {
        let milestones: Vec<usize> = case["milestones"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_u64().unwrap() as usize)
            .collect();
        let with_factors = !case["factors"].as_array().unwrap().is_empty();
        let cfg = LrConfig {
            policy: LrPolicy::Multistep,
            milestones,
            gamma: f64s(&fx[&format!("gamma.{c}")])[0],
            factors: if with_factors {
                f64s(&fx[&format!("factors.{c}")])
            } else {
                Vec::new()
            },
            ..LrConfig::default()
        };
        let base = f64s(&fx[&format!("base.{c}")])[0];
        let lrs = f64s(&fx[&format!("lrs.{c}")]);
        for (i, &want) in lrs.iter().enumerate() {
            // Bit-identical: the same products in the same order as torch.
            assert_eq!(learning_rate(&cfg, base, i), want, "case {c} step {i}");
        }
    }
}

#[test]
fn lr_range_is_a_linear_ramp() {
    // start + (end − start)·i/(steps − 1) with start 1e-5, end 0.1, 11 steps:
    // i = 5 → 1e-5 + 0.09999·0.5 = 0.050005; the ends are exact, then held at `end`.
    assert_eq!(lr_range(1e-5, 0.1, 11, 0), 1e-5);
    assert!((lr_range(1e-5, 0.1, 11, 5) - 0.050005).abs() < 1e-16);
    assert!((lr_range(1e-5, 0.1, 11, 1) - 0.010009).abs() < 1e-16);
    assert_eq!(lr_range(1e-5, 0.1, 11, 10), 0.1);
    assert_eq!(lr_range(1e-5, 0.1, 11, 25), 0.1);
    assert_eq!(lr_range(1e-5, 0.1, 1, 0), 1e-5);
}

const TINY: [&str; 8] = [
    "0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias", "4.weight", "4.bias",
];

fn snapshot(fx: &HashMap<String, Tensor>, k: usize) -> Vec<(String, Tensor)> {
    TINY.iter()
        .map(|n| (n.to_string(), fx[&format!("snap.{k}.{n}")].shallow_clone()))
        .collect()
}

#[test]
fn swa_and_update_bn_match_averaged_model() {
    let spec = cases()["swa"].clone();
    let snaps = spec["snapshots"].as_u64().unwrap() as usize;
    let n_batches = spec["bn_batches"].as_array().unwrap().len();
    for tag in ["f32", "f64"] {
        let fx = load(&format!("swa_{tag}.safetensors"));
        let eps = f64s(&fx["bn_eps"])[0];
        let mut swa = Swa::new(&snapshot(&fx, 0));
        assert_eq!(swa.n_averaged(), 0);
        for k in 0..snaps {
            swa.update(&snapshot(&fx, k)).unwrap();
            assert_eq!(swa.n_averaged(), k + 1);
            for (name, t) in swa.averaged() {
                let d = rel_diff(t, &fx[&format!("avg.{k}.{name}")]);
                assert!(d <= tol(tag), "{tag} update {k} {name}: rel diff {d:e}");
            }
        }
        // Linear(4,3) → BatchNorm1d(3) → ReLU → Linear(3,2) → BatchNorm1d(2) on the
        // averaged weights; the running statistics start poisoned, as in the fixture.
        let w: HashMap<&str, &Tensor> = swa
            .averaged()
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        let opts = (w["0.weight"].kind(), tch::Device::Cpu);
        let (m1, v1) = (Tensor::full([3], 3.0, opts), Tensor::full([3], 7.0, opts));
        let (m4, v4) = (Tensor::full([2], 3.0, opts), Tensor::full([2], 7.0, opts));
        let mut stats = vec![
            BnStats {
                running_mean: m1.shallow_clone(),
                running_var: v1.shallow_clone(),
            },
            BnStats {
                running_mean: m4.shallow_clone(),
                running_var: v4.shallow_clone(),
            },
        ];
        let mut seen = Vec::new();
        update_bn(&mut stats, n_batches, |b, momentum| {
            seen.push(momentum);
            let x = &fx[&format!("batch.{b}")];
            let h = x.linear(w["0.weight"], Some(w["0.bias"]));
            let h = h.f_batch_norm(
                Some(w["1.weight"]),
                Some(w["1.bias"]),
                Some(&m1),
                Some(&v1),
                true,
                momentum,
                eps,
                false,
            )?;
            let h = h.relu().linear(w["3.weight"], Some(w["3.bias"]));
            let _ = h.f_batch_norm(
                Some(w["4.weight"]),
                Some(w["4.bias"]),
                Some(&m4),
                Some(&v4),
                true,
                momentum,
                eps,
                false,
            )?;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![1.0, 0.5, 1.0 / 3.0]);
        for (name, got) in [
            ("1.running_mean", &m1),
            ("1.running_var", &v1),
            ("4.running_mean", &m4),
            ("4.running_var", &v4),
        ] {
            let d = rel_diff(got, &fx[&format!("bn.{name}")]);
            assert!(d <= tol(tag), "{tag} update_bn {name}: rel diff {d:e}");
        }
    }
}

#[test]
fn bn_momentum_gives_the_cumulative_average() {
    // 1/(n+1): the running mean after batches with means 2, 4, 9 is their average 5.
    assert_eq!(bn_momentum_for(0), 1.0);
    assert_eq!(bn_momentum_for(3), 0.25);
    let mut r = 0.0f64;
    for (n, v) in [2.0, 4.0, 9.0].into_iter().enumerate() {
        let m = bn_momentum_for(n);
        r = (1.0 - m) * r + m * v;
    }
    assert_eq!(r, 5.0);
    let buffers = vec![
        (
            "bn.running_mean".to_string(),
            Tensor::from_slice(&[1.0f32, 2.0]),
        ),
        (
            "bn.running_var".to_string(),
            Tensor::from_slice(&[3.0f32, 4.0]),
        ),
        ("bn.weight".to_string(), Tensor::from_slice(&[5.0f32, 6.0])),
        (
            "lone.running_mean".to_string(),
            Tensor::from_slice(&[0.0f32]),
        ),
    ];
    assert!(
        matches!(BnStats::from_named(&buffers), Err(Error::Train(m)) if m.contains("lone.running_var"))
    );
    let mut stats = BnStats::from_named(&buffers[..3]).unwrap();
    assert_eq!(stats.len(), 1);
    dml::optim::reset_bn_stats(&mut stats).unwrap();
    // The shallow handles reach the named buffers.
    assert_eq!(Vec::<f32>::try_from(&buffers[0].1).unwrap(), vec![0.0, 0.0]);
    assert_eq!(Vec::<f32>::try_from(&buffers[1].1).unwrap(), vec![1.0, 1.0]);
}

#[test]
fn swa_state_round_trip_and_schedule() {
    let fx = load("swa_f64.safetensors");
    let mut straight = Swa::new(&snapshot(&fx, 0));
    for k in 0..3 {
        straight.update(&snapshot(&fx, k)).unwrap();
    }
    let saved = straight.state();
    let mut resumed = Swa::new(&snapshot(&fx, 4));
    resumed.load_state(&saved).unwrap();
    assert_eq!(resumed.n_averaged(), 3);
    for k in 3..5 {
        straight.update(&snapshot(&fx, k)).unwrap();
        resumed.update(&snapshot(&fx, k)).unwrap();
    }
    for ((n, a), (_, b)) in straight.averaged().iter().zip(resumed.averaged()) {
        assert!(bit_equal(a, b), "{n} differs after resume");
    }
    let bad: Vec<_> = saved
        .iter()
        .filter(|(k, _)| k != "n_averaged")
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    assert!(matches!(resumed.load_state(&bad), Err(Error::Train(m)) if m.contains("n_averaged")));
    let wrong_name = vec![(
        "x".to_string(),
        Tensor::zeros([3], (Kind::Double, tch::Device::Cpu)),
    )];
    assert!(matches!(resumed.update(&wrong_name), Err(Error::Train(_))));

    // start 10, every 5: steps 10, 15, 20 average; 9, 11, 14 do not; start 0 disables.
    let cfg = SwaConfig {
        start: 10,
        every: 5,
    };
    let on: Vec<usize> = (0..=21).filter(|&s| Swa::should_average(&cfg, s)).collect();
    assert_eq!(on, vec![10, 15, 20]);
    assert!(!Swa::should_average(&SwaConfig { start: 0, every: 1 }, 5));
}

#[test]
fn gradient_clipping_matches_torch_clip_grad_norm() {
    // Oracle: torch.nn.utils.clip_grad_norm_ (tools/make_clip_fixtures.py, tests/fixtures/clip).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip");
    for (tag, tolerance) in [("f32", 1e-6), ("f64", 1e-14)] {
        let fx: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(format!("clip_{tag}.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        for c in 0..2 {
            let grads: Vec<Tensor> = (0..4).map(|i| fx[&format!("grad.{i}")].copy()).collect();
            let max_norm = f64s(&fx[&format!("max_norm.{c}")])[0];
            let norm = dml::train::step::clip_grad_norm(&grads, max_norm).unwrap();
            let want = fx[&format!("norm.{c}")]
                .to_kind(tch::Kind::Double)
                .double_value(&[0]);
            assert!(
                (norm - want).abs() <= tolerance * want,
                "{tag} max_norm {max_norm}: norm {norm} vs torch {want}"
            );
            for (i, g) in grads.iter().enumerate() {
                let d = rel_diff(g, &fx[&format!("clipped.{c}.{i}")]);
                assert!(d <= tolerance, "{tag} max_norm {max_norm} grad {i}: {d}");
            }
            // Not clipping leaves the gradients bit for bit.
            if max_norm > want {
                assert!(bit_equal(&grads[0], &fx["grad.0"]));
            }
        }
    }
}
