// Additive quantization core: see aq.hpp for the conventions.
#include "aq.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "blas.hpp"
#include "errors.hpp"

namespace lrs::aq {
namespace {

void check_dims(index_t N, index_t d, int M, index_t K) {
  if (N < 0) throw std::invalid_argument("aq: N must be >= 0");
  if (d < 1) throw std::invalid_argument("aq: sub-vector length d must be >= 1");
  if (M < 1 || M > kMaxM)
    throw std::invalid_argument("aq: M must be in [1, " + std::to_string(kMaxM) + "]");
  if (K < 2 || K > kMaxK)
    throw std::invalid_argument("aq: K must be in [2, " + std::to_string(kMaxK) + "]");
  if (static_cast<index_t>(M) * K > std::numeric_limits<int>::max() / 2)
    throw std::invalid_argument("aq: M*K too large");
}

// Run fn(begin, end, workspace_index) over [0, n) in chunks of `chunk`, on `threads` threads.
// Exceptions from workers are re-thrown in the caller.
template <class Fn>
void run_chunks(index_t n, index_t chunk, int threads, Fn&& fn) {
  if (n <= 0) return;
  const index_t nchunks = (n + chunk - 1) / chunk;
  const int nt = static_cast<int>(std::max<index_t>(1, std::min<index_t>(threads, nchunks)));
  std::atomic<index_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&](int tid) {
    try {
      for (;;) {
        const index_t c = next.fetch_add(1);
        if (c >= nchunks) break;
        const index_t b = c * chunk;
        fn(b, std::min(n, b + chunk), tid);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(nchunks);
    }
  };
  if (nt == 1) {
    worker(0);
  } else {
    std::vector<std::thread> pool;
    pool.reserve(nt - 1);
    for (int t = 1; t < nt; ++t) pool.emplace_back(worker, t);
    worker(0);
    for (auto& th : pool) th.join();
  }
  if (error) std::rethrow_exception(error);
}

// Codeword tables shared by all threads: squared norms (MK,) and, when small enough, the
// Gram table (MK, MK).  Without the table, cross terms are dot products on the fly.
template <class T>
struct Tables {
  const T* C = nullptr;
  int M = 0;
  index_t K = 0, d = 0, MK = 0;
  std::vector<T> norms;  // (MK,)
  std::vector<T> gram;   // (MK, MK) or empty

  Tables(const T* C_, int M_, index_t K_, index_t d_) : C(C_), M(M_), K(K_), d(d_), MK(M_ * K_) {
    norms.resize(MK);
    for (index_t i = 0; i < MK; ++i) {
      double s = 0;
      const T* c = C + i * d;
      for (index_t t = 0; t < d; ++t) s += double(c[t]) * c[t];
      norms[i] = static_cast<T>(s);
    }
    if (MK * MK <= kMaxGramEntries) {
      gram.resize(MK * MK);
      const int n = static_cast<int>(MK), k = static_cast<int>(d);
      blas::gemm_rm<T>(false, true, n, n, k, T(1), C, k, C, k, T(0), gram.data(), n);
    }
  }

  // acc[k] += scale * <C[j, cj], C[m, k]>  for k in [0, K)
  void add_cross(int j, index_t cj, int m, double scale, double* acc) const {
    if (!gram.empty()) {
      const T* row = gram.data() + (j * K + cj) * MK + m * K;
      for (index_t k = 0; k < K; ++k) acc[k] += scale * row[k];
    } else {
      const T* a = C + (j * K + cj) * d;
      const T* Cm = C + m * K * d;
      for (index_t k = 0; k < K; ++k) {
        const T* b = Cm + k * d;
        double s = 0;
        for (index_t t = 0; t < d; ++t) s += double(a[t]) * b[t];
        acc[k] += scale * s;
      }
    }
  }

  // bv[i] = ||c_i||^2 - 2 <x, c_i> for all MK codewords   (xc: (MK,) inner products of x)
  void unary(const T* xc, double* bv) const {
    for (index_t i = 0; i < MK; ++i) bv[i] = double(norms[i]) - 2.0 * double(xc[i]);
  }
  // acc[k] = bv[m*K + k]
  void base(int m, const double* bv, double* acc) const { std::copy_n(bv + m * K, K, acc); }
};

// Exact squared error of one tuple, in double.   x (d,), tuple (M,)
template <class T>
double tuple_error(const T* x, const T* C, int M, index_t K, index_t d, const int* tuple,
                   double* resid) {
  for (index_t t = 0; t < d; ++t) resid[t] = x[t];
  for (int m = 0; m < M; ++m) {
    const T* c = C + (m * K + tuple[m]) * d;
    for (index_t t = 0; t < d; ++t) resid[t] -= c[t];
  }
  double s = 0;
  for (index_t t = 0; t < d; ++t) s += resid[t] * resid[t];
  return s;
}

index_t argmin(const double* a, index_t n) {
  index_t best = 0;
  for (index_t k = 1; k < n; ++k)
    if (a[k] < a[best]) best = k;
  return best;
}

// Greedy tuple for one vector (codebook order).   bv (MK,) unary scores, tuple (M,) out, acc (K,) scratch
template <class T>
void greedy_one(const Tables<T>& tb, const double* bv, int* tuple, double* acc) {
  for (int m = 0; m < tb.M; ++m) {
    tb.base(m, bv, acc);
    for (int j = 0; j < m; ++j) tb.add_cross(j, tuple[j], m, 2.0, acc);
    tuple[m] = static_cast<int>(argmin(acc, tb.K));
  }
}

// Coordinate-wise refinement: re-pick each code optimally given the others.
template <class T>
void refine_one(const Tables<T>& tb, const double* bv, int* tuple, double* acc, int passes) {
  for (int p = 0; p < passes; ++p) {
    bool changed = false;
    for (int m = 0; m < tb.M; ++m) {
      tb.base(m, bv, acc);
      for (int j = 0; j < tb.M; ++j)
        if (j != m) tb.add_cross(j, tuple[j], m, 2.0, acc);
      const int best = static_cast<int>(argmin(acc, tb.K));
      if (acc[best] < acc[tuple[m]]) {
        tuple[m] = best;
        changed = true;
      }
    }
    if (!changed) break;
  }
}

// Bounded sorted list of the B best distinct partial tuples.
struct Beam {
  int B = 1, M = 1, count = 0;
  std::vector<int> codes;      // (B, M), -1 = unassigned
  std::vector<double> scores;  // (B,)
  void reset(int B_, int M_) {
    B = B_;
    M = M_;
    count = 0;
    codes.assign(static_cast<size_t>(B) * M, -1);
    scores.assign(B, 0.0);
  }
  double threshold() const {
    return count < B ? std::numeric_limits<double>::infinity() : scores[count - 1];
  }
  // Insert `parent` with code[m] = k and score s, unless the same tuple is already kept.
  void offer(const int* parent, int m, int k, double s) {
    for (int i = 0; i < count; ++i) {
      const int* c = codes.data() + static_cast<size_t>(i) * M;
      if (c[m] != k) continue;
      bool same = true;
      for (int j = 0; j < M && same; ++j)
        if (j != m && c[j] != parent[j]) same = false;
      if (same) return;
    }
    int pos = count < B ? count : B - 1;
    while (pos > 0 && scores[pos - 1] > s) --pos;
    const int last = count < B ? count : B - 1;
    for (int i = last; i > pos; --i) {
      scores[i] = scores[i - 1];
      std::copy_n(codes.data() + static_cast<size_t>(i - 1) * M, M,
                  codes.data() + static_cast<size_t>(i) * M);
    }
    scores[pos] = s;
    int* dst = codes.data() + static_cast<size_t>(pos) * M;
    std::copy_n(parent, M, dst);
    dst[m] = k;
    if (count < B) ++count;
  }
};

template <class T>
void beam_one(const Tables<T>& tb, const double* bv, int B, Beam& cur, Beam& nxt, double* acc,
              int* best_tuple) {
  const int M = tb.M;
  cur.reset(B, M);
  cur.count = 1;  // the empty tuple, score 0
  for (int step = 0; step < M; ++step) {
    nxt.reset(B, M);
    for (int h = 0; h < cur.count; ++h) {
      const int* hc = cur.codes.data() + static_cast<size_t>(h) * M;
      const double hs = cur.scores[h];
      for (int m = 0; m < M; ++m) {
        if (hc[m] >= 0) continue;
        const index_t K = tb.K;
        double thr = nxt.threshold();
        if (!tb.gram.empty()) {  // fused: unary score + cross terms from the Gram rows
          const T* rows[kMaxM];
          int nr = 0;
          for (int j = 0; j < M; ++j)
            if (hc[j] >= 0) rows[nr++] = tb.gram.data() + (j * K + hc[j]) * tb.MK + m * K;
          const double* b = bv + m * K;
          for (index_t k = 0; k < K; ++k) {
            double s = hs + b[k];
            for (int r = 0; r < nr; ++r) s += 2.0 * double(rows[r][k]);
            if (s < thr) {
              nxt.offer(hc, m, static_cast<int>(k), s);
              thr = nxt.threshold();
            }
          }
          continue;
        }
        tb.base(m, bv, acc);
        for (int j = 0; j < M; ++j)
          if (hc[j] >= 0) tb.add_cross(j, hc[j], m, 2.0, acc);
        for (index_t k = 0; k < K; ++k) {
          const double s = hs + acc[k];
          if (s < thr) {
            nxt.offer(hc, m, static_cast<int>(k), s);
            thr = nxt.threshold();
          }
        }
      }
    }
    std::swap(cur, nxt);
  }
  std::copy_n(cur.codes.data(), M, best_tuple);
}

template <class T>
void check_codes(const std::uint16_t* codes, index_t N, int M, index_t K) {
  for (index_t i = 0; i < N * M; ++i)
    if (codes[i] >= K)
      throw std::invalid_argument("aq: code " + std::to_string(codes[i]) + " out of range [0, " +
                                  std::to_string(K) + ")");
}

// Shared driver: per chunk, one GEMM for <x, c>, then per-vector work.
template <class T, class PerVector>
void encode_driver(const T* X, index_t N, index_t d, const T* C, int M, index_t K, int threads,
                   index_t chunk, std::uint16_t* codes, T* err, PerVector&& per_vector) {
  blas::require_loaded();
  check_dims(N, d, M, K);
  if (threads < 1) throw std::invalid_argument("aq: threads must be >= 1");
  if (chunk < 1) throw std::invalid_argument("aq: chunk must be >= 1");
  if (N == 0) return;
  Tables<T> tb(C, M, K, d);
  const index_t MK = tb.MK;
  run_chunks(N, chunk, threads, [&](index_t b, index_t e, int) {
    const index_t n = e - b;
    std::vector<T> xc(static_cast<size_t>(n * MK));
    blas::gemm_rm<T>(false, true, static_cast<int>(n), static_cast<int>(MK), static_cast<int>(d),
                     T(1), X + b * d, static_cast<int>(d), C, static_cast<int>(d), T(0),
                     xc.data(), static_cast<int>(MK));
    std::vector<double> acc(K), resid(d), bv(MK);
    std::vector<int> tuple(M);
    auto state = per_vector.make_state(M);
    for (index_t i = 0; i < n; ++i) {
      const T* x = X + (b + i) * d;
      tb.unary(xc.data() + i * MK, bv.data());
      const double e2 = per_vector(tb, x, bv.data(), tuple.data(), acc.data(),
                                   resid.data(), state);
      for (int m = 0; m < M; ++m) codes[(b + i) * M + m] = static_cast<std::uint16_t>(tuple[m]);
      err[b + i] = static_cast<T>(e2);
    }
  });
}

template <class T>
struct GreedyOp {
  struct State {};
  State make_state(int) const { return {}; }
  double operator()(const Tables<T>& tb, const T* x, const double* bv, int* tuple, double* acc,
                    double* resid, State&) const {
    greedy_one(tb, bv, tuple, acc);
    return tuple_error(x, tb.C, tb.M, tb.K, tb.d, tuple, resid);
  }
};

template <class T>
struct BeamOp {
  int B = 1, refine = 0;
  struct State {
    Beam cur, nxt;
    std::vector<int> greedy;
  };
  State make_state(int M) const {
    State s;
    s.greedy.resize(M);
    return s;
  }
  double operator()(const Tables<T>& tb, const T* x, const double* bv, int* tuple, double* acc,
                    double* resid, State& st) const {
    const int M = tb.M;
    beam_one(tb, bv, B, st.cur, st.nxt, acc, tuple);
    double e = tuple_error(x, tb.C, M, tb.K, tb.d, tuple, resid);
    greedy_one(tb, bv, st.greedy.data(), acc);
    const double eg = tuple_error(x, tb.C, M, tb.K, tb.d, st.greedy.data(), resid);
    if (eg < e) {
      std::copy_n(st.greedy.data(), M, tuple);
      e = eg;
    }
    if (refine > 0) {
      std::vector<int>& saved = st.greedy;  // reuse as backup of the pre-refinement tuple
      std::copy_n(tuple, M, saved.data());
      refine_one(tb, bv, tuple, acc, refine);
      const double er = tuple_error(x, tb.C, M, tb.K, tb.d, tuple, resid);
      if (er <= e) {
        e = er;
      } else {  // rounding in the expanded scores: keep the exact-better tuple
        std::copy_n(saved.data(), M, tuple);
      }
    }
    return e;
  }
};

}  // namespace

template <class T>
void encode_beam(const T* X, index_t N, index_t d, const T* C, int M, index_t K,
                 const EncodeOptions& opt, std::uint16_t* codes, T* err) {
  if (opt.beam < 1) throw std::invalid_argument("aq: beam must be >= 1");
  if (opt.refine < 0) throw std::invalid_argument("aq: refine must be >= 0");
  BeamOp<T> op;
  op.B = opt.beam;
  op.refine = opt.refine;
  encode_driver(X, N, d, C, M, K, opt.threads, opt.chunk, codes, err, op);
}

template <class T>
void encode_greedy(const T* X, index_t N, index_t d, const T* C, int M, index_t K, int threads,
                   std::uint16_t* codes, T* err) {
  encode_driver(X, N, d, C, M, K, threads, 256, codes, err, GreedyOp<T>{});
}

template <class T>
void decode(const std::uint16_t* codes, index_t N, const T* C, int M, index_t K, index_t d,
            T* out) {
  check_dims(N, d, M, K);
  check_codes<T>(codes, N, M, K);
  for (index_t i = 0; i < N; ++i) {
    T* o = out + i * d;
    std::fill_n(o, d, T(0));
    for (int m = 0; m < M; ++m) {
      const T* c = C + (m * K + codes[i * M + m]) * d;
      for (index_t t = 0; t < d; ++t) o[t] += c[t];
    }
  }
}

template <class T>
void ls_update(const T* X, index_t N, index_t d, const std::uint16_t* codes, int M, index_t K,
               const T* C_prev, double ridge, T* C_out) {
  blas::require_loaded();
  check_dims(N, d, M, K);
  if (!(ridge > 0) || !std::isfinite(ridge))
    throw std::invalid_argument("aq: ridge must be a positive finite number");
  const index_t MK = static_cast<index_t>(M) * K;
  if (MK > kMaxLsUnknowns)
    throw std::invalid_argument("aq: M*K = " + std::to_string(MK) + " exceeds " +
                                std::to_string(kMaxLsUnknowns) +
                                " for the joint least-squares update");
  check_codes<T>(codes, N, M, K);
  std::vector<double> A(static_cast<size_t>(MK * MK), 0.0);  // B^T B + ridge I   (MK, MK)
  std::vector<double> R(static_cast<size_t>(MK * d), 0.0);   // B^T X + ridge C_prev (MK, d)
  for (index_t i = 0; i < N; ++i) {
    const std::uint16_t* c = codes + i * M;
    const T* x = X + i * d;
    for (int m = 0; m < M; ++m) {
      const index_t r = m * K + c[m];
      double* Ar = A.data() + r * MK;
      for (int j = 0; j < M; ++j) Ar[j * K + c[j]] += 1.0;
      double* Rr = R.data() + r * d;
      for (index_t t = 0; t < d; ++t) Rr[t] += x[t];
    }
  }
  for (index_t r = 0; r < MK; ++r) {
    A[r * MK + r] += ridge;
    for (index_t t = 0; t < d; ++t) R[r * d + t] += ridge * double(C_prev[r * d + t]);
  }
  // A symmetric: row-major == column-major.  A = L L^T, then R^T (d, MK column-major, which is
  // R row-major) := R^T L^{-T} L^{-1}, i.e. R := A^{-1} R.
  const auto& lp = blas::routines<double>();
  const int n = static_cast<int>(MK), nd = static_cast<int>(d);
  int info = 0;
  lp.potrf("L", &n, A.data(), &n, &info);
  lapack_check("potrf (aq: Cholesky of the normal matrix)", info);
  const double one = 1.0;
  lp.trsm("R", "L", "T", "N", &nd, &n, &one, A.data(), &n, R.data(), &nd);
  lp.trsm("R", "L", "N", "N", &nd, &n, &one, A.data(), &n, R.data(), &nd);
  for (index_t i = 0; i < MK * d; ++i) C_out[i] = static_cast<T>(R[i]);
}

#define LRS_AQ_INSTANTIATE(T)                                                                   \
  template void encode_beam<T>(const T*, index_t, index_t, const T*, int, index_t,              \
                               const EncodeOptions&, std::uint16_t*, T*);                       \
  template void encode_greedy<T>(const T*, index_t, index_t, const T*, int, index_t, int,       \
                                 std::uint16_t*, T*);                                           \
  template void decode<T>(const std::uint16_t*, index_t, const T*, int, index_t, index_t, T*);  \
  template void ls_update<T>(const T*, index_t, index_t, const std::uint16_t*, int, index_t,    \
                             const T*, double, T*);

LRS_AQ_INSTANTIATE(float)
LRS_AQ_INSTANTIATE(double)

#undef LRS_AQ_INSTANTIATE

}  // namespace lrs::aq
