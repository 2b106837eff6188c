"""compress(executor=RayExecutor(...)) on a local 2-CPU Ray cluster: the result equals
the serial run bitwise, an interrupted run resumes from its checkpoint, a killed worker
is survived, a folder of another run is refused, tasks use the CPUs they were given."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'lowrank_sparse[ray]')")

import lowrank_sparse as lrs  # noqa: E402
from lowrank_sparse.compress import methods as M  # noqa: E402
from lowrank_sparse.executors import RayExecutor  # noqa: E402
from lowrank_sparse.models import build  # noqa: E402

ORIG = M.get_method("lowrank_sparse")
KW = dict(rank=3, density=0.05, max_iter=15, progress=False, keep_first_last=False)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this file
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return build("mlp", in_features=32, hidden=(40, 36, 28), num_classes=10)


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return torch.randn(64, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(mlp, data):
    return lrs.compress(mlp, data, **KW)


@pytest.fixture
def handler():
    """Install a replacement handler for "lowrank_sparse"; the original comes back after."""
    def install(solve: Callable[[Any, Any], Any]) -> None:
        M.register_method("lowrank_sparse", ORIG.config_cls, solve, allocation_mode=ORIG.allocation_mode, gated_objective=ORIG.gated_objective,
                          solver_split=ORIG.solver_split)
    yield install
    M.register_method("lowrank_sparse", ORIG.config_cls, ORIG.solve, allocation_mode=ORIG.allocation_mode, gated_objective=ORIG.gated_objective,
                      solver_split=ORIG.solver_split)


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _log(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def test_ray_equals_serial_bitwise(mlp, data, reference):
    new, rep = lrs.compress(mlp, data, executor=RayExecutor(), **KW)
    _assert_same(new, reference[0])
    assert [(r.name, r.iterations, r.output_error_after) for r in rep.layers] == \
           [(r.name, r.iterations, r.output_error_after) for r in reference[1].layers]
    assert ray.is_initialized()  # joined the running cluster, did not shut it down


def test_ray_equals_serial_with_a_budget_and_sequential(data):
    torch.manual_seed(3)
    cnn = build("small_cnn", in_channels=3, width=0.5)
    x = torch.randn(24, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    kw = dict(target=lrs.Budget(params=0.6), max_iter=10, progress=False, sequential=True)
    ref, _ = lrs.compress(cnn, x, **kw)
    new, _ = lrs.compress(cnn, x, executor="ray", **kw)
    _assert_same(new, ref)


def test_allocator_probes_run_on_the_workers(tmp_path, handler):
    """With a budget, the allocator's solver probes (several splits per layer) and the
    final solves all run in Ray workers, none in this process, and the result equals
    the serial one."""
    log = tmp_path / "pids"
    torch.manual_seed(5)
    net = build("mlp", in_features=32, hidden=(40, 36, 28), num_classes=10)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(6))
    kw = dict(target=lrs.Budget(params=0.5), max_iter=10, progress=False, keep_first_last=False)
    ref, ref_rep = lrs.compress(net, x, **kw)

    def solve(problem, config):
        _log(log, str(os.getpid()))
        return ORIG.solve(problem, config)

    handler(solve)
    new, rep = lrs.compress(net, x, executor=RayExecutor(), **kw)
    pids = log.read_text().split()
    assert len(pids) > len(rep.layers)  # probes of several splits, not only the final solves
    assert str(os.getpid()) not in pids
    _assert_same(new, ref)
    assert [(r.name, r.rank, r.density) for r in rep.layers] == [(r.name, r.rank, r.density) for r in ref_rep.layers]


def test_tasks_use_the_cpus_ray_gave_them(mlp, data, tmp_path, handler):
    log = tmp_path / "threads"

    def solve(problem, config):
        from lowrank_sparse.ops import threads as core

        _log(log, f"{torch.get_num_threads()} {core.get_num_threads()} "
                  f"{ray.get_runtime_context().get_assigned_resources().get('CPU')}")
        return ORIG.solve(problem, config)

    handler(solve)
    lrs.compress(mlp, data, executor=RayExecutor(cpus_per_task=2), **KW)
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 4 and set(lines) == {"2 2 2.0"}
    log.unlink()
    lrs.compress(mlp, data, executor=RayExecutor(cpus_per_task=1), **KW)
    assert set(log.read_text().split("\n")[:-1]) == {"1 1 1.0"}


def test_interrupted_run_resumes_and_is_not_retried(mlp, data, reference, tmp_path, handler):
    log, folder = tmp_path / "attempts", tmp_path / "ck"

    def solve(problem, config):
        _log(log, str(tuple(problem.weight.shape)))
        if tuple(problem.weight.shape) == (28, 36):  # the third layer
            raise ValueError("injected failure")
        return ORIG.solve(problem, config)

    handler(solve)
    with pytest.raises(ValueError, match="injected failure"):
        lrs.compress(mlp, data, executor=RayExecutor(max_retries=3), checkpoint_dir=folder, **KW)
    assert log.read_text().count("(28, 36)") == 1  # an exception is not retried
    finished = {p.name for p in (folder / "layers").iterdir()}
    assert "layers.5.safetensors" not in finished
    handler(ORIG.solve)
    new, _ = lrs.compress(mlp, data, executor=RayExecutor(), checkpoint_dir=folder, **KW)
    _assert_same(new, reference[0])


def _kill_when_reported(pid_file: Path, timeout: float = 30.0) -> threading.Thread:
    def watch() -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pid_file.exists() and pid_file.read_text().strip():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                return
            time.sleep(0.02)
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    return th


def test_killed_worker_is_retried_with_an_equal_result(mlp, data, reference, tmp_path, handler):
    pid_file, log = tmp_path / "pid", tmp_path / "attempts"

    def solve(problem, config):
        if tuple(problem.weight.shape) == (36, 40):
            _log(log, str(os.getpid()))
            if not pid_file.exists():  # first attempt: report the worker's pid, wait to be killed
                pid_file.write_text(str(os.getpid()))
                time.sleep(60)
        return ORIG.solve(problem, config)

    handler(solve)
    watcher = _kill_when_reported(pid_file)
    new, _ = lrs.compress(mlp, data, executor=RayExecutor(max_retries=2), **KW)
    watcher.join(5)
    pids = log.read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1]  # killed once, re-run in another worker
    _assert_same(new, reference[0])


def test_mismatched_checkpoint_refused_on_ray(mlp, data, tmp_path):
    folder = tmp_path / "ck"
    lrs.compress(mlp, data, executor="ray", checkpoint_dir=folder, **KW)
    with pytest.raises(ValueError, match=r"mismatched fields: config"):
        lrs.compress(mlp, data, executor="ray", checkpoint_dir=folder, **dict(KW, density=0.1))


def test_ray_executor_arguments_checked():
    with pytest.raises(ValueError, match="cpus_per_task"):
        RayExecutor(cpus_per_task=0)
    with pytest.raises(ValueError, match="max_retries"):
        RayExecutor(max_retries=-1)


def test_cli_ray_and_checkpoint_dir_flags(tmp_path):
    from lowrank_sparse.cli.app import build_parser
    from lowrank_sparse.cli.compress import _executor

    p = build_parser()
    base = ["compress", "mlp", "-o", str(tmp_path / "m.safetensors"), "--rank", "2"]
    a = p.parse_args(base + ["--ray", "--checkpoint-dir", str(tmp_path / "ck")])
    ex = _executor(a)
    assert isinstance(ex, RayExecutor) and ex.address is None and a.checkpoint_dir == str(tmp_path / "ck")
    assert _executor(p.parse_args(base + ["--ray", "auto"])).address == "auto"
    none = p.parse_args(base)
    assert _executor(none) == "serial" and none.checkpoint_dir is None
