"""The command line's shared pieces: argument types, JSON output, the layer table, and
the demo's hand-built ``compress`` arguments (they must cover every ``compress`` flag)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from lowrank_sparse.cli import app, demo
from lowrank_sparse.errors import InfeasibleBudget
from lowrank_sparse.cli.args import fraction, int_at_least
from lowrank_sparse.cli.output import CLIError, emit, read_saved
from lowrank_sparse.cli.report import layer_table


@pytest.mark.parametrize("text, ok", [("1", True), ("0.25", True), ("1e-3", True), ("0", False), ("-0.5", False),
                                      ("1.0001", False), ("nan", False), ("inf", False), ("x", False)])
def test_fraction_accepts_exactly_the_half_open_unit_interval(text: str, ok: bool) -> None:
    if ok:
        assert fraction(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            fraction(text)


def test_int_at_least() -> None:
    parse = int_at_least(3)
    assert parse("3") == 3 and parse("17") == 17
    for bad in ("2", "-1", "3.5", "three"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_emit_json_is_one_object_with_paths_and_arrays_as_plain_values(capsys: pytest.CaptureFixture[str]) -> None:
    payload = {"file": Path("a/b.safetensors"), "values": np.arange(3), "n": 2}
    emit(argparse.Namespace(json=True), payload, "text")
    assert json.loads(capsys.readouterr().out) == {"file": "a/b.safetensors", "values": [0, 1, 2], "n": 2}
    emit(argparse.Namespace(json=False), payload, "text")
    assert capsys.readouterr().out == "text\n"


def test_layer_table_rows_and_columns() -> None:
    rep = {"layers": [
        {"name": "fc1", "kind": "linear", "shape": [64, 128], "activation": "relu", "rank": 8, "density": 0.05,
         "params_before": 8192, "params_after": 1946, "output_error_after": 0.01234},
        {"name": "features.conv", "kind": "conv2d", "shape": [16, 27], "activation": None, "rank": 2, "density": None,
         "params_before": 0, "params_after": 86, "output_error_after": None},
    ]}
    lines = layer_table(rep).splitlines()
    assert len(lines) == 3
    assert lines[1].split() == ["fc1", "linear", "64x128", "relu", "8", "0.050", "1,946", "0.24", "0.0123"]
    assert lines[2].split() == ["features.conv", "conv2d", "16x27", "None", "2", "0.000", "86", "-", "-"]
    # columns are aligned: every column starts at the same offset in every row
    starts = [lines[0].index(h) for h in ("kind", "shape", "act", "rank", "params", "error")]
    for line in lines:
        assert all(line[s - 1] == " " and line[s] != " " for s in starts), line


def test_demo_sets_every_compress_argument(tmp_path: Path) -> None:
    parser = app.build_parser()
    parsed = parser.parse_args(["compress", "mlp", "-o", "x.safetensors", "--params", "0.5"])
    wanted = set(vars(parsed)) - {"func", "command"}
    demo_args = demo._compress_args(
        argparse.Namespace(calib=1, params=0.5, max_iter=1, sample_size=1, test_subset=1, json=True, no_progress=True),
        "mnist", tmp_path / "x.safetensors",
    )
    assert wanted <= set(vars(demo_args))


def test_demo_speed_first_run_is_a_rank_only_latency_budget(tmp_path: Path) -> None:
    ns = argparse.Namespace(calib=1, params=0.25, latency=0.6, max_iter=1, sample_size=1, test_subset=1, json=True,
                            no_progress=True)
    fast = demo._fast_args(ns, "mnist", tmp_path / "f.safetensors")
    assert (fast.params, fast.latency, fast.method, fast.output) == (None, 0.6, "rank_only", str(tmp_path / "f.safetensors"))
    assert demo._compress_args(ns, "mnist", tmp_path / "a.safetensors").params == 0.25  # the first run is unchanged


@pytest.mark.parametrize("reachable, expected", [(0.6028, 0.66), (0.7, 0.75)], ids=["just-above", "well-above"])
def test_demo_speed_first_asks_for_the_reachable_time_when_its_target_is_out_of_reach(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path,
        reachable: float, expected: float) -> None:
    asked = []

    def run(a: argparse.Namespace) -> int:
        asked.append(a.latency)
        if a.latency < reachable:
            raise InfeasibleBudget("infeasible latency target", "latency", a.latency, reachable)
        return 0

    monkeypatch.setattr(demo.compress, "run", run)
    monkeypatch.setattr(demo, "_accuracy_drop", lambda p: 0.0)
    ns = argparse.Namespace(calib=1, params=0.25, latency=0.6, max_iter=1, sample_size=1, test_subset=1, json=False,
                            no_progress=True)
    assert demo._run_fast(ns, "mnist", tmp_path / "f.safetensors") == 0
    assert asked == [0.6, pytest.approx(expected)]
    assert f"compressing to {expected:.0%} instead" in capsys.readouterr().err
    assert ns.latency == 0.6  # the caller's arguments are not changed


def test_demo_speed_first_follows_a_floor_that_moves_up_between_runs_and_then_gives_up(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    floors = iter([0.7, 0.8, 0.9, 0.95])  # a busy machine: every run times the model slower
    asked = []

    def run(a: argparse.Namespace) -> int:
        asked.append(a.latency)
        raise InfeasibleBudget("infeasible latency target", "latency", a.latency, next(floors))

    monkeypatch.setattr(demo.compress, "run", run)
    ns = argparse.Namespace(calib=1, params=0.25, latency=0.6, max_iter=1, sample_size=1, test_subset=1, json=True,
                            no_progress=True)
    with pytest.raises(InfeasibleBudget):
        demo._run_fast(ns, "mnist", tmp_path / "f.safetensors")
    assert asked == [0.6, pytest.approx(0.75), pytest.approx(0.85)]
    assert len(asked) == demo.FAST_TRIES


@pytest.mark.parametrize("err", [InfeasibleBudget("x", "params", 0.1, 0.2), InfeasibleBudget("x", "latency", 0.6, 0.97),
                                 InfeasibleBudget("x", "together", None, None)], ids=["params", "no-speedup", "together"])
def test_demo_speed_first_reraises_what_a_looser_latency_cannot_mend(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, err: InfeasibleBudget) -> None:
    def run(a: argparse.Namespace) -> int:
        raise err

    monkeypatch.setattr(demo.compress, "run", run)
    ns = argparse.Namespace(calib=1, params=0.25, latency=0.6, max_iter=1, sample_size=1, test_subset=1, json=False,
                            no_progress=True)
    with pytest.raises(InfeasibleBudget):
        demo._run_fast(ns, "mnist", tmp_path / "f.safetensors")


def test_demo_summary_reports_speed_as_dense_over_compressed_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from lowrank_sparse import io as lrs_io

    def cli(acc: float, params: int, ms: float, ratio: float, iqr: list[float]) -> dict:
        return {"user": {"cli": {"accuracy_before": 0.88, "accuracy_after": acc,
                                 "before": {"params": 1000, "macs": 5000}, "after": {"params": params, "macs": 900},
                                 "latency_ms_before": 10.0, "latency_ms_after": ms, "latency_ratio": ratio,
                                 "latency_ratio_iqr": iqr}}}

    meta = {"a": cli(0.879, 250, 10.2, 1.02, [1.0, 1.05]), "b": cli(0.866, 200, 5.0, 0.5, [0.48, 0.52])}
    monkeypatch.setattr(lrs_io, "read_metadata", lambda p: meta[str(p)])
    lines = demo._summary({"accuracy first": Path("a"), "speed first": Path("b")}).splitlines()
    assert lines[2].split()[:3] == ["dense", "88.00%", "1,000"]
    assert "0.98x [0.95, 1.00]" in lines[3] and "87.90%" in lines[3]
    assert "2.00x [1.92, 2.08]" in lines[4] and "200" in lines[4]


def test_read_saved_turns_missing_files_and_refusals_into_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "none.safetensors"
    with pytest.raises(CLIError, match=f"^{missing}: no such file$"):
        read_saved(str(missing), lambda p: pytest.fail("reader called on a missing file"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"x")

    def refuse(p: Path) -> None:
        raise ValueError(f"{p}: header too short")

    with pytest.raises(CLIError, match="bad.safetensors: header too short"):
        read_saved(bad, refuse)
    assert read_saved(bad, lambda p: p.read_bytes()) == b"x"


def test_flops_flag_is_a_deprecated_alias_of_macs(capsys: pytest.CaptureFixture[str]) -> None:
    parser = app.build_parser()
    base = ["compress", "mlp", "-o", "x.safetensors"]
    new = parser.parse_args(base + ["--macs", "0.5"])
    assert new.macs == 0.5 and capsys.readouterr().err == ""
    old = parser.parse_args(base + ["--flops", "0.5"])
    assert vars(old) == vars(new)
    err = capsys.readouterr().err
    assert err == "warning: --flops is deprecated; use --macs (the same value)\n"
    for both in (["--flops", "0.5", "--macs", "0.4"], ["--macs", "0.4", "--flops", "0.5"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(base + both)
        assert e.value.code == 2 and "given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["compress", "--help"])
    shown = capsys.readouterr().out
    assert "--macs" in shown and "--flops" not in shown


def test_report_reads_files_saved_with_flops_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Files written before the rename carry flops_* keys (MACs all the same): the report
    command shows them under the macs names."""
    import torch

    from lowrank_sparse import io
    from lowrank_sparse.report import CompressionReport, LayerReport

    rep = CompressionReport(layers=[LayerReport("0", "linear", (2, 3), "identity", params_before=8, params_after=5,
                                                macs_before=6, macs_after=4)],
                            params_before=8, params_after=5, macs_before=6, macs_after=4,
                            target={"params": 0.7, "macs": None}).to_dict()
    old = json.loads(json.dumps(rep).replace('"macs', '"flops'))
    cli = {"before": {"params": 8, "flops": 6}, "after": {"params": 5, "flops": 4}, "accuracy_before": 0.5,
           "accuracy_after": 0.25}
    f = tmp_path / "old.safetensors"
    io.save(torch.nn.Sequential(torch.nn.Linear(3, 2)), f, metadata={"report": old, "cli": cli})
    assert app.main(["report", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["reports"][0]
    assert out["report"] == rep
    assert out["result"]["before"] == {"params": 8, "macs": 6} and out["result"]["after"] == {"params": 5, "macs": 4}
    assert app.main(["report", str(f)]) == 0
    assert "accuracy 50.00% -> 25.00%" in capsys.readouterr().out


@pytest.mark.parametrize("accuracies, expected", [
    ([0.249, 0.864], [0.6, 0.7]),  # collapsed once, then within the floor
    ([0.30, 0.40, 0.50], [0.6, 0.7, 0.8]),  # never recovers: the last run is kept
    ([0.85], [0.6]),  # 2.35 points below dense: kept
], ids=["recovers", "gives-up", "within-floor"])
def test_demo_speed_first_loosens_the_target_when_the_model_loses_too_much_accuracy(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path,
        accuracies: list[float], expected: list[float]) -> None:
    from lowrank_sparse import io as lrs_io

    asked: list[float] = []
    saved: dict[str, float] = {}

    def run(a: argparse.Namespace) -> int:
        asked.append(a.latency)
        saved["after"] = accuracies[len(asked) - 1]
        return 0

    monkeypatch.setattr(demo.compress, "run", run)
    monkeypatch.setattr(lrs_io, "read_metadata",
                        lambda p: {"user": {"cli": {"accuracy_before": 0.8735, "accuracy_after": saved["after"]}}})
    ns = argparse.Namespace(calib=1, params=0.25, latency=0.6, max_iter=1, sample_size=1, test_subset=1, json=False,
                            no_progress=True)
    assert demo._run_fast(ns, "mnist", tmp_path / "f.safetensors") == 0
    assert asked == [pytest.approx(x) for x in expected]
    err = capsys.readouterr().err
    assert err.count(" lost ") == len(expected) - 1
