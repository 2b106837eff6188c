"""Structured-sparsity operators and the warm-started truncated SVD.

Every function accepts a numpy array or a torch tensor (float32 or float64) and
returns the same kind.  numpy arrays and CPU tensors run in the C++ core
(``lowrank_sparse._core``; CPU tensors cross through ``.numpy()`` without a copy
when contiguous); CUDA tensors run the pure-torch versions in
:mod:`lowrank_sparse.ops.torch_ops`, which have identical semantics.  Inputs are
never modified.

Semantics (shared by both backends):

* ``soft_threshold(x, tau)``: sign(x) * max(|x| - tau, 0) (prox of tau*||x||_1).
* ``topk_project(x, k)``: keep the k entries of largest |x| (flat order), exactly k;
  ties go to the lower flat index.
* ``group_soft_threshold(x, tau, structure)``: prox of tau * sum_g ||x_g||_2.
* ``group_topk_project(x, k, structure)``: keep the k groups of largest L2 norm
  (ties: lower group index).  Groups: rows, columns, or input channels (column
  blocks of ``block`` = kh*kw) of an (m, n) matrix.
* ``nm_project(x, n, m)``: N:M along the input dimension (columns).
* ``project(x, k, structure)``: the hard projection S is kept on in ADMM.
* ``truncated_svd`` / ``svt``: randomized subspace iteration warm-started from the
  previous right subspace.

Modules: :mod:`.prox` (the sparsity operators), :mod:`.svd` (truncated SVD, SVT),
:mod:`.threads` (the core's thread count), :mod:`.torch_ops` (the pure-torch twins),
:mod:`._checks` (argument checks), :mod:`._boundary` (the crossing into the core).
"""

from __future__ import annotations

from . import torch_ops
from .prox import group_soft_threshold, group_topk_project, nm_project, project, soft_threshold, topk_project
from .svd import svt, truncated_svd
from .threads import get_num_threads, set_num_threads

__all__ = [
    "soft_threshold",
    "topk_project",
    "group_soft_threshold",
    "group_topk_project",
    "nm_project",
    "project",
    "truncated_svd",
    "svt",
    "set_num_threads",
    "get_num_threads",
    "torch_ops",
]
