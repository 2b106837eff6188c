// Warm-started truncated SVD by randomized subspace iteration, and
// singular-value thresholding.  Python-free; BLAS/LAPACK through blas.hpp.
#pragma once

#include <vector>

#include "common.hpp"

namespace lrs {

// Reusable buffers so an ADMM loop allocates nothing per iteration (they grow on
// the first call for a shape and are reused after).  One workspace per thread.
template <class T>
struct SvdWorkspace {
  std::vector<T> Y;        // (p, m): Y^T, then Q^T after the QR
  std::vector<T> B;        // (p, n): Q^T A, then (after geqrf + orgqr of B^T) Qb^T
  std::vector<T> tau;      // (p,): Householder scalars
  std::vector<T> work;     // LAPACK work (size from workspace queries)
  std::vector<T> R;        // (p, p): the triangular factor of B^T (destroyed by gesdd)
  std::vector<T> small_u;  // (p, p): left singular vectors of B, row-major
  std::vector<T> small_w;  // (p, p): gesdd's left vectors of R (= Ur^T read row-major)
  std::vector<T> small_s;  // (p,): singular values of B
  std::vector<T> small_vt; // (p, n): right singular vectors of B (rows); truncated_svd only
  std::vector<int> iwork;  // gesdd: 8 p
  std::vector<T> G;        // (blocks, p, p): partial Grams of the Cholesky QR's row blocks
  std::vector<T> G1;       // (p, p): Gram, then first Cholesky factor R1 (column-major)
  std::vector<T> G2;       // (p, p): second Gram, then factor R2 (CholeskyQR2)
  std::vector<T> spare;    // (rows, p): copy of a panel, only on the Householder fallback
  index_t qm = -1, qn = -1, qp = -1;  // shape the work size was queried for
  // Products with A are split into this many blocks on the core's threads
  // (lrs::gemm_rm_split); 1 = one BLAS call (BLAS's own threading).  The ADMM sets
  // it with BLAS limited to one thread.
  int gemm_threads = 1;
  // QR of the tall (m, p) and (n, p) panels: CholeskyQR2 (true: Gram by syrk, potrf,
  // trsm, twice; level-3 BLAS, split over gemm_threads) with a Householder fallback
  // (geqrf + orgqr) when the panel is too ill-conditioned for it (potrf fails, or the
  // diagonal of R spans more than 1 / sqrt(8 eps)); false: always Householder.
  bool cholqr = true;
  int qr_fallbacks = 0;  // how many panels fell back to Householder (accumulated)
  // SVD of the wide B (p, n) from its Gram B B^T (syrk + syevd of a (p, p) matrix + one
  // (p, p, n) GEMM) instead of the QR of B^T + gesdd: about half the work on the (n, p)
  // panel.  Used when B's singular values span less than 1 / (16 sqrt(eps)) (the Gram
  // then resolves every direction); otherwise that iteration takes the QR path
  // (counted in gram_fallbacks).  Off by default; the ADMM turns it on.
  bool gram_svd = false;
  int gram_fallbacks = 0;
  // Seconds spent, accumulated over calls (for profiling; reset by the caller):
  double t_products = 0;  // Y = A V and B = Q^T A
  double t_qr = 0;        // QR of Y (geqrf + orgqr)
  double t_small = 0;     // SVD of B (QR of B^T + gesdd of R, or its Gram); U = Q Ub
};

// Rank-r truncated SVD of A (m, n), row-major.
//   V      (n, p)  in: orthonormal start for the right subspace (p = r + oversampling,
//                  r <= p <= min(m, n)); out: refined right subspace (warm start for the
//                  next call).  Each power iteration costs two GEMMs with A.
//   U      (m, r)  out: left singular vectors
//   sv     (r,)    out: singular values, descending
//   Vt     (r, n)  out: right singular vectors (rows)
//   power_iters >= 1
// Per iteration: Y = A V, Q = qr(Y) (CholeskyQR2, or geqrf + orgqr), B = Q^T A, SVD of B -> (Ub, s, Vb^T),
// V <- Vb.  Result U = Q Ub[:, :r].  The SVD of the wide B (p, n) is taken through
// the QR of B^T = Qb R (geqrf + orgqr, O(n p^2)), gesdd of the small R = Ur s Vr^T,
// and Vb = Qb Ur (one (n, p, p) GEMM), Ub = Vr: backward stable like gesdd of B and
// several times cheaper (gesdd's bidiagonalisation of a wide matrix is level-2 bound).
// With ws.gram_svd, from the Gram instead: B B^T = Ub s^2 Ub^T (syevd), C = Ub^T B,
// s = row norms of C, Vb^T = diag(1/s) C (see SvdWorkspace::gram_svd).  Throws
// std::invalid_argument on bad sizes and std::runtime_error when a LAPACK routine
// reports failure (info != 0).
template <class T>
void truncated_svd(const T* A, index_t m, index_t n, index_t r, index_t p, int power_iters, T* V,
                   T* U, T* sv, T* Vt, SvdWorkspace<T>& ws);

// The same with the right subspace kept as rows (no transposes, no (p, n) copy in the
// workspace): Vt (p, n) in, orthonormal rows spanning the start; out, the refined
// right singular vectors (rows; the first r are those of the result, the rest the
// oversampled ones, the warm start of the next call).  U (m, r), sv (r,) as above.
template <class T>
void truncated_svd_rows(const T* A, index_t m, index_t n, index_t r, index_t p, int power_iters,
                        T* Vt, T* U, T* sv, SvdWorkspace<T>& ws);

// Singular-value thresholding on the same subspace machinery, restricted to the
// leading r singular triplets (the same semantics as torch_ops.svt): the rank-r
// truncated SVD of A, then sv <- max(sv - tau, 0).
//   V (n, p) as in truncated_svd; U (m, r), sv (r,) shrunk, Vt (r, n).
// Returns k = the number of the r singular values > tau (sv[k:] == 0), so the prox
// restricted to the top-r subspace is U[:, :k] diag(sv[:k]) Vt[:k].
template <class T>
index_t svt(const T* A, index_t m, index_t n, index_t r, index_t p, int power_iters, T tau, T* V,
            T* U, T* sv, T* Vt, SvdWorkspace<T>& ws);

}  // namespace lrs
