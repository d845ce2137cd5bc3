#!/usr/bin/env python3
"""Oracle fixtures for dml's optimiser module (tests/optim_parity.rs).

Run from the repository root:

    .venv/bin/python tools/make_optim_fixtures.py --out tests/fixtures/optim

Writes, for dtype in {f32, f64}:
  adam_<dtype>.safetensors  torch.optim.Adam / AdamW over five steps, two parameter
                            groups with different lr multipliers, weight decay, a
                            parameter that has no gradient in the first two steps;
                            `<case>.*` from the default single-tensor path,
                            `<case>_fused.*` from fused=True (the kernel dml calls).
  swa_<dtype>.safetensors   torch.optim.swa_utils.AveragedModel over five weight
                            snapshots of a tiny Linear-BN-ReLU-Linear-BN model, then
                            update_bn over three batches of different sizes.
and
  clr.safetensors           torch.optim.lr_scheduler.CyclicLR learning rates for three
                            cycles of every mode (`lrs.<i>`) and each case's
                            [base_lr, max_lr, step_size, gamma] (`hyper.<i>`);
  multistep.safetensors     torch.optim.lr_scheduler.MultiStepLR learning rates (`lrs.<i>`,
                            γ in `gamma.<i>`) and LambdaLR with explicit per-milestone
                            factors (`factors.<i>`), milestones in cases.json;
  cases.json                the structure of those files (names, shapes, modes) and a
                            readable copy of the numbers. Tests read every float from
                            the safetensors files, which hold them bit-exactly (JSON
                            parsers need not round correctly).

Everything is seeded; rerunning gives identical files.
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file
from torch import nn
from bisect import bisect_right

from torch.optim.lr_scheduler import CyclicLR, LambdaLR, MultiStepLR
from torch.optim.swa_utils import AveragedModel, update_bn

COMMAND = ".venv/bin/python tools/make_optim_fixtures.py --out tests/fixtures/optim"
META = {"generated_by": "tools/make_optim_fixtures.py", "command": COMMAND}

# ---------------------------------------------------------------- Adam / AdamW
GROUPS = [
    {"name": "trunk", "lr_mult": 1.0, "params": {"a": [3, 4], "b": [5]}},
    {"name": "head", "lr_mult": 10.0, "params": {"c": [2, 3], "d": [4]}},
]
ADAM_LRS = [1e-3, 2.5e-3, 4e-3, 2.5e-3, 1e-3]
NO_GRAD = {"d": [0, 1]}  # steps (0-based) at which a parameter has no gradient
ADAM_CASES = {
    "adam": {"name": "adam", "weight_decay": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8},
    "adamw": {"name": "adamw", "weight_decay": 5e-2, "betas": [0.85, 0.995], "eps": 1e-7},
}


def adam_inputs(gen):
    """Initial parameters and per-step gradients, drawn in float64."""
    init, grads = {}, []
    for g in GROUPS:
        for p, shape in g["params"].items():
            init[p] = torch.randn(shape, generator=gen, dtype=torch.float64)
    for k in range(len(ADAM_LRS)):
        step = {}
        for p, t in init.items():
            if k in NO_GRAD.get(p, []):
                continue
            scale = 10.0 ** (torch.rand((), generator=gen, dtype=torch.float64) * 4 - 3)
            g = torch.randn(t.shape, generator=gen, dtype=torch.float64) * scale
            g.view(-1)[0] = 0.0  # a zero gradient entry
            step[p] = g
        grads.append(step)
    return init, grads


def run_adam(case, init, grads, dtype, fused):
    params = {p: t.to(dtype).clone().requires_grad_(True) for p, t in init.items()}
    groups = [
        {"params": [params[p] for p in g["params"]], "lr": ADAM_LRS[0] * g["lr_mult"]}
        for g in GROUPS
    ]
    cls = torch.optim.AdamW if case["name"] == "adamw" else torch.optim.Adam
    opt = cls(groups, lr=ADAM_LRS[0], betas=tuple(case["betas"]), eps=case["eps"],
              weight_decay=case["weight_decay"], fused=fused)
    out = {}
    for k, lr in enumerate(ADAM_LRS):
        for pg, g in zip(opt.param_groups, GROUPS):
            pg["lr"] = lr * g["lr_mult"]
        for p, t in params.items():
            t.grad = grads[k][p].to(dtype).clone() if p in grads[k] else None
        opt.step()
        for p, t in params.items():
            out[f"param.{k}.{p}"] = t.detach().clone()
    for p, t in params.items():
        st = opt.state[t]
        out[f"exp_avg.{p}"] = st["exp_avg"].clone()
        out[f"exp_avg_sq.{p}"] = st["exp_avg_sq"].clone()
        out[f"step.{p}"] = torch.tensor([int(st["step"].item())], dtype=torch.int64)
    return out


# ---------------------------------------------------------------- SWA + update_bn
SWA_SNAPSHOTS = 5
BN_BATCHES = [6, 5, 7]
BN_EPS = 1e-5


def tiny_model(dtype):
    return nn.Sequential(
        nn.Linear(4, 3), nn.BatchNorm1d(3, eps=BN_EPS), nn.ReLU(),
        nn.Linear(3, 2), nn.BatchNorm1d(2, eps=BN_EPS),
    ).to(dtype)


def swa_fixture(gen, dtype):
    model = tiny_model(dtype)
    names = [n for n, _ in model.named_parameters()]
    snaps = []
    for _ in range(SWA_SNAPSHOTS):
        snaps.append({n: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
                      for n, p in model.named_parameters()})
    batches = [torch.randn(b, 4, generator=gen, dtype=torch.float64).to(dtype)
               for b in BN_BATCHES]
    out = {}
    swa = AveragedModel(model)
    for k, snap in enumerate(snaps):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(snap[n])
        swa.update_parameters(model)
        for n in names:
            out[f"snap.{k}.{n}"] = snap[n]
        for n, p in swa.module.named_parameters():
            out[f"avg.{k}.{n}"] = p.detach().clone()
    for i, b in enumerate(batches):
        out[f"batch.{i}"] = b
    # Poison the running statistics: update_bn must reset them.
    for m in swa.module.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(7.0)
    update_bn(batches, swa)
    for n, b in swa.module.named_buffers():
        if "running" in n:
            out[f"bn.{n}"] = b.clone()
    return out


# ---------------------------------------------------------------- CyclicLR
CLR_CASES = [
    {"policy": "triangular", "base_lr": 1e-4, "max_lr": 1e-3, "step_size": 5, "gamma": 1.0},
    {"policy": "triangular", "base_lr": 3e-4, "max_lr": 2e-3, "step_size": 3, "gamma": 1.0},
    {"policy": "triangular2", "base_lr": 1e-4, "max_lr": 1e-3, "step_size": 7, "gamma": 1.0},
    {"policy": "exp_range", "base_lr": 1e-4, "max_lr": 1e-3, "step_size": 4, "gamma": 0.97},
    {"policy": "exp_range", "base_lr": 2e-5, "max_lr": 6e-4, "step_size": 6, "gamma": 0.999},
]


def clr_lrs(case):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([p], lr=case["base_lr"])
    sched = CyclicLR(opt, base_lr=case["base_lr"], max_lr=case["max_lr"],
                     step_size_up=case["step_size"], mode=case["policy"],
                     gamma=case["gamma"], cycle_momentum=False)
    lrs = []
    for _ in range(3 * 2 * case["step_size"] + 2):  # three cycles and a bit
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


# MultiStepLR: γ^(milestones passed); LambdaLR: BFE's warm-up staircase and drops
# (daizuozhuo/batch-dropblock-network adjust_lr, in epochs) as explicit factors.
MULTISTEP_CASES = [
    {"base_lr": 1e-4, "milestones": [3, 7, 8], "gamma": 0.1, "factors": [], "steps": 12},
    {"base_lr": 3e-4, "milestones": [5], "gamma": 0.5, "factors": [], "steps": 9},
    {"base_lr": 1e-4, "milestones": [4, 9, 14, 19, 24, 29, 34, 39, 44, 199, 299],
     "gamma": 1.0, "factors": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 0.1], "steps": 320},
]


def multistep_lrs(case):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([p], lr=case["base_lr"])
    if case["factors"]:
        ms, fs = case["milestones"], case["factors"]
        sched = LambdaLR(opt, lambda e: fs[bisect_right(ms, e)])
    else:
        sched = MultiStepLR(opt, milestones=case["milestones"], gamma=case["gamma"])
    lrs = []
    for _ in range(case["steps"]):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/optim")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for tag, dtype in (("f32", torch.float32), ("f64", torch.float64)):
        gen = torch.Generator().manual_seed(20240601)
        init, grads = adam_inputs(gen)
        tensors = {f"init.{p}": t.to(dtype) for p, t in init.items()}
        tensors["lrs"] = torch.tensor(ADAM_LRS, dtype=torch.float64)
        tensors["lr_mult"] = torch.tensor([g["lr_mult"] for g in GROUPS], dtype=torch.float64)
        for cname, case in ADAM_CASES.items():
            tensors[f"{cname}.hyper"] = torch.tensor(
                [case["weight_decay"], *case["betas"], case["eps"]], dtype=torch.float64)
        for k, step in enumerate(grads):
            for p, g in step.items():
                tensors[f"grad.{k}.{p}"] = g.to(dtype)
        for cname, case in ADAM_CASES.items():
            for key, t in run_adam(case, init, grads, dtype, fused=False).items():
                tensors[f"{cname}.{key}"] = t
            for key, t in run_adam(case, init, grads, dtype, fused=True).items():
                tensors[f"{cname}_fused.{key}"] = t
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  os.path.join(args.out, f"adam_{tag}.safetensors"), metadata=META)
        swa = swa_fixture(torch.Generator().manual_seed(7), dtype)
        swa["bn_eps"] = torch.tensor([BN_EPS], dtype=torch.float64)
        save_file({k: v.contiguous() for k, v in swa.items()},
                  os.path.join(args.out, f"swa_{tag}.safetensors"), metadata=META)
    clr = [dict(c, lrs=clr_lrs(c)) for c in CLR_CASES]
    clr_tensors = {}
    for i, c in enumerate(clr):
        clr_tensors[f"lrs.{i}"] = torch.tensor(c["lrs"], dtype=torch.float64)
        clr_tensors[f"hyper.{i}"] = torch.tensor(
            [c["base_lr"], c["max_lr"], c["step_size"], c["gamma"]], dtype=torch.float64)
    save_file(clr_tensors, os.path.join(args.out, "clr.safetensors"), metadata=META)
    ms_tensors = {}
    for i, c in enumerate(MULTISTEP_CASES):
        ms_tensors[f"lrs.{i}"] = torch.tensor(multistep_lrs(c), dtype=torch.float64)
        ms_tensors[f"base.{i}"] = torch.tensor([c["base_lr"]], dtype=torch.float64)
        ms_tensors[f"gamma.{i}"] = torch.tensor([c["gamma"]], dtype=torch.float64)
        ms_tensors[f"factors.{i}"] = torch.tensor([float(f) for f in c["factors"]] or [0.0],
                                                  dtype=torch.float64)
    save_file(ms_tensors, os.path.join(args.out, "multistep.safetensors"), metadata=META)
    cases = {
        "generated_by": META["generated_by"],
        "command": COMMAND,
        "torch": torch.__version__,
        "adam": {
            "groups": GROUPS,
            "lrs": ADAM_LRS,
            "no_grad": NO_GRAD,
            "cases": ADAM_CASES,
        },
        "swa": {"snapshots": SWA_SNAPSHOTS, "bn_batches": BN_BATCHES, "bn_eps": BN_EPS},
        "clr": clr,
        "multistep": MULTISTEP_CASES,
    }
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
