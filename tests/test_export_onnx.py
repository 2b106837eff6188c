"""ONNX export of compressed models, run in ONNX Runtime against the torch model.

Tolerance: float32, max |onnx - torch| / max |torch| <= 1e-5 (the products differ only by
summation order; the export forms build the same S, checked exactly against the dense S).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lowrank_sparse as lrs
from lowrank_sparse.errors import ConvergenceWarning
from lowrank_sparse.cli import main
from lowrank_sparse.models import SmallCNN
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear, compact_from_dense

from sparse_fixtures import masked, random_decomposition

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from lowrank_sparse.export import export_copy  # noqa: E402

RTOL = 1e-5


def ort_run(path: Path, x: torch.Tensor) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def assert_close_to_torch(model: nn.Module, path: Path, *inputs: torch.Tensor) -> None:
    for x in inputs:
        with torch.no_grad():
            ref = model(x).numpy().astype(np.float64)
        got = ort_run(path, x).astype(np.float64)
        assert got.shape == ref.shape
        scale = max(np.abs(ref).max(), 1e-30)
        assert np.abs(got - ref).max() / scale <= RTOL, (np.abs(got - ref).max() / scale)


def export_and_check(model: nn.Module, x: torch.Tensor, tmp_path: Path, name: str = "m.onnx") -> Path:
    """Export on x, run at x's batch and another batch size (the batch axis is dynamic)."""
    model.eval()
    path = lrs.export_onnx(model, x, tmp_path / name)
    other = torch.randn(1 if x.shape[0] > 1 else 3, *x.shape[1:], generator=torch.Generator().manual_seed(5))
    assert_close_to_torch(model, path, x, other)
    # nothing but the model's own state is stored (no dense constant of a fixed shape)
    stored = sum(int(t.numel()) for t in model.state_dict().values())
    assert sum(int(np.prod(d)) for _, d in _initializers(path)) <= stored + 64
    return path


LINEAR_KINDS = ["unstructured", "row", "column", "2:4", "1:8", "1:16"]
CONV_KINDS = ["unstructured", "unfold", "row", "column", "channel", "2:4", "1:8"]


def linear_pair(kind: str | None, rank: int, g: torch.Generator, m: int = 24, n: int = 32) -> LowRankSparseLinear:
    sparse = None if kind is None else compact_from_dense(masked(kind, m, n, g), kind)
    U, V = (torch.randn(m, rank, generator=g), torch.randn(rank, n, generator=g)) if rank else (None, None)
    return LowRankSparseLinear(n, m, U=U, V=V, sparse=sparse, bias=torch.randn(m, generator=g))


def conv_pair(kind: str | None, rank: int, g: torch.Generator, **geometry: object) -> LowRankSparseConv2d:
    m, C = 16, 8
    sparse = None
    if kind is not None:
        st = "unstructured" if kind == "unfold" else kind
        S = masked(st, m, C * 9, g, block=9)
        sparse = compact_from_dense(S, st, kernel_numel=9, conv_mode="unfold" if kind == "unfold" else "dense_kernel")
    U, V = (torch.randn(m, rank, generator=g), torch.randn(rank, C * 9, generator=g)) if rank else (None, None)
    return LowRankSparseConv2d(C, m, 3, U=U, V=V, sparse=sparse, bias=torch.randn(m, generator=g), **geometry)


@pytest.mark.parametrize("rank", [3, 0])
@pytest.mark.parametrize("kind", LINEAR_KINDS)
def test_linear_pair_every_structure(kind: str, rank: int, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    export_and_check(linear_pair(kind, rank, g), torch.randn(4, 32, generator=g), tmp_path)


@pytest.mark.parametrize("rank", [3, 0])
@pytest.mark.parametrize("kind", CONV_KINDS)
def test_conv_pair_every_structure(kind: str, rank: int, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    export_and_check(conv_pair(kind, rank, g, padding=1), torch.randn(2, 8, 9, 9, generator=g), tmp_path)


@pytest.mark.parametrize("rank", [3, 0])
def test_density_zero_and_empty_pairs(rank: int, tmp_path: Path) -> None:
    """No sparse part (density 0), and rank 0 with density 0 (the bias alone)."""
    g = torch.Generator().manual_seed(3)
    lin, conv = linear_pair(None, rank, g), conv_pair(None, rank, g, padding=1)
    assert lin.sparse is None and conv.sparse is None
    export_and_check(lin, torch.randn(2, 32, generator=g), tmp_path, "lin.onnx")
    export_and_check(conv, torch.randn(2, 8, 7, 7, generator=g), tmp_path, "conv.onnx")


@pytest.mark.parametrize("kind", ["row", "unstructured", "channel", "2:4"])
def test_slices_and_conv_geometry(kind: str, tmp_path: Path) -> None:
    """ALDS slices (g = 2) on both pairs; a strided, dilated, reflect-padded conv."""
    g = torch.Generator().manual_seed(4)
    lin = LowRankSparseLinear.from_decomposition(random_decomposition(24, 32, 3, kind if kind != "channel" else "row",
                                                                      g, slices=2), bias=torch.randn(24))
    assert lin.slices == 2
    export_and_check(lin, torch.randn(3, 32, generator=g), tmp_path, "lin.onnx")
    c = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, padding_mode="reflect")
    conv = LowRankSparseConv2d.from_conv(c, random_decomposition(16, 72, 2, kind, g, block=9, slices=2))
    assert conv.slices == 2 and conv.padding_mode == "reflect"
    export_and_check(conv, torch.randn(2, 8, 11, 11, generator=g), tmp_path, "conv.onnx")


def test_export_forms_build_the_same_sparse_part() -> None:
    """The export forms' S equals the dense S they were built from, bit for bit, and the
    copy's forward agrees with the original's; the original is not modified."""
    g = torch.Generator().manual_seed(6)
    for kind in ["unstructured", "1:8", "1:16"]:
        S = masked(kind, 24, 32, g)
        pair = LowRankSparseLinear(32, 24, sparse=compact_from_dense(S, kind))
        twin = export_copy(pair)
        assert type(twin.sparse).__name__ == "ScatteredKernel"
        assert torch.equal(twin.sparse.to_dense(), S)
    for kind in ["row", "column", "unfold"]:
        pair = conv_pair(kind, 2, g, padding=1)
        before = {k: v.clone() for k, v in pair.state_dict().items()}
        twin = export_copy(pair)
        assert twin.sparse is not pair.sparse and type(pair.sparse).__name__ != type(twin.sparse).__name__
        x = torch.randn(2, 8, 6, 6, generator=g)
        torch.testing.assert_close(twin(x), pair(x), rtol=1e-5, atol=1e-5)
        assert all(torch.equal(before[k], v) for k, v in pair.state_dict().items())


def _compressed_cnn(structure: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=10, width=0.5).eval()
    x = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a short solve is enough for export checks
        model, _ = lrs.compress(net, x, rank=0.3, density=0.1, structure=structure, max_iter=20, progress=False)
    return model.eval(), x


def _initializers(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    m = onnx.load(str(path))
    inits = [(t.name, tuple(t.dims)) for t in m.graph.initializer]
    consts = [tuple(a.t.dims) for node in m.graph.node if node.op_type == "Constant" for a in node.attribute if a.t.dims]
    return inits + [("<constant>", d) for d in consts]


@pytest.mark.parametrize("structure", ["unstructured", "row"])
def test_compressed_small_cnn_in_onnx_runtime(structure: str, tmp_path: Path) -> None:
    """A built-in model compressed by lowrank_sparse.compress: equal outputs, and the
    file stores no dense (m, n) weight of a layer whose compact form is smaller."""
    model, x = _compressed_cnn(structure)
    pairs = {n: m for n, m in model.named_modules() if isinstance(m, (LowRankSparseLinear, LowRankSparseConv2d))}
    assert len(pairs) >= 3
    path = export_and_check(model, x[:8], tmp_path)
    tensors = _initializers(path)
    numel = {name: int(np.prod(shape)) for name, shape in tensors}
    for name, pair in pairs.items():
        m, n = pair.matrix_shape
        if pair.num_params() + pair.num_index_bytes() // 4 >= m * n:
            continue
        # a dense weight in any layout ((m, n), (m, C, kh, kw), flattened) has m*n entries
        assert not [t for t in tensors if numel[t[0]] == m * n and t[0] != "<constant>"], name
        assert not [d for t, d in tensors if t == "<constant>" and int(np.prod(d)) >= m * n], name
    stored = sum(int(t.numel()) for t in model.state_dict().values())
    assert sum(numel.values()) <= stored


def test_saved_file_exports_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, x = _compressed_cnn("channel")
    saved = tmp_path / "m.safetensors"
    arch = {"name": "small_cnn", "kwargs": {"in_channels": 1, "num_classes": 10, "width": 0.5}}
    lrs.save(model, saved, metadata={"dataset": "digits", "arch": arch})
    out = tmp_path / "m.onnx"
    assert main(["export", str(saved), "-o", str(out), "--batch", "2", "--input-shape", "1,16,16", "--check"]) == 0
    assert "max relative error" in capsys.readouterr().out
    assert_close_to_torch(lrs.load(saved), out, x[:2], x[:5])


def test_cli_errors_are_one_line_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_model = tmp_path / "notes.safetensors"
    not_model.write_text("not a model\n")
    cases = [
        ["export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "a.onnx")],
        ["export", str(not_model), "-o", str(tmp_path / "a.onnx"), "--input-shape", "1,8,8"],
        ["export", str(not_model), "-o", str(tmp_path / "no" / "such" / "a.onnx")],
        ["export", str(not_model), "-o", str(tmp_path)],
    ]
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("lowrank-sparse export: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "a.onnx").exists()


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    lin = linear_pair("row", 2, torch.Generator().manual_seed(0))
    x = torch.randn(2, 32)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        lrs.export_onnx("model.safetensors", x, tmp_path / "a.onnx")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="example_input"):
        lrs.export_onnx(lin, x.numpy(), tmp_path / "a.onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="example_input"):
        lrs.export_onnx(lin, torch.ones(2, 32, dtype=torch.long), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="opset"):
        lrs.export_onnx(lin, x, tmp_path / "a.onnx", opset=9)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lrs.export_onnx(lin, x, tmp_path / "missing" / "a.onnx")
    assert os.listdir(tmp_path) == []


class _Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("cannot trace this")


def test_write_is_atomic(tmp_path: Path) -> None:
    """A failed export leaves an existing file byte-identical and no temporary file."""
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="cannot trace"):
        lrs.export_onnx(_Fails(), torch.randn(1, 4), target)
    assert target.read_bytes() == b"old contents" and os.listdir(tmp_path) == ["m.onnx"]
    lin = linear_pair("2:4", 2, torch.Generator().manual_seed(0))
    lrs.export_onnx(lin, torch.randn(1, 32), target, opset=13)
    assert onnx.load(str(target)).opset_import[0].version == 13 and os.listdir(tmp_path) == ["m.onnx"]


@pytest.mark.slow
def test_torch_compile_equals_eager() -> None:
    """torch.compile (inductor) of a compressed model runs and agrees with eager."""
    try:
        from torch._inductor import cpp_builder  # noqa: F401
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - any missing piece of inductor's toolchain
        pytest.skip(f"inductor cannot compile here: {e}")
    model, x = _compressed_cnn("unstructured")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's own deprecated jit use inside inductor
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        compiled = torch.compile(model)
        with torch.no_grad():
            got, ref = compiled(x[:8]), model(x[:8])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
