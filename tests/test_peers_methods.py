"""The peers as compress() methods ("wanda", "sparsegpt", "svd_llm", "oats"): every
compressed layer against a direct call of the peer function on that layer's weight
and the Gram matrix of its inputs (collected here with a forward hook), parameter
counts against hand formulas, budgets against an independent count of the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lowrank_sparse as lrs
from lowrank_sparse import peers
from lowrank_sparse.cli.app import build_parser
from lowrank_sparse.nn import LowRankSparseLinear

LAYERS = ("2", "4")  # "0" and "5" are kept dense (first / last); "2" feeds a ReLU, "4" a Linear


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 48),
                         nn.Linear(48, 8))


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Sequential, torch.Tensor, dict[str, torch.Tensor]]:
    model = _model()
    calib = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    inputs: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, args, out, n=n: inputs.__setitem__(n, args[0].detach().double())) for n in LAYERS]
    with torch.no_grad():
        model(calib)
    for h in hooks:
        h.remove()
    grams = {n: x.T @ x / x.shape[0] for n, x in inputs.items()}  # (n, n) = X X^T / N
    return model, calib, grams


#: method -> (compress keywords, direct call(W, G), hand count of a layer's parameters (m, n))
CASES = {
    "wanda": (dict(density=0.4),
              lambda W, G: peers.wanda(W, 0.4, gram=G),
              lambda m, n: m * int(0.4 * n + 0.5) + m),
    "sparsegpt": (dict(config=lrs.SparseGPTConfig(density=0.4, block_size=16)),
                  lambda W, G: peers.sparsegpt(W, 0.4, gram=G, block_size=16),
                  lambda m, n: m * (n // 16) * int(0.4 * 16 + 0.5) + m),
    "svd_llm": (dict(rank=6),
                lambda W, G: peers.whitened_svd(W, 6, gram=G),
                lambda m, n: 6 * (m + n) + m),
    "oats": (dict(config=lrs.OATSConfig(rank=4, density=0.1, iters=10)),
             lambda W, G: peers.oats(W, 4, 0.1, gram=G, iters=10),
             lambda m, n: 4 * (m + n) + m * int(0.1 * n + 0.5) + m),
}


def _count(mod: nn.Module) -> int:
    """Stored values of a model, counted here: dense parameters, and for a pair module
    its factors, bias and the nonzeros of S."""
    if isinstance(mod, LowRankSparseLinear):
        own = sum(p.numel() for p in (mod.U, mod.V, mod.bias) if p is not None)
        return own + (0 if mod.sparse is None else int((mod.sparse.to_dense() != 0).sum()))
    return sum(p.numel() for p in mod.parameters(recurse=False)) + sum(_count(c) for c in mod.children())


def _dense_parts(mod: LowRankSparseLinear) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = mod.out_features, mod.in_features
    L = mod.low_rank_dense().detach() if mod.U is not None else torch.zeros(m, n)
    S = mod.sparse.to_dense().detach() if mod.sparse is not None else torch.zeros(m, n)
    return L, S


@pytest.mark.parametrize("name", list(CASES))
def test_explicit_sizes_equal_direct_peer_calls(name: str, setup) -> None:
    model, calib, grams = setup
    kwargs, direct, count = CASES[name]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, rep = lrs.compress(model, calib, method=name if "config" not in kwargs else None, **kwargs)
    assert rep.method == name
    for layer in LAYERS:
        orig, mod = model.get_submodule(layer), new.get_submodule(layer)
        assert isinstance(mod, LowRankSparseLinear)
        m, n = orig.weight.shape
        assert mod.num_params() == count(m, n) == _count(mod)
        want = direct(orig.weight.detach(), grams[layer])
        L, S = _dense_parts(mod)
        scale = float(orig.weight.detach().abs().max())
        assert torch.equal(S != 0, torch.as_tensor(want.S) != 0)  # the same mask
        torch.testing.assert_close(S, torch.as_tensor(want.S), rtol=0, atol=1e-4 * scale)
        torch.testing.assert_close(L, torch.as_tensor(want.U @ want.V), rtol=0, atol=1e-4 * scale)
        assert torch.equal(mod.bias, orig.bias)
    for k, v in model.state_dict().items():  # the input model is unchanged
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", list(CASES))
def test_budget_meets_the_target(name: str, setup) -> None:
    model, calib, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, rep = lrs.compress(model, calib, lrs.Budget(params=0.5), method=name)
    ratio = _count(new) / sum(p.numel() for p in model.parameters())
    assert ratio == pytest.approx(0.5, rel=0.02), ratio
    assert ratio == pytest.approx(rep.params_ratio, abs=1e-12)
    assert all(isinstance(new.get_submodule(n), LowRankSparseLinear) for n in LAYERS)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_config_and_keywords_agree(setup) -> None:
    model, calib, _ = setup
    a, _ = lrs.compress(model, calib, config=lrs.WandaConfig(density=0.5))
    b, rep = lrs.compress(model, calib, method="wanda", density=0.5)
    assert rep.method == "wanda"
    for n in LAYERS:
        assert torch.equal(_dense_parts(a.get_submodule(n))[1], _dense_parts(b.get_submodule(n))[1])


@pytest.mark.parametrize("name", ["wanda", "sparsegpt"])
def test_nm_structure_holds_in_every_group(name: str, setup) -> None:
    model, calib, _ = setup
    new, _ = lrs.compress(model, calib, method=name, density=0.5, structure="2:4")
    for n in LAYERS:
        S = _dense_parts(new.get_submodule(n))[1]
        assert bool(((S != 0).reshape(S.shape[0], -1, 4).sum(dim=2) == 2).all())


def test_bad_names_and_structures_are_rejected(setup) -> None:
    model, calib, _ = setup
    with pytest.raises(ValueError, match=r"unknown method 'svdllm'; known methods: .*wanda, sparsegpt, svd_llm, oats"):
        lrs.compress(model, calib, density=0.5, method="svdllm")
    with pytest.raises(ValueError, match=r"'wanda' takes structure 'unstructured' .* got 'row'"):
        lrs.compress(model, calib, density=0.5, method="wanda", structure="row")
    with pytest.raises(ValueError, match="has no sparse part"):
        lrs.compress(model, calib, density=0.5, method="svd_llm")
    with pytest.raises(ValueError, match="block_size"):
        lrs.SparseGPTConfig(block_size=0)


def test_cli_offers_the_peer_methods() -> None:
    args = build_parser().parse_args(["compress", "mlp", "-o", "x.safetensors", "--method", "sparsegpt"])
    assert args.method == "sparsegpt"
