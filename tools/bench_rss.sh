#!/usr/bin/env bash
# Peak RSS of `dml train` on a ~1 GB versus a ~10 GB dataset file (same model, batch and
# steps): memory-mapped data should not make resident memory grow with the file.
# Usage: tools/bench_rss.sh [WORKDIR]   (needs ~12 GB free disk; takes a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/dml-bench-rss}
DML=target/release/dml
mkdir -p "$W"
# 256×256 RGB records take exactly 48 pages (196,608 bytes): 5,400 images ≈ 1 GB
# (train half), 54,000 ≈ 10 GB.
[ -f "$W/small/train.dmlds" ] || $DML synth --out "$W/small" --classes 100 --per-class 108 --size 256
[ -f "$W/large/train.dmlds" ] || $DML synth --out "$W/large" --classes 1000 --per-class 108 --size 256
for s in small large; do
  ls -l "$W/$s/train.dmlds"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "$s peak_rss_kb %M wall_s %e" $DML train --config configs/quickstart.toml \
    --set data.train="$W/$s/train.dmlds" --set data.image_size=224 --set data.resize=256 \
    --set train.steps=20 --set train.checkpoint_every=0 --set train.device=cpu \
    --out "$W/run-$s" 2>&1 | grep peak_rss
  rm -rf "$W/run-$s"
done
