"""Calibration: per-layer input statistics and activation detection.

For every compressible layer of a model (``nn.Linear``; ``nn.Conv2d`` with
``groups == 1``) :func:`calibrate` runs the model over calibration data with forward
hooks and collects, without ever keeping all activations:

* ``gram``: the (n, n) second-moment matrix ``G = X X^T / N`` of the layer's inputs,
  accumulated in float64 over all batches.  X is (n, N) with one column per sample:
  a Linear layer's input rows (all leading dims flattened), or a conv layer's input
  patches (``F.unfold`` with the conv's stride / padding / dilation, n = in*kh*kw,
  one column per output pixel per image);
* ``count``: N, the number of columns seen;
* ``sample``: a seeded, uniform subsample without replacement of at most
  ``sample_size`` (default 8192) input columns, (n, s), for layers followed by a
  nonlinear activation (the activation-aware objective needs the columns
  themselves, not only their Gram matrix).  It is kept as a bottom-k sample: each
  column gets a random key from a per-layer generator seeded from ``seed`` and the
  layer's index, and the ``sample_size`` smallest keys are kept, so memory is
  bounded by ``sample_size + batch columns`` and the result depends only on the
  seed and the data order.

Activation detection (:func:`detect_activations`).  The objective of a layer is its
output after the activation that directly consumes it.  With ``torch.fx`` (when the
model is symbolically traceable) the graph is followed from the layer's node through
``Dropout`` / ``Identity`` and at most one BatchNorm: if the only consumer is an
activation (module ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.GELU``, ``nn.SiLU``,
``nn.Tanh``, ``nn.ReLU6``; or functional ``F.relu``/``torch.relu``/``.relu()`` and
friends) it is the layer's activation.  Otherwise (model not traceable) the first
calibration batch is watched with hooks on every leaf module: an activation module
whose input is the very tensor (same object, unmodified version counter) produced by
the layer, or by a BatchNorm fed by it, is the layer's activation; functional
activations cannot be seen this way and the layer is then fitted as linear
("identity"), which the report says.  ``nn.ReLU6`` is fitted as ReLU (the clip at 6
is ignored) and marked not exact.

BatchNorm folding: a layer followed by an eval-mode BatchNorm with running
statistics and then an activation has the objective ``act(a * (W x + b) + c)`` with
per-output-channel ``a = gamma / sqrt(var + eps)``, ``c = beta - mean * a``.  The
statistics record ``bn_scale = a`` and ``bn_shift = c`` so the solver can be run on
the folded weight ``diag(a) W`` and bias ``a * b + c`` (:meth:`LayerStats.folded`).
A BatchNorm without running statistics cannot be folded: the layer is then fitted
as linear and the reason is reported.

Calibration runs the model in eval mode (BatchNorm running statistics, no dropout)
and restores each module's training flag afterwards; the model's parameters are
never modified.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ActivationInfo",
    "Calibration",
    "LayerStats",
    "calibrate",
    "detect_activations",
    "find_layers",
    "iter_batches",
    "layer_input_matrix",
    "conv_padding",
    "stats_error",
]

#: Default size of the per-layer subsample of input columns.
DEFAULT_SAMPLE_SIZE = 8192

#: Activation names understood by the solver (lowrank_sparse.decompose).
NONLINEAR = ("relu", "leaky_relu", "gelu", "silu", "tanh")

CalibrationData = Union[torch.Tensor, Iterable[Any]]

# Pass-through modules between a layer and its activation (identity in eval mode).
_PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)


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
        """Short text for tables, e.g. "relu (bn1, fx)"."""
        parts = []
        if self.bn:
            parts.append(f"after {self.bn}")
        if self.source != "none":
            parts.append(self.source)
        if not self.exact:
            parts.append("approx")
        name = self.name if self.name != "leaky_relu" else f"leaky_relu({self.negative_slope:g})"
        return name + (f" ({', '.join(parts)})" if parts else "")


@dataclass
class LayerStats:
    """Calibration statistics of one layer.

    Attributes:
        name: qualified module name in the model.
        kind: "linear" or "conv".
        weight_shape: (m, n) of the weight as a matrix: (out, in) or (out, in*kh*kw).
        block: kh*kw for convs, 1 for linear layers.
        kernel_size, stride, padding, dilation: conv geometry (None for linear).
        in_hw, out_hw: input / output spatial size (H, W) of a conv from the first
            batch (None for linear).
        count: N, input columns seen (samples; for convs samples * output pixels).
        gram: (n, n) float64, X X^T / N.
        mean: (n,) float64, the mean input column X 1 / N.
        sample: (n, s) subsample of input columns (dtype of the input), or None.
        activation: the detected activation.
        bn_scale, bn_shift: (m,) float64 folded BatchNorm affine (see module doc),
            or None.
        calls: how many times the layer ran per forward pass (first batch).
    """

    name: str
    kind: str
    weight_shape: tuple[int, int]
    block: int = 1
    kernel_size: Optional[tuple[int, int]] = None
    stride: Optional[tuple[int, int]] = None
    padding: Optional[tuple[int, int, int, int]] = None
    dilation: Optional[tuple[int, int]] = None
    in_hw: Optional[tuple[int, int]] = None
    out_hw: Optional[tuple[int, int]] = None
    count: int = 0
    gram: Optional[torch.Tensor] = None
    mean: Optional[torch.Tensor] = None
    sample: Optional[torch.Tensor] = None
    activation: ActivationInfo = field(default_factory=ActivationInfo)
    bn_scale: Optional[torch.Tensor] = None
    bn_shift: Optional[torch.Tensor] = None
    calls: int = 0

    def folded(
        self, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The (m, n) weight and (m,) bias of the map the activation sees.

        Without a folded BatchNorm this is ``weight`` (as a matrix) and ``bias``; with
        one it is ``diag(a) W`` and ``a * b + c``.  Computed in the weight's dtype.
        """
        W = weight.detach().reshape(weight.shape[0], -1)
        b = None if bias is None else bias.detach()
        if self.bn_scale is None:
            return W, b
        a = self.bn_scale.to(W.dtype)
        c = self.bn_shift.to(W.dtype)
        Wf = W * a[:, None]
        bf = c if b is None else a * b + c
        return Wf, bf


@dataclass
class Calibration:
    """What :func:`calibrate` collected.

    Attributes:
        layers: per-layer statistics, in the model's module order.
        skipped: name -> reason for modules that were not collected (grouped convs,
            layers never called, ...).
        detection: "fx" or "hooks": how activations were detected.
        detection_note: why fx was not used, if it was not.
        batches: calibration batches run.
        samples: calibration examples (rows of the input batches) seen.
    """

    layers: dict[str, LayerStats]
    skipped: dict[str, str]
    detection: str
    detection_note: str = ""
    batches: int = 0
    samples: int = 0


# ----------------------------------------------------------------------------- layers


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """Explicit padding (left, right, top, bottom) of a conv, as for ``F.pad``.

    Resolves ``padding="same"`` / ``"valid"`` the way torch does (for "same" the
    extra pixel of an odd total goes right / bottom).
    """
    kh, kw = _pair(conv.kernel_size)
    dh, dw = _pair(conv.dilation)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = _pair(conv.padding)
    return (pw, pw, ph, ph)


def layer_input_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as a (N, n) matrix, one row per column of X.

    Linear: ``x.reshape(-1, in_features)``.  Conv2d (groups 1): ``x`` (B, C, H, W) is
    padded (with the conv's ``padding_mode``) and unfolded into patches with the conv's
    kernel / stride / dilation, giving (B * H_out * W_out, C * kh * kw) with the column
    order of ``conv.weight.reshape(out, -1)``.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if isinstance(module, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        pad = conv_padding(module)
        if any(pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, pad, mode=mode)
        cols = F.unfold(x, _pair(module.kernel_size), dilation=_pair(module.dilation), padding=0,
                        stride=_pair(module.stride))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise TypeError(f"not a compressible layer: {type(module).__name__}")


def find_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """Compressible layers of ``model`` and the reasons others were skipped.

    Returns:
        (layers, skipped): ``layers`` lists (qualified name, module) for every
        ``nn.Linear`` and every ``nn.Conv2d`` with ``groups == 1`` in module order;
        ``skipped`` maps grouped / depthwise convs and other conv kinds (Conv1d,
        Conv3d, transposed) to the reason they are not compressed.
    """
    layers: list[tuple[str, nn.Module]] = []
    skipped: dict[str, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            layers.append((name, mod))
        elif isinstance(mod, nn.Conv2d):
            if mod.groups != 1:
                kind = "depthwise" if mod.groups == mod.in_channels == mod.out_channels else "grouped"
                skipped[name] = f"{kind} conv (groups={mod.groups}): only groups=1 is compressed"
            else:
                layers.append((name, mod))
        elif isinstance(mod, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                              nn.ConvTranspose3d)):
            skipped[name] = f"{type(mod).__name__} is not supported (only Linear and Conv2d)"
    return layers, skipped


# ------------------------------------------------------------------------- activations


def _activation_of_module(mod: nn.Module) -> Optional[ActivationInfo]:
    if isinstance(mod, nn.ReLU):
        return ActivationInfo("relu")
    if isinstance(mod, nn.ReLU6):
        return ActivationInfo("relu", exact=False, note="ReLU6 fitted as ReLU (clip at 6 ignored)")
    if isinstance(mod, nn.LeakyReLU):
        return ActivationInfo("leaky_relu", negative_slope=float(mod.negative_slope))
    if isinstance(mod, nn.GELU):
        if mod.approximate != "none":
            return ActivationInfo("gelu", exact=False, note="tanh-approximate GELU fitted as exact GELU")
        return ActivationInfo("gelu")
    if isinstance(mod, nn.SiLU):
        return ActivationInfo("silu")
    if isinstance(mod, nn.Tanh):
        return ActivationInfo("tanh")
    return None


def _functional_table() -> dict[Any, str]:
    table: dict[Any, str] = {
        F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
        F.leaky_relu: "leaky_relu", F.gelu: "gelu", F.silu: "silu",
        torch.tanh: "tanh", F.tanh: "tanh", F.relu6: "relu6", F.hardtanh: "hardtanh",
    }
    return table


_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh"}


def _activation_of_call(node: Any) -> Optional[ActivationInfo]:
    """ActivationInfo for an fx call_function / call_method node, or None."""
    if node.op == "call_function":
        kind = _functional_table().get(node.target)
        if kind is None:
            return None
        if kind == "leaky_relu":
            slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
            if not isinstance(slope, (int, float)):
                return None
            return ActivationInfo("leaky_relu", negative_slope=float(slope))
        if kind == "gelu":
            approx = node.kwargs.get("approximate", "none")
            if approx != "none":
                return ActivationInfo("gelu", exact=False, note="tanh-approximate GELU fitted as exact GELU")
            return ActivationInfo("gelu")
        if kind == "relu6":
            return ActivationInfo("relu", exact=False, note="relu6 fitted as ReLU (clip at 6 ignored)")
        if kind == "hardtanh":
            return None
        return ActivationInfo(kind)
    if node.op == "call_method":
        kind = _METHODS.get(node.target)
        return ActivationInfo(kind) if kind else None
    return None


def _bn_foldable(bn: nn.Module) -> Optional[str]:
    """None if ``bn`` can be folded (eval mode statistics exist), else the reason."""
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return f"BatchNorm '{type(bn).__name__}' has no running statistics: cannot fold it"
    return None


def _detect_fx(model: nn.Module, names: set[str]) -> dict[str, ActivationInfo]:
    """Activation detection on a torch.fx trace; raises if the model is not traceable."""
    import torch.fx as fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    found: dict[str, list[ActivationInfo]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in names:
            continue
        info = _follow_fx(node, modules)
        found.setdefault(str(node.target), []).append(info)
    out: dict[str, ActivationInfo] = {}
    for name in names:
        infos = found.get(name)
        if not infos:
            out[name] = ActivationInfo(source="fx", note="layer not reached in the traced graph")
            continue
        first = infos[0]
        same = all((i.name, i.negative_slope, i.bn) == (first.name, first.negative_slope, first.bn)
                   for i in infos)
        if not same:
            out[name] = ActivationInfo(
                source="fx", note=f"layer is called {len(infos)} times with different activations; fitted as linear"
            )
        else:
            out[name] = first
    return out


def _follow_fx(node: Any, modules: dict[str, nn.Module]) -> ActivationInfo:
    chain: list[str] = []
    bn: Optional[str] = None
    cur = node
    for _ in range(8):
        users = list(cur.users)
        if len(users) != 1:
            why = "output is not used" if not users else f"output has {len(users)} consumers"
            return ActivationInfo(source="fx", bn=None, via=" -> ".join(chain),
                                  note=f"{why}; fitted as linear")
        nxt = users[0]
        if nxt.args[:1] != (cur,) and not (nxt.op == "call_method" and nxt.args and nxt.args[0] is cur):
            return ActivationInfo(source="fx", note="consumer does not take the output as first argument; fitted as linear")
        if nxt.op == "call_module":
            mod = modules.get(str(nxt.target))
            if isinstance(mod, _PASS_MODULES):
                chain.append(str(nxt.target))
                cur = nxt
                continue
            if isinstance(mod, _BN_MODULES) and bn is None:
                reason = _bn_foldable(mod)
                if reason:
                    return ActivationInfo(source="fx", note=reason + "; fitted as linear")
                bn = str(nxt.target)
                chain.append(bn)
                cur = nxt
                continue
            act = _activation_of_module(mod) if mod is not None else None
            if act is None:
                break
            chain.append(str(nxt.target))
        elif nxt.op == "call_function" and nxt.target in (F.dropout,):
            chain.append("dropout")
            cur = nxt
            continue
        else:
            act = _activation_of_call(nxt)
            if act is None:
                break
            chain.append(nxt.op == "call_method" and f".{nxt.target}()" or getattr(nxt.target, "__name__", str(nxt.target)))
        act.source = "fx"
        act.bn = bn
        act.via = " -> ".join(chain)
        return act
    if bn is not None:
        return ActivationInfo(source="fx", via=" -> ".join(chain),
                              note=f"{bn} is not followed by an activation; fitted as linear")
    return ActivationInfo(source="fx", via=" -> ".join(chain))


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
        runtime dataflow check of :func:`calibrate` is to be used) and ``note`` says
        why tracing failed.
    """
    if layer_names is None:
        layer_names = [n for n, _ in find_layers(model)[0]]
    names = set(layer_names)
    try:
        return _detect_fx(model, names), "fx", ""
    except Exception as err:  # noqa: BLE001 - any tracing failure means "not traceable"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        return {}, "hooks", f"model is not fx-traceable ({type(err).__name__}: {msg[:120]})"


class _RuntimeDetector:
    """Hook-based detection for models torch.fx cannot trace (first batch only)."""

    def __init__(self, model: nn.Module, layer_names: set[str]) -> None:
        self.layer_names = layer_names
        self.produced: dict[int, tuple[torch.Tensor, int, str, Optional[str]]] = {}
        self.result: dict[str, list[ActivationInfo]] = {}
        self.handles: list[Any] = []
        self.active = True
        for name, mod in model.named_modules():
            if name in layer_names:
                self.handles.append(mod.register_forward_hook(self._layer_hook(name)))
            elif isinstance(mod, _BN_MODULES):
                self.handles.append(mod.register_forward_hook(self._bn_hook(name, mod)))
            elif _activation_of_module(mod) is not None:
                self.handles.append(mod.register_forward_pre_hook(self._act_hook(name, mod)))
            elif isinstance(mod, _PASS_MODULES):
                self.handles.append(mod.register_forward_hook(self._pass_hook()))

    def _record(self, out: Any, layer: str, bn: Optional[str]) -> None:
        if isinstance(out, torch.Tensor):
            self.produced[id(out)] = (out, out._version, layer, bn)

    def _lookup(self, t: Any) -> Optional[tuple[str, Optional[str]]]:
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
            if src is not None and src[1] is None and _bn_foldable(bn) is None:
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
            act = _activation_of_module(mod)
            assert act is not None
            act.source = "hooks"
            act.bn = src[1]
            act.via = " -> ".join([x for x in (src[1], name) if x])
            self.result.setdefault(src[0], []).append(act)
        return hook

    def finish(self) -> dict[str, ActivationInfo]:
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


# ------------------------------------------------------------------------------- data


def iter_batches(data: CalibrationData, batch_size: int = 128) -> Iterator[torch.Tensor]:
    """Input batches from calibration data.

    Args:
        data: a tensor (split along dim 0 into ``batch_size`` rows), a list / tuple
            of tensors or of (x, y, ...) tuples, a ``DataLoader`` or any iterable of
            those.  Only the inputs (first element of a tuple / list) are used; a dict
            batch uses its "input" / "x" / "image" key.
        batch_size: rows per batch when ``data`` is a single tensor.

    Raises:
        TypeError: an item that is not a tensor (or a tuple starting with one).
    """
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError("calibration data is a 0-d tensor; expected a batch of inputs")
        for start in range(0, data.shape[0], batch_size):
            yield data[start:start + batch_size]
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            f"calibration data must be a tensor, a list of tensors / (x, y) tuples or a DataLoader, "
            f"got {type(data).__name__}"
        )
    for i, item in enumerate(data):
        x = item
        if isinstance(item, (tuple, list)):
            if not item:
                raise TypeError(f"calibration batch {i} is an empty {type(item).__name__}")
            x = item[0]
        elif isinstance(item, dict):
            for key in ("input", "inputs", "x", "image", "images"):
                if key in item:
                    x = item[key]
                    break
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"calibration batch {i}: expected a tensor input, got {type(x).__name__}")
        yield x


# -------------------------------------------------------------------------- collection


class _Collector:
    """Streaming float64 Gram + bottom-k reservoir for one layer."""

    def __init__(self, stats: LayerStats, module: nn.Module, sample_size: int, seed: int,
                 index: int, chunk_rows: int) -> None:
        self.stats = stats
        self.module = module
        self.sample_size = sample_size
        self.keep_sample = False
        self.gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + 7919 * index) % (2**63 - 1))
        self.keys: Optional[torch.Tensor] = None
        self.chunk_rows = chunk_rows
        self.gsum: Optional[torch.Tensor] = None
        self.msum: Optional[torch.Tensor] = None

    def add(self, x: torch.Tensor) -> None:
        mod, st = self.module, self.stats
        if isinstance(mod, nn.Conv2d):
            per = x.shape[0] if x.dim() == 4 else 1
            # bound the size of the unfolded patches: process a few images at a time
            opix = max(1, (st.out_hw[0] * st.out_hw[1]) if st.out_hw else 1)
            step = max(1, self.chunk_rows // opix)
            xs = [x[i:i + step] for i in range(0, per, step)] if x.dim() == 4 else [x]
        else:
            xs = [x]
        for xc in xs:
            rows = layer_input_matrix(mod, xc)
            for start in range(0, rows.shape[0], self.chunk_rows):
                self._add_rows(rows[start:start + self.chunk_rows])

    def _add_rows(self, rows: torch.Tensor) -> None:
        st = self.stats
        if not torch.isfinite(rows).all():
            bad = "NaN" if torch.isnan(rows).any() else "Inf"
            raise ValueError(f"layer '{st.name}': its calibration input contains {bad} values")
        r64 = rows.detach().to(torch.float64)
        g = r64.T @ r64
        self.gsum = g if self.gsum is None else self.gsum.add_(g)
        msum = r64.sum(dim=0)
        self.msum = msum if self.msum is None else self.msum.add_(msum)
        st.count += rows.shape[0]
        if self.keep_sample and self.sample_size > 0:
            keys = torch.rand(rows.shape[0], generator=self.gen, dtype=torch.float64)
            cols = rows.detach().to("cpu")
            if self.keys is None:
                allk, allc = keys, cols
            else:
                allk = torch.cat([self.keys, keys])
                allc = torch.cat([st.sample, cols])
            if allk.numel() > self.sample_size:
                idx = torch.topk(allk, self.sample_size, largest=False, sorted=False).indices
                idx, _ = torch.sort(idx)
                allk, allc = allk[idx], allc[idx]
            self.keys, st.sample = allk, allc.clone() if allc is cols else allc

    def finish(self) -> None:
        st = self.stats
        if self.gsum is not None and st.count > 0:
            st.gram = (self.gsum / st.count).cpu()
            st.mean = (self.msum / st.count).cpu()
        if st.sample is not None:
            st.sample = st.sample.T.contiguous()  # (n, s): columns are samples
        self.keys = None


def _bn_affine(bn: nn.Module, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    var = bn.running_var.detach().to(torch.float64).cpu()
    mean = bn.running_mean.detach().to(torch.float64).cpu()
    a = 1.0 / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.detach().to(torch.float64).cpu()
    c = -mean * a
    if bn.bias is not None:
        c = c + bn.bias.detach().to(torch.float64).cpu()
    if a.numel() != m:
        raise ValueError(f"BatchNorm has {a.numel()} features, the layer before it has {m} outputs")
    return a, c


def _describe(mod: nn.Module) -> str:
    if isinstance(mod, nn.Linear):
        return f"Linear(in_features={mod.in_features}, out_features={mod.out_features})"
    if isinstance(mod, nn.Conv2d):
        return (f"Conv2d(in_channels={mod.in_channels}, out_channels={mod.out_channels}, "
                f"kernel_size={_pair(mod.kernel_size)})")
    return type(mod).__name__


def calibrate(
    model: nn.Module,
    data: CalibrationData,
    *,
    layers: Optional[Iterable[str]] = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    sample_all: bool = False,
    batch_size: int = 128,
    max_batches: Optional[int] = None,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    chunk_rows: int = 16384,
) -> Calibration:
    """Run ``model`` over calibration data and collect per-layer statistics.

    Args:
        model: the network; its parameters are not modified, its modules' training
            flags are restored afterwards (it runs in eval mode).
        data: calibration inputs (see :func:`iter_batches`).
        layers: qualified names of the layers to collect (default: every compressible
            layer, :func:`find_layers`).  Names that are not compressible layers
            raise ValueError.
        sample_size: max input columns kept per layer for layers followed by a
            nonlinear activation (0: none).
        sample_all: keep a subsample for every collected layer, not only the
            nonlinear ones.
        batch_size: rows per batch when ``data`` is one tensor.
        max_batches: stop after this many batches (None: all).
        seed: seeds the subsample (each layer gets its own generator).
        device: where to run (default: the device of the model's first parameter).
        chunk_rows: input columns processed at once (bounds the unfolded-patch
            memory of convs).

    Returns:
        A :class:`Calibration` with per-layer :class:`LayerStats`.

    Raises:
        ValueError: no compressible layer, empty data, NaN/Inf in a layer's input
            (naming the layer), or inputs whose shape does not fit the model (naming
            the first layer that failed and the input shape).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if sample_size < 0:
        raise ValueError(f"sample_size must be >= 0, got {sample_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    all_layers, skipped = find_layers(model)
    by_name = dict(all_layers)
    if layers is None:
        chosen = all_layers
    else:
        chosen = []
        for n in layers:
            if n not in by_name:
                why = skipped.get(n, "no such compressible layer (Linear / Conv2d)")
                raise ValueError(f"layer '{n}': {why}")
            chosen.append((n, by_name[n]))
    if not chosen:
        extra = f" (skipped: {'; '.join(f'{k}: {v}' for k, v in skipped.items())})" if skipped else ""
        raise ValueError(f"model {type(model).__name__} has no compressible layer (nn.Linear or "
                         f"nn.Conv2d with groups=1){extra}")
    names = [n for n, _ in chosen]

    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)

    infos, method, note = detect_activations(model, names)

    stats: dict[str, LayerStats] = {}
    collectors: dict[str, _Collector] = {}
    modules = dict(model.named_modules())
    for i, (name, mod) in enumerate(chosen):
        w = mod.weight
        m = int(w.shape[0])
        n = int(w[0].numel())
        if isinstance(mod, nn.Conv2d):
            kh, kw = _pair(mod.kernel_size)
            st = LayerStats(name, "conv", (m, n), block=kh * kw, kernel_size=(kh, kw),
                            stride=_pair(mod.stride), padding=conv_padding(mod),
                            dilation=_pair(mod.dilation))
        else:
            st = LayerStats(name, "linear", (m, n))
        stats[name] = st
        collectors[name] = _Collector(st, mod, sample_size, seed, i, chunk_rows)

    def set_activation(name: str, info: ActivationInfo) -> None:
        st = stats[name]
        st.activation = info
        if info.bn is not None:
            bn = modules[info.bn]
            st.bn_scale, st.bn_shift = _bn_affine(bn, st.weight_shape[0])
        collectors[name].keep_sample = sample_all or info.nonlinear

    runtime: Optional[_RuntimeDetector] = None
    if method == "fx":
        for name in names:
            set_activation(name, infos[name])
    else:
        runtime = _RuntimeDetector(model, set(names))
        for name in names:
            collectors[name].keep_sample = sample_all  # decided after the first batch

    # failure tracking: which leaf module was running when the forward raised
    state: dict[str, Any] = {"running": None, "shape": None, "first_batch": True}
    pending: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def pre_hook(name: str):
        def hook(mod: nn.Module, inp: Any) -> None:
            if inp and isinstance(inp[0], torch.Tensor):
                state["running"], state["shape"] = name, tuple(inp[0].shape)
            else:
                state["running"], state["shape"] = name, None
        return hook

    def layer_hook(name: str):
        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            x = inp[0]
            st = stats[name]
            if state["first_batch"]:
                st.calls += 1
                if st.kind == "conv" and st.in_hw is None:
                    st.in_hw = (int(x.shape[-2]), int(x.shape[-1]))
                    st.out_hw = (int(out.shape[-2]), int(out.shape[-1]))
            if runtime is not None and state["first_batch"]:
                pending[name].append(x.detach())  # sample decision after the first batch
            else:
                collectors[name].add(x)
        return hook

    handles = []
    leaf_names = [n for n, m in model.named_modules() if not list(m.children())]
    for n in leaf_names:
        handles.append(modules[n].register_forward_pre_hook(pre_hook(n)))
    for name, mod in chosen:
        handles.append(mod.register_forward_hook(layer_hook(name)))

    was_training = {n: m.training for n, m in model.named_modules()}
    model.eval()
    batches = samples = 0
    try:
        with torch.no_grad():
            for x in iter_batches(data, batch_size):
                if max_batches is not None and batches >= max_batches:
                    break
                if x.shape[0] == 0 if x.dim() > 0 else False:
                    continue
                x = x.to(device)
                state["running"] = None
                try:
                    model(x)
                except ValueError as err:
                    if str(err).startswith("layer '"):
                        raise
                    _raise_shape(err, state, x, modules)
                except (RuntimeError, IndexError, TypeError) as err:
                    _raise_shape(err, state, x, modules)
                if runtime is not None and state["first_batch"]:
                    for name, info in runtime.finish().items():
                        set_activation(name, info)
                    for name in names:
                        for xi in pending[name]:
                            collectors[name].add(xi)
                        pending[name].clear()
                state["first_batch"] = False
                batches += 1
                samples += int(x.shape[0]) if x.dim() > 0 else 1
    finally:
        for h in handles:
            h.remove()
        if runtime is not None and runtime.active:
            runtime.finish()
        for n, m in model.named_modules():
            m.train(was_training.get(n, m.training))
    if batches == 0:
        raise ValueError("calibration data is empty: no batch with at least one example")
    for name in names:
        collectors[name].finish()
    notcalled = [n for n in names if stats[n].count == 0]
    out_layers: dict[str, LayerStats] = {}
    for name in names:
        if stats[name].count == 0:
            skipped[name] = "never called during calibration"
        else:
            out_layers[name] = stats[name]
    if len(notcalled) == len(names):
        raise ValueError("no compressible layer was called during calibration: "
                         + ", ".join(notcalled))
    return Calibration(out_layers, skipped, method, note, batches, samples)


def _raise_shape(err: Exception, state: dict[str, Any], x: torch.Tensor,
                 modules: dict[str, nn.Module]) -> None:
    name = state["running"]
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if name is None:
        raise ValueError(
            f"calibration input of shape {tuple(x.shape)} does not fit the model: the forward "
            f"failed before any layer ran ({type(err).__name__}: {msg})"
        ) from err
    raise ValueError(
        f"calibration input of shape {tuple(x.shape)} does not fit the model: layer '{name}' "
        f"({_describe(modules[name])}) failed on an input of shape {state['shape']} "
        f"({type(err).__name__}: {msg})"
    ) from err


def stats_error(
    stats: LayerStats,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    new_weight: torch.Tensor,
    new_bias: Optional[torch.Tensor] = None,
) -> float:
    """Relative pre-activation output error of a layer from its Gram matrix and mean.

    ``sqrt(E||D x + d||^2 / E||W x + b||^2)`` over all N calibration columns, with
    ``D = W - W'`` and ``d = b - b'`` after BatchNorm folding, expanded as
    ``tr(D G D^T) + 2 d^T D mu + ||d||^2`` (G = X X^T / N, mu = mean column), in
    float64.  This is the exact error of layers fitted as linear ("identity").
    ``new_bias`` defaults to ``bias``.
    """
    f64 = torch.float64
    Wf, bf = stats.folded(weight.to(f64), None if bias is None else bias.to(f64))
    nb = bias if new_bias is None else new_bias
    Nf, nbf = stats.folded(new_weight.to(f64), None if nb is None else nb.to(f64))
    G = stats.gram.to(f64)
    mu = stats.mean.to(f64)
    m = Wf.shape[0]
    zero = torch.zeros(m, dtype=f64)
    bf = zero if bf is None else bf.reshape(-1)
    nbf = zero if nbf is None else nbf.reshape(-1)

    def energy(A: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,jk,ik->", A, G, A) + 2 * (c @ (A @ mu)) + c @ c

    num = energy(Wf - Nf, bf - nbf).clamp_min(0)
    den = energy(Wf, bf).clamp_min(1e-300)
    return float(torch.sqrt(num / den))
