// Weight mode (F = 1/2 ||W - W0||^2), restructured so that the state is three (m, n)
// arrays instead of four and the elementwise steps are fused into three row-parallel
// passes.  The iteration is the one of the general loop (admm_general.cpp) and of the
// torch backend in exact arithmetic; only what is stored differs.  With B = W + Lam
// (the W-step's W plus the rescaled scaled dual):
//   L-step input  A = B - S,          S-step input  T' = B - L',   S' = P(T'),
//   Lam + W - M'  = T' - S' =: Lam',  M' = L' + S' = B - Lam',
//   next Lam = Lam' / f,  next W = (W0 + rh (M' - Lam)) / (1 + rh).
// So S and Lam are functions of T and the iteration's selection (SDecode), and the
// arrays kept are  Tb = T (the last S-step input),  Mb = M (= L + S)  and  Ab (the
// L-step input A while the SVD runs, then the new S-step input T').  W0 is read, never
// copied.  Per iteration:
//   L-step     P0  Ab <- A = B - S          (reads W0, Mb, Tb; skipped when rank = 0)
//              truncated SVD of Ab (two GEMMs with A)
//   S-step     P3  per row block: L' tile = (U s) Vt into a cache-sized tile (one small
//                  GEMM), Ab <- T' = B - L'  (reads W0, Mb, Tb; A is no longer needed)
//              selection of S' on Ab (top-k cut: band or histogram + candidate pass;
//              groups: norms)
//   dual step  P4  Mb <- M' = B - Lam' (Lam decoded from Tb, S' from Ab); sums of the
//   residuals      primal and dual residuals and of the objective (reads W0, Mb, Tb, Ab)
//   Tb and Ab swap (O(1)): Tb = T' for the next iteration.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "admm_detail.hpp"
#include "s_decode.hpp"
#include "weight_kernels.hpp"

namespace lrs::admm_detail {

namespace {

template <class T>
class WeightLoop {
 public:
  WeightLoop(const AdmmProblem& pb, const AdmmData<T>& d, AdmmResult<T>& out, double nW);
  void run(double t_start);

 private:
  using Buf = std::vector<T, Buffer<T>>;
  using Band = TopkBand<T>;

  template <class F>
  void rows(F&& f) {  // f(worker, chunk, begin, end) over the row chunks
    parallel_chunks_worker_on(get_num_threads(), m, nch,
                              [&](int w, int c, index_t b, index_t e) { f(w, c, b, e); });
  }
  T* scratch(int worker) { return rowS.data() + index_t{worker} * 5 * n; }
  T* tile_of(int worker) { return r > 0 ? tiles.data() + index_t{worker} * rb * cb : nullptr; }

  void l_step(T rho);
  void l_step_input_rows(index_t b, index_t e, T* sr);
  void s_step(T rho);
  void s_step_input_rows(int wk, int ch, index_t b, index_t e);
  void s_step_segment(index_t i, index_t j0, index_t w, const T* lt, T* sr,
                      typename Band::Count& bc, T* bval, std::uint32_t* boff, index_t cap,
                      index_t b);
  std::array<double, 3> dual_step(bool spec);
  void dual_step_row(index_t i, T* sr, bool spec, T cs, T rs, T is, double* acc);
  void penalty_update(double rp, double sd, bool spec);
  void finish();
  void refit_s();

  const AdmmProblem& pb;
  const AdmmData<T>& d;
  AdmmResult<T>& out;
  AdmmTiming& tm;
  const index_t m, n, r, mn;
  const double nW;
  const bool avx2;  // row kernels: kavx2 or kbase (bitwise the same)
  int nch = 1;      // row chunks of the fused passes, fixed for the solve
  int nwk = 1;      // worker threads at most running them at once (scratch slots)
  index_t rb = 1, cb = 1;  // L' tiles (rb, cb)
  // The three (m, n) arrays, not zeroed: every entry is written before it is read (the
  // first iteration reads none of them: P0 or P3 writes Ab, P4 Mb and Tb), so their
  // pages are first touched by the parallel passes.  Ab ends as the result's S.
  Buf Tb, Mb, Ab;
  std::vector<T> rowS;   // per worker: a decoded S row, three residual rows, the previous S row
  std::vector<T> tiles;  // (nwk, rb, cb)
  std::vector<std::array<double, 3>> part;  // per chunk partial sums (combined in order)
  std::vector<double> tile_sec;             // per chunk seconds in the L tile GEMMs
  SDecode<T> dold, dnew;  // selections of the previous and of the current iteration
  Band band;
  LowRank<T> lr;
  double rho_rel;
  bool first = true;          // B = W0 (no W-step yet, Lam = 0)
  bool a_ready = false;       // Ab already holds the L-step input (P4's speculation)
  T c = 1, rh = 0, rinv = 1;  // Lam = c (T - S); the W-step's rh and 1 / (1 + rh)
};

template <class T>
WeightLoop<T>::WeightLoop(const AdmmProblem& pb_, const AdmmData<T>& d_, AdmmResult<T>& out_,
                          double nW_)
    : pb(pb_), d(d_), out(out_), tm(out_.timing), m(d_.m), n(d_.n), r(pb_.rank),
      mn(d_.m * d_.n), nW(nW_), avx2(pb_.switches.simd && simd_available()),
      rho_rel(pb_.rho0) {
  const index_t g = pb.slices;
  Tb = Buf(static_cast<size_t>(mn));
  Mb = Buf(static_cast<size_t>(mn));
  Ab = Buf(static_cast<size_t>(mn));
  nch = static_cast<int>(std::max<index_t>(1, std::min<index_t>(num_chunks(mn), m)));
  nwk = chunk_workers(get_num_threads(), nch);
  auto buf = [](index_t sz) { return std::vector<T>(static_cast<size_t>(sz), T(0)); };
  rowS = buf(index_t{nwk} * 5 * n);
  // L' tiles (rb, cb) of about 256 KiB, so that a tile stays in cache between the
  // GEMM that writes it and the pass that reads it; 64-row blocks keep BLAS's packing
  // of Vt cheap.  Column blocks only without slices (cb = n otherwise); for N:M a
  // multiple of the window.
  rb = std::min<index_t>(64, m);
  cb = n;
  if (g == 1) {
    cb = std::max<index_t>(64, (index_t{1} << 16) / (rb * static_cast<index_t>(sizeof(T))) * 4);
    if (pb.structure.kind == StructureKind::NM)
      cb = std::max<index_t>(1, cb / pb.structure.nm_m) * pb.structure.nm_m;
    cb = std::min(cb, n);
  }
  tiles = buf(r > 0 ? index_t{nwk} * rb * cb : 0);
  part.assign(static_cast<size_t>(nch), {});
  tile_sec.assign(static_cast<size_t>(nch), 0.0);
  dold.setup(pb, m, n);
  dnew.setup(pb, m, n);
  band.init(pb, m, n, nch);
  lr.init(pb, m, n, d.V0);
  reserve_histories(out, pb.max_iter);
}

// ---- L-step: Ab <- A = B - S (P0, unless P4 speculated it), truncated SVD of A ----
template <class T>
void WeightLoop<T>::l_step_input_rows(index_t b, index_t e, T* sr) {
  for (index_t i = b; i < e; ++i) {
    const index_t o = i * n;
    const T* t = Tb.data() + o;
    dold.row(i, t, sr);
    T* a = Ab.data() + o;
    const T* w0 = d.W0 + o;
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
}

template <class T>
void WeightLoop<T>::l_step(T rho) {
  double t0 = now();
  if (!a_ready) rows([&](int wk, int, index_t b, index_t e) { l_step_input_rows(b, e, scratch(wk)); });
  a_ready = false;
  const double t1 = now();
  tm.elementwise += t1 - t0;
  lr.svd_step(Ab.data(), pb.relaxed, pb.lam_nuclear, rho);
  tm.svd += now() - t1;
}

// ---- S-step: Ab <- T' = B - L' (P3, L' in (rb, cb) tiles), then S' = P(T') ----
// T'[i, j0 : j0 + w] into Ab (lt: the L' tile row, or nullptr without L), counted
// against the top-k band when it is on (bc, bval, boff, cap: this chunk's tally and
// candidate room; b: the chunk's first row).
template <class T>
void WeightLoop<T>::s_step_segment(index_t i, index_t j0, index_t w, const T* lt, T* sr,
                                   typename Band::Count& bc, T* bval, std::uint32_t* boff,
                                   index_t cap, index_t b) {
  const index_t o = i * n + j0;
  const T* to = Tb.data() + o;  // T
  T* t = Ab.data() + o;         // T' (over A, read by the SVD already)
  const T* w0 = d.W0 + o;
  const T lo = band.lo, hi = band.hi;
  // Counts T'[i, j0 : j0 + w] (t) against the band and collects its members.
  // counted: ab / in already known (the fast path counts while it writes t).
  auto band_scan = [&](bool counted, index_t ab, index_t in) {
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
  if (first) {  // Lam = 0, B = W0
    if (lt)
      for (index_t j = 0; j < w; ++j) t[j] = w0[j] - lt[j];
    else
      std::copy(w0, w0 + w, t);
  } else if (const int md = dold.topk_mode(i, j0, w); md >= 0) {
    const T* mr = Mb.data() + o;
    const T tv = dold.tval;
    index_t ab = 0, in = 0;
    auto run = [&](auto avx, auto ge, auto has_l, auto bnd) {
      constexpr bool G = decltype(ge)::value, H = decltype(has_l)::value,
                     Bd = decltype(bnd)::value;
      if constexpr (decltype(avx)::value)
        kavx2::p3_seg_topk<T, G, H, Bd>(w, tv, c, rh, rinv, w0, mr, lt, to, t, lo, hi, ab, in);
      else
        kbase::p3_seg_topk<T, G, H, Bd>(w, tv, c, rh, rinv, w0, mr, lt, to, t, lo, hi, ab, in);
    };
    with_flags(run, avx2, md != 0, lt != nullptr, band.on);
    if (band.on) band_scan(true, ab, in);
    return;
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
  if (band.on) band_scan(false, 0, 0);
}

template <class T>
void WeightLoop<T>::s_step_input_rows(int wk, int ch, index_t b, index_t e) {
  T* sr = scratch(wk);
  typename Band::Count bc;
  double tg = 0;  // seconds in the tile GEMMs (this chunk)
  const index_t cap0 = band.on ? band.cap[ch] : 0;
  const index_t cap = band.on ? band.cap[ch + 1] - cap0 : 0;
  T* bval = band.on ? band.val.data() + cap0 : nullptr;
  std::uint32_t* boff = band.on ? band.off.data() + cap0 : nullptr;
  T* tile = tile_of(wk);
  for (index_t i0 = b; i0 < e; i0 += rb) {
    const index_t len = std::min(rb, e - i0);
    for (index_t j0 = 0; j0 < n; j0 += cb) {
      const index_t w = std::min(cb, n - j0);
      if (r > 0) {
        const double tg0 = now();
        lr.form_tile(i0, len, j0, w, tile);
        tg += now() - tg0;
      }
      for (index_t i = i0; i < i0 + len; ++i) {
        const T* lt = tile ? tile + (i - i0) * w : nullptr;
        s_step_segment(i, j0, w, lt, sr, bc, bval, boff, cap, b);
      }
    }
  }
  band.cnt[static_cast<size_t>(ch)] = bc;
  tile_sec[static_cast<size_t>(ch)] += tg;
}

template <class T>
void WeightLoop<T>::s_step(T rho) {
  double t0 = now();
  band.begin(dold);
  rows([&](int wk, int ch, index_t b, index_t e) { s_step_input_rows(wk, ch, b, e); });
  const double t1 = now();
  tm.lform += t1 - t0;
  if (!pb.sparse) return;
  if (band.select(dnew, dold, pb.k, m, nch))
    ++out.band_hits;
  else
    dnew.select(Ab.data(), pb.k, static_cast<T>(pb.lam_sparse) / rho);
  tm.project += now() - t1;
}

// ---- dual step and residuals: Lam' = T' - S', M' = B - Lam'; Mb <- M' (P4) ----
// Row i; acc += its sums of squares of the primal residual W - M', of M' - M and of
// W0 - M'.  With spec also Tb's row (read first) <- the next L-step input A, as P0
// forms it with the speculated penalty factors (cs, rs, is).
template <class T>
void WeightLoop<T>::dual_step_row(index_t i, T* sr, bool spec, T cs, T rs, T is, double* acc) {
  const index_t o = i * n;
  T* to = Tb.data() + o;       // T: Lam = c (T - S); then the next A (spec)
  const T* t = Ab.data() + o;  // T'
  T* mr = Mb.data() + o;
  const T* w0 = d.W0 + o;
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
        kavx2::p4_row_topk<T, GO, G, F, Sp>(n, tvo, tv, cc, rr, ii, cs, rs, is, to, w0, t, mr,
                                            sums);
      else
        kbase::p4_row_topk<T, GO, G, F, Sp>(n, tvo, tv, cc, rr, ii, cs, rs, is, to, w0, t, mr,
                                            sums);
    };
    with_flags(run, avx2, mdo != 0, md != 0, fst, spec);
    acc[0] += sums[0];
    acc[1] += sums[1];
    acc[2] += sums[2];
    return;
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
  acc[0] += avx2 ? kavx2::sumsq(ev, n) : kbase::sumsq(ev, n);
  acc[1] += avx2 ? kavx2::sumsq(dm, n) : kbase::sumsq(dm, n);
  acc[2] += avx2 ? kavx2::sumsq(eo, n) : kbase::sumsq(eo, n);
}

// Speculatively also writes the next L-step input (spec), assuming the penalty update
// will be the balanced one (factor rho_growth: the usual case once the residuals are
// within mu of each other); P0 then only runs when it was not.  Returns the squared
// sums (primal, dual, objective), combined in chunk order.
template <class T>
std::array<double, 3> WeightLoop<T>::dual_step(bool spec) {
  const double f_spec = pb.rho_growth;
  const T cs = static_cast<T>(1.0 / f_spec), rs = static_cast<T>(rho_rel * f_spec);
  const T is = T(1) / (T(1) + rs);
  rows([&](int wk, int ch, index_t b, index_t e) {
    T* sr = scratch(wk);
    double acc[3] = {0, 0, 0};
    for (index_t i = b; i < e; ++i) dual_step_row(i, sr, spec, cs, rs, is, acc);
    part[static_cast<size_t>(ch)] = {acc[0], acc[1], acc[2]};
  });
  std::array<double, 3> total{};
  for (const auto& a : part)
    for (int j = 0; j < 3; ++j) total[j] += a[j];
  return total;
}

// ---- penalty update (scaled dual rescaled) and the implicit W-step ----
template <class T>
void WeightLoop<T>::penalty_update(double rp, double sd, bool spec) {
  const double f = balance(rp, sd, pb.mu, pb.tau, pb.rho_growth);
  rho_rel *= f;
  c = static_cast<T>(1.0 / f);
  rh = static_cast<T>(rho_rel);
  rinv = T(1) / (T(1) + rh);
  first = false;
  a_ready = spec && f == pb.rho_growth;  // (then c, rh, rinv equal cs, rs, is bitwise)
  if (a_ready) ++out.speculation_hits;
}

template <class T>
void WeightLoop<T>::run(double t_start) {
  int it = 0;
  bool converged = false;
  for (it = 1; it <= pb.max_iter; ++it) {
    const T rho = static_cast<T>(rho_rel);  // gscale = 1 in weight mode
    if (r > 0) l_step(rho);
    s_step(rho);
    const double t1 = now();
    const bool spec = pb.switches.speculate_input && r > 0 && it < pb.max_iter;
    const std::array<double, 3> acc = dual_step(spec);
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
    penalty_update(rp, sd, spec);
  }
  for (double v : tile_sec) tm.lform_gemm_thread += v;
  out.iterations = std::min(it, pb.max_iter);
  out.converged = converged;
  out.rho_final = rho_rel;
  out.rho_z_final = pb.rho0;
  out.gscale = 1.0;
  out.simd_kernels = avx2;
  finish();
  tm.svd_products = lr.ws.t_products;
  tm.svd_qr = lr.ws.t_qr;
  tm.svd_small = lr.ws.t_small;
  out.qr_fallbacks = lr.ws.qr_fallbacks;
  out.gram_fallbacks = lr.ws.gram_fallbacks;
  tm.total = now() - t_start;
  lr.write_factors(out, pb.relaxed);
}

// S of the last iteration, decoded into Ab (no longer needed) and moved out; with
// refit_weight, refitted on its support (refit_s).
template <class T>
void WeightLoop<T>::finish() {
  if (pb.sparse && pb.refit_weight) {
    refit_s();
    out.S = std::move(Ab);
  } else if (pb.sparse) {
    rows([&](int, int, index_t b, index_t e) {
      for (index_t i = b; i < e; ++i) dold.row(i, Tb.data() + i * n, Ab.data() + i * n);
    });
    out.S = std::move(Ab);
  } else {
    out.S.assign(static_cast<size_t>(mn), T(0));
  }
}

// S's values on its support replaced by those of W0 - L (the exact minimiser of
// ||W0 - L - S|| for this L and support), L formed in tiles as in P3; the errors
// before and after are summed per chunk (deterministic).  S decoded into Ab.
template <class T>
void WeightLoop<T>::refit_s() {
  rows([&](int wk, int ch, index_t b, index_t e) {
    T* tile = tile_of(wk);
    double before = 0, after = 0;
    for (index_t i0 = b; i0 < e; i0 += rb) {
      const index_t len = std::min(rb, e - i0);
      for (index_t j0 = 0; j0 < n; j0 += cb) {
        const index_t w = std::min(cb, n - j0);
        if (tile) lr.form_tile(i0, len, j0, w, tile);
        for (index_t i = i0; i < i0 + len; ++i) {
          const index_t o = i * n + j0;
          T* sr = Ab.data() + o;
          const T* w0 = d.W0 + o;
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
}

}  // namespace

template <class T>
void admm_weight_fused(const AdmmProblem& pb, const AdmmData<T>& d, AdmmResult<T>& out,
                       double t_start, double nW) {
  WeightLoop<T> loop(pb, d, out, nW);
  loop.run(t_start);
}

template void admm_weight_fused<float>(const AdmmProblem&, const AdmmData<float>&,
                                       AdmmResult<float>&, double, double);
template void admm_weight_fused<double>(const AdmmProblem&, const AdmmData<double>&,
                                        AdmmResult<double>&, double, double);

}  // namespace lrs::admm_detail
