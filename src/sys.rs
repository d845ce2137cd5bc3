//! The only `unsafe` code in dml, each piece behind a safe function:
//!
//! * [`map_readonly`]: memory-mapping a dataset file read-only;
//! * [`set_cuda_autocast_bf16`]: the C++ shim (csrc/autocast.cpp) that sets the dtype of
//!   CUDA autocast, which tch does not expose;
//! * [`cpu_data`] / [`cpu_data_mut`]: a CPU tensor's elements as a slice, so that MPI
//!   reads and writes tensor memory without host copies;
//! * [`GradReadyHooks`] and [`set_grad`]: torch's post-accumulate-grad hooks and
//!   `param.grad = view` through the C++ shim (csrc/grad_hooks.cpp), for the gradient
//!   all-reduce overlapped with the backward; [`SendComm`], an MPI communicator a
//!   communication thread may own;
//! * [`try_lock_exclusive`]: `flock` on a run directory's lock file;
//! * [`install_stop_handlers`]: SIGTERM / SIGUSR1 handlers that only record the signal
//!   (preemption: the training loop stops after the current step);
//! * [`fused_adam`]: torch's fused Adam/AdamW kernels through the C++ shim
//!   (csrc/fused_adam.cpp), which tch does not expose either;
//! * [`nccl`] (with the `nccl` feature): the raw NCCL and CUDA runtime calls of
//!   `dist::nccl`. Both libraries are loaded when first used (`libnccl.so.2` and
//!   `libcudart.so.13`, which libtorch's CUDA build has already loaded), so a machine
//!   without CUDA builds and runs dml; the struct layouts and enums come from `cudarc`'s
//!   bindings of NCCL 2.29. Every wrapper checks its tensors (CUDA, on the communicator's
//!   GPU, contiguous, a supported kind, matching lengths) before handing NCCL their
//!   device pointers.
use std::fs::File;

/// Maps `file` read-only into memory.
///
/// Dataset files are written once (to a temporary name, then renamed) and never
/// modified in place, which is the condition `memmap2` asks callers to uphold.
pub fn map_readonly(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: dml never writes to a dataset file after its atomic rename; a user who
    // truncates it underneath a running job gets SIGBUS, as with any mmap reader.
    unsafe { memmap2::Mmap::map(file) }
}

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` if another open
/// file holds it. The kernel releases it when the file is closed or the process ends
/// (a crash leaves no stale lock).
pub fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor that `file` owns for the duration of the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

extern "C" {
    fn dml_set_cuda_autocast_dtype(bf16: i32);
    fn dml_cuda_autocast_dtype_is_bf16() -> i32;
    #[allow(clippy::too_many_arguments)]
    fn dml_fused_adam(
        params: *const *const std::ffi::c_void,
        grads: *const *const std::ffi::c_void,
        exp_avgs: *const *const std::ffi::c_void,
        exp_avg_sqs: *const *const std::ffi::c_void,
        steps: *const *const std::ffi::c_void,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: i32,
    ) -> i32;
    fn dml_shim_last_error() -> *const std::ffi::c_char;
    fn dml_grad_token_new(
        callback: extern "C" fn(*mut std::ffi::c_void, usize),
        ctx: *mut std::ffi::c_void,
    ) -> *mut std::ffi::c_void;
    fn dml_grad_token_free(holder: *mut std::ffi::c_void);
    fn dml_grad_hook(
        holder: *mut std::ffi::c_void,
        param: *const std::ffi::c_void,
        index: usize,
    ) -> i32;
    fn dml_set_grad(param: *const std::ffi::c_void, grad: *const std::ffi::c_void) -> i32;
}

/// The callback of [`GradReadyHooks`].
type ReadyFn = Box<dyn Fn(usize) + Send + Sync>;

/// torch post-accumulate-grad hooks that call one function with a parameter's index
/// each time a backward has accumulated that parameter's gradient into its `.grad` (on
/// the thread running the backward: the caller's on the CPU, an autograd worker's on
/// CUDA). Dropping the value disarms every hook it registered (a hook already running
/// finishes first); the hooks stay on the tensors and do nothing afterwards. A tensor
/// has one such hook: [`GradReadyHooks::watch`] replaces an earlier one.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let hooks = dml::sys::GradReadyHooks::new(move |i| log.lock().unwrap().push(i));
/// let (a, b) = (tch::Tensor::ones([2], tch::kind::FLOAT_CPU).set_requires_grad(true),
///               tch::Tensor::ones([2], tch::kind::FLOAT_CPU).set_requires_grad(true));
/// hooks.watch(&a, 7).unwrap();
/// hooks.watch(&b, 9).unwrap();
/// (&a * 2 + &b).sum(tch::Kind::Float).backward();
/// let mut got = seen.lock().unwrap().clone();
/// got.sort();
/// assert_eq!(got, vec![7, 9]);
/// drop(hooks);
/// (&a * 2).sum(tch::Kind::Float).backward(); // disarmed: nothing reported
/// assert_eq!(seen.lock().unwrap().len(), 2);
/// ```
pub struct GradReadyHooks {
    holder: *mut std::ffi::c_void,
    ctx: *mut ReadyFn,
}

extern "C" fn grad_ready_trampoline(ctx: *mut std::ffi::c_void, index: usize) {
    // SAFETY: `ctx` is the `ReadyFn` box of a live `GradReadyHooks` (the shim stops
    // calling before `Drop` frees it).
    let f = unsafe { &*ctx.cast::<ReadyFn>() };
    // A panic must not unwind into libtorch's C++ frames.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index)));
}

impl GradReadyHooks {
    /// Hooks that call `on_ready(index)`.
    pub fn new(on_ready: impl Fn(usize) + Send + Sync + 'static) -> GradReadyHooks {
        let ctx = Box::into_raw(Box::new(Box::new(on_ready) as ReadyFn));
        // SAFETY: the shim stores the callback and context; both outlive the token,
        // which `Drop` frees (disarming it) before freeing `ctx`.
        let holder = unsafe { dml_grad_token_new(grad_ready_trampoline, ctx.cast()) };
        GradReadyHooks { holder, ctx }
    }

    /// Reports `index` after each accumulation into `param.grad`. `param` must be a leaf
    /// that requires grad.
    pub fn watch(&self, param: &tch::Tensor, index: usize) -> Result<(), String> {
        // SAFETY: `holder` is live; `param` points to a live at::Tensor for the call.
        let rc = unsafe { dml_grad_hook(self.holder, param.as_ptr().cast(), index) };
        shim_result(rc, "registering a gradient hook")
    }
}

impl Drop for GradReadyHooks {
    fn drop(&mut self) {
        // SAFETY: `holder` came from dml_grad_token_new and is freed once, here; after
        // it returns no hook calls the callback, so `ctx` can be freed.
        unsafe {
            dml_grad_token_free(self.holder);
            drop(Box::from_raw(self.ctx));
        }
    }
}

/// Makes `grad` the gradient of `param` (`param.grad = grad`; a different shape, kind
/// or device is an error): backward then accumulates into `grad`'s memory in
/// place, e.g. into a view of a flat all-reduce bucket.
///
/// ```
/// let p = tch::Tensor::zeros([3], tch::kind::FLOAT_CPU).set_requires_grad(true);
/// let bucket = tch::Tensor::zeros([5], tch::kind::FLOAT_CPU);
/// dml::sys::set_grad(&p, &bucket.narrow(0, 1, 3)).unwrap();
/// (&p * 2).sum(tch::Kind::Float).backward();
/// assert_eq!(Vec::<f32>::try_from(&bucket).unwrap(), vec![0.0, 2.0, 2.0, 2.0, 0.0]);
/// // A gradient of another shape is refused:
/// let e = dml::sys::set_grad(&p, &bucket).unwrap_err();
/// assert!(e.starts_with("setting a gradient: "), "{e}");
/// ```
pub fn set_grad(param: &tch::Tensor, grad: &tch::Tensor) -> Result<(), String> {
    // libtorch's `mutable_grad() =` checks nothing: check here.
    if (param.size(), param.kind(), param.device()) != (grad.size(), grad.kind(), grad.device()) {
        return Err(format!(
            "setting a gradient: {:?} {:?} on {:?} for a parameter of {:?} {:?} on {:?}",
            grad.size(),
            grad.kind(),
            grad.device(),
            param.size(),
            param.kind(),
            param.device()
        ));
    }
    // SAFETY: both point to live at::Tensor objects for the duration of the call.
    let rc = unsafe { dml_set_grad(param.as_ptr().cast(), grad.as_ptr().cast()) };
    shim_result(rc, "setting a gradient")
}

/// `Ok` for a shim return code of 0, else the shim's message for this thread's last
/// failing call, prefixed with `what`.
fn shim_result(rc: i32, what: &str) -> Result<(), String> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated thread-local string that lives until the
    // next failing call on this thread; it is copied out at once.
    let msg = unsafe { std::ffi::CStr::from_ptr(dml_shim_last_error()) };
    Err(format!("{what}: {}", msg.to_string_lossy()))
}

/// An MPI communicator that may be moved to, and used from, another thread: the
/// gradient reducer's communication thread owns one (a duplicate of the world).
///
/// Only [`SendComm::new`] makes one, and only when MPI was initialised with at least
/// `MPI_THREAD_SERIALIZED`; the owner must still never call MPI at the same time as
/// another thread (dml's reducer hands the communication to its thread for the
/// backward, during which the main thread makes no MPI call, and waits for it after).
pub struct SendComm(mpi::topology::SimpleCommunicator);

// SAFETY: an MPI communicator handle is an opaque value valid on every thread of the
// process once MPI provides MPI_THREAD_SERIALIZED or more (checked in `new`); calls are
// serialised by the owner (see the type's docs).
unsafe impl Send for SendComm {}

impl SendComm {
    /// `comm` as a [`SendComm`], if `provided` (the threading level MPI granted) allows
    /// calls from more than the main thread; `None` otherwise.
    pub fn new(
        comm: mpi::topology::SimpleCommunicator,
        provided: mpi::Threading,
    ) -> Option<SendComm> {
        matches!(
            provided,
            mpi::Threading::Serialized | mpi::Threading::Multiple
        )
        .then_some(SendComm(comm))
    }

    /// The communicator.
    pub fn comm(&self) -> &mpi::topology::SimpleCommunicator {
        &self.0
    }
}

/// The elements of `t` as a slice when `t` is a defined, contiguous CPU tensor of kind
/// `T`; `None` otherwise (the caller copies instead).
///
/// ```
/// let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
/// assert_eq!(dml::sys::cpu_data::<f32>(&t), Some(&[1.0f32, 2.0, 3.0][..]));
/// assert_eq!(dml::sys::cpu_data::<f64>(&t), None); // another kind
/// ```
pub fn cpu_data<T: tch::kind::Element>(t: &tch::Tensor) -> Option<&[T]> {
    if !is_plain_cpu::<T>(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&[]);
    }
    // SAFETY: `t` is a defined, contiguous CPU tensor of `n` elements of kind `T`, so its
    // data pointer addresses `n` initialised, aligned `T`s; they live while `t` is
    // borrowed. Writers through other views of the same storage must not run meanwhile:
    // dml holds such a slice only across one collective call.
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr().cast::<T>(), n) })
}

/// [`cpu_data`], writable.
///
/// ```
/// let mut t = tch::Tensor::from_slice(&[1i64, 2]);
/// dml::sys::cpu_data_mut::<i64>(&mut t).unwrap()[1] = 5;
/// assert_eq!(Vec::<i64>::try_from(&t).unwrap(), vec![1, 5]);
/// ```
pub fn cpu_data_mut<T: tch::kind::Element>(t: &mut tch::Tensor) -> Option<&mut [T]> {
    if !is_plain_cpu::<T>(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&mut []);
    }
    // SAFETY: as in `cpu_data`; the exclusive borrow of `t` stands for exclusive use of
    // its storage during the slice's life (see there).
    Some(unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<T>(), n) })
}

fn is_plain_cpu<T: tch::kind::Element>(t: &tch::Tensor) -> bool {
    t.defined() && t.device() == tch::Device::Cpu && t.kind() == T::KIND && t.is_contiguous()
}

/// The stop signal received, 0 for none (set by the handler, read by the loop).
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn record_stop_signal(sig: libc::c_int) {
    // Async-signal-safe: one atomic store.
    STOP_SIGNAL.store(sig, std::sync::atomic::Ordering::SeqCst);
}

/// Makes SIGTERM (Slurm's preemption and time limit, `scancel`) and SIGUSR1 (`sbatch
/// --signal`) only record themselves, for [`stop_signal`] to report: the training loop
/// then stops after its current step with a checkpoint instead of dying mid-step.
pub fn install_stop_handlers() -> Result<(), String> {
    for sig in [libc::SIGTERM, libc::SIGUSR1] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler
        // is an extern "C" fn that only stores into an atomic (async-signal-safe).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = record_stop_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!(
                "installing the handler of signal {sig}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The name of the stop signal this process received since [`install_stop_handlers`]
/// (`"SIGTERM"` or `"SIGUSR1"`), if any.
pub fn stop_signal() -> Option<&'static str> {
    match STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        s if s == libc::SIGTERM => Some("SIGTERM"),
        s if s == libc::SIGUSR1 => Some("SIGUSR1"),
        _ => Some("a stop signal"),
    }
}

/// The hyperparameters of one [`fused_adam`] call.
#[derive(Debug, Clone, Copy)]
pub struct AdamHyper {
    /// Learning rate.
    pub lr: f64,
    /// β₁, the first moment's decay.
    pub beta1: f64,
    /// β₂, the second moment's decay.
    pub beta2: f64,
    /// Weight decay: L2 added to the gradient (Adam) or decoupled (AdamW).
    pub weight_decay: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// AdamW (decoupled weight decay) instead of Adam.
    pub decoupled: bool,
}

/// One Adam (or AdamW) update of every parameter in `params`, in place, by torch's fused
/// kernel (`torch._fused_adam_`, what `torch.optim.Adam(fused=True)` runs): `grads`,
/// `exp_avgs`, `exp_avg_sqs` and the float32 one-element `steps` (the step number of this
/// update, already counted) are the matching tensors of each parameter. All tensors of a
/// call share one device and kind. Errors are libtorch's message (a shape or kind
/// mismatch, an unsupported device).
///
/// ```
/// use tch::{Kind, Tensor};
/// let p = Tensor::from_slice(&[1.0f32, -2.0]);
/// let g = Tensor::from_slice(&[0.5f32, 0.5]);
/// let (m, v) = (p.zeros_like(), p.zeros_like());
/// let step = Tensor::from_slice(&[1.0f32]).view([]);
/// let h = dml::sys::AdamHyper { lr: 0.1, beta1: 0.9, beta2: 0.999, weight_decay: 0.0, eps: 1e-8, decoupled: false };
/// dml::sys::fused_adam(&[&p], &[&g], &[&m], &[&v], &[&step], h).unwrap();
/// // The first Adam step moves each weight by lr against the gradient's sign.
/// assert!((p.double_value(&[0]) - 0.9).abs() < 1e-6);
/// assert!((p.double_value(&[1]) + 2.1).abs() < 1e-6);
/// ```
pub fn fused_adam(
    params: &[&tch::Tensor],
    grads: &[&tch::Tensor],
    exp_avgs: &[&tch::Tensor],
    exp_avg_sqs: &[&tch::Tensor],
    steps: &[&tch::Tensor],
    h: AdamHyper,
) -> Result<(), String> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()] != [n; 4] {
        return Err(format!(
            "fused adam: {n} parameters but {} gradients, {} first and {} second moments, {} steps",
            grads.len(),
            exp_avgs.len(),
            exp_avg_sqs.len(),
            steps.len()
        ));
    }
    let ptrs = |ts: &[&tch::Tensor]| {
        ts.iter()
            .map(|t| t.as_ptr().cast::<std::ffi::c_void>())
            .collect::<Vec<_>>()
    };
    let (p, g, m, v, s) = (
        ptrs(params),
        ptrs(grads),
        ptrs(exp_avgs),
        ptrs(exp_avg_sqs),
        ptrs(steps),
    );
    // SAFETY: each array holds `n` pointers to live at::Tensor objects (tch's C_tensor),
    // borrowed for the duration of the call; the shim catches every C++ exception.
    let rc = unsafe {
        dml_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            h.lr,
            h.beta1,
            h.beta2,
            h.weight_decay,
            h.eps,
            i32::from(h.decoupled),
        )
    };
    shim_result(rc, "fused adam")
}

/// Sets the dtype CUDA autocast casts to: bfloat16 (`true`) or float16 (`false`, torch's
/// default), as `torch.autocast("cuda", dtype=...)` does. A thread-local libtorch
/// setting: call it on the thread that runs the training step. Works without a GPU.
///
/// ```
/// dml::sys::set_cuda_autocast_bf16(true);
/// assert!(dml::sys::cuda_autocast_is_bf16());
/// ```
pub fn set_cuda_autocast_bf16(bf16: bool) {
    // SAFETY: a C shim (csrc/autocast.cpp) around at::autocast::set_autocast_dtype, which
    // only stores a value in libtorch's autocast state.
    unsafe { dml_set_cuda_autocast_dtype(i32::from(bf16)) }
}

/// True if CUDA autocast casts to bfloat16 (see [`set_cuda_autocast_bf16`]).
pub fn cuda_autocast_is_bf16() -> bool {
    // SAFETY: reads libtorch's autocast state through the C shim.
    unsafe { dml_cuda_autocast_dtype_is_bf16() != 0 }
}

/// Safe wrappers around the NCCL calls of `dist::nccl`, and the two CUDA runtime calls
/// it needs (select the GPU, ask whether the default stream is idle).
///
/// Collectives are enqueued on the default (legacy, null) CUDA stream, the stream
/// libtorch's kernels run on, so they are ordered with the kernels that produce and
/// consume their tensors. Errors are plain strings; `dist::nccl` turns them into
/// `Error::Dist` naming the collective and the rank.
#[cfg(feature = "nccl")]
pub mod nccl {
    use std::cell::Cell;
    use std::ffi::{c_char, c_int, c_void, CStr};
    use std::ptr;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use cudarc::nccl::sys::{ncclComm_t, ncclConfig_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
    use libloading::Library;
    use tch::{Device, Kind, Tensor};

    /// The NCCL library names tried, in order (the PyPI wheel `nvidia-nccl-cu13`, which
    /// libtorch loads, ships only `libnccl.so.2`).
    pub const NCCL_LIBS: [&str; 2] = ["libnccl.so.2", "libnccl.so"];
    /// The CUDA runtime names tried, in order (libtorch 2.13's CUDA 13 build first).
    pub const CUDART_LIBS: [&str; 3] = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"];

    const NCCL_SUCCESS: c_int = 0;
    const NCCL_IN_PROGRESS: c_int = 7;
    const CUDA_SUCCESS: c_int = 0;
    const CUDA_NOT_READY: c_int = 600;
    /// `NCCL_CONFIG_UNDEF_INT`: "let NCCL choose".
    const UNDEF: c_int = c_int::MIN;

    type Stream = *mut c_void;

    /// NCCL's entry points (result codes as plain ints: a newer library may return a
    /// code that the bindings' enum does not know).
    struct Nccl {
        get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
        get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> c_int,
        init_rank_config: unsafe extern "C" fn(
            *mut ncclComm_t,
            c_int,
            ncclUniqueId,
            c_int,
            *mut ncclConfig_t,
        ) -> c_int,
        all_gather: unsafe extern "C" fn(
            *const c_void,
            *mut c_void,
            usize,
            ncclDataType_t,
            ncclComm_t,
            Stream,
        ) -> c_int,
        all_reduce: unsafe extern "C" fn(
            *const c_void,
            *mut c_void,
            usize,
            ncclDataType_t,
            ncclRedOp_t,
            ncclComm_t,
            Stream,
        ) -> c_int,
        broadcast: unsafe extern "C" fn(
            *const c_void,
            *mut c_void,
            usize,
            ncclDataType_t,
            c_int,
            ncclComm_t,
            Stream,
        ) -> c_int,
        get_async_error: unsafe extern "C" fn(ncclComm_t, *mut c_int) -> c_int,
        finalize: unsafe extern "C" fn(ncclComm_t) -> c_int,
        destroy: unsafe extern "C" fn(ncclComm_t) -> c_int,
        abort: unsafe extern "C" fn(ncclComm_t) -> c_int,
        error_string: unsafe extern "C" fn(c_int) -> *const c_char,
        last_error: unsafe extern "C" fn(ncclComm_t) -> *const c_char,
        _lib: Library,
    }

    /// The CUDA runtime's entry points.
    struct Cudart {
        set_device: unsafe extern "C" fn(c_int) -> c_int,
        stream_query: unsafe extern "C" fn(Stream) -> c_int,
        error_string: unsafe extern "C" fn(c_int) -> *const c_char,
        _lib: Library,
    }

    fn open(names: &[&str], what: &str) -> Result<Library, String> {
        let mut tried = Vec::new();
        for name in names {
            // SAFETY: loading NCCL or the CUDA runtime runs their library initialisers,
            // which have no preconditions (libtorch loads the same libraries).
            match unsafe { Library::new(*name) } {
                Ok(lib) => return Ok(lib),
                Err(e) => tried.push(format!("{name}: {e}")),
            }
        }
        Err(format!(
            "could not load {what} ({}): put its directory on LD_LIBRARY_PATH (for the \
             venv's wheels: .venv/lib/python3*/site-packages/nvidia/nccl/lib and \
             nvidia/cu13/lib)",
            tried.join("; ")
        ))
    }

    /// Symbol `name` of `lib` as a function pointer of type `T`.
    ///
    /// # Safety
    /// `T` must be the C signature of `name`.
    unsafe fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
        // SAFETY: forwarded to the caller (T is the symbol's signature).
        unsafe { lib.get::<T>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| format!("symbol {name} missing from the loaded library: {e}"))
    }

    fn nccl() -> Result<&'static Nccl, String> {
        static API: OnceLock<Result<Nccl, String>> = OnceLock::new();
        API.get_or_init(|| {
            let lib = open(&NCCL_LIBS, "NCCL")?;
            // SAFETY: each type below is the signature of the symbol in nccl.h (2.18+),
            // with enums returned as c_int.
            unsafe {
                Ok(Nccl {
                    get_version: sym(&lib, "ncclGetVersion")?,
                    get_unique_id: sym(&lib, "ncclGetUniqueId")?,
                    init_rank_config: sym(&lib, "ncclCommInitRankConfig")?,
                    all_gather: sym(&lib, "ncclAllGather")?,
                    all_reduce: sym(&lib, "ncclAllReduce")?,
                    broadcast: sym(&lib, "ncclBroadcast")?,
                    get_async_error: sym(&lib, "ncclCommGetAsyncError")?,
                    finalize: sym(&lib, "ncclCommFinalize")?,
                    destroy: sym(&lib, "ncclCommDestroy")?,
                    abort: sym(&lib, "ncclCommAbort")?,
                    error_string: sym(&lib, "ncclGetErrorString")?,
                    last_error: sym(&lib, "ncclGetLastError")?,
                    _lib: lib,
                })
            }
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    fn cudart() -> Result<&'static Cudart, String> {
        static API: OnceLock<Result<Cudart, String>> = OnceLock::new();
        API.get_or_init(|| {
            let lib = open(&CUDART_LIBS, "the CUDA runtime")?;
            // SAFETY: the signatures of cuda_runtime_api.h, cudaError_t as c_int.
            unsafe {
                Ok(Cudart {
                    set_device: sym(&lib, "cudaSetDevice")?,
                    stream_query: sym(&lib, "cudaStreamQuery")?,
                    error_string: sym(&lib, "cudaGetErrorString")?,
                    _lib: lib,
                })
            }
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// A C string returned by NCCL or CUDA (static or owned by the library), copied.
    fn c_str(p: *const c_char) -> String {
        if p.is_null() {
            return String::new();
        }
        // SAFETY: NCCL and CUDA return NUL-terminated strings that outlive this call.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn nccl_check(api: &Nccl, code: c_int, call: &str) -> Result<(), String> {
        if code == NCCL_SUCCESS || code == NCCL_IN_PROGRESS {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString accepts any code.
        let msg = c_str(unsafe { (api.error_string)(code) });
        Err(format!("{call} failed: {msg} (ncclResult {code})"))
    }

    fn cuda_check(api: &Cudart, code: c_int, call: &str) -> Result<(), String> {
        if code == CUDA_SUCCESS {
            return Ok(());
        }
        // SAFETY: cudaGetErrorString accepts any code.
        let msg = c_str(unsafe { (api.error_string)(code) });
        Err(format!("{call} failed: {msg} (cudaError {code})"))
    }

    /// The loaded NCCL's version as `major.minor.patch`; loads NCCL if needed.
    ///
    /// ```no_run
    /// println!("NCCL {}", dml::sys::nccl::version()?);
    /// # Ok::<(), String>(())
    /// ```
    pub fn version() -> Result<String, String> {
        let api = nccl()?;
        let mut v: c_int = 0;
        // SAFETY: `v` is a valid out-pointer.
        nccl_check(api, unsafe { (api.get_version)(&mut v) }, "ncclGetVersion")?;
        Ok(format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100))
    }

    /// Makes `device` this thread's current CUDA device (`cudaSetDevice`), which NCCL's
    /// communicator creation uses.
    pub fn set_device(device: usize) -> Result<(), String> {
        let api = cudart()?;
        let d = c_int::try_from(device).map_err(|_| format!("device {device} out of range"))?;
        // SAFETY: cudaSetDevice takes any int and reports invalid ones.
        cuda_check(api, unsafe { (api.set_device)(d) }, "cudaSetDevice")
    }

    /// `true` when all work queued on the default CUDA stream has finished
    /// (`cudaStreamQuery` on the legacy null stream), `false` while some still runs.
    pub fn default_stream_idle() -> Result<bool, String> {
        let api = cudart()?;
        // SAFETY: the null stream is always valid.
        match unsafe { (api.stream_query)(ptr::null_mut()) } {
            CUDA_SUCCESS => Ok(true),
            CUDA_NOT_READY => Ok(false),
            code => cuda_check(api, code, "cudaStreamQuery").map(|_| false),
        }
    }

    /// A fresh NCCL unique id (`ncclGetUniqueId`): rank 0 makes it, every rank needs it.
    pub fn unique_id() -> Result<[u8; 128], String> {
        let api = nccl()?;
        let mut id = ncclUniqueId { internal: [0; 128] };
        // SAFETY: `id` is a valid out-pointer to an ncclUniqueId.
        nccl_check(
            api,
            unsafe { (api.get_unique_id)(&mut id) },
            "ncclGetUniqueId",
        )?;
        Ok(id.internal.map(|c| c as u8))
    }

    /// What [`Communicator::state`] reports.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum State {
        /// Nothing pending on the host side, no error.
        Ready,
        /// A non-blocking call (creation, enqueueing) has not completed yet.
        InProgress,
        /// An asynchronous error (a peer failed, a network error…), or the communicator
        /// was aborted.
        Failed(String),
    }

    /// Is `kind` one NCCL moves, and as which NCCL type.
    fn nccl_type(kind: Kind) -> Option<ncclDataType_t> {
        Some(match kind {
            Kind::Float => ncclDataType_t::ncclFloat32,
            Kind::Double => ncclDataType_t::ncclFloat64,
            Kind::BFloat16 => ncclDataType_t::ncclBfloat16,
            Kind::Int64 => ncclDataType_t::ncclInt64,
            Kind::Uint8 => ncclDataType_t::ncclUint8,
            _ => return None,
        })
    }

    /// An NCCL communicator on one GPU. Destroyed (finalised, then freed) when dropped,
    /// unless it was aborted.
    pub struct Communicator {
        raw: ncclComm_t,
        api: &'static Nccl,
        device: usize,
        world: usize,
        aborted: Cell<bool>,
    }

    impl Communicator {
        /// Creates rank `rank` of `world` from the unique id `id` on GPU `device`
        /// (made current first), non-blocking when `non_blocking`: then creation may
        /// still be in progress on return, see [`Communicator::state`].
        pub fn init_rank(
            id: &[u8; 128],
            world: usize,
            rank: usize,
            device: usize,
            non_blocking: bool,
        ) -> Result<Self, String> {
            let api = nccl()?;
            set_device(device)?;
            let w = c_int::try_from(world).map_err(|_| format!("world {world} too large"))?;
            let r = c_int::try_from(rank).map_err(|_| format!("rank {rank} too large"))?;
            let uid = ncclUniqueId {
                internal: id.map(|b| b as c_char),
            };
            // NCCL_CONFIG_INITIALIZER of nccl.h 2.29, with `blocking` set.
            let mut config = ncclConfig_t {
                size: std::mem::size_of::<ncclConfig_t>(),
                magic: 0xcafe_beef,
                version: 22900,
                blocking: if non_blocking { 0 } else { 1 },
                cgaClusterSize: UNDEF,
                minCTAs: UNDEF,
                maxCTAs: UNDEF,
                netName: ptr::null(),
                splitShare: UNDEF,
                trafficClass: UNDEF,
                commName: ptr::null(),
                collnetEnable: UNDEF,
                CTAPolicy: UNDEF,
                shrinkShare: UNDEF,
                nvlsCTAs: UNDEF,
                nChannelsPerNetPeer: UNDEF,
                nvlinkCentricSched: UNDEF,
                graphUsageMode: UNDEF,
                numRmaCtx: UNDEF,
            };
            let mut raw: ncclComm_t = ptr::null_mut();
            // SAFETY: valid out-pointer and config; NCCL copies the config.
            let code = unsafe { (api.init_rank_config)(&mut raw, w, uid, r, &mut config) };
            nccl_check(api, code, "ncclCommInitRankConfig")?;
            if raw.is_null() {
                return Err("ncclCommInitRankConfig returned no communicator".into());
            }
            Ok(Communicator {
                raw,
                api,
                device,
                world,
                aborted: Cell::new(false),
            })
        }

        /// The communicator's asynchronous state (`ncclCommGetAsyncError`).
        pub fn state(&self) -> State {
            if self.aborted.get() {
                return State::Failed("the NCCL communicator was aborted".into());
            }
            let mut async_err: c_int = NCCL_SUCCESS;
            // SAFETY: `raw` is a live communicator (not aborted), valid out-pointer.
            let code = unsafe { (self.api.get_async_error)(self.raw, &mut async_err) };
            if let Err(e) = nccl_check(self.api, code, "ncclCommGetAsyncError") {
                return State::Failed(e);
            }
            match async_err {
                NCCL_SUCCESS => State::Ready,
                NCCL_IN_PROGRESS => State::InProgress,
                code => {
                    // SAFETY: as above; the string belongs to NCCL.
                    let last = c_str(unsafe { (self.api.last_error)(self.raw) });
                    let msg = nccl_check(self.api, code, "NCCL").err().unwrap_or_default();
                    State::Failed(if last.is_empty() {
                        msg
                    } else {
                        format!("{msg}: {last}")
                    })
                }
            }
        }

        /// Aborts the communicator (`ncclCommAbort`): pending collectives stop, its
        /// resources are freed; every later call reports [`State::Failed`]. Idempotent.
        pub fn abort(&self) {
            if !self.aborted.replace(true) {
                // SAFETY: `raw` is live and, with `aborted` set, never used again.
                unsafe { (self.api.abort)(self.raw) };
            }
        }

        /// `true` once [`Communicator::abort`] was called.
        pub fn is_aborted(&self) -> bool {
            self.aborted.get()
        }

        /// `t`'s device pointer, element count and NCCL type, after checking that it is
        /// a contiguous tensor of a supported kind on this communicator's GPU.
        fn buffer(
            &self,
            t: &Tensor,
            what: &str,
        ) -> Result<(*mut c_void, usize, ncclDataType_t), String> {
            if self.aborted.get() {
                return Err("the NCCL communicator was aborted".into());
            }
            if t.device() != Device::Cuda(self.device) {
                return Err(format!(
                    "{what} is on {:?}, not on this rank's GPU cuda:{}",
                    t.device(),
                    self.device
                ));
            }
            if !t.is_contiguous() {
                return Err(format!("{what} is not contiguous"));
            }
            let ty = nccl_type(t.kind()).ok_or_else(|| {
                format!(
                    "{what} has kind {:?}, which NCCL does not move here",
                    t.kind()
                )
            })?;
            Ok((t.data_ptr(), t.numel(), ty))
        }

        /// Enqueues `ncclAllGather` of `send` into `recv` (`world` times as many
        /// elements, same kind) on the default stream. Returns once enqueued.
        pub fn all_gather(&self, send: &Tensor, recv: &mut Tensor) -> Result<(), String> {
            let (s, n, ty) = self.buffer(send, "the all_gather input")?;
            let (r, m, ty2) = self.buffer(recv, "the all_gather output")?;
            if ty != ty2 || m != n * self.world {
                return Err(format!(
                    "all_gather output of {m} {:?} for an input of {n} {:?} in a world of {}",
                    recv.kind(),
                    send.kind(),
                    self.world
                ));
            }
            if n == 0 {
                return Ok(());
            }
            // SAFETY: both buffers are live, contiguous device memory of the checked
            // sizes on this communicator's GPU. The kernel runs on the default stream,
            // the stream libtorch frees and reuses memory on, so the memory stays valid
            // (for the caching allocator) until the kernel is done.
            let code = unsafe { (self.api.all_gather)(s, r, n, ty, self.raw, ptr::null_mut()) };
            nccl_check(self.api, code, "ncclAllGather")
        }

        /// Enqueues an in-place `ncclAllReduce` (sum) of `t` on the default stream.
        pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), String> {
            let (p, n, ty) = self.buffer(t, "the all_reduce_sum tensor")?;
            if n == 0 {
                return Ok(());
            }
            // SAFETY: as in `all_gather`; in-place operation is allowed by NCCL.
            let code = unsafe {
                (self.api.all_reduce)(p, p, n, ty, ncclRedOp_t::ncclSum, self.raw, ptr::null_mut())
            };
            nccl_check(self.api, code, "ncclAllReduce")
        }

        /// Enqueues an in-place `ncclBroadcast` of `t` from rank `root` on the default
        /// stream.
        pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), String> {
            let (p, n, ty) = self.buffer(t, "the broadcast tensor")?;
            if root >= self.world {
                return Err(format!(
                    "broadcast from rank {root} in a world of {}",
                    self.world
                ));
            }
            if n == 0 {
                return Ok(());
            }
            // SAFETY: as in `all_gather`; `root` < world fits a c_int (world does).
            let code = unsafe {
                (self.api.broadcast)(p, p, n, ty, root as c_int, self.raw, ptr::null_mut())
            };
            nccl_check(self.api, code, "ncclBroadcast")
        }
    }

    impl Drop for Communicator {
        fn drop(&mut self) {
            if self.aborted.get() {
                return;
            }
            // SAFETY: `raw` is live; finalise (flush pending work, at most 10 s in
            // non-blocking mode), then free; abort if finalising does not finish.
            unsafe {
                let code = (self.api.finalize)(self.raw);
                let start = Instant::now();
                let mut done = code == NCCL_SUCCESS;
                while code == NCCL_IN_PROGRESS && start.elapsed() < Duration::from_secs(10) {
                    if self.state() == State::Ready {
                        done = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                if done {
                    (self.api.destroy)(self.raw);
                } else {
                    (self.api.abort)(self.raw);
                }
            }
        }
    }
}
