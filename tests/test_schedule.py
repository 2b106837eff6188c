"""The layer schedule: dependencies between layers, and a result independent of the
order in which an executor finishes its tasks (no Ray needed)."""

from __future__ import annotations

from typing import Any, Hashable

import pytest
import torch
import torch.nn as nn

import lowrank_sparse as lrs
from lowrank_sparse.compress.dependencies import layer_ancestors
from lowrank_sparse.executors import Executor, SerialExecutor, resolve_executor


class Block(nn.Module):
    """q, k, v read the same input; o reads their combination; an in-place ReLU."""

    def __init__(self, d: int = 24) -> None:
        super().__init__()
        self.inp = nn.Linear(16, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.head = nn.Linear(d, 10)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x))
        a = torch.softmax(self.q(h) * self.k(h), dim=-1) * self.v(h)
        return self.head(self.act(self.o(a)) + h)


class LastFirst(Executor):
    """Holds up to 4 tasks and finishes the most recent one first."""

    max_in_flight = 4

    def __init__(self) -> None:
        self.tasks: list[tuple[Hashable, Any, Any]] = []
        self.order: list[Hashable] = []

    def submit(self, key: Hashable, fn: Any, payload: Any) -> None:
        self.tasks.append((key, fn, payload))

    def pending(self) -> int:
        return len(self.tasks)

    def next_done(self) -> tuple[Hashable, Any]:
        key, fn, payload = self.tasks.pop()
        self.order.append(key)
        return key, fn(payload)


@pytest.fixture(scope="module")
def block() -> nn.Module:
    torch.manual_seed(0)
    return Block()


def test_ancestors_of_a_branching_block(block):
    names = ["inp", "q", "k", "v", "o", "head"]
    x = torch.randn(4, 16)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    anc = layer_ancestors(block, names, x)
    assert anc == {"inp": set(), "q": {"inp"}, "k": {"inp"}, "v": {"inp"}, "o": {"inp", "q", "k", "v"},
                   "head": {"inp", "q", "k", "v", "o"}}
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
    assert not any(p.grad is not None for p in block.parameters())


def test_untraceable_forward_falls_back_to_module_order():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no")

    assert layer_ancestors(Bad(), ["a", "b"], torch.randn(2, 4)) == {"a": set(), "b": {"a"}}


@pytest.mark.parametrize("sequential", [False, True])
def test_out_of_order_executor_gives_the_serial_result(block, sequential):
    data = torch.randn(48, 16, generator=torch.Generator().manual_seed(2))
    kw = dict(rank=3, density=0.05, max_iter=10, progress=False, keep_first_last=False, sequential=sequential)
    ref, ref_rep = lrs.compress(block, data, **kw)
    ex = LastFirst()
    new, rep = lrs.compress(block, data, executor=ex, **kw)
    sa, sb = ref.state_dict(), new.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r.output_error_after for r in rep.layers] == [r.output_error_after for r in ref_rep.layers]
    assert ex.order != [r.name for r in rep.layers]  # the tasks really finished out of order
    if sequential:  # o waits for q, k, v; q, k, v were in flight together (v first)
        assert ex.order.index("o") > max(ex.order.index(n) for n in "qkv")
        assert ex.order.index("v") < ex.order.index("q")


def test_resolve_executor():
    assert isinstance(resolve_executor("serial"), SerialExecutor)
    assert isinstance(resolve_executor(None), SerialExecutor)
    ex = LastFirst()
    assert resolve_executor(ex) is ex
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        resolve_executor("dask")
    with pytest.raises(TypeError, match="executor must be"):
        resolve_executor(3)
