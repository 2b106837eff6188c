#!/usr/bin/env bash
# The C++ core under AddressSanitizer and UndefinedBehaviorSanitizer.
#
#   bash tools/sanitize.sh [pytest args]      (in the project's virtual environment)
#
# Builds lowrank_sparse._core with -fsanitize=address,undefined (CMake option
# LRS_SANITIZE) in a temporary folder, stages the package with that module, and runs
# the tests that exercise the core (the bindings, operators, SVD, ADMM, AQ, thread pool,
# and the hypothesis suites for the C++ boundary and the file readers) in a Python
# process with the sanitizer runtimes preloaded.  Any report aborts the process, so the
# run passes only with zero reports.  The editable install is bypassed (python -S with
# the environment's site-packages on PYTHONPATH), nothing in the checkout is changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
# SANITIZE_DIR=DIR keeps the build there (incremental reruns); default: a temporary folder.
if [[ -n "${SANITIZE_DIR:-}" ]]; then
  WORK=$SANITIZE_DIR; mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/lrs-sanitize.XXXXXX"); trap 'rm -rf "$WORK"' EXIT
fi

echo "== building the sanitized core in $WORK/build"
cmake -S . -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLRS_SANITIZE=ON \
  -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$WORK/build" -j "$(nproc)" >/dev/null

rm -rf "$WORK/stage" && mkdir -p "$WORK/stage"
cp -r lowrank_sparse "$WORK/stage/"
find "$WORK/stage" -name '_core*.so' -delete
find "$WORK/stage" -name __pycache__ -type d -prune -exec rm -rf {} +
cp "$WORK"/build/_core*.so "$WORK/stage/lowrank_sparse/"
nm -D "$WORK"/build/_core*.so | grep -q __asan_report || { echo "the module is not instrumented" >&2; exit 1; }
nm -D "$WORK"/build/_core*.so | grep -q __ubsan_handle || { echo "the module has no UBSan checks" >&2; exit 1; }
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

TESTS=(tests/test_core_boundary.py tests/test_prox.py tests/test_svd.py tests/test_admm_native.py
       tests/test_activations.py tests/test_aq_core.py tests/test_parallel.py tests/test_blas.py
       tests/test_fuzz_boundary.py tests/test_fuzz_io.py tests/test_decompose.py)
echo "== running ${#TESTS[@]} test files against it"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# detect_leaks=0: CPython and torch keep allocations until exit by design (not the core's).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$WORK/stage:$SITE"
"$PY" -P -S -c 'import lowrank_sparse, lowrank_sparse._core as c, sys; assert c.__file__.startswith(sys.argv[1]), c.__file__' "$WORK/stage"
"$PY" -P -S -m pytest -q -p no:cacheprovider --rootdir=. "${TESTS[@]}" "$@"
echo "== sanitizers: zero reports"
