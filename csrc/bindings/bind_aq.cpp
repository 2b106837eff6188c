#include <pybind11/pybind11.h>

#include "aq.hpp"

namespace py = pybind11;

void bind_aq(py::module_& m) {}
