// Pieces shared by the two ADMM loops (admm_general.cpp, admm_weight.cpp): the L-step's
// low-rank state and its one per-slice truncated SVD step (admm_lstep.cpp), the penalty
// update, clocks and norms.  Internal to the core.  Python-free.
#pragma once

#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "admm.hpp"
#include "parallel.hpp"
#include "svd.hpp"

namespace lrs::admm_detail {

inline double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ||x||_2 of x (n,), accumulated in double.
template <class T>
double nrm(const T* x, index_t n) {
  return parallel_root_sum(n, [&](index_t i) { return static_cast<double>(x[i]) * x[i]; });
}

inline int as_int(index_t v, const char* what) {
  if (v < 0 || v > 2147483647) throw std::invalid_argument(std::string("lrs admm: ") + what + " too large");
  return static_cast<int>(v);
}

// Factor by which rho is multiplied: residual balancing (Boyd et al. 2011, 3.4.1) times
// the slow geometric increase (torch_backend.balance).
inline double balance(double r, double s, double mu, double tau, double growth) {
  double f = 1.0;
  if (r > mu * s)
    f = tau;
  else if (s > mu * r)
    f = 1.0 / tau;
  return f * growth;
}

// Vectors of the per-iteration histories, reserved for max_iter entries.
inline void reserve_histories(AdmmReport& out, int max_iter) {
  const auto cap = static_cast<size_t>(max_iter);
  out.primal.reserve(cap);
  out.dual.reserve(cap);
  out.objective.reserve(cap);
  out.rho.reserve(cap);
}

// The L-step's state, per column slice s of g (nsl = n / g columns each):
//   Vs[s] (p, nsl)  the right subspace as rows: warm start of the next SVD; its first
//                   rank rows are L's right singular vectors (Vt)
//   U[s]  (m, r)    left singular vectors,  sv[s] (r,) singular values (shrunk when relaxed)
//   Usv[s] (m, r)   U[s] diag(sv[s]),       q[s] the triplets kept (r; fewer when relaxed)
// so that L[:, slice s] = Usv[s] Vt[s] (Vt[s] = the first r rows of Vs[s]).
// torch_backend.py: Vs, Us, svs, Vts.
template <class T>
struct LowRank {
  index_t m = 0, n = 0, g = 1, r = 0, p = 0, nsl = 0;
  int power_iters = 1;
  int gemm_threads = 1;
  std::vector<T> Vs, U, sv, Usv;
  std::vector<T> slice;  // (m, nsl): one slice of the SVD's input (slices > 1)
  std::vector<T> Lsl;    // (m, nsl): one slice of L (form_L, slices > 1)
  std::vector<index_t> q;
  SvdWorkspace<T> ws;

  // Sizes and the start V0 (g, nsl, p) from the problem.
  void init(const AdmmProblem& pb, index_t m, index_t n, const T* V0);
  // L-step on A (m, n): per slice the warm-started truncated SVD of A[:, slice], then
  // (relaxed) the singular-value threshold lam_nuclear / rho, and Usv.
  void svd_step(const T* A, bool relaxed, double lam_nuclear, T rho);
  // L (m, n) = Usv Vt, one GEMM per slice (split over gemm_threads).
  void form_L(T* L);
  // L[i0 : i0 + len, j0 : j0 + w] into tile (len, w) (ld w), one small GEMM per slice;
  // with slices > 1 the tile spans every column (j0 = 0, w = n).
  void form_tile(index_t i0, index_t len, index_t j0, index_t w, T* tile) const;
  // Right singular vectors of slice s as rows, (r, nsl) with leading dimension nsl.
  const T* Vt(index_t s) const { return Vs.data() + s * p * nsl; }
  // out.U (m, g rt) = U_i sqrt(s_i), out.V (g rt, n) = block-diagonal sqrt(s_i) V_i^T
  // with rt = r, or the most triplets kept by a slice when relaxed.
  void write_factors(AdmmResult<T>& out, bool relaxed) const;
};

}  // namespace lrs::admm_detail
