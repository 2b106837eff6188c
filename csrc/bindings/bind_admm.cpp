#include <pybind11/pybind11.h>

#include "admm.hpp"

namespace py = pybind11;

void bind_admm(py::module_& m) {}
