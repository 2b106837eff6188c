"""The gated MLP objective (lowrank_sparse.calibrate.gated): its weights against the
product's definition, the separable Gram against the exact per-row form, what
calibrate() collects on a Llama-style model, and what it buys in compress()."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lowrank_sparse as ls
from lowrank_sparse.calibrate import CalibrationConfig, calibrate
from lowrank_sparse.calibrate.activation import ActivationInfo
from lowrank_sparse.calibrate.gated import GatedAccumulator, gated_blocks, gated_weights

transformers = pytest.importorskip("transformers")

ACTS = {
    "silu": (ActivationInfo("silu"), torch.nn.functional.silu),
    "gelu": (ActivationInfo("gelu"), torch.nn.functional.gelu),
    "tanh": (ActivationInfo("tanh"), torch.tanh),
    "leaky_relu": (ActivationInfo("leaky_relu", negative_slope=0.1), lambda v: torch.nn.functional.leaky_relu(v, 0.1)),
}


@pytest.fixture
def branches():
    gen = torch.Generator().manual_seed(0)
    n, m, N = 12, 20, 300
    x = torch.randn(N, n, generator=gen, dtype=torch.float64)
    G = torch.randn(m, n, generator=gen, dtype=torch.float64) / n**0.5
    U = torch.randn(m, n, generator=gen, dtype=torch.float64) / n**0.5
    D = torch.randn(m, n, generator=gen, dtype=torch.float64) / n**0.5
    return x, G, U, D


@pytest.mark.parametrize("act", sorted(ACTS), ids=sorted(ACTS))
def test_up_weights_give_the_exact_error_in_the_product(branches, act):
    x, G, U, D = branches
    info, f = ACTS[act]
    g, u = x @ G.T, x @ U.T
    dh = f(g) * (x @ (U + D).T) - f(g) * u  # the change in h = act(Gx) * (Ux)
    _, w_up = gated_weights(g, u, info)
    assert torch.allclose((w_up * (x @ D.T) ** 2).sum(), dh.square().sum(), rtol=1e-12)


@pytest.mark.parametrize("act", sorted(ACTS), ids=sorted(ACTS))
def test_gate_weights_are_the_first_order_error_in_the_product(branches, act):
    x, G, U, D = branches
    info, f = ACTS[act]
    g, u = x @ G.T, x @ U.T
    w_gate, _ = gated_weights(g, u, info)
    predicted = (w_gate * (x @ D.T) ** 2).sum()
    gaps = []
    for eps in (1e-2, 1e-3, 1e-4):
        dh = f(x @ (G + eps * D).T) * u - f(g) * u
        gaps.append(float(abs(dh.square().sum() / eps**2 - predicted) / predicted))
    assert gaps[-1] < 1e-3
    if act != "leaky_relu":  # smooth: the gap shrinks linearly with eps
        assert gaps[2] < gaps[1] < gaps[0]


def test_separable_gram_is_proportional_to_the_exact_objective_for_rank_one_weights():
    gen = torch.Generator().manual_seed(1)
    n, m, N = 8, 10, 200
    x = torch.randn(N, n, generator=gen, dtype=torch.float64)
    r = torch.rand(N, generator=gen, dtype=torch.float64) + 0.1
    c = torch.rand(m, generator=gen, dtype=torch.float64) * 5 + 0.1
    w = r[:, None] * c[None, :]
    acc = GatedAccumulator()
    acc.add(x[:70], w[:70])
    acc.add(x[70:], w[70:])  # streamed in two batches
    scale, gram, mean = acc.finish()
    ratios = []
    for _ in range(3):
        D = torch.randn(m, n, generator=gen, dtype=torch.float64)
        exact = (w * (x @ D.T) ** 2).sum()
        approx = torch.einsum("i,ij,jk,ik->", scale**2, D, gram, D)
        ratios.append(float(exact / approx))
    assert max(ratios) / min(ratios) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(mean, (r[:, None] * x).sum(0) / r.sum())


def _llama(seed: int = 0, intermediate: int = 48):
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=intermediate, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, vocab_size=64,
                                   max_position_embeddings=32, hidden_act="silu")
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def _padded_batches(gen):
    ids = torch.randint(0, 64, (12, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[::2, 6:] = 0  # half the rows padded after 6 tokens
    return [{"input_ids": ids[i:i + 4], "attention_mask": mask[i:i + 4]} for i in range(0, 12, 4)]


def _mlp_inputs(model, batches, layer: int) -> torch.Tensor:
    """The real tokens' inputs of one MLP block, captured independently."""
    rows = []
    mlp = model.model.layers[layer].mlp
    h = mlp.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].detach()))
    with torch.no_grad():
        for b in batches:
            before = len(rows)
            model(**b)
            rows[before] = rows[before][b["attention_mask"].bool()]
    h.remove()
    return torch.cat(rows).to(torch.float64)


def test_calibrate_collects_the_gated_objective_of_each_branch():
    model = _llama()
    batches = _padded_batches(torch.Generator().manual_seed(2))
    cal = calibrate(model, batches)
    mlp = model.model.layers[1].mlp
    x = _mlp_inputs(model, batches, 1)
    g = x @ mlp.gate_proj.weight.detach().double().T  # float64 here, float32 in the model
    u = x @ mlp.up_proj.weight.detach().double().T
    a = torch.nn.functional.silu(g)
    da = torch.sigmoid(g) * (1 + g * (1 - torch.sigmoid(g)))
    for name, w in (("gate_proj", (da * u) ** 2), ("up_proj", a**2)):
        st = cal.layers[f"model.layers.1.mlp.{name}"]
        r = w.mean(1)
        assert st.count == x.shape[0]
        assert torch.allclose(st.gram, (x * r[:, None]).T @ x / r.sum(), rtol=1e-5, atol=1e-6)
        c = w.mean(0)
        assert torch.allclose(st.bn_scale, (c / c.mean()).sqrt(), rtol=1e-4)
        assert torch.all(st.bn_shift == 0)
        assert "error in act(gate x) * (up x)" in st.activation.note
    down = cal.layers["model.layers.1.mlp.down_proj"]
    h = a * u
    assert torch.allclose(down.gram, h.T @ h / h.shape[0], rtol=1e-4, atol=1e-8)
    assert down.bn_scale is None


def test_linear_override_keeps_the_input_gram():
    model = _llama()
    batches = _padded_batches(torch.Generator().manual_seed(3))
    cal = calibrate(model, batches, config=CalibrationConfig(gated_mlp="linear"))
    x = _mlp_inputs(model, batches, 0)
    st = cal.layers["model.layers.0.mlp.up_proj"]
    assert torch.allclose(st.gram, x.T @ x / x.shape[0], rtol=1e-6, atol=1e-9)
    assert st.bn_scale is None
    assert "not modelled" in st.activation.note


def test_one_branch_selected_still_sees_the_other():
    model = _llama()
    batches = _padded_batches(torch.Generator().manual_seed(4))
    only = calibrate(model, batches, layers=["model.layers.0.mlp.up_proj"])
    both = calibrate(model, batches)
    name = "model.layers.0.mlp.up_proj"
    assert torch.equal(only.layers[name].gram, both.layers[name].gram)
    assert torch.equal(only.layers[name].bn_scale, both.layers[name].bn_scale)


def test_unknown_activation_falls_back_to_linear():
    class Odd(nn.Module):
        def forward(self, v):
            return v * torch.sigmoid(2 * v)

    model = _llama()
    for layer in model.model.layers:
        layer.mlp.act_fn = Odd()
    assert gated_blocks(model)[0].activation is None
    cal = calibrate(model, _padded_batches(torch.Generator().manual_seed(5)))
    assert cal.layers["model.layers.0.mlp.gate_proj"].bn_scale is None


def _h_error(ref, new, ids) -> float:
    """Relative error of every down_proj input (the gated product) on held-out ids."""
    def grab(model):
        out = []
        hooks = [l.mlp.down_proj.register_forward_hook(lambda mod, inp, o: out.append(inp[0].detach()))
                 for l in model.model.layers]
        with torch.no_grad():
            model(input_ids=ids)
        for h in hooks:
            h.remove()
        return torch.cat([o.reshape(-1) for o in out])

    a, b = grab(ref), grab(new)
    return float((a - b).norm() / a.norm())


def test_product_objective_lowers_the_error_in_the_product():
    model = _llama(seed=6, intermediate=64)
    with torch.no_grad():  # gate rows of different scales, as trained gates have
        for layer in model.model.layers:
            s = torch.logspace(-1, 1, 64)[torch.randperm(64, generator=torch.Generator().manual_seed(7))]
            layer.mlp.gate_proj.weight.mul_(3 * s[:, None])
    gen = torch.Generator().manual_seed(8)
    cal = [{"input_ids": torch.randint(0, 64, (8, 16), generator=gen)} for _ in range(4)]
    held = torch.randint(0, 64, (16, 16), generator=gen)
    errs = {}
    for mode in ("linear", "product"):
        new, rep = ls.compress(model, cal, rank=6, density=0.1, include=["*gate_proj", "*up_proj"],
                               keep_first_last=False, calibration=CalibrationConfig(gated_mlp=mode))
        errs[mode] = _h_error(model, new, held)
        assert all(r.rank == 6 for r in rep.layers)  # the unscaling keeps rank and pattern
    assert errs["product"] < 0.8 * errs["linear"]


def test_peers_fit_the_linear_objective():
    model = _llama()
    batches = _padded_batches(torch.Generator().manual_seed(9))
    _, rep = ls.compress(model, batches, density=0.5, method="wanda", include=["*up_proj"], keep_first_last=False)
    assert all("not modelled" in r.note for r in rep.layers)
    _, rep = ls.compress(model, batches, rank=4, density=0.1, include=["*up_proj"], keep_first_last=False)
    assert all("error in act(gate x)" in r.note for r in rep.layers)


def test_bad_gated_mlp_value():
    with pytest.raises(ValueError, match="gated_mlp"):
        CalibrationConfig(gated_mlp="both")


def test_llama_under_a_layer_budget_saves_and_loads_with_equal_logits(tmp_path):
    from lowrank_sparse.nn import LowRankSparseLinear

    model = _llama(seed=10)
    batches = _padded_batches(torch.Generator().manual_seed(11))
    small, rep = ls.compress(model, batches, ls.Budget(params=0.5, scope="layers"))
    pairs = [n for n, m in small.named_modules() if isinstance(m, LowRankSparseLinear)]
    assert any(n.endswith("gate_proj") for n in pairs) and any(n.endswith("down_proj") for n in pairs)
    kept = sum(r.params_after for r in rep.layers) / sum(r.params_before for r in rep.layers)
    assert kept <= 0.5 + 1e-6
    path = tmp_path / "llama.safetensors"
    ls.save(small, path)
    loaded = ls.load(path, model=_llama(seed=12))
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, small(input_ids=ids).logits)
