"""A spec's defaults, resolved once: pins, cost model and precisions, and the graph and cost table
every planning command starts from.

The rules (the same for every command and for scripts):

- pins: ``no_pin`` leaves first and last layers free; else ``pin_bits`` pins both at that width;
  else the spec's ``pins`` (8 and 8 unless it says otherwise); with no spec, 8 and 8;
- cost model: the one named, else ``lut`` when a latency table is given, else the spec's;
- precisions: the spec's, restricted to ``bits`` when given (each must be one of the spec's).
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.errors import MpqError


def pins_for(spec=None, *, no_pin: bool = False, pin_bits: int | None = None) -> tuple[int | None, int | None]:
    """Bits of the pinned (first, last) layers, ``(None, None)`` for none (see the module's rules)."""
    if no_pin:
        return None, None
    if pin_bits is not None:
        return pin_bits, pin_bits
    if spec is not None:
        return spec.pin_first, spec.pin_last
    return 8, 8


def cost_model_for(spec, name: str | None = None, lut: str | None = None):
    """The cost model object: ``name`` (shipped, entry point or ``file.py:Class``), else ``lut``
    with the table at ``lut``, else the spec's default. Raises MpqError for an unknown name."""
    from costmodels import load_cost_model

    name = name or ("lut" if lut else spec.cost_model)
    return load_cost_model(name, **({"table": lut} if lut else {}))


def precisions_for(spec, bits: list[int] | None = None) -> list[int]:
    """The spec's precisions, or ``bits`` when given; MpqError if one of ``bits`` is not the spec's."""
    if bits is None:
        return list(spec.precisions)
    unknown = [b for b in bits if b not in spec.precisions]
    if unknown:
        raise MpqError(f"--bits {','.join(map(str, bits))}: {unknown[0]} bits is not a precision of {spec.name} "
                       f"{list(spec.precisions)}")
    return list(bits)


def load_pinned_graph(model: str, spec=None, *, input_shapes: dict[str, tuple[int, ...]] | None = None,
                      no_pin: bool = False, pin_bits: int | None = None):
    """The LayerGraph of the ONNX ``model`` with its first and last layers pinned by
    :func:`pins_for` (``spec`` may be None). Raises MpqError for an unreadable model."""
    from planner.graph import load_graph

    pin_first, pin_last = pins_for(spec, no_pin=no_pin, pin_bits=pin_bits)
    return load_graph(model, input_shapes or {}, pin_first=pin_first, pin_last=pin_last)


@dataclass
class Setup:
    """What planning starts from: the spec, the layer graph with its pins, and the cost table
    (free groups offered only the chosen precisions)."""

    spec: object
    graph: object
    table: object


def prepare(model: str, hw: str, *, cost_model: str | None = None, lut: str | None = None,
            input_shapes: dict[str, tuple[int, ...]] | None = None, no_pin: bool = False,
            pin_bits: int | None = None, bits: list[int] | None = None) -> Setup:
    """Load the spec ``hw`` (shipped name or YAML path) and the ONNX ``model`` with the spec's pins,
    and cost every group at every offered precision (``bits`` restricts free groups).

    Raises MpqError for an unreadable model or spec, an unknown cost model, or ``bits`` the spec
    does not offer."""
    from hw import load_spec

    from planner.costs.table import cost_table

    spec = load_spec(hw)
    graph = load_pinned_graph(model, spec, input_shapes=input_shapes, no_pin=no_pin, pin_bits=pin_bits)
    table = cost_table(graph, spec, cost_model_for(spec, cost_model, lut))
    if bits is not None:
        allowed = precisions_for(spec, bits)
        table = table.restricted(allowed, {g.id for g in graph.groups if g.pinned_bits is not None})
    return Setup(spec=spec, graph=graph, table=table)


def graph_and_precisions(model: str, *, hw: str | None = None, bits: list[int] | None = None,
                         input_shapes: dict[str, tuple[int, ...]] | None = None, no_pin: bool = False,
                         pin_bits: int | None = None):
    """For gain estimation alone: the layer graph and the precisions to estimate, from the spec
    ``hw`` when given (its pins and precisions) else from ``bits`` with 8-bit pins.
    Returns ``(graph, precisions)``."""
    spec = None
    if hw:
        from hw import load_spec

        spec = load_spec(hw)
    graph = load_pinned_graph(model, spec, input_shapes=input_shapes, no_pin=no_pin, pin_bits=pin_bits)
    return graph, (list(spec.precisions) if spec is not None else list(bits or (2, 4, 8)))
