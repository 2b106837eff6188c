// pybind11 bindings of the L + S ADMM (csrc/admm.hpp): the typed problem
// (_core.AdmmProblem = lrs::AdmmProblem, everything but the arrays), the result
// (_core.AdmmResult: lrs::AdmmReport plus U, V, S), admm_solve and the Z-step.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>

#include "admm.hpp"
#include "arrays.hpp"
#include "switches.hpp"

namespace py = pybind11;
using lrs::index_t;
using lrs_py::Float;

namespace {

// The result as Python sees it: the report, and the factors as numpy arrays.
struct PyAdmmResult : lrs::AdmmReport {
  py::array U, V, S;
};

template <class T, class A>
py::array_t<T> to_array(std::vector<T, A>&& v, std::vector<py::ssize_t> shape) {
  using Vec = std::vector<T, A>;
  auto* heap = new Vec(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<Vec*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

// An optional array argument: nullptr for None, else checked like W0's kin.
template <class T>
const T* optional_arg(const py::object& o, const char* name,
                      std::initializer_list<py::ssize_t> shape) {
  if (o.is_none()) return nullptr;
  auto a = lrs_py::typed<T>(o, name, -1);
  lrs_py::check_shape(a, name, shape);
  lrs_py::check_finite(a, name);
  return a.data();
}

template <class T>
PyAdmmResult solve(const lrs::AdmmProblem& problem, const py::array& W0a, const py::object& gram,
                   const py::object& X, const py::object& bias, const py::object& V0) {
  auto W0 = lrs_py::typed<T>(W0a, "W0", 2);
  lrs_py::check_finite(W0, "W0");
  lrs::AdmmData<T> d;
  d.m = W0.shape(0);
  d.n = W0.shape(1);
  d.W0 = W0.data();
  const py::ssize_t m = d.m, n = d.n;
  lrs::AdmmProblem pb = problem;
  pb.switches = lrs_py::admm_switches();
  if (pb.mode == lrs::AdmmMode::Gram) d.gram = optional_arg<T>(gram, "gram", {n, n});
  if (pb.mode == lrs::AdmmMode::Nonlinear) {
    d.X = optional_arg<T>(X, "X", {n, -1});
    d.N = d.X ? py::reinterpret_borrow<py::array>(X).shape(1) : 0;
    d.bias = optional_arg<T>(bias, "bias", {m});
  }
  if (pb.rank > 0) {
    if (V0.is_none()) throw py::value_error("V0 is required when rank > 0");
    if (pb.slices < 1 || n % pb.slices != 0) throw py::value_error("slices must divide n");
    d.V0 = optional_arg<T>(V0, "V0", {pb.slices, n / pb.slices, pb.p});
  }
  lrs::AdmmResult<T> res;
  {
    py::gil_scoped_release release;
    lrs::admm_solve<T>(pb, d, res);
  }
  const py::ssize_t cols = pb.slices * res.rt;
  PyAdmmResult out;
  static_cast<lrs::AdmmReport&>(out) = std::move(static_cast<lrs::AdmmReport&>(res));
  out.U = to_array(std::move(res.U), {m, cols});
  out.V = to_array(std::move(res.V), {cols, n});
  out.S = to_array(std::move(res.S), {m, n});
  return out;
}

PyAdmmResult solve_any(const lrs::AdmmProblem& problem, const py::object& W0, const py::object& gram,
                       const py::object& X, const py::object& bias, const py::object& V0) {
  py::array a = lrs_py::as_array(W0, "W0");
  if (lrs_py::float_kind(a, "W0") == Float::F32) return solve<float>(problem, a, gram, X, bias, V0);
  return solve<double>(problem, a, gram, X, bias, V0);
}

template <class T>
py::array zstep_typed(const py::array& ya, const py::object& c, const py::object& u0, double rho,
                      lrs::Activation act, double slope, int newton_steps) {
  auto y = lrs_py::typed<T>(ya, "y", -1);
  auto ca = lrs_py::typed<T>(c, "c", -1);
  auto ua = lrs_py::typed<T>(u0, "u0", -1);
  if (y.size() != ca.size() || y.size() != ua.size())
    throw py::value_error("y, c, u0 must have the same size");
  lrs_py::check_finite(y, "y");
  lrs_py::check_finite(ca, "c");
  lrs_py::check_finite(ua, "u0");
  if (!(rho > 0)) throw py::value_error("rho must be > 0");
  if (newton_steps < 0) throw py::value_error("newton_steps must be >= 0");
  std::vector<T> u(ua.data(), ua.data() + ua.size());
  {
    py::gil_scoped_release release;
    lrs::zstep<T>(y.data(), ca.data(), u.data(), y.size(), static_cast<T>(rho), act,
                  static_cast<T>(slope), newton_steps);
  }
  return to_array(std::move(u), {static_cast<py::ssize_t>(u.size())});
}

py::array zstep_any(const py::object& y, const py::object& c, const py::object& u0, double rho,
                    lrs::Activation act, double slope, int newton_steps) {
  py::array a = lrs_py::as_array(y, "y");
  if (lrs_py::float_kind(a, "y") == Float::F32)
    return zstep_typed<float>(a, c, u0, rho, act, slope, newton_steps);
  return zstep_typed<double>(a, c, u0, rho, act, slope, newton_steps);
}

void bind_problem(py::module_& m);
void bind_result(py::module_& m);

}  // namespace

void bind_admm(py::module_& m) {
  bind_problem(m);
  bind_result(m);
  m.def("simd_available", &lrs::simd_available,
        "Whether the fused ADMM loop's row kernels can run as AVX2 + FMA code on this CPU.");
  m.def("admm_solve", &solve_any, py::arg("problem"), py::arg("W0"), py::kw_only(),
        py::arg("gram") = py::none(), py::arg("X") = py::none(), py::arg("bias") = py::none(),
        py::arg("V0") = py::none(),
        "L + S ADMM of `problem` on W0 (m, n), float32 or float64.  The other arrays have "
        "W0's dtype and are C-contiguous: gram (n, n) for mode gram; X (n, N) and bias (m,) "
        "(optional) for mode nonlinear; V0 (slices, n / slices, p) when rank > 0.  Returns an "
        "AdmmResult.  Raises lowrank_sparse.errors.LapackError when LAPACK fails.");
  m.def("zstep", &zstep_any, py::arg("y"), py::arg("c"), py::arg("u0"), py::arg("rho"),
        py::arg("activation"), py::arg("slope"), py::arg("newton_steps"),
        "Elementwise Z-step argmin_u 1/2 (y - act(u))^2 + rho/2 (u - c)^2 (flattened), "
        "float32 or float64; u0 the start of the smooth activations' Newton steps.");
}

namespace {

void bind_problem(py::module_& m) {
  using P = lrs::AdmmProblem;
  py::class_<P>(m, "AdmmProblem",
                "Everything that defines an ADMM solve but the arrays (csrc/admm.hpp).  Keyword "
                "arguments set the attributes of the same names; the rest keep the core's defaults.")
      .def(py::init([](const py::kwargs& kw) {
        P p;
        py::object self = py::cast(&p, py::return_value_policy::reference);
        for (const auto& item : kw) py::setattr(self, item.first, item.second);
        return p;
      }))
      .def_readwrite("mode", &P::mode)
      .def_readwrite("activation", &P::activation)
      .def_readwrite("negative_slope", &P::negative_slope)
      .def_readwrite("rank", &P::rank)
      .def_readwrite("slices", &P::slices)
      .def_readwrite("p", &P::p)
      .def_readwrite("structure", &P::structure)
      .def_readwrite("k", &P::k)
      .def_readwrite("sparse", &P::sparse)
      .def_readwrite("relaxed", &P::relaxed)
      .def_readwrite("lam_nuclear", &P::lam_nuclear)
      .def_readwrite("lam_sparse", &P::lam_sparse)
      .def_readwrite("max_iter", &P::max_iter)
      .def_readwrite("tol", &P::tol)
      .def_readwrite("rho0", &P::rho0)
      .def_readwrite("mu", &P::mu)
      .def_readwrite("tau", &P::tau)
      .def_readwrite("rho_growth", &P::rho_growth)
      .def_readwrite("power_iters", &P::power_iters)
      .def_readwrite("newton_steps", &P::newton_steps)
      .def_readwrite("gemm_threads", &P::gemm_threads)
      .def_readwrite("refit_weight", &P::refit_weight);
}

py::dict timing_dict(const lrs::AdmmTiming& t) {
  py::dict d;
  d["svd_products"] = t.svd_products;
  d["svd_qr"] = t.svd_qr;
  d["svd_small"] = t.svd_small;
  d["svd"] = t.svd;
  d["lform"] = t.lform;
  d["lform_gemm_thread"] = t.lform_gemm_thread;
  d["project"] = t.project;
  d["elementwise"] = t.elementwise;
  d["wstep"] = t.wstep;
  d["total"] = t.total;
  return d;
}

void bind_result(py::module_& m) {
  using R = PyAdmmResult;
  using Rep = lrs::AdmmReport;
  py::class_<lrs::AdmmTiming>(m, "AdmmTiming", "Seconds per phase, summed over the iterations.")
      .def_readonly("svd_products", &lrs::AdmmTiming::svd_products)
      .def_readonly("svd_qr", &lrs::AdmmTiming::svd_qr)
      .def_readonly("svd_small", &lrs::AdmmTiming::svd_small)
      .def_readonly("svd", &lrs::AdmmTiming::svd)
      .def_readonly("lform", &lrs::AdmmTiming::lform)
      .def_readonly("lform_gemm_thread", &lrs::AdmmTiming::lform_gemm_thread)
      .def_readonly("project", &lrs::AdmmTiming::project)
      .def_readonly("elementwise", &lrs::AdmmTiming::elementwise)
      .def_readonly("wstep", &lrs::AdmmTiming::wstep)
      .def_readonly("total", &lrs::AdmmTiming::total)
      .def("as_dict", &timing_dict, "The phases as a dict {name: seconds}.");
  py::class_<R>(m, "AdmmResult",
                "U (m, slices*rt), V (slices*rt, n), S (m, n) and the solve's report "
                "(csrc/admm.hpp, AdmmReport).")
      .def_readonly("U", &R::U)
      .def_readonly("V", &R::V)
      .def_readonly("S", &R::S)
      .def_readonly("iterations", &Rep::iterations)
      .def_readonly("converged", &Rep::converged)
      .def_readonly("primal", &Rep::primal)
      .def_readonly("dual", &Rep::dual)
      .def_readonly("objective", &Rep::objective)
      .def_readonly("rho", &Rep::rho)
      .def_readonly("primal_z", &Rep::primal_z)
      .def_readonly("dual_z", &Rep::dual_z)
      .def_readonly("rho_final", &Rep::rho_final)
      .def_readonly("rho_z_final", &Rep::rho_z_final)
      .def_readonly("gscale", &Rep::gscale)
      .def_readonly("timing", &Rep::timing)
      .def_readonly("qr_fallbacks", &Rep::qr_fallbacks)
      .def_readonly("gram_fallbacks", &Rep::gram_fallbacks)
      .def_readonly("refit_before", &Rep::refit_before)
      .def_readonly("refit_after", &Rep::refit_after)
      .def_readonly("band_hits", &Rep::band_hits)
      .def_readonly("speculation_hits", &Rep::speculation_hits)
      .def_readonly("simd_kernels", &Rep::simd_kernels);
}

}  // namespace
