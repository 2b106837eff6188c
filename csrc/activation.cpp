// The Z-step of the nonlinear ADMM (activation.hpp): closed forms for the piecewise
// linear activations, safeguarded Newton steps from two starts for the smooth ones.
#include "activation.hpp"

#include "parallel.hpp"

namespace lrs {

namespace {

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

// The Z-step objective 1/2 (y - a)^2 + rho/2 (u - c)^2 at a = act(u).
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

// ReLU (a = 0) / leaky ReLU (slope a): the better of the two one-sided minimisers.
template <class T>
T zstep_piecewise(T y, T c, T rho, T a) {
  T u1 = (y + rho * c) / (T(1) + rho);
  u1 = u1 > T(0) ? u1 : T(0);
  T u2 = (a * y + rho * c) / (a * a + rho);
  u2 = u2 < T(0) ? u2 : T(0);
  const T f1 = zobj(u1, y, u1, c, rho);
  const T f2 = zobj(a * u2, y, u2, c, rho);
  return f1 <= f2 ? u1 : u2;
}

// Smooth activations: Newton from the warm start u and from the ReLU closed form; the
// better end point wins (ties: the warm start).
template <class T>
T zstep_smooth(T y, T c, T u, T rho, Activation act, T slope, int steps) {
  T r1 = (y + rho * c) / (T(1) + rho);
  r1 = r1 > T(0) ? r1 : T(0);
  const T r2 = c < T(0) ? c : T(0);
  const T start_b = zobj(r1, y, r1, c, rho) <= zobj(T(0), y, r2, c, rho) ? r1 : r2;
  const T ua = newton1d(y, c, u, rho, act, slope, steps);
  const T ub = newton1d(y, c, start_b, rho, act, slope, steps);
  const T fa = zobj(act_value(ua, act, slope), y, ua, c, rho);
  const T fb = zobj(act_value(ub, act, slope), y, ub, c, rho);
  return fa <= fb ? ua : ub;
}

}  // namespace

template <class T>
void zstep(const T* y, const T* c, T* u, index_t count, T rho, Activation act, T slope,
           int newton_steps) {
  if (act == Activation::Identity) {
    parallel_each(count, [&](index_t i) { u[i] = (y[i] + rho * c[i]) / (T(1) + rho); });
  } else if (act == Activation::Relu || act == Activation::LeakyRelu) {
    const T a = act == Activation::Relu ? T(0) : slope;
    parallel_each(count, [&](index_t i) { u[i] = zstep_piecewise(y[i], c[i], rho, a); });
  } else {
    parallel_each(count, [&](index_t i) {
      u[i] = zstep_smooth(y[i], c[i], u[i], rho, act, slope, newton_steps);
    });
  }
}

template void zstep<float>(const float*, const float*, float*, index_t, float, Activation, float,
                           int);
template void zstep<double>(const double*, const double*, double*, index_t, double, Activation,
                            double, int);

}  // namespace lrs
