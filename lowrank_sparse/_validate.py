"""Argument checking and normalisation for :func:`lowrank_sparse.decompose` and the
baselines.  Everything a user can get wrong is caught here, before any solver runs,
with a ValueError/TypeError that names the offending argument.

The result is an :class:`AdmmSpec` (plain numbers, shared by both backends) plus the
arrays converted to torch tensors without copies where the layout allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from .structure import Structure, parse_structure

Array = Union[torch.Tensor, np.ndarray]

#: Activation names accepted by decompose (the members of the core's _core.Activation).
ACTIVATIONS: tuple[str, ...] = ("identity", "relu", "leaky_relu", "gelu", "silu", "tanh")

BACKENDS = ("auto", "native", "torch")

#: Subspace oversampling of the truncated SVD (p = rank + OVERSAMPLE, capped).
OVERSAMPLE = 8


@dataclass
class AdmmSpec:
    """A validated per-layer problem: sizes, budgets and solver settings.

    Attributes:
        m, n: weight shape (out, in).
        rank: rank of L per slice (0: no low-rank part).
        slices: ALDS column slices of L (n % slices == 0).
        p: subspace size of the truncated SVD per slice (rank + oversampling, capped
            by min(m, n / slices)).
        structure: sparsity structure of S.
        k: budget of S in groups (entries for "unstructured"; N:M ignores it; 0: no S).
        mode: "weight" (F = 1/2||W - W0||^2), "gram" (identity activation with data)
            or "nonlinear" (activation with data, split Z = W X).
        activation: activation name ("identity" for the first two modes).
        negative_slope: leaky ReLU slope.
        relaxed: solve the convex relaxation (nuclear norm + L1 / group L2,1).
        lam_nuclear, lam_sparse: relaxation weights (absolute, in units of F).
        max_iter, tol: iteration cap and residual tolerance (relative).
        rho0: initial penalty relative to the mean eigenvalue of G (1 in weight space).
        mu, tau: residual-balancing ratio and factor (Boyd et al. 2011, sec. 3.4.1).
        rho_growth: extra geometric increase of rho per iteration (>= 1).
        power_iters: subspace iterations per L-step (warm started).
        newton_steps: safeguarded Newton steps of the smooth-activation Z-step.
        seed: seed of the initial right subspace and of the data subsample.
        subsample: maximum number of calibration columns in the nonlinear mode.
    """

    m: int
    n: int
    rank: int
    slices: int
    p: int
    structure: Structure
    k: int
    mode: str
    activation: str
    negative_slope: float
    relaxed: bool
    lam_nuclear: float
    lam_sparse: float
    max_iter: int
    tol: float
    rho0: float = 1.0
    mu: float = 10.0
    tau: float = 2.0
    rho_growth: float = 1.01
    power_iters: int = 1
    newton_steps: int = 4
    seed: int = 0
    subsample: int = 8192

    @property
    def has_sparse(self) -> bool:
        """S is part of the problem (N:M too: its budget k is 0 at density 0)."""
        return self.k > 0


def is_array(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """numpy array / torch tensor -> torch tensor sharing memory (no copy)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
        try:
            return torch.from_numpy(x)
        except (TypeError, ValueError):  # e.g. negative strides, unsupported dtype
            return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def check_float_matrix(t: torch.Tensor, name: str, ndim: int = 2) -> None:
    """Raise TypeError/ValueError unless t is a finite, non-empty float array of ``ndim`` dims."""
    if t.dtype == torch.bool or not (t.is_floating_point()):
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if not all_finite(t):
        raise ValueError(f"{name} contains NaN or Inf")


#: Headroom of :func:`check_magnitude`: the solvers form sums of squares and Gram
#: matrices of their inputs, which must stay this far below the dtype's largest value.
MAGNITUDE_HEADROOM = 64.0


def check_magnitude(t: Any, name: str, dtype: torch.dtype) -> None:
    """Raise ValueError when t's entries are finite but so large that sums of their
    squares (norms, Gram matrices, the SVD's panels) overflow ``dtype``: max|t|^2 *
    numel * MAGNITUDE_HEADROOM above ``finfo(dtype).max``.  Without it such inputs
    reach LAPACK as infinities and fail there with an error that names no argument.
    t: a tensor or numpy array; two reductions (min, max), no temporary.  NaN / Inf
    pass (the finiteness checks name those)."""
    numel = t.numel() if isinstance(t, torch.Tensor) else t.size
    if numel == 0:
        return
    if isinstance(t, torch.Tensor):
        lo, hi = (float(v) for v in torch.aminmax(t.detach()))
    else:
        lo, hi = float(t.min()), float(t.max())
    amax = max(abs(lo), abs(hi))
    if not math.isfinite(amax):
        return
    bound = amax * amax * float(numel) * MAGNITUDE_HEADROOM  # Python float: inf, never an error
    if bound > float(torch.finfo(dtype).max):
        raise ValueError(
            f"{name} has entries too large for {str(dtype).replace('torch.', '')} arithmetic "
            f"(max |{name}| = {amax:.3g}): the sums of their squares overflow; rescale {name}"
        )


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of the float tensor t is finite.

    A NaN or an infinity makes the float64 sum non-finite, so a finite sum proves the
    tensor finite without the (numel,) bool temporary of ``torch.isfinite(t).all()``
    (half the time on a 512x4608 weight, and no extra memory).  Float32 and narrower
    values cannot overflow a float64 sum; a float64 sum that overflows (entries near
    1e308) falls back to the elementwise test."""
    s = t.sum(dtype=torch.float64)
    if bool(torch.isfinite(s)):
        return True
    return bool(torch.isfinite(t).all())


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other float type is solved in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_int(value: Any, name: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if v < low or (high is not None and v > high):
        hi = "" if high is None else f" and <= {high}"
        raise ValueError(f"{name} must be >= {low}{hi}, got {v}")
    return v


def normalize_activation(activation: Optional[str]) -> str:
    if activation is None:
        return "identity"
    if not isinstance(activation, str):
        raise TypeError(f"activation must be None or a str, got {type(activation).__name__}")
    a = activation.strip().lower().replace("-", "_")
    if a == "leakyrelu":
        a = "leaky_relu"
    if a not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected None or one of {sorted(ACTIVATIONS)}"
        )
    return a


def check_backend(backend: str, W: torch.Tensor) -> str:
    """Resolve "auto" and refuse impossible requests; returns "native" or "torch"."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return "native" if W.device.type == "cpu" else "torch"
    if backend == "native" and W.device.type != "cpu":
        raise ValueError(
            f"backend='native' runs on CPU only, but W is on {W.device}; use backend='torch' "
            "or 'auto'"
        )
    return backend


@dataclass
class Prepared:
    """Validated inputs: the spec and the arrays as tensors (compute dtype, W's device)."""

    spec: AdmmSpec
    W: torch.Tensor  # (m, n)
    X: Optional[torch.Tensor]  # (n, N) (already subsampled) or None
    gram: Optional[torch.Tensor]  # (n, n) or None
    bias: Optional[torch.Tensor]  # (m,) or None
    backend: str
    n_samples: int  # columns of X before subsampling (0 without X)


def default_lambdas(
    W: torch.Tensor, structure: Structure, rank: int, gram: Optional[torch.Tensor] = None
) -> tuple[float, float]:
    """Default weights of the relaxed problem (units of F).

    lam_nuclear = sigma_{rank+1} of W in the layer's metric (of W G^{1/2} with data), so
    that SVT of W itself would keep about ``rank`` components; lam_sparse =
    lam_nuclear / sqrt(max(m, n)) * sqrt(group size) (the robust-PCA ratio, scaled for
    group norms).
    """
    m, n = W.shape
    A = W.detach().to(torch.float64)
    if gram is not None:
        d, Q = torch.linalg.eigh(gram.to(torch.float64))
        A = (A @ Q) * torch.sqrt(torch.clamp(d, min=0))
    sv = torch.linalg.svdvals(A)
    lam_n = float(sv[min(rank, sv.numel() - 1)])
    g = structure.group_size(m, n)
    lam_s = lam_n / math.sqrt(max(m, n)) * math.sqrt(g)
    return lam_n, lam_s


def prepare(
    W: Any,
    rank: Any,
    density: Any,
    structure: Any = "unstructured",
    *,
    X: Any = None,
    gram: Any = None,
    bias: Any = None,
    activation: Optional[str] = None,
    negative_slope: float = 0.01,
    block: int = 1,
    slices: int = 1,
    backend: str = "auto",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    subsample: int = 8192,
    relaxed: bool = False,
    lam_nuclear: Optional[float] = None,
    lam_sparse: Optional[float] = None,
    gram_shrinkage: float = 0.0,
) -> Prepared:
    """Validate every argument of decompose; see its docstring for their meaning.

    The checks run in a fixed order (W, sizes and structure, activation, iteration
    settings, backend, the budget of S, the data), so the first mistake is the one named.

    Raises:
        TypeError: non-array W/X/gram/bias, integer or bool dtypes, non-int rank etc.
        ValueError: wrong shapes, empty or non-finite arrays, rank/density out of range,
            unknown structure/activation/backend, N:M not dividing n, native on CUDA.
    """
    Wt = _weight(W)
    m, n = (int(s) for s in Wt.shape)
    rank_i, dens, st, sl = _sizes(rank, density, structure, block, slices, m, n)
    act = normalize_activation(activation)
    slope, mi, tol_f, seed_i, sub = _settings(negative_slope, max_iter, tol, seed, subsample)
    be = check_backend(backend, Wt)
    k = _sparse_budget(st, dens, rank_i, m, n)
    if relaxed and st.kind == "nm":
        raise ValueError("relaxed=True is not defined for N:M structures (no convex group norm)")
    if relaxed and sl > 1:
        raise ValueError("relaxed=True supports slices=1 only")
    shrink = check_shrinkage(gram_shrinkage)
    Xt, gt, bt = _data(X, gram, bias, m, n, compute_dtype(Wt), Wt.device)
    n_samples = int(Xt.shape[1]) if Xt is not None else 0
    mode, Xt, gt = _objective_data(act, Xt, gt, sub, seed_i)
    if gt is not None and shrink > 0:
        gt = shrink_gram(gt, shrink)
    if relaxed and (lam_nuclear is None or lam_sparse is None):
        G = gt if gt is not None else ((Xt @ Xt.mT) / Xt.shape[1] if Xt is not None else None)
        dn, ds = default_lambdas(Wt, st, rank_i, G)
        lam_nuclear = dn if lam_nuclear is None else lam_nuclear
        lam_sparse = ds if lam_sparse is None else lam_sparse
    for nm_, v in (("lam_nuclear", lam_nuclear), ("lam_sparse", lam_sparse)):
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{nm_} must be a float >= 0, got {v!r}")
    spec = AdmmSpec(
        m=m, n=n, rank=rank_i, slices=sl,
        p=min(rank_i + OVERSAMPLE, m, n // sl) if rank_i > 0 else 0,
        structure=st, k=int(k), mode=mode, activation=act, negative_slope=slope,
        relaxed=bool(relaxed), lam_nuclear=float(lam_nuclear or 0.0),
        lam_sparse=float(lam_sparse or 0.0), max_iter=mi, tol=tol_f, seed=seed_i, subsample=sub,
    )
    return Prepared(spec=spec, W=Wt, X=Xt, gram=gt, bias=bt, backend=be, n_samples=n_samples)


def _weight(W: Any) -> torch.Tensor:
    """W as a finite, non-empty 2-D float tensor whose squares fit its compute dtype."""
    Wt = as_tensor(W, "W")
    if Wt.dtype == torch.bool or not Wt.is_floating_point():
        raise TypeError(f"W must have a floating-point dtype, got {Wt.dtype}")
    if Wt.dim() != 2:
        raise ValueError(f"W must be a 2-D (out, in) matrix, got shape {tuple(Wt.shape)}")
    check_float_matrix(Wt, "W")
    check_magnitude(Wt, "W", compute_dtype(Wt))
    return Wt


def _sizes(rank: Any, density: Any, structure: Any, block: Any, slices: Any, m: int,
           n: int) -> tuple[int, float, Structure, int]:
    """(rank, density, parsed structure, slices), checked against the (m, n) weight."""
    rank_i = _check_int(rank, "rank", 0, min(m, n))
    if isinstance(density, bool) or not isinstance(density, (int, float, np.floating, np.integer)):
        raise TypeError(f"density must be a float in [0, 1), got {type(density).__name__}")
    dens = float(density)
    if not (0.0 <= dens < 1.0) or math.isnan(dens):
        raise ValueError(f"density must be in [0, 1), got {density}")
    blk = _check_int(block, "block", 1)
    st = parse_structure(structure, block=blk)
    st.check_shape(m, n)
    sl = _check_int(slices, "slices", 1, n)
    if n % sl != 0:
        raise ValueError(f"slices={sl} must divide the input dimension n={n}")
    if sl > 1 and rank_i > min(m, n // sl):
        raise ValueError(
            f"rank={rank_i} exceeds min(m, n/slices)={min(m, n // sl)} for slices={sl}"
        )
    return rank_i, dens, st, sl


def _settings(negative_slope: Any, max_iter: Any, tol: Any, seed: Any,
              subsample: Any) -> tuple[float, int, float, int, int]:
    """(negative_slope, max_iter, tol, seed, subsample), checked."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError("negative_slope must be a float")
    if not (0.0 <= float(negative_slope) < 1.0):
        raise ValueError(f"negative_slope must be in [0, 1), got {negative_slope}")
    mi = _check_int(max_iter, "max_iter", 1)
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not (tol > 0):
        raise ValueError(f"tol must be a positive float, got {tol!r}")
    seed_i = _check_int(seed, "seed", 0)
    sub = _check_int(subsample, "subsample", 1)
    return float(negative_slope), mi, float(tol), seed_i, sub


def _sparse_budget(st: Structure, dens: float, rank: int, m: int, n: int) -> int:
    """S's budget k in groups (0 for N:M without a sparse part); refuses a problem in
    which neither L nor S keeps anything."""
    k = st.budget(dens, m, n)
    if rank == 0 and k == 0:
        if dens > 0:
            raise ValueError(
                f"density={dens} rounds to 0 groups of structure {st.name!r} for a "
                f"{m}x{n} weight and rank is 0: nothing would be kept"
            )
        raise ValueError("rank and density are both 0: nothing would be kept")
    return k


def _data(X: Any, gram: Any, bias: Any, m: int, n: int, cdt: torch.dtype,
          dev: torch.device) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """X (n, N), gram (n, n) and bias (m,) as checked tensors of W's compute dtype and
    device (None where not given)."""

    def conv(a: Any, name: str, ndim: int) -> torch.Tensor:
        t = as_tensor(a, name)
        check_float_matrix(t, name, ndim)
        check_magnitude(t, name, cdt)
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but W is on {dev}")
        return t.to(cdt)

    Xt = gt = bt = None
    if X is not None and gram is not None:
        raise ValueError("give either X (calibration inputs) or gram (X X^T / N), not both")
    if X is not None:
        Xt = conv(X, "X", 2)
        if Xt.shape[0] != n:
            raise ValueError(
                f"X must be (n, N) = ({n}, N) with samples as columns, got shape {tuple(Xt.shape)}"
            )
    if gram is not None:
        gt = conv(gram, "gram", 2)
        if tuple(gt.shape) != (n, n):
            raise ValueError(f"gram must be (n, n) = ({n}, {n}), got shape {tuple(gt.shape)}")
        if not bool(torch.allclose(gt, gt.mT, rtol=1e-4, atol=1e-6 * float(gt.abs().max()))):
            raise ValueError("gram must be symmetric (X X^T / N)")
    if bias is not None:
        bt = conv(bias, "bias", 1)
        if tuple(bt.shape) != (m,):
            raise ValueError(f"bias must have shape (m,) = ({m},), got {tuple(bt.shape)}")
    return Xt, gt, bt


def check_shrinkage(a: Any) -> float:
    """``gram_shrinkage`` as a float in [0, 1]."""
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= float(a) <= 1.0:
        raise ValueError(f"gram_shrinkage must be a float in [0, 1], got {a!r}")
    return float(a)


def shrink_gram(G: torch.Tensor, a: float) -> torch.Tensor:
    """(1 - a) G + a diag(G): the Gram matrix shrunk towards its diagonal (same input
    energies, cross-correlations scaled by 1 - a), (n, n)."""
    out = G * (1.0 - a)
    out.diagonal().copy_(torch.diagonal(G))
    return out


def _objective_data(act: str, Xt: Optional[torch.Tensor], gt: Optional[torch.Tensor], sub: int,
                    seed: int) -> tuple[str, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(mode, X, gram) the solver works with: identity -> "weight" (no data) or "gram"
    (X becomes G = X X^T / N); a nonlinear activation -> "nonlinear" with at most
    ``sub`` seeded columns of X.  The gram is symmetrised."""
    if act == "identity":
        mode = "weight" if (Xt is None and gt is None) else "gram"
        if Xt is not None:
            gt = (Xt @ Xt.mT) / Xt.shape[1]
            Xt = None
    else:
        if Xt is None:
            raise ValueError(
                f"activation={act!r} needs calibration inputs X (n, N); a gram matrix is not "
                "enough for a nonlinear activation"
            )
        mode = "nonlinear"
        N = Xt.shape[1]
        if N > sub:
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(N, generator=g)[:sub].sort().values.to(Xt.device)
            Xt = Xt.index_select(1, idx)
        Xt = Xt.contiguous()
    if gt is not None:
        gt = (0.5 * (gt + gt.mT)).contiguous()
    return mode, Xt, gt


def initial_subspace(spec: AdmmSpec, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal starting right subspaces, (slices, n / slices, p), from ``spec.seed``.

    Drawn on the CPU (float32 normals, ~6x faster to draw than float64 ones), orthonormalised
    in float64 and then cast, so that both backends and both float types start from the
    same subspace.  The QR runs on one torch thread (the thread
    count is restored afterwards): for these tall-skinny (n, p) panels a multi-threaded
    LAPACK spends most of its time synchronising (measured 0.02-0.44 s against 0.012 s
    for 4608x59 on two shared cores), and one thread makes the start independent of
    the caller's thread count (bitwise).
    """
    nsl = spec.n // spec.slices
    if spec.p == 0:
        return torch.zeros(spec.slices, nsl, 0, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(spec.seed)
    G = torch.randn(spec.slices, nsl, spec.p, generator=g, dtype=torch.float32).to(torch.float64)
    old = torch.get_num_threads()
    try:
        if old != 1:
            torch.set_num_threads(1)
        Q = torch.linalg.qr(G, mode="reduced").Q
    finally:
        if old != 1:
            torch.set_num_threads(old)
    return Q.to(dtype=dtype, device=device).contiguous()
