// Warm-started truncated SVD by randomized subspace iteration, and
// singular-value thresholding.  Python-free; BLAS/LAPACK through blas.hpp.
#pragma once

#include <vector>

#include "common.hpp"

namespace lrs {

// Reusable buffers so an ADMM loop allocates nothing per iteration.
template <class T>
struct SvdWorkspace {
  std::vector<T> Y, B, tau, work, small_u, small_s, small_vt;
  std::vector<int> iwork;
};

// Rank-r truncated SVD of A (m, n), row-major.
//   V      (n, p)  in: orthonormal start for the right subspace (p = r + oversampling,
//                  r <= p <= min(m, n)); out: refined right subspace (warm start for the
//                  next call).  Each power iteration costs two GEMMs with A.
//   U      (m, r)  out: left singular vectors
//   sv     (r,)    out: singular values, descending
//   Vt     (r, n)  out: right singular vectors (rows)
//   power_iters >= 1
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
