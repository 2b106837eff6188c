// Python bindings of the sparsity operators (csrc/prox.hpp) and the thread count.
//
// Every function takes float32 or float64 C-contiguous numpy arrays (no silent
// conversion: another dtype or layout is a TypeError naming the argument), checks
// shapes / ranges / finiteness (ValueError), releases the GIL around the C++
// work and returns a new array, or writes into `out=` (which may be `x` itself).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.hpp"
#include "prox.hpp"

namespace py = pybind11;
using lrs::index_t;

namespace {

enum class DType { F32, F64 };

DType dtype_of(const py::array& a, const char* name) {
  if (a.dtype().is(py::dtype::of<float>())) return DType::F32;
  if (a.dtype().is(py::dtype::of<double>())) return DType::F64;
  throw py::type_error(std::string(name) + " must be a float32 or float64 array, got dtype " +
                       py::str(a.dtype()).cast<std::string>());
}

py::array as_array(const py::object& o, const char* name) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + " must be a numpy array, got " +
                         py::str(py::type::of(o).attr("__name__")).cast<std::string>());
  py::array a = py::reinterpret_borrow<py::array>(o);
  if (!(a.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + " must be C-contiguous");
  return a;
}

void require_2d(const py::array& a, const char* name) {
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + " must be 2-D (m, n), got " +
                          std::to_string(a.ndim()) + " dimensions");
}

template <class T>
void require_finite(const T* x, index_t n, const char* name) {
  bool bad = false;
  lrs::parallel_for(n, [&](index_t b, index_t e) {
    bool local = false;
    for (index_t i = b; i < e; ++i) local |= !std::isfinite(x[i]);
    if (local) bad = true;  // benign race: only ever set to true
  });
  if (bad) throw std::invalid_argument(std::string(name) + " contains NaN or Inf");
}

// The output array: a new one shaped like x, or `out` after checking it matches.
py::array output_for(const py::array& x, const py::object& out) {
  if (out.is_none()) return py::array(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  py::array o = as_array(out, "out");
  if (!o.dtype().is(x.dtype())) throw py::type_error("out must have the same dtype as x");
  if (o.ndim() != x.ndim() || !std::equal(x.shape(), x.shape() + x.ndim(), o.shape()))
    throw py::value_error("out must have the same shape as x");
  if (!o.writeable()) throw py::value_error("out is read-only");
  return o;
}

lrs::Structure make_structure(int kind, index_t block, int nm_n, int nm_m) {
  if (kind < 0 || kind > 4)
    throw py::value_error("structure kind code must be 0..4 (unstructured, row, column, channel, nm)");
  lrs::Structure s;
  s.kind = static_cast<lrs::StructureKind>(kind);
  s.block = block;
  s.nm_n = nm_n;
  s.nm_m = nm_m;
  if (s.kind == lrs::StructureKind::Channel && block < 1)
    throw py::value_error("block (kh*kw) must be >= 1");
  if (s.kind == lrs::StructureKind::NM && !(nm_n >= 1 && nm_n < nm_m))
    throw py::value_error("N:M needs 1 <= N < M");
  return s;
}

void check_structure_shape(const lrs::Structure& s, index_t n) {
  if (s.kind == lrs::StructureKind::Channel && n % s.block != 0)
    throw py::value_error("structure 'channel' needs the column count (" + std::to_string(n) +
                          ") to be a multiple of block=" + std::to_string(s.block));
  if (s.kind == lrs::StructureKind::NM && n % s.nm_m != 0)
    throw py::value_error("N:M structure needs the column count (" + std::to_string(n) +
                          ") to be divisible by M=" + std::to_string(s.nm_m));
}

// Runs body<T>(x_ptr, out_ptr) for the dtype of x with the GIL released.
template <class Body>
py::array run(const py::object& xo, const py::object& out, Body body) {
  py::array x = as_array(xo, "x");
  const DType dt = dtype_of(x, "x");
  py::array o = output_for(x, out);
  const index_t n = static_cast<index_t>(x.size());
  if (dt == DType::F32) {
    const float* xp = static_cast<const float*>(x.data());
    float* op = static_cast<float*>(o.mutable_data());
    py::gil_scoped_release nogil;
    require_finite(xp, n, "x");
    body(xp, op, float{});
  } else {
    const double* xp = static_cast<const double*>(x.data());
    double* op = static_cast<double*>(o.mutable_data());
    py::gil_scoped_release nogil;
    require_finite(xp, n, "x");
    body(xp, op, double{});
  }
  return o;
}

void check_tau(double tau) {
  if (!(tau >= 0) || !std::isfinite(tau))
    throw py::value_error("tau must be a finite number >= 0, got " + std::to_string(tau));
}

}  // namespace

void bind_prox(py::module_& m) {
  m.def("set_num_threads", [](int n) { lrs::set_num_threads(n); }, py::arg("n"),
        "Threads used by the core's parallel passes (n < 1 restores hardware concurrency).");
  m.def("get_num_threads", [] { return lrs::get_num_threads(); },
        "Threads used by the core's parallel passes.");

  m.def(
      "soft_threshold",
      [](const py::object& x, double tau, const py::object& out) {
        check_tau(tau);
        const index_t n = static_cast<index_t>(as_array(x, "x").size());
        return run(x, out, [&](auto xp, auto op, auto z) {
          using T = decltype(z);
          lrs::soft_threshold<T>(xp, op, n, static_cast<T>(tau));
        });
      },
      py::arg("x"), py::arg("tau"), py::arg("out") = py::none(),
      "sign(x) * max(|x| - tau, 0) elementwise; x any shape, float32/float64.");

  m.def(
      "topk_project",
      [](const py::object& x, index_t k, const py::object& out) {
        const index_t n = static_cast<index_t>(as_array(x, "x").size());
        if (k < 0 || k > n)
          throw py::value_error("k must satisfy 0 <= k <= x.size (" + std::to_string(n) + "), got " +
                                std::to_string(k));
        return run(x, out, [&](auto xp, auto op, auto z) {
          using T = decltype(z);
          lrs::topk_project<T>(xp, op, n, k);
        });
      },
      py::arg("x"), py::arg("k"), py::arg("out") = py::none(),
      "Keep the k entries of largest |x| (flat order; ties: lower index), zero the rest.");

  auto group_op = [](const py::object& x, double tau_or_k, int kind, index_t block, int nm_n,
                     int nm_m, const py::object& out, int which) {
    py::array xa = as_array(x, "x");
    dtype_of(xa, "x");
    require_2d(xa, "x");
    const index_t rows = xa.shape(0), cols = xa.shape(1);
    const lrs::Structure s = make_structure(kind, block, nm_n, nm_m);
    check_structure_shape(s, cols);
    index_t k = 0;
    if (which == 0) {
      check_tau(tau_or_k);
    } else if (s.kind != lrs::StructureKind::NM) {
      k = static_cast<index_t>(tau_or_k);
      const index_t G = lrs::group_count(s, rows, cols);
      if (k < 0 || k > G)
        throw py::value_error("k must satisfy 0 <= k <= number of groups (" + std::to_string(G) +
                              "), got " + std::to_string(k));
    }
    return run(x, out, [&](auto xp, auto op, auto z) {
      using T = decltype(z);
      if (which == 0)
        lrs::group_soft_threshold<T>(s, xp, op, rows, cols, static_cast<T>(tau_or_k));
      else
        lrs::project<T>(s, xp, op, rows, cols, k);
    });
  };

  m.def(
      "group_soft_threshold",
      [group_op](const py::object& x, double tau, int kind, index_t block, const py::object& out) {
        if (kind == 4) throw py::value_error("group_soft_threshold: N:M is not a group structure");
        return group_op(x, tau, kind, block, 2, 4, out, 0);
      },
      py::arg("x"), py::arg("tau"), py::arg("kind"), py::arg("block") = 1,
      py::arg("out") = py::none(),
      "Prox of tau * sum_g ||x_g||_2 for x (m, n); kind 0..3 = unstructured, row, column, "
      "channel (column blocks of `block`).");

  m.def(
      "group_topk_project",
      [group_op](const py::object& x, index_t k, int kind, index_t block, const py::object& out) {
        if (kind == 4) throw py::value_error("group_topk_project: N:M is not a group structure");
        return group_op(x, static_cast<double>(k), kind, block, 2, 4, out, 1);
      },
      py::arg("x"), py::arg("k"), py::arg("kind"), py::arg("block") = 1,
      py::arg("out") = py::none(),
      "Keep the k groups of largest L2 norm of x (m, n) (ties: lower group index).");

  m.def(
      "nm_project",
      [group_op](const py::object& x, int n, int mm, const py::object& out) {
        return group_op(x, 0.0, 4, 1, n, mm, out, 1);
      },
      py::arg("x"), py::arg("n"), py::arg("m"), py::arg("out") = py::none(),
      "In each row of x (rows, cols), keep n of every m consecutive entries (largest |x|; "
      "ties: lower column).");

  m.def(
      "project",
      [group_op](const py::object& x, index_t k, int kind, index_t block, int nm_n, int nm_m,
                 const py::object& out) {
        return group_op(x, static_cast<double>(k), kind, block, nm_n, nm_m, out, 1);
      },
      py::arg("x"), py::arg("k"), py::arg("kind"), py::arg("block") = 1, py::arg("nm_n") = 2,
      py::arg("nm_m") = 4, py::arg("out") = py::none(),
      "Hard projection onto k groups (entries for unstructured) of the structure; N:M ignores k.");
}
