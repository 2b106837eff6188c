"""AQ storage: bit-packing round trips, packed state of a quantized model, byte counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from lowrank_sparse.quant import (
    AQConfig,
    aq_entries,
    aq_state,
    bits_for,
    load_aq_state,
    non_aq_state_dict,
    pack_codes,
    quantize_model,
    storage_bytes,
    storage_report,
    unpack_codes,
)

KS = [2, 3, 16, 256, 300, 65536]


@pytest.mark.parametrize(("K", "bits"), [(2, 1), (3, 2), (16, 4), (17, 5), (256, 8), (300, 9), (65536, 16)])
def test_bits_for(K: int, bits: int) -> None:
    assert bits_for(K) == bits == math.ceil(math.log2(K))


@given(data=st.data(), K=st.sampled_from(KS), n=st.integers(0, 300))
def test_pack_roundtrip_exact(data: st.DataObject, K: int, n: int) -> None:
    codes = np.array(data.draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n)), dtype=np.int64)
    packed = pack_codes(codes, K)
    assert packed.dtype == np.uint8
    assert packed.size == (n * bits_for(K) + 7) // 8
    back = unpack_codes(packed, n, K)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back.astype(np.int64), codes)


@pytest.mark.parametrize("K", KS, ids=lambda k: f"K{k}")
def test_pack_extremes_and_layout(K: int) -> None:
    codes = np.array([0, K - 1, K - 1, 0, K // 2], dtype=np.int64)
    np.testing.assert_array_equal(unpack_codes(pack_codes(codes, K), 5, K), codes)
    # layout: bit i of code j sits at stream position j*b + i, least significant first
    b = bits_for(K)
    stream = np.unpackbits(pack_codes(codes, K), bitorder="little")
    for j, c in enumerate(codes):
        assert sum(int(stream[j * b + i]) << i for i in range(b)) == c


def test_pack_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="codes must lie"):
        pack_codes(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="codes must lie"):
        pack_codes(np.array([-1]), 4)
    with pytest.raises(TypeError):
        pack_codes(np.array([0.5]), 4)
    with pytest.raises(ValueError, match="K must be"):
        pack_codes(np.array([0]), 1)
    with pytest.raises(ValueError, match="expected"):
        unpack_codes(np.zeros(3, np.uint8), 10, 256)
    with pytest.raises(ValueError, match=">= K"):
        unpack_codes(np.array([3], np.uint8), 1, 3)  # 2-bit code 3 with K=3


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 33), nn.ReLU(), nn.Linear(33, 7), nn.BatchNorm1d(7))


@pytest.fixture(scope="module")
def quantized() -> nn.Module:
    return quantize_model(_mlp(0), AQConfig(M=2, K=12, d=4, iters=2, kmeans_iters=3), which="all")


def test_state_roundtrip_through_safetensors(quantized: nn.Module, tmp_path) -> None:
    tensors, meta = aq_state(quantized, codebook_dtype="float32")
    save_file(tensors, str(tmp_path / "aq.safetensors"), metadata=meta)
    loaded = load_file(str(tmp_path / "aq.safetensors"))
    fresh = _mlp(1)
    load_aq_state(fresh, loaded, meta)
    for name in ("0.weight", "2.weight"):
        mod = quantized.get_submodule(name.split(".")[0])
        np.testing.assert_array_equal(fresh.get_submodule(name.split(".")[0]).weight.detach().numpy(),
                                      mod.weight.detach().numpy())
    # biases are not part of the AQ state: the fresh model keeps its own
    assert not torch.equal(fresh[0].bias, quantized[0].bias)


def test_state_float16_codebooks(quantized: nn.Module) -> None:
    tensors, meta = aq_state(quantized, codebook_dtype="float16")
    C16 = tensors["aq.codebooks.shared"]
    assert C16.dtype == torch.float16
    fresh = _mlp(1)
    load_aq_state(fresh, tensors, meta)
    _, q0 = aq_entries(quantized)[0][0]
    C = C16.double().numpy()
    codes = q0.codes.numpy()
    ref = sum(C[m][codes[:, m]] for m in range(C.shape[0])).reshape(-1)[: q0.numel_] * q0.scale
    np.testing.assert_allclose(fresh[0].weight.detach().numpy().reshape(-1), ref, rtol=1e-6, atol=1e-7)


def test_load_parametrized_keeps_sharing(quantized: nn.Module) -> None:
    tensors, meta = aq_state(quantized)
    fresh = load_aq_state(_mlp(2), tensors, meta, parametrize=True)
    entries, groups = aq_entries(fresh)
    assert [n for n, _ in entries] == ["0.weight", "2.weight"]
    assert entries[0][1].codebooks is entries[1][1].codebooks
    assert torch.equal(fresh[2].weight, quantized[2].weight)


def test_storage_bytes_formula(quantized: nn.Module) -> None:
    b = bits_for(12)
    n0, n2 = 20 * 33 // 4, math.ceil(33 * 7 / 4)  # sub-vectors per weight
    codes = math.ceil(n0 * 2 * b / 8) + math.ceil(n2 * 2 * b / 8)
    books = 2 * 12 * 4 * 2  # float16
    floats = 4 * (33 + 7 + 7 + 7) + 4 * (7 + 7) + 8  # biases, BN affine + running stats, num_batches_tracked
    rep = storage_report(quantized)
    assert rep["codes"] == codes and rep["codebooks"] == books and rep["scales"] == 8
    assert rep["float"] == floats
    assert rep["indices"] == 0  # no sparse parts
    assert storage_bytes(quantized) == codes + books + 8 + floats
    assert rep["quantized_float32"] == 4 * (20 * 33 + 33 * 7)
    assert storage_bytes(quantized, "float32") == storage_bytes(quantized) + books


def test_state_errors(quantized: nn.Module) -> None:
    tensors, meta = aq_state(quantized)
    with pytest.raises(ValueError, match="format"):
        load_aq_state(_mlp(0), tensors, {**meta, "aq.format": "other/9"})
    with pytest.raises(ValueError, match="shape"):
        load_aq_state(nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(33, 7)), tensors, meta)
    with pytest.raises(ValueError, match="no AQ"):
        aq_state(_mlp(0))
    with pytest.raises(ValueError, match="codebook_dtype"):
        aq_state(quantized, codebook_dtype="int8")


def test_full_model_roundtrip_with_float_rest(quantized: nn.Module, tmp_path) -> None:
    tensors, meta = aq_state(quantized)
    rest = non_aq_state_dict(quantized)
    assert set(rest) == {"0.bias", "2.bias", "3.weight", "3.bias", "3.running_mean", "3.running_var",
                         "3.num_batches_tracked"}
    save_file({**tensors, **{f"float.{k}": v for k, v in rest.items()}}, str(tmp_path / "m.safetensors"), metadata=meta)
    loaded = load_file(str(tmp_path / "m.safetensors"))
    fresh = _mlp(3)
    fresh.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("float.")}, strict=False)
    load_aq_state(fresh, loaded, meta)
    fresh.eval()
    quantized.eval()
    x = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fresh(x), quantized(x))
