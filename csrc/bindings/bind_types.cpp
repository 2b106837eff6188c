// The core's enums (Activation, Mode, StructureKind) and its Structure, shared by the
// prox and ADMM bindings.  Enum members are named as the Python side names them
// (lowrank_sparse.structure, lowrank_sparse._validate), so name <-> member is
// getattr(_core.Activation, name) / member.name.
#include <pybind11/pybind11.h>

#include <string>

#include "activation.hpp"
#include "admm.hpp"
#include "common.hpp"

namespace py = pybind11;
using lrs::index_t;

namespace {

std::string structure_repr(const lrs::Structure& s) {
  std::string kind = py::str(py::cast(s.kind).attr("name")).cast<std::string>();
  return "Structure(kind=" + kind + ", block=" + std::to_string(s.block) + ", nm_n=" +
         std::to_string(s.nm_n) + ", nm_m=" + std::to_string(s.nm_m) + ")";
}

}  // namespace

void bind_types(py::module_& m) {
  py::enum_<lrs::Activation>(m, "Activation", "Activation of the nonlinear ADMM mode.")
      .value("identity", lrs::Activation::Identity)
      .value("relu", lrs::Activation::Relu)
      .value("leaky_relu", lrs::Activation::LeakyRelu)
      .value("gelu", lrs::Activation::Gelu)
      .value("silu", lrs::Activation::Silu)
      .value("tanh", lrs::Activation::Tanh);
  py::enum_<lrs::AdmmMode>(m, "Mode", "Objective of the ADMM: weight space, Gram, nonlinear.")
      .value("weight", lrs::AdmmMode::Weight)
      .value("gram", lrs::AdmmMode::Gram)
      .value("nonlinear", lrs::AdmmMode::Nonlinear);
  py::enum_<lrs::StructureKind>(m, "StructureKind", "Sparsity pattern of S (csrc/common.hpp).")
      .value("unstructured", lrs::StructureKind::Unstructured)
      .value("row", lrs::StructureKind::Row)
      .value("column", lrs::StructureKind::Column)
      .value("channel", lrs::StructureKind::Channel)
      .value("nm", lrs::StructureKind::NM);
  py::class_<lrs::Structure>(m, "Structure",
                             "Sparsity structure of an (m, n) matrix: kind; block (kh*kw, "
                             "channel); nm_n of every nm_m entries of a row (N:M).")
      .def(py::init([](lrs::StructureKind kind, index_t block, int nm_n, int nm_m) {
             lrs::Structure s;
             s.kind = kind;
             s.block = block;
             s.nm_n = nm_n;
             s.nm_m = nm_m;
             return s;
           }),
           py::arg("kind") = lrs::StructureKind::Unstructured, py::arg("block") = 1,
           py::arg("nm_n") = 2, py::arg("nm_m") = 4)
      .def_readwrite("kind", &lrs::Structure::kind)
      .def_readwrite("block", &lrs::Structure::block)
      .def_readwrite("nm_n", &lrs::Structure::nm_n)
      .def_readwrite("nm_m", &lrs::Structure::nm_m)
      .def("__repr__", &structure_repr)
      .def("__eq__", [](const lrs::Structure& a, const lrs::Structure& b) {
        return a.kind == b.kind && a.block == b.block && a.nm_n == b.nm_n && a.nm_m == b.nm_m;
      });
}
