#!/usr/bin/env bash
# The whole quickstart from a fresh clone: set-up, build, generate data, train on two
# ranks under mpirun, evaluate, print the metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${NP:-2}
RUN=${RUN:-runs/quickstart}
bash tools/setup.sh
cargo build --release
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
DML=target/release/dml
[ -f data/synth/test.dmlds ] || $DML synth --out data/synth --classes 100 --per-class 40 --size 72 --seed 0
rm -rf "$RUN"
mpirun --oversubscribe -np "$NP" $DML train --config configs/quickstart.toml --out "$RUN" "$@"
echo "== test metrics (classes never seen in training) =="
mpirun --oversubscribe -np "$NP" $DML eval "$RUN"
