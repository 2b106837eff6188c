"""Smoke test of the benchmark harness: `benchmarks/run_suite.py --quick` runs end
to end, writes its table, JSON and plot, and the backends it compares reach the
same final error (checked against an independent numpy reference)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "run_suite.py"


def _synthetic_weight(m: int, n: int, seed: int) -> np.ndarray:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from shapes import synthetic_weight
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return synthetic_weight(m, n, seed=seed)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "decompose_cpu.json").read_text())


@pytest.mark.slow
def test_quick_suite_writes_table_json_and_plot(quick_run: tuple[Path, dict]) -> None:
    out, data = quick_run
    md = (out / "decompose_cpu.md").read_text()
    assert md.startswith("# Per-layer decomposition")
    assert "| layer | shape |" in md and "## Targets" in md and "Machine:" in md
    png = (out / "decompose_cpu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert data["meta"]["threads"]["torch"] == 2
    assert len(data["cases"]) >= 2


@pytest.mark.slow
def test_quick_suite_backends_agree_and_beat_rank_only(quick_run: tuple[Path, dict]) -> None:
    _, data = quick_run
    for rec in data["cases"]:
        case, runs = rec["case"], rec["runs"]
        assert {"native", "torch", "torch_fullsvd"} <= set(runs), case["label"]
        errs = {b: d["rel_error"] for b, d in runs.items()}
        ref = errs["native"]
        for b, e in errs.items():
            assert abs(e - ref) <= 0.01 * ref, f"{case['label']}: {b} error {e} vs native {ref}"
        # independent reference: L + S must fit better than the best rank-r matrix alone
        W = _synthetic_weight(case["m"], case["n"], seed=0).astype(np.float64)
        s = np.linalg.svd(W, compute_uv=False)
        rank_only = float(np.sqrt((s[case["rank"]:] ** 2).sum() / (s**2).sum()))
        assert ref < rank_only, f"{case['label']}: L+S error {ref} not below rank-only {rank_only}"
        # the GEMM floor and per-iteration times are positive and consistent
        assert rec["floor"]["seconds"] > 0
        for d in runs.values():
            assert d["iterations"] >= 1
            assert d["per_iter"] == pytest.approx(d["seconds"] / d["iterations"], rel=0.5)
        assert rec["memory"]["native"]["extra_bytes"] >= 0
