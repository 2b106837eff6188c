"""Layer shapes of the ImageNet networks the reproductions compress, and the
rank/density levels the benchmark decomposes them at.

A conv weight (out, in, kh, kw) is handled as the matrix (out, in*kh*kw); ``block``
is kh*kw (the group size for structure "channel").  Shapes follow the standard
ImageNet definitions (VGG-16 configuration D, AlexNet as in torchvision's
single-tower variant, GoogLeNet/Inception-v1 as in torchvision, whose "5x5"
branch uses a 3x3 kernel).

Weights are synthetic (:func:`synthetic_weight`): the ImageNet checkpoints of these
three networks are not available offline.  Only the shape, the spectrum and the
entry distribution matter for solver timing, and the generator imitates trained
weights in both (power-law singular values, a few large outlier entries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

#: Cap on the rank used for the benchmark (10% of min(m, n) otherwise).
RANK_CAP = 64
#: Fraction of W's entries S may keep, as in the reproductions' unstructured runs.
DENSITY = 0.05


def default_rank(m: int, n: int) -> int:
    """rank = 10% of min(m, n), at least 4 and at most :data:`RANK_CAP` (= 64)."""
    return int(max(4, min(RANK_CAP, round(0.1 * min(m, n)))))


@dataclass(frozen=True)
class Case:
    """One decomposition to benchmark.

    Attributes:
        name: "<net>.<layer>", e.g. "vgg16.conv4_2".
        m, n: weight matrix shape (out, in*kh*kw).
        block: kh*kw (1 for linear layers).
        rank: rank of L.
        density: fraction of entries S may keep.
        structure: "unstructured" | "row" | "column" | "channel" | "N:M".
        max_iter: iteration cap for this case (large layers are capped so the full
            suite stays within ~10 minutes; per-iteration time is what they measure).
        target: True for the shapes the speed targets are stated on.
    """

    name: str
    m: int
    n: int
    block: int = 1
    rank: int = 0
    density: float = DENSITY
    structure: str = "unstructured"
    max_iter: int = 100
    target: bool = False

    @property
    def shape(self) -> str:
        return f"{self.m}x{self.n}"

    @property
    def label(self) -> str:
        s = "" if self.structure == "unstructured" else f" [{self.structure}]"
        return f"{self.name} {self.shape}{s}"

    @property
    def weight_bytes(self) -> int:
        """Size of the float32 weight (bytes)."""
        return 4 * self.m * self.n


def _case(name: str, m: int, n: int, block: int = 1, **kw) -> Case:
    return Case(name=name, m=m, n=n, block=block, rank=kw.pop("rank", default_rank(m, n)), **kw)


#: The full suite: distinct real layer shapes of VGG-16, AlexNet and GoogLeNet.
FULL: list[Case] = [
    # VGG-16 (ImageNet): conv1_2, conv2_2, conv3_2, conv4_2 (= conv4_3, conv5_x), fc6, fc7, fc8
    _case("vgg16.conv1_2", 64, 576, 9),
    _case("vgg16.conv2_2", 128, 1152, 9),
    _case("vgg16.conv3_2", 256, 2304, 9),
    _case("vgg16.conv4_2", 512, 4608, 9, target=True),
    _case("vgg16.fc6", 4096, 25088, 1, max_iter=8),
    _case("vgg16.fc7", 4096, 4096, 1, max_iter=40, target=True),
    _case("vgg16.fc8", 1000, 4096, 1),
    # AlexNet (ImageNet): conv2 5x5, conv3, conv4, fc6
    _case("alexnet.conv2", 192, 1600, 25),
    _case("alexnet.conv3", 384, 1728, 9),
    _case("alexnet.conv4", 256, 3456, 9),
    _case("alexnet.fc6", 4096, 9216, 1, max_iter=15),
    # GoogLeNet (ImageNet): 3x3 branches of inception 3a, 3b, 4a, 4e; classifier
    _case("googlenet.3a.b2", 128, 864, 9),
    _case("googlenet.3b.b2", 192, 1152, 9),
    _case("googlenet.4a.b2", 208, 864, 9),
    _case("googlenet.4e.b2", 320, 1440, 9),
    _case("googlenet.fc", 1000, 1024, 1),
]

#: Structured runs: channel pruning of a 3x3 conv, output-row pruning of an fc layer.
STRUCTURED: list[Case] = [
    _case("vgg16.conv4_2", 512, 4608, 9, structure="channel"),
    _case("vgg16.fc7", 4096, 4096, 1, structure="row", max_iter=40),
]

#: Tiny shapes for --quick / the CI smoke test (< 30 s in all).
QUICK: list[Case] = [
    _case("tiny.conv", 32, 144, 9, rank=4, max_iter=40),
    _case("tiny.conv", 32, 144, 9, rank=4, structure="channel", max_iter=40),
]


def select(cases: list[Case], names: list[str] | None) -> list[Case]:
    """Keep the cases whose name or "mxn" shape is in ``names`` (all when None)."""
    if not names:
        return list(cases)
    wanted = set(names)
    out = [c for c in cases if c.name in wanted or c.shape in wanted]
    unknown = wanted - {c.name for c in out} - {c.shape for c in out}
    if unknown:
        raise ValueError(f"unknown shapes {sorted(unknown)}; known: {sorted({c.name for c in cases})}")
    return out


def with_iters(case: Case, max_iter: int) -> Case:
    """The same case with another iteration cap."""
    return replace(case, max_iter=max_iter)


def synthetic_weight(m: int, n: int, seed: int = 0) -> np.ndarray:
    """A float32 (m, n) matrix resembling a trained layer weight.

    W = G1 diag(s) G2 / sqrt(n) + outliers, with G1 (m, k), G2 (k, n) standard normal,
    k = min(m, n, 256) and s_i = i^(-1/2) (slowly decaying spectrum, as in trained
    conv/fc layers), plus 0.5% of the entries replaced by large values (heavy tail)
    and a small dense noise floor.  Deterministic in ``seed``.  Scaled so that the
    entries have RMS about 1/sqrt(n) (He-like initialisation scale).
    """
    rng = np.random.default_rng(seed)
    k = min(m, n, 256)
    s = (np.arange(1, k + 1, dtype=np.float32)) ** -0.5
    g1 = rng.standard_normal((m, k), dtype=np.float32) * s
    g2 = rng.standard_normal((k, n), dtype=np.float32)
    w = g1 @ g2
    w *= 1.0 / math.sqrt(float(np.mean(w * w)))  # RMS 1
    w += 0.3 * rng.standard_normal((m, n), dtype=np.float32)
    nout = max(1, int(0.005 * m * n))
    idx = rng.integers(0, m * n, size=nout)  # duplicates are harmless
    w.reshape(-1)[idx] += rng.standard_normal(nout, dtype=np.float32) * 6.0
    w *= 1.0 / math.sqrt(n)
    return np.ascontiguousarray(w, dtype=np.float32)
