"""quantize_model / fine_tune_codebooks / bake on real data (sklearn digits)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.utils import parametrize

from lowrank_sparse.nn import LowRankSparseLinear
from lowrank_sparse.quant import AQConfig, aq_entries, bake, codebook_parameters, fine_tune_codebooks, quantize_model
from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models: one intra-op thread (two spin-wait badly on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_digits()
    X = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    return X[tr], y[tr], X[te], y[te]


@pytest.fixture(scope="module")
def mlp(digits) -> nn.Module:
    """A 64-48-10 MLP trained on digits (full batch Adam, a second)."""
    Xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(Xtr), ytr).backward()
        opt.step()
    model.eval()
    return model


def np_weight(q) -> np.ndarray:
    """Independent decode of one AQWeight: scale * sum_m C[m, codes[:, m]], cropped, reshaped."""
    C = q.codebooks.detach().double().numpy()
    codes = q.codes.numpy()
    flat = sum(C[m][codes[:, m]] for m in range(C.shape[0])).reshape(-1)
    return (flat[: q.numel_] * q.scale).reshape(q.shape)


def test_input_model_untouched(mlp: nn.Module) -> None:
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    classes = [type(m) for m in mlp.modules()]
    q = quantize_model(mlp, AQConfig(M=2, K=16, d=4, iters=2), which="all")
    assert q is not mlp
    after = mlp.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert classes == [type(m) for m in mlp.modules()]
    assert not parametrize.is_parametrized(mlp[0])
    assert [n for n, _ in aq_entries(q)[0]] == ["0.weight", "2.weight"]
    assert "weight" not in q[0]._parameters and isinstance(q[0], nn.Linear)


def test_reconstruction_matches_decode(mlp: nn.Module, digits) -> None:
    q = quantize_model(mlp, AQConfig(M=2, K=64, d=4, iters=3), which="all")
    entries, _ = aq_entries(q)
    assert [n for n, _ in entries] == ["0.weight", "2.weight"]
    for name, aqw in entries:
        mod = q.get_submodule(name.split(".")[0])
        orig = mlp.get_submodule(name.split(".")[0]).weight.detach().double().numpy()
        ref = np_weight(aqw)
        w = mod.weight.detach().double().numpy()
        np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-7)
        rel_model = ((w - orig) ** 2).sum() / (orig**2).sum()
        rel_ref = ((ref - orig) ** 2).sum() / (orig**2).sum()
        np.testing.assert_allclose(rel_model, rel_ref, rtol=1e-4)
        assert rel_model < 0.15  # 4-value sub-vectors, 2 x 64 codewords: a usable approximation
    # biases stay float and identical
    assert torch.equal(q[0].bias, mlp[0].bias) and torch.equal(q[2].bias, mlp[2].bias)
    Xtr, ytr, _, _ = digits
    acc_q = (q(Xtr).argmax(1) == ytr).float().mean()
    acc = (mlp(Xtr).argmax(1) == ytr).float().mean()
    assert acc_q > acc - 0.1


def _pair_model(mlp: nn.Module) -> nn.Module:
    """First layer replaced by a LowRankSparseLinear: rank-8 SVD + top-5% residual."""
    W = mlp[0].weight.detach()
    U, s, Vt = torch.linalg.svd(W, full_matrices=False)
    Uf, Vf = U[:, :8] * s[:8], Vt[:8]
    R = W - Uf @ Vf
    k = int(0.05 * R.numel())
    thr = R.abs().flatten().kthvalue(R.numel() - k).values
    S = torch.where(R.abs() > thr, R, torch.zeros_like(R))
    dec = Decomposition(U=Uf, V=Vf, S=S, structure=parse_structure("unstructured"), info=SolveInfo())
    pair = LowRankSparseLinear.from_decomposition(dec, bias=mlp[0].bias.detach())
    return nn.Sequential(pair, nn.ReLU(), copy.deepcopy(mlp[2]))


def test_selection_factors_sparse_vs_all(mlp: nn.Module, digits) -> None:
    model = _pair_model(mlp)
    pair_params = {f"0.{n}" for n, _ in model[0].named_parameters() if not n.endswith("bias")}
    assert {"0.U", "0.V"} <= pair_params and len(pair_params) >= 3  # + sparse values
    cfg = AQConfig(M=2, K=32, d=4, iters=2)
    q1 = quantize_model(model, cfg)  # factors+sparse
    assert {n for n, _ in aq_entries(q1)[0]} == pair_params
    assert "weight" in q1[2]._parameters
    q2 = quantize_model(model, cfg, which="all")
    assert {n for n, _ in aq_entries(q2)[0]} == pair_params | {"2.weight"}
    Xtr, _, _, _ = digits
    out, out_q = model(Xtr), q2(Xtr)
    assert ((out_q - out) ** 2).mean() < 0.1 * (out**2).mean()


def test_shared_vs_per_layer(mlp: nn.Module) -> None:
    q_shared = quantize_model(mlp, AQConfig(M=2, K=16, d=4, iters=1), which="all")
    q_sep = quantize_model(mlp, AQConfig(M=2, K=16, d=4, iters=1, shared=False), which="all")
    assert len(codebook_parameters(q_shared)) == 1
    assert len(codebook_parameters(q_sep)) == 2
    assert sum(p.numel() for p in q_shared.parameters()) < sum(p.numel() for p in q_sep.parameters())


def test_fine_tune_lowers_task_loss_with_codes_fixed(mlp: nn.Module, digits) -> None:
    Xtr, ytr, Xte, yte = digits
    # coarse quantization (1 codebook of 8 words per 4 values) so that the loss visibly rises
    q = quantize_model(mlp, AQConfig(M=1, K=8, d=4, iters=2), which="all")
    codes = [a.codes.clone() for _, a in aq_entries(q)[0]]
    books = [b.detach().clone() for b in codebook_parameters(q)]
    biases = [q[0].bias.detach().clone(), q[2].bias.detach().clone()]
    with torch.no_grad():
        before = float(F.cross_entropy(q(Xtr), ytr))
        before_te = float(F.cross_entropy(q(Xte), yte))
    g = torch.Generator().manual_seed(0)
    batches = [(Xtr[i], ytr[i]) for i in torch.randperm(len(ytr), generator=g).split(100)]
    hist = fine_tune_codebooks(q, batches, F.cross_entropy, epochs=15, lr=5e-3)
    with torch.no_grad():
        after = float(F.cross_entropy(q(Xtr), ytr))
        after_te = float(F.cross_entropy(q(Xte), yte))
    assert after < 0.8 * before
    assert after_te < before_te
    assert hist[-1] < hist[0]
    for c, (_, a) in zip(codes, aq_entries(q)[0]):
        assert torch.equal(c, a.codes)
    assert not torch.equal(books[0], codebook_parameters(q)[0].detach())
    assert torch.equal(biases[0], q[0].bias) and torch.equal(biases[1], q[2].bias)
    assert all(p.requires_grad for p in codebook_parameters(q)) and q[0].bias.requires_grad
    assert not q.training


def test_bake(mlp: nn.Module, digits) -> None:
    Xtr, _, _, _ = digits
    q = quantize_model(mlp, AQConfig(M=2, K=16, d=4, iters=1), which="all")
    ref = q(Xtr).detach()
    b = bake(q)
    assert type(b[0]) is nn.Linear and not aq_entries(b)[0] and "aq_slots" not in b[0]._modules
    assert torch.equal(b(Xtr), ref)
    # the quantized model is unaffected by baking its copy (deep copies share classes)
    assert len(aq_entries(q)[0]) == 2
    assert torch.equal(q(Xtr), ref)
    q2 = copy.deepcopy(q)
    bake(q2, inplace=True)
    assert type(q2[0]) is nn.Linear and torch.equal(q(Xtr), ref)


def test_dtype_follows_model(mlp: nn.Module, digits) -> None:
    Xtr, _, _, _ = digits
    q = quantize_model(mlp, AQConfig(M=2, K=16, d=4, iters=1), which="all")
    ref = q(Xtr).detach()
    q64 = copy.deepcopy(q).double()
    assert q64[0].weight.dtype == torch.float64
    np.testing.assert_allclose(q64(Xtr.double()).detach().numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)


class _Halve(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x


def test_user_parametrization_survives(mlp: nn.Module, digits) -> None:
    Xtr, _, _, _ = digits
    model = copy.deepcopy(mlp)
    parametrize.register_parametrization(model[0], "bias", _Halve())
    ref = model(Xtr).detach()
    q = quantize_model(model, AQConfig(M=2, K=16, d=4, iters=1), which="all")
    assert parametrize.is_parametrized(model[0], "bias") and not parametrize.is_parametrized(model[0], "weight")
    assert "weight" in model[0]._parameters and not hasattr(type(model[0]), "_aq_names")
    assert torch.equal(model(Xtr), ref)
    assert [n for n, _ in aq_entries(q)[0]] == ["0.weight", "2.weight"]
    assert torch.allclose(q[0].bias, model[0].bias)


def test_bad_inputs(mlp: nn.Module) -> None:
    cfg = AQConfig(M=2, K=16, d=4, iters=1)
    with pytest.raises(ValueError, match="which"):
        quantize_model(mlp, cfg, which="weights")
    with pytest.raises(TypeError, match="AQConfig"):
        quantize_model(mlp, {"M": 2})
    with pytest.raises(ValueError, match="no parameters"):
        quantize_model(mlp, cfg)  # plain MLP has no LowRankSparse modules
    q = quantize_model(mlp, cfg, which="all")
    with pytest.raises(ValueError, match="already"):
        quantize_model(q, cfg, which="all")
    with pytest.raises(ValueError, match="epochs"):
        fine_tune_codebooks(q, [], F.cross_entropy, epochs=0)
    with pytest.raises(ValueError, match="no AQ"):
        fine_tune_codebooks(mlp, [], F.cross_entropy)
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="tied"):
        quantize_model(tied, cfg, which="all")
