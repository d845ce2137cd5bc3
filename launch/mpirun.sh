#!/usr/bin/env bash
# One dml process per GPU on this node, under Open MPI's mpirun (or MPICH's mpiexec).
#
#   launch/mpirun.sh [-np W] [dml args...]
#   launch/mpirun.sh -np 4 train --config configs/quickstart.toml --out runs/q4
#
# W defaults to the number of GPUs that nvidia-smi lists, else 1. Each rank takes GPU =
# its node-local rank (dml reads it from MPI, not from this script). Processes are not
# bound to cores (--bind-to none): each one runs its own loader threads and torch's
# intra-op threads, OMP_NUM_THREADS = cores / W unless already set.
#
# Environment passed to every rank: OMP_NUM_THREADS, and every DML_*, NCCL_*, CUDA_*,
# RUST_* and LD_LIBRARY_PATH variable set here. Also read:
#   DML          the dml binary (default: target/release/dml beside this script)
#   MPIRUN       the launcher (default: mpirun)
#   MPIRUN_ARGS  extra launcher arguments, split on spaces (e.g. "--mca btl ^openib")
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
DML="${DML:-$here/target/release/dml}"
MPIRUN="${MPIRUN:-mpirun}"

np=""
if [ "${1:-}" = "-np" ] || [ "${1:-}" = "-n" ]; then
    np="${2:?-np needs a number}"
    shift 2
fi
if [ -z "$np" ]; then
    np=1
    if command -v nvidia-smi >/dev/null 2>&1; then
        gpus=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)
        [ "${gpus:-0}" -gt 0 ] && np=$gpus
    fi
fi
case "$np" in '' | *[!0-9]* | 0) echo "launch/mpirun.sh: -np must be a positive integer, got '$np'" >&2; exit 2 ;; esac
[ -x "$DML" ] || { echo "launch/mpirun.sh: $DML not found: run 'cargo build --release' first (or set DML)" >&2; exit 2; }
command -v "$MPIRUN" >/dev/null || { echo "launch/mpirun.sh: $MPIRUN not found (install Open MPI: apt-get install openmpi-bin)" >&2; exit 2; }

cores=$(nproc 2>/dev/null || echo 1)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / np > 0 ? cores / np : 1 ))}"
vars=(OMP_NUM_THREADS)
for v in $(compgen -e); do
    case "$v" in DML_* | NCCL_* | CUDA_* | RUST_* | LD_LIBRARY_PATH) vars+=("$v") ;; esac
done

args=(-np "$np")
if "$MPIRUN" --version 2>&1 | grep -q "Open MPI"; then
    args+=(--bind-to none)
    for v in "${vars[@]}"; do args+=(-x "$v"); done
    [ "$np" -gt "$cores" ] && args+=(--oversubscribe)
    if [ "$(id -u)" = 0 ]; then
        args+=(--allow-run-as-root)
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
else
    # MPICH / Intel MPI (Hydra).
    args+=(-genvlist "$(IFS=,; echo "${vars[*]}")")
fi
# shellcheck disable=SC2206
extra=(${MPIRUN_ARGS:-})
exec "$MPIRUN" "${args[@]}" "${extra[@]}" "$DML" "$@"
