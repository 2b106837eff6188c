// lowrank_sparse._core._Switches (switches.hpp).  Not part of the documented API: the
// tests and benchmarks that compare implementation variants use it, e.g.
//   with _core._Switches(weight_fused=False): solve_native(...)
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "switches.hpp"

namespace py = pybind11;

namespace {

// An override per switch (nullopt: production).
struct Overrides {
  std::optional<bool> weight_fused, speculate_input, cholesky_qr, gram_svd, simd;
};

Overrides& active() {
  static Overrides o;
  return o;
}

// One `with` block: the overrides it sets, and those it replaced (restored on exit).
struct Scope {
  Overrides set, saved;
  bool entered = false;
};

void set_if(const std::optional<bool>& v, std::optional<bool>& slot) {
  if (v) slot = v;
}

Scope& enter(Scope& s) {
  if (s.entered) throw py::value_error("_Switches: already entered");
  s.saved = active();
  Overrides& a = active();
  set_if(s.set.weight_fused, a.weight_fused);
  set_if(s.set.speculate_input, a.speculate_input);
  set_if(s.set.cholesky_qr, a.cholesky_qr);
  set_if(s.set.gram_svd, a.gram_svd);
  set_if(s.set.simd, a.simd);
  s.entered = true;
  return s;
}

std::string repr(const Scope& s) {
  std::string out = "_Switches(";
  auto add = [&](const char* name, const std::optional<bool>& v) {
    if (!v) return;
    if (out.back() != '(') out += ", ";
    out += std::string(name) + "=" + (*v ? "True" : "False");
  };
  add("weight_fused", s.set.weight_fused);
  add("speculate_input", s.set.speculate_input);
  add("cholesky_qr", s.set.cholesky_qr);
  add("gram_svd", s.set.gram_svd);
  add("simd", s.set.simd);
  return out + ")";
}

}  // namespace

namespace lrs_py {

lrs::Switches admm_switches() {
  const Overrides& o = active();
  lrs::Switches s;
  s.weight_fused = o.weight_fused.value_or(s.weight_fused);
  s.speculate_input = o.speculate_input.value_or(s.speculate_input);
  s.cholesky_qr = o.cholesky_qr.value_or(s.cholesky_qr);
  s.gram_svd = o.gram_svd.value_or(s.gram_svd);
  s.simd = o.simd.value_or(s.simd);
  return s;
}

SvdSwitches svd_switches() {
  const Overrides& o = active();
  SvdSwitches s;
  s.cholesky_qr = o.cholesky_qr.value_or(s.cholesky_qr);
  s.gram_svd = o.gram_svd.value_or(s.gram_svd);
  return s;
}

}  // namespace lrs_py

void bind_switches(py::module_& m) {
  py::class_<Scope>(m, "_Switches",
                    "Private: implementation variants for comparisons, inside a with block "
                    "(None: production).  weight_fused (weight mode's restructured loop), "
                    "speculate_input (its speculative L-step input), cholesky_qr (CholeskyQR2 "
                    "panels in the truncated SVD), gram_svd (B's SVD from its Gram; the ADMM's "
                    "production path, not the standalone SVD's), simd (AVX2 + FMA row kernels).")
      .def(py::init([](std::optional<bool> weight_fused, std::optional<bool> speculate_input,
                       std::optional<bool> cholesky_qr, std::optional<bool> gram_svd,
                       std::optional<bool> simd) {
             Scope s;
             s.set = {weight_fused, speculate_input, cholesky_qr, gram_svd, simd};
             return s;
           }),
           py::kw_only(), py::arg("weight_fused") = py::none(),
           py::arg("speculate_input") = py::none(), py::arg("cholesky_qr") = py::none(),
           py::arg("gram_svd") = py::none(), py::arg("simd") = py::none())
      .def("__enter__", &enter, py::return_value_policy::reference)
      .def("__exit__",
           [](Scope& s, const py::object&, const py::object&, const py::object&) {
             if (s.entered) active() = s.saved;
             s.entered = false;
             return false;
           })
      .def("__repr__", &repr);
}
