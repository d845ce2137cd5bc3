#!/usr/bin/env bash
# The sharded objective against its peer (BENCHMARKS.md, "Sharded objective"):
# examples/bench_objective on W = 1, 2, 4 ranks (one intra-op thread each) and PML on the
# whole batch in one process (tools/bench_loss.py, one thread; up to PML_MAX_BATCH = 8192), for Multi-Similarity and
# batch-hard / semi-hard triplet at D = 128. Prints one JSON line per measurement.
#   bash tools/bench_objective.sh [BATCH...]      (default: 4096 16384)
# Run it on an idle machine: the ranks share its cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
bench=target/release/examples/bench_objective
[ -x "$bench" ] || cargo build --release --example bench_objective
batches=("$@")
[ ${#batches[@]} -gt 0 ] || batches=(4096 16384)
steps=${STEPS:-3}
for b in "${batches[@]}"; do
  for case in "multi_similarity multi_similarity ms_miner" \
              "triplet batch_hard triplet_batch_hard" \
              "triplet semi_hard triplet_semi_hard"; do
    set -- $case
    for w in 1 2 4; do
      mpirun --oversubscribe -np "$w" -x OMP_NUM_THREADS "$bench" \
        --batch "$b" --dim 128 --loss "$1" --miner "$2" --steps "$steps"
    done
    if [ "$b" -le "${PML_MAX_BATCH:-8192}" ]; then
      .venv/bin/python tools/bench_loss.py --loss "$3" --batch "$b" --dim 128 --threads 1
    else
      # PML builds whole B×B matrices: peak RSS 1.1-4.9 GB at B = 4096 grows as B², past
      # a 24 GiB machine at 16384 (raise PML_MAX_BATCH on a bigger one).
      echo "{\"impl\": \"pml\", \"loss\": \"$3\", \"B\": $b, \"skipped\": \"B > PML_MAX_BATCH\"}"
    fi
  done
done
