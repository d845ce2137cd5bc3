//! Threaded loaders: worker threads turn sampled indices into augmented u8 batches and
//! hand them over through bounded channels, in step order.
//!
//! Steps are dealt round-robin: worker `w` of `n` builds steps `start + w`,
//! `start + w + n`, … and sends them on its own bounded channel; the consumer reads the
//! channels in the same rotation, so batches come out in step order whatever the worker
//! count. Every sample's random numbers come from
//! `SplitMix64::keyed(&[seed, step, position in the global batch])`, so pixels depend
//! neither on workers, ranks nor prefetch depth. Dropping a loader disconnects the
//! channels; workers notice at their next send and stop.
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use tch::{Device, Kind, Tensor};

use crate::data::augment::{random_resized_crop_params, resize_center_crop, resized_crop_into};
use crate::data::format::Dataset;
use crate::data::sampler::{rank_slice, BatchPlan};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// ImageNet channel means (torchvision's `Normalize`).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Settings of the training loader of one rank.
#[derive(Debug, Clone)]
pub struct TrainLoaderOptions {
    /// Side of the square crops.
    pub image_size: usize,
    /// Area fraction range of the random resized crop.
    pub crop_scale: [f64; 2],
    /// Aspect ratio range of the random resized crop.
    pub crop_ratio: [f64; 2],
    /// Mirror each crop with probability ½ (`data.flip`). The crop itself is drawn the
    /// same way either way.
    pub flip: bool,
    /// Colour jitter of each crop after the flip (`data.color_jitter`).
    pub color_jitter: crate::data::color::ColorJitter,
    /// Probability of turning a crop grey after the jitter (`data.grayscale_p`).
    pub grayscale_p: f64,
    /// Worker threads (at least one is used).
    pub workers: usize,
    /// Batches buffered ahead of the consumer, across workers.
    pub prefetch: usize,
    /// Seed of the run.
    pub seed: u64,
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Also normalise each batch in the worker into a CPU tensor of this kind
    /// ([`Batch::images`]), in buffers handed back with [`Loader::recycle`]; `None`:
    /// u8 pixels only (the consumer calls [`Batch::to_tensor`]).
    pub prepare: Option<Kind>,
}

/// A batch's images normalised by the loader worker: `[B, 3, S, S]` on the CPU, what
/// [`Batch::to_tensor`] would return. Cloning copies the tensor.
#[derive(Debug)]
pub struct Images(pub Tensor);

impl Clone for Images {
    fn clone(&self) -> Self {
        Images(self.0.copy())
    }
}

impl PartialEq for Images {
    fn eq(&self, other: &Self) -> bool {
        self.0.size() == other.0.size() && self.0.kind() == other.0.kind() && self.0.equal(&other.0)
    }
}

/// One batch of u8 images with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Training step (or batch number for evaluation).
    pub step: u64,
    /// `[B, S, S, 3]` u8 RGB pixels.
    pub pixels: Vec<u8>,
    /// B labels.
    pub labels: Vec<i64>,
    /// B dataset indices.
    pub indices: Vec<usize>,
    /// S, the image side.
    pub size: usize,
    /// The images already normalised by the worker, when the loader was asked to
    /// ([`TrainLoaderOptions::prepare`]).
    pub images: Option<Images>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The batch as a normalised `[B, 3, S, S]` tensor of `kind` on `device`:
    /// `(v / 255 − mean) / std` with the ImageNet mean and std, evaluated in float32
    /// (float64 for a float64 `kind`) in that order, as torchvision's `ToTensor` +
    /// `Normalize` do.
    ///
    /// On the CPU the pixels are read once and the normalised values written straight
    /// into the new tensor (one pass, no intermediate tensors). On CUDA the u8 pixels are
    /// moved to the device first (4× less traffic than floats) and normalised there.
    ///
    /// ```no_run
    /// # fn f(batch: dml::data::loader::Batch) {
    /// let x = batch.to_tensor(tch::Device::Cpu, tch::Kind::Float);
    /// assert_eq!(x.size(), [batch.len() as i64, 3, batch.size as i64, batch.size as i64]);
    /// # }
    /// ```
    pub fn to_tensor(&self, device: Device, kind: Kind) -> Tensor {
        if device == Device::Cpu {
            if let Some(Images(x)) = self.images.as_ref().filter(|i| i.0.kind() == kind) {
                return x.shallow_clone();
            }
            return self.prepare(kind, None).0;
        }
        let (b, s) = (self.len() as i64, self.size as i64);
        let math = math_kind(kind);
        let x = Tensor::from_slice(&self.pixels)
            .view([b, s, s, 3])
            .to_device(device)
            .permute([0, 3, 1, 2])
            .to_kind(math);
        let mean = Tensor::from_slice(&IMAGENET_MEAN)
            .to_kind(math)
            .to_device(device)
            .view([1, 3, 1, 1]);
        let std = Tensor::from_slice(&IMAGENET_STD)
            .to_kind(math)
            .to_device(device)
            .view([1, 3, 1, 1]);
        ((x / 255.0 - mean) / std).to_kind(kind).contiguous()
    }
}

/// The kind normalisation computes in for a tensor of `kind` (float32 unless float64).
fn math_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    }
}

impl Batch {
    /// The batch normalised on the CPU as [`Batch::to_tensor`] would (bit for bit), in a
    /// buffer from `buffers` when one of the right shape and kind is there.
    fn prepare(&self, kind: Kind, buffers: Option<&Receiver<Tensor>>) -> Images {
        let s = self.size as i64;
        let shape = [self.len() as i64, 3, s, s];
        let math = math_kind(kind);
        let mut x = buffers
            .and_then(|r| r.try_recv().ok())
            .filter(|t| t.size() == shape && t.kind() == math && t.is_contiguous())
            .unwrap_or_else(|| Tensor::empty(shape, (math, Device::Cpu)));
        self.normalize(&mut x);
        Images(if kind == math { x } else { x.to_kind(kind) })
    }

    /// Writes the normalised pixels into `x`, a contiguous `[B, 3, S, S]` CPU tensor of
    /// float32 or float64 (anything else is left as it is).
    fn normalize(&self, x: &mut Tensor) {
        let hw = self.size * self.size;
        if x.kind() == Kind::Double {
            let out = crate::sys::cpu_data_mut::<f64>(x);
            normalize_into(&self.pixels, hw, IMAGENET_MEAN, IMAGENET_STD, out);
        } else {
            let out = crate::sys::cpu_data_mut::<f32>(x);
            let (mean, std) = (
                IMAGENET_MEAN.map(|v| v as f32),
                IMAGENET_STD.map(|v| v as f32),
            );
            normalize_into(&self.pixels, hw, mean, std, out);
        }
    }
}

/// Writes `(v / 255 − mean[c]) / std[c]` of HWC u8 `pixels` (images of `hw` pixels)
/// into `out` as planar `[B, 3, H, W]`, with torch's three roundings in `T` per value.
/// `out` is the memory of a contiguous CPU tensor of kind `T` ([`Batch::prepare`] makes
/// sure), so it is never `None` in practice; `None` writes nothing.
fn normalize_into<T>(pixels: &[u8], hw: usize, mean: [T; 3], std: [T; 3], out: Option<&mut [T]>)
where
    T: Copy + From<u8> + std::ops::Sub<Output = T> + std::ops::Div<Output = T>,
{
    let (Some(out), true) = (out, hw > 0) else {
        return;
    };
    let scale = T::from(255u8);
    for (img, dst) in pixels
        .chunks_exact(3 * hw)
        .zip(out.chunks_exact_mut(3 * hw))
    {
        for (c, plane) in dst.chunks_exact_mut(hw).enumerate() {
            for (d, px) in plane.iter_mut().zip(img[c..].iter().step_by(3)) {
                *d = (T::from(*px) / scale - mean[c]) / std[c];
            }
        }
    }
}

/// Worker threads building batches `0..jobs` with `make`, read back in order.
struct Pool {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    next: u64,
    jobs: u64,
}

impl Pool {
    fn new<F>(jobs: u64, workers: usize, prefetch: usize, make: F) -> Pool
    where
        F: Fn(u64) -> Result<Batch> + Send + Sync + 'static,
    {
        let workers = workers.max(1).min(jobs.max(1) as usize);
        let depth = prefetch.max(1).div_ceil(workers);
        let make = Arc::new(make);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = bounded(depth);
            receivers.push(rx);
            let make = make.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("dml-loader-{w}"))
                .spawn(move || work(w as u64, workers as u64, jobs, make.as_ref(), tx));
            // A failed spawn leaves the receiver disconnected: try_next reports it.
            if let Ok(h) = spawned {
                handles.push(h);
            }
        }
        Pool {
            receivers,
            handles,
            next: 0,
            jobs,
        }
    }

    fn try_next(&mut self) -> Result<Option<Batch>> {
        if self.next >= self.jobs {
            return Ok(None);
        }
        let w = (self.next % self.receivers.len() as u64) as usize;
        let batch = self.receivers[w].recv().map_err(|_| {
            Error::Train(format!(
                "loader worker {w} stopped before batch {} (could not start a thread?)",
                self.next
            ))
        })??;
        self.next += 1;
        Ok(Some(batch))
    }
}

fn work<F>(w: u64, workers: u64, jobs: u64, make: &F, tx: Sender<Result<Batch>>)
where
    F: Fn(u64) -> Result<Batch>,
{
    let mut job = w;
    while job < jobs {
        let out = catch_unwind(AssertUnwindSafe(|| make(job))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Error::Train(format!(
                "loader worker {w} panicked on batch {job}: {msg}"
            )))
        });
        let failed = out.is_err();
        if tx.send(out).is_err() || failed {
            return;
        }
        job += workers;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Disconnect first so that workers blocked on a full channel return.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A loader: batches built by worker threads and handed over in order, for training
/// ([`Loader::train`]) or evaluation ([`Loader::eval`]).
///
/// Training: this rank's slice of the global N×K batch of each step in `start..end`,
/// randomly resized, cropped and flipped:
///
/// ```no_run
/// use std::sync::Arc;
/// use dml::data::{format::Dataset, sampler::Sampler, loader::{Loader, TrainLoaderOptions}};
/// let ds = Arc::new(Dataset::open("train.dmlds".as_ref())?);
/// let sampler = Sampler::new(ds.labels(), 8, 4, 0)?;
/// let opts = TrainLoaderOptions { image_size: 224, crop_scale: [0.16, 1.0], crop_ratio: [0.75, 4.0 / 3.0], flip: true,
///     color_jitter: Default::default(), grayscale_p: 0.0,
///     workers: 4, prefetch: 4, seed: 0, rank: 0, world: 1, prepare: None };
/// let mut loader = Loader::train(ds, sampler, opts, 0, 100)?;
/// while let Some(batch) = loader.try_next()? {
///     let _x = batch.to_tensor(tch::Device::Cpu, tch::Kind::Float);
/// }
/// # Ok::<(), dml::Error>(())
/// ```
pub struct Loader {
    pool: Pool,
    /// Buffers of normalised images handed back for reuse (training with `prepare`).
    recycled: Option<Sender<Tensor>>,
}

impl Loader {
    /// The training loader: starts the workers for steps `start_step..end_step` of `sampler`'s plan (the
    /// N×K [`crate::data::sampler::Sampler`], or Divide and Conquer's cluster sampler).
    ///
    /// Fails if the world size does not divide N·K, or on an empty crop size or range.
    pub fn train(
        ds: Arc<Dataset>,
        sampler: impl BatchPlan,
        opts: TrainLoaderOptions,
        start_step: u64,
        end_step: u64,
    ) -> Result<Loader> {
        let slice = rank_slice(sampler.batch_size(), opts.rank, opts.world)?;
        let jobs = end_step.saturating_sub(start_step);
        let (workers, prefetch) = (opts.workers, opts.prefetch);
        // Room for every buffer in flight: the queued batches, one per worker being
        // built, and the consumer's.
        let (recycled, buffers) = match opts.prepare {
            Some(_) => {
                let (tx, rx) = bounded::<Tensor>(prefetch + workers + 2);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let make = move |job: u64| {
            let mut batch = train_batch(&ds, &sampler, &opts, &slice, start_step + job)?;
            if let Some(kind) = opts.prepare {
                batch.images = Some(batch.prepare(kind, buffers.as_ref()));
            }
            Ok(batch)
        };
        Ok(Loader {
            pool: Pool::new(jobs, workers, prefetch, make),
            recycled,
        })
    }

    /// The evaluation loader: images `indices` in order, `batch_size` at a time (the
    /// last batch may be shorter), with the test transform (shorter side → `resize`,
    /// centre `image_size` crop), built by `workers` threads.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// let ds = Arc::new(dml::data::format::Dataset::open("test.dmlds".as_ref())?);
    /// let all: Vec<usize> = (0..ds.len()).collect();
    /// let mut loader = dml::data::loader::Loader::eval(ds, all, 256, 224, 256, 4);
    /// while let Some(batch) = loader.try_next()? {
    ///     println!("batch {} has {} images", batch.step, batch.len());
    /// }
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn eval(
        ds: Arc<Dataset>,
        indices: Vec<usize>,
        batch_size: usize,
        image_size: usize,
        resize: usize,
        workers: usize,
    ) -> Loader {
        let batch_size = batch_size.max(1);
        let jobs = indices.len().div_ceil(batch_size) as u64;
        let make = move |job: u64| {
            let from = job as usize * batch_size;
            let part = &indices[from..(from + batch_size).min(indices.len())];
            eval_batch(&ds, part, image_size, resize, job)
        };
        Loader {
            pool: Pool::new(jobs, workers, workers.max(1) * 2, make),
            recycled: None,
        }
    }

    /// The next batch, `None` after the last; a worker's failure is an error.
    pub fn try_next(&mut self) -> Result<Option<Batch>> {
        self.pool.try_next()
    }

    /// Hands `batch`'s normalised images back to the workers, which write a later batch
    /// into the same memory (no allocation, no page faults). Call it only once nothing
    /// holds the images any more (after the step's backward and optimiser update: the
    /// autograd graph that saved them is gone). Without `prepare`, or when the workers
    /// hold enough buffers, the images are simply dropped.
    pub fn recycle(&self, batch: Batch) {
        if let (Some(tx), Some(Images(t))) = (&self.recycled, batch.images) {
            let _ = tx.try_send(t);
        }
    }
}

/// Yields batches until the end.
///
/// # Panics
/// If a worker fails; use [`Loader::try_next`] to get the error instead.
impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        match self.try_next() {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }
}

/// This rank's part of step `step`'s global batch, augmented.
fn train_batch(
    ds: &Dataset,
    sampler: &impl BatchPlan,
    opts: &TrainLoaderOptions,
    slice: &Range<usize>,
    step: u64,
) -> Result<Batch> {
    let global = sampler.global_batch(step);
    let s = opts.image_size;
    let per = s * s * 3;
    let indices: Vec<usize> = global[slice.clone()].to_vec();
    let mut pixels = vec![0u8; indices.len() * per];
    for (i, (&idx, out)) in indices.iter().zip(pixels.chunks_exact_mut(per)).enumerate() {
        let img = ds.checked_image(idx)?;
        let position = (slice.start + i) as u64;
        let mut rng = SplitMix64::keyed(&[opts.seed, step, position]);
        let mut p = random_resized_crop_params(
            &mut rng,
            img.height,
            img.width,
            opts.crop_scale,
            opts.crop_ratio,
        );
        p.flip &= opts.flip;
        resized_crop_into(img.pixels, img.height, img.width, &p, s, out);
        // Drawn after the crop, so that turning colour augmentation on or off leaves
        // the crops as they were.
        if !opts.color_jitter.is_off() {
            crate::data::color::apply_jitter(out, &opts.color_jitter.draw(&mut rng));
        }
        if opts.grayscale_p > 0.0 && rng.next_f64() < opts.grayscale_p {
            crate::data::color::to_grayscale(out);
        }
    }
    let labels = ds.labels();
    Ok(Batch {
        step,
        labels: indices.iter().map(|&i| labels[i] as i64).collect(),
        indices,
        pixels,
        size: s,
        images: None,
    })
}

/// The test-transformed images `indices` as the batch of job `step`.
fn eval_batch(
    ds: &Dataset,
    indices: &[usize],
    size: usize,
    resize: usize,
    step: u64,
) -> Result<Batch> {
    let mut pixels = Vec::with_capacity(indices.len() * size * size * 3);
    for &idx in indices {
        let img = ds.checked_image(idx)?;
        pixels.extend(resize_center_crop(
            img.pixels, img.height, img.width, resize, size,
        ));
    }
    let labels = ds.labels();
    Ok(Batch {
        step,
        pixels,
        labels: indices.iter().map(|&i| labels[i] as i64).collect(),
        indices: indices.to_vec(),
        size,
        images: None,
    })
}
