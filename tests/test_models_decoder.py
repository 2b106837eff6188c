"""The decoder LM module: perplexity against a hand formula, the corpus reader and split,
the BPE tokenizer, the trainer and the cached folder (tiny configs, seconds)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from lowrank_sparse.models import corpus, decoder, hf  # noqa: E402

V = 40


def _tiny_gpt2(vocab: int = V, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def _rows(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g) for n in (12, 5, 9, 2, 16, 7)]


def _padded(rows: list[torch.Tensor], pad_fill: int, left: bool = False) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_fill)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    return {"input_ids": ids, "attention_mask": mask}


def _hand_perplexity(model, batches) -> float:
    """Position by position: token t predicts t + 1 when both are real tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            ids, mask = b["input_ids"], b["attention_mask"]
            for i in range(ids.shape[0]):
                for t in range(ids.shape[1] - 1):
                    if mask[i, t] == 1 and mask[i, t + 1] == 1:
                        total += float(F.cross_entropy(logits[i, t][None], ids[i, t + 1][None]))
                        count += 1
    return math.exp(total / count)


def test_perplexity_matches_hand_formula_on_padded_batches():
    model, rows = _tiny_gpt2(), _rows()
    batches = [_padded(rows[:3], pad_fill=0), _padded(rows[3:], pad_fill=0)]
    got = decoder.perplexity(model, batches)
    assert got == pytest.approx(_hand_perplexity(model, batches), rel=1e-5)
    # transformers' own loss with padding labelled -100, weighted by predicted tokens
    nll = n = 0.0
    with torch.no_grad():
        for b in batches:
            labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
            k = int((labels[:, 1:] != -100).sum())
            nll += float(model(**b, labels=labels).loss) * k
            n += k
    assert got == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert 1.0 < got < 10 * V  # a random model is near the vocabulary size


def test_padding_tokens_do_not_change_perplexity():
    model, rows = _tiny_gpt2(), _rows(1)
    alone = decoder.perplexity(model, [{"input_ids": r[None]} for r in rows])  # no padding at all
    for fill in (0, 7, V - 1):
        assert decoder.perplexity(model, [_padded(rows, fill)]) == pytest.approx(alone, rel=1e-5)
    # a model's prediction does depend on the tokens, so the check above can fail
    shuffled = [r.flip(0) for r in rows]
    assert decoder.perplexity(model, [_padded(shuffled, 0)]) != pytest.approx(alone, rel=1e-3)


def test_perplexity_left_padding_matches_hand_formula_and_errors():
    model, rows = _tiny_gpt2(), _rows(2)
    batch = [_padded(rows, pad_fill=3, left=True)]
    assert decoder.perplexity(model, batch) == pytest.approx(_hand_perplexity(model, batch), rel=1e-5)
    empty = {"input_ids": torch.zeros((2, 4), dtype=torch.long), "attention_mask": torch.zeros((2, 4))}
    with pytest.raises(ValueError, match="no token"):
        decoder.perplexity(model, [empty])
    model.train()
    decoder.perplexity(model, batch)
    assert model.training  # mode restored


HTML = """<html><head><title>T</title></head><body>
<div class="navheader"><p>Navigation text that is long enough to be kept if not skipped.</p></div>
<div class="toc"><p>Table of contents entry that is long enough to be kept too.</p></div>
<div class="section"><p class="title"><b>Table 1.1. A caption long enough to pass the filter</b></p>
<p>The   first paragraph &amp; its <code>inline code</code>,
spread over two lines.</p>
<pre class="screen">$ a code listing that is long enough to be kept as well</pre>
<table><tr><td><p>A table cell paragraph that is long enough to be kept.</p></td></tr></table>
<p>Short one.</p>
<div class="note"><p>A second paragraph inside a note, long enough to be kept.</p></div></div>
</body></html>"""


def test_html_paragraphs_keep_prose_only():
    assert corpus.html_paragraphs(HTML) == [
        "The first paragraph & its inline code, spread over two lines.",
        "A second paragraph inside a note, long enough to be kept.",
    ]
    with pytest.raises(TypeError, match="html"):
        corpus.html_paragraphs(b"<p>bytes</p>")


def _english(n: int = 120) -> list[str]:
    return [p for p in hf.english_text("calibration").split("\n\n") if len(p) > 60][:n]


def test_split_parts_are_disjoint_and_cover_the_unique_paragraphs():
    paras = [f"paragraph number {i} " + "x" * (i % 7) for i in range(230)]
    paras += paras[::3] + [" " + paras[5].replace(" ", "   ") + "\n"]  # repeats, one differing in whitespace
    parts = corpus.split_paragraphs(paras)
    norm = {s: {" ".join(p.split()) for p in parts[s]} for s in corpus.SPLITS}
    assert not norm["train"] & norm["test"] and not norm["train"] & norm["calibration"]
    assert not norm["calibration"] & norm["test"]
    assert sum(len(parts[s]) for s in corpus.SPLITS) == 230
    assert set().union(*norm.values()) == {" ".join(p.split()) for p in paras}
    # blocks of 10: paragraphs 0-9, 100-109, 200-209 test; 50-59, 150-159 calibration
    assert parts["test"][:10] == paras[:10] and len(parts["test"]) == 30
    assert parts["calibration"][:10] == paras[50:60] and len(parts["calibration"]) == 20
    with pytest.raises(ValueError, match="block"):
        corpus.split_paragraphs(paras, block=0)


@pytest.mark.skipif(not (corpus.DEBIAN_REFERENCE / "ch01.en.html").is_file(),
                    reason="debian-reference-en not installed")
def test_debian_reference_splits_share_no_paragraph():
    texts = {s: decoder.decoder_text(s) for s in corpus.SPLITS}
    paras = {s: {" ".join(p.split()) for p in t.split("\n\n")} for s, t in texts.items()}
    assert not paras["train"] & paras["test"] and not paras["train"] & paras["calibration"]
    assert not paras["calibration"] & paras["test"]
    assert len(texts["train"]) > 150_000 and min(len(texts["test"]), len(texts["calibration"])) > 15_000
    for tag in ("<p>", "</p>", "<code", "&amp;", "&lt;"):  # markup stripped, entities decoded
        assert tag not in texts["train"] + texts["calibration"] + texts["test"]
    with pytest.raises(ValueError, match="split"):
        decoder.decoder_text("validation")


def test_tokenizer_round_trips_text(tmp_path):
    tok = decoder.train_tokenizer(_english(), vocab_size=400)
    assert len(tok) == 400 and tok.convert_ids_to_tokens([0, 1]) == [decoder.EOS, decoder.PAD]
    for text in ["The for statement iterates over the items of a sequence.",
                 "Unseen: naïve café — 3.14 ≠ π, tabs\tand  double  spaces\nnew line"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.eos_token_id == tok.bos_token_id == 0 and 0 not in ids[1:]
        assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(str(tmp_path))
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    text = "A paragraph that the reloaded tokenizer must encode identically."
    assert again(text)["input_ids"] == tok(text)["input_ids"] and again.pad_token_id == 1
    with pytest.raises(ValueError, match="vocab_size"):
        decoder.train_tokenizer(_english(5), vocab_size=100)


TINY = decoder.DecoderSchedule(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=300, steps=40,
                               batch_size=8, lr=3e-3, warmup_steps=4, dropout=0.0)


def test_trainer_reduces_loss_and_is_seeded():
    paras = _english(60)
    tok = decoder.train_tokenizer(paras, TINY.vocab_size)
    stream = decoder.token_stream(tok, paras)
    assert stream[0] == 0 and int((stream == 0).sum()) == len(paras)  # one EOS before each paragraph
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = decoder._gpt2(TINY, tok)
        runs.append(decoder.train_decoder(model, stream, TINY, seed=0, progress=False))
    losses = runs[0]
    assert runs[0] == runs[1] and len(losses) == TINY.steps
    assert losses[0] == pytest.approx(math.log(TINY.vocab_size), rel=0.1)  # uniform-ish start
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
    assert not model.training
    with pytest.raises(ValueError, match="stream"):
        decoder.train_decoder(model, stream[:10], TINY)


def test_learning_rate_warms_up_then_decays_by_cosine():
    s = decoder.DecoderSchedule(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert decoder._lr_factor(0, s) == pytest.approx(0.1) and decoder._lr_factor(9, s) == pytest.approx(1.0)
    assert decoder._lr_factor(60, s) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert decoder._lr_factor(110, s) == pytest.approx(0.1)


def test_trained_decoder_folder_is_cached_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(tmp_path))
    paras = _english(100)
    monkeypatch.setattr(corpus, "debian_reference_paragraphs", lambda: list(paras))
    sched = dataclasses.replace(TINY, steps=5)
    folder = decoder.trained_decoder(schedule=sched, progress=False)
    assert folder.parent == tmp_path and (folder / "training.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert decoder.trained_decoder(schedule=sched) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not trained again
    model, tok = hf.load_hf(folder), hf.load_tokenizer(folder)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied head
    assert model.config.vocab_size == len(tok) == sched.vocab_size
    info = json.loads((folder / "training.json").read_text())
    batches = hf.text_batches(decoder.decoder_text("test"), tok, seq_len=sched.n_positions)
    assert info["test_perplexity"] == pytest.approx(decoder.perplexity(model, batches), rel=1e-4)
    with pytest.raises(ValueError, match="schedule"):
        decoder.trained_decoder(schedule="fast")


def test_llama_schedule_trains_a_gated_decoder_and_keeps_the_gpt2_cache_name():
    from lowrank_sparse.calibrate.gated import gated_blocks

    paras = _english(60)
    tiny = dataclasses.replace(TINY, arch="llama", intermediate_size=48, dropout=0.0)
    tok = decoder.train_tokenizer(paras, tiny.vocab_size)
    torch.manual_seed(0)
    model = decoder._new_model(tiny, tok)
    assert isinstance(model, transformers.LlamaForCausalLM)
    blocks = gated_blocks(model)
    assert len(blocks) == tiny.n_layer and all(b.activation.name == "silu" for b in blocks)
    losses = decoder.train_decoder(model, decoder.token_stream(tok, paras), tiny, seed=0, progress=False)
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
    # the GPT-2 recipe hashes as it did before the Llama fields existed
    gpt2 = decoder.SCHEDULES["cpu"].recipe()
    assert "arch" not in gpt2 and "intermediate_size" not in gpt2
    assert decoder.decoder_folder("cpu") != decoder.decoder_folder("cpu-llama")
    with pytest.raises(ValueError, match="arch"):
        decoder.DecoderSchedule(arch="t5")
