"""Additive quantization (AQ) of parameter vectors.

A parameter tensor is flattened, divided by its RMS value (per-tensor scale normalisation:
``scale = sqrt(mean(w**2))``, 1 for an all-zero tensor, so tensors of very different
magnitudes can share one set of codebooks), zero-padded at the tail to a multiple of ``d`` and
cut into sub-vectors x (d,).  Each sub-vector is approximated by a sum of M codewords, one
from each of M codebooks of K entries::

    x ~ C[0, c_0] + C[1, c_1] + ... + C[M-1, c_{M-1}],     C (M, K, d), codes (N, M) uint16

Codebooks are learnt by residual k-means initialisation followed by alternating beam-search
encoding and a joint least-squares codebook update (both in the C++ core,
``lowrank_sparse._core.aq_*``).  See Sun et al., "Toward Compact Parameter Representations
for Architecture-Agnostic Neural Network Compression" (arXiv 2111.10320) and Babenko &
Lempitsky, "Additive Quantization for Extreme Vector Compression" (CVPR 2014).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from .._blas import blas_threads

from .. import _core

Array = Union[np.ndarray, torch.Tensor]

__all__ = [
    "AQConfig",
    "Split",
    "split_tensor",
    "merge_tensor",
    "encode",
    "encode_greedy",
    "decode",
    "ls_update",
    "learn_codebooks",
    "quantization_error",
]

#: Largest M*K solved jointly by the C++ least-squares update; above it a block-coordinate
#: update (one codebook at a time, closed form) is used instead.
MAX_JOINT_LS = 8192


@dataclass(frozen=True)
class AQConfig:
    """Additive-quantization settings.

    Attributes:
        M: number of codebooks (codewords summed per sub-vector), 1 <= M <= 64.
        K: codewords per codebook, 2 <= K <= 65536 (codes take ceil(log2 K) bits).
        d: sub-vector length (values per sub-vector), >= 1.
        beam: beam width of the encoder (1 = no beam; the encoder is never worse than greedy).
        iters: alternations of (encode, least-squares codebook update) after initialisation.
        seed: seed of the initialisation and of the training subsample.
        shared: one set of codebooks for all selected tensors of a model (True) or one per
            tensor (False).  Used by :func:`lowrank_sparse.quant.apply.quantize_model`.
        refine: coordinate-wise refinement passes after the beam search.
        kmeans_iters: Lloyd iterations of the residual k-means initialisation (per codebook).
        ridge: weight of the proximal term ridge*||C - C_prev||^2 in the least-squares update
            (keeps unused codewords in place and makes the normal matrix positive definite).
        max_train_vectors: codebooks are learnt on a random subsample of at most this many
            sub-vectors (all vectors are encoded at the end); None = use all.
        threads: worker threads of the C++ encoder (0 = the library-wide count set by
            ``lowrank_sparse._core.set_num_threads``).
    """

    M: int = 2
    K: int = 256
    d: int = 8
    beam: int = 8
    iters: int = 8
    seed: int = 0
    shared: bool = True
    refine: int = 1
    kmeans_iters: int = 10
    ridge: float = 1e-4
    max_train_vectors: int | None = 131072
    threads: int = 1

    def __post_init__(self) -> None:
        def _int(name: str, lo: int, hi: int | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"AQConfig.{name} must be an int, got {type(v).__name__}")
            if v < lo or (hi is not None and v > hi):
                rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"AQConfig.{name} must be {rng}, got {v}")

        _int("M", 1, 64)
        _int("K", 2, 65536)
        _int("d", 1)
        _int("beam", 1)
        _int("iters", 0)
        _int("refine", 0)
        _int("kmeans_iters", 0)
        _int("threads", 0)
        _int("seed", 0)
        if not isinstance(self.shared, bool):
            raise TypeError("AQConfig.shared must be a bool")
        if not (isinstance(self.ridge, (int, float)) and math.isfinite(self.ridge) and self.ridge > 0):
            raise ValueError(f"AQConfig.ridge must be a positive finite number, got {self.ridge}")
        if self.max_train_vectors is not None:
            _int("max_train_vectors", 1)

    @property
    def bits_per_code(self) -> int:
        """Bits of one code index: ceil(log2 K)."""
        return max(1, (self.K - 1).bit_length())

    def bits_per_value(self) -> float:
        """Code bits per quantized parameter value (codebooks and scales not included)."""
        return self.M * self.bits_per_code / self.d


@dataclass(frozen=True)
class Split:
    """How a tensor was cut into sub-vectors.

    Attributes:
        shape: original tensor shape.
        numel: number of values of the tensor.
        pad: zeros appended at the tail (0 <= pad < d).
        d: sub-vector length.
        scale: the RMS the values were divided by (rounded to float32, so it is stored exactly).
    """

    shape: tuple[int, ...]
    numel: int
    pad: int
    d: int
    scale: float

    @property
    def n_vectors(self) -> int:
        return (self.numel + self.pad) // self.d


def split_tensor(t: Array, d: int) -> tuple[np.ndarray, Split]:
    """Normalise a tensor by its RMS and cut it into sub-vectors.

    Args:
        t: any-shape float tensor/array (not modified).
        d: sub-vector length >= 1.

    Returns:
        (vectors (ceil(numel/d), d) float32, Split) with the padding and scale recorded.
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    a = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("tensor has non-finite values")
    flat = a.reshape(-1)
    numel = flat.size
    if numel == 0:
        raise ValueError("cannot quantize an empty tensor")
    rms = float(np.sqrt(np.mean(flat * flat)))
    scale = float(np.float32(rms)) if rms > 0 else 1.0  # float32-representable: stored exactly
    pad = (-numel) % d
    v = np.zeros(numel + pad, dtype=np.float32)
    v[:numel] = flat / scale
    return v.reshape(-1, d), Split(tuple(int(s) for s in a.shape), numel, pad, int(d), scale)


def merge_tensor(vectors: Array, split: Split) -> torch.Tensor:
    """Inverse of :func:`split_tensor`: (n, d) sub-vectors -> tensor of ``split.shape`` (scaled back)."""
    v = vectors if isinstance(vectors, torch.Tensor) else torch.from_numpy(np.asarray(vectors))
    if v.shape != (split.n_vectors, split.d):
        raise ValueError(f"vectors have shape {tuple(v.shape)}, expected {(split.n_vectors, split.d)}")
    return (v.reshape(-1)[: split.numel] * split.scale).reshape(split.shape)


def _np(a: Array, name: str, dtype: np.dtype | None = None) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    return np.ascontiguousarray(a)


def _float_pair(vectors: Array, codebooks: Array) -> tuple[np.ndarray, np.ndarray]:
    X = _np(vectors, "vectors")
    C = _np(codebooks, "codebooks")
    dt = np.float64 if (X.dtype == np.float64 and C.dtype == np.float64) else np.float32
    X, C = X.astype(dt, copy=False), C.astype(dt, copy=False)
    if X.ndim != 2:
        raise ValueError(f"vectors must be (N, d), got shape {X.shape}")
    if C.ndim != 3:
        raise ValueError(f"codebooks must be (M, K, d), got shape {C.shape}")
    return np.ascontiguousarray(X), np.ascontiguousarray(C)


def _codes(codes: Array) -> np.ndarray:
    k = _np(codes, "codes")
    if k.ndim != 2:
        raise ValueError(f"codes must be (N, M), got shape {k.shape}")
    if k.dtype != np.uint16:
        if k.size and (k.min() < 0 or k.max() > 65535):
            raise ValueError("codes must lie in [0, 65535]")
        k = k.astype(np.uint16)
    return np.ascontiguousarray(k)


def encode(
    vectors: Array, codebooks: Array, beam: int = 8, *, refine: int = 1, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Beam-search AQ encoding (C++ core, GIL released, BLAS pinned to one thread per worker).

    Args:
        vectors: (N, d) float.
        codebooks: (M, K, d) float.
        beam: beam width >= 1.
        refine: coordinate-refinement passes after the beam.
        threads: worker threads (0 = library-wide count).

    Returns:
        (codes (N, M) uint16, err (N,) squared reconstruction error per vector).
    """
    X, C = _float_pair(vectors, codebooks)
    with blas_threads(1):
        return _core.aq_encode_beam(X, C, int(beam), int(refine), int(threads))


def encode_greedy(vectors: Array, codebooks: Array, *, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Greedy sequential-residual encoding; same shapes as :func:`encode`."""
    X, C = _float_pair(vectors, codebooks)
    with blas_threads(1):
        return _core.aq_encode_greedy(X, C, int(threads))


def decode(codes: Array, codebooks: Array) -> np.ndarray:
    """Reconstruct sub-vectors: out (N, d) = sum_m codebooks[m, codes[:, m]].

    codes (N, M) integer in [0, K); codebooks (M, K, d) float32/float64.
    """
    C = _np(codebooks, "codebooks")
    if C.dtype not in (np.float32, np.float64):
        C = C.astype(np.float32)
    if C.ndim != 3:
        raise ValueError(f"codebooks must be (M, K, d), got shape {C.shape}")
    return _core.aq_decode(_codes(codes), np.ascontiguousarray(C))


def quantization_error(vectors: Array, codes: Array, codebooks: Array) -> float:
    """Mean over vectors of the squared error ||x - decode(code)||^2."""
    X = _np(vectors, "vectors", np.float64)
    R = decode(codes, codebooks).astype(np.float64)
    return float(((X - R) ** 2).sum(axis=1).mean())


def ls_update(
    vectors: Array, codes: Array, codebooks: Array, ridge: float = 1e-4, *, threads: int = 1
) -> np.ndarray:
    """Least-squares codebook update with codes fixed.

    Minimises ||X - B C||^2 + ridge * ||C - codebooks||^2 over C (B: one-hot codes).  Solved
    jointly (normal equations, Cholesky in the C++ core, BLAS limited to ``threads``) when
    1 < M and M*K <= 8192, otherwise by block-coordinate sweeps (each codebook in closed form
    given the others; exact for M = 1, where the normal matrix is diagonal).

    Args:
        vectors: (N, d); codes: (N, M); codebooks: (M, K, d) current codebooks.

    Returns:
        new codebooks (M, K, d), dtype of ``codebooks``' float pair with ``vectors``.
    """
    X, C = _float_pair(vectors, codebooks)
    k = _codes(codes)
    M, K, d = C.shape
    if 1 < M and M * K <= MAX_JOINT_LS:
        with blas_threads(max(1, int(threads) or _core.get_num_threads())):
            return _core.aq_ls_update(X, k, C, float(ridge))
    # Block-coordinate: for codebook m, C[m, j] = (sum of residuals coded j + ridge C[m, j]) / (count + ridge).
    if not (math.isfinite(ridge) and ridge > 0):
        raise ValueError("ridge must be a positive finite number")
    if k.shape != (X.shape[0], M) or (k.size and int(k.max()) >= K):
        raise ValueError("codes do not match vectors / codebooks")
    C = C.astype(np.float64)
    X64 = X.astype(np.float64)
    recon = C[np.arange(M)[None, :], k].sum(axis=1)
    for _ in range(1 if M == 1 else 3):
        for m in range(M):
            cm = k[:, m].astype(np.int64)
            recon -= C[m, cm]
            resid = X64 - recon
            sums = np.stack([np.bincount(cm, weights=resid[:, j], minlength=K) for j in range(d)], axis=1)
            cnt = np.bincount(cm, minlength=K).astype(np.float64)
            C[m] = (sums + ridge * C[m]) / (cnt + ridge)[:, None]
            recon += C[m, cm]
    return C.astype(X.dtype)


def _kmeans_init(X: np.ndarray, cfg: AQConfig, rng: np.random.Generator) -> np.ndarray:
    """Residual k-means: codebook m = k-means centres of the residual left by codebooks < m."""
    N, d = X.shape
    R = X.astype(np.float32).copy()
    C = np.zeros((cfg.M, cfg.K, d), dtype=np.float32)
    for m in range(cfg.M):
        if N >= cfg.K:
            idx = rng.choice(N, size=cfg.K, replace=False)
            cent = R[idx].copy()
        else:  # fewer vectors than codewords: repeat them with a little jitter
            idx = rng.choice(N, size=cfg.K, replace=True)
            spread = float(R.std()) if R.size else 1.0
            cent = R[idx] + (1e-3 * max(spread, 1e-12)) * rng.standard_normal((cfg.K, d)).astype(np.float32)
        cent = cent[None]
        for _ in range(cfg.kmeans_iters):
            a, _ = encode(R, cent, beam=1, refine=0, threads=cfg.threads)
            cent = ls_update(R, a, cent, cfg.ridge, threads=cfg.threads)
        a, _ = encode(R, cent, beam=1, refine=0, threads=cfg.threads)
        C[m] = cent[0]
        R -= cent[0][a[:, 0].astype(np.int64)]
    return C


def learn_codebooks(
    vectors: Array, cfg: AQConfig, *, history: list[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Learn AQ codebooks and codes for a set of sub-vectors.

    Residual k-means initialisation, then ``cfg.iters`` alternations of beam-search encoding
    and the joint least-squares codebook update, on a random subsample of at most
    ``cfg.max_train_vectors`` vectors; finally every vector is encoded and the codebooks get
    one last least-squares update on all vectors (which cannot increase the error).

    Args:
        vectors: (N, d) float, d == cfg.d.
        cfg: the configuration.
        history: if given, the mean squared error per vector after each step is appended.

    Returns:
        (codebooks (M, K, d) float32, codes (N, M) uint16).
    """
    X = _np(vectors, "vectors", np.float32)
    if X.ndim != 2 or X.shape[1] != cfg.d:
        raise ValueError(f"vectors must be (N, {cfg.d}), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError("no vectors to quantize")
    if not np.isfinite(X).all():
        raise ValueError("vectors have non-finite values")
    rng = np.random.default_rng(cfg.seed)
    N = X.shape[0]
    Xt = X
    if cfg.max_train_vectors is not None and N > cfg.max_train_vectors:
        Xt = X[np.sort(rng.choice(N, size=cfg.max_train_vectors, replace=False))]
    C = _kmeans_init(Xt, cfg, rng)
    for _ in range(cfg.iters):
        codes, err = encode(Xt, C, cfg.beam, refine=cfg.refine, threads=cfg.threads)
        if history is not None:
            history.append(float(err.astype(np.float64).mean()))
        C = ls_update(Xt, codes, C, cfg.ridge, threads=cfg.threads)
    codes, err = encode(X, C, cfg.beam, refine=cfg.refine, threads=cfg.threads)
    C = ls_update(X, codes, C, cfg.ridge, threads=cfg.threads).astype(np.float32)
    if history is not None:
        history.append(quantization_error(X, codes, C))
    return C, codes
