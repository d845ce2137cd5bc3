#!/usr/bin/env bash
# Distillation result for BENCHMARKS.md (issue 8): on generated data, a ResNet-18 student
# distilled from a trained ResNet-50 teacher against the same student trained without a
# teacher; test MAP@R (and P@1) averaged over 3 seeds.
#
#   tools/bench_distill.sh [STEPS] [KIND] [WEIGHT]     (defaults: 300 relative 0.3)
#
# The teacher trains TEACHER_STEPS (default 2 × STEPS) steps.
#
# Everything runs on CPU with configs/quickstart.toml's settings at 48 px; the work
# directory is $W (default /tmp/dml-bench-distill).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
KIND=${2:-relative}
WEIGHT=${3:-0.3}
W=${W:-/tmp/dml-bench-distill}
DML=target/release/dml
mkdir -p "$W"
[ -f "$W/data/train.dmlds" ] || $DML synth --out "$W/data" --classes 60 --per-class 24 --size 56
# Multi-Similarity for teacher and students: a ResNet-50 trained from scratch with the
# quickstart's batch-hard triplet loss collapses (all similarities → 1) at this scale.
common=(--config configs/quickstart.toml --set loss.name=multi_similarity --set miner.name=multi_similarity --set data.train="$W/data/train.dmlds"
  --set data.test="$W/data/test.dmlds" --set data.image_size=48 --set data.resize=56
  --set train.steps="$STEPS" --set train.checkpoint_every=0 --set train.device=cpu)
metric() { $DML eval "$1" --data "$W/data/test.dmlds" --json | python3 -c \
  'import json,sys; m=json.load(sys.stdin); print(m["mean_average_precision_at_r"], m["precision_at_1"])'; }
if [ ! -f "$W/teacher/model.safetensors" ]; then
  rm -rf "$W/teacher"
  $DML train "${common[@]}" --set model.trunk=resnet50 --set train.seed=100 \
    --set train.steps="${TEACHER_STEPS:-$((2 * STEPS))}" --out "$W/teacher" >/dev/null
fi
echo "teacher resnet50: MAP@R P@1 = $(metric "$W/teacher")"
for seed in 1 2 3; do
  for mode in plain distilled; do
    run="$W/student-$mode-$seed"
    extra=()
    [ "$mode" = distilled ] && extra=(--set distill.teacher="$W/teacher" --set distill.kind="$KIND" --set distill.weight="$WEIGHT")
    [ -f "$run/model.safetensors" ] || { rm -rf "$run"; $DML train "${common[@]}" --set train.seed=$seed "${extra[@]}" --out "$run" >/dev/null; }
    echo "$mode seed $seed: MAP@R P@1 = $(metric "$run")"
  done
done | tee "$W/results.txt"
python3 - "$W/results.txt" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
for mode in ("plain", "distilled"):
    m = [float(r[-2]) for r in rows if r[0] == mode]
    p = [float(r[-1]) for r in rows if r[0] == mode]
    print(f"{mode:9s} MAP@R mean {st.mean(m):.4f} (runs {', '.join(f'{x:.4f}' for x in m)}), P@1 mean {st.mean(p):.4f}")
PY
