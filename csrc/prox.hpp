// Proximal operators and projections for the sparse part S.  Python-free.
// Matrices are row-major; x and out may alias (in-place is allowed).
#pragma once

#include <cstdint>

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

// ---- Selections without applying them (the ADMM's fused weight-mode passes decode S
// from its input on the fly with these; see admm.cpp).  The *_project functions above
// are exactly "select, then keep/scale".

// Which entries topk_project(x, k) keeps: entry i survives iff
//   keep_all, or (!keep_none and (key(x_i) > key, or key(x_i) == key and i <= cutoff)),
// with key(v) the IEEE-754 bits of |v| (an order-preserving integer, topk_key below).
struct TopkCut {
  bool keep_none = false, keep_all = false;
  std::uint64_t key = 0;  // key of the k-th largest |x|
  index_t cutoff = -1;    // last flat index of the kept entries with key == `key`
};

// Order-preserving integer key of |v| (v finite or infinite, not NaN).
template <class T>
std::uint64_t topk_key(T v);

// The cut of topk_project(x, k).   x: (n,)   0 <= k <= n.   O(n), parallel.
template <class T>
TopkCut topk_select(const T* x, index_t n, index_t k);

// Per-group factor of group_topk_project (1 kept, 0 dropped; k counts groups) or of
// group_soft_threshold (max(1 - tau / ||x_g||, 0)) for Row / Column / Channel:
// out_g = x_g * scale[g].   x: (m, n)   scale: (group_count,)
template <class T>
void group_topk_scale(const Structure& s, const T* x, index_t m, index_t n, index_t k,
                      double* scale);
template <class T>
void group_soft_scale(const Structure& s, const T* x, index_t m, index_t n, T tau, double* scale);

// Dispatch on s.kind: hard projection onto {at most k groups (entries for
// Unstructured)}; NM ignores k (its budget is fixed at nm_n/nm_m).
template <class T>
void project(const Structure& s, const T* x, T* out, index_t m, index_t n, index_t k);

}  // namespace lrs
