"""Shared helpers of the io tests: a small compressed network, raw header access, and
deterministic models covering every sparse format / index code and an AQ part, whose
saved bytes are pinned in tests/data/io_reference.json."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from torch import nn

from lowrank_sparse.models import SmallCNN
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from lowrank_sparse.quant import load_aq_state
from sparse_fixtures import random_decomposition  # tests/ is on sys.path (pytest rootdir conftest)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))  # fmt: skip
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def compressed(g: torch.Generator, kind_conv: str = "channel", kind_fc: str = "unstructured") -> Net:
    torch.manual_seed(0)
    net = Net()
    net.features[1].running_mean.normal_()
    c = net.features[3]
    net.features[3] = LowRankSparseConv2d.from_conv(c, random_decomposition(16, 144, 4, kind_conv, g, block=9))
    net.fc = LowRankSparseLinear.from_decomposition(random_decomposition(10, 64, 3, kind_fc, g), bias=net.fc.bias)
    return net.eval()


def raw_header(path: Path) -> dict:
    """The JSON header of a safetensors file, read byte by byte from its documented layout."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n])


def write_raw(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def file_fingerprint(path: Path) -> dict:
    """What must not change when a model is saved again: the header length, the header
    (as canonical JSON: safetensors writes its metadata map in no fixed order) and the
    data section's bytes."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True).encode()
    return {"size": len(blob), "header_bytes": n, "header_sha256": hashlib.sha256(header).hexdigest(),
            "data_sha256": hashlib.sha256(blob[8 + n :]).hexdigest()}  # fmt: skip


# ----------------------------------------------------------------------------- reference models
def _linear(kind: str, density: float | None = None, slices: int = 1, m: int = 24, n: int = 40) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    bias = torch.randn(m, generator=g)
    dec = random_decomposition(m, n, 3, kind, g, slices=slices, density=density)
    return LowRankSparseLinear.from_decomposition(dec, bias=bias)


def _csr_bits_linear(m: int = 32, n: int = 256) -> nn.Module:
    """One entry per row at a late column: plain bits beat Rice gaps."""
    g = torch.Generator().manual_seed(3)
    d = random_decomposition(m, n, 2, "unstructured", g, density=0.0)
    S = torch.zeros(m, n)
    S[torch.arange(m), torch.randint(n // 2, n, (m,), generator=g)] = torch.randn(m, generator=g)
    return LowRankSparseLinear.from_decomposition(type(d)(d.U, d.V, S, d.structure, d.info))


def _conv(kind: str, density: float | None = None, slices: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    c = nn.Conv2d(8, 16, 3, padding=1)
    block = 9 if kind == "channel" else 1
    return LowRankSparseConv2d.from_conv(c, random_decomposition(16, 72, 2, kind, g, block=block, slices=slices,
                                                                 density=density))


def _cnn(conv_kind: str, fc_kind: str, slices: int) -> nn.Module:
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    kw = {"in_channels": 1, "num_classes": 10, "width": 0.5}
    net = SmallCNN(**kw)
    c2, c3 = net.features[3], net.features[7]
    net.features[3] = LowRankSparseConv2d.from_conv(c2, random_decomposition(16, 72, 3, conv_kind, g, block=9,
                                                                             slices=slices))
    net.features[7] = LowRankSparseConv2d.from_conv(c3, random_decomposition(32, 144, 4, "2:4", g, block=9))
    fc = net.classifier[0]
    net.classifier[0] = LowRankSparseLinear.from_decomposition(
        random_decomposition(32, 128, 5, fc_kind, g, slices=slices, density=0.06), bias=fc.bias)
    net.lrs_arch = {"name": "small_cnn", "kwargs": kw}
    return net.eval()


def _aq_cnn() -> nn.Module:
    """The CNN with hand-made AQ codes / codebooks (no learning: fixed bytes) on a factor, a
    sparse-values tensor and a plain conv weight, two codebook groups."""
    net = _cnn("row", "unstructured", 1)
    g = torch.Generator().manual_seed(11)
    entries, tensors = [], {}
    for group, (M, K, d) in {"shared": (2, 16, 4), "own": (1, 12, 3)}.items():
        tensors[f"aq.codebooks.{group}"] = torch.randn(M, K, d, generator=g)
    for param, group in (("features.3.U", "shared"), ("classifier.0.sparse.values", "shared"),
                         ("features.0.weight", "own")):
        M, K, d = tensors[f"aq.codebooks.{group}"].shape
        shape = list(net.get_parameter(param).shape)
        numel = int(torch.Size(shape).numel())
        n = -(-numel // d)
        codes = torch.randint(0, K, (n * M,), generator=g).numpy()
        from lowrank_sparse.quant import pack_codes

        tensors[f"aq.codes.{param}"] = torch.from_numpy(pack_codes(codes, K))
        tensors[f"aq.scale.{param}"] = torch.tensor(0.5 + float(torch.rand(1, generator=g)), dtype=torch.float32)
        entries.append({"param": param, "group": group, "shape": shape, "numel": numel, "pad": n * d - numel,
                        "d": d, "M": M, "K": K, "n_vectors": n, "dtype": "float32"})  # fmt: skip
    meta = {"aq.format": "lowrank_sparse.aq/1", "aq.entries": json.dumps(entries), "aq.codebook_dtype": "float32"}
    return load_aq_state(net, tensors, meta, parametrize=True)


def reference_models() -> dict[str, tuple[nn.Module, dict]]:
    """{file name: (model, save keywords)}: every sparse format and index code (bits,
    bitmap, Rice), slices, a float16 cast, a whole network and an AQ one (both codebook
    dtypes)."""
    aq = _aq_cnn()
    return {
        "lin_row": (_linear("row"), {}),
        "lin_row_dense": (_linear("row", 0.9), {}),
        "lin_column": (_linear("channel", 0.3), {}),
        "lin_nm": (_linear("2:4"), {}),
        "lin_csr_rice": (_linear("unstructured", 0.02, m=64, n=256), {}),
        "lin_csr_bitmap": (_linear("unstructured", 0.7), {}),
        "lin_csr_bits": (_csr_bits_linear(), {}),
        "lin_slices_f16": (_linear("unstructured", slices=2), {"dtype": "float16"}),
        "conv_row": (_conv("row", 0.3), {}),
        "conv_channel": (_conv("channel", 0.4), {}),
        "conv_nm": (_conv("2:4"), {}),
        "conv_csr_slices": (_conv("unstructured", 0.1, slices=2), {}),
        "cnn": (_cnn("channel", "unstructured", 2), {"metadata": {"note": "reference"}}),
        "cnn_aq_f16": (aq, {}),
        "cnn_aq_f32": (aq, {"codebook_dtype": "float32"}),
    }
