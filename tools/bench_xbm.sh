#!/usr/bin/env bash
# The cross-batch memory's per-step cost, dml against PML's CrossBatchMemory, side by side
# (examples/bench_xbm.rs, tools/bench_xbm.py): XBM's SOP setting (55,000 rows, batch 64)
# at 128-d (the official head) and 512-d, for Multi-Similarity, batch-hard triplet and the
# margin loss with D&C's sampler (LOSSES picks some),
# alternating dml and PML, REPEATS processes each (default 3). Run on an idle machine.
#   cargo build --release --examples && tools/bench_xbm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-2}
for loss in ${LOSSES:-ms_miner triplet_batch_hard margin_dnc}; do
  for dim in 128 512; do
    for _ in $(seq "$REPEATS"); do
      target/release/examples/bench_xbm "$loss" 55000 64 "$dim" "$THREADS" 10
      .venv/bin/python tools/bench_xbm.py --loss "$loss" --size 55000 --batch 64 --dim "$dim" --threads "$THREADS" --steps 10
    done
  done
done
