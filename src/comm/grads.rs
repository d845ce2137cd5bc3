//! Gradient all-reduce in flat buckets: one collective per bucket, not per parameter.
use tch::{Device, Kind, Tensor};

use super::Comm;
use crate::error::{Error, Result};

/// Sums the `.grad()` of every parameter across ranks, in place.
///
/// Gradients are packed, in parameter order, into flat buckets of at most `bucket_bytes`
/// (one bucket per run of equal kind and device; a gradient larger than a bucket is split
/// over several), and each bucket is one [`Comm::all_reduce_sum`]. Parameters without a
/// gradient are skipped; that they are the same parameters on every rank is checked.
/// A no-op when the world is 1.
///
/// ```no_run
/// # fn demo(comm: &dyn dml::comm::Comm, vs: &tch::nn::VarStore) -> dml::Result<()> {
/// dml::comm::all_reduce_grads(comm, &vs.trainable_variables(), 25 << 20)?;
/// # Ok(()) }
/// ```
pub fn all_reduce_grads(comm: &dyn Comm, params: &[Tensor], bucket_bytes: usize) -> Result<()> {
    reduce(comm, params, bucket_bytes, false)
}

/// [`all_reduce_grads`], then divided by the world size: for parameters computed
/// identically on every rank (those after the all-gather, see DESIGN.md).
///
/// ```no_run
/// # fn demo(comm: &dyn dml::comm::Comm, loss_params: &[tch::Tensor]) -> dml::Result<()> {
/// dml::comm::average_grads(comm, loss_params, 25 << 20)?;
/// # Ok(()) }
/// ```
pub fn average_grads(comm: &dyn Comm, params: &[Tensor], bucket_bytes: usize) -> Result<()> {
    reduce(comm, params, bucket_bytes, true)
}

/// A contiguous flat view of one gradient, and the gradient to copy it back into when
/// the gradient itself is not contiguous.
struct Flat {
    flat: Tensor,
    copy_back: Option<Tensor>,
}

fn reduce(comm: &dyn Comm, params: &[Tensor], bucket_bytes: usize, average: bool) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let grads: Vec<Option<Tensor>> = params
        .iter()
        .map(|p| Some(p.grad()).filter(|g| g.defined()))
        .collect();
    check_same_grads(comm, &grads)?;
    // Groups of equal (kind, device), in order of first appearance.
    let mut groups: Vec<((Kind, Device), Vec<Flat>)> = Vec::new();
    for g in grads.into_iter().flatten() {
        let key = (g.kind(), g.device());
        let f = if g.is_contiguous() {
            Flat {
                flat: g.f_view([-1])?,
                copy_back: None,
            }
        } else {
            Flat {
                flat: g.f_contiguous()?.f_view([-1])?,
                copy_back: Some(g),
            }
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(f),
            None => groups.push((key, vec![f])),
        }
    }
    let scale = 1.0 / comm.world() as f64;
    tch::no_grad(|| -> Result<()> {
        for ((kind, _), flats) in groups.iter_mut() {
            let per_bucket = (bucket_bytes / kind.elt_size_in_bytes()).max(1);
            for bucket in plan(flats.iter().map(|f| f.flat.numel()), per_bucket) {
                let mut pieces: Vec<Tensor> = bucket
                    .iter()
                    .map(|&(i, start, len)| flats[i].flat.narrow(0, start as i64, len as i64))
                    .collect();
                let mut packed = Tensor::f_cat(&pieces, 0)?;
                comm.all_reduce_sum(&mut packed)?;
                if average {
                    let _ = packed.f_mul_scalar_(scale)?;
                }
                let mut off = 0i64;
                for (piece, &(_, _, len)) in pieces.iter_mut().zip(&bucket) {
                    piece.f_copy_(&packed.narrow(0, off, len as i64))?;
                    off += len as i64;
                }
            }
            for f in flats.iter_mut() {
                if let Some(g) = &mut f.copy_back {
                    g.f_copy_(&f.flat.f_view(&g.size()[..])?)?;
                }
            }
        }
        Ok(())
    })
}

/// Splits tensors of `sizes` elements, in order, into buckets of at most `per_bucket`
/// elements: each bucket is a list of (tensor index, start, length).
pub(crate) fn plan(
    sizes: impl Iterator<Item = usize>,
    per_bucket: usize,
) -> Vec<Vec<(usize, usize, usize)>> {
    let mut buckets = Vec::new();
    let mut cur = Vec::new();
    let mut room = per_bucket;
    for (i, n) in sizes.enumerate() {
        let mut start = 0;
        while start < n {
            let len = room.min(n - start);
            cur.push((i, start, len));
            start += len;
            room -= len;
            if room == 0 {
                buckets.push(std::mem::take(&mut cur));
                room = per_bucket;
            }
        }
    }
    if !cur.is_empty() {
        buckets.push(cur);
    }
    buckets
}

/// Checks that the same parameters have a gradient, of the same size, on every rank.
pub(super) fn check_same_grads(comm: &dyn Comm, grads: &[Option<Tensor>]) -> Result<()> {
    let mine: Vec<u8> = grads
        .iter()
        .flat_map(|g| match g {
            Some(g) => {
                let mut b = vec![1u8];
                b.extend((g.numel() as u64).to_le_bytes());
                b.extend(format!("{:?}", g.kind()).bytes());
                b
            }
            None => vec![0u8],
        })
        .collect();
    super::check_same_everywhere(
        comm,
        "the set of parameters with a gradient (count, sizes, kinds)",
        &mine,
    )
    .map_err(|e| match e {
        Error::Dist(m) => Error::Dist(format!(
            "{m} ({} parameters here, {} with a gradient)",
            grads.len(),
            grads.iter().flatten().count()
        )),
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_and_packs_in_order() {
        // Sizes 3, 5, 0, 2 with 4 per bucket: [0:0..3, 1:0..1] [1:1..5] [3:0..2].
        let p = plan([3, 5, 0, 2].into_iter(), 4);
        assert_eq!(
            p,
            vec![vec![(0, 0, 3), (1, 0, 1)], vec![(1, 1, 4)], vec![(3, 0, 2)]]
        );
        // One bucket holds everything when it is big enough.
        assert_eq!(
            plan([3, 5].into_iter(), 100),
            vec![vec![(0, 0, 3), (1, 0, 5)]]
        );
        assert!(plan(std::iter::empty(), 4).is_empty());
    }

    #[test]
    fn world_of_one_leaves_grads_untouched() {
        let p = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        (&p * &p).sum(Kind::Float).backward();
        all_reduce_grads(&super::super::local::Local, &[p.shallow_clone()], 4).unwrap();
        average_grads(&super::super::local::Local, &[p.shallow_clone()], 4).unwrap();
        // d(sum p^2)/dp = 2p.
        assert_eq!(
            Vec::<f32>::try_from(&p.grad()).unwrap(),
            vec![2.0, 4.0, 6.0]
        );
    }
}
