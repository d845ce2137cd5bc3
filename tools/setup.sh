#!/usr/bin/env bash
# One-time (idempotent) set-up of everything dml needs on a Debian machine with a Rust
# toolchain: OpenMPI and libclang (for the `mpi` crate), a project-local .venv with
# torch==2.13.0 (libtorch for tch 0.26) and the test oracles, and the .libtorch link that
# .cargo/config.toml points LIBTORCH at. A second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
[ -e /usr/include/x86_64-linux-gnu/mpi/mpi.h ] || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] || need_apt+=(libopenmpi-dev)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q openmpi-bin libopenmpi-dev libclang-dev
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.dml-requirements
want="torch==2.13.0 torchvision==0.28.0 pytorch-metric-learning==2.9.0 faiss-cpu numpy safetensors scipy scikit-learn pillow"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv (torch is large; first time takes minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q $want
  echo "$want" > "$stamp"
fi

torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" .libtorch
echo "setup: ready (libtorch at $torch_dir)" >&2
