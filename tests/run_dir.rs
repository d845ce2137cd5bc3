//! A run directory is self-contained: its `config.toml` holds absolute paths and the
//! pretrained weights' SHA-256, and `dml eval` / `dml embed` take a run, `RUN/best` or
//! `RUN/checkpoints/step-N` from any directory, on the run's own test split.
mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use dml::config::Config;
use dml::model::Model;

/// `dml eval ARGS --json` run from `cwd`: the metrics and the stderr text.
fn eval_json(cwd: &Path, args: &[&std::ffi::OsStr]) -> (serde_json::Value, String) {
    let mut c = dml();
    c.current_dir(cwd).arg("eval").args(args).arg("--json");
    let out = ok(c);
    let metrics = serde_json::from_slice(&out.stdout).expect("--json prints one object");
    (metrics, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `sha256sum FILE`'s digest (coreutils as the oracle).
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

#[test]
fn a_run_evaluates_from_anywhere_on_its_own_split_after_its_inputs_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    synth(&work.join("data"), 16, 6, 36);
    // "Pretrained" trunk weights under torchvision names: a seeded trunk's variables.
    let init_cfg = Config::parse("[model]\ntrunk = \"resnet18\"\nembedding_dim = 32\n", &[])
        .unwrap()
        .model;
    let init = Model::new(&init_cfg, tch::Device::Cpu, tch::Kind::Float, 7).unwrap();
    let trunk: Vec<(String, tch::Tensor)> = init
        .named_variables()
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("trunk.").map(|s| (s.to_string(), t)))
        .collect();
    tch::Tensor::write_safetensors(&trunk, work.join("init.safetensors")).unwrap();

    // Relative paths, resolved against the training directory.
    let cfg = small_config(&work, Path::new("data"), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "embedding_dim = 32\n",
        "embedding_dim = 32\npretrained = \"init.safetensors\"\n",
    );
    std::fs::write(&cfg, format!("{text}\n[eval]\nevery = 3\n")).unwrap();
    let mut c = dml();
    c.current_dir(&work)
        .args(["train", "--config", "config.toml", "--out", "../run"]);
    ok(c);
    let run = tmp.path().join("run");

    let recorded = Config::load(&run.join("config.toml"), &[]).unwrap();
    let abs = |p: &str| work.join(p).to_string_lossy().into_owned();
    assert_eq!(recorded.data.train, abs("data/train.dmlds"));
    assert_eq!(recorded.data.test, abs("data/test.dmlds"));
    assert_eq!(recorded.model.pretrained, abs("init.safetensors"));
    assert_eq!(
        recorded.model.pretrained_sha256,
        sha256sum(&work.join("init.safetensors"))
    );

    // The initial weights move away; evaluation does not need them.
    let moved = tmp.path().join("moved.safetensors");
    std::fs::rename(work.join("init.safetensors"), &moved).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let at = elsewhere.path();
    let (final_model, said) = eval_json(at, &[run.as_os_str()]);
    assert!(said.contains("final model"), "{said}");
    assert!(said.contains(&abs("data/test.dmlds")), "{said}");
    let p1 = final_model["precision_at_1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p1), "{final_model}");
    // The run's own split is the one --data names.
    let test = work.join("data/test.dmlds");
    let (with_data, _) = eval_json(at, &[run.as_os_str(), "--data".as_ref(), test.as_os_str()]);
    assert_eq!(with_data, final_model);
    // Without SWA the final model is step 6's checkpoint.
    let step6 = run.join("checkpoints/step-6");
    let (ckpt, said) = eval_json(at, &[step6.as_os_str()]);
    assert!(said.contains("checkpoint of step 6"), "{said}");
    assert_eq!(ckpt, final_model);
    // best/ is the checkpoint of the step best.json names.
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best/best.json")).unwrap())
            .unwrap();
    let best_step = best["step"].as_u64().unwrap() as usize;
    let (best_metrics, said) = eval_json(at, &[run.join("best").as_os_str()]);
    assert!(said.contains("best on validation"), "{said}");
    let step_dir = run.join(format!("checkpoints/step-{best_step}"));
    assert_eq!(best_metrics, eval_json(at, &[step_dir.as_os_str()]).0);

    // dml embed RUN/best with no --data: the run's test split, with labels, paths and
    // class names beside it; the saved embeddings give the same metrics.
    let e = at.join("e.npy");
    let mut c = dml();
    c.current_dir(at)
        .arg("embed")
        .arg(run.join("best"))
        .arg("--out")
        .arg(&e);
    ok(c);
    let ds = dml::data::Dataset::open(&test).unwrap();
    let paths = std::fs::read_to_string(at.join("e_paths.txt")).unwrap();
    let expected: Vec<&str> = ds.meta().sources.iter().map(String::as_str).collect();
    assert_eq!(paths.lines().collect::<Vec<_>>(), expected);
    let classes = std::fs::read_to_string(at.join("e_classes.txt")).unwrap();
    assert_eq!(
        classes.lines().collect::<Vec<_>>(),
        ds.meta()
            .class_names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let (from_npy, _) = eval_json(
        at,
        &[
            "--embeddings".as_ref(),
            e.as_os_str(),
            "--labels".as_ref(),
            at.join("e_labels.npy").as_os_str(),
        ],
    );
    assert_eq!(from_npy, best_metrics);

    // Resuming with other bytes at the recorded pretrained path is refused.
    let other: Vec<(String, tch::Tensor)> = trunk
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().copy() * 0.5))
        .collect();
    tch::Tensor::write_safetensors(&other, work.join("init.safetensors")).unwrap();
    let mut c = dml();
    c.current_dir(at)
        .args(["train", "--resume"])
        .arg(&run)
        .args(["--set", "train.steps=9"]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("changed since the run started"), "{err}");
    // With the original file back, the resumed run continues.
    std::fs::rename(&moved, work.join("init.safetensors")).unwrap();
    let mut c = dml();
    c.current_dir(at)
        .args(["train", "--resume"])
        .arg(&run)
        .args(["--set", "train.steps=9"]);
    ok(c);
}

#[test]
fn an_unfinished_run_names_the_weights_it_has() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 8, 6, 36);
    let cfg = small_config(tmp.path(), &data, "");
    let run = tmp.path().join("run");
    let mut c = dml();
    c.args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run);
    ok(c);
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    let out = dml().arg("eval").arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("has the run finished?"), "{err}");
    assert!(
        err.contains(&run.join("checkpoints/step-6").display().to_string()),
        "{err}"
    );
}

/// The README's export recipe: a run's `model.safetensors` loads into torchvision's
/// ResNet with `fc` as the head's projection, and gives `dml embed`'s embeddings.
const TORCHVISION_EXPORT: &str = r#"
import sys, numpy as np, torch, torchvision
import torchvision.transforms.functional as F
from safetensors.torch import load_file
sys.path.insert(0, sys.argv[1] + "/tools"); import dmlds
run, data, emb = sys.argv[2:5]
sd = load_file(run + "/model.safetensors")
model = torchvision.models.resnet18()
model.fc = torch.nn.Linear(512, sd["head.fc.weight"].shape[0])
model.load_state_dict({k.split(".", 1)[1]: v for k, v in sd.items()})
model.eval()
d = dmlds.open(data)
xs = []
for i in range(len(d)):
    t = torch.from_numpy(d[i][0]).permute(2, 0, 1)
    t = F.center_crop(F.resize(t, 36, antialias=True), 32).float() / 255
    xs.append(F.normalize(t, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
with torch.no_grad():
    e = torch.nn.functional.normalize(model(torch.stack(xs)), dim=1)
print(float(np.abs(e.numpy() - np.load(emb)).max()))
"#;

#[test]
fn a_runs_weights_load_into_torchvision_as_the_readme_says() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 8, 6, 36);
    let cfg = small_config(tmp.path(), &data, "");
    let run = tmp.path().join("run");
    let mut c = dml();
    c.args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run);
    ok(c);
    let e = tmp.path().join("e.npy");
    let mut c = dml();
    c.arg("embed").arg(&run).arg("--out").arg(&e);
    ok(c);
    let mut c = Command::new(python());
    c.args(["-c", TORCHVISION_EXPORT, env!("CARGO_MANIFEST_DIR")])
        .arg(&run)
        .arg(data.join("test.dmlds"))
        .arg(&e);
    let out = ok(c);
    let diff: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(diff < 1e-5, "torchvision's embeddings differ by {diff}");
}
