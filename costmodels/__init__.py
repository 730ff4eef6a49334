"""Cost models: ``layer_cost(layer, bits, spec) -> {metric: value}`` (additive), found by name.

A cost model is any object with

- ``name``: str,
- ``metrics``: the metric names it can return (``latency_s``, ``energy_j``, ``weight_bytes``, ...),
- ``layer_cost(layer, bits, spec)``: the cost of one :class:`planner.graph.Layer` at ``bits`` on a
  :class:`hw.HardwareSpec`, or None when the option cannot run (a precision the chip lacks,
  weights that do not fit),
- optionally ``check(graph, spec)``, called once before costing, to reject inputs as a whole.

Metric names end in their unit: ``_s`` seconds, ``_j`` joules, ``_bytes`` bytes.
Built-in models are registered below; others come from the entry point group
``mpq.costmodels`` or from ``path/to/file.py:ClassName``.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from planner.errors import MpqError
from planner.userfiles import load_object


@runtime_checkable
class CostModel(Protocol):
    """What a cost model provides (see the module docstring); ``isinstance(obj, CostModel)``
    checks the names only."""

    name: str
    metrics: tuple[str, ...]

    def layer_cost(self, layer, bits: int, spec) -> dict[str, float] | None:
        """The cost of ``layer`` at ``bits`` on ``spec``: metric name -> value in the unit the name
        ends in (additive over layers); None when the option cannot run."""


def _builtins() -> dict[str, type]:
    from .bops import BopsCost
    from .lut import LutCost
    from .northpole import NorthPoleCost
    from .roofline import RooflineCost

    return {c.name: c for c in (NorthPoleCost, BopsCost, RooflineCost, LutCost)}


def available() -> list[str]:
    """Names of the built-in and entry-point cost models."""
    return sorted(set(_builtins()) | {ep.name for ep in entry_points(group="mpq.costmodels")})


def load_cost_model(ref: str, **options) -> CostModel:
    """A cost model by name (built-in or entry point) or ``path/to/file.py:ClassName``.

    ``options`` go to the class's constructor (e.g. ``table=...`` for ``lut``).
    """
    if ":" in ref and ref.split(":", 1)[0].endswith(".py"):
        cls = load_object(ref, f"cost model {ref}")
    elif ref in _builtins():
        cls = _builtins()[ref]
    else:
        found = [ep for ep in entry_points(group="mpq.costmodels") if ep.name == ref]
        if not found:
            raise MpqError(f"unknown cost model '{ref}'; available: {', '.join(available())}, "
                           "or path/to/file.py:ClassName")
        try:
            cls = found[0].load()
        except Exception as e:
            raise MpqError(f"cost model '{ref}' (entry point {found[0].value}) failed to load: {e}") from None
    try:
        model = cls(**options) if isinstance(cls, type) else cls
    except TypeError as e:
        raise MpqError(f"cost model '{ref}' does not take these options ({e})") from None
    if not isinstance(model, CostModel):
        raise MpqError(f"cost model '{ref}' lacks name, metrics or layer_cost(layer, bits, spec); "
                       "see the protocol in the README")
    return model


def weight_bytes(layer, bits: int) -> float:
    """Bytes of a layer's weights stored at ``bits`` (0 for a layer without weights)."""
    return layer.params * bits / 8


def activation_bytes(layer, bits: int, output_bits: float | None) -> float:
    """Bytes of the activations a layer reads (at ``bits``) and writes (at ``output_bits``,
    default ``bits``)."""
    return layer.in_elems * bits / 8 + layer.out_elems * (output_bits or bits) / 8
