// The extension module lowrank_sparse._core: only calls one bind_* per area.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_blas(py::module_& m);
void bind_prox(py::module_& m);
void bind_svd(py::module_& m);
void bind_admm(py::module_& m);
void bind_aq(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "lowrank_sparse C++ core: structured-sparsity operators, warm-started truncated SVD, "
            "L+S ADMM and additive quantization over SciPy's BLAS/LAPACK";
  bind_blas(m);
  bind_prox(m);
  bind_svd(m);
  bind_admm(m);
  bind_aq(m);
}
