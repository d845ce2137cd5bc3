//! Cross-batch memory (XBM; Wang, Zhang, Huang, Scott, "Cross-Batch Memory for Embedding
//! Learning", CVPR 2020; official code msight-tech/research-xbm).
//!
//! A ring of the last `xbm.size` rows of the **gathered global batch** — detached, L2-normalised
//! embeddings (after the head's global half, one ring per embedding of the head) and
//! their labels. Every rank enqueues the same gathered rows, so the memory is the same
//! on every rank and a run with it stays world-size invariant.
//!
//! Semantics follow PML's `CrossBatchMemory` (pytorch-metric-learning 2.9), which the
//! parity tests use as the oracle (`tools/make_xbm_fixtures.py`): the step's batch is
//! enqueued **first** (slots `next, next + 1, …` modulo the size), then the batch's rows
//! are the anchors of a loss mined against the memory's valid rows (the first `rows`
//! slots until the ring has wrapped, then all of them); a pair or triplet whose positive
//! is the anchor's own copy in the memory is removed after mining (PML's
//! `remove_self_comparisons`). The official code enqueues and adds the memory loss only
//! from `XBM.START_ITERATION` on (`xbm.start` here), weighted by `XBM.WEIGHT`
//! (`xbm.weight`), on top of the in-batch loss.
use tch::{Kind, Tensor};

use crate::config::XbmConfig;
use crate::error::{Error, Result};

/// The memory: one ring per embedding of the head, one label ring.
#[derive(Debug)]
pub struct CrossBatchMemory {
    size: i64,
    /// `[size, D_i]` per embedding, each row L2-normalised when enqueued (the losses'
    /// first step, done once per row rather than once per step); empty until the first
    /// enqueue.
    rows: Vec<Tensor>,
    /// `[size]` i64.
    labels: Option<Tensor>,
    /// Next slot to write (PML's `queue_idx`).
    next: i64,
    /// Slots that hold a row (`size` once the ring has wrapped).
    filled: i64,
}

/// What a loss reads of the memory at one step: the valid rows of one embedding's ring,
/// their labels, and where the step's own rows sit in it.
#[derive(Debug)]
pub struct MemoryView {
    /// `[M, D]` detached embeddings: L2-normalised rows when `unit`, otherwise a slice of
    /// their columns (Divide and Conquer), which the losses normalise again.
    pub rows: Tensor,
    /// True when `rows` are already unit vectors.
    pub unit: bool,
    /// `[M]` i64.
    pub labels: Tensor,
    /// `[B]` i64: the slot (row of `rows`) holding row b of the step's global batch.
    pub own: Tensor,
}

impl CrossBatchMemory {
    /// An empty memory of `cfg.size` rows.
    pub fn new(cfg: &XbmConfig) -> CrossBatchMemory {
        CrossBatchMemory {
            size: cfg.size as i64,
            rows: Vec::new(),
            labels: None,
            next: 0,
            filled: 0,
        }
    }

    /// Rows the memory holds.
    pub fn len(&self) -> i64 {
        self.filled
    }

    /// True before the first enqueue.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Writes detached, L2-normalised copies of the global batch's `embeddings` (one
    /// `[B, D_i]` per embedding, the same count and widths at every call) and `labels`
    /// `[B]` into the next B slots; returns those slots `[B]` i64.
    ///
    /// ```
    /// use tch::{Kind, Tensor};
    /// let cfg = dml::config::XbmConfig { size: 5, ..Default::default() };
    /// let mut memory = dml::loss::xbm::CrossBatchMemory::new(&cfg);
    /// let e = Tensor::ones([3, 2], (Kind::Double, tch::Device::Cpu));
    /// let slots = memory.enqueue(&[e.shallow_clone()], &Tensor::from_slice(&[0i64, 1, 2]))?;
    /// assert_eq!(Vec::<i64>::try_from(&slots)?, [0, 1, 2]);
    /// let slots = memory.enqueue(&[e], &Tensor::from_slice(&[3i64, 4, 5]))?;
    /// assert_eq!(Vec::<i64>::try_from(&slots)?, [3, 4, 0]);
    /// assert_eq!(memory.len(), 5);
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn enqueue(&mut self, embeddings: &[Tensor], labels: &Tensor) -> Result<Tensor> {
        let b = labels.size().first().copied().unwrap_or(0);
        if b > self.size {
            return Err(Error::Config(format!(
                "xbm.size: is {}, smaller than the global batch ({b})",
                self.size
            )));
        }
        let device = labels.device();
        if self.rows.is_empty() {
            self.rows = embeddings
                .iter()
                .map(|e| Tensor::zeros([self.size, e.size()[1]], (e.kind(), e.device())))
                .collect();
            self.labels = Some(Tensor::zeros([self.size], (Kind::Int64, device)));
        }
        if embeddings.len() != self.rows.len() {
            return Err(Error::Train(format!(
                "cross-batch memory: {} embeddings enqueued into a memory of {}",
                embeddings.len(),
                self.rows.len()
            )));
        }
        let slots = Tensor::arange_start(self.next, self.next + b, (Kind::Int64, device))
            .remainder(self.size);
        tch::no_grad(|| -> Result<()> {
            for (ring, e) in self.rows.iter_mut().zip(embeddings) {
                if e.size() != [b, ring.size()[1]] {
                    return Err(Error::Train(format!(
                        "cross-batch memory: an embedding of shape {:?} into a ring of width {}",
                        e.size(),
                        ring.size()[1]
                    )));
                }
                let value = crate::ops::normalize(&e.detach())
                    .to_kind(ring.kind())
                    .to_device(ring.device());
                let _ = ring.index_put_(&[Some(&slots)], &value, false);
            }
            if let Some(l) = self.labels.as_mut() {
                let _ = l.index_put_(&[Some(&slots)], &labels.to_device(device), false);
            }
            Ok(())
        })?;
        self.next = (self.next + b) % self.size;
        self.filled = (self.filled + b).min(self.size);
        Ok(slots)
    }

    /// The memory of embedding `i` as the losses read it, with `own` the slots
    /// [`enqueue`](Self::enqueue) returned for this step's batch. With `slice = Some((c,
    /// k))` (Divide and Conquer) the rows are restricted to slice `c` of `k` of their
    /// columns, as the step's embeddings are.
    pub fn view(
        &self,
        i: usize,
        own: &Tensor,
        slice: Option<(usize, usize)>,
    ) -> Result<MemoryView> {
        let (ring, labels) = match (self.rows.get(i), &self.labels) {
            (Some(r), Some(l)) => (r, l),
            _ => {
                return Err(Error::Train(format!(
                    "cross-batch memory: no ring for embedding {i} (enqueue first)"
                )))
            }
        };
        let mut rows = ring.narrow(0, 0, self.filled);
        let mut unit = true;
        if let Some((c, k)) = slice.filter(|&(_, k)| k > 1) {
            let width = ring.size()[1] / k as i64;
            rows = rows.narrow(1, c as i64 * width, width);
            unit = false;
        }
        Ok(MemoryView {
            rows,
            unit,
            labels: labels.narrow(0, 0, self.filled),
            own: own.shallow_clone(),
        })
    }

    /// The memory as named tensors for a checkpoint: `labels`, `position` (`[next,
    /// filled, size]` i64) and `rows.<i>` per embedding.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "position".to_string(),
            Tensor::from_slice(&[self.next, self.filled, self.size]),
        )];
        if let Some(l) = &self.labels {
            out.push(("labels".to_string(), l.to_device(tch::Device::Cpu).copy()));
        }
        for (i, r) in self.rows.iter().enumerate() {
            out.push((format!("rows.{i}"), r.to_device(tch::Device::Cpu).copy()));
        }
        out
    }

    /// Restores a [`state`](Self::state) onto `device`; an entry that is missing, of
    /// another memory size, or not of the ring's shape is an error naming it.
    pub fn load_state(&mut self, state: &[(String, Tensor)], device: tch::Device) -> Result<()> {
        let get = |name: &str| state.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let bad = |what: String| Error::Train(format!("cross-batch memory state: {what}"));
        let position = get("position").ok_or_else(|| bad("no `position` entry".into()))?;
        let p = Vec::<i64>::try_from(position).map_err(|e| bad(format!("`position`: {e}")))?;
        let [next, filled, size] = p[..] else {
            return Err(bad(format!(
                "`position` has {} values, expected 3",
                p.len()
            )));
        };
        if size != self.size {
            return Err(bad(format!(
                "the checkpoint's memory has {size} rows, but xbm.size is {}: resume with xbm.size = {size}",
                self.size
            )));
        }
        if !(0..size.max(1)).contains(&next) || !(0..=size).contains(&filled) {
            return Err(bad(format!(
                "`position` [{next}, {filled}, {size}] is outside the ring"
            )));
        }
        let mut rows = Vec::new();
        while let Some(r) = get(&format!("rows.{}", rows.len())) {
            if r.dim() != 2 || r.size()[0] != size {
                return Err(bad(format!(
                    "`rows.{}` has shape {:?}, expected [{size}, D]",
                    rows.len(),
                    r.size()
                )));
            }
            rows.push(r.to_device(device));
        }
        let labels = match get("labels") {
            Some(l) if l.size() == [size] => Some(l.to_device(device)),
            Some(l) => {
                return Err(bad(format!(
                    "`labels` has shape {:?}, expected [{size}]",
                    l.size()
                )))
            }
            None if rows.is_empty() => None,
            None => return Err(bad("no `labels` entry".into())),
        };
        self.rows = rows;
        self.labels = labels;
        self.next = next;
        self.filled = filled;
        Ok(())
    }
}

/// A [`MemoryView`] prepared for a loss over embeddings `emb`: the rows L2-normalised
/// (detached: no gradient reaches the memory) in `emb`'s kind and device.
pub(crate) struct Reference {
    /// `[M, D]` normalised rows.
    pub rows: Tensor,
    /// `[M]` i64.
    pub labels: Tensor,
    /// `[B]` i64: each batch row's own slot.
    pub own: Tensor,
}

impl Reference {
    /// Checks `memory` against `emb` `[B, D]`; normalises its rows unless they are unit
    /// vectors already.
    pub fn new(memory: &MemoryView, emb: &Tensor) -> Result<Reference> {
        let (rs, es) = (memory.rows.size(), emb.size());
        let m = rs.first().copied().unwrap_or(0);
        if rs.len() != 2
            || rs[1] != es[1]
            || memory.labels.size() != [m]
            || memory.own.size() != [es[0]]
        {
            return Err(Error::Input(format!(
                "cross-batch memory: rows {rs:?}, labels {:?} and own slots {:?} do not fit embeddings {es:?}",
                memory.labels.size(),
                memory.own.size()
            )));
        }
        let device = emb.device();
        let rows = memory.rows.to_kind(emb.kind()).to_device(device);
        let rows = match memory.unit {
            true => rows,
            false => tch::no_grad(|| crate::ops::normalize(&rows)),
        };
        Ok(Reference {
            rows,
            labels: memory.labels.to_device(device),
            own: memory.own.to_device(device),
        })
    }

    /// The largest number of memory rows that share an anchor's label, not counting the
    /// anchor's own copy.
    pub fn max_positives(&self, labels: &Tensor) -> i64 {
        if self.labels.numel() == 0 || labels.numel() == 0 {
            return 0;
        }
        let top = self
            .labels
            .max()
            .int64_value(&[])
            .max(labels.max().int64_value(&[]));
        let counts = self.labels.bincount::<Tensor>(None, top + 1);
        counts.index_select(0, labels).max().int64_value(&[]) - 1
    }

    /// True when some anchor has a memory row of another label (PML's miners return
    /// nothing otherwise).
    pub fn any_negative(&self, labels: &Tensor) -> bool {
        if self.labels.numel() == 0 || labels.numel() == 0 {
            return false;
        }
        let (lo, hi) = (
            self.labels.min().int64_value(&[]),
            self.labels.max().int64_value(&[]),
        );
        lo != hi || labels.ne(lo).any().int64_value(&[]) != 0
    }
}
