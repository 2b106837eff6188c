"""Refinement of L + S on the post-activation objective, with S's support fixed.

Objective (relative, squared), on calibration inputs X (n, N), bias b (m,)::

    f(U, V, S) = ||act(W_hat X + b) - Y||_F^2 / ||Y||_F^2,
    W_hat = U V + S,   Y = act(W0 X + b)

over U (m, q), V (q, n) (block-diagonal pattern kept when ALDS slices are used) and
the values of S on its given support (entries off the support stay exactly 0), so
every iterate has the rank and the sparsity pattern of the start.

Method: damped L-BFGS (two-loop recursion, ``memory`` pairs) with an Armijo
backtracking line search.  Iteration k minimises, along its direction,

    phi_k(x) = f(x) + c ||W_hat(x) - W_hat(x_k)||_F^2,   c = ridge mean_j(d_j^2) N / ||Y||^2,

a proximal (Levenberg-Marquardt-like) damping in weight space that vanishes at the
current iterate: the line search accepts only phi_k(x_{k+1}) < f(x_k), so ``f``
itself decreases monotonically and any fixed point is a stationary point of ``f``
(no bias: a planted L* + S* is recovered exactly).  The curvature pairs include the
damping, so the quasi-Newton model is that of f + c ||.||^2: steps along input
directions the calibration data barely excite (an input that is nonzero on one
sample, of tiny energy d_j^2) are held back, instead of fitting a few samples with
huge weights, which generalises badly and wrecks a later quantization (seen on a
ReLU MLP layer: entries of |W_hat - W0| up to 22 with ``ridge`` = 0, 0.2 with it).

Variables are Jacobi-scaled by the diagonal of the damped input Gram matrix:
V_s = V diag(d), S_s = S diag(d), d_j = sqrt(||x_j||^2 / N + ridge mean(||x||^2 / N))
(the input-norm scaling of OATS / Wanda for the ordinary inputs, bounded below for
rare ones).  The gradient is analytic: with Z = W_hat X + b, R = act(Z) - Y and
Gz = 2 R act'(Z) / ||Y||^2, grad_W = Gz X^T (+ 2 c (W_hat - W_hat(x_k)) in phi_k);
grad_U = grad_W V^T, grad_V = U^T grad_W, grad_S = grad_W on the support.  One
evaluation costs one (m, n, N) GEMM for Z, one for grad_W and one (m, q, n).

With ``precondition`` (the default) the low-rank part is U' D V' in the balanced
basis of the start (U V_s = P diag(s) Q^T: U' = P diag(s), V' = diag(s) Q^T, D =
diag(1/s) fixed), so that both factors start with unit curvature instead of the
singular values' spread (docs/method.md section 6); the variables are one flat vector.

Early stopping: the columns are split into a fitting part and a held-out part; the
iterate with the lowest held-out error is returned (the start is a candidate).  As
``f`` decreases on the fitting part, the result is never worse than the start on
either part, hence on all columns.  Stopping rule: no new best held-out iterate for
``patience`` iterations, or the best held-out objective has improved by less than a
relative ``improve_tol`` over the last ``patience`` iterations (tested from
iteration 3 ``patience`` on: L-BFGS can stall for a few early iterations), the
held-out relative error is below 100 eps of the dtype (an exact fit), or the line
search finds no decrease; otherwise the loop ends at ``max_iter`` (``converged``
False).

The returned factors are balanced (per slice, U = P sqrt(s), V = sqrt(s) Q^T from an
SVD of U V through two thin QRs): the product is unchanged up to rounding, and the
two factors have equal singular values, as the ADMM's truncated-SVD factors do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from .activations import act_fn, act_residual

__all__ = ["RefineResult", "balance", "post_activation_error", "refine"]

Params = torch.Tensor  # flat (m q + q n + m n,): U, V_s, S_s back to back (views: _parts)


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
    inv: torch.Tensor  # (n,) 1 / d
    damp: float  # c of phi_k (0: plain L-BFGS)
    cw: Optional[torch.Tensor] = None  # (q,) D of W_hat = U' D V' + S (None: D = I)
    dims: tuple[int, int, int] = (0, 0, 0)  # (m, q, n)


@dataclass
class RefineResult:
    """Outcome of :func:`refine`: the best iterate (unscaled) and the histories.

    ``fit`` / ``held`` are relative errors ||act(W_hat X + b) - Y|| / ||Y|| on the
    fitting / held-out columns per iteration, entry 0 being the start (``fit`` is
    non-increasing); ``best`` the iteration returned; ``stop`` which rule ended the
    loop: "patience" (no new best held-out iterate), "improvement" (best held-out
    improved too little), "exact" (held-out error at rounding level), "line_search"
    (no decrease found) or "max_iter"."""

    U: torch.Tensor
    V: torch.Tensor
    S: torch.Tensor
    iterations: int
    converged: bool
    fit: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)
    best: int = 0
    evaluations: int = 0
    stop: str = ""


def _parts(P: _Problem, x: Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views (U (m, q), V_s (q, n), S_s (m, n)) of the flat vector x."""
    m, q, n = P.dims
    U, Vs, Ss = torch.split(x, [m * q, q * n, m * n])
    return U.view(m, q), Vs.view(q, n), Ss.view(m, n)


def _pack(*parts: torch.Tensor) -> Params:
    """The flat vector of (U, V_s, S_s)."""
    return torch.cat([t.reshape(-1) for t in parts])


def _what(P: _Problem, x: Params) -> torch.Tensor:
    """Scaled W_hat = U D V_s + S_s (m, n)."""
    U, Vs, Ss = _parts(P, x)
    if U.shape[1] == 0:
        return Ss.clone()
    return torch.addmm(Ss, U if P.cw is None else U * P.cw, Vs)


def _value(P: _Problem, x: Params, X: torch.Tensor, Y: torch.Tensor, ny: float) -> float:
    """f (relative squared error) on the columns X."""
    R = act_fn(torch.addmm(P.b, _what(P, x), X), P.name, P.slope).sub_(Y)
    return float(torch.linalg.vector_norm(R)) ** 2 / ny


def _chain(P: _Problem, x: Params, gW: torch.Tensor) -> Params:
    """Gradient wrt (U, V_s, S_s) (flat) from the gradient wrt the scaled W_hat."""
    U, Vs, _ = _parts(P, x)
    out = torch.empty_like(x)
    gU, gV, gS = _parts(P, out)
    torch.matmul(gW, Vs.mT, out=gU)
    torch.matmul((U if P.cw is None else U * P.cw).mT, gW, out=gV)
    if P.cw is not None:
        gU.mul_(P.cw)
    if P.vmask is not None:
        gV.mul_(P.vmask)
    torch.mul(gW, P.mask, out=gS)
    return out


def _eval(P: _Problem, x: Params, center: Optional[torch.Tensor]
          ) -> tuple[float, float, torch.Tensor, Params, Optional[Params]]:
    """(phi, f, scaled W_hat, grad f, grad phi) on the fitting columns; ``center`` is
    the scaled W_hat of the damping's centre (None: no damping term, grad phi None)."""
    Ws = _what(P, x)
    Z = torch.addmm(P.b, Ws, P.Xf)
    R, Gz = act_residual(Z, P.Yf, P.name, P.slope)
    f = float(torch.linalg.vector_norm(R)) ** 2 / P.nyf
    gW = Gz.mul_(2.0 / P.nyf) @ P.Xf.mT  # (m, n), wrt the scaled W_hat
    g = _chain(P, x, gW)
    if center is None or P.damp == 0:
        return f, f, Ws, g, None
    dW = (Ws - center).mul_(P.inv)  # unscaled W_hat - W_hat(x_k)
    phi = f + P.damp * float(torch.linalg.vector_norm(dW)) ** 2
    gphi = _chain(P, x, gW.add_(dW.mul_(P.inv), alpha=2.0 * P.damp))
    return phi, f, Ws, g, gphi


def _dot(a: Params, b: Params) -> float:
    return float(torch.dot(a, b))


def _direction(g: Params, mem: list[tuple[Params, Params, float]], x: Params, f: float) -> Params:
    """L-BFGS two-loop recursion: approximately -H^{-1} g."""
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(mem):
        a = rho * _dot(s, q)
        alphas.append(a)
        q.sub_(y, alpha=a)
    if mem:
        s, y, _ = mem[-1]
        gamma = _dot(s, y) / max(_dot(y, y), 1e-300)
    else:  # first step: Polyak's step for a minimum of 0 (f / ||g||^2), at most 1e-2 ||x||
        gg = max(_dot(g, g), 1e-300)
        gamma = min(f / gg, 1e-2 * math.sqrt(max(_dot(x, x), 1e-30) / gg))
    q.mul_(gamma)
    for (s, y, rho), a in zip(mem, reversed(alphas)):
        bta = rho * _dot(y, q)
        q.add_(s, alpha=a - bta)
    return q.neg_()


def _line_search(P: _Problem, x: Params, f: float, g: Params, p: Params, center: torch.Tensor,
                 tries: int = 20) -> Optional[tuple[Params, float, torch.Tensor, Params, Params]]:
    """Armijo backtracking on phi_k from step 1 -> (x, f, scaled W_hat, grad f,
    grad phi_k); None when no decrease is found."""
    gp = _dot(g, p)  # grad phi_k = grad f at the centre
    if not gp < 0:
        return None
    t = 1.0
    for _ in range(tries):
        xn = torch.add(x, p, alpha=t)
        phi, fn, Wn, gn, gphi = _eval(P, xn, center)
        if math.isfinite(phi) and phi <= f + 1e-4 * t * gp:
            return xn, fn, Wn, gn, gn if gphi is None else gphi
        t *= 0.5
    return None


def _setup(W0: torch.Tensor, S: torch.Tensor, V: torch.Tensor, Xf: torch.Tensor,
           Xh: Optional[torch.Tensor], bias: Optional[torch.Tensor], name: str, slope: float,
           slices: int, ridge: float) -> tuple[_Problem, torch.Tensor]:
    """Scaled problem and the column scaling d (n,)."""
    m = W0.shape[0]
    Nf = max(Xf.shape[1], 1)
    d2 = torch.linalg.vector_norm(Xf, dim=1) ** 2 / Nf
    mean_d2 = float(torch.mean(d2.double())) if d2.numel() else 0.0
    d = torch.sqrt(d2 + float(ridge) * mean_d2)
    dmax = float(d.max()) if d.numel() else 0.0
    d = torch.clamp(d, min=max(dmax * 1e-6, 1e-30))
    inv = 1.0 / d
    b = (torch.zeros(m, dtype=W0.dtype, device=W0.device) if bias is None else bias).reshape(m, 1)
    Yf = act_fn(W0 @ Xf + b, name, slope)
    Yh = act_fn(W0 @ Xh + b, name, slope) if Xh is not None else None
    nyf = max(float(torch.linalg.vector_norm(Yf, dtype=torch.float64)) ** 2, 1e-300)
    P = _Problem(
        Xf=(Xf * inv.reshape(-1, 1)).contiguous(), Yf=Yf,
        Xh=(Xh * inv.reshape(-1, 1)).contiguous() if Xh is not None else None,
        Yh=Yh, b=b, mask=S != 0, vmask=_slice_pattern(V, slices) if slices > 1 else None,
        name=name, slope=slope, nyf=nyf,
        nyh=max(float(torch.linalg.vector_norm(Yh, dtype=torch.float64)) ** 2, 1e-300)
        if Yh is not None else 1.0,
        inv=inv, damp=float(ridge) * mean_d2 * Nf / nyf, dims=(m, V.shape[0], V.shape[1]),
    )
    return P, d


def _slice_pattern(V: torch.Tensor, slices: int) -> torch.Tensor:
    """(q, n) bool: row block i of V may be nonzero only on column block i."""
    q, n = V.shape
    rq, rn = q // slices, n // slices
    rows = torch.arange(q, device=V.device) // max(rq, 1)
    cols = torch.arange(n, device=V.device) // max(rn, 1)
    return rows.reshape(-1, 1) == cols.reshape(1, -1)


def balance(U: torch.Tensor, V: torch.Tensor, slices: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of the same product U V with equal singular values, per slice:
    U_i = Qu P sqrt(s), V_i = sqrt(s) Q^T Qv^T from U_i = Qu Ru, V_i^T = Qv Rv and
    Ru Rv^T = P diag(s) Q^T.  A slice's V block stays on its own columns."""
    q, n = V.shape
    if q == 0:
        return U, V
    U2, V2 = torch.zeros_like(U), torch.zeros_like(V)
    rq, rn = q // slices, n // slices
    for i in range(slices):
        rs = slice(i * rq, (i + 1) * rq)
        cs = slice(i * rn, (i + 1) * rn) if slices > 1 else slice(0, n)
        Qu, Ru = torch.linalg.qr(U[:, rs])
        Qv, Rv = torch.linalg.qr(V[rs, cs].mT)
        Pl, sv, Qt = torch.linalg.svd(Ru @ Rv.mT)
        sq = torch.sqrt(sv)
        U2[:, rs] = Qu @ (Pl * sq)
        V2[rs, cs] = (sq.reshape(-1, 1) * Qt) @ Qv.mT
    return U2, V2


def refine(
    W0: torch.Tensor, U: torch.Tensor, V: torch.Tensor, S: torch.Tensor,
    X_fit: torch.Tensor, X_held: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    activation: str, slope: float = 0.01, *, slices: int = 1, max_iter: int = 300,
    patience: int = 5, improve_tol: float = 2e-3, memory: int = 8, ridge: float = 1e-3,
    precondition: bool = True,
) -> RefineResult:
    """Minimise the post-activation objective from (U, V, S), S's support fixed.

    Args:
        W0: (m, n) original weight; U (m, q), V (q, n), S (m, n): the start.
        X_fit: (n, Nf) fitting columns; X_held: (n, Nh) held-out columns or None (then
            the fitting error selects the iterate and drives the stopping rule).
        bias: (m,) or None; activation, slope: as in decompose.
        slices: ALDS slices of V (its block pattern is kept).
        max_iter: iteration cap; patience, improve_tol: the stopping rule (module doc);
        memory: L-BFGS pairs kept; ridge: the damping weight relative to the mean
            input energy, also the floor of the Jacobi scaling (module doc; 0: plain
            L-BFGS with the input-norm scaling).
        precondition: the scaled factor variables U' D V' (module doc); False: U, V_s.

    Returns:
        RefineResult with the best iterate (same dtype/device as W0), factors balanced.
    """
    P, d = _setup(W0, S, V, X_fit, X_held, bias, activation, slope, slices, ridge)
    Us, Vs = U, V * d
    if precondition and U.shape[1] > 0:
        Ub0, Vb0 = balance(Us, Vs, slices)
        sv = torch.linalg.vector_norm(Ub0, dim=0) ** 2
        sv = torch.clamp(sv, min=max(float(sv.max()) * 1e-6, 1e-30))
        P.cw = 1.0 / sv
        Us, Vs = Ub0 * sv.sqrt(), Vb0 * sv.sqrt().reshape(-1, 1)
    x = _pack(Us, Vs, S * d)
    f, _, Wc, g, _ = _eval(P, x, None)
    held = (lambda z: _value(P, z, P.Xh, P.Yh, P.nyh)) if P.Xh is not None else None
    h = held(x) if held else f
    fit_hist, held_hist = [math.sqrt(f)], [math.sqrt(h)]
    best, best_h, best_it = x.clone(), h, 0
    best_hist = [h]  # the best held-out value after each iteration
    mem: list[tuple[Params, Params, float]] = []
    converged, it, evals, stop = False, 0, 1, "max_iter"
    tiny = (100.0 * torch.finfo(W0.dtype).eps) ** 2
    for it in range(1, max_iter + 1):
        step = _line_search(P, x, f, g, _direction(g, mem, x, f), Wc)
        if step is None and mem:  # stale curvature pairs: retry along -g
            mem.clear()
            step = _line_search(P, x, f, g, _direction(g, mem, x, f), Wc)
        if step is None:
            converged, it, stop = True, it - 1, "line_search"
            break
        xn, fn, Wc, gn, gphi = step
        evals += 1
        s = xn - x
        y = gphi - g  # curvature of phi_k (damping included)
        sy = _dot(s, y)
        if sy > 1e-12 * math.sqrt(_dot(s, s) * _dot(y, y)):
            mem.append((s, y, 1.0 / sy))
            mem = mem[-memory:]
        x, f, g = xn, fn, gn
        h = held(x) if held else f
        fit_hist.append(math.sqrt(f))
        held_hist.append(math.sqrt(h))
        if h < best_h:
            best, best_h, best_it = x.clone(), h, it
        best_hist.append(best_h)
        if best_h <= tiny:  # exact up to rounding
            converged, stop = True, "exact"
            break
        if it - best_it >= patience:  # no new best held-out iterate for `patience` iterations
            converged, stop = True, "patience"
            break
        if it > 3 * patience and best_h > (1 - improve_tol) * best_hist[-1 - patience]:
            converged, stop = True, "improvement"
            break
    Ub, Vb, Sb = _parts(P, best)
    if P.cw is not None:
        Ub = Ub * P.cw
    inv = 1.0 / d
    Ub, Vb = balance(Ub, Vb * inv, slices)
    return RefineResult(U=Ub, V=Vb, S=Sb * inv, iterations=it, converged=converged,
                        fit=fit_hist, held=held_hist, best=best_it, evaluations=evals, stop=stop)
