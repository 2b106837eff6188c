// Proximal operators and projections for the sparse part S (see prox.hpp).
//
// Top-k selection is O(n): magnitudes are mapped to unsigned integer keys whose
// order is the order of |x| (IEEE-754 bits of a non-negative float), a parallel
// 16-bit radix histogram finds the bucket holding the k-th largest key, and
// nth_element on that bucket's (few) candidates finds the exact threshold t.
// Entries with key > t are kept, and of those with key == t the first ones in
// flat order, so exactly k survive and ties go to the lower index.
#include "prox.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "parallel.hpp"

namespace lrs {

namespace {

template <class T>
using key_t_of = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

// Order-preserving key of |x| for finite / infinite x (NaN is rejected upstream).
template <class T>
inline key_t_of<T> mag_key(T x) {
  const T a = std::fabs(x);
  key_t_of<T> k;
  std::memcpy(&k, &a, sizeof(T));
  return k;
}

constexpr int kRadixBits = 16;
constexpr index_t kRadixMin = index_t{1} << 16;  // below this, plain nth_element

struct Selection {
  std::uint64_t t = 0;   // threshold key: the k-th largest key
  index_t quota_eq = 0;  // how many entries with key == t are kept (the first ones)
  std::vector<index_t> eq_before;  // per chunk: entries == t in earlier chunks (radix path)
  int chunks = 1;
};

// Threshold of the k largest of n keys get(i) (1 <= k < n).  Fills sel.t and
// sel.quota_eq; with chunks > 1 also sel.eq_before for the final pass.
template <class U, class Get>
void select_threshold(index_t n, index_t k, Get get, Selection& sel) {
  constexpr int W = 8 * sizeof(U);
  if (n < kRadixMin) {
    std::vector<U> cand(static_cast<size_t>(n));
    for (index_t i = 0; i < n; ++i) cand[i] = get(i);
    std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), std::greater<U>());
    const U t = cand[k - 1];
    index_t gt = 0;
    for (index_t i = 0; i < n; ++i) gt += get(i) > t;
    sel.t = t;
    sel.quota_eq = k - gt;
    sel.chunks = 1;
    sel.eq_before.assign(1, 0);
    return;
  }
  // Keys of non-negative floats have a zero top bit: bucket = the next 16 bits.
  constexpr int shift = W - 1 - kRadixBits;
  constexpr index_t nb = index_t{1} << kRadixBits;
  const int chunks = num_chunks(n);
  // One histogram per worker thread (not per chunk: 2^16 counters are 256 KiB), 32-bit
  // counts (a chunk has < 2^32 entries), freed on return (a solve's peak memory
  // includes it; nothing stays resident between calls).
  const int threads = get_num_threads();
  const int workers = chunk_workers(threads, chunks);
  std::vector<std::uint32_t> hist(static_cast<size_t>(workers * nb), 0);
  std::uint32_t* hist_p = hist.data();
  parallel_chunks_worker_on(threads, n, chunks, [&](int w, int, index_t b, index_t e) {
    std::uint32_t* h = hist_p + w * nb;
    for (index_t i = b; i < e; ++i) ++h[static_cast<index_t>((get(i) >> shift) & (nb - 1))];
  });
  // Walk buckets from the top until the k-th largest is inside.
  index_t above = 0, bucket = nb - 1, in_bucket = 0;
  for (;; --bucket) {
    index_t cnt = 0;
    for (int w = 0; w < workers; ++w) cnt += hist[w * nb + bucket];
    if (above + cnt >= k) {
      in_bucket = cnt;
      break;
    }
    above += cnt;
  }
  std::vector<std::uint32_t>().swap(hist);
  // Gather the bucket's keys: each worker appends its chunks' keys to its own region
  // of `pool` (allocated here, on the calling thread: workers allocate nothing, so no
  // per-thread malloc arena is touched), recording each chunk's segment; then the
  // segments are concatenated in chunk order (= flat order).
  std::vector<U> pool(static_cast<size_t>(workers * in_bucket));
  std::vector<index_t> fill(static_cast<size_t>(workers), 0);
  std::vector<index_t> seg_start(static_cast<size_t>(chunks), 0), seg_len(static_cast<size_t>(chunks), 0);
  U* pool_p = pool.data();
  parallel_chunks_worker_on(threads, n, chunks, [&](int w, int c, index_t b, index_t e) {
    U* base = pool_p + w * in_bucket;
    index_t f = fill[static_cast<size_t>(w)];
    seg_start[static_cast<size_t>(c)] = w * in_bucket + f;
    const index_t f0 = f;
    for (index_t i = b; i < e; ++i) {
      const U key = get(i);
      if (static_cast<index_t>((key >> shift) & (nb - 1)) == bucket) base[f++] = key;
    }
    seg_len[static_cast<size_t>(c)] = f - f0;
    fill[static_cast<size_t>(w)] = f;
  });
  std::vector<index_t> off(static_cast<size_t>(chunks + 1), 0);
  for (int c = 0; c < chunks; ++c) off[c + 1] = off[c] + seg_len[static_cast<size_t>(c)];
  std::vector<U> cand_r(static_cast<size_t>(off[chunks]));
  for (int c = 0; c < chunks; ++c)
    std::copy(pool.begin() + seg_start[c], pool.begin() + seg_start[c] + seg_len[c],
              cand_r.begin() + off[c]);
  std::vector<U>().swap(pool);
  std::vector<U> work(cand_r.begin(), cand_r.end());
  const index_t kk = k - above;  // rank inside the bucket, 1-based
  std::nth_element(work.begin(), work.begin() + (kk - 1), work.end(), std::greater<U>());
  const U t = work[kk - 1];
  index_t gt_in = 0;
  sel.eq_before.assign(static_cast<size_t>(chunks), 0);
  index_t eq_run = 0;
  for (int c = 0; c < chunks; ++c) {
    sel.eq_before[c] = eq_run;
    for (index_t i = off[c]; i < off[c + 1]; ++i) {
      gt_in += cand_r[i] > t;
      eq_run += cand_r[i] == t;
    }
  }
  sel.t = t;
  sel.quota_eq = k - above - gt_in;
  sel.chunks = chunks;
}

template <class T>
struct Scratch {
  std::vector<double> norms;
};

template <class T>
Scratch<T>& scratch() {
  thread_local Scratch<T> s;
  return s;
}

void check_mn(index_t m, index_t n) {
  if (m < 0 || n < 0) throw std::invalid_argument("lrs: negative matrix dimension");
}

void check_structure(const Structure& s, index_t n) {
  if (s.kind == StructureKind::Channel) {
    if (s.block < 1) throw std::invalid_argument("lrs: channel block must be >= 1");
    if (n % s.block != 0)
      throw std::invalid_argument("lrs: channel block (" + std::to_string(s.block) +
                                  ") does not divide the column count (" + std::to_string(n) + ")");
  }
}

// Squared L2 norm of each group, accumulated in double.   norms: (group_count,)
template <class T>
void group_sq_norms(const Structure& s, const T* x, index_t m, index_t n, double* norms) {
  switch (s.kind) {
    case StructureKind::Row:
      parallel_for(
          m,
          [&](index_t b, index_t e) {
            for (index_t i = b; i < e; ++i) {
              const T* r = x + i * n;
              double acc = 0;
              for (index_t j = 0; j < n; ++j) acc += static_cast<double>(r[j]) * r[j];
              norms[i] = acc;
            }
          },
          std::max<index_t>(1, kParallelGrain / std::max<index_t>(n, 1)));
      break;
    case StructureKind::Column:
    case StructureKind::Channel: {
      // Column sums, each column accumulated over rows in order; threads split columns.
      thread_local std::vector<double> col;
      double* cs = norms;
      if (s.kind == StructureKind::Channel) {
        col.assign(static_cast<size_t>(n), 0.0);
        cs = col.data();
      } else {
        std::fill(norms, norms + n, 0.0);
      }
      parallel_for(
          n,
          [&](index_t b, index_t e) {
            for (index_t i = 0; i < m; ++i) {
              const T* r = x + i * n;
              for (index_t j = b; j < e; ++j) cs[j] += static_cast<double>(r[j]) * r[j];
            }
          },
          std::max<index_t>(64, kParallelGrain / std::max<index_t>(m, 1)));
      if (s.kind == StructureKind::Channel) {
        const index_t G = n / s.block;
        for (index_t g = 0; g < G; ++g) {
          double acc = 0;
          for (index_t t = 0; t < s.block; ++t) acc += cs[g * s.block + t];
          norms[g] = acc;
        }
      }
      break;
    }
    default:
      throw std::invalid_argument("lrs: group norms need a Row, Column or Channel structure");
  }
}

// out = x * scale[group], for per-group scale (double).
template <class T, class Scale>
void apply_group(const Structure& s, const T* x, T* out, index_t m, index_t n, Scale scale) {
  parallel_for(
      m,
      [&](index_t b, index_t e) {
        for (index_t i = b; i < e; ++i) {
          const T* r = x + i * n;
          T* o = out + i * n;
          switch (s.kind) {
            case StructureKind::Row: {
              const T f = static_cast<T>(scale(i));
              for (index_t j = 0; j < n; ++j) o[j] = r[j] * f;
              break;
            }
            case StructureKind::Column:
              for (index_t j = 0; j < n; ++j) o[j] = r[j] * static_cast<T>(scale(j));
              break;
            default:  // Channel
              for (index_t j = 0; j < n; ++j) o[j] = r[j] * static_cast<T>(scale(j / s.block));
          }
        }
      },
      std::max<index_t>(1, kParallelGrain / std::max<index_t>(n, 1)));
}

}  // namespace

template <class T>
void soft_threshold(const T* x, T* out, index_t n, T tau) {
  if (n < 0) throw std::invalid_argument("lrs: negative length");
  if (!(tau >= 0)) throw std::invalid_argument("lrs: soft_threshold needs tau >= 0");
  parallel_for(n, [&](index_t b, index_t e) {
    for (index_t i = b; i < e; ++i) {
      const T v = x[i];
      const T a = std::fabs(v) - tau;
      out[i] = a > 0 ? std::copysign(a, v) : T(0);
    }
  });
}

template <class T>
void topk_project(const T* x, T* out, index_t n, index_t k) {
  if (n < 0) throw std::invalid_argument("lrs: negative length");
  if (k < 0 || k > n)
    throw std::invalid_argument("lrs: topk_project needs 0 <= k <= n (k=" + std::to_string(k) +
                                ", n=" + std::to_string(n) + ")");
  if (k == 0) {
    parallel_for(n, [&](index_t b, index_t e) { std::fill(out + b, out + e, T(0)); });
    return;
  }
  if (k == n) {
    if (out != x) parallel_for(n, [&](index_t b, index_t e) { std::copy(x + b, x + e, out + b); });
    return;
  }
  using U = key_t_of<T>;
  Selection sel;
  select_threshold<U>(n, k, [x](index_t i) { return mag_key(x[i]); }, sel);
  const U t = static_cast<U>(sel.t);
  parallel_chunks(n, sel.chunks, [&](int c, index_t b, index_t e) {
    // Ties inside this chunk that are still within the quota.
    index_t left = std::max<index_t>(0, sel.quota_eq - sel.eq_before[c]);
    for (index_t i = b; i < e; ++i) {
      const U key = mag_key(x[i]);
      bool keep = key > t;
      if (key == t && left > 0) {
        keep = true;
        --left;
      }
      out[i] = keep ? x[i] : T(0);
    }
  });
}

index_t group_count(const Structure& s, index_t m, index_t n) {
  switch (s.kind) {
    case StructureKind::Row:
      return m;
    case StructureKind::Column:
      return n;
    case StructureKind::Channel:
      return s.block > 0 ? n / s.block : 0;
    default:
      return m * n;
  }
}

index_t group_size(const Structure& s, index_t m, index_t n) {
  switch (s.kind) {
    case StructureKind::Row:
      return n;
    case StructureKind::Column:
      return m;
    case StructureKind::Channel:
      return m * s.block;
    default:
      return 1;
  }
}

template <class T>
std::uint64_t topk_key(T v) {
  return static_cast<std::uint64_t>(mag_key(v));
}

template <class T>
TopkCut topk_select(const T* x, index_t n, index_t k) {
  if (n < 0) throw std::invalid_argument("lrs: negative length");
  if (k < 0 || k > n)
    throw std::invalid_argument("lrs: topk_select needs 0 <= k <= n (k=" + std::to_string(k) +
                                ", n=" + std::to_string(n) + ")");
  TopkCut cut;
  if (k == 0) {
    cut.keep_none = true;
    return cut;
  }
  if (k == n) {
    cut.keep_all = true;
    return cut;
  }
  using U = key_t_of<T>;
  Selection sel;
  select_threshold<U>(n, k, [x](index_t i) { return mag_key(x[i]); }, sel);
  const U t = static_cast<U>(sel.t);
  cut.key = sel.t;
  if (sel.quota_eq <= 0) return cut;  // cutoff -1: no tie is kept
  // The quota_eq-th entry (flat order) with key == t: find its chunk, then scan it.
  const int chunks = sel.chunks;
  int c = chunks - 1;
  for (int j = 0; j + 1 < chunks; ++j)
    if (sel.eq_before[static_cast<size_t>(j) + 1] >= sel.quota_eq) {
      c = j;
      break;
    }
  index_t left = sel.quota_eq - sel.eq_before[static_cast<size_t>(c)];
  const index_t b = chunk_begin(n, chunks, c), e = chunk_begin(n, chunks, c + 1);
  for (index_t i = b; i < e; ++i)
    if (mag_key(x[i]) == t && --left == 0) {
      cut.cutoff = i;
      break;
    }
  return cut;
}

template <class T>
void group_soft_scale(const Structure& s, const T* x, index_t m, index_t n, T tau, double* scale) {
  check_mn(m, n);
  if (s.kind == StructureKind::Unstructured || s.kind == StructureKind::NM)
    throw std::invalid_argument("lrs: group_soft_scale needs a Row, Column or Channel structure");
  check_structure(s, n);
  if (!(tau >= 0)) throw std::invalid_argument("lrs: group_soft_threshold needs tau >= 0");
  const index_t G = group_count(s, m, n);
  group_sq_norms(s, x, m, n, scale);
  const double tt = static_cast<double>(tau);
  for (index_t g = 0; g < G; ++g) {
    const double nrm = std::sqrt(scale[g]);
    scale[g] = nrm > tt ? 1.0 - tt / nrm : 0.0;
  }
}

template <class T>
void group_topk_scale(const Structure& s, const T* x, index_t m, index_t n, index_t k,
                      double* scale) {
  check_mn(m, n);
  if (s.kind == StructureKind::Unstructured || s.kind == StructureKind::NM)
    throw std::invalid_argument("lrs: group_topk_scale needs a Row, Column or Channel structure");
  check_structure(s, n);
  const index_t G = group_count(s, m, n);
  if (k < 0 || k > G)
    throw std::invalid_argument("lrs: group_topk_project needs 0 <= k <= number of groups (k=" +
                                std::to_string(k) + ", groups=" + std::to_string(G) + ")");
  if (k == 0 || k == G) {
    std::fill(scale, scale + G, k == G ? 1.0 : 0.0);
    return;
  }
  group_sq_norms(s, x, m, n, scale);
  const double* nr = scale;
  Selection sel;
  select_threshold<std::uint64_t>(G, k, [nr](index_t g) { return mag_key(nr[g]); }, sel);
  index_t left = sel.quota_eq;  // G is small: serial pass in group order
  for (index_t g = 0; g < G; ++g) {
    const std::uint64_t key = mag_key(nr[g]);
    bool kp = key > sel.t;
    if (key == sel.t && left > 0) {
      kp = true;
      --left;
    }
    scale[g] = kp ? 1.0 : 0.0;
  }
}

template <class T>
void group_soft_threshold(const Structure& s, const T* x, T* out, index_t m, index_t n, T tau) {
  check_mn(m, n);
  if (s.kind == StructureKind::Unstructured) return soft_threshold(x, out, m * n, tau);
  if (s.kind == StructureKind::NM)
    throw std::invalid_argument("lrs: group_soft_threshold: N:M is not a group structure");
  check_structure(s, n);
  if (!(tau >= 0)) throw std::invalid_argument("lrs: group_soft_threshold needs tau >= 0");
  auto& sc = scratch<T>();
  sc.norms.resize(static_cast<size_t>(group_count(s, m, n)));
  group_soft_scale(s, x, m, n, tau, sc.norms.data());
  const double* f = sc.norms.data();
  apply_group(s, x, out, m, n, [f](index_t g) { return f[g]; });
}

template <class T>
void group_topk_project(const Structure& s, const T* x, T* out, index_t m, index_t n, index_t k) {
  check_mn(m, n);
  if (s.kind == StructureKind::Unstructured) return topk_project(x, out, m * n, k);
  if (s.kind == StructureKind::NM)
    throw std::invalid_argument("lrs: group_topk_project: N:M is not a group structure");
  check_structure(s, n);
  auto& sc = scratch<T>();
  sc.norms.resize(static_cast<size_t>(group_count(s, m, n)));
  group_topk_scale(s, x, m, n, k, sc.norms.data());
  const double* f = sc.norms.data();
  apply_group(s, x, out, m, n, [f](index_t g) { return f[g]; });
}

template <class T>
void nm_project(const T* x, T* out, index_t m, index_t n, int nm_n, int nm_m) {
  check_mn(m, n);
  if (nm_m < 1 || nm_n < 0 || nm_n > nm_m)
    throw std::invalid_argument("lrs: nm_project needs 0 <= N <= M and M >= 1");
  if (n % nm_m != 0)
    throw std::invalid_argument("lrs: nm_project: M (" + std::to_string(nm_m) +
                                ") does not divide the column count (" + std::to_string(n) + ")");
  const index_t M = nm_m;
  const index_t windows = m * (n / M);
  parallel_for(
      windows,
      [&](index_t b, index_t e) {
        T a[64];
        unsigned char keep[64];
        std::vector<index_t> order;
        for (index_t w = b; w < e; ++w) {
          const T* r = x + w * M;
          T* o = out + w * M;
          if (M <= 64) {
            for (index_t j = 0; j < M; ++j) a[j] = std::fabs(r[j]);
            for (index_t j = 0; j < M; ++j) {
              // Entries beating j: larger, or equal at a lower column.
              index_t beat = 0;
              for (index_t l = 0; l < M; ++l) beat += (a[l] > a[j]) || (a[l] == a[j] && l < j);
              keep[j] = beat < nm_n;
            }
            for (index_t j = 0; j < M; ++j) o[j] = keep[j] ? r[j] : T(0);
          } else {
            order.resize(static_cast<size_t>(M));
            std::iota(order.begin(), order.end(), index_t{0});
            std::stable_sort(order.begin(), order.end(), [r](index_t p, index_t q) {
              return std::fabs(r[p]) > std::fabs(r[q]);
            });
            // Read everything needed before writing (x and out may alias).
            for (index_t t = nm_n; t < M; ++t) o[order[t]] = T(0);
            for (index_t t = 0; t < nm_n; ++t) o[order[t]] = r[order[t]];
          }
        }
      },
      std::max<index_t>(1, kParallelGrain / M));
}

template <class T>
void project(const Structure& s, const T* x, T* out, index_t m, index_t n, index_t k) {
  if (s.kind == StructureKind::NM) return nm_project(x, out, m, n, s.nm_n, s.nm_m);
  group_topk_project(s, x, out, m, n, k);
}

#define LRS_INSTANTIATE(T)                                                                     \
  template void soft_threshold<T>(const T*, T*, index_t, T);                                   \
  template void topk_project<T>(const T*, T*, index_t, index_t);                               \
  template void group_soft_threshold<T>(const Structure&, const T*, T*, index_t, index_t, T);  \
  template void group_topk_project<T>(const Structure&, const T*, T*, index_t, index_t,        \
                                      index_t);                                                \
  template void nm_project<T>(const T*, T*, index_t, index_t, int, int);                       \
  template void project<T>(const Structure&, const T*, T*, index_t, index_t, index_t);       \
  template std::uint64_t topk_key<T>(T);                                                     \
  template TopkCut topk_select<T>(const T*, index_t, index_t);                               \
  template void group_topk_scale<T>(const Structure&, const T*, index_t, index_t, index_t,   \
                                    double*);                                                \
  template void group_soft_scale<T>(const Structure&, const T*, index_t, index_t, T, double*);

LRS_INSTANTIATE(float)
LRS_INSTANTIATE(double)
#undef LRS_INSTANTIATE

}  // namespace lrs
