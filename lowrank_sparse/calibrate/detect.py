"""Activation detection: which activation directly consumes each layer's output.

The objective of a layer is its output after that activation.  With ``torch.fx`` (when
the model is symbolically traceable, :func:`detect_activations`) the graph is followed
from the layer's node through ``Dropout`` / ``Identity`` and at most one foldable
BatchNorm: if the only consumer is an activation module or a functional activation,
it is the layer's activation.  Otherwise (model not traceable) :class:`RuntimeDetector`
watches the first calibration batch with hooks on the leaf modules: an activation
module whose input is the very tensor (same object, unmodified version counter)
produced by the layer, or by a BatchNorm fed by it, is the layer's activation.
Functional activations cannot be seen that way and the layer is then fitted as linear
("identity"), which the report says.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activation import ActivationInfo, activation_of_call, activation_of_module, is_hf_identity
from .fold import BN_MODULES, bn_foldable
from .gated import gated_blocks
from .layers import find_layers

__all__ = ["GATED_DOWN_NOTE", "GATED_MLP_NOTE", "PASS_MODULES", "RuntimeDetector", "detect_activations", "gated_mlp_layers"]

#: Pass-through modules between a layer and its activation (identity in eval mode).
PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)

GATED_MLP_NOTE = ("gated MLP (down_proj(act(gate_proj(x)) * up_proj(x))): fitted as linear on its input "
                  "Gram, the gate's product is not modelled")
GATED_DOWN_NOTE = "gated MLP down_proj: its input is act(gate x) * (up x); fitted as linear on its input Gram (exact)"


def gated_mlp_layers(model: nn.Module) -> dict[str, str]:
    """{qualified name: note} of the layers of every gated MLP block in ``model``
    (:func:`~lowrank_sparse.calibrate.gated.gated_blocks`): the note of the linear
    fit, which calibration replaces for gate_proj / up_proj when it collects their
    gated objective (:mod:`~lowrank_sparse.calibrate.gated`)."""
    out: dict[str, str] = {}
    for b in gated_blocks(model):
        out[b.gate] = out[b.up] = GATED_MLP_NOTE
        out[b.down] = GATED_DOWN_NOTE
    return out


#: Longest chain of pass-through / BatchNorm nodes followed in the graph.
_MAX_CHAIN = 8


def detect_activations(
    model: nn.Module, layer_names: Optional[Iterable[str]] = None
) -> tuple[dict[str, ActivationInfo], str, str]:
    """Detect the activation after each layer with torch.fx.

    Args:
        model: the network (not modified).
        layer_names: qualified names to look at (default: all compressible layers).

    Returns:
        (infos, method, note): ``method`` is "fx" when the trace succeeded; when the
        model is not traceable ``infos`` is empty, ``method`` is "hooks" (the
        runtime dataflow check, :class:`RuntimeDetector`, is to be used) and
        ``note`` says why tracing failed.
    """
    if layer_names is None:
        layer_names = [n for n, _ in find_layers(model)[0]]
    names = set(layer_names)
    try:
        return _detect_fx(model, names), "fx", ""
    except Exception as err:  # noqa: BLE001 - any tracing failure means "not traceable"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        return {}, "hooks", f"model is not fx-traceable ({type(err).__name__}: {msg[:120]})"


def _detect_fx(model: nn.Module, names: set[str]) -> dict[str, ActivationInfo]:
    """Activation detection on a torch.fx trace; raises if the model is not traceable."""
    import torch.fx as fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    found: dict[str, list[ActivationInfo]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in names:
            found.setdefault(str(node.target), []).append(_follow_fx(node, modules))
    return {name: _merge_calls(found.get(name)) for name in names}


def _merge_calls(infos: Optional[list[ActivationInfo]]) -> ActivationInfo:
    """One ActivationInfo for a layer traced at one or more call sites."""
    if not infos:
        return ActivationInfo(source="fx", note="layer not reached in the traced graph")
    first = infos[0]
    if all((i.name, i.negative_slope, i.bn) == (first.name, first.negative_slope, first.bn) for i in infos):
        return first
    return ActivationInfo(
        source="fx", note=f"layer is called {len(infos)} times with different activations; fitted as linear"
    )


def _call_label(node: Any) -> str:
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _follow_fx(node: Any, modules: dict[str, nn.Module]) -> ActivationInfo:
    """Follow the graph from a layer's node to the activation that consumes it."""
    chain: list[str] = []
    bn: Optional[str] = None
    cur = node
    for _ in range(_MAX_CHAIN):
        users = list(cur.users)
        if len(users) != 1:
            why = "output is not used" if not users else f"output has {len(users)} consumers"
            return ActivationInfo(source="fx", bn=None, via=" -> ".join(chain), note=f"{why}; fitted as linear")
        nxt = users[0]
        if nxt.args[:1] != (cur,) and not (nxt.op == "call_method" and nxt.args and nxt.args[0] is cur):
            return ActivationInfo(source="fx", note="consumer does not take the output as first argument; "
                                                    "fitted as linear")
        if nxt.op == "call_module":
            mod = modules.get(str(nxt.target))
            if isinstance(mod, PASS_MODULES) or (mod is not None and is_hf_identity(mod)):
                chain.append(str(nxt.target))
                cur = nxt
                continue
            if isinstance(mod, BN_MODULES) and bn is None:
                reason = bn_foldable(mod)
                if reason:
                    return ActivationInfo(source="fx", note=reason + "; fitted as linear")
                bn = str(nxt.target)
                chain.append(bn)
                cur = nxt
                continue
            act = activation_of_module(mod) if mod is not None else None
            label = str(nxt.target)
        elif nxt.op == "call_function" and nxt.target in (F.dropout,):
            chain.append("dropout")
            cur = nxt
            continue
        else:
            act = activation_of_call(nxt)
            label = _call_label(nxt)
        if act is None:
            break
        chain.append(label)
        act.source, act.bn, act.via = "fx", bn, " -> ".join(chain)
        return act
    if bn is not None:
        return ActivationInfo(source="fx", via=" -> ".join(chain),
                              note=f"{bn} is not followed by an activation; fitted as linear")
    return ActivationInfo(source="fx", via=" -> ".join(chain))


class RuntimeDetector:
    """Hook-based detection for models torch.fx cannot trace (first batch only).

    Construct before the first forward (it registers hooks), call :meth:`finish`
    after it (it removes them and returns one ActivationInfo per layer).
    """

    def __init__(self, model: nn.Module, layer_names: set[str]) -> None:
        self.layer_names = layer_names
        self.produced: dict[int, tuple[torch.Tensor, int, str, Optional[str]]] = {}
        self.result: dict[str, list[ActivationInfo]] = {}
        self.handles: list[Any] = []
        self.active = True
        for name, mod in model.named_modules():
            if name in layer_names:
                self.handles.append(mod.register_forward_hook(self._layer_hook(name)))
            elif isinstance(mod, BN_MODULES):
                self.handles.append(mod.register_forward_hook(self._bn_hook(name, mod)))
            elif activation_of_module(mod) is not None:
                self.handles.append(mod.register_forward_pre_hook(self._act_hook(name, mod)))
            elif isinstance(mod, PASS_MODULES) or is_hf_identity(mod):
                self.handles.append(mod.register_forward_hook(self._pass_hook()))

    def _record(self, out: Any, layer: str, bn: Optional[str]) -> None:
        if isinstance(out, torch.Tensor):
            self.produced[id(out)] = (out, out._version, layer, bn)

    def _lookup(self, t: Any) -> Optional[tuple[str, Optional[str]]]:
        """(layer, bn) that produced ``t`` unmodified, or None."""
        if not isinstance(t, torch.Tensor):
            return None
        rec = self.produced.get(id(t))
        if rec is None or rec[0] is not t or rec[1] != t._version:
            return None
        return rec[2], rec[3]

    def _layer_hook(self, name: str):
        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            if self.active:
                self.result.setdefault(name, [])
                self._record(out, name, None)
        return hook

    def _bn_hook(self, name: str, bn: nn.Module):
        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            if not self.active or not inp:
                return
            src = self._lookup(inp[0])
            if src is not None and src[1] is None and bn_foldable(bn) is None:
                self._record(out, src[0], name)
        return hook

    def _pass_hook(self):
        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            if not self.active or not inp:
                return
            src = self._lookup(inp[0])
            if src is not None and out is not inp[0]:
                self._record(out, *src)
        return hook

    def _act_hook(self, name: str, mod: nn.Module):
        def hook(m: nn.Module, inp: Any) -> None:
            if not self.active or not inp:
                return
            src = self._lookup(inp[0])
            if src is None:
                return
            act = activation_of_module(mod)
            assert act is not None
            act.source, act.bn = "hooks", src[1]
            act.via = " -> ".join([x for x in (src[1], name) if x])
            self.result.setdefault(src[0], []).append(act)
        return hook

    def finish(self) -> dict[str, ActivationInfo]:
        """Remove the hooks; the activation of every layer (identity when none was seen)."""
        self.active = False
        self.produced.clear()
        for h in self.handles:
            h.remove()
        out: dict[str, ActivationInfo] = {}
        for name in self.layer_names:
            acts = self.result.get(name, [])
            if not acts:
                out[name] = ActivationInfo(
                    source="none",
                    note="no activation module consumes the output (functional activations are "
                         "not visible without torch.fx); fitted as linear",
                )
            elif len(acts) > 1 and any((a.name, a.bn) != (acts[0].name, acts[0].bn) for a in acts):
                out[name] = ActivationInfo(source="hooks", note="different activations per call; fitted as linear")
            else:
                out[name] = acts[0]
        return out
