"""The command line on local Hugging Face model folders: compress with a text file,
evaluate the saved file, and the errors.  Tiny config-built GPT-2 and BERT folders with a
BPE tokenizer trained in the test on the built-in English text (no download)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lowrank_sparse import cli  # noqa: E402
from lowrank_sparse import io as lrs_io  # noqa: E402
from lowrank_sparse.models import hf  # noqa: E402


def _paragraphs(split: str, n: int) -> list[str]:
    return [p for p in hf.english_text(split).split("\n\n") if len(p) > 80][:n]


def _tokenizer(folder: Path) -> None:
    """A 400-token byte-level BPE trained on calibration text, saved into ``folder``."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<unk>", "<eos>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_paragraphs("calibration", 200), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                eos_token="<eos>")
    fast.save_pretrained(str(folder))


def _folder(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / kind
    folder.mkdir()
    _tokenizer(folder)
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=400, n_positions=64, n_embd=48, n_layer=2, n_head=2,
                                      bos_token_id=2, eos_token_id=2)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.BertConfig(vocab_size=400, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=96, max_position_embeddings=64,
                                      initializer_range=0.3)  # layers that matter beside the embeddings
        model = transformers.BertModel(cfg)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("text")
    calib, test = d / "calib.txt", d / "test.txt"
    calib.write_text("\n\n".join(_paragraphs("calibration", 40)))
    test.write_text("\n\n".join(_paragraphs("test", 16)))
    return calib, test


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what building the folder printed
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = int(e.code)
    out, err = capsys.readouterr()
    return rc, out, err


def _compress(folder: Path, out: Path, texts, capsys, *extra: str) -> dict:
    calib, test = texts
    rc, stdout, err = run(["compress", str(folder), "--text", str(calib), "--test-text", str(test), "--calib", "16",
                           "--seq-len", "32", "--max-iter", "20", "--no-latency", "--json", "-o", str(out), *extra],
                          capsys)
    assert rc == 0, err
    return json.loads(stdout)


def _ppl_by_hand(model, batches) -> float:
    """exp of the mean shifted cross-entropy over targets whose token and predecessor are real."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            for row in range(len(b["input_ids"])):
                t = int(b["attention_mask"][row].sum())  # right padding: the first t tokens are real
                if t < 2:
                    continue
                nll += float(F.cross_entropy(logits[row, : t - 1], b["input_ids"][row, 1:t], reduction="sum"))
                n += t - 1
    return math.exp(nll / n)


def test_gpt2_folder_compress_then_evaluate(tmp_path, texts, capsys):
    folder = _folder(tmp_path, "gpt2")
    out = tmp_path / "g.safetensors"
    res = _compress(folder, out, texts, capsys, "--params", "0.5", "--budget-scope", "layers")
    dense = hf.load_hf(folder)
    tok = hf.load_tokenizer(folder)
    test = hf.text_batches(texts[1], tok, seq_len=32, batch_size=8, max_batches=8)
    assert res["kind"] == "causal_lm"
    assert res["perplexity_before"] == pytest.approx(_ppl_by_hand(dense, test), rel=1e-5)
    small = lrs_io.load(out, model=dense)
    assert res["perplexity_after"] == pytest.approx(_ppl_by_hand(small, test), rel=1e-5)
    assert res["perplexity_after"] != pytest.approx(res["perplexity_before"], rel=1e-6)
    # the selected Conv1D layers (all but the first, kept dense) hold half their weights
    layer_w = sum(m.weight.numel() for n_, m in dense.named_modules()
                  if type(m).__name__ == "Conv1D" and n_ != "transformer.h.0.attn.c_attn")
    saved = res["before"]["params"] - res["after"]["params"]
    assert 0.45 * layer_w <= saved <= 0.55 * layer_w
    rc, stdout, err = run(["evaluate", str(out), "--test-text", str(texts[1]), "--json"], capsys)
    assert rc == 0, err
    ev = json.loads(stdout)
    assert ev["perplexity_after"] == pytest.approx(res["perplexity_after"], rel=1e-6)


def test_bert_folder_reports_the_embedding_cosine(tmp_path, texts, capsys):
    folder = _folder(tmp_path, "bert")
    out = tmp_path / "b.safetensors"
    res = _compress(folder, out, texts, capsys, "--rank", "8", "--density", "0.1")
    dense, tok = hf.load_hf(folder), hf.load_tokenizer(folder)
    small = lrs_io.load(out, model=dense)
    test = hf.text_batches(texts[1], tok, seq_len=32, batch_size=8, max_batches=8)
    cos = []
    with torch.no_grad():
        for b in test:
            m = b["attention_mask"].unsqueeze(-1).float()
            a = (dense(**b).last_hidden_state * m).sum(1) / m.sum(1)
            c = (small(**b).last_hidden_state * m).sum(1) / m.sum(1)
            cos += [float(torch.dot(x, y) / (x.norm() * y.norm())) for x, y in zip(a, c)]
    assert res["kind"] == "encoder" and res["cosine"]["sentences"] == len(cos)
    assert res["cosine"]["mean"] == pytest.approx(sum(cos) / len(cos), abs=1e-6)
    assert res["cosine"]["min"] == pytest.approx(min(cos), abs=1e-6)
    assert res["cosine"]["mean"] < 1 - 1e-4  # something was compressed


@pytest.mark.parametrize("extra, needle", [
    (["--text", "NOPE.txt"], "NOPE.txt"),
    (["--params", "0.05"], "--budget-scope layers"),
    (["--fine-tune", "1"], "--fine-tune"),
], ids=["missing-text", "whole-model-infeasible", "fine-tune"])
def test_folder_errors_are_one_line(tmp_path, texts, capsys, extra, needle):
    folder = _folder(tmp_path, "gpt2")
    argv = ["compress", str(folder), "--calib", "8", "--seq-len", "16", "-o", str(tmp_path / "x.safetensors")]
    if "--params" not in extra:
        argv += ["--params", "0.9", "--budget-scope", "layers"]
    rc, _, err = run(argv + extra, capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(errors) == 1 and needle in errors[0]
    assert not (tmp_path / "x.safetensors").exists()


def test_text_flag_needs_a_model_folder(tmp_path, texts, capsys):
    rc, _, err = run(["compress", "mlp", "--dataset", "digits", "--params", "0.5", "--text", str(texts[0]),
                      "-o", str(tmp_path / "x.safetensors")], capsys)
    assert rc == 2 and "model folder" in err
