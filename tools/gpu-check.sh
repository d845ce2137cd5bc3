#!/usr/bin/env bash
# One prepared check for a machine with NVIDIA GPUs (run it once whenever a GPU machine is
# lent): set-up, build with the NCCL backend, an NCCL all-gather/all-reduce self-test on
# every GPU of the node, then 50 training steps of ResNet-50 at 224 px in bf16 with
# channels_last on generated data. Throughput (images/s) is printed last.
# Usage: tools/gpu-check.sh [STEPS]        (NGPU=… to use fewer GPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-50}
bash tools/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
echo "== gpu-check: $NGPU GPU(s) =="
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
cargo build --release --features nccl --bin dml --example comm_selfcheck
echo "== NCCL self-test (all-gather, all-reduce, broadcast) on $NGPU rank(s) =="
mpirun --oversubscribe --bind-to none -np "$NGPU" target/release/examples/comm_selfcheck --backend nccl
W=${W:-/tmp/dml-gpu-check}
rm -rf "$W/run"; mkdir -p "$W"
[ -f "$W/data/train.dmlds" ] || target/release/dml synth --out "$W/data" --classes 200 --per-class 40 --size 256
echo "== $STEPS steps of ResNet-50, 224 px, bf16, channels_last, global batch 32×4 per GPU =="
mpirun --oversubscribe --bind-to none -np "$NGPU" target/release/dml train --config configs/quickstart.toml \
  --set data.train="$W/data/train.dmlds" --set data.test="$W/data/test.dmlds" \
  --set data.image_size=224 --set data.resize=256 --set data.workers=8 \
  --set model.trunk=resnet50 --set model.channels_last=true --set train.precision=bf16 \
  --set train.device=cuda --set dist.backend=nccl \
  --set sampler.classes_per_batch=$((32 * NGPU)) --set sampler.samples_per_class=4 \
  --set train.steps="$STEPS" --set train.checkpoint_every=0 --out "$W/run"
python3 - "$W/run/metrics.jsonl" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
tail = rows[len(rows) // 2:]
ips = statistics.median(r["images_per_s"] for r in tail)
print(f"gpu-check: final loss {rows[-1]['loss']:.4f}; median images/s over the last half: {ips:.1f}")
PY
