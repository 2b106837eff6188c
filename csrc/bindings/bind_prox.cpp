#include <pybind11/pybind11.h>

#include "prox.hpp"

namespace py = pybind11;

void bind_prox(py::module_& m) {}
