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
#include <stdexcept>
#include <string>

#include "blas.hpp"
#include "parallel.hpp"

namespace lrs {

namespace {

void lapack_check(const char* routine, int info) {
  if (info != 0)
    throw std::runtime_error(std::string("lrs: LAPACK ") + routine + " failed (info=" +
                             std::to_string(info) + ")");
}

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
  ensure(ws.small_vt, p * n);
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

// Runs the iterations; afterwards ws.Y = Q^T (p, m), ws.small_u = Ub (p, p),
// ws.small_s = s (p,), ws.small_vt = Vb^T (p, n); V (n, p) is updated.
template <class T>
void iterate(const T* A, index_t m, index_t n, index_t p, int power_iters, T* V,
             SvdWorkspace<T>& ws) {
  prepare(ws, m, n, p);
  const auto& L = blas::routines<T>();
  const int im = static_cast<int>(m), in = static_cast<int>(n), ip = static_cast<int>(p);
  const int lwork = static_cast<int>(ws.work.size());
  const int gt = ws.gemm_threads;
  T* Vt = ws.small_vt.data();  // (p, n)
  T* Y = ws.Y.data();          // (p, m)
  T* B = ws.B.data();          // (p, n)
  T* R = ws.R.data();          // (p, p) column-major
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < p; ++j) Vt[j * n + i] = V[i * p + j];
  const char jobz = 'S';
  int info = 0;
  for (int it = 0; it < power_iters; ++it) {
    double t0 = now();
    // Y^T (p, m) = Vb^T (p, n) A^T (n, m)
    gemm_rm_split<T>(gt, false, true, ip, im, in, T(1), Vt, in, A, in, T(0), Y, im);
    double t1 = now();
    ws.t_products += t1 - t0;
    L.geqrf(&im, &ip, Y, &im, ws.tau.data(), ws.work.data(), &lwork, &info);
    lapack_check("geqrf", info);
    L.orgqr(&im, &ip, &ip, Y, &im, ws.tau.data(), ws.work.data(), &lwork, &info);
    lapack_check("orgqr", info);
    t0 = now();
    ws.t_qr += t0 - t1;
    // B (p, n) = Q^T (p, m) A (m, n)
    gemm_rm_split<T>(gt, false, false, ip, in, im, T(1), Y, im, A, in, T(0), B, in);
    t1 = now();
    ws.t_products += t1 - t0;
    // B^T (n x p, column-major) = Qb R
    L.geqrf(&in, &ip, B, &in, ws.tau.data(), ws.work.data(), &lwork, &info);
    lapack_check("geqrf", info);
    for (index_t j = 0; j < p; ++j)  // column j of R: rows 0..j
      for (index_t i = 0; i < p; ++i) R[j * p + i] = i <= j ? B[j * n + i] : T(0);
    L.orgqr(&in, &ip, &ip, B, &in, ws.tau.data(), ws.work.data(), &lwork, &info);
    lapack_check("orgqr", info);
    // R = Ur s Vr^T: small_w <- Ur (column-major), small_u <- Vr^T (column-major) = Ub
    L.gesdd(&jobz, &ip, &ip, R, &ip, ws.small_s.data(), ws.small_w.data(), &ip,
            ws.small_u.data(), &ip, ws.work.data(), &lwork, ws.iwork.data(), &info);
    lapack_check("gesdd", info);
    // Vb^T (p, n) = Ur^T (p, p) Qb^T (p, n)
    gemm_rm_split<T>(gt, false, false, ip, in, ip, T(1), ws.small_w.data(), ip, B, in, T(0), Vt,
                     in);
    ws.t_small += now() - t1;
  }
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < p; ++j) V[i * p + j] = Vt[j * n + i];
}

}  // namespace

template <class T>
void truncated_svd(const T* A, index_t m, index_t n, index_t r, index_t p, int power_iters, T* V,
                   T* U, T* sv, T* Vt, SvdWorkspace<T>& ws) {
  check_args<T>(m, n, r, p, power_iters);
  iterate(A, m, n, p, power_iters, V, ws);
  const double t0 = now();
  // U (m, r) = Q (m, p) Ub[:, :r]; Q = (Q^T)^T with Q^T stored (p, m).
  gemm_rm_split<T>(ws.gemm_threads, true, false, static_cast<int>(m), static_cast<int>(r),
                   static_cast<int>(p), T(1), ws.Y.data(), static_cast<int>(m),
                   ws.small_u.data(), static_cast<int>(p), T(0), U, static_cast<int>(r));
  std::copy(ws.small_s.data(), ws.small_s.data() + r, sv);
  std::copy(ws.small_vt.data(), ws.small_vt.data() + r * n, Vt);
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
template index_t svt<float>(const float*, index_t, index_t, index_t, index_t, int, float, float*,
                            float*, float*, float*, SvdWorkspace<float>&);
template index_t svt<double>(const double*, index_t, index_t, index_t, index_t, int, double,
                             double*, double*, double*, double*, SvdWorkspace<double>&);

}  // namespace lrs
