// The data modes' fixed terms (Gram and Nonlinear), computed once per solve: the
// eigenbasis of G in which the W-step is diagonal, and the nonlinear mode's targets.
// Internal to the core (admm_general.cpp).  Python-free.
#pragma once

#include <vector>

#include "admm.hpp"

namespace lrs::admm_detail {

// G = Q diag(d) Q^T with G = gram (mode Gram) or X X^T / N (mode Nonlinear); d clipped
// at 0.  torch_backend.py: Q, d, W0Q, P, XtQ, Zlin0, Y, nobj, nZ, gscale.
template <class T>
struct DataTerms {
  std::vector<T> Qt;   // (n, n) Q^T row-major (syevd's column-major Q)
  std::vector<T> d;    // (n,) eigenvalues, >= 0
  std::vector<T> W0Q;  // (m, n) W0 Q
  std::vector<T> P;    // (m, n) W0 Q diag(d)
  std::vector<T> XtQ;  // (N, n) X^T Q                      (Nonlinear)
  std::vector<T> Z0;   // (m, N) W0 X, the start of Z        (Nonlinear)
  std::vector<T> Y;    // (m, N) act(W0 X + b), the targets  (Nonlinear)
  double gscale = 1;   // mean eigenvalue (rho is relative to it)
  double nobj = 1;     // norm of the objective's reference (sqrt(tr(W0 G W0^T)) or ||Y||)
  double nZ = 1;       // ||W0 X|| (Nonlinear)

  // Throws LapackError when the eigendecomposition fails.
  void init(const AdmmProblem& pb, const AdmmData<T>& data);
};

}  // namespace lrs::admm_detail
