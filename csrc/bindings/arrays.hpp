// The one array check of the bindings: every numpy argument of lowrank_sparse._core
// goes through these, so the same mistake gives the same error everywhere, naming the
// argument:
//   not a numpy array, wrong dtype              -> TypeError
//   not C-contiguous                            -> lowrank_sparse.errors.LayoutError
//                                                  (a TypeError and a ValueError)
//   wrong number of dimensions or shape         -> ValueError
//   NaN or Inf                                  -> ValueError
// Nothing is converted or copied: the core reads the caller's memory.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <stdexcept>
#include <string>

#include "common.hpp"

namespace lrs_py {

namespace py = pybind11;
using lrs::index_t;

template <class T>
using carray = py::array_t<T, py::array::c_style>;

// Thrown for a non-C-contiguous array; bindings/errors.cpp translates it.
struct layout_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Float { F32, F64 };

// o as a C-contiguous numpy array (TypeError / layout_error naming `name`).
py::array as_array(const py::handle& o, const char* name);

// Which float dtype a has (TypeError unless float32 or float64).
Float float_kind(const py::array& a, const char* name);

// a.ndim == ndim (ValueError).
void check_ndim(const py::array& a, const char* name, int ndim);

// a's shape equals `shape`, -1 matching any size (ValueError; checks ndim first).
void check_shape(const py::array& a, const char* name, std::initializer_list<py::ssize_t> shape);

// The dtype name of T as numpy spells it ("float32", "uint16", ...).
template <class T>
std::string dtype_name() {
  return py::str(py::dtype::of<T>()).cast<std::string>();
}

// o as a C-contiguous array of T with `ndim` dimensions (-1: any).
template <class T>
carray<T> typed(const py::handle& o, const char* name, int ndim) {
  py::array a = as_array(o, name);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must be a " + dtype_name<T>() + " array, got dtype " +
                         py::str(a.dtype()).cast<std::string>());
  if (ndim >= 0) check_ndim(a, name, ndim);
  return py::reinterpret_borrow<carray<T>>(a);
}

// Every entry of x (n,) finite (ValueError); scanned in parallel with the GIL released.
// Call with the GIL held.
template <class T>
void check_finite(const T* x, index_t n, const char* name);

template <class T>
void check_finite(const carray<T>& a, const char* name) {
  check_finite(a.data(), static_cast<index_t>(a.size()), name);
}

}  // namespace lrs_py
