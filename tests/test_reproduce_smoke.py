"""Smoke test of reproduce/sweep.py + reproduce/tables.py on a tiny configuration.

SmallCNN trained on scikit-learn's digits (the sweep's "smoke" schedule), one parameter
budget, two methods: the sweep must write one "ok" row per run, skip them when re-run, and
the table must show numbers that agree with an independent evaluation of a saved model
(plain torch forward pass + argmax, plain parameter count).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", REPO / "reproduce" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


sweep = _load("sweep")
tables = _load("tables")


@pytest.mark.parametrize(
    "token, expected",
    [("p50", {"params": 0.5}), ("f25", {"macs": 0.25}), ("p20f50", {"params": 0.2, "macs": 0.5}),
     ("P33", {"params": 0.33})],
    ids=["params", "macs", "both", "upper-case"],
)
def test_parse_budget(token, expected):
    assert sweep.parse_budget(token) == pytest.approx(expected)


@pytest.mark.parametrize("token", ["", "x50", "p0", "p100", "50", "f"], ids=["empty", "letter", "zero", "all", "bare", "no-number"])
def test_parse_budget_rejects(token):
    with pytest.raises(Exception, match="budget"):
        sweep.parse_budget(token)


def smoke_argv(tmp: Path, out: Path, methods: str | None = "rank_only,sparse_only") -> list[str]:
    """The tiny sweep's arguments: SmallCNN on digits, p50, uniform allocation."""
    argv = ["--models", "small_cnn", "--dataset", "digits", "--schedule", "smoke", "--budgets", "p50",
            "--allocations", "uniform", "--calib", "128", "--sample-size", "512", "--test-subset", "all",
            "--ft-subset", "300", "--latency-runs", "2", "--latency-batch", "8", "--out", str(out),
            "--save-dir", str(tmp / "models")]
    return argv + (["--methods", methods] if methods else [])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Run the tiny sweep once (trains SmallCNN on digits for a few seconds)."""
    tmp = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setenv("LOWRANK_SPARSE_CACHE", str(tmp / "cache"))
    threads = torch.get_num_threads()
    out = tmp / "rows.jsonl"
    argv = smoke_argv(tmp, out)
    try:
        rc = sweep.main(argv)
        lines_first = out.read_text().splitlines()
        rc2 = sweep.main(argv)  # everything done: must append nothing
        lines_second = out.read_text().splitlines()
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return {"tmp": tmp, "out": out, "rc": (rc, rc2), "first": lines_first, "second": lines_second}


def test_sweep_rows_and_resume(swept):
    assert swept["rc"] == (0, 0)
    rows = [json.loads(l) for l in swept["first"]]
    assert [(r["method"], r["status"]) for r in rows] == [("dense", "ok"), ("rank_only", "ok"), ("sparse_only", "ok")]
    assert swept["second"] == swept["first"], "a re-run must skip finished rows"
    for r in rows:
        assert r["seed"] == 0 and r["device"] == "cpu" and r["schedule"] == "smoke"
        assert r["command"].startswith("python reproduce/sweep.py --models small_cnn")
        assert r["latency"]["median_ms"] > 0
    for r in rows[1:]:
        assert 0 < r["params_after"] <= 0.5 * r["params_before"] * 1.01, "budget p50 not respected"
        assert r["macs_after"] < r["macs_before"]
        assert r["acc_before"] == rows[0]["acc_before"]
        assert r["layers"] and any(l["status"] == "compressed" for l in r["layers"])
    # the command of a row parses back to that single run
    args = sweep.build_parser().parse_args(rows[1]["command"].split()[2:])
    assert (args.models, args.budgets, args.methods, args.allocations) == (["small_cnn"], ["p50"], ["rank_only"], ["uniform"])


def test_saved_model_matches_row(swept):
    """Independent check: reload a saved model, evaluate it with a plain forward pass."""
    import lowrank_sparse as lrs
    from lowrank_sparse import data

    row = [json.loads(l) for l in swept["first"]][1]
    model = lrs.load(row["model_file"]).eval()
    x, y = data.digits("test")
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).double().mean())
    assert acc == pytest.approx(row["acc_ft"], abs=1e-6)  # evaluate() averages in float32
    assert sum(p.numel() for p in model.parameters()) == row["params_after"]
    # the model before fine-tuning is saved too and gives the "no FT" accuracy
    pre = Path(row["model_file"].replace("-final.safetensors", "-compressed.safetensors"))
    m0 = lrs.load(pre).eval()
    with torch.no_grad():
        acc0 = float((m0(x).argmax(1) == y).double().mean())
    assert acc0 == pytest.approx(row["acc_after"], abs=1e-6)  # evaluate() averages in float32


def test_tables_render(swept):
    out_dir = swept["tmp"] / "docs"
    assert tables.main(["--jsonl", str(swept["out"]), "--out-dir", str(out_dir)]) == 0
    text = (out_dir / "results.md").read_text()
    rows = [json.loads(l) for l in swept["first"]]
    assert "## SmallCNN" in text
    for r in rows[1:]:
        line = next(l for l in text.splitlines() if l.startswith("| ") and f"| {r['method']} | uniform |" in l)
        assert f"| {100 * r['acc_after']:.2f} | {100 * r['acc_ft']:.2f} |" in line
        assert f"{r['params_after'] / r['params_before']:.3f}" in line
        assert r["command"] in line
    # the grid at a glance: one line per (budget, allocation), "no FT / FT" per method
    grid = [r for r in rows[1:] if r["method"] in tables.GRID_METHODS]
    assert len(grid) == 2  # rank_only and sparse_only at p50, uniform
    gline = next(l for l in text.splitlines() if l.startswith("| 50% params | uniform |"))
    cols = [c.strip() for c in gline.strip("|").split("|")]
    assert cols[2] == "-"  # no L + S run in this sweep
    for r, cell in zip(grid, cols[3:5]):
        assert cell.startswith(f"{100 * r['acc_after']:.2f} / ") and f"{100 * r['acc_ft']:.2f}" in cell
    png = out_dir / "small_cnn_acc_vs_params.png"


@pytest.fixture(scope="module")
def distilled(swept):
    """The same sweep with --ft-recipe distill, for seed 0 (its dense row and compressed
    models exist) and seed 1 (a new SmallCNN), appended to the same results file."""
    tmp, out = swept["tmp"], swept["out"]
    mp = pytest.MonkeyPatch()
    mp.setenv("LOWRANK_SPARSE_CACHE", str(tmp / "cache"))
    threads = torch.get_num_threads()
    base = smoke_argv(tmp, out) + ["--ft-recipe", "distill"]
    try:
        rcs = [sweep.main(base + ["--seed", s]) for s in ("0", "1")]
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    return {"rc": rcs, "rows": rows, "new": rows[len(swept["first"]):]}


def test_distill_recipe_rows(distilled, swept):
    """Distillation rows are new runs (their own key and final file); seed 0 reuses its dense
    row; the compressed model before fine-tuning is the same as under the CE recipe."""
    import lowrank_sparse as lrs
    from lowrank_sparse import data

    assert distilled["rc"] == [0, 0]
    new = distilled["new"]
    assert all("compressed_from" not in r for r in new[2:])  # seed 1: nothing to reuse
    assert [(r["seed"], r["method"], r.get("ft_recipe")) for r in new] == [
        (0, "rank_only", "distill"), (0, "sparse_only", "distill"),
        (1, "dense", "ce"), (1, "rank_only", "distill"), (1, "sparse_only", "distill")]
    ce = {r["method"]: r for r in (json.loads(l) for l in swept["first"])}
    x, y = data.digits("test")
    for r in new[:2]:
        assert r["acc_after"] == ce[r["method"]]["acc_after"]
        # the CE run's compression is reused, with its seconds and report fields
        assert r["compressed_from"].endswith("-compressed.safetensors")
        assert (r["compress_seconds"], r["layers"]) == (ce[r["method"]]["compress_seconds"], ce[r["method"]]["layers"])
        assert r["model_file"] != ce[r["method"]]["model_file"]
        with torch.no_grad():
            acc = float((lrs.load(r["model_file"]).eval()(x).argmax(1) == y).double().mean())
        assert acc == pytest.approx(r["acc_ft"], abs=1e-6)
        args = sweep.build_parser().parse_args(r["command"].split()[2:])
        assert args.ft_recipe == "distill" and args.seed == 0


def test_seeds_summary_of_a_real_sweep(distilled):
    """reproduce/seeds.py over the two distillation seeds equals the statistics module's
    mean and sample deviation of the rows' accuracies."""
    import statistics

    seeds = _load("seeds")
    summary = seeds.summarise(distilled["rows"])
    cell = ("small_cnn", "digits", "smoke", "p50", "uniform", "unstructured", "distill")
    assert set(summary[cell]) == {"rank_only", "sparse_only"}
    for method in ("rank_only", "sparse_only"):
        vals = [r["acc_ft"] for r in distilled["new"] if r["method"] == method]
        m, s, n = summary[cell][method]["acc_ft"]
        assert (m, s, n) == pytest.approx((statistics.mean(vals), statistics.stdev(vals), 2))
    ce_cell = cell[:-1] + ("ce",)
    assert summary[ce_cell]["rank_only"]["seeds"] == [0]  # the CE rows stay a cell of their own
    text = seeds.render(distilled["rows"])
    assert "fine-tuning: distill" in text and "fine-tuning: ce" in text


def test_proxy_method_keeps_the_candidate_its_short_distillation_ranks_first(distilled, swept):
    """Method "proxy": both candidates compressed, the one with the smaller held-out KL
    after the short distillation kept (same model as that candidate's own compression)."""
    tmp, out = swept["tmp"], swept["out"]
    mp = pytest.MonkeyPatch()
    mp.setenv("LOWRANK_SPARSE_CACHE", str(tmp / "cache"))
    threads = torch.get_num_threads()
    base = smoke_argv(tmp, out, methods=None) + ["--ft-recipe", "distill"]
    try:
        n0 = len(out.read_text().splitlines())
        assert sweep.main(base + ["--methods", "lowrank_sparse,proxy", "--proxy-images", "100"]) == 0
        assert sweep.main(base + ["--methods", "proxy", "--proxy-images", "200", "--seed", "1"]) == 1  # recorded failure
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    rows = [json.loads(l) for l in out.read_text().splitlines()][n0:]
    ls, px, bad = rows[0], rows[1], rows[-1]
    assert (ls["method"], px["method"], ls["status"], px["status"]) == ("lowrank_sparse", "proxy", "ok", "ok")
    rec = px["proxy"]
    assert set(rec["kl_after"]) == {"lowrank_sparse", "sparse_only"} and rec["images"] == 100
    assert rec["chosen"] == min(rec["kl_after"], key=rec["kl_after"].get)
    own = ls if rec["chosen"] == "lowrank_sparse" else next(
        r for r in distilled["new"] if r["method"] == "sparse_only" and r["seed"] == 0)
    assert (px["params_after"], px["acc_after"]) == (own["params_after"], own["acc_after"])
    # both candidates' own saved compressions are reused: their seconds plus the choice's
    sp = next(r for r in distilled["new"] if r["method"] == "sparse_only" and r["seed"] == 0)
    assert px["compress_seconds"] == pytest.approx(ls["compress_seconds"] + sp["compress_seconds"] + rec["seconds"])
    assert bad["status"] == "failed" and "--proxy-images 200" in bad["error"]
