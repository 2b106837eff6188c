"""lowrank_sparse.nn.conv1d: transformers' Conv1D as the Linear it is (Conv1DLinear,
is_conv1d), and Conv1D in the parameter / MAC counts, against hand counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank_sparse.calibrate import weight_matrix
from lowrank_sparse.nn import Conv1DLinear, dense_macs, dense_params, is_conv1d, model_macs, model_params

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

SHAPES = {"square": (64, 64), "wide-out": (64, 192), "narrow-out": (256, 64), "tiny": (3, 5)}


def _conv1d(n_in: int, n_out: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = Conv1D(n_out, n_in)  # Conv1D(nf=out, nx=in): weight (in, out)
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.normal_()
    return conv


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_conv1d_linear_computes_x_at_w_plus_b(shape, tgen):
    n_in, n_out = shape
    conv = _conv1d(n_in, n_out)
    before = conv.weight.detach().clone()
    lin = Conv1DLinear.from_conv1d(conv)
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (n_in, n_out)
    x = torch.randn(2, 7, n_in, generator=tgen, dtype=torch.float64).float()
    ref = x.double() @ conv.weight.detach().double() + conv.bias.detach().double()  # the definition
    with torch.no_grad():
        got, theirs = lin(x), conv(x)
    assert got.shape == (2, 7, n_out)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, theirs, rtol=1e-6, atol=1e-5)
    assert torch.equal(lin.weight, conv.weight.T) and torch.equal(conv.weight, before)  # Conv1D untouched
    assert torch.equal(weight_matrix(conv), lin.weight)  # the solver's view of both agrees


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_state_dict_keeps_conv1d_layout_both_ways(shape):
    n_in, n_out = shape
    conv = _conv1d(n_in, n_out)
    lin = Conv1DLinear.from_conv1d(conv)
    sd = lin.state_dict()
    ref = conv.state_dict()
    assert list(sd) == list(ref)
    for k in ref:
        assert sd[k].shape == ref[k].shape and torch.equal(sd[k], ref[k]) and sd[k].is_contiguous()
    other = _conv1d(n_in, n_out, seed=1)
    lin.load_state_dict(other.state_dict())  # a Conv1D's state dict loads into the Linear
    assert torch.equal(lin.weight, other.weight.T) and torch.equal(lin.bias, other.bias)
    back = _conv1d(n_in, n_out, seed=2)
    back.load_state_dict(lin.state_dict())  # and the Linear's into a Conv1D
    assert torch.equal(back.weight, other.weight)
    # the Linear is not modified by the transposed copies of state_dict()
    assert lin.weight.shape == (n_out, n_in)


def test_an_out_in_weight_of_a_non_square_layer_is_refused():
    lin = Conv1DLinear.from_conv1d(_conv1d(8, 5))
    with pytest.raises(RuntimeError, match="size mismatch"):
        lin.load_state_dict({"weight": torch.zeros(5, 8), "bias": torch.zeros(5)})


def test_from_conv1d_keeps_flags_dtype_and_refuses_other_modules():
    conv = _conv1d(6, 4).double().train()
    conv.weight.requires_grad_(False)
    lin = Conv1DLinear.from_conv1d(conv)
    assert lin.weight.dtype == torch.float64 and lin.training
    assert not lin.weight.requires_grad and lin.bias.requires_grad
    copy.deepcopy(lin)  # an ordinary module
    assert "from Conv1D" in repr(lin)
    with pytest.raises(TypeError, match="Conv1D"):
        Conv1DLinear.from_conv1d(nn.Linear(4, 6))


class _NotTransformers(nn.Module):
    pass


_NotTransformers.__name__ = "Conv1D"  # same name, another package


@pytest.mark.parametrize(
    "mod, expected",
    [(Conv1D(4, 3), True), (nn.Linear(3, 4), False), (Conv1DLinear(3, 4), False),
     (nn.Conv1d(3, 4, 1), False), (_NotTransformers(), False)],
    ids=["transformers-Conv1D", "Linear", "Conv1DLinear", "torch-Conv1d", "other-package-Conv1D"],
)
def test_is_conv1d(mod, expected):
    assert is_conv1d(mod) is expected


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_dense_counts_of_a_conv1d(shape):
    n_in, n_out = shape
    conv = _conv1d(n_in, n_out)
    assert dense_macs(conv) == n_in * n_out == dense_macs(Conv1DLinear.from_conv1d(conv))
    assert dense_params(conv) == n_in * n_out + n_out


def _gpt2(tokens: int, vocab: int = 101, embd: int = 64, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_embd=embd, n_head=4, vocab_size=vocab, n_positions=tokens,
                     bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("tokens", [1, 16], ids=["1-token", "16-tokens"])
def test_gpt2_macs_and_params_against_hand_counts(tokens):
    V, E, P, blocks = 101, 64, tokens, 2
    model = _gpt2(tokens, V, E, blocks)
    per_layer = model_macs(model, (tokens,), per_layer=True)
    # by hand from the config: each Conv1D in*out per token; the LM head E*V per token
    shapes = {"attn.c_attn": (E, 3 * E), "attn.c_proj": (E, E), "mlp.c_fc": (E, 4 * E), "mlp.c_proj": (4 * E, E)}
    expected = {f"transformer.h.{b}.{k}": tokens * i * o for b in range(blocks) for k, (i, o) in shapes.items()}
    expected["lm_head"] = tokens * E * V
    assert per_layer == expected
    assert model_macs(model, (tokens,)) == tokens * (blocks * 12 * E * E + E * V)
    # parameters by hand: wte, wpe, per block 2 LayerNorms + 4 Conv1D (weight + bias), ln_f;
    # the LM head's weight is wte's (tied) and counted once
    block = 2 * 2 * E + sum(i * o + o for i, o in shapes.values())
    hand = V * E + P * E + blocks * block + 2 * E
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model_params(model) == hand == sum(p.numel() for p in model.parameters())


def test_model_params_counts_a_shared_parameter_once():
    a = nn.Linear(4, 4, bias=False)
    b = nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    assert model_params(nn.Sequential(a, b)) == 16
    assert model_params(nn.Sequential(a, nn.Linear(4, 4, bias=False))) == 32
