"""Tests for lowrank_sparse.compress.errors: output errors of a replaced layer, against
plain torch formulas (torch.nn.functional activations, direct matrix products)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowrank_sparse.calibrate import calibrate
from lowrank_sparse.compress import dense_error, output_error

_ACTS = {"relu": (nn.ReLU(), F.relu), "gelu": (nn.GELU(), F.gelu), "silu": (nn.SiLU(), F.silu),
         "tanh": (nn.Tanh(), torch.tanh), "leaky": (nn.LeakyReLU(0.2), lambda u: F.leaky_relu(u, 0.2))}


@pytest.mark.parametrize("chunk", [1024, 7], ids=["one-chunk", "chunks-of-7"])
@pytest.mark.parametrize("act", list(_ACTS), ids=list(_ACTS))
def test_subsample_error_after_the_activation(act, chunk, tgen, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("lowrank_sparse.compress.errors"), "ERROR_CHUNK", chunk)
    mod, fn = _ACTS[act]
    lin = nn.Linear(6, 5)
    model = nn.Sequential(lin, mod, nn.Linear(5, 2)).eval()
    x = torch.randn(80, 6, generator=tgen)
    st = calibrate(model, x, sample_size=1000).layers["0"]
    new = nn.Linear(6, 5)
    with torch.no_grad():
        new.weight.copy_(lin.weight + 0.05 * torch.randn(5, 6, generator=tgen))
        new.bias.copy_(lin.bias)
    err, on = output_error(st, lin, new)
    X = x.double()
    with torch.no_grad():
        ref_y = fn(X @ lin.weight.double().T + lin.bias.double())
        new_y = fn(X @ new.weight.double().T + new.bias.double())
    assert on == "subsample (80 columns)"
    assert err == pytest.approx(float(torch.linalg.norm(ref_y - new_y) / torch.linalg.norm(ref_y)), rel=1e-9)


def test_gram_error_for_linear_layers_is_exact_over_all_columns(tgen):
    lin = nn.Linear(4, 3)
    x = torch.randn(50, 4, generator=tgen) + 1.0
    st = calibrate(nn.Sequential(lin), x).layers["0"]
    W, b = lin.weight.detach(), lin.bias.detach()
    W2 = W + 0.1 * torch.randn(3, 4, generator=tgen)
    ref = torch.linalg.norm(x.double() @ (W - W2).double().T) / torch.linalg.norm(x.double() @ W.double().T + b.double())
    assert dense_error(st, W, b, W2, b) == pytest.approx(float(ref), rel=1e-9)
