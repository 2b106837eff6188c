// Python bindings of the sparsity operators (csrc/prox.hpp).
//
// Every function takes a float32 or float64 C-contiguous numpy array (checked by
// arrays.hpp, nothing converted), checks ranges (ValueError), releases the GIL around
// the C++ work and returns a new array, or writes into `out=` (which may be `x` itself).
// Group structures are _core.Structure objects.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "prox.hpp"

namespace py = pybind11;
using lrs::index_t;
using lrs_py::Float;

namespace {

// The output array: a new one shaped like x, or `out` after checking it matches.
py::array output_for(const py::array& x, const py::object& out) {
  if (out.is_none()) return py::array(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  py::array o = lrs_py::as_array(out, "out");
  if (!o.dtype().is(x.dtype())) throw py::type_error("out must have the same dtype as x");
  if (o.ndim() != x.ndim() || !std::equal(x.shape(), x.shape() + x.ndim(), o.shape()))
    throw py::value_error("out must have the same shape as x");
  if (!o.writeable()) throw py::value_error("out is read-only");
  return o;
}

// The structure, valid and applicable to an (rows, cols) matrix (ValueError).
void check_structure(const lrs::Structure& s, index_t cols) {
  if (s.kind == lrs::StructureKind::Channel && s.block < 1)
    throw py::value_error("block (kh*kw) must be >= 1");
  if (s.kind == lrs::StructureKind::NM && !(s.nm_n >= 1 && s.nm_n < s.nm_m))
    throw py::value_error("N:M needs 1 <= N < M");
  if (s.kind == lrs::StructureKind::Channel && cols % s.block != 0)
    throw py::value_error("structure 'channel' needs the column count (" + std::to_string(cols) +
                          ") to be a multiple of block=" + std::to_string(s.block));
  if (s.kind == lrs::StructureKind::NM && cols % s.nm_m != 0)
    throw py::value_error("N:M structure needs the column count (" + std::to_string(cols) +
                          ") to be divisible by M=" + std::to_string(s.nm_m));
}

void check_tau(double tau) {
  if (!(tau >= 0) || !std::isfinite(tau))
    throw py::value_error("tau must be a finite number >= 0, got " + std::to_string(tau));
}

void check_k(index_t k, index_t limit, const char* what) {
  if (k < 0 || k > limit)
    throw py::value_error("k must satisfy 0 <= k <= " + std::string(what) + " (" +
                          std::to_string(limit) + "), got " + std::to_string(k));
}

// x checked (float array, finite), the output chosen, then body(x_ptr, out_ptr) for
// x's dtype with the GIL released.  ndim: x's required dimensions (-1: any).
template <class Body>
py::array run(const py::object& xo, const py::object& out, int ndim, Body body) {
  py::array x = lrs_py::as_array(xo, "x");
  const Float dt = lrs_py::float_kind(x, "x");
  if (ndim >= 0) lrs_py::check_ndim(x, "x", ndim);
  py::array o = output_for(x, out);
  const index_t n = static_cast<index_t>(x.size());
  auto go = [&](auto zero) {
    using T = decltype(zero);
    const T* xp = static_cast<const T*>(x.data());
    T* op = static_cast<T*>(o.mutable_data());
    lrs_py::check_finite(xp, n, "x");
    py::gil_scoped_release nogil;
    body(xp, op, zero);
  };
  if (dt == Float::F32)
    go(float{});
  else
    go(double{});
  return o;
}

// The group operators on x (rows, cols): which = 0 soft threshold (tau), 1 projection (k).
py::array group_op(const py::object& x, double tau_or_k, const lrs::Structure& s,
                   const py::object& out, int which) {
  py::array xa = lrs_py::as_array(x, "x");
  lrs_py::float_kind(xa, "x");
  lrs_py::check_ndim(xa, "x", 2);
  const index_t rows = xa.shape(0), cols = xa.shape(1);
  check_structure(s, cols);
  index_t k = 0;
  if (which == 0) {
    check_tau(tau_or_k);
  } else if (s.kind != lrs::StructureKind::NM) {
    k = static_cast<index_t>(tau_or_k);
    check_k(k, lrs::group_count(s, rows, cols), "number of groups");
  }
  return run(x, out, 2, [&](auto xp, auto op, auto z) {
    using T = decltype(z);
    if (which == 0)
      lrs::group_soft_threshold<T>(s, xp, op, rows, cols, static_cast<T>(tau_or_k));
    else
      lrs::project<T>(s, xp, op, rows, cols, k);
  });
}

lrs::Structure nm_structure(int n, int m) {
  lrs::Structure s;
  s.kind = lrs::StructureKind::NM;
  s.nm_n = n;
  s.nm_m = m;
  return s;
}

void reject_nm(const lrs::Structure& s, const char* fn) {
  if (s.kind == lrs::StructureKind::NM)
    throw py::value_error(std::string(fn) + ": N:M is not a group structure");
}

}  // namespace

void bind_prox(py::module_& m) {
  m.def(
      "soft_threshold",
      [](const py::object& x, double tau, const py::object& out) {
        check_tau(tau);
        const index_t n = static_cast<index_t>(lrs_py::as_array(x, "x").size());
        return run(x, out, -1, [&](auto xp, auto op, auto z) {
          using T = decltype(z);
          lrs::soft_threshold<T>(xp, op, n, static_cast<T>(tau));
        });
      },
      py::arg("x"), py::arg("tau"), py::arg("out") = py::none(),
      "sign(x) * max(|x| - tau, 0) elementwise; x any shape, float32/float64.");
  m.def(
      "topk_project",
      [](const py::object& x, index_t k, const py::object& out) {
        const index_t n = static_cast<index_t>(lrs_py::as_array(x, "x").size());
        check_k(k, n, "x.size");
        return run(x, out, -1, [&](auto xp, auto op, auto z) {
          using T = decltype(z);
          lrs::topk_project<T>(xp, op, n, k);
        });
      },
      py::arg("x"), py::arg("k"), py::arg("out") = py::none(),
      "Keep the k entries of largest |x| (flat order; ties: lower index), zero the rest.");
  m.def(
      "group_soft_threshold",
      [](const py::object& x, double tau, const lrs::Structure& s, const py::object& out) {
        reject_nm(s, "group_soft_threshold");
        return group_op(x, tau, s, out, 0);
      },
      py::arg("x"), py::arg("tau"), py::arg("structure"), py::arg("out") = py::none(),
      "Prox of tau * sum_g ||x_g||_2 for x (m, n); groups: single entries (unstructured), "
      "rows, columns, or input channels (column blocks of structure.block).");
  m.def(
      "group_topk_project",
      [](const py::object& x, index_t k, const lrs::Structure& s, const py::object& out) {
        reject_nm(s, "group_topk_project");
        return group_op(x, static_cast<double>(k), s, out, 1);
      },
      py::arg("x"), py::arg("k"), py::arg("structure"), py::arg("out") = py::none(),
      "Keep the k groups of largest L2 norm of x (m, n) (ties: lower group index).");
  m.def(
      "nm_project",
      [](const py::object& x, int n, int mm, const py::object& out) {
        return group_op(x, 0.0, nm_structure(n, mm), out, 1);
      },
      py::arg("x"), py::arg("n"), py::arg("m"), py::arg("out") = py::none(),
      "In each row of x (rows, cols), keep n of every m consecutive entries (largest |x|; "
      "ties: lower column).");
  m.def(
      "project",
      [](const py::object& x, index_t k, const lrs::Structure& s, const py::object& out) {
        return group_op(x, static_cast<double>(k), s, out, 1);
      },
      py::arg("x"), py::arg("k"), py::arg("structure"), py::arg("out") = py::none(),
      "Hard projection onto k groups (entries for unstructured) of the structure; N:M ignores k.");
}
