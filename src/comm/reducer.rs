//! Gradient buckets all-reduced during the backward, as PyTorch DDP's Reducer does.
//!
//! The parameters' gradients are views into flat buckets (filled in reverse parameter
//! order, the order the backward produces them; a bucket holds whole parameters up to
//! `bucket_bytes`, a larger parameter has a bucket of its own). While armed, a
//! post-accumulate-grad hook on each parameter tells a communication thread that its
//! gradient is final; the thread all-reduces bucket `i` in place as soon as every
//! parameter in it is final and buckets `0..i` are done, so every rank issues the same
//! collectives in the same order. After the backward, [`GradReducer::finish`] reduces
//! what is left (parameters that got no gradient this step hold zeros) and waits.
//!
//! Without a communication thread (a backend without [`Comm::grad_channel`], CUDA
//! tensors, or `dist.overlap = false`) `finish` reduces the same buckets in the same
//! order on the calling thread: the result is bit for bit the same.
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tch::{Device, Kind, Tensor};

use super::{Comm, GradChannel};
use crate::error::{Error, Result};
use crate::sys::GradReadyHooks;

/// A message to the communication thread.
enum Msg {
    /// Parameter `i`'s gradient is final for this backward.
    Ready(usize),
    /// The backward is over: reduce every bucket not reduced yet, then answer.
    BackwardDone,
}

/// The communication thread and its channels.
struct CommThread {
    tx: Sender<Msg>,
    done: Receiver<Result<()>>,
    handle: Option<JoinHandle<()>>,
}

/// Flat gradient buckets of a fixed set of parameters, reduced (summed over the ranks)
/// during or after the backward. Build it once the parameters have gradients; it stays
/// valid while the same parameters keep those gradients ([`GradReducer::matches`]).
pub struct GradReducer {
    params: Vec<Tensor>,
    /// Each parameter's gradient: a view into its bucket.
    views: Vec<Tensor>,
    buckets: Vec<Tensor>,
    armed: Arc<AtomicBool>,
    /// Declared before `thread`: dropping the hooks drops their sender first.
    hooks: Option<GradReadyHooks>,
    thread: Option<CommThread>,
}

impl GradReducer {
    /// Buckets for `params` (the tensors whose gradients are summed across ranks; those
    /// without a gradient are left out), with their current gradients copied in and the
    /// gradients replaced by views into the buckets. With `overlap` and a
    /// [`Comm::grad_channel`], a communication thread reduces buckets during the backward
    /// of each armed step. Every rank must call this together with the same parameters
    /// (checked: the error names the difference).
    pub fn new(
        comm: &dyn Comm,
        params: &[Tensor],
        bucket_bytes: usize,
        overlap: bool,
    ) -> Result<GradReducer> {
        let with_grad: Vec<Tensor> = params
            .iter()
            .filter(|p| p.grad().defined())
            .map(|p| p.shallow_clone())
            .collect();
        let grads: Vec<Option<Tensor>> = params
            .iter()
            .map(|p| Some(p.grad()).filter(|g| g.defined()))
            .collect();
        super::grads::check_same_grads(comm, &grads)?;
        let plan = plan_buckets(&with_grad, bucket_bytes);
        let mut views: Vec<Option<Tensor>> = with_grad.iter().map(|_| None).collect();
        let mut buckets = Vec::with_capacity(plan.len());
        let mut bucket_of = vec![0usize; with_grad.len()];
        tch::no_grad(|| -> Result<()> {
            for (b, members) in plan.iter().enumerate() {
                let first = &with_grad[members[0]];
                let total: i64 = members.iter().map(|&i| with_grad[i].numel() as i64).sum();
                let bucket = Tensor::f_zeros([total], (first.kind(), first.device()))?;
                let mut off = 0;
                for &i in members {
                    let p = &with_grad[i];
                    let n = p.numel() as i64;
                    let mut view = bucket.f_narrow(0, off, n)?.f_view(&p.size()[..])?;
                    view.f_copy_(&p.grad())?;
                    crate::sys::set_grad(p, &view).map_err(Error::Dist)?;
                    views[i] = Some(view);
                    bucket_of[i] = b;
                    off += n;
                }
                buckets.push(bucket);
            }
            Ok(())
        })?;
        let views: Vec<Tensor> = views.into_iter().flatten().collect();
        let armed = Arc::new(AtomicBool::new(false));
        let all_cpu = with_grad.iter().all(|p| p.device() == Device::Cpu);
        let channel = match overlap && all_cpu && comm.world() > 1 {
            true => comm.grad_channel()?,
            false => None,
        };
        let (hooks, thread) = match channel {
            Some(channel) => {
                let counts = plan.iter().map(Vec::len).collect();
                let thread = spawn(channel, &buckets, bucket_of, counts)?;
                let hooks = GradReadyHooks::new({
                    let (tx, armed) = (thread.tx.clone(), armed.clone());
                    move |i| {
                        if armed.load(Ordering::Acquire) {
                            let _ = tx.send(Msg::Ready(i));
                        }
                    }
                });
                for (i, p) in with_grad.iter().enumerate() {
                    hooks.watch(p, i).map_err(Error::Dist)?;
                }
                (Some(hooks), Some(thread))
            }
            None => (None, None),
        };
        Ok(GradReducer {
            params: with_grad,
            views,
            buckets,
            armed,
            hooks,
            thread,
        })
    }

    /// True if the parameters of `params` that have a gradient are this reducer's, in
    /// order, each still with its bucket view as gradient.
    pub fn matches(&self, params: &[Tensor]) -> bool {
        let mut mine = self.params.iter().zip(&self.views);
        for p in params {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            match mine.next() {
                Some((q, v)) if q.data_ptr() == p.data_ptr() && g.data_ptr() == v.data_ptr() => {}
                _ => return false,
            }
        }
        mine.next().is_none()
    }

    /// True if `param` is one of this reducer's parameters.
    pub fn holds(&self, param: &Tensor) -> bool {
        self.params.iter().any(|q| q.data_ptr() == param.data_ptr())
    }

    /// The number of buckets.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// True if a communication thread reduces buckets during the backward.
    pub fn overlaps(&self) -> bool {
        self.thread.is_some()
    }

    /// Lets the hooks start buckets during the coming backward (call right before it;
    /// the calling thread must make no MPI call until [`GradReducer::finish`]).
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Release);
    }

    /// Reduces every bucket not reduced during the backward and waits for all of them;
    /// returns the seconds spent waiting. Afterwards every gradient holds its sum over
    /// the ranks.
    pub fn finish(&self, comm: &dyn Comm) -> Result<f64> {
        self.armed.store(false, Ordering::Release);
        let started = Instant::now();
        match &self.thread {
            Some(t) => {
                t.tx.send(Msg::BackwardDone).map_err(|_| thread_gone())?;
                t.done.recv().map_err(|_| thread_gone())??;
            }
            None => {
                for b in &self.buckets {
                    let mut b = b.shallow_clone();
                    comm.all_reduce_sum(&mut b)?;
                }
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        self.hooks = None;
        if let Some(mut t) = self.thread.take() {
            drop(t.tx);
            if let Some(h) = t.handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// The gradient reduction of a run's steps: a [`GradReducer`] built after the first
/// backward (its buckets need the gradients to exist) and rebuilt whenever the set of
/// parameters with a gradient changes.
pub struct GradSync {
    bucket_bytes: usize,
    overlap: bool,
    reducer: RefCell<Option<GradReducer>>,
}

impl GradSync {
    /// Buckets of `bucket_bytes`, reduced during the backward when `overlap` allows.
    pub fn new(bucket_bytes: usize, overlap: bool) -> GradSync {
        GradSync {
            bucket_bytes,
            overlap,
            reducer: RefCell::new(None),
        }
    }

    /// Runs `backward` and sums the gradients of `params` across ranks (during the
    /// backward when the reducer overlaps, else after it); returns the seconds waited for
    /// the sums after the backward. Every rank calls it together.
    pub fn backward_and_sum(
        &self,
        comm: &dyn Comm,
        params: &[Tensor],
        backward: impl FnOnce(),
    ) -> Result<f64> {
        if comm.world() == 1 {
            backward();
            return Ok(0.0);
        }
        let mut slot = self.reducer.borrow_mut();
        let armed = match slot.as_ref() {
            Some(r) if r.matches(params) => {
                r.arm();
                true
            }
            _ => false,
        };
        backward();
        match slot.as_ref() {
            Some(r) if armed && r.matches(params) => r.finish(comm),
            Some(r) if armed => {
                // A parameter got its first gradient in this step: the buckets are
                // summed, the newcomers on their own, and the buckets rebuilt next step.
                let started = Instant::now();
                r.finish(comm)?;
                let newcomers: Vec<Tensor> = params
                    .iter()
                    .filter(|p| p.grad().defined() && !r.holds(p))
                    .map(Tensor::shallow_clone)
                    .collect();
                super::all_reduce_grads(comm, &newcomers, self.bucket_bytes)?;
                *slot = None;
                Ok(started.elapsed().as_secs_f64())
            }
            _ => {
                *slot = None; // its hooks go before the new ones are set
                let r = GradReducer::new(comm, params, self.bucket_bytes, self.overlap)?;
                if comm.rank() == 0 {
                    let when = match r.overlaps() {
                        true => "all-reduced during the backward",
                        false => "all-reduced after the backward",
                    };
                    eprintln!(
                        "dml: gradients in {} buckets of up to {:.2} MiB, {when}",
                        r.buckets(),
                        self.bucket_bytes as f64 / (1 << 20) as f64
                    );
                }
                let wait = r.finish(comm)?;
                *slot = Some(r);
                Ok(wait)
            }
        }
    }
}

fn thread_gone() -> Error {
    Error::Dist("the gradient communication thread stopped unexpectedly".into())
}

/// Starts the communication thread over shallow copies of `buckets`.
fn spawn(
    mut channel: Box<dyn GradChannel>,
    buckets: &[Tensor],
    bucket_of: Vec<usize>,
    counts: Vec<usize>,
) -> Result<CommThread> {
    let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
    let (done_tx, done) = crossbeam_channel::bounded::<Result<()>>(1);
    let mut buckets: Vec<Tensor> = buckets.iter().map(Tensor::shallow_clone).collect();
    let handle = std::thread::Builder::new()
        .name("dml-grad-comm".into())
        .spawn(move || {
            let mut pending = counts.clone();
            let mut next = 0;
            let mut failed: Option<Error> = None;
            for msg in rx.iter() {
                let backward_done = match msg {
                    Msg::Ready(i) => {
                        if let Some(c) = bucket_of.get(i).and_then(|&b| pending.get_mut(b)) {
                            *c = c.saturating_sub(1);
                        }
                        false
                    }
                    Msg::BackwardDone => true,
                };
                // In order: bucket `next` once complete, or every bucket left at the end.
                while next < buckets.len() && (backward_done || pending[next] == 0) {
                    if failed.is_none() {
                        failed = channel.all_reduce_sum(&mut buckets[next]).err();
                    }
                    next += 1;
                }
                if backward_done {
                    let _ = done_tx.send(failed.take().map_or(Ok(()), Err));
                    pending.clone_from(&counts);
                    next = 0;
                }
            }
        })
        .map_err(|e| Error::Dist(format!("starting the gradient communication thread: {e}")))?;
    Ok(CommThread {
        tx,
        done,
        handle: Some(handle),
    })
}

/// Buckets of whole parameters in reverse order, each of one (kind, device) and at most
/// `bucket_bytes` unless a single parameter is larger: lists of indices into `params`.
fn plan_buckets(params: &[Tensor], bucket_bytes: usize) -> Vec<Vec<usize>> {
    let keyed: Vec<((Kind, Device), usize)> = params
        .iter()
        .map(|p| {
            (
                (p.kind(), p.device()),
                p.numel() * p.kind().elt_size_in_bytes(),
            )
        })
        .collect();
    plan_by_size(&keyed, bucket_bytes)
}

/// [`plan_buckets`] on (key, bytes) pairs.
fn plan_by_size<K: PartialEq + Copy>(items: &[(K, usize)], bucket_bytes: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    // One open bucket per key: (key, bytes so far, index into `buckets`).
    let mut open: Vec<(K, usize, usize)> = Vec::new();
    for (i, &(key, bytes)) in items.iter().enumerate().rev() {
        match open.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, used, b)) if *used + bytes <= bucket_bytes || *used == 0 => {
                buckets[*b].push(i);
                *used += bytes;
            }
            Some(slot) => {
                buckets.push(vec![i]);
                *slot = (key, bytes, buckets.len() - 1);
            }
            None => {
                buckets.push(vec![i]);
                open.push((key, bytes, buckets.len() - 1));
            }
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_whole_parameters_in_reverse_order() {
        // Bytes 4, 8, 4, 12, 4 with 12 per bucket, one key, filled from the back:
        // 4 | 12 (4 + 12 > 12) | 4 + 8 = 12 | 4 → [4], [3], [2, 1], [0].
        let items: Vec<(u8, usize)> = [4, 8, 4, 12, 4].iter().map(|&b| (0, b)).collect();
        assert_eq!(
            plan_by_size(&items, 12),
            vec![vec![4], vec![3], vec![2, 1], vec![0]]
        );
        // A parameter larger than a bucket gets one of its own.
        assert_eq!(
            plan_by_size(&[(0u8, 40), (0, 4)], 12),
            vec![vec![1], vec![0]]
        );
        // Keys never share a bucket.
        assert_eq!(
            plan_by_size(&[(0u8, 4), (1, 4), (0, 4)], 100),
            vec![vec![2, 0], vec![1]]
        );
        assert!(plan_by_size::<u8>(&[], 12).is_empty());
    }
}
