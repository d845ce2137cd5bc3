//! Distributed training under `mpirun -np 2` on CPU: world-size invariance (DESIGN.md,
//! invariant 1), resume under mpirun, and clear failures (bad world size, a dead rank).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn data(tmp: &Path) -> PathBuf {
    let d = tmp.join("data");
    synth(&d, 8, 6, 36);
    d
}

#[test]
fn world_size_invariance_f64_triplet() {
    world_size_invariance(&["loss.name=triplet", "miner.name=batch_hard"]);
}

#[test]
fn world_size_invariance_f64_multi_similarity() {
    world_size_invariance(&["loss.name=multi_similarity", "miner.name=multi_similarity"]);
}

/// Cross-batch memory (issue 18): every rank enqueues the same gathered rows, so the
/// memory and its loss are the same at every world size. The global batch is 12 rows, so
/// a memory of 30 wraps mid-batch at step 4 (from `xbm.start = 2`).
#[test]
fn world_size_invariance_f64_cross_batch_memory_multi_similarity() {
    world_size_invariance(&[
        "loss.name=multi_similarity",
        "miner.name=multi_similarity",
        "xbm.size=30",
        "xbm.start=2",
    ]);
}

/// One memory per embedding: BFE's two branches each mine their own memory (batch-hard
/// triplet, weight 0.5).
#[test]
fn world_size_invariance_f64_cross_batch_memory_bfe_triplet() {
    world_size_invariance(&[
        "model.head=bfe",
        "loss.name=triplet",
        "miner.name=batch_hard",
        "xbm.size=30",
        "xbm.weight=0.5",
    ]);
}

/// Group Loss: the classifier lies after the gather, so its gradients are averaged
/// while the trunk's and the projection's are summed.
#[test]
fn world_size_invariance_f64_group_loss() {
    world_size_invariance(&["loss.name=group", "miner.name=none", "loss.group_anchors=1"]);
}

/// Distillation from a frozen teacher (a 1-step run): the relative term compares the
/// global batch's distance matrices, so the teacher's embeddings are gathered too.
#[test]
fn world_size_invariance_f64_distillation() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let cfg = small_config(tmp.path(), &d, "precision = \"f64\"\nseed = 3");
    train(1, &cfg, &tmp.path().join("teacher"), &["train.steps=1"]);
    let teacher = format!("distill.teacher={}", tmp.path().join("teacher").display());
    world_size_invariance(&[&teacher, "distill.kind=relative", "distill.weight=0.5"]);
}

#[test]
fn resume_under_mpirun_matches_a_straight_mpirun_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let cfg = small_config(tmp.path(), &d, "precision = \"f64\"");
    train(2, &cfg, &tmp.path().join("straight"), &[]);
    let parted = tmp.path().join("parted");
    train(2, &cfg, &parted, &["train.steps=3"]);
    let mut c = mpirun(2);
    c.args(["train", "--resume"])
        .arg(&parted)
        .args(["--set", "train.steps=6"]);
    ok(c);
    let diff = model_diff(&tmp.path().join("straight"), &parted);
    assert!(diff <= 1e-12, "resumed 2-rank run differs by {diff}");
}

#[test]
fn a_batch_not_divisible_by_the_world_size_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let cfg = small_config(tmp.path(), &d, "");
    let out = mpirun(2)
        .args(["train", "--config"])
        .arg(&cfg)
        .args([
            "--set",
            "sampler.classes_per_batch=3",
            "--set",
            "sampler.samples_per_class=3",
            "--out",
        ])
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("sampler.classes_per_batch") && err.contains('2'),
        "{err}"
    );
    assert!(!tmp.path().join("run/checkpoints").exists());
}

#[test]
fn a_killed_rank_stops_every_rank_and_the_last_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let cfg = small_config(tmp.path(), &d, "");
    let run = tmp.path().join("run");
    let mut child = mpirun(2)
        .args(["train", "--config"])
        .arg(&cfg)
        .args([
            "--set",
            "train.steps=100000",
            "--set",
            "train.checkpoint_every=2",
            "--out",
        ])
        .arg(&run)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a first checkpoint, then kill one rank with SIGKILL.
    let t0 = Instant::now();
    while !run.join("checkpoints/step-2").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pids = String::from_utf8(
        Command::new("pgrep")
            .args(["-f", &format!("dml train --config {}", cfg.display())])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let victim = pids
        .lines()
        .rfind(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "dml")
        })
        .expect("a rank pid")
        .to_string();
    let mut kill = Command::new("kill");
    kill.args(["-9", &victim]);
    ok(kill);
    let killed_at = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "ranks still running 60 s after a kill"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.to_lowercase().contains("rank"),
        "mpirun's message names no rank:\n{text}"
    );
    // The newest complete checkpoint resumes.
    let mut c = mpirun(2);
    let steps = dml::train::checkpoint::list(&run).unwrap();
    let last = *steps.iter().max().expect("a checkpoint survived");
    c.args(["train", "--resume"])
        .arg(&run)
        .args(["--set", &format!("train.steps={}", last + 1)]);
    ok(c);
    assert!(run.join("model.safetensors").exists());
}

/// A full disk on rank 0 (a 30 MB file-size limit on rank 0 alone, SIGXFSZ ignored, so
/// that the 45 MB model file fails to write) stops both ranks within seconds with the
/// error naming the step and the checkpoint to resume from; no `step-N.tmp` is left, and
/// the run resumes from that checkpoint.
#[test]
fn a_checkpoint_rank_0_cannot_write_stops_every_rank_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let cfg = small_config(tmp.path(), &d, "");
    let run = tmp.path().join("run");
    train(
        2,
        &cfg,
        &run,
        &["train.steps=3", "train.checkpoint_every=1"],
    );
    let limited = "if [ \"$OMPI_COMM_WORLD_RANK\" = 0 ]; then trap '' XFSZ; ulimit -f 30000; fi; \
                   exec \"$0\" \"$@\"";
    let mut child = mpirun_with(2, Path::new("bash"))
        .args(["-c", limited, env!("CARGO_BIN_EXE_dml")])
        .args(["train", "--resume"])
        .arg(&run)
        .args(["--set", "train.steps=6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "ranks still running 120 s after the resume started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("error on rank 0 of 2")
            && err.contains("the checkpoint of step 4 could not be written")
            && err.contains("File too large")
            && err.contains(&format!(
                "the newest checkpoint, {}, is kept",
                run.join("checkpoints/step-3").display()
            )),
        "{err}"
    );
    assert!(!run.join("checkpoints/step-4.tmp").exists());
    assert_eq!(
        dml::train::checkpoint::list(&run)
            .unwrap()
            .into_iter()
            .max(),
        Some(3)
    );
    let mut c = mpirun(2);
    c.args(["train", "--resume"])
        .arg(&run)
        .args(["--set", "train.steps=4"]);
    ok(c);
    assert!(run.join("model.safetensors").exists());
}

#[test]
fn first_step_gradient_f32_agrees_between_one_and_two_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let cfg = small_config(tmp.path(), &d, "");
    let bin = example("first_step_grads");
    let g1 = tmp.path().join("g1.safetensors");
    let mut c = Command::new(&bin);
    c.env("OMP_NUM_THREADS", "1").arg(&cfg).arg(&g1);
    ok(c);
    let g2 = tmp.path().join("g2.safetensors");
    let mut c = mpirun_with(2, &bin);
    c.arg(&cfg).arg(&g2);
    ok(c);
    let diff = max_rel_diff(&g1, &g2);
    assert!(
        diff <= 1e-5,
        "first-step f32 gradient differs by {diff} (relative, per tensor max)"
    );
}

/// Preemption: SIGTERM to one rank (as Slurm sends at a time limit) stops both ranks after
/// the same step with a checkpoint of it, exit status 75 and a message saying how to go on;
/// the requeued command (`--resume-if-exists`, a fresh run on an empty directory) then
/// ends where the uninterrupted run ends (f64, ≤ 1e-12).
#[test]
fn sigterm_on_one_rank_checkpoints_the_step_and_the_resumed_run_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let (steps, every) = ("train.steps=40", "train.checkpoint_every=0");
    let cfg = small_config(tmp.path(), &d, "precision = \"f64\"");
    // --resume-if-exists on an empty run directory: a fresh run.
    let mut c = mpirun(2);
    c.args(["train", "--resume-if-exists", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("straight"))
        .args(["--set", steps, "--set", every]);
    ok(c);
    let run = tmp.path().join("stopped");
    let mut c = mpirun(2);
    c.args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run);
    c.args(["--set", steps, "--set", every]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    // Once step 2 is logged, signal one rank (a child of mpirun) directly.
    let metrics = run.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 2 {
        assert!(started.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ranks = std::process::Command::new("pgrep")
        .args(["-P", &child.id().to_string()])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&ranks.stdout).to_string();
    let pid = pids.lines().last().expect("a rank process");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("stopped by "))
        .unwrap_or_else(|| panic!("no stop message:\n{err}"));
    let step: usize = line
        .split("after step ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((2..40).contains(&step), "{line}");
    assert!(line.contains("dml train --resume"), "{line}");
    let ckpts: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ckpts, vec![format!("step-{step}")]);
    // The requeued job's command line: the same as the first, with --resume-if-exists.
    let mut c = mpirun(2);
    c.args(["train", "--resume-if-exists", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .args(["--set", steps, "--set", every]);
    let out = ok(c);
    assert!(String::from_utf8_lossy(&out.stderr).contains("trained 40 steps"));
    let diff = model_diff(&tmp.path().join("straight"), &run);
    assert!(diff <= 1e-12, "stopped and resumed run differs by {diff}");
}
