// Warm-started truncated SVD by subspace iteration (see svd.hpp).
//
// Layout trick: a row-major (p, m) array is the column-major (m x p) matrix, so
// Y^T (p, m) row-major is what geqrf/orgqr take as Y (m x p) with lda = m, and
// B (p, n) row-major is B^T (n x p) column-major.  The SVD of B goes through the
// QR of B^T: geqrf + orgqr turn the B buffer into Qb (n x p, column-major) = Qb^T
// (p, n) row-major and leave R (p x p); gesdd(R) = Ur s Vr^T.  Then
// B = Vr s (Qb Ur)^T, so Ub = Vr (gesdd's column-major VT read row-major) and
// Vb^T (p, n) = Ur^T Qb^T (gesdd's column-major U read row-major, times the B
// buffer).  No transposes except V (n, p) <-> Vb^T (p, n) at entry and exit (O(n p)).
#include "svd.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "blas.hpp"
#include "errors.hpp"
#include "parallel.hpp"

namespace lrs {

namespace {

#include "sumsq.inc"

template <class T>
void ensure(std::vector<T>& v, index_t size) {
  if (static_cast<index_t>(v.size()) < size) v.resize(static_cast<size_t>(size));
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Size all buffers and query LAPACK work sizes for (m, n, p) once.
template <class T>
void prepare(SvdWorkspace<T>& ws, index_t m, index_t n, index_t p) {
  ensure(ws.Y, p * m);
  ensure(ws.B, p * n);
  ensure(ws.tau, p);
  ensure(ws.R, p * p);
  ensure(ws.small_u, p * p);
  ensure(ws.small_w, p * p);
  ensure(ws.small_s, p);
  if (static_cast<index_t>(ws.iwork.size()) < 8 * p) ws.iwork.resize(static_cast<size_t>(8 * p));
  if (ws.qm == m && ws.qn == n && ws.qp == p) return;
  const auto& L = blas::routines<T>();
  const int im = static_cast<int>(m), in = static_cast<int>(n), ip = static_cast<int>(p);
  const int query = -1;
  int info = 0;
  T w = 0;
  double need = 1;
  // QR of Y (m x p) and of B^T (n x p).
  for (const int rows : {im, in}) {
    L.geqrf(&rows, &ip, ws.Y.data(), &rows, ws.tau.data(), &w, &query, &info);
    lapack_check("geqrf (workspace query)", info);
    need = std::max(need, static_cast<double>(w));
    L.orgqr(&rows, &ip, &ip, ws.Y.data(), &rows, ws.tau.data(), &w, &query, &info);
    lapack_check("orgqr (workspace query)", info);
    need = std::max(need, static_cast<double>(w));
  }
  const char jobz = 'S';
  L.gesdd(&jobz, &ip, &ip, ws.R.data(), &ip, ws.small_s.data(), ws.small_w.data(), &ip,
          ws.small_u.data(), &ip, &w, &query, ws.iwork.data(), &info);
  lapack_check("gesdd (workspace query)", info);
  need = std::max(need, static_cast<double>(w));
  // syevd of the (p, p) Gram (Gram path of B's SVD)
  const char jv = 'V', up = 'U';
  int iw = 0;
  L.syevd(&jv, &up, &ip, ws.R.data(), &ip, ws.small_s.data(), &w, &query, &iw, &query, &info);
  lapack_check("syevd (workspace query)", info);
  need = std::max(need, static_cast<double>(w));
  if (static_cast<index_t>(ws.iwork.size()) < iw) ws.iwork.resize(static_cast<size_t>(iw));
  // Single-precision work sizes can round down: leave some slack.
  ws.work.resize(static_cast<size_t>(need * 1.01) + 64);
  ws.qm = m;
  ws.qn = n;
  ws.qp = p;
}

template <class T>
void check_args(index_t m, index_t n, index_t r, index_t p, int power_iters) {
  if (m < 1 || n < 1) throw std::invalid_argument("lrs: truncated_svd needs a non-empty matrix");
  if (m > INT_MAX / 2 || n > INT_MAX / 2)
    throw std::invalid_argument("lrs: truncated_svd: dimension too large for LAPACK int");
  if (r < 1 || r > p || p > std::min(m, n))
    throw std::invalid_argument("lrs: truncated_svd needs 1 <= r <= p <= min(m, n) (r=" +
                                std::to_string(r) + ", p=" + std::to_string(p) + ", m=" +
                                std::to_string(m) + ", n=" + std::to_string(n) + ")");
  if (power_iters < 1) throw std::invalid_argument("lrs: truncated_svd needs power_iters >= 1");
  blas::require_loaded();
}

// ---- QR of a tall panel X (rows x p, column-major, ld = rows), in place: X <- Q ----
// CholeskyQR2 (Fukaya et al. 2014): G = X^T X (syrk), G = R1^T R1 (potrf),
// X <- X R1^{-1} (trsm), then once more on the result, R = R2 R1.  Two rounds keep
// Q orthogonal to working precision whenever cond(X) is below ~1/sqrt(eps); beyond
// that (potrf fails, the diagonal of R1 spans more than 1 / (4 sqrt(eps)), or the
// second Gram is not within 0.5 of the identity) the panel is restored and factored
// by Householder (geqrf + orgqr).  syrk and trsm are split into row blocks over
// ws.gemm_threads threads (partial Grams summed in block order: deterministic).

// Blocks for the panel's syrk / trsm: one per thread when the panel is large enough.
inline int panel_blocks(int threads, index_t rows, index_t p) {
  if (threads <= 1 || static_cast<double>(rows) * p * p < 4e6) return 1;
  return static_cast<int>(std::min<index_t>(threads, rows / 64));
}

// Upper triangle of G (p x p, column-major) = X^T X.   X: (rows x p) column-major.
template <class T>
void panel_gram(const T* X, int rows, int p, T* G, SvdWorkspace<T>& ws) {
  const auto& L = blas::routines<T>();
  const int blocks = panel_blocks(ws.gemm_threads, rows, p);
  const index_t pp = index_t{p} * p;
  ensure(ws.G, pp * blocks);
  T* parts = ws.G.data();
  const char uplo = 'U', trans = 'T';
  const T one = 1, zero = 0;
  parallel_chunks_on(blocks, rows, blocks, [&](int c, index_t b, index_t e) {
    const int k = static_cast<int>(e - b);
    T* dst = blocks == 1 ? G : parts + c * pp;
    L.syrk(&uplo, &trans, &p, &k, &one, X + b, &rows, &zero, dst, &p);
  });
  if (blocks > 1)
    for (index_t j = 0; j < p; ++j)
      for (index_t i = 0; i <= j; ++i) {
        T acc = 0;
        for (int c = 0; c < blocks; ++c) acc += parts[c * pp + j * p + i];
        G[j * p + i] = acc;
      }
}

// X <- X R^{-1}, R (p x p, column-major upper).
template <class T>
void panel_trsm(T* X, int rows, int p, const T* R, SvdWorkspace<T>& ws) {
  const auto& L = blas::routines<T>();
  const int blocks = panel_blocks(ws.gemm_threads, rows, p);
  const char side = 'R', uplo = 'U', tr = 'N', diag = 'N';
  const T one = 1;
  parallel_chunks_on(blocks, rows, blocks, [&](int, index_t b, index_t e) {
    const int k = static_cast<int>(e - b);
    L.trsm(&side, &uplo, &tr, &diag, &k, &p, &one, R, &p, X + b, &rows);
  });
}

// Householder QR: X <- Q; R (p x p, column-major, lower part zero) if R != nullptr.
template <class T>
void panel_householder(T* X, int rows, int p, T* R, SvdWorkspace<T>& ws) {
  const auto& L = blas::routines<T>();
  const int lwork = static_cast<int>(ws.work.size());
  int info = 0;
  L.geqrf(&rows, &p, X, &rows, ws.tau.data(), ws.work.data(), &lwork, &info);
  lapack_check("geqrf", info);
  if (R)
    for (index_t j = 0; j < p; ++j)  // column j of R: rows 0..j
      for (index_t i = 0; i < p; ++i) R[j * p + i] = i <= j ? X[j * rows + i] : T(0);
  L.orgqr(&rows, &p, &p, X, &rows, ws.tau.data(), ws.work.data(), &lwork, &info);
  lapack_check("orgqr", info);
}

// Cholesky factor of the Gram in G (upper, in place); false if it is not usable.
template <class T>
bool gram_factor(T* G, int p) {
  int info = 0;
  const char uplo = 'U';
  blas::routines<T>().potrf(&uplo, &p, G, &p, &info);
  if (info != 0) return false;
  T lo = std::numeric_limits<T>::infinity(), hi = 0;
  for (index_t j = 0; j < p; ++j) {
    const T d = std::fabs(G[j * p + j]);
    if (!(d == d)) return false;  // NaN
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  return lo > hi * T(4) * std::sqrt(std::numeric_limits<T>::epsilon());
}

// Returns true when the last step X <- X R2^{-1} was left to the caller (defer_last and
// the Cholesky path taken): X then holds Q1 with Q = Q1 R2^{-1}, R2 in ws.G2 (upper).
template <class T>
bool panel_qr(T* X, int rows, int p, T* R, SvdWorkspace<T>& ws, bool defer_last = false) {
  const index_t pp = index_t{p} * p;
  if (!ws.cholqr) {
    panel_householder(X, rows, p, R, ws);
    return false;
  }
  ensure(ws.G1, pp);
  ensure(ws.G2, pp);
  T* R1 = ws.G1.data();
  panel_gram(X, rows, p, R1, ws);
  if (!gram_factor(R1, p)) {  // X untouched so far
    ++ws.qr_fallbacks;
    panel_householder(X, rows, p, R, ws);
    return false;
  }
  panel_trsm(X, rows, p, R1, ws);
  T* R2 = ws.G2.data();
  panel_gram(X, rows, p, R2, ws);
  bool ok = true;
  for (index_t j = 0; j < p && ok; ++j)
    for (index_t i = 0; i <= j; ++i)
      if (!(std::fabs(R2[j * p + i] - (i == j ? T(1) : T(0))) <= T(0.5))) {
        ok = false;
        break;
      }
  if (ok) ok = gram_factor(R2, p);
  if (!ok) {  // restore X = Q1 R1 (R1 upper; zero its lower part first), then Householder
    ++ws.qr_fallbacks;
    for (index_t j = 0; j < p; ++j)
      for (index_t i = j + 1; i < p; ++i) R1[j * p + i] = 0;
    ensure(ws.spare, index_t{rows} * p);
    std::copy(X, X + index_t{rows} * p, ws.spare.data());
    const char nn = 'N';
    const T one = 1, zero = 0;
    blas::routines<T>().gemm(&nn, &nn, &rows, &p, &p, &one, ws.spare.data(), &rows, R1, &p, &zero,
                             X, &rows);
    panel_householder(X, rows, p, R, ws);
    return false;
  }
  if (!defer_last) panel_trsm(X, rows, p, R2, ws);
  if (R) {  // R = R2 R1 (both upper), column-major
    for (index_t j = 0; j < p; ++j)
      for (index_t i = 0; i < p; ++i) {
        T acc = 0;
        for (index_t l = i; l <= j; ++l) acc += R2[l * p + i] * R1[j * p + l];
        R[j * p + i] = i <= j ? acc : T(0);
      }
  }
  return defer_last;
}

// SVD of B (p, n, row-major) from its Gram (SvdWorkspace::gram_svd): G = B B^T
// (upper, by panel_gram on B^T), G = E diag(w) E^T (syevd, ascending), Ub = E with the
// columns reversed, C = Ub^T B (p, n) into Vt, s_i = ||C_i||, Vt_i = C_i / s_i; pairs
// out of order by a rounding (near-equal values) are swapped back.  Afterwards
// ws.small_u = Ub (p, p) row-major and ws.small_s = s, descending.  Returns false when
// s_min < 16 sqrt(eps) s_max (or s_max = 0, or syevd fails): the trailing rows are then
// not resolved by the Gram, and the caller takes the QR path (B is only read here).
template <class T>
bool small_svd_gram(const T* B, int n, int p, T* Vt, SvdWorkspace<T>& ws) {
  const auto& L = blas::routines<T>();
  const index_t pp = index_t{p} * p;
  ensure(ws.G1, pp);
  T* G = ws.G1.data();
  panel_gram(B, n, p, G, ws);
  const char jv = 'V', up = 'U';
  const int lwork = static_cast<int>(ws.work.size()), liwork = static_cast<int>(ws.iwork.size());
  int info = 0;
  T* w = ws.small_s.data();
  L.syevd(&jv, &up, &p, G, &p, w, ws.work.data(), &lwork, ws.iwork.data(), &liwork, &info);
  if (info != 0) return false;
  T* Ub = ws.small_u.data();  // Ub[i][k] = E[i, p - 1 - k]
  for (index_t k = 0; k < p; ++k)
    for (index_t i = 0; i < p; ++i) Ub[i * p + k] = G[(p - 1 - k) * p + i];
  gemm_rm_split<T>(ws.gemm_threads, true, false, p, n, p, T(1), Ub, p, B, n, T(0), Vt, n);
  T* s = ws.small_s.data();
  // Row norms and (below) the scaling: p rows of n, over the solve's threads.
  const int rt = static_cast<double>(p) * n >= 65536 ? ws.gemm_threads : 1;
  parallel_chunks_on(rt, p, std::min<int>(p, 2 * rt), [&](int, index_t b, index_t e) {
    for (index_t k = b; k < e; ++k) {
      s[k] = static_cast<T>(std::sqrt(sumsq(Vt + k * n, n)));
    }
  });
  T smax = 0, smin = std::numeric_limits<T>::infinity();
  for (index_t k = 0; k < p; ++k) {
    smax = std::max(smax, s[k]);
    smin = std::min(smin, s[k]);
  }
  if (!(smax > 0) || !(smin >= smax * T(16) * std::sqrt(std::numeric_limits<T>::epsilon())))
    return false;
  for (index_t k = 1; k < p; ++k)  // insertion sort, descending (rarely moves anything)
    for (index_t j = k; j > 0 && s[j] > s[j - 1]; --j) {
      std::swap(s[j], s[j - 1]);
      std::swap_ranges(Vt + j * n, Vt + (j + 1) * n, Vt + (j - 1) * n);
      for (index_t i = 0; i < p; ++i) std::swap(Ub[i * p + j], Ub[i * p + j - 1]);
    }
  parallel_chunks_on(rt, p, std::min<int>(p, 2 * rt), [&](int, index_t b, index_t e) {
    for (index_t k = b; k < e; ++k) {
      T* c = Vt + k * n;
      const T f = T(1) / s[k];
      for (index_t j = 0; j < n; ++j) c[j] *= f;
    }
  });
  return true;
}

// Runs the iterations on the right subspace kept as rows, Vt (p, n): in, the start;
// out, Vb^T.  Afterwards ws.Y = Q^T (p, m), ws.small_u = Ub (p, p), ws.small_s = s (p,).
template <class T>
void iterate_rows(const T* A, index_t m, index_t n, index_t p, int power_iters, T* Vt,
                  SvdWorkspace<T>& ws) {
  const auto& L = blas::routines<T>();
  const int im = static_cast<int>(m), in = static_cast<int>(n), ip = static_cast<int>(p);
  const int lwork = static_cast<int>(ws.work.size());
  const int gt = ws.gemm_threads;
  T* Y = ws.Y.data();          // (p, m)
  T* B = ws.B.data();          // (p, n)
  T* R = ws.R.data();          // (p, p) column-major
  const char jobz = 'S';
  int info = 0;
  for (int it = 0; it < power_iters; ++it) {
    double t0 = now();
    // Y^T (p, m) = Vb^T (p, n) A^T (n, m)
    gemm_rm_split<T>(gt, false, true, ip, im, in, T(1), Vt, in, A, in, T(0), Y, im);
    double t1 = now();
    ws.t_products += t1 - t0;
    panel_qr<T>(Y, im, ip, nullptr, ws);
    t0 = now();
    ws.t_qr += t0 - t1;
    // B (p, n) = Q^T (p, m) A (m, n)
    gemm_rm_split<T>(gt, false, false, ip, in, im, T(1), Y, im, A, in, T(0), B, in);
    t1 = now();
    ws.t_products += t1 - t0;
    if (ws.gram_svd) {
      if (small_svd_gram<T>(B, in, ip, Vt, ws)) {
        ws.t_small += now() - t1;
        continue;
      }
      ++ws.gram_fallbacks;
    }
    // B^T (n x p, column-major) = Qb R
    const bool deferred = panel_qr<T>(B, in, ip, R, ws, true);
    // R = Ur s Vr^T: small_w <- Ur (column-major), small_u <- Vr^T (column-major) = Ub
    L.gesdd(&jobz, &ip, &ip, R, &ip, ws.small_s.data(), ws.small_w.data(), &ip,
            ws.small_u.data(), &ip, ws.work.data(), &lwork, ws.iwork.data(), &info);
    lapack_check("gesdd", info);
    if (deferred) {  // Qb = Q1 R2^{-1}: Ur <- R2^{-1} Ur (p x p), then Vb^T = Ur^T Q1^T
      const char side = 'L', uplo = 'U', tr = 'N', diag = 'N';
      const T one = 1;
      L.trsm(&side, &uplo, &tr, &diag, &ip, &ip, &one, ws.G2.data(), &ip, ws.small_w.data(), &ip);
    }
    // Vb^T (p, n) = Ur^T (p, p) Qb^T (p, n)
    gemm_rm_split<T>(gt, false, false, ip, in, ip, T(1), ws.small_w.data(), ip, B, in, T(0), Vt,
                     in);
    ws.t_small += now() - t1;
  }
}

// The same with V (n, p) in and out (through ws.small_vt).
template <class T>
void iterate(const T* A, index_t m, index_t n, index_t p, int power_iters, T* V,
             SvdWorkspace<T>& ws) {
  prepare(ws, m, n, p);
  ensure(ws.small_vt, p * n);
  T* Vt = ws.small_vt.data();  // (p, n)
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < p; ++j) Vt[j * n + i] = V[i * p + j];
  iterate_rows(A, m, n, p, power_iters, Vt, ws);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < p; ++j) V[i * p + j] = Vt[j * n + i];
}

// U (m, r) = Q Ub[:, :r] and sv (r,) from the workspace after an iteration.
template <class T>
void finish_u(index_t m, index_t r, index_t p, T* U, T* sv, SvdWorkspace<T>& ws) {
  // U (m, r) = Q (m, p) Ub[:, :r]; Q = (Q^T)^T with Q^T stored (p, m).
  gemm_rm_split<T>(ws.gemm_threads, true, false, static_cast<int>(m), static_cast<int>(r),
                   static_cast<int>(p), T(1), ws.Y.data(), static_cast<int>(m),
                   ws.small_u.data(), static_cast<int>(p), T(0), U, static_cast<int>(r));
  std::copy(ws.small_s.data(), ws.small_s.data() + r, sv);
}

}  // namespace

template <class T>
void truncated_svd(const T* A, index_t m, index_t n, index_t r, index_t p, int power_iters, T* V,
                   T* U, T* sv, T* Vt, SvdWorkspace<T>& ws) {
  check_args<T>(m, n, r, p, power_iters);
  iterate(A, m, n, p, power_iters, V, ws);
  const double t0 = now();
  finish_u(m, r, p, U, sv, ws);
  std::copy(ws.small_vt.data(), ws.small_vt.data() + r * n, Vt);
  ws.t_small += now() - t0;
}

template <class T>
void truncated_svd_rows(const T* A, index_t m, index_t n, index_t r, index_t p, int power_iters,
                        T* Vt, T* U, T* sv, SvdWorkspace<T>& ws) {
  check_args<T>(m, n, r, p, power_iters);
  prepare(ws, m, n, p);
  iterate_rows(A, m, n, p, power_iters, Vt, ws);
  const double t0 = now();
  finish_u(m, r, p, U, sv, ws);
  ws.t_small += now() - t0;
}

template <class T>
index_t svt(const T* A, index_t m, index_t n, index_t r, index_t p, int power_iters, T tau, T* V,
            T* U, T* sv, T* Vt, SvdWorkspace<T>& ws) {
  if (!(tau >= 0)) throw std::invalid_argument("lrs: svt needs tau >= 0");
  truncated_svd(A, m, n, r, p, power_iters, V, U, sv, Vt, ws);
  index_t k = 0;
  for (index_t i = 0; i < r; ++i) {
    const T s = sv[i] - tau;
    sv[i] = s > 0 ? s : T(0);
    k += s > 0;
  }
  return k;
}

template void truncated_svd<float>(const float*, index_t, index_t, index_t, index_t, int, float*,
                                   float*, float*, float*, SvdWorkspace<float>&);
template void truncated_svd<double>(const double*, index_t, index_t, index_t, index_t, int,
                                    double*, double*, double*, double*, SvdWorkspace<double>&);
template void truncated_svd_rows<float>(const float*, index_t, index_t, index_t, index_t, int,
                                        float*, float*, float*, SvdWorkspace<float>&);
template void truncated_svd_rows<double>(const double*, index_t, index_t, index_t, index_t, int,
                                         double*, double*, double*, SvdWorkspace<double>&);
template index_t svt<float>(const float*, index_t, index_t, index_t, index_t, int, float, float*,
                            float*, float*, float*, SvdWorkspace<float>&);
template index_t svt<double>(const double*, index_t, index_t, index_t, index_t, int, double,
                             double*, double*, double*, double*, SvdWorkspace<double>&);

}  // namespace lrs
