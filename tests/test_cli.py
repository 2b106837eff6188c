"""The command line: argument errors, and a real compress -> evaluate -> report run on
a small MLP trained on scikit-learn's digits (real images) inside the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowrank_sparse import cli
from lowrank_sparse.cli.args import parse_quantize
from lowrank_sparse.cli.sources import load_model


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(d))
    return d


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse errors
        rc = int(e.code)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["compress", "mlp", "-o", "x.safetensors", "--params", "1.5"], "--params"),
        (["compress", "mlp", "-o", "x.safetensors", "--params", "abc"], "--params"),
        (["compress", "no_such_model", "-o", "x.safetensors", "--params", "0.5", "--dataset", "digits"], "no_such_model"),
        (["compress", "mlp", "-o", "x.safetensors", "--dataset", "digits"], "target"),
        (["compress", "mlp", "-o", "x.safetensors", "--params", "0.5", "--rank", "3"], "exclude each other"),
        (["compress", "mlp", "-o", "x.safetensors", "--params", "0.5", "--quantize", "aq:Q=3"], "--quantize"),
        (["compress", "mlp", "-o", "x.safetensors", "--params", "0.5", "--dataset", "cifar100"], "--dataset"),
        (["evaluate", "does/not/exist.safetensors"], "no such file"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
    ids=["fraction>1", "fraction-nan", "unknown-model", "no-target", "target+rank", "bad-quantize",
         "unknown-dataset", "missing-file", "unknown-command", "no-command"],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], cache: Path) -> None:
    rc, out, err = run(argv, capsys)
    assert rc == 2
    lines = [l for l in err.strip().splitlines() if "error" in l]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert out == ""


def test_corrupt_file_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    rc, _, err = run(["evaluate", str(bad)], capsys)
    assert rc == 2 and "bad.safetensors" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text, expected",
    [("aq:M=2,K=256", {"M": 2, "K": 256}), ("aq:M=1,K=16,d=4,shared=0", {"M": 1, "K": 16, "d": 4, "shared": False}), ("aq", {})],
    ids=["M2K256", "full", "defaults"],
)
def test_parse_quantize(text: str, expected: dict[str, object]) -> None:
    assert parse_quantize(text) == expected


def test_help_for_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    for sub in ("compress", "evaluate", "report", "demo"):
        rc, out, _ = run([sub, "--help"], capsys)
        assert rc == 0 and "usage: lowrank-sparse " + sub in out


@pytest.mark.slow
def test_compress_evaluate_report_round_trip(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lowrank_sparse import data, io, train

    out = tmp_path / "mlp.safetensors"
    rc, text, err = run(
        ["compress", "mlp", "--dataset", "digits", "--params", "0.5", "--calib", "512", "-o", str(out), "--json"], capsys
    )
    assert rc == 0, err
    res = json.loads(text)
    # The budget is met (the allocator's contract: within 1 % of the whole model).
    assert res["after"]["params"] <= 0.5 * res["before"]["params"] * 1.01
    assert 0 < res["after"]["macs"] < res["before"]["macs"] and "flops" not in text.lower()
    # Independent check of the reported accuracies: evaluate both models ourselves.
    x, y = data.digits("test")
    original = train.get_trained("mlp", "digits", "cpu", 0)
    loaded = io.load(out)
    with torch.no_grad():
        acc_orig = float((original(x).argmax(1) == y).float().mean())
        acc_new = float((loaded(x).argmax(1) == y).float().mean())
    assert res["accuracy_before"] == pytest.approx(acc_orig)
    assert res["accuracy_after"] == pytest.approx(acc_new)
    assert acc_new > 0.8  # half the parameters of a digits MLP keep most of its accuracy
    assert res["file_bytes"] == out.stat().st_size

    rc, text, err = run(["evaluate", str(out), "--json"], capsys)
    assert rc == 0, err
    ev = json.loads(text)
    assert ev["accuracy"] == pytest.approx(acc_new)
    assert ev["params"] == sum(p.numel() for p in loaded.parameters())
    assert ev["latency_ms"] > 0

    plots = tmp_path / "plots"
    rc, text, err = run(["report", str(out), "--plots", str(plots)], capsys)
    assert rc == 0, err
    assert "layer" in text and "rank" in text
    pngs = sorted(plots.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.parametrize("mode, sequential, corrected", [("sequential", True, False), ("corrected", True, True)])
def test_compress_calibration_mode(mode: str, sequential: bool, corrected: bool, tmp_path: Path, cache: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mlp.safetensors"
    rc, text, err = run(["compress", "mlp", "--dataset", "digits", "--params", "0.5", "--calib", "256",
                         "--calibration", mode, "--no-latency", "-o", str(out), "--json"], capsys)
    assert rc == 0, err
    cal = json.loads(text)["report"]["calibration"]
    assert (cal["sequential"], cal["error_correction"]) == (sequential, corrected)


def test_compress_weighting_is_recorded(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mlp.safetensors"
    rc, text, err = run(["compress", "mlp", "--dataset", "digits", "--params", "0.5", "--calib", "256",
                         "--weighting", "sensitivity", "--no-latency", "-o", str(out), "--json"], capsys)
    assert rc == 0, err
    res = json.loads(text)
    assert res["report"]["target"]["weighting"] == "sensitivity"
    assert res["after"]["params"] <= 0.5 * res["before"]["params"] * 1.01


def test_source_says_whether_the_model_was_trained_or_loaded(cache: Path) -> None:
    first = load_model("mlp", "digits", "cpu", 0, None, progress=False)
    again = load_model("mlp", "digits", "cpu", 0, None, progress=False)
    assert "trained now" in first.source and "from cache" not in first.source
    assert "from cache" in again.source
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["unstructured", "row"])
def test_compress_quantize_with_fine_tuning(structure: str, tmp_path: Path, cache: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from lowrank_sparse import data, io

    base = ["compress", "mlp", "--dataset", "digits", "--params", "0.5", "--calib", "256", "--structure", structure]
    plain, quant = tmp_path / "plain.safetensors", tmp_path / "aq.safetensors"
    rc, _, err = run(base + ["-o", str(plain), "--json"], capsys)
    assert rc == 0, err
    rc, text, err = run(base + ["--fine-tune", "1", "--quantize", "aq:M=2,K=16,d=4", "-o", str(quant), "--json"], capsys)
    assert rc == 0, err
    res = json.loads(text)
    assert res["file_bytes"] == quant.stat().st_size
    # factors and sparse values become 2 x 4-bit codes per 4 values (2 bits instead of 32);
    # the dense first/last layers stay float
    fp, fq = io.file_report(plain), io.file_report(quant)
    assert fq["aq_codes"] > 0 and fq["total"] < fp["total"]
    assert fp["float_values"] - fq["float_values"] >= 10 * fq["aq_codes"]
    x, y = data.digits("test")
    with torch.no_grad():
        acc = float((io.load(quant)(x).argmax(1) == y).float().mean())
    # the reported accuracy is the saved file's (codebooks stored in float16: allow one image)
    assert res["accuracy_quantized"] == pytest.approx(acc, abs=1.5 / len(y))
    assert acc > 0.7
