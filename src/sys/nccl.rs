//! Safe wrappers around the NCCL calls of `comm::nccl`, and the two CUDA runtime calls
//! it needs (select the GPU, ask whether the default stream is idle).
//!
//! Collectives are enqueued on the default (legacy, null) CUDA stream, the stream
//! libtorch's kernels run on, so they are ordered with the kernels that produce and
//! consume their tensors. Errors are plain strings; `comm::nccl` turns them into
//! `Error::Dist` naming the collective and the rank.
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
        let code =
            unsafe { (self.api.broadcast)(p, p, n, ty, root as c_int, self.raw, ptr::null_mut()) };
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
