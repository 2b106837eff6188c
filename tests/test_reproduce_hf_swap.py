"""reproduce/hf_swap.py: a swap moves exactly one layer group between two models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "reproduce"))
_spec = importlib.util.spec_from_file_location("reproduce_hf_swap", REPO / "reproduce" / "hf_swap.py")
hf_swap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf_swap)


def _bert(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


@pytest.mark.parametrize("group", hf_swap.GROUPS)
def test_swap_moves_exactly_one_group(group):
    a, b = _bert(0), _bert(1)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    out = hf_swap.swapped(a, b, group)
    bs = b.state_dict()
    moved = 0
    for k, v in out.state_dict().items():
        layer = k.rsplit(".", 1)[0]
        if hf_swap.in_group(layer, group):
            assert torch.equal(v, bs[k]), k
            moved += 1
        else:
            assert torch.equal(v, before[k]), k
    assert moved == 2 * 2  # weight and bias, in each of the 2 blocks
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items())  # base untouched
