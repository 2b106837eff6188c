"""Refinement of L + S on the post-activation objective, with S's support fixed.

Objective (relative, squared), on calibration inputs X (n, N), bias b (m,)::

    f(U, V, S) = ||act((U V + S) X + b) - Y||_F^2 / ||Y||_F^2,   Y = act(W0 X + b)

over U (m, q), V (q, n) (block-diagonal pattern kept when ALDS slices are used) and
the values of S on its given support (entries off the support stay exactly 0), so
every iterate has the rank and the sparsity pattern of the start.

Method: L-BFGS (two-loop recursion, ``memory`` pairs) with an Armijo backtracking
line search, on the Jacobi-scaled variables V_s = V diag(d), S_s = S diag(d),
d_j = ||x_j|| / sqrt(N) (the input-norm scaling of OATS / Wanda; it equalises the
diagonal of the input Gram matrix, the dominant part of the curvature).  The
gradient is analytic: with Z = W_hat X + b, R = act(Z) - Y and Gz = 2 R act'(Z)
/ ||Y||^2, grad_W = Gz X^T; grad_U = grad_W V^T, grad_V = U^T grad_W, grad_S =
grad_W on the support.  One evaluation costs two (m, n, N) GEMMs.

Early stopping: the columns are split into a fitting part and a held-out part;
the iterate with the lowest held-out objective is returned.  The line search only
accepts decreases of the fitting objective, so the returned iterate is never worse
than the start on either part (and the start is returned when nothing improves).
Stopping rule: no new best held-out iterate for ``patience`` iterations, or the best
held-out objective has improved by less than a relative
``improve_tol`` over the last ``patience`` iterations (tested from iteration
3 ``patience`` on: L-BFGS can stall for a few early iterations), the held-out relative error is
below 100 eps of the dtype (an exact fit), or the line search finds no decrease; otherwise the loop ends at ``max_iter`` (``converged`` False).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from .activations import act_derivs, act_fn

__all__ = ["RefineResult", "act_and_slope", "post_activation_error", "refine"]

Params = list[torch.Tensor]
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def act_and_slope(z: torch.Tensor, name: str, slope: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(act(z), act'(z)) elementwise for every activation of decompose (ReLU's
    derivative at 0 taken as 0, leaky ReLU's as 1)."""
    if name == "identity":
        return z, torch.ones_like(z)
    if name == "relu":
        pos = z > 0
        return torch.where(pos, z, 0.0), pos.to(z.dtype)
    if name == "leaky_relu":
        pos = z >= 0
        return torch.where(pos, z, z * slope), torch.where(pos, 1.0, slope).to(z.dtype)
    if name == "gelu":  # without the second derivative act_derivs also forms
        cdf = torch.erf(z * _INV_SQRT2).add_(1.0).mul_(0.5)
        pdf = torch.exp(z * z * -0.5).mul_(_INV_SQRT2PI)
        return z * cdf, cdf.add_(pdf.mul_(z))
    a, d1, _ = act_derivs(z, name)
    return a, d1


def post_activation_error(What: torch.Tensor, W0: torch.Tensor, X: torch.Tensor,
                          bias: Optional[torch.Tensor], name: str, slope: float = 0.01) -> float:
    """||act(What X + b) - act(W0 X + b)||_F / ||act(W0 X + b)||_F (float64 norms)."""
    b = 0.0 if bias is None else bias.reshape(-1, 1)
    Y = act_fn(W0 @ X + b, name, slope)
    E = act_fn(What @ X + b, name, slope) - Y
    num = float(torch.linalg.vector_norm(E, dtype=torch.float64))
    den = float(torch.linalg.vector_norm(Y, dtype=torch.float64))
    return num / den if den > 0 else num


@dataclass
class _Problem:
    """The scaled data of one refinement (fit and held-out parts)."""

    Xf: torch.Tensor  # (n, Nf) scaled fitting columns, contiguous
    Yf: torch.Tensor  # (m, Nf)
    Xh: Optional[torch.Tensor]  # (n, Nh) scaled held-out columns
    Yh: Optional[torch.Tensor]
    b: torch.Tensor  # (m, 1)
    mask: torch.Tensor  # (m, n) bool, support of S
    vmask: Optional[torch.Tensor]  # (q, n) bool pattern of V (slices > 1)
    name: str
    slope: float
    nyf: float
    nyh: float


@dataclass
class RefineResult:
    """Outcome of :func:`refine`: the best iterate (unscaled) and the histories.

    ``fit`` / ``held`` are relative errors (square roots of the objective) per
    iteration, entry 0 being the start; ``best`` the iteration returned."""

    U: torch.Tensor
    V: torch.Tensor
    S: torch.Tensor
    iterations: int
    converged: bool
    fit: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)
    best: int = 0
    evaluations: int = 0


def _pre(P: _Problem, x: Params, X: torch.Tensor) -> torch.Tensor:
    U, Vs, Ss = x
    Z = torch.addmm(P.b, Ss, X)
    if U.shape[1] > 0:
        Z.addmm_(U, Vs @ X)
    return Z


def _value(P: _Problem, x: Params, X: torch.Tensor, Y: torch.Tensor, ny: float) -> float:
    R = act_fn(_pre(P, x, X), P.name, P.slope).sub_(Y)
    return float(torch.linalg.vector_norm(R)) ** 2 / ny


def _value_grad(P: _Problem, x: Params) -> tuple[float, Params]:
    U, Vs, _ = x
    Z = _pre(P, x, P.Xf)
    A, D = act_and_slope(Z, P.name, P.slope)
    R = A.sub_(P.Yf)
    f = float(torch.linalg.vector_norm(R)) ** 2 / P.nyf
    Gz = R.mul_(D).mul_(2.0 / P.nyf)  # (m, Nf)
    gW = Gz @ P.Xf.mT  # (m, n)
    gU = gW @ Vs.mT
    gV = U.mT @ gW
    if P.vmask is not None:
        gV = gV * P.vmask
    return f, [gU, gV, gW.mul_(P.mask)]


def _dot(a: Params, b: Params) -> float:
    return sum(float(torch.dot(p.reshape(-1), q.reshape(-1))) for p, q in zip(a, b))


def _direction(g: Params, mem: list[tuple[Params, Params, float]], x: Params, f: float) -> Params:
    """L-BFGS two-loop recursion: approximately -H^{-1} g."""
    q = [t.clone() for t in g]
    alphas = []
    for s, y, rho in reversed(mem):
        a = rho * _dot(s, q)
        alphas.append(a)
        for qi, yi in zip(q, y):
            qi.sub_(yi, alpha=a)
    if mem:
        s, y, _ = mem[-1]
        gamma = _dot(s, y) / max(_dot(y, y), 1e-300)
    else:  # first step: Polyak's step for a minimum of 0 (f / ||g||^2), at most 1e-2 ||x||
        gg = max(_dot(g, g), 1e-300)
        gamma = min(f / gg, 1e-2 * math.sqrt(max(_dot(x, x), 1e-30) / gg))
    for qi in q:
        qi.mul_(gamma)
    for (s, y, rho), a in zip(mem, reversed(alphas)):
        bta = rho * _dot(y, q)
        for qi, si in zip(q, s):
            qi.add_(si, alpha=a - bta)
    return [qi.neg_() for qi in q]


def _line_search(P: _Problem, x: Params, f: float, g: Params, p: Params,
                 tries: int = 20) -> Optional[tuple[Params, float, Params]]:
    """Armijo backtracking from step 1; None when no decrease is found."""
    gp = _dot(g, p)
    if not gp < 0:
        return None
    t = 1.0
    for _ in range(tries):
        xn = [a + t * c for a, c in zip(x, p)]
        fn, gn = _value_grad(P, xn)
        if math.isfinite(fn) and fn <= f + 1e-4 * t * gp:
            return xn, fn, gn
        t *= 0.5
    return None


def _setup(W0: torch.Tensor, S: torch.Tensor, V: torch.Tensor, Xf: torch.Tensor,
           Xh: Optional[torch.Tensor], bias: Optional[torch.Tensor], name: str, slope: float,
           slices: int) -> tuple[_Problem, torch.Tensor]:
    """Scaled problem and the column scaling d (n,)."""
    m = W0.shape[0]
    d = torch.linalg.vector_norm(Xf, dim=1) / math.sqrt(max(Xf.shape[1], 1))
    dmax = float(d.max()) if d.numel() else 0.0
    d = torch.clamp(d, min=max(dmax * 1e-6, 1e-30))
    inv = (1.0 / d).reshape(-1, 1)
    b = (torch.zeros(m, dtype=W0.dtype, device=W0.device) if bias is None else bias).reshape(m, 1)
    Yf = act_fn(W0 @ Xf + b, name, slope)
    Yh = act_fn(W0 @ Xh + b, name, slope) if Xh is not None else None
    vmask = (V != 0) if slices > 1 else None
    P = _Problem(
        Xf=(Xf * inv).contiguous(), Yf=Yf, Xh=(Xh * inv).contiguous() if Xh is not None else None,
        Yh=Yh, b=b, mask=S != 0, vmask=vmask, name=name, slope=slope,
        nyf=max(float(torch.linalg.vector_norm(Yf, dtype=torch.float64)) ** 2, 1e-300),
        nyh=max(float(torch.linalg.vector_norm(Yh, dtype=torch.float64)) ** 2, 1e-300)
        if Yh is not None else 1.0,
    )
    if vmask is not None:  # the block pattern of the start (a zero block row stays zero)
        P.vmask = _slice_pattern(V, slices)
    return P, d


def _slice_pattern(V: torch.Tensor, slices: int) -> torch.Tensor:
    """(q, n) bool: row block i of V may be nonzero only on column block i."""
    q, n = V.shape
    rq, rn = q // slices, n // slices
    rows = torch.arange(q, device=V.device) // max(rq, 1)
    cols = torch.arange(n, device=V.device) // max(rn, 1)
    return rows.reshape(-1, 1) == cols.reshape(1, -1)


def refine(
    W0: torch.Tensor, U: torch.Tensor, V: torch.Tensor, S: torch.Tensor,
    X_fit: torch.Tensor, X_held: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    activation: str, slope: float = 0.01, *, slices: int = 1, max_iter: int = 300,
    patience: int = 5, improve_tol: float = 2e-3, memory: int = 8,
) -> RefineResult:
    """Minimise the post-activation objective from (U, V, S), S's support fixed.

    Args:
        W0: (m, n) original weight; U (m, q), V (q, n), S (m, n): the start.
        X_fit: (n, Nf) fitting columns; X_held: (n, Nh) held-out columns or None (then
            the fitting objective selects the iterate and drives the stopping rule).
        bias: (m,) or None; activation, slope: as in decompose.
        slices: ALDS slices of V (its block pattern is kept).
        max_iter: iteration cap; patience, improve_tol: the stopping rule (module doc);
        memory: L-BFGS pairs kept.

    Returns:
        RefineResult with the best iterate (same dtype/device as W0).
    """
    P, d = _setup(W0, S, V, X_fit, X_held, bias, activation, slope, slices)
    x = [U.clone(), V * d, S * d]
    f, g = _value_grad(P, x)
    held = (lambda z: _value(P, z, P.Xh, P.Yh, P.nyh)) if P.Xh is not None else None
    h = held(x) if held else f
    fit_hist, held_hist = [math.sqrt(f)], [math.sqrt(h)]
    best, best_h, best_it = [t.clone() for t in x], h, 0
    mem: list[tuple[Params, Params, float]] = []
    converged, it, evals = False, 0, 1
    for it in range(1, max_iter + 1):
        step = _line_search(P, x, f, g, _direction(g, mem, x, f))
        if step is None and mem:  # stale curvature pairs: retry along -g
            mem.clear()
            step = _line_search(P, x, f, g, _direction(g, mem, x, f))
        if step is None:
            converged, it = True, it - 1
            break
        xn, fn, gn = step
        evals += 1
        s = [a - c for a, c in zip(xn, x)]
        y = [a - c for a, c in zip(gn, g)]
        sy = _dot(s, y)
        if sy > 1e-12 * math.sqrt(_dot(s, s) * _dot(y, y)):
            mem.append((s, y, 1.0 / sy))
            mem = mem[-memory:]
        x, f, g = xn, fn, gn
        h = held(x) if held else f
        fit_hist.append(math.sqrt(f))
        held_hist.append(math.sqrt(h))
        if h < best_h:
            best, best_h, best_it = [t.clone() for t in x], h, it
        if h <= (100.0 * torch.finfo(W0.dtype).eps) ** 2:  # exact up to rounding
            converged = True
            break
        if it - best_it >= patience:  # no new best held-out iterate for `patience` iterations
            converged = True
            break
        if it > 3 * patience and min(held_hist[-patience:]) ** 2 > (1 - improve_tol) * min(held_hist[:-patience]) ** 2:
            converged = True
            break
    Ub, Vb, Sb = best
    inv = 1.0 / d
    return RefineResult(U=Ub, V=Vb * inv, S=Sb * inv, iterations=it, converged=converged,
                        fit=fit_hist, held=held_hist, best=best_it, evaluations=evals)
