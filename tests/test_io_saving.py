"""io/saving.py: save() validation, casts, compact file size, and the bytes of saved files
pinned against tests/data/io_reference.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from io_fixtures import compressed, file_fingerprint, reference_models  # tests/ is on sys.path
from lowrank_sparse.io import file_report, load, save
from lowrank_sparse.nn import LowRankSparseLinear
from sparse_fixtures import random_decomposition


def test_save_validation(tmp_path: Path, tgen: torch.Generator) -> None:
    net = compressed(tgen)
    with pytest.raises(ValueError, match="dtype"):
        save(net, tmp_path / "x.safetensors", dtype="int8")
    with pytest.raises(ValueError, match="JSON"):
        save(net, tmp_path / "x.safetensors", metadata={"obj": object()})
    with pytest.raises(TypeError, match="nn.Module"):
        save("net", tmp_path / "x.safetensors")  # type: ignore[arg-type]


def test_bfloat16_and_tied_weights(tmp_path: Path, tgen: torch.Generator) -> None:
    emb = nn.Linear(4, 4, bias=False)
    net = nn.Sequential(emb, nn.ReLU(), nn.Linear(4, 4, bias=False))
    net[2].weight = emb.weight  # shared storage
    f = tmp_path / "t.safetensors"
    save(net, f, dtype=torch.bfloat16)
    skel = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False))
    back = load(f, model=skel)
    torch.testing.assert_close(back[2].weight, emb.weight.detach().bfloat16().float(), rtol=0, atol=0)
    assert skel[0].weight.data_ptr() != back[0].weight.data_ptr()  # the skeleton is untouched


def test_file_size_reflects_compression(tmp_path: Path, tgen: torch.Generator) -> None:
    dec = random_decomposition(512, 512, 16, "unstructured", tgen)
    mod = LowRankSparseLinear.from_decomposition(dec, bias=torch.zeros(512))
    f = tmp_path / "l.safetensors"
    save(mod, f)
    expected = mod.num_params() * 4 + mod.sparse.num_index_bytes(packed=True)
    assert expected < 0.3 * 512 * 512 * 4  # far below the dense layer (1 MiB)
    assert abs(f.stat().st_size - expected) <= 0.05 * expected
    # the indices are stored packed: near the entropy of the support (p = 0.1: 0.47 bits per
    # entry) + 10 bits of row count per row, far below int32 CSR (crow + one int32 per value)
    nnz, p = int(torch.count_nonzero(dec.S)), 0.1
    entropy = 512 * 512 * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8
    assert file_report(f)["indices"] == mod.sparse.num_index_bytes(packed=True) <= 1.1 * entropy + 512 * 10 / 8
    assert mod.sparse.num_index_bytes(packed=True) < 0.25 * (4 * nnz + 4 * 513)
    f16 = tmp_path / "h.safetensors"
    save(mod, f16, dtype="float16")
    expected16 = mod.num_params() * 2 + mod.sparse.num_index_bytes(packed=True)
    assert abs(f16.stat().st_size - expected16) <= 0.05 * expected16
    back = load(f16, model=nn.Linear(512, 512))
    assert back.U.dtype == torch.float32
    torch.testing.assert_close(back.U, mod.U.detach().half().float(), rtol=0, atol=0)


REFERENCE = json.loads((Path(__file__).parent / "data" / "io_reference.json").read_text())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_saved_bytes_are_pinned(name: str, tmp_path: Path) -> None:
    """Every sparse format and index code, casts and AQ parts save to the same bytes as
    the reference (header length, header JSON, data section)."""
    model, kwargs = reference_models()[name]
    f = tmp_path / f"{name}.safetensors"
    save(model, f, **kwargs)
    assert file_fingerprint(f) == REFERENCE[name]
