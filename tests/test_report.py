"""Tests for lowrank_sparse.report: ratios, JSON round trip, table contents."""

from __future__ import annotations

import json
import math

import pytest

from lowrank_sparse.report import CompressionReport, LayerReport, current_keys


def _report() -> CompressionReport:
    a = LayerReport(
        name="features.0", kind="conv", shape=(16, 3, 3, 3), activation="relu (fx)", rank=4, density=0.05,
        params_before=448, params_after=200, macs_before=448 * 1024, macs_after=200 * 1024,
        output_error_after=0.125, error_on="subsample (100 columns)", iterations=37, converged=True, seconds=0.5,
        index_bytes=96,
    )  # fmt: skip
    b = LayerReport(name="fc", kind="linear", shape=(10, 64), activation="identity", status="untouched",
                    params_before=650, params_after=650, macs_before=640, macs_after=640,
                    note="full rank or density 1: original layer kept")
    return CompressionReport(
        layers=[a, b], skipped={"dw": "depthwise conv (groups=16): only groups=1 is compressed"},
        params_before=1200, params_after=952, macs_before=459392, macs_after=205440, index_bytes=96,
        target={"params": 0.5, "macs": None}, allocation="alds", allocation_table="layer rank\nfeatures.0 4",
        calibration={"batches": 2, "samples": 256, "detection": "fx", "detection_note": ""}, seconds=1.5,
    )  # fmt: skip


def test_ratios():
    r = _report()
    assert r.params_ratio == pytest.approx(952 / 1200)
    assert r.macs_ratio == pytest.approx(205440 / 459392)
    assert r.layers[0].params_ratio == pytest.approx(200 / 448)
    assert math.isnan(LayerReport("x", "linear", (1, 1), "identity").params_ratio)
    assert [x.name for x in r.compressed] == ["features.0"]
    assert r.layer("fc").status == "untouched"
    with pytest.raises(KeyError, match="nope"):
        r.layer("nope")


def test_to_dict_is_json_and_complete():
    r = _report()
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["params_before"] == 1200 and d["params_after"] == 952
    assert d["params_ratio"] == pytest.approx(952 / 1200)
    assert d["layers"][0]["shape"] == [16, 3, 3, 3]
    assert d["layers"][0]["output_error_after"] == 0.125
    assert d["layers"][1]["status"] == "untouched"
    assert d["skipped"] == {"dw": "depthwise conv (groups=16): only groups=1 is compressed"}
    assert d["target"] == {"params": 0.5, "macs": None}
    # NaN (no MACs before) becomes null, not an invalid JSON token
    empty = CompressionReport()
    assert json.loads(empty.to_json(allow_nan=False))["params_ratio"] is None


def test_table_lists_layers_totals_and_skips():
    t = _report().table()
    lines = t.splitlines()
    assert lines[0].split()[:4] == ["layer", "kind", "shape", "activation"]
    row = next(ln for ln in lines if ln.startswith("features.0"))
    assert "16x3x3x3" in row and "448->200" in row and "0.1250" in row and "37" in row
    fc = next(ln for ln in lines if ln.startswith("fc "))
    assert "full" in fc and "650->650" in fc
    assert "params 1200 -> 952 (0.793)" in t
    assert "dw: depthwise conv" in t
    assert "target params=0.5, allocation alds" in t
    assert "features.0 4" in t  # the allocation table is included
    assert str(_report()) == t


def test_old_field_names_are_deprecated_aliases():
    with pytest.warns(DeprecationWarning, match=r"LayerReport\(flops_before=\.\.\.\) is deprecated; use LayerReport\(macs_before"):
        a = LayerReport("x", "linear", (2, 3), "identity", flops_before=6, macs_after=4)
    assert (a.macs_before, a.macs_after) == (6, 4)
    with pytest.warns(DeprecationWarning, match=r"LayerReport\.flops_after is deprecated"):
        a.flops_after = 3
    assert a.macs_after == 3
    r = _report()
    for old, new in (("flops_before", "macs_before"), ("flops_after", "macs_after"), ("flops_ratio", "macs_ratio")):
        with pytest.warns(DeprecationWarning, match=rf"CompressionReport\.{old} is deprecated; use CompressionReport\.{new}"):
            assert getattr(r, old) == getattr(r, new)
    with pytest.raises(TypeError, match="both"):
        LayerReport("x", "linear", (2, 3), "identity", flops_before=6, macs_before=6)
    keys = set(r.to_dict()) | set(r.to_dict()["layers"][0])
    assert {"macs_before", "macs_after", "macs_ratio"} <= keys and not any("flops" in k for k in keys)


def test_current_keys_reads_reports_saved_with_flops_keys():
    new = _report().to_dict()
    old = json.loads(json.dumps(new).replace('"macs_', '"flops_').replace('"macs": null', '"flops": null'))
    assert "flops_before" in old and "flops" in old["target"] and "flops_ratio" in old["layers"][0]
    assert current_keys(old) == new
    assert list(current_keys(old)) == list(new)  # same key order
    assert current_keys(new) == new
