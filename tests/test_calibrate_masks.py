"""Calibration batches as users hold them (tensors, tuples, dicts) and the attention mask:
padding positions enter no layer's statistics."""

from __future__ import annotations

from collections import UserDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowrank_sparse.calibrate import calibrate, iter_batches, iter_model_batches, token_rows


class TokenNet(nn.Module):
    """embedding -> fc1 -> GELU -> fc2, with an attention_mask that only masks the output."""

    def __init__(self, vocab: int = 20, d: int = 6, h: int = 10) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc1 = nn.Linear(d, h)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(h, d)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.emb(input_ids))))
        return y if attention_mask is None else y * attention_mask[..., None]


def _padded_batches(gen: torch.Generator, pad_id: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for lengths in ([5, 3, 1], [2, 6]):
        T = max(lengths)
        ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(lengths), T), dtype=torch.long)
        for i, n in enumerate(lengths):
            ids[i, :n] = torch.randint(1, 20, (n,), generator=gen)
            mask[i, :n] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _hand_inputs(net: TokenNet, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """fc1's and fc2's inputs at the real tokens, (N, d) and (N, h), float64, by hand."""
    x1, x2 = [], []
    with torch.no_grad():
        for b in batches:
            m = b["attention_mask"].bool()
            e = net.emb.weight.double()[b["input_ids"][m]]
            x1.append(e)
            x2.append(F.gelu(e @ net.fc1.weight.double().T + net.fc1.bias.double()))
    return torch.cat(x1), torch.cat(x2)


@pytest.mark.parametrize("pad_id", [0, 7], ids=["pad0", "pad7"])
def test_dict_batches_gram_is_that_of_the_real_tokens(pad_id):
    gen = torch.Generator().manual_seed(0)
    net = TokenNet().eval()
    batches = _padded_batches(gen, pad_id)
    cal = calibrate(net, batches, sample_all=True)
    X1, X2 = _hand_inputs(net, batches)
    assert X1.shape[0] == 17
    for name, X in (("fc1", X1), ("fc2", X2)):
        st = cal.layers[name]
        assert st.count == 17
        torch.testing.assert_close(st.gram, X.T @ X / 17, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(st.mean, X.mean(0), rtol=1e-6, atol=1e-7)
        # every kept sample column is a real token's input
        d = torch.cdist(st.sample.T.double(), X)
        assert st.sample.shape[1] == 17 and float(d.min(dim=1).values.max()) < 1e-5
    assert cal.layers["fc1"].activation.name == "gelu" and cal.samples == 5 and cal.batches == 2


def test_padding_contents_do_not_change_the_statistics():
    gen = torch.Generator().manual_seed(1)
    net = TokenNet().eval()
    a = _padded_batches(gen, 0)
    b = [{"input_ids": x["input_ids"].where(x["attention_mask"].bool(), torch.full_like(x["input_ids"], 13)),
          "attention_mask": x["attention_mask"]} for x in a]
    ca, cb = calibrate(net, a, sample_all=True), calibrate(net, b, sample_all=True)
    for n in ("fc1", "fc2"):
        assert torch.equal(ca.layers[n].gram, cb.layers[n].gram)
        assert torch.equal(ca.layers[n].sample, cb.layers[n].sample)
    # without the mask the padding does enter the statistics
    nomask = [{"input_ids": x["input_ids"]} for x in a]
    assert calibrate(net, nomask).layers["fc1"].count == 3 * 5 + 2 * 6


def test_tuple_batches_are_passed_positionally_and_their_mask_is_bound_by_name():
    gen = torch.Generator().manual_seed(2)
    net = TokenNet().eval()
    dicts = _padded_batches(gen, 0)
    tuples = [(d["input_ids"], d["attention_mask"]) for d in dicts]
    got = list(iter_model_batches(tuples, net))
    assert len(got[0].args) == 2 and got[0].mask.dtype == torch.bool
    assert torch.equal(got[0].mask, dicts[0]["attention_mask"].bool())
    ct, cd = calibrate(net, tuples), calibrate(net, dicts)
    assert torch.equal(ct.layers["fc1"].gram, cd.layers["fc1"].gram) and ct.layers["fc1"].count == 17


def test_inputs_and_labels_still_pass_only_the_inputs():
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(12, 4, generator=gen)
    pairs = [(x[:6], torch.zeros(6)), (x[6:], torch.ones(6))]
    dicts = [{"image": x[:6], "label": 0}, {"image": x[6:], "label": 1}]
    for data in (x, pairs, dicts):
        st = calibrate(net, data, batch_size=6).layers["0"]
        torch.testing.assert_close(st.gram, x.double().T @ x.double() / 12, rtol=1e-12, atol=1e-12)
        assert st.count == 12


def test_a_mapping_such_as_a_tokenizer_output_is_one_batch():
    gen = torch.Generator().manual_seed(4)
    net = TokenNet().eval()
    d = _padded_batches(gen, 0)[0]
    enc = UserDict(d)  # transformers' BatchEncoding is a UserDict
    assert [b.shape for b in iter_batches(enc)] == [d["input_ids"].shape]
    c = calibrate(net, enc)
    assert c.batches == 1 and c.layers["fc1"].count == 9


def test_dict_with_keys_forward_does_not_take():
    net = TokenNet().eval()
    ids = torch.randint(0, 20, (2, 3), generator=torch.Generator().manual_seed(5))
    c = calibrate(net, [{"input_ids": ids, "labels": ids}])  # labels dropped: forward has no such argument
    assert c.layers["fc1"].count == 6
    with pytest.raises(TypeError, match="none of its keys"):
        calibrate(net, [{"foo": ids}])


@pytest.mark.parametrize(
    "shape, expect",
    [((2, 3, 4), (4, 4)), ((2, 4), (2, 4)), ((3, 2, 4), (3, 2, 4)), ((2, 3, 5, 4), (4, 5, 4))],
    ids=["tokens", "pooled", "other-leading-dims", "extra-dim"],
)
def test_token_rows_filters_only_inputs_led_by_the_mask_shape(shape, expect):
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    got = token_rows(x, mask)
    assert tuple(got.shape) == expect
    if shape[:2] == (2, 3):
        assert torch.equal(got, torch.stack([x[0, 0], x[0, 1], x[1, 1], x[1, 2]]))


def test_bert_padded_batch_gram_equals_unpadded_rows():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=100, max_position_embeddings=32)
    net = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    gen = torch.Generator().manual_seed(6)
    lengths = [9, 4, 6]
    ids = torch.zeros((3, 9), dtype=torch.long)
    mask = torch.zeros((3, 9), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, 100, (n,), generator=gen)
        mask[i, :n] = 1
    cal = calibrate(net, [{"input_ids": ids, "attention_mask": mask}])
    # reference: each row alone, without padding, inputs caught by hand with hooks
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(i[0].reshape(-1, i[0].shape[-1])))
             for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, n in enumerate(lengths):
            net(input_ids=ids[i:i + 1, :n])
    for h in hooks:
        h.remove()
    assert set(cal.layers) == set(seen)
    for name, rows in seen.items():
        X = torch.cat(rows).double()
        st = cal.layers[name]
        assert st.count == sum(lengths)
        torch.testing.assert_close(st.gram, X.T @ X / X.shape[0], rtol=1e-4, atol=1e-5)
    act = {n: st.activation.name for n, st in cal.layers.items()}
    assert act["encoder.layer.0.intermediate.dense"] == "gelu"
    assert act["encoder.layer.0.attention.self.query"] == "identity"
