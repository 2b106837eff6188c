// The core's thread count (csrc/parallel.hpp).
#include <pybind11/pybind11.h>

#include "parallel.hpp"

namespace py = pybind11;

void bind_parallel(py::module_& m) {
  m.def("set_num_threads", [](int n) { lrs::set_num_threads(n); }, py::arg("n"),
        "Threads used by the core's parallel passes (n < 1 restores hardware concurrency).");
  m.def("get_num_threads", [] { return lrs::get_num_threads(); },
        "Threads used by the core's parallel passes.");
}
