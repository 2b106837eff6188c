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

The code follows the general loop of csrc/admm_general.cpp step by step: a
once-per-layer _setup, a _Workspace holding the state, and one function per step
in its order (_l_step, _s_step, _z_step, _dual_step and _objective, _z_duals,
_penalty_update, _w_step); _package forms the factors at the end.
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


@dataclass
class _Setup:
    """Once-per-layer terms of the data modes (None / defaults in weight mode).

    Q, d: eigenbasis and clamped eigenvalues of G; W0Q = W0 Q; P = W0Q diag(d);
    XtQ = X^T Q (N, n), Zlin0 = W0 X, Y = act(Zlin0 + b), b (m, 1) (nonlinear);
    N samples; nobj, nZ: normalisers of the objective and of the Z residuals;
    gscale: mean eigenvalue of G (rho = rho_rel * gscale)."""

    nobj: float
    Q: Optional[torch.Tensor] = None
    d: Optional[torch.Tensor] = None
    W0Q: Optional[torch.Tensor] = None
    P: Optional[torch.Tensor] = None
    XtQ: Optional[torch.Tensor] = None
    Y: Optional[torch.Tensor] = None
    Zlin0: Optional[torch.Tensor] = None
    b: Optional[torch.Tensor] = None
    N: int = 0
    nZ: float = 1.0
    gscale: float = 1.0


def _setup(
    W0: torch.Tensor,
    spec: AdmmSpec,
    nW: float,
    gram: Optional[torch.Tensor],
    X: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
) -> _Setup:
    """Data-dependent set-up (once per layer): eigenbasis of G and the data terms."""
    c = _Setup(nobj=nW)
    if spec.mode not in ("gram", "nonlinear"):
        return c
    if spec.mode == "nonlinear":
        assert X is not None
        c.N = X.shape[1]
        G = (X @ X.mT) / c.N
    else:
        assert gram is not None
        G = gram
    d, c.Q = torch.linalg.eigh(G)
    c.d = torch.clamp(d, min=0)
    gs = float(c.d.mean())
    c.gscale = gs if gs > 0 else 1.0
    c.W0Q = W0 @ c.Q
    c.P = c.W0Q * c.d
    if spec.mode == "gram":
        nobj = math.sqrt(float((c.d * c.W0Q * c.W0Q).sum()))
        c.nobj = nobj if nobj > 0 else 1.0
    else:
        assert X is not None
        _nonlinear_terms(c, W0, spec, X, bias)
    return c


def _nonlinear_terms(
    c: _Setup, W0: torch.Tensor, spec: AdmmSpec, X: torch.Tensor, bias: Optional[torch.Tensor]
) -> None:
    """Nonlinear mode: X^T Q, the bias column, W0 X, the targets Y and the normalisers."""
    m = spec.m
    c.XtQ = X.mT @ c.Q  # (N, n)
    zb = torch.zeros(m, dtype=W0.dtype, device=W0.device)
    c.b = (bias if bias is not None else zb).reshape(m, 1)
    c.Zlin0 = W0 @ X  # (m, N)
    c.Y = act_fn(c.Zlin0 + c.b, spec.activation, spec.negative_slope)
    c.nobj = _nrm(c.Y) or 1.0
    c.nZ = _nrm(c.Zlin0) or 1.0


@dataclass
class _Workspace:
    """State of the loop (the names of csrc/admm_general.cpp's GeneralLoop).

    W, Lam (scaled dual), L, S, Mprev; data modes: LamQ = Lam Q, WQ = W Q; nonlinear:
    Z, WX = W X, Lamz, Zprev.  Vs: warm-start right subspaces per slice; Us, svs, Vts:
    the last truncated SVD per slice.  M, MQ: this iteration's L + S and M Q."""

    spec: AdmmSpec
    c: _Setup
    W0: torch.Tensor
    X: Optional[torch.Tensor]
    nW: float
    W: torch.Tensor
    Lam: torch.Tensor
    L: torch.Tensor
    S: torch.Tensor
    Mprev: torch.Tensor
    LamQ: Optional[torch.Tensor]
    WQ: Optional[torch.Tensor]
    Z: Optional[torch.Tensor]
    WX: Optional[torch.Tensor]
    Lamz: Optional[torch.Tensor]
    Zprev: Optional[torch.Tensor]
    Vs: list[torch.Tensor]
    Us: list[torch.Tensor]
    svs: list[torch.Tensor]
    Vts: list[torch.Tensor]
    rho_rel: float
    rho_z: float
    M: Optional[torch.Tensor] = None
    MQ: Optional[torch.Tensor] = None
    primal: list[float] = field(default_factory=list)
    dual: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    rhos: list[float] = field(default_factory=list)
    pz: list[float] = field(default_factory=list)
    dz: list[float] = field(default_factory=list)


def _workspace(
    W0: torch.Tensor, spec: AdmmSpec, V0: torch.Tensor, c: _Setup, nW: float,
    X: Optional[torch.Tensor],
) -> _Workspace:
    """The initial state: W = W0, zero duals, L and S; Z = W X = W0 X."""
    dt, dev = W0.dtype, W0.device
    m, n, g_sl, nsl = spec.m, spec.n, spec.slices, spec.n // spec.slices
    zeros = torch.zeros(m, n, dtype=dt, device=dev)
    Z0 = c.Zlin0
    return _Workspace(
        spec=spec, c=c, W0=W0, X=X, nW=nW,
        W=W0.clone(), Lam=zeros.clone(), L=zeros.clone(), S=zeros.clone(),
        Mprev=zeros.clone(),
        LamQ=zeros.clone() if c.Q is not None else None,
        WQ=c.W0Q.clone() if c.W0Q is not None else None,
        Z=Z0.clone() if Z0 is not None else None,
        WX=Z0.clone() if Z0 is not None else None,
        Lamz=torch.zeros_like(Z0) if Z0 is not None else None,
        Zprev=Z0.clone() if Z0 is not None else None,
        Vs=[V0[i].to(dtype=dt, device=dev).clone() for i in range(g_sl)],
        Us=[torch.zeros(m, 0, dtype=dt, device=dev)] * g_sl,
        svs=[torch.zeros(0, dtype=dt, device=dev)] * g_sl,
        Vts=[torch.zeros(0, nsl, dtype=dt, device=dev)] * g_sl,
        rho_rel=spec.rho0, rho_z=spec.rho0,
    )


def _l_step(ws: _Workspace, A: torch.Tensor, rho: float) -> None:
    """L = P_rank(W + Lam - S) per slice (warm-started truncated SVD; SVT when relaxed)."""
    spec = ws.spec
    r, nsl = spec.rank, spec.n // spec.slices
    T = A - ws.S
    for i in range(spec.slices):
        Ti = T[:, i * nsl : (i + 1) * nsl]
        U_, s_, Vt_, ws.Vs[i] = torch_ops.truncated_svd(
            Ti, r, ws.Vs[i], oversample=spec.p - r, power_iters=spec.power_iters
        )
        if spec.relaxed:  # SVT restricted to the leading r triplets
            thr = spec.lam_nuclear / rho
            q = int((s_ > thr).sum())
            U_, s_, Vt_ = U_[:, :q], (s_[:q] - thr), Vt_[:q]
        ws.Us[i], ws.svs[i], ws.Vts[i] = U_, s_, Vt_
        ws.L[:, i * nsl : (i + 1) * nsl] = (U_ * s_) @ Vt_


def _s_step(ws: _Workspace, A: torch.Tensor, rho: float) -> None:
    """S = P_struct(W + Lam - L) (hard projection; group soft threshold when relaxed)."""
    spec = ws.spec
    B = A - ws.L
    if spec.relaxed:
        ws.S = torch_ops.group_soft_threshold(B, spec.lam_sparse / rho, spec.structure)
    else:
        ws.S = torch_ops.project(B, spec.k, spec.structure)


def _z_step(ws: _Workspace) -> None:
    """Nonlinear: Z = argmin 1/2 (Y - act(Z + b))^2 + rho_z/2 (Z - W X + Lam_z)^2."""
    spec, c = ws.spec, ws.c
    c_ = ws.WX - ws.Lamz + c.b
    u = zstep(c.Y, c_, ws.Z + c.b, ws.rho_z, spec.activation, spec.negative_slope,
              spec.newton_steps)
    ws.Z = u - c.b


def _dual_step(ws: _Workspace) -> tuple[float, float]:
    """M = L + S; Lam += W - M; Mprev <- M.  Returns the relative primal and dual
    residuals."""
    ws.M = M = ws.L + ws.S
    R = ws.W - M
    ws.Lam += R
    rp = _nrm(R) / ws.nW
    sd = ws.rho_rel * _nrm(M - ws.Mprev) / ws.nW
    ws.Mprev.copy_(M)
    return rp, sd


def _objective(ws: _Workspace) -> float:
    """Relative error of M in the layer's metric; data modes also MQ = M Q and
    LamQ += WQ - MQ."""
    spec, c, M = ws.spec, ws.c, ws.M
    if c.Q is None:
        return _nrm(ws.W0 - M) / ws.nW
    ws.MQ = MQ = M @ c.Q
    ws.LamQ += ws.WQ - MQ
    if spec.mode == "gram":
        E = c.W0Q - MQ
        return math.sqrt(max(float((c.d * E * E).sum()), 0.0)) / c.nobj
    MX = M @ ws.X
    return _nrm(c.Y - act_fn(MX + c.b, spec.activation, spec.negative_slope)) / c.nobj


def _record(ws: _Workspace, rp: float, sd: float, obj: float) -> None:
    ws.primal.append(rp)
    ws.dual.append(sd)
    ws.objective.append(obj)
    ws.rhos.append(ws.rho_rel)


def _z_duals(ws: _Workspace) -> tuple[float, float]:
    """Nonlinear: Lam_z += Z - W X; Zprev <- Z.  Returns the Z residuals."""
    Rz = ws.Z - ws.WX
    ws.Lamz += Rz
    rz = _nrm(Rz) / ws.c.nZ
    sz = ws.rho_z * _nrm(ws.Z - ws.Zprev) / ws.c.nZ
    ws.Zprev.copy_(ws.Z)
    ws.pz.append(rz)
    ws.dz.append(sz)
    return rz, sz


def _penalty_update(ws: _Workspace, rp: float, sd: float, rz: float, sz: float) -> None:
    """rho (and rho_z) by residual balancing; scaled duals rescaled so that rho * Lam
    is unchanged."""
    spec = ws.spec
    f = balance(rp, sd, spec.mu, spec.tau, spec.rho_growth)
    ws.rho_rel *= f
    ws.Lam /= f
    if ws.LamQ is not None:
        ws.LamQ /= f
    if spec.mode == "nonlinear":
        fz = balance(rz, sz, spec.mu, spec.tau, spec.rho_growth)
        ws.rho_z *= fz
        ws.Lamz /= fz


def _w_step(ws: _Workspace) -> None:
    """W = argmin F(W) + rho/2 ||W - M + Lam||^2 [+ rho_z/(2N) ||Z - W X + Lam_z||^2]."""
    c, M = ws.c, ws.M
    rho = ws.rho_rel * c.gscale
    if ws.spec.mode == "weight":
        ws.W = (ws.W0 + rho * (M - ws.Lam)) / (1.0 + rho)
        return
    if ws.spec.mode == "gram":
        ws.WQ = (c.P + rho * (ws.MQ - ws.LamQ)) / (c.d + rho)
        ws.W = ws.WQ @ c.Q.mT
        return
    BQ = ((ws.Z + ws.Lamz) @ c.XtQ) / c.N
    ws.WQ = (rho * (ws.MQ - ws.LamQ) + ws.rho_z * BQ) / (rho + ws.rho_z * c.d)
    ws.W = ws.WQ @ c.Q.mT
    ws.WX = ws.WQ @ c.XtQ.mT


def _factors(ws: _Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """U sqrt(s), sqrt(s) V^T per slice (V block-diagonal for slices > 1)."""
    spec = ws.spec
    m, n, r, g_sl, nsl = spec.m, spec.n, spec.rank, spec.slices, spec.n // spec.slices
    dt, dev = ws.W0.dtype, ws.W0.device
    ranks = [int(s_.numel()) for s_ in ws.svs] if r > 0 else [0] * g_sl
    rt = max(ranks) if r > 0 else 0
    if not spec.relaxed:
        rt = r
    U = torch.zeros(m, g_sl * rt, dtype=dt, device=dev)
    V = torch.zeros(g_sl * rt, n, dtype=dt, device=dev)
    if r > 0:
        for i in range(g_sl):
            q = ranks[i]
            sq = torch.sqrt(ws.svs[i])
            U[:, i * rt : i * rt + q] = ws.Us[i] * sq
            V[i * rt : i * rt + q, i * nsl : (i + 1) * nsl] = sq.reshape(-1, 1) * ws.Vts[i]
    return U, V


def _package(ws: _Workspace, it: int, converged: bool) -> RawSolve:
    """The factors, S and the histories as a RawSolve."""
    U, V = _factors(ws)
    extra: dict[str, Any] = {"rho": ws.rhos, "rho_final": ws.rho_rel, "gscale": ws.c.gscale}
    if ws.spec.mode == "nonlinear":
        extra.update(primal_z=ws.pz, dual_z=ws.dz, samples=ws.c.N, rho_z_final=ws.rho_z)
    return RawSolve(U, V, ws.S, it, converged, ws.primal, ws.dual, ws.objective, ws.rhos, extra)


def _zero_solve(W0: torch.Tensor, spec: AdmmSpec) -> RawSolve:
    """W0 = 0: the zero decomposition, no iterations."""
    dt, dev, k = W0.dtype, W0.device, spec.slices * spec.rank
    U = torch.zeros(spec.m, k, dtype=dt, device=dev)
    V = torch.zeros(k, spec.n, dtype=dt, device=dev)
    S = torch.zeros(spec.m, spec.n, dtype=dt, device=dev)
    return RawSolve(U, V, S, 0, True, extra={"rho_final": 0.0})


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
    nW = _nrm(W0)
    if nW == 0.0:
        return _zero_solve(W0, spec)
    c = _setup(W0, spec, nW, gram, X, bias)
    ws = _workspace(W0, spec, V0, c, nW, X)
    nonlin = spec.mode == "nonlinear"
    converged, it = False, 0
    for it in range(1, spec.max_iter + 1):
        rho = ws.rho_rel * c.gscale
        A = ws.W + ws.Lam
        if spec.rank > 0:
            _l_step(ws, A, rho)
        if spec.has_sparse:
            _s_step(ws, A, rho)
        if nonlin:
            _z_step(ws)
        rp, sd = _dual_step(ws)
        _record(ws, rp, sd, _objective(ws))
        done = rp < spec.tol and sd < spec.tol
        rz = sz = 0.0
        if nonlin:
            rz, sz = _z_duals(ws)
            done = done and rz < spec.tol and sz < spec.tol
        if done:
            converged = True
            break
        if it == spec.max_iter:
            break
        _penalty_update(ws, rp, sd, rz, sz)
        _w_step(ws)
    return _package(ws, it, converged)
