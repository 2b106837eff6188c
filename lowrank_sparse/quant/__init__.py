"""Additive quantization (AQ) of model parameters with codebooks shared across layers.

Sun et al., "Toward Compact Parameter Representations for Architecture-Agnostic Neural Network
Compression" (arXiv 2111.10320): each sub-vector of d parameter values is the sum of M
codewords (one per codebook of K entries); codebooks are learnt by beam-search encoding and
least-squares updates, then fine-tuned on the task loss with the codes fixed.
"""

from __future__ import annotations

from .aq import (
    AQConfig,
    Split,
    decode,
    encode,
    encode_greedy,
    learn_codebooks,
    ls_update,
    merge_tensor,
    quantization_error,
    split_tensor,
)
from .apply import AQWeight, aq_entries, bake, codebook_parameters, fine_tune_codebooks, quantize_model
from .pack import (
    aq_state,
    bits_for,
    load_aq_state,
    non_aq_state_dict,
    pack_codes,
    storage_bytes,
    storage_report,
    unpack_codes,
)

__all__ = [
    "AQConfig",
    "Split",
    "AQWeight",
    "split_tensor",
    "merge_tensor",
    "encode",
    "encode_greedy",
    "decode",
    "ls_update",
    "learn_codebooks",
    "quantization_error",
    "quantize_model",
    "fine_tune_codebooks",
    "bake",
    "aq_entries",
    "codebook_parameters",
    "aq_state",
    "load_aq_state",
    "storage_bytes",
    "storage_report",
    "non_aq_state_dict",
    "pack_codes",
    "unpack_codes",
    "bits_for",
]
