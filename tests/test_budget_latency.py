"""Latency budgets: the per-layer cost model (budget/latency.py), the allocator with a
latency column, Budget validation, the CLI flag, and one small real run.

Everything but the last test uses given cost tables or a fake timer, so no assertion
depends on this machine's speed."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

import lowrank_sparse as lrs
from lowrank_sparse.budget import Budget, LatencyModel, LayerSpec, LayerTimes, allocate
from lowrank_sparse.budget.latency import _interp, clear_latency_cache, measure_layer
from lowrank_sparse.errors import InfeasibleBudget

M, N = 64, 48


def _layers(k: int = 4, seed: int = 0) -> list[LayerSpec]:
    g = torch.Generator().manual_seed(seed)
    decay = torch.diag(torch.linspace(1.0, 0.01, N, dtype=torch.float64))
    return [LayerSpec(f"l{i}", (torch.randn(M, N, generator=g, dtype=torch.float64) @ decay).float()) for i in range(k)]


def _linear_cost(slow: float):
    """Pair seconds of a made-up machine: overhead + time proportional to the stored values."""
    def fn(rank: int, density: float, slices: int) -> float:
        return 0.05 + slow * (rank * (M + N) + density * M * N * 3.0) / (M * N)
    return fn


def _model(layers: list[LayerSpec], rest: float = 0.5, slow: dict[str, float] | None = None) -> LatencyModel:
    slow = slow or {}
    return LatencyModel({l.name: LayerTimes.from_function(1.0, _linear_cost(slow.get(l.name, 1.0 + 0.3 * i)))
                         for i, l in enumerate(layers)}, rest_seconds=rest)


def _predicted(alloc, lm: LatencyModel) -> float:
    """Independent sum: rest + each layer's table cost (dense when kept dense)."""
    tot = lm.rest_seconds
    for la in alloc.layers:
        t = lm[la.name]
        tot += t.dense if la.keep_dense else min(t.dense, t.pair_seconds(la.rank, la.density, la.slices))
    return tot


@pytest.mark.parametrize("method", ["alds", "enc", "uniform"])
@pytest.mark.parametrize("target", [0.4, 0.6, 0.85], ids=["0.4", "0.6", "0.85"])
def test_latency_budget_holds_and_is_used(method: str, target: float) -> None:
    layers = _layers()
    lm = _model(layers)
    a = allocate(layers, Budget(latency=target), method, latency=lm, keep_first_last=False)
    dense = lm.rest_seconds + sum(lm[l.name].dense for l in layers)
    pred = _predicted(a, lm)
    assert a.dense_seconds == pytest.approx(dense)
    assert a.seconds == pytest.approx(pred, rel=1e-12)
    assert pred <= target * dense * (1 + 1e-12)
    # used: the gap is below one grid step (the largest cost of one more rank step of a layer)
    step = max(_linear_cost(1.0 + 0.3 * i)(1, 0.0, 1) - 0.05 for i in range(len(layers)))
    step = max(step, max(_linear_cost(1.0 + 0.3 * i)(0, 3.0 / (M * N) * 64, 1) for i in range(len(layers))))
    assert target * dense - pred <= step + 1e-9, (pred / dense, [(x.rank, x.density) for x in a.layers])
    assert a.latency_ratio == pytest.approx(pred / dense)
    assert all(la.form in ("pair", "dense", "original") for la in a.layers)


@pytest.mark.parametrize("method", ["alds", "enc", "uniform"])
def test_params_and_latency_both_hold(method: str) -> None:
    layers = _layers()
    lm = _model(layers, slow={"l0": 3.0})
    tgt = Budget(params=0.15, latency=0.7)
    a = allocate(layers, tgt, method, latency=lm, keep_first_last=False)
    assert a.params <= 0.15 * a.total_params
    assert _predicted(a, lm) <= 0.7 * a.dense_seconds * (1 + 1e-12)
    # and each budget alone is met by a different allocation than the pair: the latency
    # constraint is the binding one for this table, params for the other
    only_p = allocate(layers, Budget(params=0.15), method, keep_first_last=False)
    assert only_p.seconds is None and math.isnan(only_p.latency_ratio)


def test_layer_whose_compressed_forms_are_slower_stays_dense() -> None:
    layers = _layers(3)
    tabs = {l.name: LayerTimes.from_function(1.0, _linear_cost(1.0)) for l in layers}
    tabs["l1"] = LayerTimes.from_function(1.0, lambda r, d, s: 5.0)  # every pair form slower than dense
    lm = LatencyModel(tabs, rest_seconds=0.0)
    a = allocate(layers, Budget(latency=0.7), "alds", latency=lm, keep_first_last=False)
    la = a["l1"]
    assert la.keep_dense or la.form == "dense"
    assert la.seconds == pytest.approx(1.0)
    assert _predicted(a, lm) <= 0.7 * 3.0 * (1 + 1e-12)
    # with a params budget as well it must compress, but it runs merged at the dense time
    b = allocate(layers, Budget(params=0.5, latency=0.9), "alds", latency=lm, keep_first_last=False)
    assert not b["l1"].keep_dense and b["l1"].form == "dense" and b["l1"].seconds == pytest.approx(1.0)


def test_infeasible_latency_target_names_the_fastest_possible() -> None:
    layers = _layers(2)
    lm = _model(layers, rest=5.0)  # the rest alone is 5 / 7 of the dense time
    with pytest.raises(ValueError, match="infeasible latency target 0.5000: the parts that are not allocated") as e:
        allocate(layers, Budget(latency=0.5), "alds", latency=lm, keep_first_last=False)
    assert isinstance(e.value, InfeasibleBudget)
    assert (e.value.budget, e.value.target, e.value.reachable) == ("latency", pytest.approx(0.5), pytest.approx(5 / 7))


def test_infeasible_latency_names_the_fastest_candidate_of_any_split() -> None:
    layers = _layers(2)
    # any S costs the dense time; low rank alone is cheap (as at small CNN layers on a CPU):
    # the fastest candidate of each layer is rank 1, at 0.05 + 0.01 of the dense 1.0
    slow_s = LayerTimes.from_function(1.0, lambda r, d, s: 1.0 if d > 0 else 0.05 + 0.01 * r)
    lm = LatencyModel({l.name: slow_s for l in layers}, rest_seconds=0.0)
    for mode in ("lowrank_sparse", "rank_only"):
        with pytest.raises(ValueError, match="infeasible latency target 0.0100: even the fastest configuration "
                                             "of every allocated layer gives 0.0600") as e:
            allocate(layers, Budget(latency=0.01), "alds", latency=lm, keep_first_last=False, mode=mode)
        assert isinstance(e.value, InfeasibleBudget) and e.value.budget == "latency"
        assert e.value.reachable == pytest.approx(0.06 * 2 / 2.0) and e.value.target == pytest.approx(0.01)


def test_seconds_many_equals_seconds_one_at_a_time() -> None:
    rng = np.random.default_rng(0)
    for nd, nr in ((1, 1), (2, 3), (5, 1), (5, 6)):
        rs = np.sort(rng.choice(np.arange(1, 200), nr, replace=False))
        ds = np.concatenate([[0.0], np.sort(rng.uniform(0.01, 0.5, nd - 1))])
        pair = np.cumsum(np.cumsum(rng.uniform(0.0, 1.0, (nr, nd)), 0), 1)
        t = LayerTimes(dense=5.0, ranks=rs, densities=ds, pair=pair, sparse=np.sort(rng.uniform(0, 3, nd)), m=M, n=N)
        r, d, g = rng.integers(0, 400, 300), rng.uniform(0.0, 0.8, 300), rng.choice([1, 2, 4], 300)
        want = [min(t.dense, _scalar_pair(t, int(a), float(b), int(c))) for a, b, c in zip(r, d, g)]
        np.testing.assert_allclose(t.seconds_many(r, d, g), want, rtol=1e-12, atol=1e-12)


def _scalar_pair(t: LayerTimes, rank: int, density: float, slices: int) -> float:
    """The table's pair seconds from np.interp plus the documented extension, one candidate."""
    def ext(x, xs, ys):
        if len(xs) == 1:
            return ys[0] if x <= xs[0] else ys[0] * x / max(xs[0], 1e-12)
        if x <= xs[-1]:
            return float(np.interp(x, xs, ys))
        return ys[-1] + max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])) * (x - xs[-1])
    r = rank * (slices * t.m + t.n) / (t.m + t.n) if slices > 1 else rank
    if r <= 0:
        return ext(density, t.densities[1:], t.sparse[1:]) if len(t.densities) > 1 else t.dense
    col = [ext(r, t.ranks.astype(float), t.pair[:, j]) for j in range(len(t.densities))]
    return ext(density, t.densities, np.array(col))


def test_allocate_needs_tables_for_a_latency_target() -> None:
    layers = _layers(2)
    with pytest.raises(ValueError, match="latency target needs per-layer latency tables"):
        allocate(layers, Budget(latency=0.5), "alds", keep_first_last=False)
    with pytest.raises(ValueError, match=r"no table for layer\(s\) \['l1'\]"):
        allocate(layers, Budget(latency=0.5), "alds", latency=LatencyModel({"l0": LayerTimes.from_function(1.0, _linear_cost(1))}),
                 keep_first_last=False)


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        ({"latency": 0.0}, ValueError, r"Budget.latency must be a fraction in \(0, 1\], got 0.0"),
        ({"latency": 1.5}, ValueError, r"Budget.latency must be a fraction in \(0, 1\], got 1.5"),
        ({"latency": float("nan")}, ValueError, "Budget.latency must be a fraction"),
        ({"latency": "0.5"}, TypeError, "Budget.latency must be a float in \\(0, 1\\], got str"),
        ({"latency": True}, TypeError, "got bool"),
        ({"params": 0.5, "latency_model": LatencyModel()}, ValueError, "latency_model is given without latency"),
        ({"latency": 0.5, "latency_model": {"a": 1}}, TypeError, "latency_model must be a LatencyModel, got dict"),
        ({}, ValueError, "params=..., macs=... and/or latency=..."),
    ],
    ids=["zero", "above-one", "nan", "str", "bool", "model-without-latency", "model-type", "empty"],
)
def test_budget_latency_validation(kwargs: dict, exc: type, msg: str) -> None:
    with pytest.raises(exc, match=msg):
        Budget(**kwargs)


def test_budget_latency_accepts_one_and_compares_without_the_model() -> None:
    assert Budget(latency=1.0).latency == 1.0
    assert Budget(latency=0.5, latency_model=LatencyModel()) == Budget(latency=0.5)
    assert Budget(latency=0.5).as_dict() == {"params": None, "macs": None, "latency": 0.5}
    assert Budget(params=0.5).as_dict() == {"params": 0.5, "macs": None}


@pytest.mark.parametrize("x, want", [(0.5, 1.0), (1.0, 1.0), (1.5, 1.5), (2.0, 2.0), (3.0, 3.0), (4.0, 4.0)],
                         ids=["below", "first", "mid", "knot", "last", "extrapolated"])
def test_interp_holds_below_and_extends_above(x: float, want: float) -> None:
    assert _interp(x, np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(want)


def _fake_timer(calls: list[int]):
    """Seconds = stored weight values of the module (dense: m*n) * 1e-9: deterministic."""
    def timer(mod: torch.nn.Module, x: torch.Tensor) -> float:
        calls.append(1)
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            return mod.weight.numel() * 1e-9
        return (mod.macs() if hasattr(mod, "macs") else 0) * 1e-9
    return timer


@pytest.mark.parametrize("structure", ["unstructured", "row", "2:4"])
def test_measured_table_is_monotone_and_never_above_dense(structure: str) -> None:
    lin = torch.nn.Linear(32, 40)
    calls: list[int] = []
    t = measure_layer(lin, (8, 32), structure, timer=_fake_timer(calls), rounds=3)
    assert t.dense == pytest.approx(32 * 40 * 1e-9)
    assert np.all(np.diff(t.pair, axis=0) >= 0) and np.all(np.diff(t.pair, axis=1) >= 0)
    for r in (1, 3, 7, 13, 30, 200):
        for d in (0.0, 0.1, 0.5):
            if r == 0 and d == 0.0:
                continue
            assert t.seconds(r, d) <= t.dense
            assert t.form(r, d) == ("pair" if t.pair_seconds(r, d) < t.dense else "dense")
    # at a grid point the pair time is the fake timer's value (rank * (m + n) MACs per row)
    r0 = int(t.ranks[1])
    assert t.pair_seconds(r0, 0.0) == pytest.approx(r0 * (32 + 40) * 1e-9, rel=1e-9)
    # larger ranks cost more
    assert t.pair_seconds(int(t.ranks[-1]), 0.0) > t.pair_seconds(int(t.ranks[0]), 0.0)


def test_tables_are_cached_per_shape() -> None:
    clear_latency_cache()
    calls: list[int] = []
    lin = torch.nn.Linear(16, 24)
    a = measure_layer(lin, (4, 16), timer=_fake_timer(calls), rounds=2, cache=True)
    n = len(calls)
    b = measure_layer(torch.nn.Linear(16, 24), (4, 16), timer=_fake_timer(calls), rounds=2, cache=True)
    assert b is a and len(calls) == n
    measure_layer(lin, (8, 16), timer=_fake_timer(calls), rounds=2, cache=True)  # other input shape
    assert len(calls) > n
    clear_latency_cache()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_forms_are_timed_in_the_given_layout_and_the_layer_is_left_alone(layout: str) -> None:
    conv = torch.nn.Conv2d(8, 12, 3, padding=1)
    before = conv.weight.detach().clone()
    seen: list[tuple[bool, bool]] = []

    def timer(mod: torch.nn.Module, x: torch.Tensor) -> float:
        kernel = mod.weight if isinstance(mod, torch.nn.Conv2d) else mod.V
        x_cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if kernel is not None:  # a sparse-only candidate has no kernel of its own
            seen.append((x_cl, kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()))
        return 1e-3

    measure_layer(conv, (2, 8, 6, 6), timer=timer, rounds=2, cache=False, memory_format=layout)
    want = layout == "channels_last"
    assert seen and all(c == (want, want) for c in seen)
    assert conv.weight.is_contiguous() and torch.equal(conv.weight, before)


def test_of_model_times_a_copy_and_records_the_layout() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lm = LatencyModel.of_model(net, torch.randn(2, 3, 10, 10))
    assert lm.memory_format in ("contiguous", "channels_last")
    assert lm.inputs["2"][0] == (2, 8, 10, 10)
    assert all(v.is_contiguous() and torch.equal(v, before[k]) for k, v in net.state_dict().items())
    flat = LatencyModel.of_model(torch.nn.Linear(4, 3), torch.randn(5, 4))  # no layout to choose
    assert flat.memory_format == "contiguous"


# ----------------------------------------------------------------------------- CLI
def _parse(argv: list[str]) -> argparse.Namespace:
    from lowrank_sparse.cli import app

    return app.build_parser().parse_args(argv)


def test_cli_latency_parses_to_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from lowrank_sparse.cli import compress as cli_compress

    compress_pkg = importlib.import_module("lowrank_sparse.compress")

    args = _parse(["compress", "mlp", "-o", "x.safetensors", "--latency", "0.5", "--params", "0.4"])
    assert args.latency == 0.5
    cli_compress._check_target(args)
    seen = {}
    monkeypatch.setattr(cli_compress, "_latency_model", lambda a, s: LatencyModel())
    monkeypatch.setattr(compress_pkg, "compress", lambda model, calib, target, **kw: seen.setdefault("t", target))
    cli_compress._compress(args, argparse.Namespace(model=None), None, False)
    assert seen["t"] == Budget(params=0.4, latency=0.5)
    assert isinstance(seen["t"].latency_model, LatencyModel)
    assert not hasattr(_parse(["compress", "mlp", "-o", "x.safetensors", "--params", "0.4"]), "latency")


@pytest.mark.parametrize("value", ["0", "1.5", "abc", "nan"], ids=["zero", "above-one", "text", "nan"])
def test_cli_bad_latency_is_a_one_line_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _parse(["compress", "mlp", "-o", "x.safetensors", "--latency", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--latency" in err[0] and "expected a number in (0, 1]" in err[0]


def test_cli_latency_with_explicit_sizes_or_no_latency_is_refused() -> None:
    from lowrank_sparse.cli import compress as cli_compress
    from lowrank_sparse.cli.output import CLIError

    with pytest.raises(CLIError, match="exclude each other"):
        cli_compress._check_target(_parse(["compress", "mlp", "-o", "x", "--latency", "0.5", "--rank", "3"]))
    with pytest.raises(CLIError, match="drop --no-latency"):
        cli_compress._check_target(_parse(["compress", "mlp", "-o", "x", "--latency", "0.5", "--no-latency"]))


# ----------------------------------------------------------------------------- a real run
def test_real_run_on_a_small_mlp_meets_its_predicted_budget() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    x = torch.randn(256, 32)
    lm = LatencyModel.of_model(model, x[:64], rounds=3)
    assert lm.inputs["2"][0] == (64, 128) and lm.model_seconds > 0
    target = 0.8
    try:
        new, report = lrs.compress(model, x, Budget(latency=target, latency_model=lm), max_iter=20, progress=False)
    except InfeasibleBudget as e:  # a busy machine's timings put 0.8 below the floor: aim above the floor it found
        assert e.budget == "latency" and e.reachable is not None and e.reachable > target
        target = min(0.99, e.reachable + 0.05)
        new, report = lrs.compress(model, x, Budget(latency=target, latency_model=lm), max_iter=20, progress=False)
    assert report.target == {"params": None, "macs": None, "latency": target}
    pred = lm.prediction
    assert pred is not None and pred["target"] == target
    assert set(pred["layers"]) == {"2", "4"}  # first and last layers kept by default
    # the constraint, recomputed from the model's own pieces
    total = pred["rest_seconds"] + sum(v["seconds"] for v in pred["layers"].values())
    assert pred["seconds"] == pytest.approx(total)
    assert pred["ratio"] <= target * (1 + 1e-12)
    assert pred["dense_seconds"] >= pred["seconds"]
    with torch.no_grad():
        assert new(x).shape == (256, 10)


def test_cli_reports_predicted_beside_measured_ratio() -> None:
    from lowrank_sparse.cli import compress as cli_compress

    lm = LatencyModel()
    lm.prediction = {"target": 0.5, "ratio": 0.48, "layers": {"a": {"seconds": 1.0, "form": "pair"},
                                                              "b": {"seconds": 2.0, "form": "original"}}}
    result: dict = {"latency_ratio": 0.61}
    cli_compress._predicted_latency(result, lm)
    assert result["latency_ratio_predicted"] == 0.48 and result["latency_target"] == 0.5
    assert result["latency_predicted_forms"] == {"a": "pair", "b": "original"}
    none: dict = {}
    cli_compress._predicted_latency(none, None)
    assert none == {}
