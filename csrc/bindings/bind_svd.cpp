// Python bindings of the warm-started truncated SVD and SVT (csrc/svd.hpp).
// A: float32/float64 C-contiguous (m, n); V: same dtype, (n, p) start of the right
// subspace (not modified; the refined one is returned).  GIL released around the
// C++ work; one SvdWorkspace per thread and dtype is reused across calls.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "svd.hpp"

namespace py = pybind11;
using lrs::index_t;

namespace {

py::array checked(const py::object& o, const char* name) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + " must be a numpy array, got " +
                         py::str(py::type::of(o).attr("__name__")).cast<std::string>());
  py::array a = py::reinterpret_borrow<py::array>(o);
  if (!a.dtype().is(py::dtype::of<float>()) && !a.dtype().is(py::dtype::of<double>()))
    throw py::type_error(std::string(name) + " must be a float32 or float64 array, got dtype " +
                         py::str(a.dtype()).cast<std::string>());
  if (!(a.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + " must be C-contiguous");
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + " must be 2-D, got " + std::to_string(a.ndim()) +
                          " dimensions");
  return a;
}

template <class T>
bool all_finite(const T* x, index_t n) {
  for (index_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

template <class T>
lrs::SvdWorkspace<T>& workspace() {
  thread_local lrs::SvdWorkspace<T> ws;
  return ws;
}

// Shared driver: rank r (1 <= r <= p, checked by common_checks); is_svt selects svt.
template <class T>
py::tuple run_svd(const py::array& Aa, const py::array& Va, index_t r, int power_iters,
                  bool is_svt, double tau, bool cholesky_qr, bool gram_svd) {
  const index_t m = Aa.shape(0), n = Aa.shape(1), p = Va.shape(1);
  const index_t rr = r;
  py::array_t<T> U({m, rr}), s(rr), Vt({rr, n});
  py::array_t<T> V({n, p});
  const T* A = static_cast<const T*>(Aa.data());
  std::copy(static_cast<const T*>(Va.data()), static_cast<const T*>(Va.data()) + n * p,
            V.mutable_data());
  T* Vp = V.mutable_data();
  T* Up = U.mutable_data();
  T* sp = s.mutable_data();
  T* Vtp = Vt.mutable_data();
  index_t k = 0;
  {
    py::gil_scoped_release nogil;
    if (!all_finite(A, m * n)) throw std::invalid_argument("A contains NaN or Inf");
    if (!all_finite(Vp, n * p)) throw std::invalid_argument("V contains NaN or Inf");
    auto& ws = workspace<T>();
    ws.cholqr = cholesky_qr;
    ws.gram_svd = gram_svd;
    if (is_svt)
      k = lrs::svt<T>(A, m, n, rr, p, power_iters, static_cast<T>(tau), Vp, Up, sp, Vtp, ws);
    else
      lrs::truncated_svd<T>(A, m, n, rr, p, power_iters, Vp, Up, sp, Vtp, ws);
  }
  if (is_svt) return py::make_tuple(U, s, Vt, V, k);
  return py::make_tuple(U, s, Vt, V);
}

void common_checks(const py::array& A, const py::array& V, index_t r, int power_iters) {
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
}

}  // namespace

void bind_svd(py::module_& m) {
  m.def(
      "truncated_svd",
      [](const py::object& A, index_t rank, const py::object& V, int power_iters,
         bool cholesky_qr, bool gram_svd) {
        py::array Aa = checked(A, "A"), Va = checked(V, "V");
        common_checks(Aa, Va, rank, power_iters);
        if (Aa.dtype().is(py::dtype::of<float>()))
          return run_svd<float>(Aa, Va, rank, power_iters, false, 0, cholesky_qr, gram_svd);
        return run_svd<double>(Aa, Va, rank, power_iters, false, 0, cholesky_qr, gram_svd);
      },
      py::arg("A"), py::arg("rank"), py::arg("V"), py::arg("power_iters") = 1,
      py::arg("cholesky_qr") = true, py::arg("gram_svd") = false,
      "Rank-`rank` SVD of A (m, n) by subspace iteration from V (n, p).  Returns "
      "(U (m, rank), s (rank,), Vt (rank, n), V_new (n, p)); V is not modified.  "
      "cholesky_qr: QR of the (m, p) and (n, p) panels by CholeskyQR2 (Householder "
      "fallback when ill-conditioned); False: always Householder (geqrf + orgqr).  gram_svd: the SVD "
      "of the (p, n) panel B = Q^T A from its Gram B B^T (syevd) when B's singular values span "
      "less than 1 / (16 sqrt(eps)); otherwise (and by default) through the QR of B^T and gesdd.");
  m.def(
      "svt",
      [](const py::object& A, double tau, const py::object& V, int power_iters,
         const py::object& rank) {
        py::array Aa = checked(A, "A"), Va = checked(V, "V");
        if (!(tau >= 0) || !std::isfinite(tau))
          throw py::value_error("tau must be a finite number >= 0, got " + std::to_string(tau));
        index_t r = Va.shape(1);
        if (!rank.is_none()) {
          if (!py::isinstance<py::int_>(rank) || py::isinstance<py::bool_>(rank))
            throw py::type_error("rank must be an int or None");
          r = rank.cast<index_t>();
        }
        common_checks(Aa, Va, r, power_iters);
        if (Aa.dtype().is(py::dtype::of<float>()))
          return run_svd<float>(Aa, Va, r, power_iters, true, tau, true, false);
        return run_svd<double>(Aa, Va, r, power_iters, true, tau, true, false);
      },
      py::arg("A"), py::arg("tau"), py::arg("V"), py::arg("power_iters") = 1,
      py::arg("rank") = py::none(),
      "Singular-value thresholding restricted to the leading `rank` singular triplets "
      "(default rank = p), found by subspace iteration from V (n, p); the same semantics as "
      "torch_ops.svt.  Returns (U (m, rank), s (rank,) = max(s - tau, 0), Vt (rank, n), "
      "V_new (n, p), k = count of s > tau, i.e. s[k:] == 0).");
}
