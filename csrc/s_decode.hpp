// How the fused weight-mode ADMM loop (admm_weight.cpp) represents S: as a function of
// the S-step input and of the iteration's selection (SDecode), and how it finds the
// unstructured top-k cut from a few candidates near the previous one (TopkBand).
// Internal to the core.  Python-free.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "admm.hpp"
#include "parallel.hpp"
#include "prox.hpp"

namespace lrs::admm_detail {

// S of one ADMM iteration as a function of its S-step input T (the state the fused
// weight loop keeps instead of S, Lam, W): S = P(T) with the selection fixed once per
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

  // For the problem's structure on an (m, n) weight; S = 0 until the first select.
  void setup(const AdmmProblem& pb, index_t m_, index_t n_) {
    st = pb.structure;
    relaxed = pb.relaxed;
    m = m_;
    n = n_;
    if (pb.sparse && st.kind != StructureKind::Unstructured && st.kind != StructureKind::NM) {
      scale.assign(static_cast<size_t>(group_count(st, m, n)), 0.0);
      colf.assign(static_cast<size_t>(n), T(0));
    }
  }

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

// Warm-started top-k cut (unstructured, hard): P3 counts the entries of T' above a
// band [lo, hi] around the previous iteration's threshold and collects those inside
// it (magnitude and offset in the chunk); when the k-th largest falls in the band,
// the cut comes from these few candidates and the two passes of topk_select over T'
// (radix histogram, candidate gather) are skipped.  Otherwise (first iteration, band
// missed or overflowed) topk_select runs as before, and the band adapts.  Same cut
// either way (the k-th largest magnitude, ties to the lower flat index).
template <class T>
struct TopkBand {
  struct Count {  // one row chunk's tally
    index_t above = 0, count = 0;
    bool overflow = false;
  };
  bool ok = false;    // the problem allows the band (unstructured hard top-k, 0 < k < m n)
  bool fits = true;   // chunk offsets fit in 32 bits
  bool on = false;    // this iteration's P3 scans the band
  double rel = 0.01;  // half-width of the band relative to the previous threshold
  T lo = 0, hi = 0;
  std::vector<index_t> cap;         // chunk c's candidates: [cap[c], cap[c + 1])
  std::vector<T> val;               // |T'| of the candidates
  std::vector<std::uint32_t> off;   // their offsets from the chunk's first entry
  std::vector<Count> cnt;           // per chunk

  void init(const AdmmProblem& pb, index_t m, index_t n, int nch) {
    const index_t mn = m * n;
    ok = pb.sparse && !pb.relaxed && pb.structure.kind == StructureKind::Unstructured &&
         pb.k > 0 && pb.k < mn && mn >= (index_t{1} << 12);
    cap.assign(static_cast<size_t>(nch) + 1, 0);
    for (int c = 0; c < nch && ok; ++c) {
      const index_t rows_c = chunk_begin(m, nch, c + 1) - chunk_begin(m, nch, c);
      cap[c + 1] = cap[c] + rows_c * n / 128 + 256;
    }
    val.assign(static_cast<size_t>(ok ? cap[nch] : 0), T(0));
    off.assign(val.size(), 0);
    cnt.assign(static_cast<size_t>(nch), Count());
    for (int c = 0; c < nch; ++c)
      if ((chunk_begin(m, nch, c + 1) - chunk_begin(m, nch, c)) * n >= (index_t{1} << 32)) fits = false;
  }

  // Before P3: whether to scan, and the band around the previous cut dold.
  void begin(const SDecode<T>& dold) {
    on = ok && fits && !dold.zero && !dold.cut.keep_none && !dold.cut.keep_all && dold.tval > T(0);
    if (on) {
      lo = static_cast<T>(dold.tval * (1.0 - rel));
      hi = static_cast<T>(dold.tval * (1.0 + rel));
    }
  }

  // After P3: when the k-th largest |T'| lies in the band, d's cut from the candidates
  // (returns true); the band's width adapts either way.  rows = m, nch row chunks.
  bool select(SDecode<T>& d, const SDecode<T>& dold, index_t k, index_t rows, int nch) {
    if (!on) return false;
    index_t above = 0, count = 0;
    bool overflow = false;
    for (const auto& bcn : cnt) {
      above += bcn.above;
      count += bcn.count;
      overflow = overflow || bcn.overflow;
    }
    if (overflow) {
      rel *= 0.25;
      return false;
    }
    if (!(above < k && k <= above + count)) {
      rel = std::min(1.0, rel * 4);
      return false;
    }
    cut_from_candidates(d, rows, nch, k - above);
    // Next band: a few times this iteration's move of the threshold (fewer candidates
    // to sort), within [0.2 %, 2 %].
    const double move = std::fabs(static_cast<double>(d.tval) - dold.tval) /
                        static_cast<double>(dold.tval);
    rel = std::min(0.02, std::max(0.002, 4 * move));
    return true;
  }

 private:
  // kk >= 1 is the rank of the k-th largest among the candidates; those of chunk c are
  // val[cap[c] + j], j < cnt[c].count, at flat index chunk_begin(rows, nch, c) * n +
  // off[...].  Same cut as topk_select (ties to the lower flat index).
  void cut_from_candidates(SDecode<T>& d, index_t rows, int nch, index_t kk) const {
    d.zero = false;
    std::vector<T> work;
    for (int c = 0; c < nch; ++c)
      work.insert(work.end(), val.begin() + cap[c], val.begin() + cap[c] + cnt[c].count);
    std::nth_element(work.begin(), work.begin() + (kk - 1), work.end(), std::greater<T>());
    const T t = work[static_cast<size_t>(kk - 1)];
    index_t greater = 0;
    std::vector<index_t> ties;
    for (int c = 0; c < nch; ++c) {
      const index_t base = chunk_begin(rows, nch, c) * d.n;
      for (index_t j = cap[c]; j < cap[c] + cnt[c].count; ++j) {
        greater += val[j] > t;
        if (val[j] == t) ties.push_back(base + off[j]);
      }
    }
    const index_t quota = kk - greater;  // ties kept, the lowest flat indices first
    d.cut = TopkCut();
    d.cut.key = topk_key<T>(t);
    d.tval = t;
    if (quota > 0) {
      std::nth_element(ties.begin(), ties.begin() + (quota - 1), ties.end());
      d.cut.cutoff = ties[static_cast<size_t>(quota - 1)];
    }
  }
};

}  // namespace lrs::admm_detail
