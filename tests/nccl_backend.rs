//! `dist.backend = "nccl"` on a machine without CUDA (as CI runs): a clear
//! [`dml::Error::Config`] that names what is missing, never a panic, a hang or an MPI
//! initialisation. Built without the `nccl` feature, the message also names the feature
//! and the build command; built with it, it names CUDA and the `mpi` fallback.
//!
//! Nothing here needs a GPU; the GPU checks are `tools/gpu-check.sh` and
//! `mpirun -np 2 target/release/examples/comm_selfcheck --backend nccl`.
mod common;

use dml::comm;
use dml::config::Backend;

#[test]
fn nccl_backend_without_cuda_is_a_config_error_that_says_what_is_missing() {
    if tch::Cuda::is_available() {
        eprintln!("skipped: CUDA is available here, this test is about CPU-only machines");
        return;
    }
    let e = match comm::init(Backend::Nccl) {
        Ok(c) => panic!("comm::init(Nccl) succeeded without CUDA ({})", c.name()),
        Err(e) => e,
    };
    assert!(matches!(e, dml::Error::Config(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("CUDA"), "{msg}");
    assert!(msg.contains("dist.backend = \"mpi\""), "{msg}");
    if cfg!(feature = "nccl") {
        assert!(msg.contains("tch::Cuda::is_available() is false"), "{msg}");
    } else {
        assert!(
            msg.contains("cargo build --release --features nccl"),
            "{msg}"
        );
    }
}

#[cfg(feature = "nccl")]
#[test]
fn nccl_library_from_the_venv_loads_and_reports_its_version() {
    // libtorch's CUDA build loads libnccl.so.2 (the nvidia-nccl-cu13 wheel); the feature
    // build links libtorch_cuda, so NCCL resolves by its soname without LD_LIBRARY_PATH.
    // Loading needs no GPU. Oracle: torch's own view of the same library,
    // `torch.cuda.nccl.version()` in the venv (2.29.7 when this was written).
    let out = common::run_python([
        "-c",
        "import torch; print('.'.join(map(str, torch.cuda.nccl.version())))",
    ]);
    let want = out.trim().to_string();
    let got = dml::sys::nccl::version().expect("NCCL loads");
    assert_eq!(got, want);
}
