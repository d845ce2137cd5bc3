//! The small header every rank exchanges before a collective, so that a mismatch between
//! ranks (another collective, another shape, kind or root) is an error on every rank
//! instead of a hang, a truncation or silent garbage.
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Most dimensions a header spells out; longer shapes are compared through their hash.
const DIMS: usize = 8;
/// Length of a header in i64.
pub(crate) const LEN: usize = 5 + DIMS;

/// Which collective a rank is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    AllGather = 1,
    AllReduceSum = 2,
    Broadcast = 3,
    Barrier = 4,
}

impl Op {
    fn name(code: i64) -> &'static str {
        match code {
            1 => "all_gather",
            2 => "all_reduce_sum",
            3 => "broadcast",
            4 => "barrier",
            _ => "an unknown collective",
        }
    }
}

/// Every tch kind, in a fixed order: a header carries the index.
const KINDS: [Kind; 20] = [
    Kind::Uint8,
    Kind::Int8,
    Kind::Int16,
    Kind::Int,
    Kind::Int64,
    Kind::Half,
    Kind::Float,
    Kind::Double,
    Kind::ComplexHalf,
    Kind::ComplexFloat,
    Kind::ComplexDouble,
    Kind::Bool,
    Kind::QInt8,
    Kind::QUInt8,
    Kind::QInt32,
    Kind::BFloat16,
    Kind::Float8e5m2,
    Kind::Float8e4m3fn,
    Kind::Float8e5m2fnuz,
    Kind::Float8e4m3fnuz,
];

/// The kinds the collectives move.
pub(crate) const SUPPORTED: [Kind; 4] = [Kind::Float, Kind::Double, Kind::Int64, Kind::Uint8];
/// The kinds the NCCL backend moves on CUDA.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub(crate) const SUPPORTED_CUDA: [Kind; 5] = [
    Kind::Float,
    Kind::Double,
    Kind::BFloat16,
    Kind::Int64,
    Kind::Uint8,
];
/// The device code of a CUDA tensor that is not on the rank's own GPU (set by the NCCL
/// backend in place of the device index).
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub(crate) const OTHER_GPU: i64 = -3;

/// Where the tensors of a collective must live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mem {
    /// Host memory (the mpi backend).
    Host,
    /// Any device, the same on every rank.
    Any,
    /// Each rank's own GPU (the nccl backend): the device index may differ between ranks.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    Cuda,
}

fn kind_code(k: Kind) -> i64 {
    KINDS.iter().position(|&x| x == k).map_or(-1, |i| i as i64)
}

fn kind_name(code: i64) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|i| KINDS.get(i))
        .map_or_else(|| "?".into(), |k| format!("{k:?}"))
}

fn device_code(d: Device) -> i64 {
    match d {
        Device::Cpu => -1,
        Device::Cuda(i) => i as i64,
        _ => -2,
    }
}

fn device_name(code: i64) -> String {
    match code {
        -1 => "cpu".into(),
        OTHER_GPU => "a GPU other than the rank's own (cuda:<node-local rank>)".into(),
        c if c >= 0 => format!("cuda:{c}"),
        _ => "another device".into(),
    }
}

/// The header of `op` on `t` (none for a barrier); `arg` is the root of a broadcast.
pub(crate) fn encode(op: Op, t: Option<&Tensor>, arg: i64) -> [i64; LEN] {
    let mut h = [0i64; LEN];
    h[0] = op as i64;
    h[4] = arg;
    if let Some(t) = t {
        let size = t.size();
        h[1] = kind_code(t.kind());
        h[2] = device_code(t.device());
        h[3] = size.len() as i64;
        for (i, &d) in size.iter().take(DIMS).enumerate() {
            h[5 + i] = d;
        }
        if size.len() > DIMS {
            // Fold the dimensions beyond DIMS into the last slot.
            let bytes: Vec<u8> = size[DIMS - 1..]
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect();
            h[LEN - 1] = super::fnv1a64(&bytes) as i64;
        }
    }
    h
}

fn shape_of(h: &[i64]) -> String {
    let n = h[3] as usize;
    if n > DIMS {
        format!("{:?} (+{} more dims)", &h[5..5 + DIMS - 1], n - DIMS + 1)
    } else {
        format!("{:?}", &h[5..5 + n])
    }
}

/// Checks the headers of all ranks (`all`: `world` headers back to back) for collective
/// `op`; `cpu_only` for backends that move host memory.
pub(crate) fn check(op: Op, all: &[i64], cpu_only: bool) -> Result<()> {
    check_on(op, all, if cpu_only { Mem::Host } else { Mem::Any })
}

/// [`check`] with the rule `mem` for where the tensors live.
pub(crate) fn check_on(op: Op, all: &[i64], mem: Mem) -> Result<()> {
    let world = all.len() / LEN;
    let h = |r: usize| &all[r * LEN..(r + 1) * LEN];
    let here = Op::name(op as i64);
    let ops: Vec<i64> = (0..world).map(|r| h(r)[0]).collect();
    if ops.iter().any(|&o| o != op as i64) {
        let who: Vec<String> = ops
            .iter()
            .enumerate()
            .map(|(r, &o)| format!("rank {r} in {}", Op::name(o)))
            .collect();
        return Err(Error::Dist(format!(
            "ranks entered different collectives ({}): every rank must call the same \
             collectives in the same order",
            who.join(", ")
        )));
    }
    if op == Op::Barrier {
        return Ok(());
    }
    let kinds: &[Kind] = if mem == Mem::Cuda {
        &SUPPORTED_CUDA
    } else {
        &SUPPORTED
    };
    for r in 0..world {
        let k = h(r)[1];
        if !kinds.iter().any(|&s| kind_code(s) == k) {
            return Err(Error::Dist(format!(
                "{here}: rank {r} passed a tensor of kind {}; supported kinds are {kinds:?}",
                kind_name(k)
            )));
        }
        if mem == Mem::Cuda && h(r)[2] < 0 {
            return Err(Error::Dist(format!(
                "{here}: rank {r} passed a tensor on {}; the nccl backend moves tensors on \
                 each rank's own GPU, cuda:<node-local rank> (CPU tensors go through MPI, \
                 but only when every rank passes a CPU tensor)",
                device_name(h(r)[2])
            )));
        }
        if mem == Mem::Host && h(r)[2] != -1 {
            return Err(Error::Dist(format!(
                "{here}: rank {r} passed a tensor on {}; the mpi backend moves CPU tensors \
                 (move it with .to(Device::Cpu), or use the nccl backend for CUDA)",
                device_name(h(r)[2])
            )));
        }
    }
    // On CUDA each rank has its own GPU: compare all but the device index.
    let differs = |r: usize| {
        if mem == Mem::Cuda {
            h(r)[1] != h(0)[1] || h(r)[3..] != h(0)[3..]
        } else {
            h(r)[1..] != h(0)[1..]
        }
    };
    if (1..world).any(differs) {
        let each: Vec<String> = (0..world)
            .map(|r| {
                let mut s = format!("rank {r}: {} {}", kind_name(h(r)[1]), shape_of(h(r)));
                if op == Op::Broadcast {
                    s += &format!(" root {}", h(r)[4]);
                }
                s
            })
            .collect();
        let what = if op == Op::Broadcast {
            "the same kind, shape and root"
        } else {
            "tensors of the same kind and shape"
        };
        return Err(Error::Dist(format!(
            "{here} needs {what} on every rank, got {}",
            each.join("; ")
        )));
    }
    if op == Op::Broadcast && !(0..world as i64).contains(&h(0)[4]) {
        return Err(Error::Dist(format!(
            "broadcast from rank {} in a world of {world}",
            h(0)[4]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(hs: &[[i64; LEN]]) -> Vec<i64> {
        hs.iter().flatten().copied().collect()
    }

    #[test]
    fn equal_headers_pass_and_differences_are_named() {
        let a = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        let c = Tensor::zeros([3, 4], (Kind::Double, Device::Cpu));
        let ha = encode(Op::AllGather, Some(&a), 0);
        check(Op::AllGather, &cat(&[ha, ha, ha]), true).unwrap();
        let e = check(
            Op::AllGather,
            &cat(&[ha, encode(Op::AllGather, Some(&b), 0)]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rank 0: Float [3, 4]") && e.contains("rank 1: Float [2, 4]"),
            "{e}"
        );
        let e = check(
            Op::AllGather,
            &cat(&[ha, encode(Op::AllGather, Some(&c), 0)]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rank 1: Double [3, 4]"), "{e}");
        let e = check(
            Op::AllGather,
            &cat(&[ha, encode(Op::Barrier, None, 0)]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rank 0 in all_gather, rank 1 in barrier"), "{e}");
    }

    #[test]
    fn unsupported_kind_and_root_are_errors() {
        let h = encode(
            Op::AllReduceSum,
            Some(&Tensor::zeros([2], (Kind::Half, Device::Cpu))),
            0,
        );
        let e = check(Op::AllReduceSum, &cat(&[h, h]), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 0 passed a tensor of kind Half"), "{e}");
        let t = Tensor::zeros([2], (Kind::Int64, Device::Cpu));
        let h = encode(Op::Broadcast, Some(&t), 2);
        let e = check(Op::Broadcast, &cat(&[h, h]), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("broadcast from rank 2 in a world of 2"), "{e}");
        let e = check(
            Op::Broadcast,
            &cat(&[h, encode(Op::Broadcast, Some(&t), 0)]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("root 2") && e.contains("root 0"), "{e}");
    }

    #[test]
    fn cuda_rule_allows_bf16_and_per_rank_gpus_but_not_cpu() {
        // Headers as the nccl backend sends them: rank r's tensor on cuda:r.
        let on = |kind: Kind, shape: &[i64], gpu: i64| {
            let mut h = encode(
                Op::AllReduceSum,
                Some(&Tensor::zeros(shape, (kind, Device::Cpu))),
                0,
            );
            h[2] = gpu;
            h
        };
        let ok = cat(&[on(Kind::BFloat16, &[4], 0), on(Kind::BFloat16, &[4], 1)]);
        check_on(Op::AllReduceSum, &ok, Mem::Cuda).unwrap();
        // bf16 is not an mpi kind; cuda:0 and cuda:1 differ for the device-exact rule.
        assert!(check(Op::AllReduceSum, &ok, false).is_err());
        let e = check_on(
            Op::AllReduceSum,
            &cat(&[on(Kind::Float, &[4], 0), on(Kind::Float, &[4], -1)]),
            Mem::Cuda,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rank 1 passed a tensor on cpu"), "{e}");
        let e = check_on(
            Op::AllReduceSum,
            &cat(&[on(Kind::Float, &[4], OTHER_GPU), on(Kind::Float, &[4], 1)]),
            Mem::Cuda,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rank 0 passed a tensor on a GPU other than"),
            "{e}"
        );
        let e = check_on(
            Op::AllReduceSum,
            &cat(&[on(Kind::Float, &[4], 0), on(Kind::Float, &[5], 1)]),
            Mem::Cuda,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rank 0: Float [4]") && e.contains("rank 1: Float [5]"),
            "{e}"
        );
        let e = check_on(
            Op::AllReduceSum,
            &cat(&[on(Kind::Half, &[4], 0), on(Kind::Half, &[4], 1)]),
            Mem::Cuda,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kind Half"), "{e}");
    }

    #[test]
    fn long_shapes_are_compared_in_full() {
        let s1 = [1i64, 1, 1, 1, 1, 1, 1, 2, 3];
        let s2 = [1i64, 1, 1, 1, 1, 1, 1, 3, 2];
        let t1 = Tensor::zeros(s1, (Kind::Uint8, Device::Cpu));
        let t2 = Tensor::zeros(s2, (Kind::Uint8, Device::Cpu));
        let h1 = encode(Op::AllGather, Some(&t1), 0);
        check(Op::AllGather, &cat(&[h1, h1]), true).unwrap();
        assert!(check(
            Op::AllGather,
            &cat(&[h1, encode(Op::AllGather, Some(&t2), 0)]),
            true
        )
        .is_err());
    }
}
