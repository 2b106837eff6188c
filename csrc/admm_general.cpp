// The ADMM loop of every mode (the data modes' only loop; weight mode runs
// admm_weight.cpp's restructured one unless Switches::weight_fused is off).  One
// iteration, in the order and with the names of lowrank_sparse/solve/torch_backend.py:
//   L-step     L = P_rank(W + Lam - S)              (per slice, admm_lstep.cpp)
//   S-step     S = P_struct(W + Lam - L)            (projection, or prox when relaxed)
//   Z-step     Z = zstep(Y, W X - Lam_z)            (Nonlinear)
//   dual step  M = L + S, Lam += W - M;  primal / dual residuals, Mprev <- M
//   objective  of M (data modes in the eigenbasis: MQ = M Q, LamQ += WQ - MQ)
//   Z duals    Lam_z += Z - W X; their residuals    (Nonlinear)
//   penalty update (scaled duals rescaled) and W-step
// Arrays: Lam, L (absent when rank = 0), Mprev and S, which holds S between iterations
// and is overwritten in place by the L-step input W + Lam - S and then by the S-step
// input W + Lam - L, which the projection turns into the new S.  S is moved into the
// result at the end.  Weight mode does not store W: between a W-step and the next dual
// step it is the elementwise function W = (W0 + rh (Mprev - Lam)) / (1 + rh) of arrays
// kept anyway (W = W0 before the first W-step), recomputed with the same expression
// where it is read (bitwise the stored value).  The data modes store W (it comes out
// of a GEMM).
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "admm_data.hpp"
#include "admm_detail.hpp"
#include "blas.hpp"
#include "prox.hpp"

namespace lrs::admm_detail {

namespace {

template <class T>
class GeneralLoop {
 public:
  GeneralLoop(const AdmmProblem& pb, const AdmmData<T>& d, AdmmResult<T>& out, double nW);
  void run(double t_start);

 private:
  // W[i] (weight mode: recomputed, see the file comment).
  T Wv(index_t i) const {
    if (!w_implicit) return W[i];
    if (w_first) return d.W0[i];
    return (d.W0[i] + w_rh * (Mprev[i] - Lam[i])) / w_inv1;
  }
  T bias(index_t i) const { return d.bias ? d.bias[i / d.N] : T(0); }  // b of Z's entry i

  void l_step(T rho);
  void s_step(T rho);
  void z_step();
  std::array<double, 3> dual_step();
  double objective(double weight_obj);
  bool z_duals(double& rz, double& sz);
  void penalty_update(double rp, double sd, double rz, double sz);
  void w_step(T inv_f);

  const AdmmProblem& pb;
  const AdmmData<T>& d;
  AdmmResult<T>& out;
  AdmmTiming& tm;
  const index_t m, n, r, mn, mN;
  const int mi, ni, Ni, gt;
  const bool data, nonlin, w_implicit;
  const T slope;
  const double nW;
  DataTerms<T> dt;
  LowRank<T> lr;
  std::vector<T> W, Lam, L, Mprev;
  std::vector<T, Buffer<T>> S;  // S, the L-step input and the S-step input (see above)
  std::vector<T> LamQ, WQ, MQ;  // data modes: Lam Q, W Q, M Q
  std::vector<T> Z, WX, Lamz, Zprev, Zw, Cw, Bq;  // Nonlinear (Zw, Cw, Bq: work)
  bool w_first = true;     // implicit W: no W-step yet, W = W0
  T w_rh = 0, w_inv1 = 1;  // implicit W: rh and 1 + rh of the last W-step
  bool x_ready = false;    // S already holds the L-step input W + Lam - S
  double rho_rel, rho_z;
};

template <class T>
GeneralLoop<T>::GeneralLoop(const AdmmProblem& pb_, const AdmmData<T>& d_, AdmmResult<T>& out_,
                            double nW_)
    : pb(pb_), d(d_), out(out_), tm(out_.timing), m(d_.m), n(d_.n), r(pb_.rank),
      mn(d_.m * d_.n), mN(d_.m * d_.N), mi(static_cast<int>(d_.m)), ni(static_cast<int>(d_.n)),
      Ni(static_cast<int>(d_.N)), gt(std::max(1, pb_.gemm_threads)),
      data(pb_.mode != AdmmMode::Weight), nonlin(pb_.mode == AdmmMode::Nonlinear),
      w_implicit(pb_.mode == AdmmMode::Weight), slope(static_cast<T>(pb_.negative_slope)),
      nW(nW_), rho_rel(pb_.rho0), rho_z(pb_.rho0) {
  auto buf = [](index_t sz) { return std::vector<T>(static_cast<size_t>(sz), T(0)); };
  Lam = buf(mn);
  L = buf(r > 0 ? mn : 0);
  Mprev = buf(mn);
  S.assign(static_cast<size_t>(mn), T(0));
  if (!w_implicit) W.assign(d.W0, d.W0 + mn);
  if (data) {
    dt.init(pb, d);
    LamQ = buf(mn);
    MQ = buf(mn);
    WQ = dt.W0Q;
  }
  if (nonlin) {
    Z = dt.Z0;
    WX = dt.Z0;
    Zprev = dt.Z0;
    Lamz = buf(mN);
    Zw = buf(mN);  // work: pre-activation / Z + Lamz / M X
    Cw = buf(mN);  // work: Z-step target
    Bq = buf(mn);
  }
  lr.init(pb, m, n, d.V0);
  reserve_histories(out, pb.max_iter);
}

// ---- L-step: S <- W + Lam - S, L = P_r(S) ----
template <class T>
void GeneralLoop<T>::l_step(T rho) {
  double t0 = now();
  if (!x_ready) {  // (weight mode: already done by the previous W-step pass)
    if (pb.sparse)
      parallel_each(mn, [&](index_t i) { S[i] = Wv(i) + Lam[i] - S[i]; });
    else
      parallel_each(mn, [&](index_t i) { S[i] = Wv(i) + Lam[i]; });
  }
  x_ready = false;
  double t1 = now();
  tm.elementwise += t1 - t0;
  lr.svd_step(S.data(), pb.relaxed, pb.lam_nuclear, rho);
  t0 = now();
  tm.svd += t0 - t1;
  lr.form_L(L.data());
  tm.lform += now() - t0;
}

// ---- S-step: S = P_C(W + Lam - L), in place ----
template <class T>
void GeneralLoop<T>::s_step(T rho) {
  const double t0 = now();
  if (r > 0)
    parallel_each(mn, [&](index_t i) { S[i] = Wv(i) + Lam[i] - L[i]; });
  else
    parallel_each(mn, [&](index_t i) { S[i] = Wv(i) + Lam[i]; });
  const double t1 = now();
  tm.elementwise += t1 - t0;
  if (pb.relaxed)
    group_soft_threshold<T>(pb.structure, S.data(), S.data(), m, n,
                            static_cast<T>(pb.lam_sparse) / rho);
  else
    project<T>(pb.structure, S.data(), S.data(), m, n, pb.k);
  tm.project += now() - t1;
}

// ---- Z-step (Nonlinear): Z = argmin 1/2 (Y - act(Z + b))^2 + rho_z/2 (Z - W X + Lam_z)^2 ----
template <class T>
void GeneralLoop<T>::z_step() {
  parallel_each(mN, [&](index_t i) {
    const T b = bias(i);
    Cw[i] = WX[i] - Lamz[i] + b;
    Zw[i] = Z[i] + b;
  });
  zstep<T>(dt.Y.data(), Cw.data(), Zw.data(), mN, static_cast<T>(rho_z), pb.activation, slope,
           pb.newton_steps);
  parallel_each(mN, [&](index_t i) { Z[i] = Zw[i] - bias(i); });
}

// ---- dual step: M = L + S; Lam += W - M; Mprev <- M (one fused pass) ----
// Returns the squared sums of the primal residual W - M, of M - Mprev and (weight mode)
// of W0 - M.
template <class T>
std::array<double, 3> GeneralLoop<T>::dual_step() {
  const T* Lp = r > 0 ? L.data() : nullptr;
  const T* Sp = pb.sparse ? S.data() : nullptr;
  const bool weight_obj = !data;
  return parallel_sums<3>(mn, [&](index_t i, double* a) {
    const T mi_ = (Lp ? Lp[i] : T(0)) + (Sp ? Sp[i] : T(0));
    const T e = Wv(i) - mi_;  // (reads Lam and Mprev before they change)
    Lam[i] += e;
    const T dm = mi_ - Mprev[i];
    Mprev[i] = mi_;
    a[0] += static_cast<double>(e) * e;
    a[1] += static_cast<double>(dm) * dm;
    if (weight_obj) {
      const T eo = d.W0[i] - mi_;
      a[2] += static_cast<double>(eo) * eo;
    }
  });
}

// ---- objective of M (relative); data modes also update LamQ += WQ - MQ ----
template <class T>
double GeneralLoop<T>::objective(double weight_obj) {
  if (!data) return std::sqrt(weight_obj) / nW;
  const T* Mp = Mprev.data();  // = M
  double t0 = now();
  gemm_rm_split<T>(gt, false, true, mi, ni, ni, T(1), Mp, ni, dt.Qt.data(), ni, T(0), MQ.data(),
                   ni);
  double t1 = now();
  tm.wstep += t1 - t0;
  double obj;
  if (!nonlin) {
    obj = parallel_root_sum(mn, [&](index_t i) {
            LamQ[i] += WQ[i] - MQ[i];
            const T e = dt.W0Q[i] - MQ[i];
            return static_cast<double>(dt.d[i % n]) * e * e;
          }) / dt.nobj;
    tm.elementwise += now() - t1;
    return obj;
  }
  parallel_each(mn, [&](index_t i) { LamQ[i] += WQ[i] - MQ[i]; });
  t0 = now();
  tm.elementwise += t0 - t1;
  gemm_rm_split<T>(gt, false, false, mi, Ni, ni, T(1), Mp, ni, d.X, Ni, T(0), Zw.data(), Ni);
  t1 = now();
  tm.wstep += t1 - t0;
  obj = parallel_root_sum(mN, [&](index_t i) {
          const T e = dt.Y[i] - act_value(Zw[i] + bias(i), pb.activation, slope);
          return static_cast<double>(e) * e;
        }) / dt.nobj;
  tm.elementwise += now() - t1;
  return obj;
}

// ---- Z duals (Nonlinear): Lam_z += Z - W X; residuals; Zprev <- Z.  True if small ----
template <class T>
bool GeneralLoop<T>::z_duals(double& rz, double& sz) {
  rz = parallel_root_sum(mN, [&](index_t i) {
         const T e = Z[i] - WX[i];
         Lamz[i] += e;
         return static_cast<double>(e) * e;
       }) / dt.nZ;
  sz = rho_z * parallel_root_sum(mN, [&](index_t i) {
         const T e = Z[i] - Zprev[i];
         Zprev[i] = Z[i];
         return static_cast<double>(e) * e;
       }) / dt.nZ;
  out.primal_z.push_back(rz);
  out.dual_z.push_back(sz);
  return rz < pb.tol && sz < pb.tol;
}

// ---- penalty update: rho (and rho_z) by residual balancing, scaled duals rescaled ----
template <class T>
void GeneralLoop<T>::penalty_update(double rp, double sd, double rz, double sz) {
  const double t0 = now();
  const double f = balance(rp, sd, pb.mu, pb.tau, pb.rho_growth);
  rho_rel *= f;
  if (nonlin) {
    const double fz = balance(rz, sz, pb.mu, pb.tau, pb.rho_growth);
    rho_z *= fz;
    const T inv_fz = static_cast<T>(1.0 / fz);
    parallel_each(mN, [&](index_t i) { Lamz[i] *= inv_fz; });
  }
  tm.elementwise += now() - t0;
  w_step(static_cast<T>(1.0 / f));  // (Lam, LamQ rescaled by 1 / f inside its passes)
}

// ---- W-step = argmin F(W) + rho/2 ||W - M + Lam||^2 [+ rho_z/(2N) ||Z - W X + Lam_z||^2] ----
template <class T>
void GeneralLoop<T>::w_step(T inv_f) {
  double t0 = now();
  const T rh = static_cast<T>(rho_rel * dt.gscale);
  const T* Mp = Mprev.data();
  if (pb.mode == AdmmMode::Weight) {
    // Fused with the next L-step's input S <- W + Lam - S.
    const T inv1 = T(1) + rh;
    const bool sp = pb.sparse;
    if (r > 0) {
      parallel_each(mn, [&](index_t i) {
        const T lam = Lam[i] * inv_f;
        Lam[i] = lam;
        const T w = (d.W0[i] + rh * (Mp[i] - lam)) / inv1;  // = Wv(i) below
        S[i] = sp ? w + lam - S[i] : w + lam;
      });
      x_ready = true;
    } else {
      parallel_each(mn, [&](index_t i) { Lam[i] *= inv_f; });
    }
    w_first = false;
    w_rh = rh;
    w_inv1 = inv1;
    tm.elementwise += now() - t0;
    return;
  }
  if (pb.mode == AdmmMode::Gram) {
    parallel_each(mn, [&](index_t i) {
      Lam[i] *= inv_f;
      const T lq = LamQ[i] * inv_f;
      LamQ[i] = lq;
      WQ[i] = (dt.P[i] + rh * (MQ[i] - lq)) / (dt.d[i % n] + rh);
    });
  } else {
    const T rz_ = static_cast<T>(rho_z);
    parallel_each(mN, [&](index_t i) { Zw[i] = Z[i] + Lamz[i]; });
    double t1 = now();
    tm.elementwise += t1 - t0;
    gemm_rm_split<T>(gt, false, false, mi, ni, Ni, T(1) / static_cast<T>(d.N), Zw.data(), Ni,
                     dt.XtQ.data(), ni, T(0), Bq.data(), ni);
    t0 = now();
    tm.wstep += t0 - t1;
    parallel_each(mn, [&](index_t i) {
      Lam[i] *= inv_f;
      const T lq = LamQ[i] * inv_f;
      LamQ[i] = lq;
      WQ[i] = (rh * (MQ[i] - lq) + rz_ * Bq[i]) / (rh + rz_ * dt.d[i % n]);
    });
  }
  const double t1 = now();
  tm.elementwise += t1 - t0;
  gemm_rm_split<T>(gt, false, false, mi, ni, ni, T(1), WQ.data(), ni, dt.Qt.data(), ni, T(0),
                   W.data(), ni);
  if (nonlin)
    gemm_rm_split<T>(gt, false, true, mi, Ni, ni, T(1), WQ.data(), ni, dt.XtQ.data(), ni, T(0),
                     WX.data(), Ni);
  tm.wstep += now() - t1;
}

template <class T>
void GeneralLoop<T>::run(double t_start) {
  int it = 0;
  bool converged = false;
  for (it = 1; it <= pb.max_iter; ++it) {
    const T rho = static_cast<T>(rho_rel * dt.gscale);
    if (r > 0) l_step(rho);
    if (pb.sparse) s_step(rho);
    if (nonlin) z_step();
    const double t0 = now();
    const std::array<double, 3> acc = dual_step();
    const double rp = std::sqrt(acc[0]) / nW;
    const double sd = rho_rel * std::sqrt(acc[1]) / nW;
    tm.elementwise += now() - t0;
    const double obj = objective(acc[2]);
    out.primal.push_back(rp);
    out.dual.push_back(sd);
    out.objective.push_back(obj);
    out.rho.push_back(rho_rel);
    bool done = rp < pb.tol && sd < pb.tol;
    double rz = 0, sz = 0;
    if (nonlin) done = z_duals(rz, sz) && done;
    if (done) {
      converged = true;
      break;
    }
    if (it == pb.max_iter) break;
    penalty_update(rp, sd, rz, sz);
  }
  out.iterations = std::min(it, pb.max_iter);
  out.converged = converged;
  out.rho_final = rho_rel;
  out.rho_z_final = rho_z;
  out.gscale = dt.gscale;
  if (pb.sparse)
    out.S = std::move(S);
  else
    out.S.assign(static_cast<size_t>(mn), T(0));
  tm.svd_products = lr.ws.t_products;
  tm.svd_qr = lr.ws.t_qr;
  tm.svd_small = lr.ws.t_small;
  out.qr_fallbacks = lr.ws.qr_fallbacks;
  out.gram_fallbacks = lr.ws.gram_fallbacks;
  tm.total = now() - t_start;
  lr.write_factors(out, pb.relaxed);
}

}  // namespace

template <class T>
void admm_general(const AdmmProblem& pb, const AdmmData<T>& d, AdmmResult<T>& out,
                  double t_start, double nW) {
  GeneralLoop<T> loop(pb, d, out, nW);
  loop.run(t_start);
}

template void admm_general<float>(const AdmmProblem&, const AdmmData<float>&, AdmmResult<float>&,
                                  double, double);
template void admm_general<double>(const AdmmProblem&, const AdmmData<double>&,
                                   AdmmResult<double>&, double, double);

}  // namespace lrs::admm_detail
