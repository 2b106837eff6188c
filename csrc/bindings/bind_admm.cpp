// pybind11 bindings of the L + S ADMM (csrc/admm.hpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>

#include "admm.hpp"

namespace py = pybind11;

namespace {

template <class T>
using arr = py::array_t<T, py::array::c_style>;

template <class T>
void check(const arr<T>& a, const char* name, std::initializer_list<py::ssize_t> shape) {
  if (a.ndim() != static_cast<py::ssize_t>(shape.size()))
    throw py::value_error(std::string(name) + ": expected " + std::to_string(shape.size()) +
                          "-D array, got " + std::to_string(a.ndim()) + "-D");
  py::ssize_t i = 0;
  for (py::ssize_t s : shape) {
    if (a.shape(i) != s)
      throw py::value_error(std::string(name) + ": dimension " + std::to_string(i) + " is " +
                            std::to_string(a.shape(i)) + ", expected " + std::to_string(s));
    ++i;
  }
  const T* p = a.data();
  for (py::ssize_t j = 0; j < a.size(); ++j)
    if (!std::isfinite(p[j])) throw py::value_error(std::string(name) + " contains NaN or Inf");
}

template <class T, class A>
py::array_t<T> to_array(std::vector<T, A>&& v, std::vector<py::ssize_t> shape) {
  using Vec = std::vector<T, A>;
  auto* heap = new Vec(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<Vec*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

template <class T>
py::dict solve(const arr<T>& W0, int mode, std::optional<arr<T>> gram, std::optional<arr<T>> X,
               std::optional<arr<T>> bias, int activation, double negative_slope, long rank,
               long slices, long p, int kind, long block, int nm_n, int nm_m, long k, bool sparse,
               bool relaxed, double lam_nuclear, double lam_sparse, int max_iter, double tol,
               double rho0, double mu, double tau, double rho_growth, int power_iters,
               int newton_steps, std::optional<arr<T>> V0, int gemm_threads, bool weight_fused,
               bool cholesky_qr, bool speculate_input, bool gram_svd,
               bool refit_weight) {
  if (W0.ndim() != 2) throw py::value_error("W0 must be 2-D");
  const py::ssize_t m = W0.shape(0), n = W0.shape(1);
  check(W0, "W0", {m, n});
  if (mode < 0 || mode > 2) throw py::value_error("mode must be 0 (weight), 1 (gram), 2 (nonlinear)");
  if (activation < 0 || activation > 5) throw py::value_error("unknown activation code");
  if (kind < 0 || kind > 4) throw py::value_error("unknown structure code");
  if (slices < 1 || n % slices != 0) throw py::value_error("slices must divide n");
  if (rank < 0 || rank > std::min<long>(m, n / slices)) throw py::value_error("rank out of range");
  if (rank > 0 && (p < rank || p > std::min<long>(m, n / slices)))
    throw py::value_error("p must satisfy rank <= p <= min(m, n/slices)");
  if (rank == 0 && !sparse) throw py::value_error("rank 0 and no sparse part: nothing to fit");
  if (max_iter < 1 || !(tol > 0) || !(rho0 > 0) || !(mu > 1) || !(tau > 1) || !(rho_growth >= 1) ||
      power_iters < 1 || newton_steps < 0 || gemm_threads < 1)
    throw py::value_error("bad iteration settings");
  lrs::Structure st;
  st.kind = static_cast<lrs::StructureKind>(kind);
  st.block = block;
  st.nm_n = nm_n;
  st.nm_m = nm_m;
  if (st.kind == lrs::StructureKind::Channel && (block < 1 || n % block != 0))
    throw py::value_error("channel structure: block must divide n");
  if (st.kind == lrs::StructureKind::NM && (nm_n < 1 || nm_m <= nm_n || n % nm_m != 0))
    throw py::value_error("N:M structure: need 1 <= N < M and M dividing n");
  if (k < 0) throw py::value_error("k must be >= 0");

  lrs::AdmmProblem<T> pb;
  pb.m = m;
  pb.n = n;
  pb.W0 = W0.data();
  pb.mode = static_cast<lrs::AdmmMode>(mode);
  if (mode == 1) {
    if (!gram) throw py::value_error("mode gram needs gram");
    check(*gram, "gram", {n, n});
    pb.gram = gram->data();
  }
  if (mode == 2) {
    if (!X) throw py::value_error("mode nonlinear needs X");
    if (X->ndim() != 2 || X->shape(0) != n || X->shape(1) < 1)
      throw py::value_error("X must be (n, N) with N >= 1");
    check(*X, "X", {n, X->shape(1)});
    pb.X = X->data();
    pb.N = X->shape(1);
    if (bias) {
      check(*bias, "bias", {m});
      pb.bias = bias->data();
    }
  }
  if (rank > 0) {
    if (!V0) throw py::value_error("V0 is required when rank > 0");
    check(*V0, "V0", {slices, n / slices, p});
    pb.V0 = V0->data();
  }
  pb.act = static_cast<lrs::Activation>(activation);
  pb.negative_slope = negative_slope;
  pb.rank = rank;
  pb.slices = slices;
  pb.p = p;
  pb.structure = st;
  pb.k = k;
  pb.sparse = sparse;
  pb.relaxed = relaxed;
  pb.lam_nuclear = lam_nuclear;
  pb.lam_sparse = lam_sparse;
  pb.max_iter = max_iter;
  pb.tol = tol;
  pb.rho0 = rho0;
  pb.mu = mu;
  pb.tau = tau;
  pb.rho_growth = rho_growth;
  pb.power_iters = power_iters;
  pb.newton_steps = newton_steps;
  pb.gemm_threads = gemm_threads;
  pb.weight_fused = weight_fused;
  pb.cholqr = cholesky_qr;
  pb.speculate_input = speculate_input;
  pb.gram_svd = gram_svd;
  pb.refit_weight = refit_weight;

  lrs::AdmmResult<T> res;
  {
    py::gil_scoped_release release;
    lrs::admm_solve<T>(pb, res);
  }
  const py::ssize_t rt = res.rt;
  py::dict out;
  out["U"] = to_array(std::move(res.U), {m, slices * rt});
  out["V"] = to_array(std::move(res.V), {slices * rt, n});
  out["S"] = to_array(std::move(res.S), {m, n});
  out["iterations"] = res.iterations;
  out["converged"] = res.converged;
  out["primal"] = res.primal;
  out["dual"] = res.dual;
  out["objective"] = res.objective;
  out["rho"] = res.rho;
  out["primal_z"] = res.primal_z;
  out["dual_z"] = res.dual_z;
  out["rho_final"] = res.rho_final;
  out["rho_z_final"] = res.rho_z_final;
  out["gscale"] = res.gscale;
  const lrs::AdmmTiming& tm = res.timing;
  py::dict timing;
  timing["svd_products"] = tm.svd_products;
  timing["svd_qr"] = tm.svd_qr;
  timing["svd_small"] = tm.svd_small;
  timing["svd"] = tm.svd;
  timing["lform"] = tm.lform;
  timing["project"] = tm.project;
  timing["elementwise"] = tm.elementwise;
  timing["wstep"] = tm.wstep;
  timing["total"] = tm.total;
  timing["lform_gemm_thread"] = tm.lform_gemm_thread;
  out["timing"] = timing;
  out["qr_fallbacks"] = res.qr_fallbacks;
  out["gram_fallbacks"] = res.gram_fallbacks;
  out["refit_before"] = res.refit_before;
  out["refit_after"] = res.refit_after;
  out["speculation_hits"] = res.speculation_hits;
  out["band_hits"] = res.band_hits;
  return out;
}

template <class T>
void def_solve(py::module_& m, const char* name) {
  m.def(name, &solve<T>, py::arg("W0").noconvert(), py::arg("mode"), py::arg("gram").noconvert(), py::arg("X").noconvert(),
        py::arg("bias").noconvert(), py::arg("activation"), py::arg("negative_slope"), py::arg("rank"),
        py::arg("slices"), py::arg("p"), py::arg("kind"), py::arg("block"), py::arg("nm_n"),
        py::arg("nm_m"), py::arg("k"), py::arg("sparse"), py::arg("relaxed"),
        py::arg("lam_nuclear"), py::arg("lam_sparse"), py::arg("max_iter"), py::arg("tol"),
        py::arg("rho0"), py::arg("mu"), py::arg("tau"), py::arg("rho_growth"),
        py::arg("power_iters"), py::arg("newton_steps"), py::arg("V0").noconvert(),
        py::arg("gemm_threads") = 1, py::arg("weight_fused") = true,
        py::arg("cholesky_qr") = true, py::arg("speculate_input") = true,
        py::arg("gram_svd") = true, py::arg("refit_weight") = false,
        "L + S ADMM (see csrc/admm.hpp and lowrank_sparse/solve/native.py).  Arrays must be "
        "C-contiguous of this function's dtype; returns a dict with U (m, slices*rt), "
        "V (slices*rt, n), S (m, n), iterations, converged, per-iteration histories and "
        "timing (seconds per phase).  gemm_threads > 1 splits the large GEMMs over the core's "
        "threads; use it with BLAS limited to one thread.  weight_fused=False runs weight mode "
        "through the general loop instead of the restructured one (same iterations; for "
        "comparisons).  cholesky_qr=False factors the SVD's tall panels by Householder QR "
        "instead of CholeskyQR2 (which falls back to Householder by itself when needed).  speculate_input=False: the "
        "fused weight loop always forms the L-step input in its own pass (P0).  gram_svd=False: the SVD of the "
        "(p, n) panel always goes through its QR and gesdd instead of its Gram.  refit_weight (weight mode, fused "
        "loop): S's values on its support replaced by those of W0 - L after the last iteration; the relative "
        "errors before and after are returned as refit_before / refit_after (-1 when not done).");
}

template <class T>
py::array_t<T> zstep_py(const arr<T>& y, const arr<T>& c, const arr<T>& u0, double rho,
                        int activation, double slope, int newton_steps) {
  if (y.size() != c.size() || y.size() != u0.size())
    throw py::value_error("y, c, u0 must have the same size");
  if (!(rho > 0)) throw py::value_error("rho must be > 0");
  if (activation < 0 || activation > 5) throw py::value_error("unknown activation code");
  std::vector<T> u(u0.data(), u0.data() + u0.size());
  {
    py::gil_scoped_release release;
    lrs::zstep<T>(y.data(), c.data(), u.data(), y.size(), static_cast<T>(rho),
                  static_cast<lrs::Activation>(activation), static_cast<T>(slope), newton_steps);
  }
  return to_array(std::move(u), {static_cast<py::ssize_t>(y.size())});
}

}  // namespace

void bind_admm(py::module_& m) {
  m.def("simd_available", &lrs::simd_available,
        "Whether the fused ADMM loop's row kernels can run as AVX2 + FMA code on this CPU.");
  m.def("simd_enabled", &lrs::simd_enabled,
        "Whether they do (available and not switched off by set_simd_enabled(False)).");
  m.def("set_simd_enabled", &lrs::set_simd_enabled, py::arg("on"),
        "Use the AVX2 + FMA row kernels when available (default) or the baseline ones; "
        "results are bitwise the same either way (kept for comparisons).");
  def_solve<float>(m, "admm_solve_f32");
  def_solve<double>(m, "admm_solve_f64");
  m.def("admm_zstep_f32", &zstep_py<float>, py::arg("y").noconvert(), py::arg("c").noconvert(), py::arg("u0").noconvert(),
        py::arg("rho"), py::arg("activation"), py::arg("slope"), py::arg("newton_steps"),
        "Elementwise Z-step argmin_u 1/2 (y - act(u))^2 + rho/2 (u - c)^2 (flattened).");
  m.def("admm_zstep_f64", &zstep_py<double>, py::arg("y").noconvert(), py::arg("c").noconvert(), py::arg("u0").noconvert(),
        py::arg("rho"), py::arg("activation"), py::arg("slope"), py::arg("newton_steps"),
        "Elementwise Z-step argmin_u 1/2 (y - act(u))^2 + rho/2 (u - c)^2 (flattened).");
}
