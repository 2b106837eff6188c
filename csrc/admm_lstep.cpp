// The L-step shared by both ADMM loops (admm_detail.hpp, LowRank): per column slice the
// warm-started truncated SVD of the L-step input, the relaxed form's singular-value
// threshold, and L from the factors (whole, or in tiles for the fused weight loop).
#include <algorithm>

#include "admm_detail.hpp"
#include "blas.hpp"

namespace lrs::admm_detail {

template <class T>
void LowRank<T>::init(const AdmmProblem& pb, index_t m_, index_t n_, const T* V0) {
  m = m_;
  n = n_;
  g = pb.slices;
  r = pb.rank;
  p = pb.p;
  nsl = n / g;
  power_iters = pb.power_iters;
  gemm_threads = std::max(1, pb.gemm_threads);
  ws.gemm_threads = gemm_threads;
  ws.cholqr = pb.switches.cholesky_qr;
  ws.gram_svd = pb.switches.gram_svd;
  q.assign(static_cast<size_t>(g), r);
  if (r == 0) return;
  auto buf = [](index_t sz) { return std::vector<T>(static_cast<size_t>(sz), T(0)); };
  Vs = buf(g * p * nsl);  // V0 (g, nsl, p) -> rows (g, p, nsl)
  for (index_t s = 0; s < g; ++s)
    for (index_t i = 0; i < nsl; ++i)
      for (index_t j = 0; j < p; ++j) Vs[s * p * nsl + j * nsl + i] = V0[s * nsl * p + i * p + j];
  U = buf(g * m * r);
  sv = buf(g * r);
  Usv = buf(g * m * r);
  if (g > 1) slice = buf(m * nsl);
}

template <class T>
void LowRank<T>::svd_step(const T* A, bool relaxed, double lam_nuclear, T rho) {
  for (index_t s = 0; s < g; ++s) {
    const T* As = A;
    if (g > 1) {  // slice s of A, contiguous
      parallel_each(m * nsl, [&](index_t i) {
        const index_t row = i / nsl, col = i % nsl;
        slice[i] = A[row * n + s * nsl + col];
      });
      As = slice.data();
    }
    T* U_ = U.data() + s * m * r;
    T* s_ = sv.data() + s * r;
    truncated_svd_rows<T>(As, m, nsl, r, p, power_iters, Vs.data() + s * p * nsl, U_, s_, ws);
    index_t qq = r;
    if (relaxed) {  // SVT restricted to the leading r triplets
      const T thr = static_cast<T>(lam_nuclear) / rho;
      qq = 0;
      for (index_t j = 0; j < r; ++j) {
        const T v = s_[j] - thr;
        if (s_[j] > thr) ++qq;
        s_[j] = v > T(0) ? v : T(0);
      }
    }
    q[static_cast<size_t>(s)] = qq;
    T* us = Usv.data() + s * m * r;
    for (index_t i = 0; i < m * r; ++i) us[i] = U_[i] * s_[i % r];
  }
}

template <class T>
void LowRank<T>::form_L(T* L) {
  if (g > 1 && Lsl.empty()) Lsl.assign(static_cast<size_t>(m * nsl), T(0));
  for (index_t s = 0; s < g; ++s) {
    T* dst = g > 1 ? Lsl.data() : L;
    gemm_rm_split<T>(gemm_threads, false, false, static_cast<int>(m), static_cast<int>(nsl),
                     static_cast<int>(r), T(1), Usv.data() + s * m * r, static_cast<int>(r), Vt(s),
                     static_cast<int>(nsl), T(0), dst, static_cast<int>(nsl));
    if (g > 1) {
      parallel_each(m * nsl, [&](index_t i) {
        const index_t row = i / nsl, col = i % nsl;
        L[row * n + s * nsl + col] = Lsl[i];
      });
    }
  }
}

template <class T>
void LowRank<T>::form_tile(index_t i0, index_t len, index_t j0, index_t w, T* tile) const {
  if (g == 1) {
    blas::gemm_rm<T>(false, false, static_cast<int>(len), static_cast<int>(w),
                     static_cast<int>(r), T(1), Usv.data() + i0 * r, static_cast<int>(r),
                     Vs.data() + j0, static_cast<int>(n), T(0), tile, static_cast<int>(w));
    return;
  }
  for (index_t s = 0; s < g; ++s)
    blas::gemm_rm<T>(false, false, static_cast<int>(len), static_cast<int>(nsl),
                     static_cast<int>(r), T(1), Usv.data() + s * m * r + i0 * r,
                     static_cast<int>(r), Vt(s), static_cast<int>(nsl), T(0), tile + s * nsl,
                     static_cast<int>(n));
}

template <class T>
void LowRank<T>::write_factors(AdmmResult<T>& out, bool relaxed) const {
  index_t rt = r;
  if (relaxed && r > 0) rt = *std::max_element(q.begin(), q.end());
  out.rt = rt;
  out.U.assign(static_cast<size_t>(m * g * rt), T(0));
  out.V.assign(static_cast<size_t>(g * rt * n), T(0));
  for (index_t s = 0; s < g && rt > 0; ++s) {
    const index_t qq = q[static_cast<size_t>(s)];
    const T* U_ = U.data() + s * m * r;
    const T* s_ = sv.data() + s * r;
    const T* Vt_ = Vt(s);
    for (index_t j = 0; j < qq; ++j) {
      const T sq = std::sqrt(s_[j]);
      for (index_t i = 0; i < m; ++i) out.U[i * g * rt + s * rt + j] = U_[i * r + j] * sq;
      for (index_t c = 0; c < nsl; ++c) out.V[(s * rt + j) * n + s * nsl + c] = sq * Vt_[j * nsl + c];
    }
  }
}

template struct LowRank<float>;
template struct LowRank<double>;

}  // namespace lrs::admm_detail
