"""calibrate(): one pass of the calibration data through the model with forward hooks.

For every compressible layer (``nn.Linear``; ``nn.Conv2d`` with ``groups == 1``) the
pass collects the statistics of :mod:`~lowrank_sparse.calibrate.stats` (Gram matrix,
mean, subsample) without ever keeping all activations, and the activation that
consumes the layer's output (:mod:`~lowrank_sparse.calibrate.detect`), with an
eval-mode BatchNorm in between folded into the objective
(:mod:`~lowrank_sparse.calibrate.fold`).  A BatchNorm without running statistics
cannot be folded: the layer is then fitted as linear and the reason is reported.

Batches are tensors, tuples or dicts (:mod:`~lowrank_sparse.calibrate.batches`: a dict
goes in as ``model(**batch)``); with an ``attention_mask`` the padding positions are left
out of every linear layer's statistics (Gram, mean, count, subsample) whose input has
the mask's (B, T) leading dims.  In a gated MLP ``down(act(gate x) * (up x))`` the gate
and up projections get the objective of :mod:`~lowrank_sparse.calibrate.gated` (their
error in the product; both branches' outputs are hooked) unless the config says
``gated_mlp="linear"``; ``down_proj`` is fitted as linear on its input.  The report
says which.

The model runs in eval mode (BatchNorm running statistics, no dropout); each module's
training flag is restored afterwards and the parameters are never modified.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Union

import torch
import torch.nn as nn

from ..nn.geometry import conv_padding, pair
from .activation import ActivationInfo
from .batches import CalibrationData, ModelBatch, iter_model_batches
from .capture import token_rows
from .config import CalibrationConfig, resolve_calibration
from .detect import RuntimeDetector, detect_activations, gated_mlp_layers
from .gated import GatedAccumulator, GatedBlock, apply_gated, gated_blocks, gated_weights
from .fold import bn_affine
from .layers import describe_layer, find_layers, weight_matrix
from .stats import Calibration, GramCollector, LayerStats

__all__ = ["calibrate"]


def calibrate(
    model: nn.Module,
    data: CalibrationData,
    *,
    layers: Optional[Iterable[str]] = None,
    config: Optional[CalibrationConfig] = None,
    sample_size: Optional[int] = None,
    sample_all: Optional[bool] = None,
    batch_size: Optional[int] = None,
    max_batches: Optional[int] = None,
    seed: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    chunk_rows: Optional[int] = None,
) -> Calibration:
    """Run ``model`` over calibration data and collect per-layer statistics.

    Args:
        model: the network; its parameters are not modified, its modules' training
            flags are restored afterwards (it runs in eval mode).
        data: calibration batches (see :func:`~lowrank_sparse.calibrate.iter_model_batches`).
        layers: qualified names of the layers to collect (default: every compressible
            layer, :func:`~lowrank_sparse.calibrate.find_layers`).  Names that are
            not compressible layers raise ValueError.
        config: the settings (default :class:`CalibrationConfig`); the keywords below
            are shortcuts that override its fields when not None:
        sample_size: max input columns kept per layer for layers followed by a
            nonlinear activation (0: none; default 8192).
        sample_all: keep a subsample for every collected layer, not only the
            nonlinear ones.
        batch_size: rows per batch when ``data`` is one tensor (default 128).
        max_batches: stop after this many batches (None: all).
        seed: seeds the subsample (each layer gets its own generator; default 0).
        device: where to run (default: the device of the model's first parameter).
        chunk_rows: input columns processed at once (bounds the unfolded-patch
            memory of convs; default 16384).

    Returns:
        A :class:`Calibration` with per-layer :class:`LayerStats`.

    Raises:
        ValueError: no compressible layer, empty data, NaN/Inf in a layer's input
            (naming the layer), or inputs whose shape does not fit the model (naming
            the first layer that failed and the input shape).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cfg = resolve_calibration(config, dict(
        sample_size=sample_size, sample_all=sample_all, batch_size=batch_size, max_batches=max_batches,
        seed=seed, device=device, chunk_rows=chunk_rows,
    ))  # fmt: skip
    chosen, skipped = _choose_layers(model, layers)
    dev = _device(model, cfg.device)
    infos, method, note = detect_activations(model, [n for n, _ in chosen])
    run = _Run(model, chosen, cfg, infos if method == "fx" else None)
    batches, samples = run.run(data, dev)
    return Calibration(run.finish(skipped), skipped, method, note, batches, samples)


def _choose_layers(
    model: nn.Module, layers: Optional[Iterable[str]]
) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """(name, module) of the layers to collect, and the model's skipped modules."""
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
    return chosen, skipped


def _device(model: nn.Module, device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    return torch.device(device)


def _new_stats(name: str, mod: nn.Module) -> LayerStats:
    m, n = (int(s) for s in weight_matrix(mod).shape)
    if isinstance(mod, nn.Conv2d):
        kh, kw = pair(mod.kernel_size)
        return LayerStats(name, "conv", (m, n), block=kh * kw, kernel_size=(kh, kw), stride=pair(mod.stride),
                          padding=conv_padding(mod), dilation=pair(mod.dilation))
    return LayerStats(name, "linear", (m, n))


class _Run:
    """The hooks and collectors of one calibration pass.

    ``infos`` are the fx-detected activations; None means the model is not traceable
    and a :class:`RuntimeDetector` decides them on the first batch (whose layer inputs
    are held back until then, as the subsample decision depends on the activation).
    """

    def __init__(self, model: nn.Module, chosen: list[tuple[str, nn.Module]], cfg: CalibrationConfig,
                 infos: Optional[dict[str, ActivationInfo]]) -> None:
        self.model, self.chosen, self.cfg = model, chosen, cfg
        self.names = [n for n, _ in chosen]
        self.modules = dict(model.named_modules())
        self.gated = gated_mlp_layers(model)
        self.mask: Optional[torch.Tensor] = None  # the running batch's token mask
        self.stats: dict[str, LayerStats] = {}
        self.collectors: dict[str, GramCollector] = {}
        for i, (name, mod) in enumerate(chosen):
            self.stats[name] = _new_stats(name, mod)
            self.collectors[name] = GramCollector(self.stats[name], mod, cfg.sample_size, cfg.seed, i,
                                                  cfg.chunk_rows)
        self.runtime: Optional[RuntimeDetector] = None
        if infos is not None:
            for name in self.names:
                self.set_activation(name, infos[name])
        else:
            self.runtime = RuntimeDetector(model, set(self.names))
            for name in self.names:
                self.collectors[name].keep_sample = cfg.sample_all  # decided after the first batch
        # failure tracking: which leaf module was running when the forward raised
        self.running: Optional[str] = None
        self.running_shape: Optional[tuple[int, ...]] = None
        self.first_batch = True
        self.pending: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self._init_gated()

    def _init_gated(self) -> None:
        """The gated MLP blocks whose gate / up objective this pass collects."""
        self.blocks: list[GatedBlock] = []
        self.gated_acc: dict[str, GatedAccumulator] = {}
        self.branch: dict[str, dict[str, torch.Tensor]] = {}
        if self.cfg.gated_mlp != "product":
            return
        for b in gated_blocks(self.model):
            mine = [n for n in (b.gate, b.up) if n in self.stats and self.stats[n].kind == "linear"]
            if b.activation is None or not mine:
                continue
            self.blocks.append(b)
            self.branch[b.name] = {}
            for n in mine:
                self.gated_acc[n] = GatedAccumulator()

    def set_activation(self, name: str, info: ActivationInfo) -> None:
        if name in self.gated:
            info = ActivationInfo(source=info.source, note=self.gated[name])
        st = self.stats[name]
        st.activation = info
        if info.bn is not None:
            st.bn_scale, st.bn_shift = bn_affine(self.modules[info.bn], st.weight_shape[0])
        self.collectors[name].keep_sample = self.cfg.sample_all or info.nonlinear

    def _pre_hook(self, name: str):
        def hook(mod: nn.Module, inp: Any) -> None:
            self.running = name
            self.running_shape = tuple(inp[0].shape) if inp and isinstance(inp[0], torch.Tensor) else None
        return hook

    def _layer_hook(self, name: str):
        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            x, st = inp[0], self.stats[name]
            if st.kind == "linear":
                x = token_rows(x, self.mask)  # padding positions left out
            if self.first_batch:
                st.calls += 1
                if st.kind == "conv" and st.in_hw is None:
                    st.in_hw = (int(x.shape[-2]), int(x.shape[-1]))
                    st.out_hw = (int(out.shape[-2]), int(out.shape[-1]))
            if self.runtime is not None and self.first_batch:
                self.pending[name].append(x.detach())  # sample decision after the first batch
            else:
                self.collectors[name].add(x)
        return hook

    def _install(self) -> list[Any]:
        handles = []
        leaf_names = [n for n, m in self.model.named_modules() if not list(m.children())]
        for n in leaf_names:
            handles.append(self.modules[n].register_forward_pre_hook(self._pre_hook(n)))
        for name, mod in self.chosen:
            handles.append(mod.register_forward_hook(self._layer_hook(name)))
        for b in self.blocks:
            for role, name in (("gate", b.gate), ("up", b.up)):
                handles.append(self.modules[name].register_forward_hook(self._branch_hook(b, role)))
        return handles

    def _branch_hook(self, block: GatedBlock, role: str):
        """Keeps one branch's output of a gated MLP; with both, feeds the accumulators."""
        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            seen = self.branch[block.name]
            x = token_rows(inp[0], self.mask)
            seen[role] = token_rows(out, self.mask).reshape(-1, out.shape[-1])
            seen["x"] = x.reshape(-1, x.shape[-1])
            if "gate" in seen and "up" in seen:
                self._add_gated(block, seen.pop("x"), seen.pop("gate"), seen.pop("up"))
        return hook

    def _add_gated(self, block: GatedBlock, x: torch.Tensor, g: torch.Tensor, u: torch.Tensor) -> None:
        step = self.cfg.chunk_rows
        for s in range(0, x.shape[0], step):
            w_gate, w_up = gated_weights(g[s:s + step], u[s:s + step], block.activation)
            for name, w in ((block.gate, w_gate), (block.up, w_up)):
                if name in self.gated_acc:
                    self.gated_acc[name].add(x[s:s + step], w)

    def _forward(self, batch: ModelBatch) -> None:
        self.running, self.mask = None, batch.mask
        try:
            batch(self.model)
        except ValueError as err:
            if str(err).startswith("layer '"):
                raise
            self._raise_shape(err, batch.primary)
        except (RuntimeError, IndexError, TypeError) as err:
            self._raise_shape(err, batch.primary)
        finally:
            self.mask = None

    def _after_first_batch(self) -> None:
        if self.runtime is not None:
            for name, info in self.runtime.finish().items():
                self.set_activation(name, info)
            for name in self.names:
                for xi in self.pending[name]:
                    self.collectors[name].add(xi)
                self.pending[name].clear()
        self.first_batch = False

    def run(self, data: CalibrationData, device: torch.device) -> tuple[int, int]:
        """Forward every batch in eval mode; (batches, samples) seen."""
        handles = self._install()
        was_training = {n: m.training for n, m in self.model.named_modules()}
        self.model.eval()
        batches = samples = 0
        try:
            with torch.no_grad():
                for batch in iter_model_batches(data, self.model, self.cfg.batch_size):
                    if self.cfg.max_batches is not None and batches >= self.cfg.max_batches:
                        break
                    x = batch.primary
                    if x.dim() > 0 and x.shape[0] == 0:
                        continue
                    self._forward(batch.to(device))
                    if self.first_batch:
                        self._after_first_batch()
                    batches += 1
                    samples += int(x.shape[0]) if x.dim() > 0 else 1
        finally:
            for h in handles:
                h.remove()
            if self.runtime is not None and self.runtime.active:
                self.runtime.finish()
            for n, m in self.model.named_modules():
                m.train(was_training.get(n, m.training))
        if batches == 0:
            raise ValueError("calibration data is empty: no batch with at least one example")
        return batches, samples

    def finish(self, skipped: dict[str, str]) -> dict[str, LayerStats]:
        """The collected layers' statistics; layers never called go to ``skipped``."""
        for name in self.names:
            self.collectors[name].finish()
        self._finish_gated()
        out: dict[str, LayerStats] = {}
        for name in self.names:
            if self.stats[name].count == 0:
                skipped[name] = "never called during calibration"
            else:
                out[name] = self.stats[name]
        if not out:
            raise ValueError("no compressible layer was called during calibration: " + ", ".join(self.names))
        return out

    def _finish_gated(self) -> None:
        for b in self.blocks:
            for role, name in (("gate_proj", b.gate), ("up_proj", b.up)):
                acc = self.gated_acc.get(name)
                if acc is not None and self.stats[name].bn_scale is None and self.stats[name].count > 0:
                    self.stats[name] = apply_gated(self.stats[name], acc.finish(), role, b.activation.name)

    def _raise_shape(self, err: Exception, x: torch.Tensor) -> None:
        name = self.running
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if name is None:
            raise ValueError(
                f"calibration input of shape {tuple(x.shape)} does not fit the model: the forward "
                f"failed before any layer ran ({type(err).__name__}: {msg})"
            ) from err
        raise ValueError(
            f"calibration input of shape {tuple(x.shape)} does not fit the model: layer '{name}' "
            f"({describe_layer(self.modules[name])}) failed on an input of shape {self.running_shape} "
            f"({type(err).__name__}: {msg})"
        ) from err
