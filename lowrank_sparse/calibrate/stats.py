"""Per-layer calibration statistics and their streaming collector.

For every collected layer: ``gram``, the (n, n) second-moment matrix ``G = X X^T / N``
of its inputs, accumulated in float64 over all batches (X is (n, N) with one column
per sample: a Linear layer's input rows, all leading dims flattened, or a conv's input
patches, n = in*kh*kw, one column per output pixel per image); ``mean``, ``X 1 / N``;
``count``, N; and for layers followed by a nonlinear activation ``sample``: a seeded,
uniform subsample without replacement of at most ``sample_size`` input columns, (n, s).
The subsample is kept as a bottom-k sample: each column gets a random key from a
per-layer generator seeded from ``seed`` and the layer's index and the ``sample_size``
smallest keys are kept, so memory is bounded by ``sample_size + batch columns`` and
the result depends only on the seed and the data order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from .activation import ActivationInfo
from .capture import layer_input_matrix
from .fold import FoldedProblem, fold_affine, solver_scale
from .layers import weight_matrix

__all__ = ["Calibration", "GramCollector", "LayerStats", "folded_problem", "stats_error"]


@dataclass
class LayerStats:
    """Calibration statistics of one layer.

    Attributes:
        name: qualified module name in the model.
        kind: "linear" or "conv".
        weight_shape: (m, n) of the weight as a matrix: (out, in) or (out, in*kh*kw).
        block: kh*kw for convs, 1 for linear layers.
        kernel_size, stride, padding, dilation: conv geometry (None for linear);
            padding is explicit (left, right, top, bottom).
        in_hw, out_hw: input / output spatial size (H, W) of a conv from the first
            batch (None for linear).
        count: N, input columns seen (samples; for convs samples * output pixels).
        gram: (n, n) float64, X X^T / N.
        mean: (n,) float64, the mean input column X 1 / N.
        sample: (n, s) subsample of input columns (dtype of the input), or None.
        activation: the detected activation.
        bn_scale, bn_shift: (m,) float64 BatchNorm affine folded into the objective
            (see :mod:`lowrank_sparse.calibrate.fold`), or None.
        calls: how many times the layer ran per forward pass (first batch).
        target_weight: (m, n) the error-corrected weight the layer is fitted to
            (:mod:`~lowrank_sparse.calibrate.correct`), or None: the layer's own weight.
    """

    name: str
    kind: str
    weight_shape: tuple[int, int]
    block: int = 1
    kernel_size: Optional[tuple[int, int]] = None
    stride: Optional[tuple[int, int]] = None
    padding: Optional[tuple[int, int, int, int]] = None
    dilation: Optional[tuple[int, int]] = None
    in_hw: Optional[tuple[int, int]] = None
    out_hw: Optional[tuple[int, int]] = None
    count: int = 0
    gram: Optional[torch.Tensor] = None
    mean: Optional[torch.Tensor] = None
    sample: Optional[torch.Tensor] = None
    activation: ActivationInfo = field(default_factory=ActivationInfo)
    bn_scale: Optional[torch.Tensor] = None
    bn_shift: Optional[torch.Tensor] = None
    calls: int = 0
    target_weight: Optional[torch.Tensor] = None

    def reference_weight(self, module: nn.Module) -> torch.Tensor:
        """The (m, n) weight the layer is fitted to: ``target_weight`` if set, else the
        module's own weight as a matrix."""
        if self.target_weight is not None:
            return self.target_weight
        return weight_matrix(module).detach().contiguous().reshape(self.weight_shape)

    def folded(
        self, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The (m, n) weight and (m,) bias of the map the activation sees (objective view
        of :mod:`~lowrank_sparse.calibrate.fold`): ``weight`` as a matrix and ``bias``
        without a folded BatchNorm, ``diag(a) W`` and ``a * b + c`` with one; in the
        weight's dtype."""
        return fold_affine(weight, bias, self.bn_scale, self.bn_shift)


@dataclass
class Calibration:
    """What :func:`~lowrank_sparse.calibrate.calibrate` collected.

    Attributes:
        layers: per-layer statistics, in the model's module order.
        skipped: name -> reason for modules that were not collected (grouped convs,
            layers never called, ...).
        detection: "fx" or "hooks": how activations were detected.
        detection_note: why fx was not used, if it was not.
        batches: calibration batches run.
        samples: calibration examples (rows of the input batches) seen.
    """

    layers: dict[str, LayerStats]
    skipped: dict[str, str]
    detection: str
    detection_note: str = ""
    batches: int = 0
    samples: int = 0


def _layer_seed(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * index) % (2**63 - 1)


class GramCollector:
    """Streaming float64 Gram matrix, mean and bottom-k column sample of one layer.

    ``add`` takes the layer's input batch; ``finish`` writes ``gram``, ``mean`` and
    ``sample`` (transposed to (n, s)) into the :class:`LayerStats`.
    """

    def __init__(self, stats: LayerStats, module: nn.Module, sample_size: int, seed: int,
                 index: int, chunk_rows: int) -> None:
        self.stats = stats
        self.module = module
        self.sample_size = sample_size
        self.keep_sample = False
        self.gen = torch.Generator().manual_seed(_layer_seed(seed, index))
        self.keys: Optional[torch.Tensor] = None
        self.chunk_rows = chunk_rows
        self.gsum: Optional[torch.Tensor] = None
        self.msum: Optional[torch.Tensor] = None

    def _pieces(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Conv inputs a few images at a time (bounds the unfolded-patch memory)."""
        if not isinstance(self.module, nn.Conv2d) or x.dim() != 4:
            return [x]
        out_hw = self.stats.out_hw
        opix = max(1, (out_hw[0] * out_hw[1]) if out_hw else 1)
        step = max(1, self.chunk_rows // opix)
        return [x[i:i + step] for i in range(0, x.shape[0], step)]

    def add(self, x: torch.Tensor) -> None:
        for xc in self._pieces(x):
            rows = layer_input_matrix(self.module, xc)
            for start in range(0, rows.shape[0], self.chunk_rows):
                self._add_rows(rows[start:start + self.chunk_rows])

    def _add_rows(self, rows: torch.Tensor) -> None:
        st = self.stats
        if not torch.isfinite(rows).all():
            bad = "NaN" if torch.isnan(rows).any() else "Inf"
            raise ValueError(f"layer '{st.name}': its calibration input contains {bad} values")
        r64 = rows.detach().to(torch.float64)
        g = r64.T @ r64
        self.gsum = g if self.gsum is None else self.gsum.add_(g)
        msum = r64.sum(dim=0)
        self.msum = msum if self.msum is None else self.msum.add_(msum)
        st.count += rows.shape[0]
        if self.keep_sample and self.sample_size > 0:
            self._add_sample(rows)

    def _add_sample(self, rows: torch.Tensor) -> None:
        st = self.stats
        keys = torch.rand(rows.shape[0], generator=self.gen, dtype=torch.float64)
        cols = rows.detach().to("cpu")
        if self.keys is None:
            allk, allc = keys, cols
        else:
            allk = torch.cat([self.keys, keys])
            allc = torch.cat([st.sample, cols])
        if allk.numel() > self.sample_size:
            idx = torch.topk(allk, self.sample_size, largest=False, sorted=False).indices
            idx, _ = torch.sort(idx)
            allk, allc = allk[idx], allc[idx]
        self.keys, st.sample = allk, allc.clone() if allc is cols else allc

    def finish(self) -> None:
        st = self.stats
        if self.gsum is not None and st.count > 0:  # in place: no second (n, n) copy per layer
            st.gram = self.gsum.div_(st.count).cpu()
            st.mean = self.msum.div_(st.count).cpu()
        if st.sample is not None:
            st.sample = st.sample.T.contiguous()  # (n, s): columns are samples
        self.keys = self.gsum = self.msum = None


def stats_error(
    stats: LayerStats,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    new_weight: torch.Tensor,
    new_bias: Optional[torch.Tensor] = None,
) -> float:
    """Relative pre-activation output error of a layer from its Gram matrix and mean.

    ``sqrt(E||D x + d||^2 / E||W x + b||^2)`` over all N calibration columns, with
    ``D = W - W'`` and ``d = b - b'`` after BatchNorm folding, expanded as
    ``tr(D G D^T) + 2 d^T D mu + ||d||^2`` (G = X X^T / N, mu = mean column), in
    float64.  This is the exact error of layers fitted as linear ("identity").
    ``new_bias`` defaults to ``bias``.
    """
    f64 = torch.float64
    Wf, bf = stats.folded(weight.to(f64), None if bias is None else bias.to(f64))
    nb = bias if new_bias is None else new_bias
    Nf, nbf = stats.folded(new_weight.to(f64), None if nb is None else nb.to(f64))
    G = stats.gram.to(f64)
    mu = stats.mean.to(f64)
    zero = torch.zeros(Wf.shape[0], dtype=f64)
    bf = zero if bf is None else bf.reshape(-1)
    nbf = zero if nbf is None else nbf.reshape(-1)

    def energy(A: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,jk,ik->", A, G, A) + 2 * (c @ (A @ mu)) + c @ c

    num = energy(Wf - Nf, bf - nbf).clamp_min(0)
    den = energy(Wf, bf).clamp_min(1e-300)
    return float(torch.sqrt(num / den))


def folded_problem(stats: LayerStats, module: nn.Module) -> FoldedProblem:
    """The solver view of ``module`` (see :mod:`lowrank_sparse.calibrate.fold`): its
    weight as an (m, n) matrix with the BatchNorm scale folded in, zeros of the scale
    replaced by 1, for the allocator and the solves."""
    scale = solver_scale(stats.bn_scale)
    W, b = fold_affine(stats.reference_weight(module), module.bias, scale,
                       stats.bn_shift)
    return FoldedProblem(W, b, scale)
