// Python bindings of the warm-started truncated SVD and SVT (csrc/svd.hpp).
// A: float32/float64 C-contiguous (m, n); V: same dtype, (n, p) start of the right
// subspace (not modified; the refined one is returned).  GIL released around the
// C++ work; one SvdWorkspace per thread and dtype is reused across calls.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "arrays.hpp"
#include "svd.hpp"
#include "switches.hpp"

namespace py = pybind11;
using lrs::index_t;
using lrs_py::Float;

namespace {

template <class T>
lrs::SvdWorkspace<T>& workspace() {
  thread_local lrs::SvdWorkspace<T> ws;
  return ws;
}

// A (m, n) and V (n, p), both 2-D float arrays of one dtype; 1 <= r <= p <= min(m, n).
Float check_args(const py::array& A, const py::array& V, index_t r, int power_iters) {
  const Float dt = lrs_py::float_kind(A, "A");
  lrs_py::float_kind(V, "V");
  lrs_py::check_ndim(A, "A", 2);
  lrs_py::check_ndim(V, "V", 2);
  if (!A.dtype().is(V.dtype())) throw py::type_error("V must have the same dtype as A");
  const index_t m = A.shape(0), n = A.shape(1), p = V.shape(1);
  if (V.shape(0) != n)
    throw py::value_error("V must be (n, p) with n = A.shape[1] = " + std::to_string(n) +
                          ", got " + std::to_string(V.shape(0)) + " rows");
  if (p < 1 || p > std::min(m, n))
    throw py::value_error("V's column count p must satisfy 1 <= p <= min(m, n) = " +
                          std::to_string(std::min(m, n)) + ", got " + std::to_string(p));
  if (r < 1 || r > p)
    throw py::value_error("rank must satisfy 1 <= rank <= p = " + std::to_string(p) + ", got " +
                          std::to_string(r));
  if (power_iters < 1) throw py::value_error("power_iters must be >= 1");
  return dt;
}

// The rank-r SVD (svt: then thresholded at tau) of A from V; returns (U, s, Vt, V_new[, k]).
template <class T>
py::tuple run_svd(const py::array& Aa, const py::array& Va, index_t r, int power_iters,
                  bool is_svt, double tau) {
  const index_t m = Aa.shape(0), n = Aa.shape(1), p = Va.shape(1);
  const T* A = static_cast<const T*>(Aa.data());
  lrs_py::check_finite(A, m * n, "A");
  lrs_py::check_finite(static_cast<const T*>(Va.data()), n * p, "V");
  py::array_t<T> U({m, r}), s(r), Vt({r, n});
  py::array_t<T> V({n, p});
  std::copy(static_cast<const T*>(Va.data()), static_cast<const T*>(Va.data()) + n * p,
            V.mutable_data());
  T* Vp = V.mutable_data();
  T* Up = U.mutable_data();
  T* sp = s.mutable_data();
  T* Vtp = Vt.mutable_data();
  const lrs_py::SvdSwitches sw = lrs_py::svd_switches();
  index_t k = 0;
  {
    py::gil_scoped_release nogil;
    auto& ws = workspace<T>();
    ws.cholqr = sw.cholesky_qr;
    ws.gram_svd = sw.gram_svd;
    if (is_svt)
      k = lrs::svt<T>(A, m, n, r, p, power_iters, static_cast<T>(tau), Vp, Up, sp, Vtp, ws);
    else
      lrs::truncated_svd<T>(A, m, n, r, p, power_iters, Vp, Up, sp, Vtp, ws);
  }
  if (is_svt) return py::make_tuple(U, s, Vt, V, k);
  return py::make_tuple(U, s, Vt, V);
}

py::tuple truncated_svd_py(const py::object& A, index_t rank, const py::object& V,
                           int power_iters) {
  py::array Aa = lrs_py::as_array(A, "A"), Va = lrs_py::as_array(V, "V");
  if (check_args(Aa, Va, rank, power_iters) == Float::F32)
    return run_svd<float>(Aa, Va, rank, power_iters, false, 0);
  return run_svd<double>(Aa, Va, rank, power_iters, false, 0);
}

py::tuple svt_py(const py::object& A, double tau, const py::object& V, int power_iters,
                 const py::object& rank) {
  py::array Aa = lrs_py::as_array(A, "A"), Va = lrs_py::as_array(V, "V");
  if (!(tau >= 0) || !std::isfinite(tau))
    throw py::value_error("tau must be a finite number >= 0, got " + std::to_string(tau));
  index_t r = Va.ndim() == 2 ? Va.shape(1) : 0;
  if (!rank.is_none()) {
    if (!py::isinstance<py::int_>(rank) || py::isinstance<py::bool_>(rank))
      throw py::type_error("rank must be an int or None");
    r = rank.cast<index_t>();
  }
  if (check_args(Aa, Va, r, power_iters) == Float::F32)
    return run_svd<float>(Aa, Va, r, power_iters, true, tau);
  return run_svd<double>(Aa, Va, r, power_iters, true, tau);
}

}  // namespace

void bind_svd(py::module_& m) {
  m.def("truncated_svd", &truncated_svd_py, py::arg("A"), py::arg("rank"), py::arg("V"),
        py::arg("power_iters") = 1,
        "Rank-`rank` SVD of A (m, n) by subspace iteration from V (n, p).  Returns "
        "(U (m, rank), s (rank,), Vt (rank, n), V_new (n, p)); V is not modified.  The "
        "panels' QR is CholeskyQR2 with a Householder fallback when ill-conditioned; the "
        "SVD of the (p, n) panel B = Q^T A goes through the QR of B^T and gesdd.");
  m.def("svt", &svt_py, py::arg("A"), py::arg("tau"), py::arg("V"), py::arg("power_iters") = 1,
        py::arg("rank") = py::none(),
        "Singular-value thresholding restricted to the leading `rank` singular triplets "
        "(default rank = p), found by subspace iteration from V (n, p); the same semantics as "
        "torch_ops.svt.  Returns (U (m, rank), s (rank,) = max(s - tau, 0), Vt (rank, n), "
        "V_new (n, p), k = count of s > tau, i.e. s[k:] == 0).");
}
