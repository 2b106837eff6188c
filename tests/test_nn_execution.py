"""plan_execution: every form is exact against the dense L + S product, the planner never
keeps a form slower than dense (fake timers), the stored model is left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as hs
from torch import nn

from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from lowrank_sparse.nn.execution import (
    FORMS,
    MEMORY_FORMATS,
    choose_memory_format,
    clear_execution,
    plan_execution,
    set_memory_format,
)
from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure

KINDS = ["unstructured", "row", "column", "channel", "2:4"]


def _dec(m: int, n: int, rank: int, kind: str, block: int, g: torch.Generator) -> Decomposition:
    st = parse_structure(kind, block=block)
    S = torch.randn(m, n, generator=g)
    if kind == "unstructured":
        S = S * (torch.rand(m, n, generator=g) < 0.2)
    elif kind == "row":
        S = S * (torch.rand(m, 1, generator=g) < 0.3)
    elif kind == "column":
        S = S * (torch.rand(1, n, generator=g) < 0.3)
    elif kind == "channel":
        S = S * (torch.rand(1, n // block, generator=g) < 0.3).repeat_interleave(block, dim=1)
    else:
        keep = torch.rand(m, n // 4, 4, generator=g).argsort(dim=2)[..., :2]
        S = S * torch.zeros(m, n // 4, 4, dtype=torch.bool).scatter(2, keep, True).reshape(m, n)
    U, V = torch.randn(m, rank, generator=g), torch.randn(rank, n, generator=g)
    return Decomposition(U, V, S, st, SolveInfo())


class Net(nn.Module):
    """conv -> relu -> linear, both compressed."""

    def __init__(self, kind: str, g: torch.Generator) -> None:
        super().__init__()
        conv = nn.Conv2d(4, 8, 3, padding=1)
        self.dc = _dec(8, 36, 2, kind, 9, g)
        self.conv = LowRankSparseConv2d.from_conv(conv, self.dc)
        self.df = _dec(10, 8 * 5 * 5, 3, kind if kind != "channel" else "column", 1, g)
        self.fc = LowRankSparseLinear.from_decomposition(self.df, torch.randn(10, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _reference(net: Net, x: torch.Tensor) -> torch.Tensor:
    """The dense product with U V + S of the decompositions the pairs were built from."""
    dc, df = net.dc, net.df
    Wc = (dc.U @ dc.V + dc.S).view(8, 4, 3, 3)
    h = torch.relu(F.conv2d(x, Wc, net.conv.bias, padding=1)).flatten(1)
    return F.linear(h, df.U @ df.V + df.S, net.fc.bias)


def _fake(times: dict[str, float]):
    calls = []

    def timer(mod, x, form):
        from lowrank_sparse.nn.execution import _set_form

        _set_form(mod, form)
        calls.append((type(mod).__name__, form))
        return times[form]

    return timer, calls


@pytest.fixture
def x(tgen) -> torch.Tensor:
    return torch.randn(3, 4, 5, 5, generator=tgen)


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to float32 rounding of a differently ordered sum (scaled to the output)."""
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


@pytest.mark.parametrize("layout", MEMORY_FORMATS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", FORMS)
def test_every_form_equals_the_dense_product(kind, form, layout, x, tgen):
    net = Net(kind, tgen).eval()
    timer, _ = _fake({"pair": 1.0, "dense": 2.0} if form == "pair" else {"pair": 2.0, "dense": 1.0})
    plan = plan_execution(net, x, timer=timer, rounds=3, min_seconds=0.0, cache=False, memory_format=layout)
    assert set(plan.forms().values()) == {form} and plan.memory_format == layout
    with torch.no_grad():
        _close(net(x), _reference(net, x))
        _close(net(x.contiguous(memory_format=torch.channels_last)), _reference(net, x))


@settings(max_examples=40, deadline=None)
@given(pair=hs.floats(1e-6, 1.0), dense=hs.floats(1e-6, 1.0))
def test_planner_never_keeps_a_form_slower_than_dense(pair, dense):
    g = torch.Generator().manual_seed(0)
    net = Net("row", g)
    timer, _ = _fake({"pair": pair, "dense": dense})
    plan = plan_execution(net, torch.randn(2, 4, 5, 5, generator=g), timer=timer, rounds=3, min_seconds=0.0,
                          cache=False)
    for c in plan.layers:
        assert c.seconds[c.form] <= c.seconds["dense"]
        assert c.form == ("pair" if pair < dense else "dense")


def test_stored_model_unchanged_and_training_uses_the_pair(x, tgen):
    net = Net("unstructured", tgen)
    before = copy.deepcopy(net.state_dict())
    timer, _ = _fake({"pair": 2.0, "dense": 1.0})
    plan_execution(net, x, timer=timer, rounds=3, min_seconds=0.0, cache=False)
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert net.training  # the mode it was in is restored
    with torch.no_grad():
        net.fc.U.add_(1.0)  # training-time change: the pair form sees it, the merged weight does not
        net.df.U.add_(1.0)
        torch.testing.assert_close(net(x), _reference(net, x), rtol=1e-5, atol=1e-5)
        net.eval()
        assert not torch.allclose(net(x), _reference(net, x), rtol=1e-3, atol=1e-3)
        clear_execution(net)
        torch.testing.assert_close(net(x), _reference(net, x), rtol=1e-5, atol=1e-5)


def test_cache_reuses_an_identical_layers_choice(x, tgen):
    net = Net("row", tgen)
    timer, calls = _fake({"pair": 1.0, "dense": 2.0})
    first = plan_execution(net, x, timer=timer, rounds=3, min_seconds=0.0)
    n_first = len(calls)
    second = plan_execution(copy.deepcopy(net), x, timer=timer, rounds=3, min_seconds=0.0)
    assert n_first > 0 and len(calls) == n_first  # not timed again
    assert first.forms() == second.forms() and "pair ms" in second.table()


def test_real_timer_gives_a_form_per_layer(x, tgen):
    net = Net("channel", tgen).eval()
    plan = plan_execution(net, x, rounds=3, min_seconds=0.0, cache=False)
    assert [c.name for c in plan.layers] == ["conv", "fc"]
    assert all(c.form in FORMS and c.seconds["pair"] > 0 and c.seconds["dense"] > 0 for c in plan.layers)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _reference(net, x), rtol=1e-5, atol=1e-5)


class _KeywordNet(nn.Module):
    """Takes its input by keyword, as a Hugging Face model takes a tokenizer's output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values)


def test_a_dict_example_is_passed_as_keywords():
    g = torch.Generator().manual_seed(0)
    net = _KeywordNet(Net("row", g))
    timer, _ = _fake({"pair": 1.0, "dense": 2.0})
    x = torch.randn(2, 4, 5, 5, generator=g)
    plan = plan_execution(net, {"pixel_values": x}, timer=timer, rounds=3, min_seconds=0.0, cache=False)
    assert [c.name for c in plan.layers] == ["inner." + n for n, m in net.inner.named_modules()
                                             if isinstance(m, (LowRankSparseConv2d, LowRankSparseLinear))]
    assert all(c.form == "pair" for c in plan.layers)


def _format_timer(times: dict[str, float]):
    calls = []

    def timer(model, example, layout):
        calls.append(layout)
        return times[layout]

    return timer, calls


@pytest.mark.parametrize("faster", MEMORY_FORMATS)
def test_memory_format_is_the_faster_one_and_keeps_the_outputs(faster, x, tgen):
    net = Net("unstructured", tgen).eval()
    with torch.no_grad():
        before_out = net(x)
    before = copy.deepcopy(net.state_dict())
    slow = {"contiguous": 2.0, "channels_last": 2.0, faster: 1.0}
    ftimer, calls = _format_timer(slow)
    seen = []

    def timer(mod, xin, form):
        if isinstance(mod, LowRankSparseConv2d):
            seen.append(mod.V.is_contiguous(memory_format=torch.channels_last) and not mod.V.is_contiguous())
        return _fake({"pair": 2.0, "dense": 1.0})[0](mod, xin, form)

    plan = plan_execution(net, x, timer=timer, format_timer=ftimer, rounds=3, min_seconds=0.0, cache=False)
    assert plan.memory_format == faster and set(plan.format_seconds) == set(MEMORY_FORMATS)
    assert set(calls) == set(MEMORY_FORMATS)
    cl = faster == "channels_last"
    assert net.conv.V.is_contiguous(memory_format=torch.channels_last) == cl
    assert net.conv._merged_weight.is_contiguous(memory_format=torch.channels_last) == cl
    assert seen and all(v == cl for v in seen)  # the conv pair was timed in the layout it runs in
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        _close(net(x), before_out)
    assert "memory format: " + faster in plan.table()


def test_equal_times_keep_the_contiguous_format(x, tgen):
    net = Net("row", tgen)
    layout, med = choose_memory_format(net, x, timer=_format_timer({"contiguous": 1.0, "channels_last": 1.0})[0],
                                       rounds=3, min_seconds=0.0)
    assert layout == "contiguous" and med == {"contiguous": 1.0, "channels_last": 1.0}
    assert not net.conv.V.is_contiguous(memory_format=torch.channels_last)


def test_inputs_that_are_not_images_are_not_timed(tgen):
    lin = nn.Sequential(LowRankSparseLinear.from_decomposition(_dec(6, 8, 2, "unstructured", 1, tgen)))
    timer, calls = _format_timer({"contiguous": 1.0, "channels_last": 0.5})
    assert choose_memory_format(lin, torch.randn(3, 8, generator=tgen), timer=timer) == ("contiguous", {})
    assert calls == []


def test_unknown_memory_format_is_refused(x, tgen):
    net = Net("row", tgen)
    with pytest.raises(ValueError, match="memory_format"):
        plan_execution(net, x, memory_format="nhwc")
    with pytest.raises(ValueError, match="memory_format"):
        set_memory_format(net, "preserve")


def test_wall_clock_timing_warms_each_form_and_merges_once_per_switch(x, tgen, monkeypatch):
    """Each timed call of a form follows an untimed one in that form, and the merged weight
    is formed only when the form switches to dense (not on every timed call)."""
    from lowrank_sparse.nn import execution as ex

    mod = Net("channel", tgen).eval().conv
    calls: list[str] = []
    h = mod.register_forward_pre_hook(
        lambda m, a: calls.append("pair" if getattr(m, "_merged_weight", None) is None else "dense"))
    merges = []
    real = ex._merged
    monkeypatch.setattr(ex, "_merged", lambda m, w: merges.append(1) or real(m, w))
    rounds = 3
    try:
        ex._measure(mod, torch.randn(2, *x.shape[1:], generator=tgen), ex.time_forms, rounds=rounds, min_seconds=0.0)
    finally:
        h.remove()
    assert len(calls) == len(FORMS) * (1 + 2 * rounds)
    timed = calls[len(FORMS):]
    assert all(timed[i] == timed[i + 1] for i in range(0, len(timed), 2))  # warm call, then the timed one
    switches_to_dense = sum(1 for a, b in zip(["pair"] + calls, calls) if b == "dense" and a != "dense")
    assert len(merges) == switches_to_dense
