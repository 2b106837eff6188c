"""A small GPT-2 (transformers' Conv1D layers, tied LM head) compressed, saved and loaded
back into a fresh model of the same config, end to end."""

from __future__ import annotations

import pytest
import torch

import lowrank_sparse as lrs
from lowrank_sparse.nn import Conv1DLinear, LowRankSparseLinear, is_conv1d, model_macs, model_params

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

V, E, T, BLOCKS = 101, 64, 16, 2
CONV1D = [f"transformer.h.{b}.{k}" for b in range(BLOCKS)
          for k in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
SHAPES = {"attn.c_attn": (3 * E, E), "attn.c_proj": (E, E), "mlp.c_fc": (4 * E, E), "mlp.c_proj": (E, 4 * E)}


def _config() -> GPT2Config:
    return GPT2Config(n_layer=BLOCKS, n_embd=E, n_head=4, vocab_size=V, n_positions=32,
                      bos_token_id=1, eos_token_id=2)


def _gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(_config()).eval()


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(4):
        ids = torch.randint(3, V, (4, T), generator=g)
        mask = torch.ones_like(ids)
        mask[i % 4, T - 3 - i:] = 0  # right padding in one row of each batch
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _loss(model, batches) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
            k = int((labels[:, 1:] != -100).sum())
            total += float(model(**b, labels=labels).loss) * k
            n += k
    return total / n


def _logits(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in batches])


@pytest.fixture(scope="module")
def compressed():
    """(input model, its state before, compressed model, report) at half the parameters,
    every Conv1D eligible (keep_first_last=False)."""
    model = _gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, report = lrs.compress(model, _batches(), target=lrs.Budget(params=0.5), keep_first_last=False,
                                 progress=False)
    return model, before, small, report


def test_every_conv1d_is_compressed_and_the_tied_head_stays_dense(compressed):
    model, _, small, report = compressed
    assert [r.name for r in report.layers] == CONV1D
    for name in CONV1D:
        assert isinstance(small.get_submodule(name), LowRankSparseLinear), name
    assert set(report.skipped) == {"lm_head"} and "tied" in report.skipped["lm_head"]
    assert type(small.lm_head) is torch.nn.Linear
    assert small.lm_head.weight is small.transformer.wte.weight  # still tied
    for r in report.layers:  # (out, in), as the solver saw them: Conv1D's weight transposed
        assert tuple(r.shape) == SHAPES[r.name.split(".", 3)[3]], r.name
    assert report.params_before == model_params(model) == sum(p.numel() for p in model.parameters())
    assert report.params_after == model_params(small)
    assert abs(report.params_after / report.params_before - 0.5) < 0.01


def test_the_input_model_is_not_mutated(compressed):
    model, before, _, _ = compressed
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert all(is_conv1d(model.get_submodule(n)) for n in CONV1D)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_report_macs_equal_a_hand_count_of_the_pairs(compressed):
    _, _, small, report = compressed
    per_token = E * V  # the dense LM head
    for name in CONV1D:
        mod = small.get_submodule(name)
        m, n = mod.out_features, mod.in_features
        nnz = 0 if mod.sparse is None else int(mod.sparse.nnz)
        assert mod.slices == 1
        per_token += mod.rank * (m + n) + nnz
    assert report.macs_after == model_macs(small, (T,)) == T * per_token
    assert report.macs_before == T * (BLOCKS * 12 * E * E + E * V)


def test_compressed_loss_is_finite_and_near_the_dense_one(compressed):
    model, _, small, _ = compressed
    batches = _batches()
    dense, comp = _loss(model, batches), _loss(small, batches)
    assert torch.isfinite(torch.tensor(comp))
    # random init (std 0.02): both are about log(V) = 4.62; a broken layer (transposed
    # weight, lost bias) moves the compressed one far from it
    assert abs(dense - torch.log(torch.tensor(float(V)))) < 0.1
    assert abs(comp - dense) < 0.1


def test_save_and_load_into_a_fresh_model_gives_equal_logits(compressed, tmp_path):
    _, _, small, _ = compressed
    path = tmp_path / "gpt2.safetensors"
    lrs.save(small, path)
    fresh = _gpt2(seed=7)  # other weights: everything must come from the file
    loaded = lrs.load(path, model=fresh)
    batches = _batches()
    assert torch.equal(_logits(loaded, batches), _logits(small, batches))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert [n for n, m in loaded.named_modules() if isinstance(m, LowRankSparseLinear)] == CONV1D


def test_default_keeps_the_first_layer_and_explicit_sizes_apply_to_the_rest(tmp_path):
    model = _gpt2()
    small, report = lrs.compress(model, _batches(), rank=4, density=0.05, progress=False)
    # keep_first_last over all compressible layers: the first Conv1D and the (tied) head
    assert [r.name for r in report.layers] == CONV1D[1:]
    assert "first layer" in report.skipped[CONV1D[0]] and "tied" in report.skipped["lm_head"]
    assert is_conv1d(small.get_submodule(CONV1D[0]))  # not selected: left as it was
    assert all(r.rank == 4 for r in report.layers)
    lrs.save(small, tmp_path / "m.safetensors")
    loaded = lrs.load(tmp_path / "m.safetensors", model=_gpt2(seed=3))
    assert torch.equal(_logits(loaded, _batches()), _logits(small, _batches()))


def test_untouched_layers_stay_equal_and_keep_the_original_state_dict(tmp_path):
    model = _gpt2()
    small, report = lrs.compress(model, _batches(), rank=E, progress=False)  # full rank: nothing changes
    assert all(isinstance(small.get_submodule(n), Conv1DLinear) for n in CONV1D[1:])
    ref, got = model.state_dict(), small.state_dict()
    assert list(got) == list(ref) and all(torch.equal(ref[k], got[k]) for k in ref)
    assert torch.allclose(_logits(small, _batches()), _logits(model, _batches()), atol=1e-5, rtol=0)
    lrs.save(small, tmp_path / "m.safetensors")
    loaded = lrs.load(tmp_path / "m.safetensors", model=_gpt2(seed=3))
    assert torch.equal(_logits(loaded, _batches()), _logits(small, _batches()))


def test_the_head_is_compressed_when_include_names_it(tmp_path):
    model = _gpt2()
    small, report = lrs.compress(model, _batches(), rank=4, density=0.05, include=["lm_head", "*.mlp.c_fc"],
                                 keep_first_last=False, progress=False)
    assert [r.name for r in report.layers] == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc", "lm_head"]
    assert isinstance(small.lm_head, LowRankSparseLinear)
    assert type(small.transformer.wte) is torch.nn.Embedding  # the tie is broken: wte stays dense
    lrs.save(small, tmp_path / "m.safetensors")
    loaded = lrs.load(tmp_path / "m.safetensors", model=_gpt2(seed=3))
    assert torch.equal(_logits(loaded, _batches()), _logits(small, _batches()))
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)


@pytest.mark.parametrize("method", ["lowrank_sparse", "wanda"])
def test_a_2_4_budget_is_met_by_the_stored_values(method):
    """Budget(params=0.6, scope="layers") with 2:4 S: the values the compressed layers
    store (U, V and S's nonzeros, counted from the modules) stay within 60 % of the
    selected layers' weights, and a layer without a sparse part has an all-zero S."""
    model = _gpt2()
    new, rep = lrs.compress(model, _batches(), lrs.Budget(params=0.6, scope="layers"), structure="2:4",
                            method=method, max_iter=5, progress=False)
    mods = dict(new.named_modules())
    stored = dense = 0
    for r in rep.layers:
        m, n = r.shape[0], r.shape[1]
        dense += m * n
        mod = mods[r.name]
        if not isinstance(mod, LowRankSparseLinear):
            stored += m * n
            continue
        nnz = 0 if mod.sparse is None else int((mod.sparse.to_dense() != 0).sum())
        lr = 0 if mod.U is None else mod.U.numel() + mod.V.numel()
        stored += lr + nnz
        if r.density == 0.0:
            assert nnz == 0, r.name
    assert stored <= 0.6 * dense * 1.001, (stored / dense)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", ["unknown-key", "mask-shape", "no-linear"])
def test_bad_calibration_input_is_named_and_nothing_changes(case, tmp_path):
    """A batch key forward does not name, a mask that is not (batch, tokens) and a model
    without a compressible layer each raise a ValueError naming the problem; the model
    is unchanged and nothing is written."""
    model = _gpt2()
    ids = _batches()[0]["input_ids"]
    data = {"unknown-key": [{"input_ids": ids, "pixel_values": ids.float()}],
            "mask-shape": [{"input_ids": ids, "attention_mask": torch.ones(ids.shape[0], ids.shape[1] - 1)}],
            "no-linear": [{"input_ids": ids}]}[case]
    target = model.transformer.wte if case == "no-linear" else model  # an embedding alone: no linear layer
    needle = {"unknown-key": r"\['pixel_values'\] not arguments of GPT2LMHeadModel.forward",
              "mask-shape": r"attention_mask has shape \(4, 15\).*\(4, 16\)",
              "no-linear": "no compressible layer"}[case]
    before = _state(model)
    with pytest.raises(ValueError, match=needle):
        lrs.compress(target, data if case != "no-linear" else ids, lrs.Budget(params=0.5, scope="layers"),
                     checkpoint_dir=tmp_path / "ck", progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(tmp_path.iterdir())
