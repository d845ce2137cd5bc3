//! The communicator: `examples/comm_selfcheck` under `mpirun -np 2` (values of every
//! collective, bucketed gradient all-reduce, mismatch errors), a rank dying in the middle
//! of a collective (every survivor exits, non-zero, within 60 s), and the world-of-one
//! identities of the local backend.
//!
//! Needs Open MPI's `mpirun`; `cargo test --release` builds the example.
mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dml::comm;
use dml::config::Backend;
use tch::{Device, Kind, Tensor};

fn selfcheck() -> PathBuf {
    common::example("comm_selfcheck")
}

/// Runs `mpirun -np 2 comm_selfcheck MODE`, killing it after `limit`; returns its output
/// and how long it ran.
fn mpirun_selfcheck(mode: &str, limit: Duration) -> (Output, Duration) {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", "2"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMP_NUM_THREADS", "1")
        .arg(selfcheck())
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().expect("mpirun runs (is Open MPI installed?)");
    loop {
        if child.try_wait().expect("wait on mpirun").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("mpirun output");
            panic!(
                "mpirun {mode} still running after {limit:?}: a dead peer hung the job\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    (child.wait_with_output().expect("mpirun output"), took)
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn collectives_and_bucketed_grads_under_mpirun_np2() {
    let (out, _) = mpirun_selfcheck("check", Duration::from_secs(60));
    let all = text(&out);
    assert!(out.status.success(), "comm_selfcheck failed\n{all}");
    for r in 0..2 {
        assert!(
            all.contains(&format!(
                "rank {r} of 2 (mpi, node-local {r} of 2): all checks passed"
            )),
            "rank {r} did not pass\n{all}"
        );
    }
}

/// A rank that dies in the middle of a loop of all-reduces, while rank 0 waits in the
/// collective: mpirun must end the job, non-zero, within 60 s, and name rank 1.
fn dead_rank(mode: &str, names_rank: &str) {
    let (out, took) = mpirun_selfcheck(mode, Duration::from_secs(60));
    let all = text(&out);
    assert!(
        !out.status.success(),
        "mpirun exited 0 after rank 1 died ({mode})\n{all}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        !all.contains("finished the loop"),
        "a survivor went on\n{all}"
    );
    assert!(
        all.contains(names_rank),
        "the failure does not name {names_rank:?}\n{all}"
    );
}

#[test]
fn rank_killed_by_sigkill_ends_the_job() {
    dead_rank("kill", "rank 1 with PID");
}

#[test]
fn rank_that_aborts_ends_the_job() {
    dead_rank("abort", "rank 1 with PID");
}

#[test]
fn rank_that_exits_without_finalize_ends_the_job() {
    // Open MPI names it as "Process name: [[JOB,1],1]" with its exit code.
    dead_rank("exit", "],1]\n  Exit code:    3");
}

#[test]
fn rank_with_an_error_aborts_the_job() {
    // dml's own message names the rank before `comm.abort`; Open MPI's "MPI_ABORT was
    // invoked on rank 1" banner is not always printed (its help system can fail with
    // "ORTE_ERROR_LOG: Out of resource" on a loaded machine).
    dead_rank("error", "error on rank 1 of 2");
}

#[test]
fn local_backend_is_the_identity() {
    let comm = comm::init(Backend::Local).unwrap();
    assert_eq!(
        (
            comm.rank(),
            comm.world(),
            comm.local_rank(),
            comm.local_world()
        ),
        (0, 1, 0, 1)
    );
    assert_eq!(comm.name(), "local");
    let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25]).view([3, 1]);
    let g = comm.all_gather(&t).unwrap();
    assert_eq!(g.size(), [3, 1]);
    assert!(g.equal(&t));
    let mut s = t.copy();
    comm.all_reduce_sum(&mut s).unwrap();
    assert!(s.equal(&t));
    comm.broadcast(&mut s, 0).unwrap();
    assert!(s.equal(&t));
    let e = comm.broadcast(&mut s, 1).unwrap_err().to_string();
    assert!(e.contains("broadcast from rank 1 in a world of 1"), "{e}");
    comm.barrier().unwrap();
    comm::check_same_everywhere(comm.as_ref(), "anything", b"x").unwrap();
    // Gradients are left as they are: d(sum 3p)/dp = 3.
    let p = Tensor::zeros([4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    (&p * 3.0).sum(Kind::Double).backward();
    comm::average_grads(comm.as_ref(), &[p.shallow_clone()], 1).unwrap();
    assert_eq!(Vec::<f64>::try_from(&p.grad()).unwrap(), vec![3.0; 4]);
}

#[test]
fn explicit_backends_without_support_are_clear_errors() {
    let e = comm::init(Backend::Nccl).err().unwrap().to_string();
    if cfg!(feature = "nccl") {
        // Built with the backend, on a machine without CUDA (tests/nccl_backend.rs).
        assert!(e.contains("nccl") && e.contains("CUDA"), "{e}");
    } else {
        assert!(e.contains("nccl") && e.contains("not built"), "{e}");
    }
    if comm::launcher::detect().is_none() {
        let e = comm::init(Backend::Mpi).err().unwrap().to_string();
        assert!(
            e.contains("not started by an MPI launcher") && e.contains("mpirun"),
            "{e}"
        );
        // Auto outside a launcher is the local backend.
        assert_eq!(comm::init(Backend::Auto).unwrap().name(), "local");
    }
}
