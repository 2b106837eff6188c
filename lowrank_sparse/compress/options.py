"""compress()'s keywords and config objects resolved into one set of settings.

``config`` (a method config) and ``calibration`` (a CalibrationConfig) give the
settings; the plain keywords of :func:`~lowrank_sparse.compress` are shortcuts that
override their fields when not None: ``rank`` / ``density`` / ``structure`` the
method config's, ``backend`` / ``max_iter`` / ``tol`` / ``seed`` its SolverConfig's
(``seed`` also the calibration's), ``solver_options`` any SolverConfig field (or a
field of the method config itself), ``device`` / ``sample_size`` /
``batch_size`` / ``sequential`` the calibration's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

from ..calibrate import CalibrationConfig, resolve_calibration
from ..solve.config import SolverConfig, resolve
from ..structure import Structure, parse_structure
from .configs import MethodConfig, config_fields
from .methods import Method, get_method, method_of_config

__all__ = ["Options", "resolve_options"]


@dataclass(frozen=True)
class Options:
    """The resolved settings of one compress() call."""

    method: Method
    config: MethodConfig
    structure: Structure
    calibration: CalibrationConfig


def _nonzero_spec(spec: Any) -> bool:
    if spec is None:
        return False
    if isinstance(spec, Mapping):
        return any(v not in (None, 0, 0.0) for v in spec.values())
    return spec not in (0, 0.0)


def _method_config(method: Optional[str], config: Optional[MethodConfig]) -> tuple[Method, MethodConfig]:
    if config is None:
        m = get_method("lowrank_sparse" if method is None else method)
        return m, m.config_cls()
    m = method_of_config(config)
    if method is not None and method != m.name:
        raise ValueError(f"method={method!r} contradicts config={type(config).__name__} (method {m.name!r})")
    return m, config


def _check_target(target: Any, config: MethodConfig, rank: Any, density: Any) -> None:
    from ..budget import Budget

    if not isinstance(target, Budget):
        raise TypeError(f"target must be a lowrank_sparse.Budget, got {type(target).__name__}")
    sizes = (rank, density, getattr(config, "rank", None), getattr(config, "density", None))
    if any(s is not None for s in sizes):
        raise ValueError("give either a target Budget or explicit rank / density, not both")


def _with_sizes(m: Method, config: MethodConfig, rank: Any, density: Any) -> MethodConfig:
    """The config with the rank / density shortcuts applied."""
    changes: dict[str, Any] = {}
    for what, value, has, part in (("rank", rank, m.has_rank, "low-rank"),
                                   ("density", density, m.has_density, "sparse")):
        if value is None:
            continue
        if has:
            changes[what] = value
        elif _nonzero_spec(value):
            raise ValueError(f"method={m.name!r} has no {part} part: {what} must be None or 0")
    return replace(config, **changes) if changes else config


def _with_solver(config: MethodConfig, shortcuts: dict[str, Any],
                 solver_options: Optional[Mapping[str, Any]]) -> MethodConfig:
    """The config with the solver shortcuts, then ``solver_options``, applied."""
    solver = resolve(config.solver, shortcuts)
    own = set(config_fields(type(config))) - {"solver", "rank", "density", "structure"}
    opts = dict(solver_options or {})
    mine = {k: opts.pop(k) for k in list(opts) if k in own and k not in SolverConfig.field_names()}
    return replace(config, solver=solver.with_overrides(**opts), **mine)


def resolve_options(
    *,
    target: Any,
    method: Optional[str],
    config: Optional[MethodConfig],
    rank: Any,
    density: Any,
    structure: Any,
    solver: dict[str, Any],
    solver_options: Optional[Mapping[str, Any]],
    calibration: Optional[CalibrationConfig],
    calibration_overrides: dict[str, Any],
) -> Options:
    """Resolve compress()'s arguments (see the module doc).

    Raises:
        ValueError: unknown method, method / config mismatch, sizes a method has no
            part for, a target together with explicit sizes, or neither.
        TypeError: wrong config types, a target that is not a Budget, unknown options.
    """
    m, cfg = _method_config(method, config)
    if target is not None:
        _check_target(target, cfg, rank, density)
    else:
        cfg = _with_sizes(m, cfg, rank, density)
        if getattr(cfg, "rank", None) is None and getattr(cfg, "density", None) is None:
            raise ValueError("give a target Budget or an explicit rank and/or density")
    if structure is not None and "structure" in config_fields(type(cfg)):
        cfg = replace(cfg, structure=structure)
    cfg = _with_solver(cfg, solver, solver_options)
    struct = parse_structure(getattr(cfg, "structure", "unstructured" if structure is None else structure))
    cal = resolve_calibration(calibration, calibration_overrides)
    if not m.gated_objective and cal.gated_mlp != "linear":
        cal = replace(cal, gated_mlp="linear")  # the peers fit their papers' linear objective
    return Options(m, cfg, struct, cal)
