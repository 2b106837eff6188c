"""A small GPT-2 trained here on real English prose, cached like the trained CNNs.

* :func:`decoder_text`: the "train" / "calibration" / "test" parts of the English
  Debian Reference (Debian package ``debian-reference-en``, see :mod:`.corpus`), no
  paragraph shared between parts, paragraphs joined by blank lines;
* :func:`train_tokenizer`: a byte-level BPE (``tokenizers``) trained on the training
  text only; every encoded text starts with ``<|endoftext|>`` (the BOS / EOS token);
* :func:`train_decoder`: next-token training on random windows of the training token
  stream (AdamW, linear warm-up then cosine decay, seeded);
* :func:`trained_decoder`: the cached Hugging Face folder (``save_pretrained`` +
  tokenizer files, ``training.json``) under ``$LOWRANK_SPARSE_CACHE``, trained on the
  first call; ``models.hf.load_hf(folder)`` / ``load_tokenizer(folder)`` load it;
* :func:`perplexity`: exp of the mean next-token cross-entropy over real tokens.

The "cpu" schedule (:data:`SCHEDULES`): GPT-2 with n_layer=6, n_embd=384, n_head=6,
n_positions=256, a 4096-token vocabulary and a tied LM head (12.3 M parameters),
300 AdamW steps of 16 windows x 256 tokens on 2 CPU threads.
Measured here (seed 0, 2 CPU cores shared with other jobs): 838 s of training on
the 53,267-token training text (~23 passes), perplexity 200.3 on the test text (6,260
predicted tokens; 207.7 on the calibration text, 45.3 on the training text, 945 for a
smoothed unigram model of the training tokens): the model overfits the small corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from . import corpus

__all__ = ["DecoderSchedule", "SCHEDULES", "decoder_folder", "decoder_text", "perplexity", "token_stream",
           "train_decoder", "train_tokenizer", "trained_decoder"]

#: Bump when anything that changes the trained weights changes (corpus reader, loop).
CACHE_VERSION = 1
#: the BOS / EOS token and the padding token of :func:`train_tokenizer`
EOS, PAD = "<|endoftext|>", "<pad>"


@dataclass(frozen=True)
class DecoderSchedule:
    """Model size and training recipe of :func:`trained_decoder`.

    Attributes:
        n_layer, n_embd, n_head, n_positions: GPT-2 config (``n_positions`` is also the
            training window length).
        vocab_size: BPE vocabulary size (byte alphabet + special tokens + merges).
        steps, batch_size: optimizer steps and windows per step.
        lr, warmup_steps, min_lr_ratio: peak learning rate, linear warm-up steps, the
            cosine decay's floor as a fraction of ``lr``.
        weight_decay, dropout: AdamW weight decay; GPT-2's dropout probabilities
            (Llama: the attention dropout).
        arch: "gpt2" (GELU MLP, ``Conv1D`` layers) or "llama" (RMSNorm, rotary
            positions, gated SiLU MLP ``down(silu(gate x) * up x)``).
        intermediate_size: the Llama MLP's hidden width (GPT-2 uses 4 * n_embd).
    """

    n_layer: int = 6
    n_embd: int = 384
    n_head: int = 6
    n_positions: int = 256
    vocab_size: int = 4096
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    dropout: float = 0.2
    arch: str = "gpt2"
    intermediate_size: int = 1024

    def __post_init__(self) -> None:
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"arch must be 'gpt2' or 'llama', got {self.arch!r}")

    def recipe(self) -> dict[str, Any]:
        """The fields that define the trained weights (a GPT-2 schedule leaves out the
        Llama-only fields, so its cache name is the one it had before they existed)."""
        d = dataclasses.asdict(self)
        if self.arch == "gpt2":
            del d["arch"], d["intermediate_size"]
        return d


#: "cpu": GPT-2 (GELU MLP); "cpu-llama": a Llama-style decoder of the same width and
#: depth with a gated SiLU MLP (12.2 M parameters), the same corpus and recipe.
SCHEDULES: dict[str, DecoderSchedule] = {
    "cpu": DecoderSchedule(),
    "cpu-llama": DecoderSchedule(arch="llama", dropout=0.0),
}


def decoder_text(split: str = "train") -> str:
    """The ``split`` ("train", "calibration" or "test") part of the Debian Reference,
    paragraphs joined by blank lines (see :func:`.corpus.split_paragraphs`).

    Raises:
        ValueError: unknown ``split``.
        FileNotFoundError: ``debian-reference-en`` is not installed.
    """
    if split not in corpus.SPLITS:
        raise ValueError(f"split must be one of {corpus.SPLITS}, got {split!r}")
    return "\n\n".join(corpus.split_paragraphs(corpus.debian_reference_paragraphs())[split])


def train_tokenizer(paragraphs: list[str], vocab_size: int = 4096) -> Any:
    """A byte-level BPE trained on ``paragraphs``, as a ``PreTrainedTokenizerFast``.

    Byte-level: every text encodes (no unknown token) and decodes back exactly.  Ids 0
    and 1 are ``<|endoftext|>`` (BOS, EOS) and ``<pad>``; each encoded text starts with
    ``<|endoftext|>``.
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + special tokens), got {vocab_size}")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(paragraphs, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{EOS} $A", special_tokens=[(EOS, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD)


def token_stream(tokenizer: Any, paragraphs: list[str]) -> torch.Tensor:
    """The paragraphs' tokens concatenated, (N,) int64; each paragraph starts with the
    tokenizer's BOS token, so the stream reads ``<|endoftext|> p1 <|endoftext|> p2 ...``."""
    ids = tokenizer(paragraphs)["input_ids"]
    return torch.tensor([t for row in ids for t in row], dtype=torch.long)


def _gpt2(sched: DecoderSchedule, tokenizer: Any) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=sched.n_layer, n_embd=sched.n_embd, n_head=sched.n_head, n_positions=sched.n_positions,
                     vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     resid_pdrop=sched.dropout, embd_pdrop=sched.dropout, attn_pdrop=sched.dropout,
                     tie_word_embeddings=True)
    return GPT2LMHeadModel(cfg)


def _llama(sched: DecoderSchedule, tokenizer: Any) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=sched.n_embd, intermediate_size=sched.intermediate_size,
                      num_hidden_layers=sched.n_layer, num_attention_heads=sched.n_head,
                      num_key_value_heads=sched.n_head, max_position_embeddings=sched.n_positions,
                      vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      attention_dropout=sched.dropout, hidden_act="silu", tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def _new_model(sched: DecoderSchedule, tokenizer: Any) -> nn.Module:
    return _llama(sched, tokenizer) if sched.arch == "llama" else _gpt2(sched, tokenizer)


def _lr_factor(step: int, sched: DecoderSchedule) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    if step < sched.warmup_steps:
        return (step + 1) / sched.warmup_steps
    span = max(1, sched.steps - sched.warmup_steps)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - sched.warmup_steps) / span)))
    return sched.min_lr_ratio + (1.0 - sched.min_lr_ratio) * cos


def train_decoder(model: nn.Module, stream: torch.Tensor, sched: DecoderSchedule, seed: int = 0,
                  progress: Optional[bool] = None) -> list[float]:
    """Train a causal LM in place on random windows of a token stream.

    Each step draws ``batch_size`` windows of ``n_positions`` consecutive tokens of
    ``stream`` (N,) at seeded random offsets and takes one AdamW step on the mean
    next-token cross-entropy (weight decay on matrices only), with the learning rate of
    :func:`_lr_factor`.  Leaves the model in eval mode.

    Returns:
        The training loss of every step.

    Raises:
        ValueError: ``stream`` is not 1-D or is shorter than one window.
    """
    if stream.dim() != 1 or stream.numel() < sched.n_positions:
        raise ValueError(f"stream must be 1-D with >= n_positions={sched.n_positions} tokens, "
                         f"got shape {tuple(stream.shape)}")
    from tqdm.auto import tqdm

    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": sched.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=sched.lr, betas=(0.9, 0.95))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, sched))
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(sched.n_positions)
    device = next(model.parameters()).device
    losses: list[float] = []
    model.train()
    bar = tqdm(range(sched.steps), desc="decoder", leave=False, disable=None if progress is None else not progress)
    for _ in bar:
        starts = torch.randint(0, stream.numel() - sched.n_positions + 1, (sched.batch_size, 1), generator=gen)
        x = stream[starts + offsets].to(device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def perplexity(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """exp of the mean next-token cross-entropy of a causal LM over real tokens.

    Position t of a row predicts token t + 1; it counts when both are real tokens
    (``attention_mask`` 1 at t and t + 1), so padding on either side is ignored.  The
    mean is over all counted tokens of all batches.

    Args:
        model: a causal LM whose output has ``.logits`` (B, T, V).
        batches: dicts with "input_ids" (B, T) and optionally "attention_mask" (B, T).

    Raises:
        ValueError: no token to predict.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                ids = batch["input_ids"].to(device)
                mask = batch.get("attention_mask")
                mask = torch.ones_like(ids) if mask is None else mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                keep = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)
                nll = torch.nn.functional.cross_entropy(logits[keep], ids[:, 1:][keep], reduction="sum")
                total += float(nll)
                count += int(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("batches have no token to predict (need rows with >= 2 real tokens)")
    return math.exp(total / count)


def _schedule(schedule: str | DecoderSchedule) -> tuple[str, DecoderSchedule]:
    if isinstance(schedule, DecoderSchedule):
        return "custom", schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)} or a DecoderSchedule, got {schedule!r}")
    return schedule, SCHEDULES[schedule]


def decoder_folder(schedule: str | DecoderSchedule = "cpu", seed: int = 0) -> Path:
    """Where :func:`trained_decoder` keeps this model: a name carrying a hash of the
    recipe, the cache version and the training text, so a change never loads stale
    weights."""
    from ..data import cache_dir

    label, sched = _schedule(schedule)
    text = hashlib.sha256(decoder_text("train").encode()).hexdigest()
    recipe = json.dumps({"v": CACHE_VERSION, "schedule": sched.recipe(), "text": text}, sort_keys=True)
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    return cache_dir() / f"decoder-debian-reference-{label}-seed{seed}-{digest}"


def _held_out(model: nn.Module, tokenizer: Any, seq_len: int) -> dict[str, float]:
    """Perplexity on the calibration and test parts, one paragraph per row (``text_batches``)."""
    from .hf import text_batches

    return {f"{split}_perplexity": perplexity(model, text_batches(decoder_text(split), tokenizer, seq_len=seq_len))
            for split in ("calibration", "test")}


def trained_decoder(retrain: bool = False, schedule: str | DecoderSchedule = "cpu", seed: int = 0, *,
                    threads: Optional[int] = 2, progress: Optional[bool] = None) -> Path:
    """The cached folder of the decoder (GPT-2, or Llama-style with ``schedule="cpu-llama"``)
    trained on :func:`decoder_text` ("train"), training it
    when absent (or when ``retrain``).

    Training: the tokenizer on the training text, the model seeded with ``seed``, then
    :func:`train_decoder`; the folder (``save_pretrained`` files, tokenizer files and
    ``training.json`` with the seconds, losses and held-out perplexities) is written
    to a temporary folder and renamed into place.

    Args:
        retrain: train again and replace the cached folder.
        schedule: "cpu", "cpu-llama" or a :class:`DecoderSchedule` (cached under the
            name "custom").
        threads: torch threads while training (restored after); None leaves them.
        progress: tqdm bar; None = only on a terminal.
    """
    label, sched = _schedule(schedule)
    folder = decoder_folder(schedule, seed)
    if (folder / "config.json").is_file() and not retrain:
        return folder
    parts = corpus.split_paragraphs(corpus.debian_reference_paragraphs())
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        tokenizer = train_tokenizer(parts["train"], sched.vocab_size)
        stream = token_stream(tokenizer, parts["train"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _new_model(sched, tokenizer)
            start = time.perf_counter()
            losses = train_decoder(model, stream, sched, seed=seed, progress=progress)
            seconds = time.perf_counter() - start
        info = {"schedule": label, "recipe": dataclasses.asdict(sched), "seed": seed, "train_seconds": round(seconds, 1),
                "threads": torch.get_num_threads(), "train_tokens": stream.numel(),
                "parameters": sum(p.numel() for p in model.parameters()), "final_loss": losses[-1],
                "losses_every_10": losses[::10], "corpus": "debian-reference-en (Debian Reference, GPL-2+)",
                "cache_version": CACHE_VERSION, **_held_out(model, tokenizer, sched.n_positions)}
    finally:
        torch.set_num_threads(old_threads)
    _write(folder, model, tokenizer, info)
    return folder


def _write(folder: Path, model: nn.Module, tokenizer: Any, info: dict[str, Any]) -> None:
    """Save into a temporary sibling folder, then swap it in place of ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging

    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model.save_pretrained(str(tmp))
    finally:
        if bar:
            logging.enable_progress_bar()
    tokenizer.save_pretrained(str(tmp))
    (tmp / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
