#!/usr/bin/env bash
# One prepared check for a machine with NVIDIA GPUs (run it once whenever a GPU machine is
# lent): set-up, build with the NCCL backend, the NCCL all-gather/all-reduce/broadcast
# self-test on every GPU of the node, then STEPS training steps of ResNet-50 at 224 px in
# bf16 with channels_last on generated data. Throughput (images/s) is printed last.
#
# Usage: tools/gpu-check.sh [STEPS]     (default 50)
#   NGPU=n        use n GPUs (default: all that nvidia-smi lists)
#   W=DIR         work directory for the generated data and the run (default /tmp/dml-gpu-check)
#   SKIP_SETUP=1  do not run tools/setup.sh (the machine has no network, .venv is there)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-50}

command -v nvidia-smi >/dev/null 2>&1 || {
    echo "gpu-check: nvidia-smi not found: this script needs a machine with NVIDIA GPUs and their driver" >&2
    exit 2
}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
[ "${NGPU:-0}" -gt 0 ] 2>/dev/null || {
    echo "gpu-check: nvidia-smi lists no GPU (driver not loaded, or CUDA_VISIBLE_DEVICES hides them)" >&2
    exit 2
}
command -v mpirun >/dev/null 2>&1 || [ "${SKIP_SETUP:-0}" != 1 ] || {
    echo "gpu-check: mpirun not found (apt-get install openmpi-bin, or run without SKIP_SETUP=1)" >&2
    exit 2
}

[ "${SKIP_SETUP:-0}" = 1 ] || bash tools/setup.sh
export LIBTORCH=${LIBTORCH:-$PWD/.libtorch}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "== gpu-check: $NGPU GPU(s) =="
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

cargo build --release --features nccl --bin dml --example comm_selfcheck

echo "== NCCL self-test (all-gather, all-reduce, broadcast, bucketed gradients) on $NGPU rank(s) =="
mpirun --oversubscribe --bind-to none -np "$NGPU" \
    target/release/examples/comm_selfcheck --backend nccl

W=${W:-/tmp/dml-gpu-check}
rm -rf "$W/run"
mkdir -p "$W"
[ -f "$W/data/train.dmlds" ] ||
    target/release/dml synth --out "$W/data" --classes 200 --per-class 40 --size 256

echo "== $STEPS steps of ResNet-50, 224 px, bf16, channels_last; 32 classes x 4 images per GPU =="
mpirun --oversubscribe --bind-to none -np "$NGPU" target/release/dml train \
    --config configs/quickstart.toml \
    --set data.train="$W/data/train.dmlds" --set data.test="$W/data/test.dmlds" \
    --set data.image_size=224 --set data.resize=256 --set data.workers=8 \
    --set model.trunk=resnet50 --set model.channels_last=true \
    --set train.precision=bf16 --set train.device=cuda --set dist.backend=nccl \
    --set sampler.classes_per_batch=$((32 * NGPU)) --set sampler.samples_per_class=4 \
    --set train.steps="$STEPS" --set train.checkpoint_every=0 --out "$W/run"

# metrics.jsonl has, per step, the cumulative images/s since the start of training
# (images_per_s = step * batch / seconds). Steady-state throughput over the second half
# of the run: (s2 - s1) / (s2 / ips2 - s1 / ips1), the batch size cancels.
.venv/bin/python - "$W/run/metrics.jsonl" <<'PY'
import json, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if "images_per_s" in r]
a, b = rows[len(rows) // 2], rows[-1]
if b["step"] > a["step"]:
    ips = (b["step"] - a["step"]) / (b["step"] / b["images_per_s"] - a["step"] / a["images_per_s"])
else:
    ips = b["images_per_s"]
print(f"gpu-check: final loss {b['loss']:.4f}; images/s over steps {a['step']}..{b['step']}: {ips:.1f} "
      f"(whole run, with warm-up: {b['images_per_s']:.1f})")
PY
