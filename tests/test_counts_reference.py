"""The library's MAC counts against an independent counter and against the pair formula.

Reference counter: torch-pruning's ``tp.utils.count_ops_and_params`` (a forward-hook
counter derived from ptflops; pinned in the ``test`` extra), on VGG-16, GoogLeNet and
MobileNetV2 from :mod:`lowrank_sparse.models`, a BERT encoder layer (``BertLayer`` of
transformers, when installed) and a plain torch encoder block.

What is compared is the library's definition (:mod:`lowrank_sparse.nn.counts`): the
multiply-accumulates of each Linear / Conv2d weight with its input, per sample, layer
by layer.  The counter counts differently in documented ways, handled here:

* bias: it adds one op per output element of a conv (out_channels * H_out * W_out) and
  ``out_features`` once per call of a linear; the library counts the weight products
  only.  So the counter runs on a copy whose conv / linear biases are removed (nothing
  else it counts depends on them), and the difference the biases make is checked
  against that rule on the original model.
* BN, ReLU / ReLU6 / GELU, pooling, LayerNorm: it counts elementwise ops for them, the
  library none; they are left out of the per-layer comparison.
* neither counts products of two activations (attention's Q K^T and A V): they are
  functional calls, not modules.

The pair modules are checked against the formula ``rank*(m+n) + nnz(S)`` MACs per input
vector / output pixel, with nnz counted from the decomposition and the output size from
the dense conv's own forward pass.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch_pruning as tp
from torch import nn

from lowrank_sparse import models
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from lowrank_sparse.nn.counts import model_macs, module_macs
from sparse_fixtures import random_decomposition  # tests/ is on sys.path (pytest rootdir conftest)

WEIGHTED = (nn.Linear, nn.Conv2d)


def _without_biases(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Linear / Conv2d layers have no bias."""
    out = copy.deepcopy(model)
    for mod in out.modules():
        if isinstance(mod, WEIGHTED) and mod.bias is not None:
            mod.bias = None
    return out


def _counter_per_layer(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """The reference counter's ops of every Linear / Conv2d of ``model`` (batch of 1)."""
    _, _, per_module, _ = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    return {name: int(per_module[mod]) for name, mod in model.named_modules() if isinstance(mod, WEIGHTED)}


def _bias_ops(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """The counter's documented bias term per layer: out_channels * H_out * W_out per conv
    call, out_features per linear call (0 without a bias), from the layers' real outputs."""
    ops: dict[str, int] = {}

    def hook(name: str):
        def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if mod.bias is None:
                add = 0
            elif isinstance(mod, nn.Conv2d):
                add = mod.out_channels * output.shape[-2] * output.shape[-1]
            else:
                add = mod.out_features
            ops[name] = ops.get(name, 0) + add

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, WEIGHTED)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return ops


def _check_against_counter(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Per-layer equality of the library's MACs and the counter's (biases removed); the
    counter's bias term on the original model follows its rule.  Returns the total."""
    model.eval()
    example = torch.zeros(1, *shape)
    ours = model_macs(model, shape, per_layer=True)
    reference = _counter_per_layer(_without_biases(model), example)
    assert ours == reference
    with_bias = _counter_per_layer(model, example)
    bias = _bias_ops(model, example)
    assert {n: with_bias[n] - reference[n] for n in reference} == bias
    assert any(bias.values())  # the models do have biases: the rule was exercised
    return sum(ours.values())


@pytest.mark.parametrize("name, shape", [("vgg16", (3, 32, 32)), ("googlenet", (3, 32, 32)),
                                         ("mobilenet_v2", (3, 224, 224))])  # fmt: skip
def test_dense_model_macs_match_the_reference_counter(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    total = _check_against_counter(models.build(name), shape)
    if name == "mobilenet_v2":
        # Sandler et al. (2018), Table 4: MobileNetV2 1.0 at 224x224, 300M multiply-adds
        assert math.isclose(total, 300e6, rel_tol=0.01)


class EncoderBlock(nn.Module):
    """A post-norm transformer encoder layer written out with nn.Linear projections."""

    def __init__(self, d: int = 32, heads: int = 4, ffn: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.up, self.act, self.down = nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1) @ v
        x = self.ln1(x + self.o(att.transpose(1, 2).reshape(b, t, d)))
        return self.ln2(x + self.down(self.act(self.up(x))))


def test_encoder_block_macs_match_the_reference_counter() -> None:
    torch.manual_seed(0)
    t, d, ffn = 10, 32, 64
    total = _check_against_counter(EncoderBlock(d, 4, ffn), (t, d))
    assert total == t * (4 * d * d + 2 * d * ffn)  # every token through every projection


def test_bert_layer_macs_match_the_reference_counter() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import BertLayer

    cfg = transformers.BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=256)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    t = 12
    total = _check_against_counter(BertLayer(cfg), (t, 64))
    assert total == t * (4 * 64 * 64 + 2 * 64 * 256)


@pytest.mark.parametrize("kind", ["unstructured", "row", "2:4"])
def test_pair_modules_cost_rank_times_m_plus_n_plus_nnz(kind: str, tgen: torch.Generator) -> None:
    m, n, r, tokens = 24, 40, 3, 5
    dec = random_decomposition(m, n, r, kind, tgen)
    lin = LowRankSparseLinear.from_decomposition(dec, bias=torch.zeros(m))
    per_vector = r * (m + n) + int(torch.count_nonzero(dec.S))
    assert module_macs(lin) == per_vector
    assert model_macs(lin, (tokens, n)) == tokens * per_vector

    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    cdec = random_decomposition(16, 8 * 9, 2, kind, tgen, block=9)
    pair = LowRankSparseConv2d.from_conv(conv, cdec)
    with torch.no_grad():
        Ho, Wo = conv(torch.zeros(1, 8, 11, 9)).shape[-2:]
    per_pixel = 2 * (16 + 8 * 9) + int(torch.count_nonzero(cdec.S))
    assert module_macs(pair, (11, 9)) == Ho * Wo * per_pixel
    net = nn.Sequential(pair, nn.ReLU(), nn.Flatten(), nn.Linear(16 * Ho * Wo, 4))
    assert model_macs(net, (8, 11, 9)) == Ho * Wo * per_pixel + 16 * Ho * Wo * 4
