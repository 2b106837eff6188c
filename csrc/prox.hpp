// Proximal operators and projections for the sparse part S.  Python-free.
// Matrices are row-major; x and out may alias (in-place is allowed).
#pragma once

#include "common.hpp"

namespace lrs {

// out = sign(x) * max(|x| - tau, 0).   x, out: (n,)   tau >= 0
template <class T>
void soft_threshold(const T* x, T* out, index_t n, T tau);

// Keep the k entries of largest |x|, zero the rest; exact count; ties broken
// deterministically in favour of the lower index.   x, out: (n,)   0 <= k <= n
template <class T>
void topk_project(const T* x, T* out, index_t n, index_t k);

// Number of groups of `s` for a (m, n) matrix, and entries per group.
index_t group_count(const Structure& s, index_t m, index_t n);
index_t group_size(const Structure& s, index_t m, index_t n);

// Group soft-thresholding (prox of tau * sum_g ||x_g||_2) for Row/Column/Channel;
// for Unstructured it is soft_threshold.   x, out: (m, n)
template <class T>
void group_soft_threshold(const Structure& s, const T* x, T* out, index_t m, index_t n, T tau);

// Keep the k groups of largest L2 norm (ties: lower group index), zero the rest.
// For Unstructured, k counts entries.   x, out: (m, n)   0 <= k <= group_count
template <class T>
void group_topk_project(const Structure& s, const T* x, T* out, index_t m, index_t n, index_t k);

// N:M projection along each row: in every window of nm_m consecutive columns keep
// the nm_n entries of largest |x| (ties: lower column).   x, out: (m, n)  n % nm_m == 0
template <class T>
void nm_project(const T* x, T* out, index_t m, index_t n, int nm_n, int nm_m);

// Dispatch on s.kind: hard projection onto {at most k groups (entries for
// Unstructured)}; NM ignores k (its budget is fixed at nm_n/nm_m).
template <class T>
void project(const Structure& s, const T* x, T* out, index_t m, index_t n, index_t k);

}  // namespace lrs
