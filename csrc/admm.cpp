// admm_solve: checks the problem and runs the loop it needs (admm.hpp).
#include "admm.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "admm_detail.hpp"
#include "blas.hpp"
#include "prox.hpp"

namespace lrs {

namespace admm_detail {
template <class T>
void admm_weight_fused(const AdmmProblem& pb, const AdmmData<T>& d, AdmmResult<T>& out,
                       double t_start, double nW);
template <class T>
void admm_general(const AdmmProblem& pb, const AdmmData<T>& d, AdmmResult<T>& out,
                  double t_start, double nW);
}  // namespace admm_detail

bool simd_available() {
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

namespace {

void fail(const std::string& what) { throw std::invalid_argument("lrs admm: " + what); }

void check_structure(const Structure& st, index_t n) {
  if (st.kind == StructureKind::Channel && (st.block < 1 || n % st.block != 0))
    fail("channel structure: block must divide n");
  if (st.kind == StructureKind::NM && (st.nm_n < 1 || st.nm_m <= st.nm_n || n % st.nm_m != 0))
    fail("N:M structure: need 1 <= N < M and M dividing n");
}

// The problem's settings against the data's sizes (std::invalid_argument).
template <class T>
void check_problem(const AdmmProblem& pb, const AdmmData<T>& d) {
  const index_t m = d.m, n = d.n, r = pb.rank, g = pb.slices, p = pb.p;
  if (m < 1 || n < 1 || d.W0 == nullptr) fail("empty W0");
  if (g < 1 || n % g != 0) fail("slices must divide n");
  const index_t cap = std::min(m, n / g);
  if (r < 0 || r > cap) fail("rank out of range (0 <= rank <= min(m, n/slices))");
  if (r > 0 && (p < r || p > cap)) fail("p must satisfy rank <= p <= min(m, n/slices)");
  if (r > 0 && d.V0 == nullptr) fail("V0 is required when rank > 0");
  if (r == 0 && !pb.sparse) fail("rank 0 and no sparse part: nothing to fit");
  if (pb.k < 0) fail("k must be >= 0");
  check_structure(pb.structure, n);
  if (pb.max_iter < 1 || !(pb.tol > 0) || !(pb.rho0 > 0) || !(pb.tau > 1) || !(pb.mu > 1) ||
      !(pb.rho_growth >= 1) || pb.power_iters < 1 || pb.newton_steps < 0 || pb.gemm_threads < 1)
    fail("bad iteration settings");
  if (pb.mode == AdmmMode::Gram && d.gram == nullptr) fail("mode gram needs gram");
  if (pb.mode == AdmmMode::Nonlinear && (d.X == nullptr || d.N < 1)) fail("mode nonlinear needs X");
  admm_detail::as_int(m, "m");
  admm_detail::as_int(n, "n");
  admm_detail::as_int(d.N, "N");
}

}  // namespace

template <class T>
void admm_solve(const AdmmProblem& pb, const AdmmData<T>& d, AdmmResult<T>& out) {
  blas::require_loaded();
  check_problem(pb, d);
  const index_t m = d.m, n = d.n, mn = m * n, g = pb.slices, r = pb.rank;
  out = AdmmResult<T>();
  out.rt = r;
  const double t_start = admm_detail::now();
  const double nW = admm_detail::nrm(d.W0, mn);
  if (nW == 0.0) {
    out.S.assign(static_cast<size_t>(mn), T(0));
    out.U.assign(static_cast<size_t>(m * g * r), T(0));
    out.V.assign(static_cast<size_t>(g * r * n), T(0));
    out.converged = true;
    return;
  }
  if (pb.mode == AdmmMode::Weight && pb.switches.weight_fused)
    admm_detail::admm_weight_fused(pb, d, out, t_start, nW);
  else
    admm_detail::admm_general(pb, d, out, t_start, nW);
}

template void admm_solve<float>(const AdmmProblem&, const AdmmData<float>&, AdmmResult<float>&);
template void admm_solve<double>(const AdmmProblem&, const AdmmData<double>&, AdmmResult<double>&);

}  // namespace lrs
