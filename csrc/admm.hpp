// L + S ADMM solvers (weight space and activation-aware).  Python-free.
//
// Problem (docs/method.md): min_{W, L, S} F(W)  s.t.  W = L + S, rank(L) <= r (per
// column slice), S in the structured set with budget k; or the relaxed form with
// lam_nuclear ||L||_* + lam_sparse R(S).  F is
//   Weight:    1/2 ||W - W0||_F^2
//   Gram:      1/2 tr((W - W0) G (W - W0)^T)                      G (n, n) given
//   Nonlinear: 1/(2N) ||Y - act(W X + b)||_F^2, Y = act(W0 X + b), split Z = W X.
// All matrices are row-major.  The iteration is the one of
// lowrank_sparse/solve/torch_backend.py, step for step (L-step, S-step, [Z-step], dual
// step and residuals, penalty update, W-step).
//
// Files: admm.cpp (checks, dispatch), admm_general.cpp (the loop of every mode),
// admm_weight.cpp (the restructured weight-mode loop) with s_decode.hpp (its S
// decoding) and weight_kernels.hpp (its row kernels), admm_data.cpp (the data modes'
// eigenbasis), admm_lstep.cpp (the per-slice truncated SVD step shared by both loops),
// activation.hpp (activations and the Z-step).
#pragma once

#include <vector>

#include "activation.hpp"
#include "common.hpp"

namespace lrs {

enum class AdmmMode : int { Weight = 0, Gram = 1, Nonlinear = 2 };

// Implementation variants kept for comparisons (tests, benchmarks; from Python only
// through the private lowrank_sparse._core._Switches hook).  Every combination runs
// the same iterations; the defaults are the production path.
struct Switches {
  // Weight mode: the restructured loop (admm_weight.cpp: three (m, n) arrays, fused
  // passes) instead of the general one.
  bool weight_fused = true;
  // Fused loop: the residual pass also writes the next L-step input, assuming the
  // balanced penalty update; the separate pass that forms it then runs only in
  // iterations where the penalty changed otherwise (bitwise the same iterates).
  bool speculate_input = true;
  // QR of the truncated SVD's tall panels: CholeskyQR2 with a Householder fallback
  // (true) or always Householder (svd.hpp, SvdWorkspace::cholqr).
  bool cholesky_qr = true;
  // B's SVD inside the truncated SVD from its Gram when well conditioned (svd.hpp,
  // SvdWorkspace::gram_svd); false: always the QR of B^T + gesdd.
  bool gram_svd = true;
  // Fused loop: the AVX2 + FMA row kernels where the CPU has them (simd_available);
  // false: the baseline-ISA ones (bitwise the same results).
  bool simd = true;
};

// Everything that defines a solve but the arrays (AdmmData).
struct AdmmProblem {
  AdmmMode mode = AdmmMode::Weight;
  Activation activation = Activation::Identity;  // mode Nonlinear
  double negative_slope = 0.01;
  index_t rank = 0;    // rank of L per slice (0: no L)
  index_t slices = 1;  // column slices of L, n % slices == 0
  index_t p = 0;       // subspace size per slice, rank <= p <= min(m, n / slices)
  Structure structure;
  index_t k = 0;        // budget of S in groups (entries when unstructured); NM ignores it
  bool sparse = false;  // whether S exists at all
  bool relaxed = false;
  double lam_nuclear = 0, lam_sparse = 0;
  int max_iter = 300;
  double tol = 1e-4;
  double rho0 = 1.0, mu = 10.0, tau = 2.0, rho_growth = 1.0;
  int power_iters = 1;
  int newton_steps = 4;
  // Large GEMMs (the products with the (m, n) matrices) are split into this many
  // blocks on the core's threads (lrs::gemm_rm_split), each one BLAS call.  Use it with
  // BLAS limited to one thread (lowrank_sparse/solve/native.py does): the core then
  // owns all threads and LAPACK's small factorisations run single-threaded, without
  // the synchronisation cost of a multi-threaded BLAS on p-column panels.  1 = plain
  // BLAS calls (BLAS's own threading).
  int gemm_threads = 1;
  // Weight mode, fused loop: after the last iteration, replace S's values on its
  // support by those of W0 - L (the exact refit for that L and support) and report the
  // relative errors ||W0 - L - S|| / ||W0|| before and after (AdmmReport::refit_*).
  bool refit_weight = false;
  Switches switches;
};

// The arrays of a solve (not owned; row-major, read only).
template <class T>
struct AdmmData {
  index_t m = 0, n = 0;
  const T* W0 = nullptr;    // (m, n) original weight
  const T* gram = nullptr;  // (n, n) symmetric PSD, mode Gram
  const T* X = nullptr;     // (n, N) calibration inputs (columns = samples), mode Nonlinear
  index_t N = 0;
  const T* bias = nullptr;  // (m,) or nullptr (= 0), mode Nonlinear
  const T* V0 = nullptr;    // (slices, n / slices, p) orthonormal start of the right subspaces
};

// Wall-clock seconds per phase, summed over the iterations (steady_clock).
struct AdmmTiming {
  double svd_products = 0;  // Y = A V and B = Q^T A (2 (m, n, p) GEMMs per power iteration)
  double svd_qr = 0;        // QR of Y (m, p)
  double svd_small = 0;     // SVD of B via QR of B^T + gesdd (p, p) + (n, p, p) GEMM; U = Q Ub
  double svd = 0;           // the whole truncated SVD (the three above plus transposes)
  double lform = 0;         // L = U diag(s) Vt, one (m, r, n) GEMM (fused loop: with the P3 pass)
  double lform_gemm_thread = 0;  // fused loop: thread-seconds in P3's L tile GEMMs (summed
                                 // over threads, so up to threads x the wall time)
  double project = 0;       // S-step projection / prox
  double elementwise = 0;   // fused elementwise passes, residual sums, objective
  double wstep = 0;         // GEMMs of the data modes (M Q, W = WQ Q^T, M X, ...)
  double total = 0;         // the whole admm_solve call
};

// What a solve reports besides the factors.
struct AdmmReport {
  int iterations = 0;
  bool converged = false;
  std::vector<double> primal, dual, objective, rho;  // per iteration (relative)
  std::vector<double> primal_z, dual_z;              // per iteration, mode Nonlinear
  double rho_final = 0, rho_z_final = 0, gscale = 1;
  AdmmTiming timing;
  int qr_fallbacks = 0;    // SVD panels whose Cholesky QR fell back to Householder
  int gram_fallbacks = 0;  // iterations whose B was too ill-conditioned for the Gram path
  double refit_before = -1, refit_after = -1;  // refit_weight: relative errors (else -1)
  int band_hits = 0;  // fused loop: top-k cuts found in P3's band (topk_select skipped)
  int speculation_hits = 0;  // fused loop: iterations whose P0 was done by the previous P4
  bool simd_kernels = false;  // fused loop: its row kernels ran as AVX2 + FMA code
};

template <class T>
struct AdmmResult : AdmmReport {
  index_t rt = 0;      // columns of U per slice
  std::vector<T> U;    // (m, slices * rt)   U_i sqrt(s_i)
  std::vector<T> V;    // (slices * rt, n)   block-diagonal sqrt(s_i) V_i^T
  std::vector<T, Buffer<T>> S;  // (m, n)
};

// Runs the ADMM.  Throws std::invalid_argument on inconsistent sizes or settings and
// LapackError when LAPACK fails.  Allocates every buffer before the loop.
template <class T>
void admm_solve(const AdmmProblem& pb, const AdmmData<T>& data, AdmmResult<T>& out);

// Whether this CPU can run the fused loop's AVX2 + FMA row kernels (x86-64 builds
// with GCC or Clang; Switches::simd picks them when true).
bool simd_available();

}  // namespace lrs
