#include "admm.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "blas.hpp"
#include "parallel.hpp"
#include "prox.hpp"
#include "svd.hpp"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define LRS_X86_DISPATCH 1
#else
#define LRS_X86_DISPATCH 0
#endif

namespace lrs {

namespace {
std::atomic<bool>& simd_slot() {
  static std::atomic<bool> on{simd_available()};
  return on;
}
}  // namespace

bool simd_available() {
#if LRS_X86_DISPATCH
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool simd_enabled() { return simd_slot().load(std::memory_order_relaxed); }

void set_simd_enabled(bool on) { simd_slot().store(on && simd_available(), std::memory_order_relaxed); }

namespace {

// f(i) for i in [0, n), parallel.
template <class F>
void each(index_t n, F&& f) {
  parallel_for(n, [&](index_t b, index_t e) {
    for (index_t i = b; i < e; ++i) f(i);
  });
}

// sqrt(sum_i f(i)) with f(i) >= 0, accumulated in double per chunk.
template <class F>
double root_sum(index_t n, F&& f) {
  const int chunks = num_chunks(n);
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
  parallel_chunks(n, chunks, [&](int c, index_t b, index_t e) {
    double acc = 0;
    for (index_t i = b; i < e; ++i) acc += static_cast<double>(f(i));
    part[static_cast<size_t>(c)] = acc;
  });
  double s = 0;
  for (double v : part) s += v;
  return std::sqrt(std::max(s, 0.0));
}

// Per-chunk accumulation of K sums in double: f(i, acc) adds to acc[0..K).
template <int K, class F>
std::array<double, K> sums(index_t n, F&& f) {
  const int chunks = num_chunks(n);
  std::vector<std::array<double, K>> part(static_cast<size_t>(chunks));
  parallel_chunks(n, chunks, [&](int c, index_t b, index_t e) {
    std::array<double, K> acc{};
    for (index_t i = b; i < e; ++i) f(i, acc.data());
    part[static_cast<size_t>(c)] = acc;
  });
  std::array<double, K> total{};
  for (const auto& a : part)
    for (int j = 0; j < K; ++j) total[j] += a[j];
  return total;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class T>
double nrm(const T* x, index_t n) {
  return root_sum(n, [&](index_t i) { return static_cast<double>(x[i]) * x[i]; });
}

int as_int(index_t v, const char* what) {
  if (v < 0 || v > 2147483647) throw std::invalid_argument(std::string("lrs admm: ") + what + " too large");
  return static_cast<int>(v);
}

template <class T>
inline T act_value(T u, Activation a, T slope) {
  switch (a) {
    case Activation::Relu: return u > T(0) ? u : T(0);
    case Activation::LeakyRelu: return u >= T(0) ? u : u * slope;
    case Activation::Gelu: return u * (T(0.5) * (T(1) + std::erf(u * T(0.70710678118654752440))));
    case Activation::Silu: return u / (T(1) + std::exp(-u));
    case Activation::Tanh: return std::tanh(u);
    default: return u;
  }
}

// (act, act', act'') for the smooth activations.
template <class T>
inline void act_derivs(T u, Activation a, T& f, T& d1, T& d2) {
  if (a == Activation::Gelu) {
    const T cdf = T(0.5) * (T(1) + std::erf(u * T(0.70710678118654752440)));
    const T pdf = T(0.39894228040143267794) * std::exp(T(-0.5) * u * u);
    f = u * cdf;
    d1 = cdf + u * pdf;
    d2 = pdf * (T(2) - u * u);
  } else if (a == Activation::Silu) {
    const T sg = T(1) / (T(1) + std::exp(-u));
    f = u * sg;
    d1 = sg * (T(1) + u * (T(1) - sg));
    d2 = sg * (T(1) - sg) * (T(2) + u * (T(1) - T(2) * sg));
  } else {  // tanh
    const T t = std::tanh(u);
    f = t;
    d1 = T(1) - t * t;
    d2 = T(-2) * t * d1;
  }
}

template <class T>
inline T zobj(T a, T y, T u, T c, T rho) {
  const T e = y - a, q = u - c;
  return T(0.5) * e * e + T(0.5) * rho * q * q;
}

// Safeguarded Newton steps on 1/2 (y - act(x))^2 + rho/2 (x - c)^2 from x.
template <class T>
T newton1d(T y, T c, T x, T rho, Activation act, T slope, int steps) {
  for (int it = 0; it < steps; ++it) {
    T f, d1, d2;
    act_derivs(x, act, f, d1, d2);
    const T r = f - y;
    const T g = r * d1 + rho * (x - c);
    const T rd2 = r * d2;
    const T h = d1 * d1 + rho + (rd2 > T(0) ? rd2 : T(0));
    const T step = g / h;
    const T f0 = zobj(f, y, x, c, rho);
    T t = 1;
    const T base = x;
    for (int b = 0; b < 4; ++b) {
      const T cand = base - t * step;
      const T fc = zobj(act_value(cand, act, slope), y, cand, c, rho);
      if (fc <= f0) {
        x = cand;
        break;
      }
      t *= T(0.5);
    }
  }
  return x;
}

// Residual balancing (Boyd et al. 2011, 3.4.1) times the slow geometric increase.
double balance(double r, double s, double mu, double tau, double growth) {
  double f = 1.0;
  if (r > mu * s)
    f = tau;
  else if (s > mu * r)
    f = 1.0 / tau;
  return f * growth;
}

}  // namespace

template <class T>
void zstep(const T* y, const T* c, T* u, index_t count, T rho, Activation act, T slope,
           int newton_steps) {
  if (act == Activation::Identity) {
    each(count, [&](index_t i) { u[i] = (y[i] + rho * c[i]) / (T(1) + rho); });
    return;
  }
  if (act == Activation::Relu || act == Activation::LeakyRelu) {
    const T a = act == Activation::Relu ? T(0) : slope;
    each(count, [&](index_t i) {
      T u1 = (y[i] + rho * c[i]) / (T(1) + rho);
      u1 = u1 > T(0) ? u1 : T(0);
      T u2 = (a * y[i] + rho * c[i]) / (a * a + rho);
      u2 = u2 < T(0) ? u2 : T(0);
      const T f1 = zobj(u1, y[i], u1, c[i], rho);
      const T f2 = zobj(a * u2, y[i], u2, c[i], rho);
      u[i] = f1 <= f2 ? u1 : u2;
    });
    return;
  }
  // Two starts: the warm start u and the ReLU closed form; keep the better end point.
  each(count, [&](index_t i) {
    const T yi = y[i], ci = c[i];
    T r1 = (yi + rho * ci) / (T(1) + rho);
    r1 = r1 > T(0) ? r1 : T(0);
    const T r2 = ci < T(0) ? ci : T(0);
    const T start_b = zobj(r1, yi, r1, ci, rho) <= zobj(T(0), yi, r2, ci, rho) ? r1 : r2;
    const T ua = newton1d(yi, ci, u[i], rho, act, slope, newton_steps);
    const T ub = newton1d(yi, ci, start_b, rho, act, slope, newton_steps);
    const T fa = zobj(act_value(ua, act, slope), yi, ua, ci, rho);
    const T fb = zobj(act_value(ub, act, slope), yi, ub, ci, rho);
    u[i] = fa <= fb ? ua : ub;
  });
}

namespace {

// out.U (m, g rt) = U_i sqrt(s_i), out.V (g rt, n) = block-diagonal sqrt(s_i) V_i^T from
// the per-slice factors Ub (g, m, r), sb (g, r), Vtb (g, >= r, n / g) (slice s's rows at
// Vtb + s * vstride, vstride = r * n / g unless given); q[i] triplets kept.
template <class T>
void write_factors(AdmmResult<T>& out, index_t m, index_t n, index_t g, index_t r, index_t rt,
                   const std::vector<index_t>& q, const std::vector<T>& Ub,
                   const std::vector<T>& sb, const std::vector<T>& Vtb, index_t vstride = -1) {
  const index_t nsl = n / g;
  out.rt = rt;
  out.U.assign(static_cast<size_t>(m * g * rt), T(0));
  out.V.assign(static_cast<size_t>(g * rt * n), T(0));
  for (index_t s = 0; s < g && rt > 0; ++s) {
    const index_t qq = q[static_cast<size_t>(s)];
    const T* U_ = Ub.data() + s * m * r;
    const T* s_ = sb.data() + s * r;
    const T* Vt_ = Vtb.data() + s * (vstride >= 0 ? vstride : r * nsl);
    for (index_t j = 0; j < qq; ++j) {
      const T sq = std::sqrt(s_[j]);
      for (index_t i = 0; i < m; ++i) out.U[i * g * rt + s * rt + j] = U_[i * r + j] * sq;
      for (index_t c = 0; c < nsl; ++c) out.V[(s * rt + j) * n + s * nsl + c] = sq * Vt_[j * nsl + c];
    }
  }
}

// Calls f(A{}, B{}, ...) with A, B, ... = std::bool_constant of the run-time flags a, b,
// ...: one call site instantiates the 2^k specialisations of a row kernel.
template <class F>
inline void with_flags(F&& f) {
  f();
}
template <class F, class... Bs>
inline void with_flags(F&& f, bool a, Bs... bs) {
  auto bind = [&](auto tag) { with_flags([&](auto... rest) { f(tag, rest...); }, bs...); };
  a ? bind(std::true_type{}) : bind(std::false_type{});
}

// The row kernels (sumsq, p4_row, topk_keep, p3_seg_topk, p4_row_topk), compiled twice:
// for the baseline ISA (kbase) and, on x86-64 with GCC or Clang, for AVX2 + FMA (kavx2,
// chosen at run time when the CPU has both; see simd_avx2()).  -ffp-contract=off keeps
// the two bitwise identical (no fused multiply-adds the baseline would not form).
#define LRS_KERNEL_NS kbase
#include "admm_kernels.inc"
#undef LRS_KERNEL_NS
#if LRS_X86_DISPATCH
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define LRS_KERNEL_NS kavx2
#include "admm_kernels.inc"
#undef LRS_KERNEL_NS
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
namespace kavx2 = kbase;
#endif

// S of one ADMM iteration as a function of its S-step input T (the state the fused
// weight mode keeps instead of S, Lam, W): S = P(T) with the selection fixed once per
// iteration (top-k cut, per-group factors, soft threshold), decoded row by row.
template <class T>
struct SDecode {
  bool zero = true;  // S = 0 (no sparse part, or before the first S-step)
  Structure st;
  bool relaxed = false;
  index_t m = 0, n = 0;
  TopkCut cut;                // unstructured, hard
  T tval = 0;                 // |value| whose bits are cut.key
  T thr = 0;                  // unstructured, soft threshold
  std::vector<double> scale;  // groups: factor per group (group_count,)
  std::vector<T> colf;        // Column / Channel: factor per column as T (n,)

  // Fix the selection from the whole input t (m, n); k: budget; tau: soft threshold.
  void select(const T* t, index_t k, T tau) {
    zero = false;
    const StructureKind kd = st.kind;
    if (kd == StructureKind::NM) return;
    if (kd == StructureKind::Unstructured) {
      if (relaxed) {
        thr = tau;
      } else {
        cut = topk_select<T>(t, m * n, k);
        if (!cut.keep_none && !cut.keep_all) {
          if constexpr (sizeof(T) == 4) {
            const std::uint32_t kk = static_cast<std::uint32_t>(cut.key);
            std::memcpy(&tval, &kk, sizeof(T));
          } else {
            const std::uint64_t kk = cut.key;
            std::memcpy(&tval, &kk, sizeof(T));
          }
        }
      }
      return;
    }
    if (relaxed)
      group_soft_scale<T>(st, t, m, n, tau, scale.data());
    else
      group_topk_scale<T>(st, t, m, n, k, scale.data());
    if (kd == StructureKind::Column)
      for (index_t j = 0; j < n; ++j) colf[j] = static_cast<T>(scale[j]);
    else if (kd == StructureKind::Channel)
      for (index_t j = 0; j < n; ++j) colf[j] = static_cast<T>(scale[j / st.block]);
  }

  // The cut from the band candidates of the fused loop's P3 (see admm_weight_fused):
  // kk >= 1 is the rank of the k-th largest among them; val/off/cap: the candidates of
  // chunk c are val[cap[c] + j], j < cnt[c].count, at flat index chunk_begin(m, nch, c)
  // * n + off[...].  Same cut as topk_select (ties to the lower flat index).
  template <class Cnt>
  void select_from_band(const std::vector<T>& val, const std::vector<std::uint32_t>& off,
                        const std::vector<index_t>& cap, const std::vector<Cnt>& cnt, index_t rows,
                        int nch, index_t kk) {
    zero = false;
    std::vector<T> work;
    for (int c = 0; c < nch; ++c)
      work.insert(work.end(), val.begin() + cap[c], val.begin() + cap[c] + cnt[c].count);
    std::nth_element(work.begin(), work.begin() + (kk - 1), work.end(), std::greater<T>());
    const T t = work[static_cast<size_t>(kk - 1)];
    index_t greater = 0;
    std::vector<index_t> ties;
    for (int c = 0; c < nch; ++c) {
      const index_t base = chunk_begin(rows, nch, c) * n;
      for (index_t j = cap[c]; j < cap[c] + cnt[c].count; ++j) {
        greater += val[j] > t;
        if (val[j] == t) ties.push_back(base + off[j]);
      }
    }
    const index_t quota = kk - greater;  // ties kept, the lowest flat indices first
    cut = TopkCut();
    cut.key = topk_key<T>(t);
    tval = t;
    if (quota > 0) {
      std::nth_element(ties.begin(), ties.begin() + (quota - 1), ties.end());
      cut.cutoff = ties[static_cast<size_t>(quota - 1)];
    }
  }

  // Which fast path decodes S[i, j0 : j0 + len]: -1 none (use seg), 0 keep |t| > tval,
  // 1 keep |t| >= tval (unstructured hard top-k without a partially kept tie there).
  int topk_mode(index_t i, index_t j0, index_t len) const {
    if (zero || relaxed || st.kind != StructureKind::Unstructured || cut.keep_none || cut.keep_all)
      return -1;
    const index_t last = cut.cutoff - i * n - j0;
    if (last < 0) return 0;
    if (last >= len - 1) return 1;
    return -1;
  }

  // s (n,) = row i of S from row i of the input, t (n,).
  void row(index_t i, const T* t, T* s) const { seg(i, 0, n, t, s); }

  // s (len,) = S[i, j0 : j0 + len] from t (len,) = the input there (for N:M, j0 and len
  // are multiples of nm_m).
  void seg(index_t i, index_t j0, index_t len, const T* t, T* s) const {
    const index_t n = len;
    if (zero) {
      std::fill(s, s + n, T(0));
      return;
    }
    switch (st.kind) {
      case StructureKind::Unstructured:
        if (relaxed) {
          const T tau = thr;
          for (index_t j = 0; j < n; ++j) {
            const T a = std::fabs(t[j]) - tau;
            s[j] = a > 0 ? std::copysign(a, t[j]) : T(0);
          }
        } else if (cut.keep_none) {
          std::fill(s, s + n, T(0));
        } else if (cut.keep_all) {
          std::copy(t, t + n, s);
        } else {
          // |t| > tval, or a tie at or before the cut-off index (topk_project's rule);
          // on non-negative floats this order is the order of the keys.
          const T tv = tval;
          const index_t last = cut.cutoff - i * this->n - j0;  // ties kept at j <= last
          if (last < 0) {  // no tie of this row is kept (the usual case)
            for (index_t j = 0; j < n; ++j) s[j] = std::fabs(t[j]) > tv ? t[j] : T(0);
          } else if (last >= n - 1) {  // every tie of this row is kept
            for (index_t j = 0; j < n; ++j) s[j] = std::fabs(t[j]) >= tv ? t[j] : T(0);
          } else {
            for (index_t j = 0; j < n; ++j) {
              const T a = std::fabs(t[j]);
              s[j] = (a > tv || (a == tv && j <= last)) ? t[j] : T(0);
            }
          }
        }
        break;
      case StructureKind::NM:
        nm_project<T>(t, s, 1, n, st.nm_n, st.nm_m);
        break;
      case StructureKind::Row: {
        const T f = static_cast<T>(scale[static_cast<size_t>(i)]);
        for (index_t j = 0; j < n; ++j) s[j] = t[j] * f;
        break;
      }
      default: {  // Column, Channel
        const T* f = colf.data() + j0;
        for (index_t j = 0; j < n; ++j) s[j] = t[j] * f[j];
      }
    }
  }
};

// Weight mode (F = 1/2 ||W - W0||^2), restructured so that the state is three (m, n)
// arrays instead of four and the elementwise steps are fused into three row-parallel
// passes.  The iteration is the one of the general loop below (and of the torch
// backend) in exact arithmetic; only what is stored differs.  With B = W + Lam (the
// W-step's W plus the rescaled scaled dual):
//   L-step input  A = B - S,          S-step input  T' = B - L',   S' = P(T'),
//   Lam + W - M'  = T' - S' =: Lam',  M' = L' + S' = B - Lam',
//   next Lam = Lam' / f,  next W = (W0 + rh (M' - Lam)) / (1 + rh).
// So S and Lam are functions of T and the iteration's selection (SDecode), and the
// arrays kept are  Tb = T (the last S-step input),  Mb = M (= L + S)  and  Ab (the
// L-step input A while the SVD runs, then the new S-step input T').  W0 is read, never
// copied.  Per iteration:
//   P0  Ab <- A = B - S                   (reads W0, Mb, Tb; skipped when rank = 0)
//   truncated SVD of Ab (two GEMMs with A)
//   P3  per row block: L' tile = (U s) Vt into a cache-sized tile (one small GEMM),
//       Ab <- T' = B - L'                  (reads W0, Mb, Tb; A is no longer needed)
//   selection of S' on Ab (top-k cut: histogram + candidate pass; groups: norms)
//   P4  Mb <- M' = B - Lam' (Lam decoded from Tb, S' from Ab);  sums of the primal and
//       dual residuals and of the objective (reads W0, Mb, Tb, Ab)
//   Tb and Ab swap (O(1)): Tb = T' for the next iteration.
template <class T>
void admm_weight_fused(const AdmmProblem<T>& pb, AdmmResult<T>& out, double t_start, double nW) {
  const index_t m = pb.m, n = pb.n, r = pb.rank, g = pb.slices, p = pb.p;
  const index_t nsl = n / g, mn = m * n;
  const int gt = std::max(1, pb.gemm_threads);
  const bool avx2 = simd_enabled();  // row kernels: kavx2 or kbase (bitwise the same)
  auto row_sumsq = [avx2](const T* x, index_t len) {
    return avx2 ? kavx2::sumsq(x, len) : kbase::sumsq(x, len);
  };
  auto buf = [](index_t sz) { return std::vector<T>(static_cast<size_t>(sz), T(0)); };
  // The three (m, n) arrays are not zeroed: every entry is written before it is read (the
  // first iteration reads none of them: P0 or P3 writes Ab, P4 Mb and Tb), so their pages
  // are first touched by the parallel passes.  Ab ends as the result's S.
  using Buf = std::vector<T, Buffer<T>>;
  Buf Tb(static_cast<size_t>(mn)), Mb(static_cast<size_t>(mn)), Ab(static_cast<size_t>(mn));
  // Row chunks of the fused passes, fixed for the solve: per-chunk scratch, and
  // per-chunk partial sums combined in chunk order (deterministic results).
  const int nch = static_cast<int>(std::max<index_t>(1, std::min<index_t>(num_chunks(mn), m)));
  // Scratch per worker thread (at most `nwk` run at once), not per chunk.
  const int nwk = chunk_workers(get_num_threads(), nch);
  // Per worker: a decoded S row, three residual rows and the previous S row, (5, n).
  std::vector<T> rowS = buf(index_t{nwk} * 5 * n);
  // L' tiles (rb, cb) of about 256 KiB, so that a tile stays in cache between the
  // GEMM that writes it and the pass that reads it; 64-row blocks keep BLAS's packing
  // of Vt cheap.  Column blocks only without slices (cb = n otherwise); for N:M a
  // multiple of the window.
  const index_t rb = std::min<index_t>(64, m);
  index_t cb = n;
  if (g == 1) {
    cb = std::max<index_t>(64, (index_t{1} << 16) / (rb * static_cast<index_t>(sizeof(T))) * 4);
    if (pb.structure.kind == StructureKind::NM) cb = std::max<index_t>(1, cb / pb.structure.nm_m) * pb.structure.nm_m;
    cb = std::min(cb, n);
  }
  std::vector<T> tiles = buf(r > 0 ? index_t{nwk} * rb * cb : 0);  // (nwk, rb, cb)
  std::vector<std::array<double, 3>> part(static_cast<size_t>(nch));
  // f(worker, chunk, begin, end) over the row chunks; scratch by worker, partial
  // results by chunk (combined in chunk order: deterministic).
  auto rows = [&](auto&& f) {
    parallel_chunks_worker_on(get_num_threads(), m, nch,
                              [&](int w, int c, index_t b, index_t e) { f(w, c, b, e); });
  };
  SDecode<T> dold, dnew;  // selections of the previous and of the current iteration
  for (SDecode<T>* d : {&dold, &dnew}) {
    d->st = pb.structure;
    d->relaxed = pb.relaxed;
    d->m = m;
    d->n = n;
    if (pb.sparse && pb.structure.kind != StructureKind::Unstructured &&
        pb.structure.kind != StructureKind::NM) {
      d->scale.assign(static_cast<size_t>(group_count(pb.structure, m, n)), 0.0);
      d->colf.assign(static_cast<size_t>(n), T(0));
    }
  }
  // Warm-started top-k cut (unstructured, hard): P3 counts the entries of T' above a
  // band [lo, hi] around the previous iteration's threshold and collects those inside
  // it (magnitude and offset in the chunk); when the k-th largest falls in the band,
  // the cut comes from these few candidates and the two passes of topk_select over T'
  // (radix histogram, candidate gather) are skipped.  Otherwise (first iteration, band
  // missed or overflowed) topk_select runs as before, and the band adapts.  Same cut
  // either way (the k-th largest magnitude, ties to the lower flat index).
  const bool band_ok = pb.sparse && !pb.relaxed && pb.structure.kind == StructureKind::Unstructured &&
                       pb.k > 0 && pb.k < mn && mn >= (index_t{1} << 12);
  std::vector<index_t> band_cap(static_cast<size_t>(nch) + 1, 0);  // chunk c: [cap[c], cap[c+1])
  for (int c = 0; c < nch && band_ok; ++c) {
    const index_t rows_c = chunk_begin(m, nch, c + 1) - chunk_begin(m, nch, c);
    band_cap[c + 1] = band_cap[c] + rows_c * n / 128 + 256;
  }
  std::vector<T> band_val(static_cast<size_t>(band_ok ? band_cap[nch] : 0));  // |T'| in band
  std::vector<std::uint32_t> band_off(band_val.size());  // offset from the chunk's first entry
  struct BandCount {
    index_t above = 0, count = 0;
    bool overflow = false;
  };
  std::vector<BandCount> band_cnt(static_cast<size_t>(nch));
  std::vector<double> tile_sec(static_cast<size_t>(nch), 0.0);  // per chunk, summed
  double band_rel = 0.01;  // half-width of the band relative to the previous threshold
  bool band_on = false;
  T band_lo = 0, band_hi = 0;
  bool band_fits = true;  // chunk offsets fit in 32 bits
  for (int c = 0; c < nch; ++c)
    if ((chunk_begin(m, nch, c + 1) - chunk_begin(m, nch, c)) * n >= (index_t{1} << 32)) band_fits = false;
  // truncated SVD state per slice
  // Right subspaces as rows, Vs (g, p, nsl): truncated_svd_rows refines them in place,
  // and their first r rows are the right singular vectors of L (no separate copy).
  std::vector<T> Vs, Ub, sb, Tsl, Us;
  SvdWorkspace<T> ws;
  ws.gemm_threads = gt;
  ws.cholqr = pb.cholqr;
  ws.gram_svd = pb.gram_svd;
  std::vector<index_t> q(static_cast<size_t>(g), r);
  if (r > 0) {
    Vs = buf(g * p * nsl);
    for (index_t s = 0; s < g; ++s)
      for (index_t i = 0; i < nsl; ++i)
        for (index_t j = 0; j < p; ++j) Vs[s * p * nsl + j * nsl + i] = pb.V0[s * nsl * p + i * p + j];
    Ub = buf(g * m * r);
    sb = buf(g * r);
    Us = buf(g * m * r);
    if (g > 1) Tsl = buf(m * nsl);
  }
  // L' = (U s) Vt on rows [i0, i0 + len) x columns [j0, j0 + w) into tile (len, w):
  // one small GEMM (g > 1: w = n, one per slice).
  auto form_tile = [&](index_t i0, index_t len, index_t j0, index_t w, T* tile) {
    if (g == 1) {
      blas::gemm_rm<T>(false, false, static_cast<int>(len), static_cast<int>(w),
                       static_cast<int>(r), T(1), Us.data() + i0 * r, static_cast<int>(r),
                       Vs.data() + j0, static_cast<int>(n), T(0), tile, static_cast<int>(w));
      return;
    }
    for (index_t s = 0; s < g; ++s)
      blas::gemm_rm<T>(false, false, static_cast<int>(len), static_cast<int>(nsl),
                       static_cast<int>(r), T(1), Us.data() + s * m * r + i0 * r,
                       static_cast<int>(r), Vs.data() + s * p * nsl, static_cast<int>(nsl), T(0),
                       tile + s * nsl, static_cast<int>(n));
  };
  double rho_rel = pb.rho0;
  const index_t cap = pb.max_iter;
  out.primal.reserve(cap);
  out.dual.reserve(cap);
  out.objective.reserve(cap);
  out.rho.reserve(cap);
  AdmmTiming& tm = out.timing;
  bool first = true;          // B = W0 (no W-step yet, Lam = 0)
  bool a_ready = false;       // Ab already holds the L-step input (P4's speculation)
  T c = 1, rh = 0, rinv = 1;  // Lam = c (T - S); the W-step's rh and 1 / (1 + rh)
  const T* W0 = pb.W0;
  int it = 0;
  bool converged = false;
  for (it = 1; it <= pb.max_iter; ++it) {
    const T rho = static_cast<T>(rho_rel);  // gscale = 1 in weight mode
    double t0 = now();
    // ---- P0: Ab <- A = B - S ----
    if (r > 0) {
      // Rows [b, e) of A into Ab (chunk ch's scratch).
      auto form_a = [&](int wk, int, index_t b, index_t e) {
        T* sr = rowS.data() + index_t{wk} * 5 * n;
        for (index_t i = b; i < e; ++i) {
          const index_t o = i * n;
          const T* t = Tb.data() + o;
          dold.row(i, t, sr);
          T* a = Ab.data() + o;
          const T* w0 = W0 + o;
          if (first) {
            for (index_t j = 0; j < n; ++j) a[j] = w0[j] - sr[j];
          } else {
            const T* mr = Mb.data() + o;
            const T cc = c, rr = rh, ii = rinv;
            for (index_t j = 0; j < n; ++j) {
              const T lam = cc * (t[j] - sr[j]);
              const T w = (w0[j] + rr * (mr[j] - lam)) * ii;
              a[j] = (w + lam) - sr[j];
            }
          }
        }
      };
      if (!a_ready) rows(form_a);
      a_ready = false;
      double t1 = now();
      tm.elementwise += t1 - t0;
      // ---- L-step: truncated SVD of A (per column slice) ----
      for (index_t s = 0; s < g; ++s) {
        const T* Ap = Ab.data();
        if (g > 1) {
          each(m * nsl, [&](index_t i) {
            const index_t row = i / nsl, col = i % nsl;
            Tsl[i] = Ab[row * n + s * nsl + col];
          });
          Ap = Tsl.data();
        }
        T* U_ = Ub.data() + s * m * r;
        T* s_ = sb.data() + s * r;
        truncated_svd_rows<T>(Ap, m, nsl, r, p, pb.power_iters, Vs.data() + s * p * nsl, U_, s_,
                              ws);
        index_t qq = r;
        if (pb.relaxed) {
          const T thr = static_cast<T>(pb.lam_nuclear) / rho;
          qq = 0;
          for (index_t j = 0; j < r; ++j) {
            const T v = s_[j] - thr;
            if (s_[j] > thr) ++qq;
            s_[j] = v > T(0) ? v : T(0);
          }
        }
        q[static_cast<size_t>(s)] = qq;
        T* us = Us.data() + s * m * r;
        for (index_t i = 0; i < m * r; ++i) us[i] = U_[i] * s_[i % r];
      }
      t0 = now();
      tm.svd += t0 - t1;
    }
    // ---- P3: Tb <- T' = B - L' (L' in (rb, cb) tiles), Ab <- Lam ----
    band_on = band_ok && band_fits && !dold.zero && !dold.cut.keep_none && !dold.cut.keep_all &&
              dold.tval > T(0);
    if (band_on) {
      band_lo = static_cast<T>(dold.tval * (1.0 - band_rel));
      band_hi = static_cast<T>(dold.tval * (1.0 + band_rel));
    }
    rows([&](int wk, int ch, index_t b, index_t e) {
      T* sr = rowS.data() + index_t{wk} * 5 * n;
      BandCount bc;
      double tg = 0;  // seconds in the tile GEMMs (this chunk)
      const index_t cap0 = band_on ? band_cap[ch] : 0;
      const index_t cap = band_on ? band_cap[ch + 1] - cap0 : 0;
      T* bval = band_on ? band_val.data() + cap0 : nullptr;
      std::uint32_t* boff = band_on ? band_off.data() + cap0 : nullptr;
      const T lo = band_lo, hi = band_hi;
      // Counts T'[i, j0 : j0 + w] (t) against the band and collects its members.
      // counted: ab / in already known (the fast path counts while it writes t).
      auto band_scan = [&](index_t i, index_t j0, index_t w, const T* t, bool counted,
                           index_t ab, index_t in) {
        if (!counted) {
          ab = 0;
          in = 0;
          for (index_t j = 0; j < w; ++j) {
            const T a = std::fabs(t[j]);
            ab += a > hi;
            in += (a >= lo) & (a <= hi);
          }
        }
        bc.above += ab;
        if (in == 0) return;
        if (bc.overflow || bc.count + in > cap) {
          bc.overflow = true;
          return;
        }
        const auto base = static_cast<std::uint32_t>((i - b) * n + j0);
        T* v = bval + bc.count;
        std::uint32_t* of = boff + bc.count;
        bc.count += avx2 ? kavx2::band_collect(w, t, lo, hi, base, v, of)
                         : kbase::band_collect(w, t, lo, hi, base, v, of);
      };
      T* tile = r > 0 ? tiles.data() + index_t{wk} * rb * cb : nullptr;
      for (index_t i0 = b; i0 < e; i0 += rb) {
        const index_t len = std::min(rb, e - i0);
        for (index_t j0 = 0; j0 < n; j0 += cb) {
          const index_t w = std::min(cb, n - j0);
          if (r > 0) {
            const double tg0 = now();
            form_tile(i0, len, j0, w, tile);
            tg += now() - tg0;
          }
          for (index_t i = i0; i < i0 + len; ++i) {
            const index_t o = i * n + j0;
            const T* to = Tb.data() + o;  // T
            T* t = Ab.data() + o;         // T' (over A, read by the SVD already)
            const T* w0 = W0 + o;
            const T* lt = tile ? tile + (i - i0) * w : nullptr;
            if (first) {  // Lam = 0, B = W0
              if (lt)
                for (index_t j = 0; j < w; ++j) t[j] = w0[j] - lt[j];
              else
                std::copy(w0, w0 + w, t);
            } else if (const int md = dold.topk_mode(i, j0, w); md >= 0) {
              const T* mr = Mb.data() + o;
              const T tv = dold.tval;
              index_t ab = 0, in = 0;
              auto run = [&](auto avx, auto ge, auto has_l, auto band) {
                constexpr bool G = decltype(ge)::value, H = decltype(has_l)::value,
                               Bd = decltype(band)::value;
                if constexpr (decltype(avx)::value)
                  kavx2::p3_seg_topk<T, G, H, Bd>(w, tv, c, rh, rinv, w0, mr, lt, to, t, lo, hi, ab, in);
                else
                  kbase::p3_seg_topk<T, G, H, Bd>(w, tv, c, rh, rinv, w0, mr, lt, to, t, lo, hi, ab, in);
              };
              with_flags(run, avx2, md != 0, lt != nullptr, band_on);
              if (band_on) band_scan(i, j0, w, t, true, ab, in);
              continue;
            } else {
              dold.seg(i, j0, w, to, sr);
              const T* mr = Mb.data() + o;
              const T cc = c, rr = rh, ii = rinv;
              if (lt) {
                for (index_t j = 0; j < w; ++j) {
                  const T lam = cc * (to[j] - sr[j]);
                  const T wv = (w0[j] + rr * (mr[j] - lam)) * ii;
                  t[j] = (wv + lam) - lt[j];
                }
              } else {
                for (index_t j = 0; j < w; ++j) {
                  const T lam = cc * (to[j] - sr[j]);
                  const T wv = (w0[j] + rr * (mr[j] - lam)) * ii;
                  t[j] = wv + lam;
                }
              }
            }
            if (band_on) band_scan(i, j0, w, t, false, 0, 0);
          }
        }
      }
      band_cnt[static_cast<size_t>(ch)] = bc;
      tile_sec[static_cast<size_t>(ch)] += tg;
    });
    double t1 = now();
    tm.lform += t1 - t0;
    // ---- S-step: the selection of S' = P(T') ----
    if (pb.sparse) {
      bool hit = false;
      if (band_on) {
        index_t above = 0, count = 0;
        bool overflow = false;
        for (const auto& bcn : band_cnt) {
          above += bcn.above;
          count += bcn.count;
          overflow = overflow || bcn.overflow;
        }
        if (overflow) {
          band_rel *= 0.25;
        } else if (above < pb.k && pb.k <= above + count) {
          hit = true;
          ++out.band_hits;
          dnew.select_from_band(band_val, band_off, band_cap, band_cnt, m, nch, pb.k - above);
          // Next band: a few times this iteration's move of the threshold (fewer
          // candidates to sort), within [0.2 %, 2 %].
          const double move = std::fabs(static_cast<double>(dnew.tval) - dold.tval) /
                              static_cast<double>(dold.tval);
          band_rel = std::min(0.02, std::max(0.002, 4 * move));
        } else {
          band_rel = std::min(1.0, band_rel * 4);
        }
      }
      if (!hit) dnew.select(Ab.data(), pb.k, static_cast<T>(pb.lam_sparse) / rho);
      t0 = now();
      tm.project += t0 - t1;
      t1 = t0;
    }
    // ---- P4: Lam' = T' - S', M' = B - Lam', residuals; Mb <- M' ----
    // Speculatively also Ab <- the next L-step input A (P0's formula), assuming the
    // penalty update will be the balanced one (factor rho_growth: the usual case once
    // the residuals are within mu of each other); P0 then only runs when it was not.
    const double f_spec = pb.rho_growth;
    const bool spec = pb.speculate_input && r > 0 && it < pb.max_iter;
    const T cs = static_cast<T>(1.0 / f_spec), rs = static_cast<T>(rho_rel * f_spec);
    const T is = T(1) / (T(1) + rs);
    rows([&](int wk, int ch, index_t b, index_t e) {
      T* sr = rowS.data() + index_t{wk} * 5 * n;
      double a0 = 0, a1 = 0, a2 = 0;
      for (index_t i = b; i < e; ++i) {
        const index_t o = i * n;
        T* to = Tb.data() + o;       // T: Lam = c (T - S); then the next A (Spec)
        const T* t = Ab.data() + o;  // T'
        T* mr = Mb.data() + o;
        const T* w0 = W0 + o;
        const T cc = c, rr = rh, ii = rinv;
        const bool fst = first;
        // Elementwise part (vectorisable: no reduction), into three scratch rows.
        T* ev = sr + n;
        T* dm = sr + 2 * n;
        T* eo = sr + 3 * n;
        T* so = sr + 4 * n;
        const int md = dnew.topk_mode(i, 0, n);
        const int mdo = fst ? 0 : dold.topk_mode(i, 0, n);
        if (md >= 0 && mdo >= 0) {
          const T tv = dnew.tval, tvo = dold.tval;
          double sums[3];
          auto run = [&](auto avx, auto geo, auto ge, auto fs, auto sp) {
            constexpr bool GO = decltype(geo)::value, G = decltype(ge)::value,
                           F = decltype(fs)::value, Sp = decltype(sp)::value;
            if constexpr (decltype(avx)::value)
              kavx2::p4_row_topk<T, GO, G, F, Sp>(n, tvo, tv, cc, rr, ii, cs, rs, is, to, w0, t,
                                                  mr, sums);
            else
              kbase::p4_row_topk<T, GO, G, F, Sp>(n, tvo, tv, cc, rr, ii, cs, rs, is, to, w0, t,
                                                  mr, sums);
          };
          with_flags(run, avx2, mdo != 0, md != 0, fst, spec);
          a0 += sums[0];
          a1 += sums[1];
          a2 += sums[2];
          continue;
        }
        dnew.row(i, t, sr);
        if (!fst) dold.row(i, to, so);
        auto run = [&](auto avx, auto fs) {
          if constexpr (decltype(avx)::value)
            kavx2::p4_row<T, decltype(fs)::value>(n, cc, rr, ii, to, so, w0, t, sr, mr, ev, dm, eo);
          else
            kbase::p4_row<T, decltype(fs)::value>(n, cc, rr, ii, to, so, w0, t, sr, mr, ev, dm, eo);
        };
        with_flags(run, avx2, fst);
        if (spec) {  // Tb row (read above) <- next A, as P0 computes it (bitwise)
          T* ar = to;
          for (index_t j = 0; j < n; ++j) {
            const T lam = cs * (t[j] - sr[j]);
            const T w = (w0[j] + rs * (mr[j] - lam)) * is;
            ar[j] = (w + lam) - sr[j];
          }
        }
        a0 += row_sumsq(ev, n);
        a1 += row_sumsq(dm, n);
        a2 += row_sumsq(eo, n);
      }
      part[static_cast<size_t>(ch)] = {a0, a1, a2};
    });
    std::array<double, 3> acc{};
    for (const auto& a : part)
      for (int j = 0; j < 3; ++j) acc[j] += a[j];
    tm.elementwise += now() - t1;
    const double rp = std::sqrt(acc[0]) / nW;
    const double sd = rho_rel * std::sqrt(acc[1]) / nW;
    const double obj = std::sqrt(acc[2]) / nW;
    out.primal.push_back(rp);
    out.dual.push_back(sd);
    out.objective.push_back(obj);
    out.rho.push_back(rho_rel);
    std::swap(dold, dnew);  // dold decodes Tb from here on
    std::swap(Tb, Ab);      // Tb <- T'; Ab <- the next A (speculated) or free
    if (rp < pb.tol && sd < pb.tol) {
      converged = true;
      break;
    }
    if (it == pb.max_iter) break;
    // ---- penalty update (scaled dual rescaled) and the implicit W-step ----
    const double f = balance(rp, sd, pb.mu, pb.tau, pb.rho_growth);
    rho_rel *= f;
    c = static_cast<T>(1.0 / f);
    rh = static_cast<T>(rho_rel);
    rinv = T(1) / (T(1) + rh);
    first = false;
    a_ready = spec && f == f_spec;  // (then c, rh, rinv equal cs, rs, is bitwise)
    if (a_ready) ++out.speculation_hits;
  }
  for (double v : tile_sec) tm.lform_gemm_thread += v;
  out.iterations = std::min(it, pb.max_iter);
  out.converged = converged;
  out.rho_final = rho_rel;
  out.rho_z_final = pb.rho0;
  out.gscale = 1.0;
  // S of the last iteration, decoded into Ab (no longer needed) and moved out.  With
  // refit_weight, its values on its support are then replaced by those of W0 - L (the
  // exact minimiser of ||W0 - L - S|| for this L and support), L formed in tiles as in
  // P3, and the errors before and after are summed per chunk (deterministic).
  if (pb.sparse && pb.refit_weight) {
    rows([&](int wk, int ch, index_t b, index_t e) {
      T* tile = r > 0 ? tiles.data() + index_t{wk} * rb * cb : nullptr;
      double before = 0, after = 0;
      for (index_t i0 = b; i0 < e; i0 += rb) {
        const index_t len = std::min(rb, e - i0);
        for (index_t j0 = 0; j0 < n; j0 += cb) {
          const index_t w = std::min(cb, n - j0);
          if (tile) form_tile(i0, len, j0, w, tile);
          for (index_t i = i0; i < i0 + len; ++i) {
            const index_t o = i * n + j0;
            T* sr = Ab.data() + o;
            const T* w0 = W0 + o;
            const T* lt = tile ? tile + (i - i0) * w : nullptr;
            dold.seg(i, j0, w, Tb.data() + o, sr);
            for (index_t j = 0; j < w; ++j) {
              const T ev = lt ? w0[j] - lt[j] : w0[j];  // (W0 - L)[i, j]
              const double d0 = static_cast<double>(ev) - sr[j];
              before += d0 * d0;
              if (sr[j] != T(0)) {
                sr[j] = ev;
              } else {
                after += static_cast<double>(ev) * ev;
              }
            }
          }
        }
      }
      part[static_cast<size_t>(ch)] = {before, after, 0.0};
    });
    double before = 0, after = 0;
    for (const auto& a : part) {
      before += a[0];
      after += a[1];
    }
    out.refit_before = std::sqrt(before) / nW;
    out.refit_after = std::sqrt(after) / nW;
    out.S = std::move(Ab);
  } else if (pb.sparse) {
    rows([&](int, int, index_t b, index_t e) {
      for (index_t i = b; i < e; ++i) dold.row(i, Tb.data() + i * n, Ab.data() + i * n);
    });
    out.S = std::move(Ab);
  } else {
    out.S.assign(static_cast<size_t>(mn), T(0));
  }
  tm.svd_products = ws.t_products;
  tm.svd_qr = ws.t_qr;
  tm.svd_small = ws.t_small;
  out.qr_fallbacks = ws.qr_fallbacks;
  out.gram_fallbacks = ws.gram_fallbacks;
  tm.total = now() - t_start;
  index_t rt = r;
  if (pb.relaxed && r > 0) rt = *std::max_element(q.begin(), q.end());
  write_factors(out, m, n, g, r, rt, q, Ub, sb, Vs, p * nsl);
}

}  // namespace

template <class T>
void admm_solve(const AdmmProblem<T>& pb, AdmmResult<T>& out) {
  blas::require_loaded();
  const index_t m = pb.m, n = pb.n, r = pb.rank, g = pb.slices, p = pb.p;
  if (m < 1 || n < 1 || pb.W0 == nullptr) throw std::invalid_argument("lrs admm: empty W0");
  if (g < 1 || n % g != 0) throw std::invalid_argument("lrs admm: slices must divide n");
  const index_t nsl = n / g;
  if (r < 0 || (r > 0 && (p < r || p > std::min(m, nsl) || pb.V0 == nullptr)))
    throw std::invalid_argument("lrs admm: need 0 <= rank <= p <= min(m, n/slices) and V0");
  if (r == 0 && !pb.sparse) throw std::invalid_argument("lrs admm: neither L nor S");
  if (pb.max_iter < 1 || !(pb.tol > 0) || !(pb.rho0 > 0) || !(pb.tau > 1) || !(pb.mu > 1) ||
      !(pb.rho_growth >= 1))
    throw std::invalid_argument("lrs admm: bad iteration settings");
  if (pb.mode == AdmmMode::Gram && pb.gram == nullptr)
    throw std::invalid_argument("lrs admm: mode Gram needs gram");
  if (pb.mode == AdmmMode::Nonlinear && (pb.X == nullptr || pb.N < 1))
    throw std::invalid_argument("lrs admm: mode Nonlinear needs X");
  as_int(m, "m");
  as_int(n, "n");
  as_int(pb.N, "N");
  const index_t mn = m * n;
  const bool data = pb.mode != AdmmMode::Weight;
  const bool nonlin = pb.mode == AdmmMode::Nonlinear;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), Ni = static_cast<int>(pb.N);
  const T slope = static_cast<T>(pb.negative_slope);

  out = AdmmResult<T>();
  out.rt = r;
  const double t_start = now();
  const double nW = nrm(pb.W0, mn);
  if (nW == 0.0) {
    out.S.assign(static_cast<size_t>(mn), T(0));
    out.U.assign(static_cast<size_t>(m * g * r), T(0));
    out.V.assign(static_cast<size_t>(g * r * n), T(0));
    out.converged = true;
    return;
  }

  if (!data && pb.weight_fused) return admm_weight_fused(pb, out, t_start, nW);

  // ---- buffers (all allocated here) ----
  // Four (m, n) arrays in weight mode: Lam, L (absent when rank = 0), Mprev (M of the
  // previous iteration; after the dual pass it holds the current M) and X, which holds
  // S between iterations and is overwritten in place by the L-step input W + Lam - S
  // and then by the S-step input W + Lam - L, which the projection turns into the new
  // S (in place).  X is moved into the result at the end.  W itself is not stored in
  // weight mode: between a W-step and the next dual update it is the elementwise
  // function W = (W0 + rh (Mprev - Lam)) / (1 + rh) of arrays that are kept anyway
  // (W = W0 before the first W-step), so it is recomputed, with the same expression,
  // where it is read (bitwise the stored value).  The data modes store W (it comes
  // out of a GEMM).
  auto buf = [](index_t sz) { return std::vector<T>(static_cast<size_t>(sz), T(0)); };
  const bool w_implicit = !data;
  std::vector<T> W, Lam = buf(mn), L = buf(r > 0 ? mn : 0), Mprev = buf(mn);
  std::vector<T, Buffer<T>> X(static_cast<size_t>(mn), T(0));  // ends as the result's S
  if (!w_implicit) W.assign(pb.W0, pb.W0 + mn);
  bool w_first = true;   // implicit W: no W-step yet, W = W0
  T w_rh = 0, w_inv1 = 1;  // implicit W: rh and 1 + rh of the last W-step
  auto Wv = [&](index_t i) -> T {
    if (!w_implicit) return W[i];
    if (w_first) return pb.W0[i];
    return (pb.W0[i] + w_rh * (Mprev[i] - Lam[i])) / w_inv1;
  };
  const int gt = std::max(1, pb.gemm_threads);
  std::vector<T> Qt, d, W0Q, P, LamQ, WQ, MQ, XtQ, Y, Z, WX, Lamz, Zprev, Zw, Cw, Bq;
  double gscale = 1.0, nobj = nW, nZ = 1.0;
  const index_t mN = m * pb.N;
  if (data) {
    Qt = buf(n * n);  // syevd output, column-major Q == row-major Q^T
    d = buf(n);
    if (nonlin) {
      const T invN = T(1) / static_cast<T>(pb.N);
      blas::gemm_rm<T>(false, true, ni, ni, Ni, invN, pb.X, Ni, pb.X, Ni, T(0), Qt.data(), ni);
    } else {
      std::copy(pb.gram, pb.gram + n * n, Qt.data());
    }
    // eigendecomposition (once)
    {
      const char jobz = 'V', uplo = 'U';
      int info = 0, lwork = -1, liwork = -1, iq = 0;
      T wq = 0;
      blas::routines<T>().syevd(&jobz, &uplo, &ni, Qt.data(), &ni, d.data(), &wq, &lwork, &iq,
                                &liwork, &info);
      if (info != 0) throw std::runtime_error("lrs admm: syevd workspace query failed");
      lwork = static_cast<int>(wq) + 1;
      liwork = std::max(iq, 1);
      std::vector<T> work(static_cast<size_t>(lwork));
      std::vector<int> iwork(static_cast<size_t>(liwork));
      blas::routines<T>().syevd(&jobz, &uplo, &ni, Qt.data(), &ni, d.data(), work.data(), &lwork,
                                iwork.data(), &liwork, &info);
      if (info != 0)
        throw std::runtime_error("lrs admm: syevd failed (info=" + std::to_string(info) + ")");
    }
    double dsum = 0;
    for (index_t j = 0; j < n; ++j) {
      if (!(d[j] > T(0))) d[j] = T(0);
      dsum += d[j];
    }
    gscale = dsum / static_cast<double>(n);
    if (!(gscale > 0)) gscale = 1.0;
    W0Q = buf(mn);
    P = buf(mn);
    LamQ = buf(mn);
    MQ = buf(mn);
    blas::gemm_rm<T>(false, true, mi, ni, ni, T(1), pb.W0, ni, Qt.data(), ni, T(0), W0Q.data(), ni);
    each(mn, [&](index_t i) { P[i] = W0Q[i] * d[i % n]; });
    WQ = W0Q;
    if (!nonlin) {
      nobj = root_sum(mn, [&](index_t i) {
        return static_cast<double>(d[i % n]) * W0Q[i] * W0Q[i];
      });
      if (!(nobj > 0)) nobj = 1.0;
    } else {
      XtQ = buf(pb.N * n);
      blas::gemm_rm<T>(true, true, Ni, ni, ni, T(1), pb.X, Ni, Qt.data(), ni, T(0), XtQ.data(), ni);
      Z = buf(mN);
      blas::gemm_rm<T>(false, false, mi, Ni, ni, T(1), pb.W0, ni, pb.X, Ni, T(0), Z.data(), Ni);
      Y = buf(mN);
      const index_t N = pb.N;
      each(mN, [&](index_t i) {
        const T b = pb.bias ? pb.bias[i / N] : T(0);
        Y[i] = act_value(Z[i] + b, pb.act, slope);
      });
      nobj = nrm(Y.data(), mN);
      if (!(nobj > 0)) nobj = 1.0;
      nZ = nrm(Z.data(), mN);
      if (!(nZ > 0)) nZ = 1.0;
      WX = Z;
      Zprev = Z;
      Lamz = buf(mN);
      Zw = buf(mN);  // work: pre-activation / Z + Lamz / M X
      Cw = buf(mN);  // work: Z-step target
      Bq = buf(mn);
    }
  }
  // truncated SVD state per slice
  std::vector<T> Vs, Ub, sb, Vtb, Tsl, Lsl;
  SvdWorkspace<T> ws;
  ws.gemm_threads = gt;
  ws.cholqr = pb.cholqr;
  ws.gram_svd = pb.gram_svd;
  std::vector<index_t> q(static_cast<size_t>(g), r);
  if (r > 0) {
    Vs.assign(pb.V0, pb.V0 + g * nsl * p);
    Ub = buf(g * m * r);
    sb = buf(g * r);
    Vtb = buf(g * r * nsl);
    if (g > 1) {
      Tsl = buf(m * nsl);
      Lsl = buf(m * nsl);
    }
  }
  std::vector<T> Us = buf(m * std::max<index_t>(r, 1));

  double rho_rel = pb.rho0, rho_z = pb.rho0;
  const index_t cap = pb.max_iter;
  out.primal.reserve(cap);
  out.dual.reserve(cap);
  out.objective.reserve(cap);
  out.rho.reserve(cap);
  int it = 0;
  bool converged = false;
  AdmmTiming& tm = out.timing;
  bool x_ready = false;  // X already holds the L-step input W + Lam - S
  for (it = 1; it <= pb.max_iter; ++it) {
    const T rho = static_cast<T>(rho_rel * gscale);
    double t0 = now();
    // ---- L-step: X = W + Lam - S, L = P_r(X) ----
    if (r > 0) {
      if (!x_ready) {  // (weight mode: already done by the previous W-step pass)
        if (pb.sparse)
          each(mn, [&](index_t i) { X[i] = Wv(i) + Lam[i] - X[i]; });
        else
          each(mn, [&](index_t i) { X[i] = Wv(i) + Lam[i]; });
      }
      x_ready = false;
      for (index_t s = 0; s < g; ++s) {
        const T* Tp = X.data();
        if (g > 1) {
          each(m * nsl, [&](index_t i) {
            const index_t row = i / nsl, col = i % nsl;
            Tsl[i] = X[row * n + s * nsl + col];
          });
          Tp = Tsl.data();
        }
        T* U_ = Ub.data() + s * m * r;
        T* s_ = sb.data() + s * r;
        T* Vt_ = Vtb.data() + s * r * nsl;
        double t1 = now();
        tm.elementwise += t1 - t0;
        truncated_svd<T>(Tp, m, nsl, r, p, pb.power_iters, Vs.data() + s * nsl * p, U_, s_, Vt_,
                         ws);
        t0 = now();
        tm.svd += t0 - t1;
        index_t qq = r;
        if (pb.relaxed) {
          const T thr = static_cast<T>(pb.lam_nuclear) / rho;
          qq = 0;
          for (index_t j = 0; j < r; ++j) {
            const T v = s_[j] - thr;
            if (s_[j] > thr) ++qq;
            s_[j] = v > T(0) ? v : T(0);
          }
        }
        q[static_cast<size_t>(s)] = qq;
        for (index_t i = 0; i < m * r; ++i) Us[i] = U_[i] * s_[i % r];
        T* Ldst = g > 1 ? Lsl.data() : L.data();
        gemm_rm_split<T>(gt, false, false, mi, static_cast<int>(nsl), static_cast<int>(r), T(1),
                         Us.data(), static_cast<int>(r), Vt_, static_cast<int>(nsl), T(0), Ldst,
                         static_cast<int>(nsl));
        t1 = now();
        tm.lform += t1 - t0;
        t0 = t1;
        if (g > 1) {
          each(m * nsl, [&](index_t i) {
            const index_t row = i / nsl, col = i % nsl;
            L[row * n + s * nsl + col] = Lsl[i];
          });
        }
      }
    }
    // ---- S-step: S = P_C(W + Lam - L), in place in X ----
    if (pb.sparse) {
      if (r > 0)
        each(mn, [&](index_t i) { X[i] = Wv(i) + Lam[i] - L[i]; });
      else
        each(mn, [&](index_t i) { X[i] = Wv(i) + Lam[i]; });
      const double t1 = now();
      tm.elementwise += t1 - t0;
      if (pb.relaxed)
        group_soft_threshold<T>(pb.structure, X.data(), X.data(), m, n,
                                static_cast<T>(pb.lam_sparse) / rho);
      else
        project<T>(pb.structure, X.data(), X.data(), m, n, pb.k);
      t0 = now();
      tm.project += t0 - t1;
    }
    // ---- M = L + S; Lam += W - M; primal / dual residuals; weight-mode objective;
    //      Mprev <- M (one fused pass) ----
    const T* Lp = r > 0 ? L.data() : nullptr;
    const T* Sp = pb.sparse ? X.data() : nullptr;
    const bool weight_obj = !data;
    const auto acc = sums<3>(mn, [&](index_t i, double* a) {
      const T mi_ = (Lp ? Lp[i] : T(0)) + (Sp ? Sp[i] : T(0));
      const T e = Wv(i) - mi_;  // (reads Lam and Mprev before they change)
      Lam[i] += e;
      const T dm = mi_ - Mprev[i];
      Mprev[i] = mi_;
      a[0] += static_cast<double>(e) * e;
      a[1] += static_cast<double>(dm) * dm;
      if (weight_obj) {
        const T eo = pb.W0[i] - mi_;
        a[2] += static_cast<double>(eo) * eo;
      }
    });
    const T* Mp = Mprev.data();  // = M from here on
    const double rp = std::sqrt(acc[0]) / nW;
    const double sd = rho_rel * std::sqrt(acc[1]) / nW;
    tm.elementwise += now() - t0;
    // ---- Z-step ----
    const index_t N = pb.N;
    if (nonlin) {
      each(mN, [&](index_t i) {
        const T b = pb.bias ? pb.bias[i / N] : T(0);
        Cw[i] = WX[i] - Lamz[i] + b;
        Zw[i] = Z[i] + b;
      });
      zstep<T>(Y.data(), Cw.data(), Zw.data(), mN, static_cast<T>(rho_z), pb.act, slope,
               pb.newton_steps);
      each(mN, [&](index_t i) {
        const T b = pb.bias ? pb.bias[i / N] : T(0);
        Z[i] = Zw[i] - b;
      });
    }
    // ---- objective (data modes) ----
    double obj = std::sqrt(acc[2]) / nW;
    if (data) {
      t0 = now();
      gemm_rm_split<T>(gt, false, true, mi, ni, ni, T(1), Mp, ni, Qt.data(), ni, T(0), MQ.data(),
                       ni);
      double t1 = now();
      tm.wstep += t1 - t0;
      if (!nonlin) {
        obj = root_sum(mn, [&](index_t i) {
                LamQ[i] += WQ[i] - MQ[i];
                const T e = W0Q[i] - MQ[i];
                return static_cast<double>(d[i % n]) * e * e;
              }) / nobj;
        tm.elementwise += now() - t1;
      } else {
        each(mn, [&](index_t i) { LamQ[i] += WQ[i] - MQ[i]; });
        t0 = now();
        tm.elementwise += t0 - t1;
        gemm_rm_split<T>(gt, false, false, mi, Ni, ni, T(1), Mp, ni, pb.X, Ni, T(0), Zw.data(),
                         Ni);
        t1 = now();
        tm.wstep += t1 - t0;
        obj = root_sum(mN, [&](index_t i) {
                const T b = pb.bias ? pb.bias[i / N] : T(0);
                const T e = Y[i] - act_value(Zw[i] + b, pb.act, slope);
                return static_cast<double>(e) * e;
              }) / nobj;
        tm.elementwise += now() - t1;
      }
    }
    out.primal.push_back(rp);
    out.dual.push_back(sd);
    out.objective.push_back(obj);
    out.rho.push_back(rho_rel);
    bool done = rp < pb.tol && sd < pb.tol;
    double rz = 0, sz = 0;
    if (nonlin) {
      rz = root_sum(mN, [&](index_t i) {
             const T e = Z[i] - WX[i];
             Lamz[i] += e;
             return static_cast<double>(e) * e;
           }) / nZ;
      sz = rho_z * root_sum(mN, [&](index_t i) {
             const T e = Z[i] - Zprev[i];
             Zprev[i] = Z[i];
             return static_cast<double>(e) * e;
           }) / nZ;
      out.primal_z.push_back(rz);
      out.dual_z.push_back(sz);
      done = done && rz < pb.tol && sz < pb.tol;
    }
    if (done) {
      converged = true;
      break;
    }
    if (it == pb.max_iter) break;
    // ---- penalty update (scaled duals rescaled) and W-step ----
    t0 = now();
    const double f = balance(rp, sd, pb.mu, pb.tau, pb.rho_growth);
    rho_rel *= f;
    const T inv_f = static_cast<T>(1.0 / f);
    if (nonlin) {
      const double fz = balance(rz, sz, pb.mu, pb.tau, pb.rho_growth);
      rho_z *= fz;
      const T inv_fz = static_cast<T>(1.0 / fz);
      each(mN, [&](index_t i) { Lamz[i] *= inv_fz; });
    }
    const T rh = static_cast<T>(rho_rel * gscale);
    if (pb.mode == AdmmMode::Weight) {
      // Fused with the next L-step's input X = W + Lam - S (X holds S here).
      const T inv1 = T(1) + rh;
      const bool sp = pb.sparse;
      if (r > 0) {
        each(mn, [&](index_t i) {
          const T lam = Lam[i] * inv_f;
          Lam[i] = lam;
          const T w = (pb.W0[i] + rh * (Mp[i] - lam)) / inv1;  // = Wv(i) below
          X[i] = sp ? w + lam - X[i] : w + lam;
        });
        x_ready = true;
      } else {
        each(mn, [&](index_t i) { Lam[i] *= inv_f; });
      }
      w_first = false;
      w_rh = rh;
      w_inv1 = inv1;
      tm.elementwise += now() - t0;
    } else if (pb.mode == AdmmMode::Gram) {
      each(mn, [&](index_t i) {
        Lam[i] *= inv_f;
        const T lq = LamQ[i] * inv_f;
        LamQ[i] = lq;
        WQ[i] = (P[i] + rh * (MQ[i] - lq)) / (d[i % n] + rh);
      });
      const double t1 = now();
      tm.elementwise += t1 - t0;
      gemm_rm_split<T>(gt, false, false, mi, ni, ni, T(1), WQ.data(), ni, Qt.data(), ni, T(0),
                       W.data(), ni);
      tm.wstep += now() - t1;
    } else {
      const T rz_ = static_cast<T>(rho_z);
      each(mN, [&](index_t i) { Zw[i] = Z[i] + Lamz[i]; });
      double t1 = now();
      tm.elementwise += t1 - t0;
      gemm_rm_split<T>(gt, false, false, mi, ni, Ni, T(1) / static_cast<T>(N), Zw.data(), Ni,
                       XtQ.data(), ni, T(0), Bq.data(), ni);
      t0 = now();
      tm.wstep += t0 - t1;
      each(mn, [&](index_t i) {
        Lam[i] *= inv_f;
        const T lq = LamQ[i] * inv_f;
        LamQ[i] = lq;
        WQ[i] = (rh * (MQ[i] - lq) + rz_ * Bq[i]) / (rh + rz_ * d[i % n]);
      });
      t1 = now();
      tm.elementwise += t1 - t0;
      gemm_rm_split<T>(gt, false, false, mi, ni, ni, T(1), WQ.data(), ni, Qt.data(), ni, T(0),
                       W.data(), ni);
      gemm_rm_split<T>(gt, false, true, mi, Ni, ni, T(1), WQ.data(), ni, XtQ.data(), ni, T(0),
                       WX.data(), Ni);
      tm.wstep += now() - t1;
    }
  }
  out.iterations = std::min(it, pb.max_iter);
  out.converged = converged;
  out.rho_final = rho_rel;
  out.rho_z_final = rho_z;
  out.gscale = gscale;
  if (pb.sparse)
    out.S = std::move(X);
  else
    out.S.assign(static_cast<size_t>(mn), T(0));
  tm.svd_products = ws.t_products;
  tm.svd_qr = ws.t_qr;
  tm.svd_small = ws.t_small;
  out.qr_fallbacks = ws.qr_fallbacks;
  out.gram_fallbacks = ws.gram_fallbacks;
  tm.total = now() - t_start;
  // ---- factors ----
  index_t rt = r;
  if (pb.relaxed && r > 0) rt = *std::max_element(q.begin(), q.end());
  write_factors(out, m, n, g, r, rt, q, Ub, sb, Vtb);
}

template void zstep<float>(const float*, const float*, float*, index_t, float, Activation, float,
                           int);
template void zstep<double>(const double*, const double*, double*, index_t, double, Activation,
                            double, int);
template void admm_solve<float>(const AdmmProblem<float>&, AdmmResult<float>&);
template void admm_solve<double>(const AdmmProblem<double>&, AdmmResult<double>&);

}  // namespace lrs
