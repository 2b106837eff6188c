"""save/load of AQ-quantized models: packed storage, bitwise round trips, sizes, bad files."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from torch import nn

from lowrank_sparse.io import file_report, load, read_metadata, save
from lowrank_sparse.models import MLP, SmallCNN
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from lowrank_sparse.quant import (
    AQConfig,
    aq_entries,
    bake,
    codebook_parameters,
    fine_tune_codebooks,
    non_aq_state_dict,
    quantize_model,
    storage_bytes,
    storage_report,
)
from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure
from sparse_fixtures import random_decomposition  # tests/ is on sys.path (pytest rootdir conftest)

FAST = {"iters": 1, "kmeans_iters": 2, "beam": 2}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models: one intra-op thread (two spin-wait badly on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- models
CNN_ARCH = {"name": "small_cnn", "kwargs": {"in_channels": 1, "num_classes": 10, "width": 0.5}}


def cnn_pairs(conv_kind: str, fc_kind: str, slices: int) -> nn.Module:
    """SmallCNN (c = 8) with its 2nd/3rd convs and 1st classifier layer as pair modules."""
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    net = SmallCNN(**CNN_ARCH["kwargs"])
    for bn in (net.features[1], net.features[4], net.features[8]):
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
    c2, c3 = net.features[3], net.features[7]  # 8 -> 16, 16 -> 32
    p_conv = 0.25 if conv_kind == "row" else None
    net.features[3] = LowRankSparseConv2d.from_conv(
        c2, random_decomposition(16, 72, 3, conv_kind, g, block=9, slices=slices, density=p_conv))
    net.features[7] = LowRankSparseConv2d.from_conv(c3, random_decomposition(32, 144, 4, "2:4", g, block=9))
    fc = net.classifier[0]  # 128 -> 32
    p_fc = 0.25 if fc_kind == "row" else 0.06
    net.classifier[0] = LowRankSparseLinear.from_decomposition(
        random_decomposition(32, 128, 5, fc_kind, g, slices=slices, density=p_fc), bias=fc.bias)
    return net.eval()


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target, dtype=torch.int64)


MLP_ARCH = {"name": "mlp", "kwargs": {"in_features": 64, "num_classes": 10, "hidden": [48]}}


@pytest.fixture(scope="module")
def mlp_pair(digits) -> nn.Module:
    """models.MLP 64-48-10 trained on digits; its first layer -> rank-8 SVD + top-6% residual."""
    X, y = digits
    torch.manual_seed(0)
    model = MLP(**MLP_ARCH["kwargs"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
    W = model.layers[1].weight.detach()
    U, s, Vt = torch.linalg.svd(W, full_matrices=False)
    Uf, Vf = U[:, :8] * s[:8], Vt[:8]
    R = W - Uf @ Vf
    thr = R.abs().flatten().kthvalue(R.numel() - int(0.06 * R.numel())).values
    S = torch.where(R.abs() > thr, R, torch.zeros_like(R))
    dec = Decomposition(Uf, Vf, S, parse_structure("unstructured"), SolveInfo())
    model.layers[1] = LowRankSparseLinear.from_decomposition(dec, bias=model.layers[1].bias.detach())
    return model.eval()


def rounded_codebooks(q: nn.Module) -> nn.Module:
    """Reference for float16 codebook storage: a copy whose codebooks are rounded to float16."""
    ref = copy.deepcopy(q)
    with torch.no_grad():
        for C in codebook_parameters(ref):
            C.copy_(C.half().float())
    return ref


def raw_header(path: Path) -> tuple[int, dict]:
    """(bytes before the data section, header JSON), read straight from the file."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return 8 + n, json.loads(blob[8 : 8 + n])


# ----------------------------------------------------------------------------- round trips
CASES = {
    "cnn-channel-csr": ("channel", "unstructured", 1),
    "cnn-row-row-slices2": ("row", "row", 2),
}
CFGS = {
    "shared-M2K16d4": AQConfig(M=2, K=16, d=4, **FAST),
    "per-tensor-M3K12d3": AQConfig(M=3, K=12, d=3, shared=False, **FAST),
}


@pytest.mark.parametrize("cfg", list(CFGS.values()), ids=list(CFGS))
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("which", ["factors+sparse", "all"])
def test_cnn_round_trip_bitwise(case: tuple, cfg: AQConfig, which: str, tmp_path: Path) -> None:
    net = cnn_pairs(*case)
    q = quantize_model(net, cfg, which=which)
    f = tmp_path / "q.safetensors"
    save(q, f, metadata={"arch": CNN_ARCH}, codebook_dtype="float32")
    back = load(f)  # architecture from the file
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back(x), q(x))
    assert isinstance(back.features[3], LowRankSparseConv2d) and isinstance(back.classifier[0], LowRankSparseLinear)
    ent, ent_b = aq_entries(q)[0], aq_entries(back)[0]
    assert sorted(n for n, _ in ent) == sorted(n for n, _ in ent_b)
    by_name = dict(ent_b)
    for name, a in ent:
        b = by_name[name]
        assert torch.equal(a.codes, b.codes) and a.scale == b.scale and a.shape == b.shape
    assert len(codebook_parameters(back)) == len(codebook_parameters(q))  # sharing kept
    sd, sd_b = q.state_dict(), back.state_dict()
    assert sd.keys() == sd_b.keys() and all(torch.equal(sd[k], sd_b[k]) for k in sd)
    # the file holds no dense copy of any quantized parameter
    with safe_open(str(f), "pt") as fh:
        names = set(fh.keys())
    assert not any(n in names for n, _ in ent)
    assert not any("aq_slots" in n for n in names)
    assert read_metadata(f)["schema_version"] == 3


def test_float16_codebooks_round_trip_to_rounded_model(mlp_pair: nn.Module, digits, tmp_path: Path) -> None:
    q = quantize_model(mlp_pair, AQConfig(M=2, K=64, d=4, **FAST), which="all")
    f = tmp_path / "q16.safetensors"
    save(q, f, metadata={"arch": MLP_ARCH})  # codebooks float16 by default
    _, header = raw_header(f)
    assert header["aq.codebooks.shared"]["dtype"] == "F16" and header["aq.codebooks.shared"]["shape"] == [2, 64, 4]
    back = load(f)
    assert all(C.dtype == torch.float32 for C in codebook_parameters(back))
    X, _ = digits
    with torch.no_grad():
        out_b, out_ref, out_q = back(X), rounded_codebooks(q)(X), q(X)
    assert torch.equal(out_b, out_ref)
    assert not torch.equal(out_b, out_q)  # float16 rounding did change the codebooks ...
    assert (out_b - out_q).abs().max() < 1e-2 * out_q.abs().max()  # ... slightly


def test_loaded_model_fine_tunes_and_bakes_like_the_original(mlp_pair: nn.Module, digits, tmp_path: Path) -> None:
    X, y = digits
    q = quantize_model(mlp_pair, AQConfig(M=1, K=8, d=4, **FAST), which="all")
    f = tmp_path / "q.safetensors"
    save(q, f, metadata={"arch": MLP_ARCH}, codebook_dtype="float32")
    back = load(f)
    books = codebook_parameters(back)
    assert len(books) == 1 and books[0].requires_grad
    codes = {n: a.codes.clone() for n, a in aq_entries(back)[0]}
    before = books[0].detach().clone()
    batches = [(X[i : i + 200], y[i : i + 200]) for i in range(0, 1400, 200)]
    hist_q = fine_tune_codebooks(q, batches, F.cross_entropy, epochs=3, lr=5e-3)
    hist_b = fine_tune_codebooks(back, batches, F.cross_entropy, epochs=3, lr=5e-3)
    assert hist_b == hist_q and hist_b[-1] < hist_b[0]
    assert not torch.equal(books[0], before)
    assert all(torch.equal(a.codes, codes[n]) for n, a in aq_entries(back)[0])  # codes fixed
    with torch.no_grad():
        assert torch.equal(back(X), q(X))
    # the fine-tuned model saves and loads again, and bakes to plain weights
    f2 = tmp_path / "q2.safetensors"
    save(back, f2, metadata={"arch": MLP_ARCH}, codebook_dtype="float32")
    again = load(f2)
    baked, baked_q = bake(again), bake(q)
    assert not aq_entries(baked)[0]
    sd, sd_q = baked.state_dict(), baked_q.state_dict()
    assert sd.keys() == sd_q.keys() and all(torch.equal(sd[k], sd_q[k]) for k in sd)
    f3 = tmp_path / "baked.safetensors"
    save(baked, f3, metadata={"arch": MLP_ARCH})
    assert read_metadata(f3)["aq"] is None
    with torch.no_grad():
        assert torch.equal(load(f3)(X), q(X))


# ----------------------------------------------------------------------------- sizes
def big_pair(g: torch.Generator) -> tuple[nn.Module, dict[str, int]]:
    """384x256 rank-24 pair (CSR sparse part) + a plain 384 -> 10 head; numel of each tensor
    AQ quantizes with which="factors+sparse", counted from the construction."""
    dec = random_decomposition(384, 256, 24, "unstructured", g, density=0.06)
    net = nn.Sequential(LowRankSparseLinear.from_decomposition(dec, bias=torch.zeros(384)), nn.ReLU(), nn.Linear(384, 10))
    nnz = int(torch.count_nonzero(dec.S))
    return net.eval(), {"0.U": 384 * 24, "0.V": 24 * 256, "0.sparse.values": nnz}


SIZE_CFGS = {
    "M2K256d8": AQConfig(M=2, K=256, d=8, **FAST),  # 2 bits per value
    "M1K16d4": AQConfig(M=1, K=16, d=4, **FAST),  # 1 bit per value
    "M2K12d4-per-tensor": AQConfig(M=2, K=12, d=4, shared=False, **FAST),  # 2 bits, 3 codebook sets
    "M4K300d8": AQConfig(M=4, K=300, d=8, **FAST),  # 4.5 bits, codes straddle bytes
}


@pytest.mark.parametrize("cb", ["float16", "float32"])
@pytest.mark.parametrize("cfg", list(SIZE_CFGS.values()), ids=list(SIZE_CFGS))
def test_storage_ratio_matches_bits_per_value(cfg: AQConfig, cb: str, tmp_path: Path, tgen: torch.Generator) -> None:
    net, numels = big_pair(tgen)
    q = quantize_model(net, cfg)
    f32, fq = tmp_path / "f32.safetensors", tmp_path / "q.safetensors"
    save(net, f32)
    save(q, fq, codebook_dtype=cb)
    data32 = f32.stat().st_size - raw_header(f32)[0]
    dataq = fq.stat().st_size - raw_header(fq)[0]
    bits = math.ceil(math.log2(cfg.K))
    n_q = sum(numels.values())
    codes = sum(math.ceil(math.ceil(n / cfg.d) * cfg.M * bits / 8) for n in numels.values())
    groups = 1 if cfg.shared else len(numels)
    books = groups * cfg.M * cfg.K * cfg.d * (2 if cb == "float16" else 4)
    assert dataq == data32 - 4 * n_q + codes + books + 4 * len(numels)
    # bits per quantized value: M*ceil(log2 K)/d, up to the tail padding of each tensor
    per_value = 8 * codes / n_q
    assert abs(per_value - cfg.M * bits / cfg.d) <= 8 * len(numels) * (cfg.M * bits + 8) / n_q
    rep = file_report(fq)
    assert (rep["aq_codes"], rep["aq_codebooks"], rep["aq_scales"]) == (codes, books, 4 * len(numels))


@pytest.mark.parametrize("cb", ["float16", "float32"])
@pytest.mark.parametrize("dtype", [None, "float16"], ids=["float32-rest", "float16-rest"])
def test_file_size_is_reported_size(cb: str, dtype: str | None, tmp_path: Path, tgen: torch.Generator) -> None:
    net, _ = big_pair(tgen)
    net = nn.Sequential(*net, nn.BatchNorm1d(10)).eval()  # + an int64 BN counter ("other")
    q = quantize_model(net, AQConfig(M=2, K=256, d=8, **FAST))
    f = tmp_path / "q.safetensors"
    save(q, f, codebook_dtype=cb, dtype=dtype)
    rep = file_report(f)
    parts = {k: v for k, v in rep.items() if k != "total"}
    assert rep["total"] == f.stat().st_size == sum(parts.values())
    assert rep["header"] == raw_header(f)[0]
    # the rest, counted independently from the state
    rest = non_aq_state_dict(q)
    width = (lambda t: 2) if dtype == "float16" else (lambda t: t.element_size())
    floats = sum(t.numel() * width(t) for t in rest.values() if t.is_floating_point())
    # indices: the packed uint8 tensors the file holds under the sparse part (read back
    # from the file), whose bytes num_index_bytes(packed=True) reports
    with safe_open(str(f), "pt") as fh:
        stored = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith("0.sparse.")}
    idx = sum(t.numel() for t in stored.values())
    assert all(t.dtype == torch.uint8 for t in stored.values()) and idx > 0
    assert idx == q[0].sparse.num_index_bytes(packed=True)
    assert rep["float_values"] == floats and rep["indices"] == idx and rep["other"] == 8
    sr = storage_report(q, cb)
    assert (rep["aq_codes"], rep["aq_codebooks"], rep["aq_scales"]) == (sr["codes"], sr["codebooks"], sr["scales"])
    assert sr["indices"] == idx
    if dtype is None:
        assert rep["float_values"] + rep["other"] == sr["float"]
        assert rep["total"] == storage_bytes(q, cb) + rep["header"]
        # the in-memory index buffers (int32) are larger than their packed form
        mem_idx = q[0].sparse.num_index_bytes(packed=False)
        assert mem_idx == sum(t.numel() * t.element_size() for k, t in rest.items()
                              if k.startswith("0.sparse.") and not t.is_floating_point())
        assert idx < mem_idx / 2


def test_report_of_unquantized_file(tmp_path: Path, tgen: torch.Generator) -> None:
    net, numels = big_pair(tgen)
    f = tmp_path / "f.safetensors"
    save(net, f)
    rep = file_report(f)
    assert rep["aq_codes"] == rep["aq_codebooks"] == rep["aq_scales"] == rep["other"] == 0
    assert rep["float_values"] == 4 * (sum(numels.values()) + 384 + 384 * 10 + 10)
    assert rep["total"] == f.stat().st_size == sum(v for k, v in rep.items() if k != "total")


# ----------------------------------------------------------------------------- bad files
@pytest.fixture(scope="module")
def good_file(tmp_path_factory, mlp_pair: nn.Module) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    q = quantize_model(mlp_pair, AQConfig(M=2, K=12, d=4, **FAST))  # K = 12: 4-bit codes, 12..15 invalid
    f = tmp_path_factory.mktemp("aq") / "good.safetensors"
    save(q, f, metadata={"arch": MLP_ARCH})
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata()
    return f, load_file(str(f)), meta


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """The documented checksum: sha256 over (name, raw bytes) of every tensor in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rewrite(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Write a file with a consistent checksum (the parts are checked whatever the checksum)."""
    save_file(tensors, str(path), metadata={**meta, "checksum": _checksum(tensors)})
    return path


def _entries(meta: dict[str, str]) -> list[dict]:
    return json.loads(meta["aq.entries"])


BAD = {
    "codes-short": (lambda t, m: ({**t, "aq.codes.layers.1.U": t["aq.codes.layers.1.U"][:-1]}, m),
                    r"bad\.safetensors.*'aq\.codes\.layers\.1\.U' is \(\d+,\) torch\.uint8, expected \(\d+,\) torch\.uint8"),
    "codes-wrong-dtype": (lambda t, m: ({**t, "aq.codes.layers.1.V": t["aq.codes.layers.1.V"].to(torch.int16)}, m),
                          r"bad\.safetensors.*'aq\.codes\.layers\.1\.V'.*uint8"),
    "codes-out-of-range": (lambda t, m: ({**t, "aq.codes.layers.1.V": torch.full_like(t["aq.codes.layers.1.V"], 0xFF)}, m),
                           r"bad\.safetensors.*'aq\.codes\.layers\.1\.V'.*>= K"),
    "codes-missing": (lambda t, m: ({k: v for k, v in t.items() if k != "aq.codes.layers.1.sparse.values"}, m),
                      r"bad\.safetensors.*missing AQ codes tensor 'aq\.codes\.layers\.1\.sparse\.values'"),
    "codebook-missing": (lambda t, m: ({k: v for k, v in t.items() if k != "aq.codebooks.shared"}, m),
                         r"bad\.safetensors.*missing AQ codebook tensor 'aq\.codebooks\.shared'"),
    "codebook-shape": (lambda t, m: ({**t, "aq.codebooks.shared": t["aq.codebooks.shared"][:, :11].contiguous()}, m),
                       r"bad\.safetensors.*'aq\.codebooks\.shared'.*\(2, 11, 4\).*expected \(2, 12, 4\)"),
    "codebook-nan": (lambda t, m: ({**t, "aq.codebooks.shared": t["aq.codebooks.shared"] * float("nan")}, m),
                     r"bad\.safetensors.*'aq\.codebooks\.shared'.*non-finite"),
    "scale-missing": (lambda t, m: ({k: v for k, v in t.items() if k != "aq.scale.layers.1.U"}, m),
                      r"bad\.safetensors.*missing AQ scale tensor 'aq\.scale\.layers\.1\.U'"),
    "scale-negative": (lambda t, m: ({**t, "aq.scale.layers.1.U": -t["aq.scale.layers.1.U"]}, m),
                       r"bad\.safetensors.*'aq\.scale\.layers\.1\.U'.*positive"),
    "entry-inconsistent": (lambda t, m: (t, {**m, "aq.entries": json.dumps(
                               [{**e, "n_vectors": e["n_vectors"] + 1} if e["param"] == "layers.1.V" else e for e in _entries(m)])}),
                           r"bad\.safetensors.*corrupt AQ metadata for 'layers\.1\.V'"),
    "entry-missing-key": (lambda t, m: (t, {**m, "aq.entries": json.dumps(
                              [{k: v for k, v in e.items() if k != "K"} for e in _entries(m)])}),
                          r"bad\.safetensors.*corrupt AQ metadata for 'layers\.1\.U'.*'K'"),
    "format-unknown": (lambda t, m: (t, {**m, "aq.format": "lowrank_sparse.aq/9"}),
                       r"bad\.safetensors.*AQ format 'lowrank_sparse\.aq/9' is not supported"),
    "meta-partial": (lambda t, m: (t, {k: v for k, v in m.items() if k != "aq.entries"}),
                     r"bad\.safetensors.*corrupt AQ metadata"),
    "param-not-in-model": (lambda t, m: (
        {**{k: v for k, v in t.items() if k != "aq.codes.layers.1.U" and k != "aq.scale.layers.1.U"},
         "aq.codes.layers.1.W": t["aq.codes.layers.1.U"], "aq.scale.layers.1.W": t["aq.scale.layers.1.U"]},
        {**m, "aq.entries": json.dumps([{**e, "param": "layers.1.W"} if e["param"] == "layers.1.U" else e for e in _entries(m)])}),
        r"bad\.safetensors.*cannot rebuild layer 'layers\.1'"),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(BAD.values()), ids=list(BAD))
def test_corrupt_aq_parts_raise(bad: tuple, good_file: tuple, tmp_path: Path) -> None:
    _, tensors, meta = good_file
    make, pattern = bad
    t2, m2 = make(dict(tensors), dict(meta))
    f = _rewrite(tmp_path / "bad.safetensors", t2, m2)
    with pytest.raises(ValueError, match=pattern):
        load(f)


def test_corrupt_code_bits_and_truncation(good_file: tuple, tmp_path: Path) -> None:
    path, tensors, meta = good_file
    load(path)  # the source file is fine
    blob = path.read_bytes()
    data_start, header = raw_header(path)
    lo, _ = header["aq.codes.layers.1.U"]["data_offsets"]
    flipped = bytearray(blob)
    flipped[data_start + lo] ^= 0x01  # a valid code turned into another valid code
    f = tmp_path / "flipped.safetensors"
    f.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"flipped\.safetensors.*checksum"):
        load(f)
    f = tmp_path / "trunc.safetensors"
    f.write_bytes(blob[:-3])
    with pytest.raises(ValueError, match=r"trunc\.safetensors.*truncated"):
        load(f)
    with pytest.raises(ValueError, match=r"trunc\.safetensors.*truncated"):
        file_report(f)


def test_save_validation(mlp_pair: nn.Module, tmp_path: Path) -> None:
    q = quantize_model(mlp_pair, AQConfig(M=1, K=4, d=2, **FAST))
    with pytest.raises(ValueError, match="codebook_dtype"):
        save(q, tmp_path / "x.safetensors", codebook_dtype="int8")
    # a state entry named like a packed AQ tensor
    holder = nn.Module()
    holder.register_buffer("U", torch.zeros(1))
    q.add_module("aq", nn.ModuleDict({"codes": nn.ModuleDict({"layers": nn.ModuleDict({"1": holder})})}))
    with pytest.raises(ValueError, match="'aq.codes.layers.1.U' collides"):
        save(q, tmp_path / "y.safetensors")
    assert not (tmp_path / "y.safetensors").exists()


# ----------------------------------------------------------------------------- version 1
def test_version1_file_still_loads(good_file: tuple, tmp_path: Path) -> None:
    """A file in the version-1 layout (written here by hand from its documented schema)."""
    net = cnn_pairs("channel", "unstructured", 1)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    layers = {"features.3": net.features[3].config(), "features.7": net.features[7].config(),
              "classifier.0": net.classifier[0].config()}  # fmt: skip
    meta = {"format": "lowrank_sparse", "schema_version": "1", "arch": json.dumps(CNN_ARCH),
            "layers": json.dumps(layers), "dtypes": "{}", "user": '{"k": 1}'}  # fmt: skip
    f = _rewrite(tmp_path / "v1.safetensors", state, meta)
    info = read_metadata(f)
    assert info["schema_version"] == 1 and info["aq"] is None and info["user"] == {"k": 1}
    back = load(f)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    rep = file_report(f)
    assert rep["total"] == f.stat().st_size == sum(v for k, v in rep.items() if k != "total")
    # an AQ part cannot appear in a version-1 file
    aq_meta = {k: v for k, v in good_file[2].items() if k.startswith("aq.")}
    bad = _rewrite(tmp_path / "v1aq.safetensors", state, {**meta, **aq_meta})
    with pytest.raises(ValueError, match=r"v1aq\.safetensors.*AQ part in a schema-version-1 file"):
        load(bad)
