//! Gives the `dml` binaries an RUNPATH to libtorch, so they run without LD_LIBRARY_PATH.
//!
//! With the `nccl` feature, also links libtorch_cuda for real: torch-sys passes
//! `-ltorch_cuda`, but the linker's `--as-needed` drops it (no symbol of it is used), and
//! without it libtorch registers no CUDA backend (`tch::Cuda::is_available()` is false).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = PathBuf::from(dir).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        if std::env::var_os("CARGO_FEATURE_NCCL").is_some() && lib.join("libtorch_cuda.so").exists()
        {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
