// The extension module lowrank_sparse._core: only calls one register_* / bind_* per area.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_blas(py::module_& m);
void register_errors(py::module_& m);
void bind_types(py::module_& m);
void bind_switches(py::module_& m);
void bind_parallel(py::module_& m);
void bind_prox(py::module_& m);
void bind_svd(py::module_& m);
void bind_admm(py::module_& m);
void bind_aq(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "lowrank_sparse C++ core: structured-sparsity operators, warm-started truncated SVD, "
            "L+S ADMM and additive quantization over SciPy's BLAS/LAPACK";
  register_blas(m);
  register_errors(m);
  bind_types(m);
  bind_switches(m);
  bind_parallel(m);
  bind_prox(m);
  bind_svd(m);
  bind_admm(m);
  bind_aq(m);
}
