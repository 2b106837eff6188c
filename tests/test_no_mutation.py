"""Every public entry point that takes a user's model and says it does not modify it
leaves the model exactly as it was: every parameter's and buffer's bytes, dtype, shape,
device, requires_grad and grad, the very same tensor and module objects and storages, every
module's training flag, hooks, class and attributes, and the module tree (repr).

The fingerprint below is written from torch's public module API only (no library code),
so a change it sees is a change of the user's object.  Models: the built-in MLP and
SmallCNN (BatchNorm with non-trivial running stats: folding must not touch them) in
train mode, at small sizes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import lowrank_sparse as lrs
from lowrank_sparse import calibrate as cal
from lowrank_sparse.budget import Budget
from lowrank_sparse.compress import method_names
from lowrank_sparse.models import MLP, SmallCNN
from lowrank_sparse.quant import AQConfig, bake, quantize_model, storage_report
from lowrank_sparse.train import evaluate, predict

_FAST = {"max_iter": 15, "progress": False, "sample_size": 64}
#: explicit sizes per method (each method accepts the sizes it uses)
_SIZES = {"lowrank_sparse": {"rank": 0.25, "density": 0.05}, "rank_only": {"rank": 0.25},
          "sparse_only": {"density": 0.1}, "wanda": {"density": 0.5}, "sparsegpt": {"density": 0.5},
          "svd_llm": {"rank": 0.25}, "oats": {"rank": 0.25, "density": 0.05}}  # fmt: skip


def _tensor_print(t: torch.Tensor | None) -> tuple:
    if t is None:
        return (None,)
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return (type(t).__name__, t.dtype, tuple(t.shape), t.device.type, t.requires_grad, id(t),
            t.untyped_storage().data_ptr(), hashlib.sha256(raw).hexdigest())  # fmt: skip


def fingerprint(model: nn.Module) -> dict:
    """Everything about ``model`` a caller can observe, as comparable values."""
    out: dict = {"repr": repr(model), "state_keys": list(model.state_dict().keys())}
    for name, mod in model.named_modules(remove_duplicate=False):
        hooks = tuple(len(getattr(mod, h)) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                     "_backward_pre_hooks", "_state_dict_hooks",
                                                     "_load_state_dict_pre_hooks"))  # fmt: skip
        attrs = sorted((k, type(v).__name__) for k, v in vars(mod).items())
        out[f"module:{name}"] = (id(mod), type(mod), mod.training, hooks, attrs, tuple(mod._parameters),
                                 tuple(mod._buffers), tuple(mod._modules))  # fmt: skip
    for name, p in model.named_parameters(remove_duplicate=False):
        out[f"param:{name}"] = (*_tensor_print(p), _tensor_print(p.grad))
    for name, b in model.named_buffers(remove_duplicate=False):
        out[f"buffer:{name}"] = _tensor_print(b)
    return out


def _assert_untouched(model: nn.Module, call: Callable[[nn.Module], object]) -> object:
    before = fingerprint(model)
    result = call(model)
    after = fingerprint(model)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the call changed the model: {changed[:8]}"
    return result


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(in_features=16, num_classes=4, hidden=(24, 20)).train()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=4, width=0.25)
    g = torch.Generator().manual_seed(1)
    for mod in net.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.num_batches_tracked.fill_(7)
    return net.train()


_MODELS = {"mlp": (_mlp, (16,)), "cnn": (_cnn, (1, 8, 8))}


def _data(shape: tuple[int, ...], n: int = 48) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(2))


@pytest.fixture(params=sorted(_MODELS))
def model_and_data(request) -> tuple[nn.Module, torch.Tensor]:
    build, shape = _MODELS[request.param]
    return build(), _data(shape)


# ----------------------------------------------------------------------------- compress


@pytest.mark.parametrize("method", method_names())
def test_compress_each_method(method: str, model_and_data) -> None:
    model, x = model_and_data
    kw = {"method": method, "keep_first_last": False, "batch_size": 16, **_SIZES.get(method, {}), **_FAST}
    new, _ = _assert_untouched(model, lambda m: lrs.compress(m, x, **kw))
    assert new is not model and new.training == model.training


@pytest.mark.parametrize("allocation", ["alds", "enc", "uniform"])
def test_compress_with_a_budget(allocation: str) -> None:
    """The budget allocators (curves over the folded weights) through compress."""
    model, x = _cnn(), _data((1, 8, 8))
    _assert_untouched(model, lambda m: lrs.compress(m, x, target=Budget(params=0.5), allocation=allocation,
                                                    keep_first_last=False, **_FAST))  # fmt: skip


def test_compress_sequential(model_and_data) -> None:
    model, x = model_and_data
    _assert_untouched(model, lambda m: lrs.compress(m, x, rank=0.25, density=0.05, sequential=True,
                                                    keep_first_last=False, **_FAST))  # fmt: skip


# ----------------------------------------------------------------------------- calibrate


def test_calibrate_functions(model_and_data) -> None:
    model, x = model_and_data
    calib = _assert_untouched(model, lambda m: cal.calibrate(m, x, batch_size=16, sample_size=32, sample_all=True))
    _assert_untouched(model, lambda m: cal.calibrate(m, [x[:20], x[20:]], max_batches=1))
    _assert_untouched(model, cal.find_layers)
    _assert_untouched(model, cal.detect_activations)
    for name, layer in cal.find_layers(model)[0]:
        _assert_untouched(layer, lambda m: cal.folded_problem(calib.layers[name], m))
    first = cal.find_layers(model)[0][0][1]
    _assert_untouched(first, lambda m: cal.layer_input_matrix(m, x[:4]))


# ----------------------------------------------------------------------------- io, train, quant


def test_save_and_load_skeleton(tmp_path: Path, model_and_data) -> None:
    model, x = model_and_data
    new, _ = lrs.compress(model, x, rank=0.25, density=0.05, keep_first_last=False, **_FAST)
    new.train()
    f = tmp_path / "m.safetensors"
    _assert_untouched(new, lambda m: lrs.save(m, f, metadata={"note": "x"}, dtype="float16"))
    _assert_untouched(new, lambda m: lrs.save(m, f))
    back = _assert_untouched(model, lambda m: lrs.load(f, model=m))
    assert back is not model


def test_predict_and_evaluate(model_and_data) -> None:
    model, x = model_and_data
    y = torch.arange(len(x)) % 4
    _assert_untouched(model, lambda m: predict(m, (x, y), batch_size=16))
    _assert_untouched(model, lambda m: evaluate(m, (x, y)))


def test_quantize_bake_and_storage_report(tmp_path: Path) -> None:
    model, x = _mlp(), _data((16,))
    new, _ = lrs.compress(model, x, rank=0.25, density=0.05, keep_first_last=False, **_FAST)
    q = _assert_untouched(new, lambda m: quantize_model(m, AQConfig(M=1, K=4, d=4, iters=1, beam=1)))
    _assert_untouched(q, lambda m: bake(m))
    _assert_untouched(q, storage_report)
    _assert_untouched(q, lambda m: lrs.save(m, tmp_path / "q.safetensors"))


# ----------------------------------------------------------------------------- the fingerprint itself


_CHANGES: dict[str, Callable[[nn.Module], object]] = {
    "one weight value": lambda m: m.features[0].weight.data.view(-1)[3].add_(1e-7),
    "a BN running stat": lambda m: m.features[1].running_var.mul_(1.0 + 2**-20),
    "num_batches_tracked": lambda m: m.features[1].num_batches_tracked.add_(1),
    "a training flag": lambda m: m.features[2].eval(),
    "a forward hook": lambda m: m.features[0].register_forward_hook(lambda *a: None),
    "an equal parameter copy": lambda m: setattr(m.features[0], "weight", nn.Parameter(m.features[0].weight.clone())),
    "the storage behind a weight": lambda m: setattr(m.features[0].weight, "data", m.features[0].weight.data.clone()),
    "a gradient": lambda m: m(torch.zeros(1, 1, 8, 8)).sum().backward(),
    "requires_grad": lambda m: m.features[0].weight.requires_grad_(False),
    "a dtype": lambda m: m.classifier.double(),
    "a submodule swapped": lambda m: m.features.__setitem__(2, nn.ReLU()),
    "an attribute": lambda m: setattr(m.features[0], "note", 1),
}  # fmt: skip


@pytest.mark.parametrize("change", sorted(_CHANGES))
def test_the_fingerprint_sees_each_kind_of_change(change: str) -> None:
    model = _cnn()
    with pytest.raises(AssertionError, match="the call changed the model"):
        _assert_untouched(model, _CHANGES[change])
    _assert_untouched(model, lambda m: m.state_dict())  # reading is no change
