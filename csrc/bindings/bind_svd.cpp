#include <pybind11/pybind11.h>

#include "svd.hpp"

namespace py = pybind11;

void bind_svd(py::module_& m) {}
