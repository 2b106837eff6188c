"""compress(): replace a trained model's layers by low-rank + sparse pairs.

Modules, one job each:

* :mod:`.pipeline`: :func:`compress`, the one-call entry point;
* :mod:`.options`: its keywords and config objects resolved into one set of settings;
* :mod:`.configs`: one config dataclass per method (:class:`LowRankSparseConfig`,
  :class:`RankOnlyConfig`, :class:`SparseOnlyConfig`);
* :mod:`.methods`: the registry (method name -> config class + per-layer handler);
* :mod:`.peer_configs` / :mod:`.peer_methods`: the peers of :mod:`lowrank_sparse.peers`
  as methods "wanda", "sparsegpt", "svd_llm", "oats" (:class:`WandaConfig`, ...);
* :mod:`.selection`: which layers are compressed;
* :mod:`.plan`: every layer's rank / density (explicit, or from a budget);
* :mod:`.layer`: compress one layer and report it;
* :mod:`.errors`: output errors against the original layer.
"""

from .configs import DensitySpec, LowRankSparseConfig, MethodConfig, RankOnlyConfig, RankSpec, SparseOnlyConfig
from .errors import dense_error, output_error
from .methods import LayerProblem, Method, get_method, method_names, method_of_config, register_method, solve_layer
from .peer_configs import OATSConfig, SparseGPTConfig, SVDLLMConfig, WandaConfig
from . import peer_methods  # noqa: F401  (registers the peer methods)
from .pipeline import compress
from .selection import select_layers

#: The built-in method names (the peers included).
METHODS = method_names()

__all__ = [
    "DensitySpec", "LayerProblem", "LowRankSparseConfig", "METHODS", "Method", "MethodConfig", "RankOnlyConfig",
    "RankSpec", "SparseOnlyConfig", "compress", "dense_error", "get_method", "method_names", "method_of_config",
    "output_error", "register_method", "select_layers", "solve_layer",
    "OATSConfig", "SVDLLMConfig", "SparseGPTConfig", "WandaConfig",
]
