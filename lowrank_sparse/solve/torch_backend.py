"""The L + S ADMM in pure torch (CPU and CUDA): the reference implementation.

It runs exactly the iterations of the C++ core (csrc/admm.cpp), in the same order,
with the operators of lowrank_sparse/ops/torch_ops.py; docs/method.md derives them.

One iteration (scaled form; M = L + S; Lam, Lam_z scaled duals)::

    L   = P_rank(W + Lam - S)            (warm-started truncated SVD, per slice)
    S   = P_struct(W + Lam - L)          (hard structured projection)
    [Z  = zstep(y, W X - Lam_z)]         (nonlinear mode only, elementwise)
    Lam += W - M ;  [Lam_z += Z - W X]
    residuals, objective of M, stopping test, penalty update (dual rescaled)
    W   = argmin F(W) + rho/2 ||W - M + Lam||^2 [+ rho_z/(2N) ||Z - W X + Lam_z||^2]

The W-step of the data modes works in the eigenbasis Q of G (computed once): with
A = M Q, the rotated dual Lam Q maintained alongside Lam, and P = W0 Q diag(d),
W Q = (P + rho (A - Lam Q)) / (d + rho) and W = (W Q) Q^T: two (m, n, n) GEMMs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .._validate import AdmmSpec
from ..ops import torch_ops
from .activations import act_fn, zstep


@dataclass
class RawSolve:
    """Backend output, before packaging into a Decomposition.

    U (m, slices*r), V (slices*r, n) block-diagonal for slices > 1, S (m, n); histories
    are per iteration."""

    U: Any
    V: Any
    S: Any
    iterations: int
    converged: bool
    primal: list[float] = field(default_factory=list)
    dual: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    rho: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _nrm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x))


def balance(r: float, s: float, mu: float, tau: float, growth: float) -> float:
    """Factor by which rho is multiplied (residual balancing times slow growth)."""
    f = 1.0
    if r > mu * s:
        f = tau
    elif s > mu * r:
        f = 1.0 / tau
    return f * growth


def solve_torch(
    W0: torch.Tensor,
    spec: AdmmSpec,
    V0: torch.Tensor,
    gram: Optional[torch.Tensor] = None,
    X: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> RawSolve:
    """Run the ADMM of ``spec`` on W0 (m, n).

    Args:
        W0: (m, n) float32/float64 weight (CPU or CUDA).
        spec: validated problem (lowrank_sparse._validate.prepare).
        V0: (slices, n / slices, p) orthonormal initial right subspaces.
        gram: (n, n) G for mode "gram".
        X: (n, N) inputs for mode "nonlinear" (already subsampled).
        bias: (m,) for mode "nonlinear" (None = 0).
    """
    dt, dev = W0.dtype, W0.device
    m, n = spec.m, spec.n
    g_sl, r, nsl = spec.slices, spec.rank, spec.n // spec.slices
    mode = spec.mode
    nW = _nrm(W0)
    zeros = torch.zeros(m, n, dtype=dt, device=dev)
    if nW == 0.0:
        U = torch.zeros(m, g_sl * r, dtype=dt, device=dev)
        V = torch.zeros(g_sl * r, n, dtype=dt, device=dev)
        return RawSolve(U, V, zeros.clone(), 0, True, extra={"rho_final": 0.0})

    # ---- data-dependent set-up (once per layer) ----
    gscale = 1.0
    Q = d = W0Q = P = XtQ = Y = Zlin0 = b = None
    N = 0
    nobj = nW
    if mode in ("gram", "nonlinear"):
        if mode == "nonlinear":
            assert X is not None
            N = X.shape[1]
            G = (X @ X.mT) / N
        else:
            assert gram is not None
            G = gram
        d, Q = torch.linalg.eigh(G)
        d = torch.clamp(d, min=0)
        gs = float(d.mean())
        gscale = gs if gs > 0 else 1.0
        W0Q = W0 @ Q
        P = W0Q * d
        if mode == "gram":
            nobj = math.sqrt(float((d * W0Q * W0Q).sum()))
            nobj = nobj if nobj > 0 else 1.0
        else:
            assert X is not None
            XtQ = X.mT @ Q  # (N, n)
            b = (bias if bias is not None else torch.zeros(m, dtype=dt, device=dev)).reshape(m, 1)
            Zlin0 = W0 @ X  # (m, N)
            Y = act_fn(Zlin0 + b, spec.activation, spec.negative_slope)
            nobj = _nrm(Y) or 1.0
    nZ = (_nrm(Zlin0) or 1.0) if Zlin0 is not None else 1.0

    # ---- state ----
    W = W0.clone()
    Lam = zeros.clone()
    L = zeros.clone()
    S = zeros.clone()
    Mprev = zeros.clone()
    LamQ = zeros.clone() if Q is not None else None
    WQ = W0Q.clone() if W0Q is not None else None
    Z = Zlin0.clone() if Zlin0 is not None else None
    WX = Zlin0.clone() if Zlin0 is not None else None
    Lamz = torch.zeros_like(Zlin0) if Zlin0 is not None else None
    Zprev = Zlin0.clone() if Zlin0 is not None else None
    Vs = [V0[i].to(dtype=dt, device=dev).clone() for i in range(g_sl)]
    Us: list[torch.Tensor] = [torch.zeros(m, 0, dtype=dt, device=dev)] * g_sl
    svs: list[torch.Tensor] = [torch.zeros(0, dtype=dt, device=dev)] * g_sl
    Vts: list[torch.Tensor] = [torch.zeros(0, nsl, dtype=dt, device=dev)] * g_sl

    rho_rel, rho_z = spec.rho0, spec.rho0
    primal: list[float] = []
    dual: list[float] = []
    objective: list[float] = []
    rhos: list[float] = []
    pz: list[float] = []
    dz: list[float] = []
    converged = False
    it = 0
    use_sparse = spec.has_sparse
    for it in range(1, spec.max_iter + 1):
        rho = rho_rel * gscale
        A = W + Lam
        # L-step
        if r > 0:
            T = A - S
            for i in range(g_sl):
                Ti = T[:, i * nsl : (i + 1) * nsl]
                U_, s_, Vt_, Vs[i] = torch_ops.truncated_svd(
                    Ti, r, Vs[i], oversample=spec.p - r, power_iters=spec.power_iters
                )
                if spec.relaxed:  # SVT restricted to the leading r triplets
                    thr = spec.lam_nuclear / rho
                    q = int((s_ > thr).sum())
                    U_, s_, Vt_ = U_[:, :q], (s_[:q] - thr), Vt_[:q]
                Us[i], svs[i], Vts[i] = U_, s_, Vt_
                L[:, i * nsl : (i + 1) * nsl] = (U_ * s_) @ Vt_
        # S-step
        if use_sparse:
            B = A - L
            if spec.relaxed:
                S = torch_ops.group_soft_threshold(B, spec.lam_sparse / rho, spec.structure)
            else:
                S = torch_ops.project(B, spec.k, spec.structure)
        M = L + S
        # Z-step
        if mode == "nonlinear":
            c = WX - Lamz + b
            u = zstep(Y, c, Z + b, rho_z, spec.activation, spec.negative_slope, spec.newton_steps)
            Z = u - b
        # duals and residuals
        R = W - M
        Lam += R
        rp = _nrm(R) / nW
        sd = rho_rel * _nrm(M - Mprev) / nW
        Mprev.copy_(M)
        if Q is not None:
            MQ = M @ Q
            LamQ += WQ - MQ
            if mode == "gram":
                E = W0Q - MQ
                obj = math.sqrt(max(float((d * E * E).sum()), 0.0)) / nobj
            else:
                MX = M @ X
                obj = _nrm(Y - act_fn(MX + b, spec.activation, spec.negative_slope)) / nobj
        else:
            obj = _nrm(W0 - M) / nW
        primal.append(rp)
        dual.append(sd)
        objective.append(obj)
        rhos.append(rho_rel)
        done = rp < spec.tol and sd < spec.tol
        if mode == "nonlinear":
            Rz = Z - WX
            Lamz += Rz
            rz = _nrm(Rz) / nZ
            sz = rho_z * _nrm(Z - Zprev) / nZ
            Zprev.copy_(Z)
            pz.append(rz)
            dz.append(sz)
            done = done and rz < spec.tol and sz < spec.tol
        if done:
            converged = True
            break
        if it == spec.max_iter:
            break
        # penalty update, scaled duals rescaled so that rho * Lam is unchanged
        f = balance(rp, sd, spec.mu, spec.tau, spec.rho_growth)
        rho_rel *= f
        Lam /= f
        if LamQ is not None:
            LamQ /= f
        if mode == "nonlinear":
            fz = balance(rz, sz, spec.mu, spec.tau, spec.rho_growth)
            rho_z *= fz
            Lamz /= fz
        rho = rho_rel * gscale
        # W-step
        if mode == "weight":
            W = (W0 + rho * (M - Lam)) / (1.0 + rho)
        elif mode == "gram":
            WQ = (P + rho * (MQ - LamQ)) / (d + rho)
            W = WQ @ Q.mT
        else:
            BQ = ((Z + Lamz) @ XtQ) / N
            WQ = (rho * (MQ - LamQ) + rho_z * BQ) / (rho + rho_z * d)
            W = WQ @ Q.mT
            WX = WQ @ XtQ.mT

    # ---- factors: U sqrt(s), sqrt(s) V^T per slice ----
    ranks = [int(s_.numel()) for s_ in svs] if r > 0 else [0] * g_sl
    rt = max(ranks) if r > 0 else 0
    if not spec.relaxed:
        rt = r
    U = torch.zeros(m, g_sl * rt, dtype=dt, device=dev)
    V = torch.zeros(g_sl * rt, n, dtype=dt, device=dev)
    if r > 0:
        for i in range(g_sl):
            q = ranks[i]
            sq = torch.sqrt(svs[i])
            U[:, i * rt : i * rt + q] = Us[i] * sq
            V[i * rt : i * rt + q, i * nsl : (i + 1) * nsl] = sq.reshape(-1, 1) * Vts[i]
    extra: dict[str, Any] = {"rho": rhos, "rho_final": rho_rel, "gscale": gscale}
    if mode == "nonlinear":
        extra.update(primal_z=pz, dual_z=dz, samples=N, rho_z_final=rho_z)
    return RawSolve(U, V, S, it, converged, primal, dual, objective, rhos, extra)
