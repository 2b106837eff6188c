// Translation of the core's C++ exceptions into Python ones (std::invalid_argument ->
// ValueError is pybind11's own):
//   lrs::LapackError      -> lowrank_sparse.errors.LapackError (a RuntimeError)
//   lrs_py::layout_error  -> lowrank_sparse.errors.LayoutError (a TypeError and a ValueError)
#include <pybind11/pybind11.h>

#include "arrays.hpp"
#include "errors.hpp"

namespace py = pybind11;

namespace {

// Sets lowrank_sparse.errors.<cls>(message) as the current Python error.
void raise_as(const char* cls, const char* message) {
  py::object type = py::module_::import("lowrank_sparse.errors").attr(cls);
  PyErr_SetString(type.ptr(), message);
}

}  // namespace

void register_errors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const lrs::LapackError& e) {
      raise_as("LapackError", e.what());
    } catch (const lrs_py::layout_error& e) {
      raise_as("LayoutError", e.what());
    }
  });
}
