// The data modes' fixed terms (admm_data.hpp): eigenbasis of G, W0 Q, W0 Q diag(d),
// X^T Q, W0 X and the targets act(W0 X + b).
#include "admm_data.hpp"

#include <algorithm>

#include "admm_detail.hpp"
#include "blas.hpp"
#include "errors.hpp"

namespace lrs::admm_detail {

namespace {

// A (n, n) symmetric, in place: A <- its eigenvectors (column-major, = Q^T row-major),
// w (n,) <- its eigenvalues ascending (syevd, workspace queried first).
template <class T>
void eigh_in_place(T* A, int n, T* w) {
  const char jobz = 'V', uplo = 'U';
  int info = 0, lwork = -1, liwork = -1, iq = 0;
  T wq = 0;
  blas::routines<T>().syevd(&jobz, &uplo, &n, A, &n, w, &wq, &lwork, &iq, &liwork, &info);
  lapack_check("syevd (admm: workspace query)", info);
  lwork = static_cast<int>(wq) + 1;
  liwork = std::max(iq, 1);
  std::vector<T> work(static_cast<size_t>(lwork));
  std::vector<int> iwork(static_cast<size_t>(liwork));
  blas::routines<T>().syevd(&jobz, &uplo, &n, A, &n, w, work.data(), &lwork, iwork.data(),
                            &liwork, &info);
  lapack_check("syevd (admm: eigenbasis of G)", info);
}

}  // namespace

template <class T>
void DataTerms<T>::init(const AdmmProblem& pb, const AdmmData<T>& data) {
  const index_t m = data.m, n = data.n, N = data.N, mn = m * n, mN = m * N;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), Ni = static_cast<int>(N);
  const bool nonlin = pb.mode == AdmmMode::Nonlinear;
  auto buf = [](index_t sz) { return std::vector<T>(static_cast<size_t>(sz), T(0)); };
  Qt = buf(n * n);
  d = buf(n);
  if (nonlin) {
    const T invN = T(1) / static_cast<T>(N);
    blas::gemm_rm<T>(false, true, ni, ni, Ni, invN, data.X, Ni, data.X, Ni, T(0), Qt.data(), ni);
  } else {
    std::copy(data.gram, data.gram + n * n, Qt.data());
  }
  eigh_in_place(Qt.data(), ni, d.data());
  double dsum = 0;
  for (index_t j = 0; j < n; ++j) {
    if (!(d[j] > T(0))) d[j] = T(0);
    dsum += d[j];
  }
  gscale = dsum / static_cast<double>(n);
  if (!(gscale > 0)) gscale = 1.0;
  W0Q = buf(mn);
  P = buf(mn);
  blas::gemm_rm<T>(false, true, mi, ni, ni, T(1), data.W0, ni, Qt.data(), ni, T(0), W0Q.data(), ni);
  parallel_each(mn, [&](index_t i) { P[i] = W0Q[i] * d[i % n]; });
  if (!nonlin) {
    nobj = parallel_root_sum(mn, [&](index_t i) {
      return static_cast<double>(d[i % n]) * W0Q[i] * W0Q[i];
    });
    if (!(nobj > 0)) nobj = 1.0;
    return;
  }
  XtQ = buf(N * n);
  blas::gemm_rm<T>(true, true, Ni, ni, ni, T(1), data.X, Ni, Qt.data(), ni, T(0), XtQ.data(), ni);
  Z0 = buf(mN);
  blas::gemm_rm<T>(false, false, mi, Ni, ni, T(1), data.W0, ni, data.X, Ni, T(0), Z0.data(), Ni);
  Y = buf(mN);
  const T slope = static_cast<T>(pb.negative_slope);
  parallel_each(mN, [&](index_t i) {
    const T b = data.bias ? data.bias[i / N] : T(0);
    Y[i] = act_value(Z0[i] + b, pb.activation, slope);
  });
  nobj = nrm(Y.data(), mN);
  if (!(nobj > 0)) nobj = 1.0;
  nZ = nrm(Z0.data(), mN);
  if (!(nZ > 0)) nZ = 1.0;
}

template struct DataTerms<float>;
template struct DataTerms<double>;

}  // namespace lrs::admm_detail
