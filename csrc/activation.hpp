// Activations of the nonlinear ADMM mode and its elementwise Z-step.  Python-free.
// The formulas and their order are those of lowrank_sparse/solve/activations.py.
#pragma once

#include <cmath>

#include "common.hpp"

namespace lrs {

enum class Activation : int { Identity = 0, Relu = 1, LeakyRelu = 2, Gelu = 3, Silu = 4, Tanh = 5 };

// act(u); GELU is the exact (erf) form, `slope` the leaky ReLU's negative slope.
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

// Elementwise Z-step: u = argmin 1/2 (y - act(u))^2 + rho/2 (u - c)^2 for each of the
// `count` elements; u holds the start on entry (smooth activations) and the result on
// exit.   y, c, u: (count,)
template <class T>
void zstep(const T* y, const T* c, T* u, index_t count, T rho, Activation act, T slope,
           int newton_steps);

}  // namespace lrs
