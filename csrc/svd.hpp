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
  std::vector<T> B;        // (p, n): Q^T A (destroyed by gesdd)
  std::vector<T> tau;      // (p,): Householder scalars
  std::vector<T> work;     // LAPACK work (size from workspace queries)
  std::vector<T> small_u;  // (p, p): left singular vectors of B
  std::vector<T> small_s;  // (p,): singular values of B
  std::vector<T> small_vt; // (p, n): right singular vectors of B (rows)
  std::vector<int> iwork;  // gesdd: 8 p
  index_t qm = -1, qn = -1, qp = -1;  // shape the work size was queried for
};

// Rank-r truncated SVD of A (m, n), row-major.
//   V      (n, p)  in: orthonormal start for the right subspace (p = r + oversampling,
//                  r <= p <= min(m, n)); out: refined right subspace (warm start for the
//                  next call).  Each power iteration costs two GEMMs with A.
//   U      (m, r)  out: left singular vectors
//   sv     (r,)    out: singular values, descending
//   Vt     (r, n)  out: right singular vectors (rows)
//   power_iters >= 1
// Per iteration: Y = A V, Q = qr(Y) (geqrf + orgqr), B = Q^T A, gesdd(B) -> (Ub, s, Vb^T),
// V <- Vb.  Result U = Q Ub[:, :r].  Throws std::invalid_argument on bad sizes and
// std::runtime_error when a LAPACK routine reports failure (info != 0).
template <class T>
void truncated_svd(const T* A, index_t m, index_t n, index_t r, index_t p, int power_iters, T* V,
                   T* U, T* sv, T* Vt, SvdWorkspace<T>& ws);

// Singular-value thresholding on the same subspace machinery: returns the
// factors of prox_{tau ||.||_*}(A) restricted to the top-p subspace.
//   U (m, p), sv (p,), Vt (p, n); returns the number of singular values > tau.
template <class T>
index_t svt(const T* A, index_t m, index_t n, index_t p, int power_iters, T tau, T* V, T* U,
            T* sv, T* Vt, SvdWorkspace<T>& ws);

}  // namespace lrs
