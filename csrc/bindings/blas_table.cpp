// Fills lrs::blas::table() from SciPy's cython_blas / cython_lapack capsules.
#include <pybind11/pybind11.h>

#include <string>

#include "blas.hpp"

namespace py = pybind11;

namespace {

template <class Fn>
void fetch(const py::dict& capi, const char* name, Fn& slot) {
  if (!capi.contains(name))
    throw std::runtime_error(std::string("SciPy does not export ") + name);
  py::object cap = capi[name];
  PyObject* obj = cap.ptr();
  void* ptr = PyCapsule_GetPointer(obj, PyCapsule_GetName(obj));
  if (ptr == nullptr) throw py::error_already_set();
  slot = reinterpret_cast<Fn>(ptr);
}

}  // namespace

void register_blas(py::module_&) {
  auto& t = lrs::blas::table();
  if (!t.loaded) {
    py::dict b = py::module_::import("scipy.linalg.cython_blas").attr("__pyx_capi__");
    py::dict l = py::module_::import("scipy.linalg.cython_lapack").attr("__pyx_capi__");
    fetch(b, "sgemm", t.s.gemm);
    fetch(b, "dgemm", t.d.gemm);
    fetch(b, "sgemv", t.s.gemv);
    fetch(b, "dgemv", t.d.gemv);
    fetch(b, "ssyrk", t.s.syrk);
    fetch(b, "dsyrk", t.d.syrk);
    fetch(b, "strsm", t.s.trsm);
    fetch(b, "dtrsm", t.d.trsm);
    fetch(l, "sgeqrf", t.s.geqrf);
    fetch(l, "dgeqrf", t.d.geqrf);
    fetch(l, "sorgqr", t.s.orgqr);
    fetch(l, "dorgqr", t.d.orgqr);
    fetch(l, "sgesdd", t.s.gesdd);
    fetch(l, "dgesdd", t.d.gesdd);
    fetch(l, "ssyevd", t.s.syevd);
    fetch(l, "dsyevd", t.d.syevd);
    fetch(l, "spotrf", t.s.potrf);
    fetch(l, "dpotrf", t.d.potrf);
    t.loaded = true;
  }
}
