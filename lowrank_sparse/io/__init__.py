"""Save / load compressed models in safetensors, without pickle.

File = safetensors tensors (every entry of the model's ``state_dict``: factors, compact
sparse values and indices, untouched layers' weights, BN buffers) + string metadata:

=================  ==================================================================
key                value
=================  ==================================================================
``format``         "lowrank_sparse"
``schema_version`` "3" (:data:`SCHEMA_VERSION`; version-1 files (no AQ part) and
                   version-2 files (sparse indices stored as plain int32/uint8 tensors) still
                   load)
``arch``           JSON ``{"name": ..., "kwargs": {...}}`` for ``lowrank_sparse.models.build``
                   (or "null" when unknown: load() then needs ``model=``)
``layers``         JSON ``{qualified name: module config}`` of every LowRankSparseLinear /
                   LowRankSparseConv2d (class, geometry, rank, slices, structure, sparse format)
``dtypes``         JSON ``{tensor name: original dtype}`` of tensors stored cast (``dtype=``)
``checksum``       sha256 over all tensors' bytes in name order (detects corrupted data)
``user``           JSON of the caller's remaining ``metadata``
``sparse_indices`` (version 3) JSON ``{qualified name of a sparse part: {"tensors": [packed
                   tensor names], codec description}}``: how its support is packed (below)
``aq.format``      (AQ-quantized models only) ``lowrank_sparse.quant.pack.FORMAT``
``aq.entries``     (AQ only) JSON list, one entry per quantized parameter: {param, group,
                   shape, numel, pad, d, M, K, n_vectors, dtype}
``aq.codebook_dtype`` (AQ only) "float16" or "float32": how the codebooks are stored
=================  ==================================================================

Tensors of an AQ-quantized model (output of :func:`lowrank_sparse.quant.quantize_model`):
each quantized parameter ``<p>`` is stored packed, never as its dense reconstruction:

* ``aq.codes.<p>``: uint8 (ceil(n_vectors * M * ceil(log2 K) / 8),), the bit-packed codes
  (:func:`lowrank_sparse.quant.pack_codes`);
* ``aq.scale.<p>``: float32 () per-tensor scale;
* ``aq.codebooks.<group>``: (M, K, d) float16 or float32, once per codebook group (shared
  codebooks are stored once);

and every other entry of the state (biases, BN buffers, unquantized weights) under its
``state_dict`` name (:func:`lowrank_sparse.quant.non_aq_state_dict`).

Sparse indices (version 3): the index buffers of every pair module's sparse part
(``rows``, ``groups``, ``channels``, ``crow_indices``, ``col_indices``, ``offsets``) are
not stored as they are; :func:`lowrank_sparse.nn.sparse_index.pack_index_state` replaces them
with uint8 tensors named ``<sparse part>.<...>.packed`` / ``<sparse part>.support.*``:
bit-packed at ceil(log2 n) bits, bitmaps, or Rice-coded column gaps of unstructured S,
whichever is smallest (exact; ``channels`` is derived and not stored).  load() decodes
them back into the buffers bit for bit.

load() rebuilds the skeleton (from ``arch`` or a given ``model``), swaps each recorded
pair module in at its qualified name (built from the file's tensors), loads the state
strictly and, for an AQ file, attaches the AQ reconstructions again (codes fixed,
codebooks trainable ``nn.Parameter`` s shared as they were), so the loaded model computes
the same outputs bit for bit, can be fine-tuned with
:func:`lowrank_sparse.quant.fine_tune_codebooks` or baked with
:func:`lowrank_sparse.quant.bake`.  :func:`file_report` splits the file size by component.

save() writes atomically (a temporary file next to the target, fsync'ed and renamed onto
it: an error or a kill midway leaves an existing file as it was) and deterministically
(the same model gives the same bytes).  Every reader checks the whole header against the
schema first (:mod:`.schema`): a damaged file is a ValueError naming the file and the field.

Modules: :mod:`.header` (reading the safetensors header, checksum), :mod:`.schema` (the
header schema, format tag, schema versions), :mod:`.container` (the safetensors byte
layout, written), :mod:`.atomic` (atomic file replacement),
:mod:`.aq` (the AQ metadata and tensors), :mod:`.indices` (packed sparse indices),
:mod:`.layers` (pair configs, rebuilding the pairs), :mod:`.saving`, :mod:`.loading`,
:mod:`.metadata` (read_metadata, file_report).
"""

from __future__ import annotations

from .header import READABLE_VERSIONS, SCHEMA_VERSION
from .loading import load
from .metadata import file_report, read_metadata
from .saving import save

__all__ = ["SCHEMA_VERSION", "READABLE_VERSIONS", "save", "load", "read_metadata", "file_report"]
