#!/usr/bin/env bash
# Side by side: one training step of `dml train` against the same loop in PyTorch + PML
# (tools/bench_step.py), on the same generated data, on one rank (2 threads) and on two
# ranks sharing the same cores (1 thread each), same global batch (8 x 8).
#
#   bash tools/bench_step.sh            # REPS=3 STEPS=150 WARMUP=50 WORLDS="1 2"
#   DML_SETS="dist.overlap=false" WORLDS=2 PEER=0 bash tools/bench_step.sh   # dml only, W = 2
#
# For each rep and world size it prints one line per trainer with the marginal wall time
# per step (between the end of step WARMUP and the last step; dml: metrics.jsonl's
# elapsed_s, PyTorch: perf_counter), then the medians and the ratios:
# dml/PyTorch at W = 1 and W = 2, and each trainer's W = 2 speed relative to its W = 1.
# dml's comm_s, comm_wait_s and step_s medians (rank 0) come with its lines. Run it on an
# idle machine.
set -euo pipefail
unset OMP_NUM_THREADS  # dml chooses its own threads; the PyTorch peer gets cores / W
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
STEPS=${STEPS:-150}
WARMUP=${WARMUP:-50}
WORLDS=${WORLDS:-1 2}
PEER=${PEER:-1}            # 0: dml only
PEER_ADAM=${PEER_ADAM:-default}  # or fused: torch.optim.Adam(fused=True) in the peer
read -r -a EXTRA <<<"${DML_SETS:-}"
SETS=()
for s in "${EXTRA[@]}"; do SETS+=(--set "$s"); done
CORES=${CORES:-$(nproc)}
PY=.venv/bin/python
DML=${DML:-target/release/dml}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[ -x "$DML" ] || cargo build --release
$DML synth --out "$WORK/data" --classes 100 --per-class 40 --size 32 --seed 0 >/dev/null

dml_step() { # W -> JSON line
  local w=$1 threads=$((CORES / $1))
  rm -rf "$WORK/run"
  mpirun --oversubscribe --bind-to none -np "$w" ${MPI_X:-} $DML train \
    --config tools/bench_step.toml --out "$WORK/run" \
    --set data.train="$WORK/data/train.dmlds" --set data.test="$WORK/data/test.dmlds" \
    --set train.steps="$STEPS" "${SETS[@]}" >/dev/null 2>"$WORK/dml.err" || { tail -20 "$WORK/dml.err"; exit 1; }
  threads=$(grep -o "[0-9]* intra-op" "$WORK/dml.err" | head -1 | cut -d" " -f1)
  $PY - "$WORK/run/metrics.jsonl" "$w" "$threads" "$WARMUP" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
w, threads, warm = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
by = {l["step"]: l for l in lines}
last = max(by)
rest = [l for l in lines if l["step"] > warm]
med = lambda k: statistics.median(l.get(k, 0.0) for l in rest)
print(json.dumps({"trainer": "dml", "world": w, "threads": threads, "steps": last,
                  "step_s": (by[last]["elapsed_s"] - by[warm]["elapsed_s"]) / (last - warm),
                  "fb_s": med("step_s"), "comm_s": med("comm_s"),
                  "comm_wait_s": med("comm_wait_s")}))
PY
}

torch_step() { # W -> JSON line
  local w=$1 threads=$((CORES / $1))
  mpirun --oversubscribe --bind-to none -np "$w" -x OMP_NUM_THREADS="$threads" -x MASTER_PORT=$((29500 + RANDOM % 400)) \
    $PY tools/bench_step.py --data "$WORK/data/train.dmlds" --steps "$STEPS" --warmup "$WARMUP" --adam "$PEER_ADAM" 2>"$WORK/py.err" \
    | sed 's/^{/{"trainer": "pytorch+pml", /' || { tail -20 "$WORK/py.err"; exit 1; }
}

OUT="$WORK/lines.jsonl"
for rep in $(seq "$REPS"); do
  for w in $WORLDS; do
    dml_step "$w" | tee -a "$OUT"
    [ "$PEER" = 0 ] || torch_step "$w" | tee -a "$OUT"
  done
done
$PY - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for t in ("dml", "pytorch+pml"):
    for w in (1, 2):
        got = [r for r in rows if r["trainer"] == t and r["world"] == w]
        if got:
            med[t, w] = statistics.median(r["step_s"] for r in got)
            extra = ""
            if t == "dml":
                m = lambda k: statistics.median(r[k] for r in got)
                extra = f"  (step_s {m('fb_s'):.4f}, comm_s {m('comm_s'):.4f}, comm_wait_s {m('comm_wait_s'):.4f})"
            print(f"median {t:12s} W={w}: {med[t, w]:.4f} s/step{extra}")
for w in (1, 2):
    if ("dml", w) in med and ("pytorch+pml", w) in med:
        print(f"dml / pytorch+pml at W={w}: {med['dml', w] / med['pytorch+pml', w]:.3f}")
for t in ("dml", "pytorch+pml"):
    if (t, 1) in med and (t, 2) in med:
        print(f"{t}: W=2 speed / W=1 speed: {med[t, 1] / med[t, 2]:.3f}")
PY
