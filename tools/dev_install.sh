#!/usr/bin/env bash
# Developer build: (re)install the package in editable mode, compiling the C++
# core incrementally.  A lock keeps concurrent builds in one checkout apart.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/lowrank_sparse_build.lock \
  python -m pip install --no-build-isolation --no-deps -q -e . "$@"
