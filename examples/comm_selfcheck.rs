//! Checks the communicator's collectives across ranks:
//! `mpirun -np W comm_selfcheck [MODE] [--backend auto|mpi|nccl]`.
//!
//! MODE `check` (default): all_gather / all_reduce_sum / broadcast / barrier values for
//! f32, f64, i64 and u8, bucketed gradient all-reduce against per-parameter sums (odd
//! sizes, tiny buckets, mixed kinds, a non-contiguous gradient), average_grads,
//! check_same_everywhere and the shape-mismatch error. Exits non-zero on any mismatch.
//! Prints `PASS` on every rank when all checks pass, `FAIL` and the reason otherwise.
//!
//! `--backend nccl` (a dml built with `--features nccl`, one GPU per rank): the same
//! checks on CUDA tensors of GPU `cuda:<node-local rank>` (plus bf16), after the CPU
//! checks, which the nccl backend routes through MPI.
//!
//! Failure modes, for tests/comm.rs: rank 1 dies in the middle of a loop of
//! all-reduces while the others wait in the collective. `kill`: SIGKILL; `abort`:
//! `std::process::abort()`; `exit`: `process::exit(3)` without finalising MPI; `error`:
//! an error on rank 1, handled like the `dml` binary does (`comm.abort(1)`).
use dml::comm::{self, Comm};
use dml::config::Backend;
use tch::{Device, Kind, Tensor};

type Check = Result<(), String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// Equal shape, kind and values (compared on the CPU); `a` on `dev`.
fn same(a: &Tensor, b: &Tensor, what: &str) -> Check {
    let (a, b) = (a.to(Device::Cpu), b.to(Device::Cpu));
    ensure(
        a.size() == b.size() && a.kind() == b.kind() && a.equal(&b),
        || format!("{what}: got {a:?} {a}, expected {b:?} {b}"),
    )
}

/// `same`, and `a` lives on `dev`.
fn same_on(a: &Tensor, b: &Tensor, dev: Device, what: &str) -> Check {
    ensure(a.device() == dev, || {
        format!("{what}: result on {:?}, expected {dev:?}", a.device())
    })?;
    same(a, b, what)
}

/// Rank r's tensor for the value checks: [2, 3] of `base + 10 r`.
fn ranked(kind: Kind, r: usize) -> Tensor {
    (Tensor::arange(6, (Kind::Int64, Device::Cpu)) + 10 * r as i64)
        .view([2, 3])
        .to_kind(kind)
}

fn collectives(comm: &dyn Comm, dev: Device) -> Check {
    let (r, w) = (comm.rank(), comm.world());
    let mut kinds = vec![Kind::Float, Kind::Double, Kind::Int64, Kind::Uint8];
    if dev.is_cuda() {
        kinds.push(Kind::BFloat16); // small integers: exact in bf16
    }
    for kind in kinds {
        // all_gather: rank blocks in rank order.
        let expected = Tensor::cat(&(0..w).map(|q| ranked(kind, q)).collect::<Vec<_>>(), 0);
        let got = comm
            .all_gather(&ranked(kind, r).to(dev))
            .map_err(|e| e.to_string())?;
        same_on(&got, &expected, dev, &format!("all_gather {kind:?}"))?;
        // The same on a non-contiguous input (columns 0..3 of [2, 6]).
        let wide = Tensor::cat(&[ranked(kind, r), ranked(kind, r)], 1).to(dev);
        let got = comm
            .all_gather(&wide.narrow(1, 0, 3))
            .map_err(|e| e.to_string())?;
        same_on(
            &got,
            &expected,
            dev,
            &format!("all_gather {kind:?} of a view"),
        )?;
        // all_reduce_sum: sum over q of (base + 10 q) = W base + 10 W(W-1)/2.
        let mut t = ranked(kind, r).to(dev);
        comm.all_reduce_sum(&mut t).map_err(|e| e.to_string())?;
        let sum = (0..w).fold(
            Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu)),
            |acc, q| acc + ranked(Kind::Int64, q),
        );
        same_on(
            &t,
            &sum.to_kind(kind),
            dev,
            &format!("all_reduce_sum {kind:?}"),
        )?;
        // In place on a non-contiguous tensor: the [3, 2] transpose of rank r's tensor.
        let mut t = ranked(kind, r).to(dev).tr();
        comm.all_reduce_sum(&mut t).map_err(|e| e.to_string())?;
        same_on(
            &t,
            &sum.to_kind(kind).tr(),
            dev,
            &format!("all_reduce_sum {kind:?} of a transposed tensor"),
        )?;
        // broadcast from the last rank and from rank 0.
        for root in [w - 1, 0] {
            let mut t = ranked(kind, r).to(dev);
            comm.broadcast(&mut t, root).map_err(|e| e.to_string())?;
            same_on(
                &t,
                &ranked(kind, root),
                dev,
                &format!("broadcast {kind:?} from {root}"),
            )?;
        }
    }
    // A scalar gathers into a vector; an empty tensor into an empty one.
    let got = comm
        .all_gather(&Tensor::from(r as f64).to(dev))
        .map_err(|e| e.to_string())?;
    let ranks: Vec<f64> = (0..w).map(|q| q as f64).collect();
    same_on(
        &got,
        &Tensor::from_slice(&ranks),
        dev,
        "all_gather of a scalar",
    )?;
    let got = comm
        .all_gather(&Tensor::zeros([0, 4], (Kind::Float, dev)))
        .map_err(|e| e.to_string())?;
    ensure(got.size() == [0, 4], || {
        format!("all_gather of [0, 4]: {:?}", got.size())
    })?;
    comm.barrier().map_err(|e| e.to_string())?;
    ensure(
        comm.local_world() >= 1 && comm.local_rank() < comm.local_world(),
        || format!("local rank {} of {}", comm.local_rank(), comm.local_world()),
    )
}

/// Parameters of odd sizes and two kinds; the gradient of parameter i on rank r is
/// `g(i, r)`, small integers and halves, so that every sum is exact.
fn params_with_grads(r: usize, dev: Device) -> Vec<Tensor> {
    let shapes: [&[i64]; 7] = [&[7], &[3, 5], &[1], &[13, 3], &[0], &[4], &[2, 2, 3]];
    let mut ps = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let kind = if i == 3 { Kind::Double } else { Kind::Float };
        let p = if i == 1 {
            // A transposed (non-contiguous) leaf: its gradient is non-contiguous too.
            Tensor::zeros([5, 3], (kind, dev))
                .tr()
                .detach()
                .set_requires_grad(true)
        } else {
            Tensor::zeros(*shape, (kind, dev)).set_requires_grad(true)
        };
        ps.push(p);
    }
    for (i, p) in ps.iter().enumerate() {
        if i == 5 {
            continue; // no gradient: skipped, on every rank
        }
        let n = p.numel() as i64;
        let g = ((Tensor::arange(n, (Kind::Int64, Device::Cpu)) * (i as i64 + 1))
            .remainder(17)
            .to_kind(Kind::Double)
            * 0.5
            + r as f64)
            .to_kind(p.kind())
            .to(dev);
        (p * g.view(&p.size()[..])).sum(p.kind()).backward();
    }
    ps
}

fn grads(comm: &dyn Comm, dev: Device) -> Check {
    let (r, w) = (comm.rank(), comm.world());
    // Per-parameter sums, one collective each: the reference.
    let reference: Vec<Option<Tensor>> = params_with_grads(r, dev)
        .iter()
        .map(|p| {
            let g = p.grad();
            g.defined().then(|| {
                let mut c = g.copy();
                comm.all_reduce_sum(&mut c).map(|_| c)
            })
        })
        .map(|o| o.transpose())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    ensure(!params_with_grads(r, dev)[1].grad().is_contiguous(), || {
        "the transposed parameter's gradient should be non-contiguous".into()
    })?;
    for bucket in [1usize, 12, 100, 25 << 20] {
        for average in [false, true] {
            let ps = params_with_grads(r, dev);
            let res = if average {
                comm::average_grads(comm, &ps, bucket)
            } else {
                comm::all_reduce_grads(comm, &ps, bucket)
            };
            res.map_err(|e| e.to_string())?;
            for (i, (p, want)) in ps.iter().zip(&reference).enumerate() {
                let what = format!("param {i}, bucket {bucket} B, average {average}");
                match want {
                    None => ensure(!p.grad().defined(), || format!("{what}: grad appeared"))?,
                    Some(want) if average => {
                        same(&p.grad(), &(want / w as f64).to_kind(want.kind()), &what)?
                    }
                    Some(want) => same(&p.grad(), want, &what)?,
                }
            }
        }
    }
    Ok(())
}

fn mismatches(comm: &dyn Comm, dev: Device) -> Check {
    let r = comm.rank();
    comm::check_same_everywhere(comm, "a constant", b"same on every rank")
        .map_err(|e| e.to_string())?;
    if comm.world() < 2 {
        return Ok(());
    }
    let e = comm::check_same_everywhere(comm, "the rank's name", format!("rank {r}").as_bytes())
        .err()
        .ok_or("check_same_everywhere missed a difference")?
        .to_string();
    let others: Vec<usize> = (1..comm.world()).collect();
    ensure(
        e.contains("the rank's name") && e.contains(&format!("{others:?}")),
        || format!("check_same_everywhere's message: {e}"),
    )?;
    // Different shapes in all_gather: an error on every rank, naming both shapes.
    let t = Tensor::zeros([2 + r as i64, 3], (Kind::Float, dev));
    let e = comm
        .all_gather(&t)
        .err()
        .ok_or("all_gather accepted unequal shapes")?
        .to_string();
    ensure(
        e.contains("rank 0: Float [2, 3]") && e.contains("rank 1: Float [3, 3]"),
        || format!("all_gather's shape message: {e}"),
    )?;
    // The communicator still works after a detected mismatch.
    comm.barrier().map_err(|e| e.to_string())
}

fn die(comm: &dyn Comm, how: &str) -> ! {
    for i in 0..1000 {
        if comm.rank() == 1 && i == 3 {
            eprintln!("comm_selfcheck: rank 1 dies ({how}) at iteration {i}");
            match how {
                "kill" => {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &std::process::id().to_string()])
                        .status();
                    std::thread::sleep(std::time::Duration::from_secs(60));
                }
                "abort" => std::process::abort(),
                "exit" => std::process::exit(3),
                _ => {
                    let e = dml::Error::Dist("injected failure".into());
                    eprintln!("error on rank {} of {}: {e}", comm.rank(), comm.world());
                    comm.abort(1);
                }
            }
        }
        let mut t = Tensor::ones([1000], (Kind::Float, Device::Cpu));
        if let Err(e) = comm.all_reduce_sum(&mut t) {
            eprintln!("error on rank {}: {e}", comm.rank());
            comm.abort(1);
        }
    }
    eprintln!(
        "comm_selfcheck: rank {} finished the loop; the job should have died",
        comm.rank()
    );
    std::process::exit(0)
}

/// MODE and `--backend`, from the command line.
fn args() -> Result<(String, Backend), String> {
    let mut mode = "check".to_string();
    let mut backend = Backend::Auto;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--backend" {
            backend = match it.next().as_deref() {
                Some("auto") => Backend::Auto,
                Some("local") => Backend::Local,
                Some("mpi") => Backend::Mpi,
                Some("nccl") => Backend::Nccl,
                other => return Err(format!("--backend auto|local|mpi|nccl, got {other:?}")),
            };
        } else {
            mode = a;
        }
    }
    Ok((mode, backend))
}

fn main() {
    let (mode, backend) = args().unwrap_or_else(|e| {
        eprintln!("comm_selfcheck: {e}");
        std::process::exit(2)
    });
    let comm = match comm::init(backend) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("comm_selfcheck: {e}");
            std::process::exit(2);
        }
    };
    if mode != "check" {
        die(comm.as_ref(), &mode);
    }
    // Every backend moves CPU tensors (nccl through MPI); nccl also CUDA tensors.
    let mut devices = vec![Device::Cpu];
    if comm.name() == "nccl" {
        devices.push(Device::Cuda(comm.local_rank()));
    }
    let c = comm.as_ref();
    let result = devices.iter().try_for_each(|&dev| {
        collectives(c, dev)
            .map_err(|e| format!("collectives on {dev:?}: {e}"))
            .and_then(|_| grads(c, dev).map_err(|e| format!("grads on {dev:?}: {e}")))
            .and_then(|_| mismatches(c, dev).map_err(|e| format!("mismatches on {dev:?}: {e}")))
    });
    match result {
        Ok(()) => println!(
            "comm_selfcheck: PASS rank {} of {} ({}, node-local {} of {}): all checks passed",
            comm.rank(),
            comm.world(),
            comm.name(),
            comm.local_rank(),
            comm.local_world()
        ),
        Err(e) => {
            eprintln!(
                "comm_selfcheck: FAIL rank {} of {}: {e}",
                comm.rank(),
                comm.world()
            );
            comm.abort(1);
        }
    }
}
