//! Gives the `dml` binaries an RUNPATH to libtorch, so they run without LD_LIBRARY_PATH;
//! links libtorch_cuda for real when the wheel has it; and compiles the small C++ shim
//! (`csrc/autocast.cpp`, `csrc/fused_adam.cpp`, `csrc/grad_hooks.cpp`) against libtorch's headers.
//!
//! torch-sys passes `-ltorch_cuda`, but the linker's `--as-needed` drops it (no symbol
//! of it is used), and without it libtorch registers no CUDA backend
//! (`tch::Cuda::is_available()` is false even on a GPU machine). On a CPU-only machine
//! the CUDA build of libtorch still loads and runs on the CPU.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/fused_adam.cpp");
    println!("cargo:rerun-if-changed=csrc/grad_hooks.cpp");
    println!("cargo:rerun-if-changed=csrc/shim_error.h");
    let Ok(dir) = std::env::var("LIBTORCH") else {
        panic!("LIBTORCH is not set: run tools/setup.sh (it writes .cargo/config.toml)");
    };
    let root = PathBuf::from(dir);
    let root = root.canonicalize().unwrap_or(root);
    let lib = root.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/autocast.cpp")
        .file("csrc/fused_adam.cpp")
        .file("csrc/grad_hooks.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("dml_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
