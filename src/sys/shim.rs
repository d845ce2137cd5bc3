//! The C++ shim (csrc/*.cpp) over libtorch functions tch does not expose: torch's
//! post-accumulate-grad hooks and `param.grad = view` (the gradient all-reduce overlapped
//! with the backward), the fused Adam/AdamW kernels, and the dtype of CUDA autocast.

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
