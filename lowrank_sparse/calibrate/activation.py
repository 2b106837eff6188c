"""Which activation a module or a traced call is, as the solver understands it.

:class:`ActivationInfo` records the activation applied to a layer's output;
:func:`activation_of_module` / :func:`activation_of_call` recognise activation modules
(``nn.ReLU``, ``nn.LeakyReLU``, ``nn.GELU``, ``nn.SiLU``, ``nn.Tanh``, ``nn.ReLU6``)
and functional calls in a torch.fx graph (``F.relu`` / ``torch.relu`` / ``.relu()``
and friends), and the activation modules of Hugging Face ``transformers`` by class name
(:data:`HF_ACTIVATIONS`: ``GELUActivation`` is exact GELU, ``NewGELUActivation`` and the
other tanh forms approximate GELU, ``SiLUActivation`` is SiLU).  ``ReLU6`` is fitted as ReLU (the clip at 6 is ignored) and the
tanh-approximate GELU as exact GELU; both are marked not exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NONLINEAR", "ActivationInfo", "activation_of_call", "activation_of_module"]

#: Activation names understood by the solver (lowrank_sparse.decompose).
NONLINEAR = ("relu", "leaky_relu", "gelu", "silu", "tanh")


@dataclass
class ActivationInfo:
    """The activation applied to a layer's output.

    Attributes:
        name: "identity" (fitted as a linear map) or one of "relu", "leaky_relu",
            "gelu", "silu", "tanh".
        negative_slope: slope of "leaky_relu" for negative inputs.
        exact: False when the real activation is only approximated by ``name``
            (ReLU6 fitted as ReLU, GELU with the tanh approximation fitted as GELU).
        source: how it was found: "fx" (graph trace), "hooks" (runtime dataflow),
            or "none" (nothing found / not detectable).
        bn: qualified name of a BatchNorm between the layer and the activation
            (folded into the objective), or None.
        via: the chain that was followed, e.g. "bn1 -> relu" (for the report).
        note: why the layer is fitted as linear, or what is approximate.
    """

    name: str = "identity"
    negative_slope: float = 0.01
    exact: bool = True
    source: str = "none"
    bn: Optional[str] = None
    via: str = ""
    note: str = ""

    @property
    def nonlinear(self) -> bool:
        return self.name != "identity"

    def describe(self) -> str:
        """Short text for tables, e.g. "relu (after bn1, fx)"."""
        parts = []
        if self.bn:
            parts.append(f"after {self.bn}")
        if self.source != "none":
            parts.append(self.source)
        if not self.exact:
            parts.append("approx")
        name = self.name if self.name != "leaky_relu" else f"leaky_relu({self.negative_slope:g})"
        return name + (f" ({', '.join(parts)})" if parts else "")


_GELU_TANH_NOTE = "tanh-approximate GELU fitted as exact GELU"


#: ``transformers.activations`` classes (matched by name, transformers is not imported):
#: (solver activation, exact, note).
HF_ACTIVATIONS: dict[str, tuple[str, bool, str]] = {
    "GELUActivation": ("gelu", True, ""),
    "NewGELUActivation": ("gelu", False, _GELU_TANH_NOTE),
    "GELUTanh": ("gelu", False, _GELU_TANH_NOTE),
    "PytorchGELUTanh": ("gelu", False, _GELU_TANH_NOTE),
    "FastGELUActivation": ("gelu", False, _GELU_TANH_NOTE),
    "AccurateGELUActivation": ("gelu", False, _GELU_TANH_NOTE),
    "QuickGELUActivation": ("gelu", False, "x * sigmoid(1.702 x) fitted as exact GELU"),
    "ClippedGELUActivation": ("gelu", False, "clipped GELU fitted as exact GELU (clip ignored)"),
    "SiLUActivation": ("silu", True, ""),
}


def _hf_activation(mod: nn.Module) -> Optional[ActivationInfo]:
    cls = type(mod)
    entry = HF_ACTIVATIONS.get(cls.__name__) if cls.__module__.startswith("transformers.") else None
    if entry is None:
        return None
    name, exact, note = entry
    return ActivationInfo(name, exact=exact, note=note)


def is_hf_identity(mod: nn.Module) -> bool:
    """Whether ``mod`` is transformers' ``LinearActivation`` (the identity)."""
    cls = type(mod)
    return cls.__name__ == "LinearActivation" and cls.__module__.startswith("transformers.")


def activation_of_module(mod: nn.Module) -> Optional[ActivationInfo]:
    """ActivationInfo for an activation module (torch's, or one of transformers'
    :data:`HF_ACTIVATIONS`), None for any other module."""
    hf = _hf_activation(mod)
    if hf is not None:
        return hf
    if isinstance(mod, nn.ReLU):
        return ActivationInfo("relu")
    if isinstance(mod, nn.ReLU6):
        return ActivationInfo("relu", exact=False, note="ReLU6 fitted as ReLU (clip at 6 ignored)")
    if isinstance(mod, nn.LeakyReLU):
        return ActivationInfo("leaky_relu", negative_slope=float(mod.negative_slope))
    if isinstance(mod, nn.GELU):
        if mod.approximate != "none":
            return ActivationInfo("gelu", exact=False, note=_GELU_TANH_NOTE)
        return ActivationInfo("gelu")
    if isinstance(mod, nn.SiLU):
        return ActivationInfo("silu")
    if isinstance(mod, nn.Tanh):
        return ActivationInfo("tanh")
    return None


def _functional_table() -> dict[Any, str]:
    return {
        F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
        F.leaky_relu: "leaky_relu", F.gelu: "gelu", F.silu: "silu",
        torch.tanh: "tanh", F.tanh: "tanh", F.relu6: "relu6", F.hardtanh: "hardtanh",
    }  # fmt: skip


_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh"}


def _activation_of_function(node: Any, kind: str) -> Optional[ActivationInfo]:
    if kind == "leaky_relu":
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        if not isinstance(slope, (int, float)):
            return None
        return ActivationInfo("leaky_relu", negative_slope=float(slope))
    if kind == "gelu":
        if node.kwargs.get("approximate", "none") != "none":
            return ActivationInfo("gelu", exact=False, note=_GELU_TANH_NOTE)
        return ActivationInfo("gelu")
    if kind == "relu6":
        return ActivationInfo("relu", exact=False, note="relu6 fitted as ReLU (clip at 6 ignored)")
    if kind == "hardtanh":
        return None
    return ActivationInfo(kind)


def activation_of_call(node: Any) -> Optional[ActivationInfo]:
    """ActivationInfo for an fx ``call_function`` / ``call_method`` node, or None."""
    if node.op == "call_function":
        kind = _functional_table().get(node.target)
        return None if kind is None else _activation_of_function(node, kind)
    if node.op == "call_method":
        kind = _METHODS.get(node.target)
        return ActivationInfo(kind) if kind else None
    return None
