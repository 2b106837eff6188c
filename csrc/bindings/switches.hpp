// The private benchmarking hook: lowrank_sparse._core._Switches, a context manager that
// turns the core's comparison switches (lrs::Switches) on or off for the calls made
// inside it, process-wide.  Outside it every call takes the production path.  Read by
// the ADMM and SVD bindings with the GIL held.
#pragma once

#include <pybind11/pybind11.h>

#include "admm.hpp"

namespace lrs_py {

// The ADMM's switches: production defaults with the active overrides applied.
lrs::Switches admm_switches();

// The standalone SVD's (truncated_svd, svt): CholeskyQR2 panels (production: on) and
// B's SVD from its Gram (production: off).
struct SvdSwitches {
  bool cholesky_qr = true;
  bool gram_svd = false;
};
SvdSwitches svd_switches();

}  // namespace lrs_py
