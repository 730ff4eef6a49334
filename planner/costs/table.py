"""Costs of every group at every precision: a cost model applied to a LayerGraph on a spec.

``costs[group][bits][metric]`` is the sum over the group's layers; an option is offered only if
the cost model offers it for every layer of the group. Pinned groups are offered their pinned
precision alone.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from planner.errors import MpqError
from planner.graph import LayerGraph
from planner.units import si

RESIDENT = "on_chip_weight_bytes"  # the implicit budget of a spec that keeps every weight on chip


@dataclass
class CostTable:
    """Per-layer and per-group costs of every offered option.

    ``layers[name][bits]`` and ``groups[id][bits]`` map metric -> value; ``metrics`` are the
    metrics every option carries, in the cost model's order. On a spec that keeps every weight
    on chip, ``capacity`` is the bytes of on-chip memory for weights and ``resident[id][bits]``
    the bytes a group's weights take there (weights x bits / 8, whatever the cost model);
    otherwise both are None. ``pinned`` holds the ids of the pinned groups (each offered its pin
    alone); a free group may also be offered a single precision (the others do not fit).
    """

    metrics: tuple[str, ...]
    layers: dict[str, dict[int, dict[str, float]]]
    groups: list[dict[int, dict[str, float]]]
    model_name: str
    capacity: float | None = None
    resident: list[dict[int, float]] | None = None
    pinned: frozenset[int] = frozenset()

    def options(self, group: int) -> list[int]:
        """The precisions group ``group`` is offered, ascending."""
        return sorted(self.groups[group])

    def total(self, bits_by_group: dict[int, int] | list[int]) -> dict[str, float]:
        """Totals of every metric for a choice of bits per group (all groups)."""
        items = bits_by_group.items() if isinstance(bits_by_group, dict) else enumerate(bits_by_group)
        totals = dict.fromkeys(self.metrics, 0.0)
        for g, b in items:
            for m in self.metrics:
                totals[m] += self.groups[g][b][m]
        return totals

    def restricted(self, bits: list[int], pinned: set[int]) -> "CostTable":
        """The same table with free groups offered only ``bits`` (pinned groups unchanged)."""
        groups = []
        for g, options in enumerate(self.groups):
            kept = options if g in pinned else {b: c for b, c in options.items() if b in bits}
            if not kept:
                raise MpqError(f"group {g} offers none of bits {sorted(bits)} (it offers {sorted(options)})")
            groups.append(kept)
        resident = None if self.resident is None else [{b: r[b] for b in kept} for r, kept in zip(self.resident, groups)]
        return CostTable(metrics=self.metrics, layers=self.layers, groups=groups, model_name=self.model_name,
                         capacity=self.capacity, resident=resident, pinned=self.pinned)

    def resident_bytes(self, bits_by_group: list[int]) -> float | None:
        """On-chip weight bytes of a choice of bits per group (None unless weights stay on chip)."""
        if self.resident is None:
            return None
        return float(math.fsum(self.resident[g][b] for g, b in enumerate(bits_by_group)))

    def with_chip_limit(self) -> tuple["CostTable", dict[str, float]]:
        """The table and the implicit budget ``{RESIDENT: capacity}`` that every plan must meet
        on a spec keeping weights on chip. Where even the dearest plan fits, nothing is added
        (the table and ``{}`` come back: the constraint cannot bind). Raises MpqError saying how
        much fits when even the smallest plan does not."""
        if self.capacity is None or self.resident is None:
            return self, {}
        smallest = math.fsum(min(r.values()) for r in self.resident)
        if smallest > self.capacity:
            raise MpqError(f"the weights do not fit on chip: the smallest plan (every free group at its lowest offered "
                           f"precision, pinned groups at their pins) needs {si(smallest, 'B')} of on-chip memory and the "
                           f"chip holds {si(self.capacity, 'B')} of weights ({100 * self.capacity / smallest:.1f}% of "
                           "them); offer lower precisions (--bits), unpin layers (--no-pin) or split the model across chips")
        if math.fsum(max(r.values()) for r in self.resident) <= self.capacity:
            return self, {}
        groups = [{b: {**c, RESIDENT: r[b]} for b, c in options.items()} for options, r in zip(self.groups, self.resident)]
        table = CostTable(metrics=self.metrics + (RESIDENT,), layers=self.layers, groups=groups,
                          model_name=self.model_name, capacity=self.capacity, resident=self.resident,
                          pinned=self.pinned)
        return table, {RESIDENT: self.capacity}

    def offered_bits(self) -> list[int]:
        """Every precision some group is offered, ascending."""
        return sorted({b for options in self.groups for b in options})

    def uniform_totals(self, widths=(8, 4, 2)) -> dict[int, dict[str, float] | None]:
        """The reference plans: for each width b, the totals of every free group at b bits (pinned
        ones at their pins), or None where some group is not offered b."""
        return {b: (None if (choice := self.uniform(b)) is None else self.total(choice)) for b in widths}

    def uniform(self, bits: int) -> list[int] | None:
        """Free groups at ``bits`` (pinned ones at their pin), or None if some free group lacks it
        (also one offered a single other precision: a uniform plan never holds another width)."""
        choice = []
        for g, options in enumerate(self.groups):
            if g in self.pinned:
                choice.append(next(iter(options)))
            elif bits in options:
                choice.append(bits)
            else:
                return None
        return choice


def cost_table(graph: LayerGraph, spec, model) -> CostTable:
    """Apply ``model`` to every layer of ``graph`` at every precision of ``spec``. A group's cost
    is the sum of its layers' costs, except ``weight_bytes`` (the model size), which counts each
    stored weight once: the steps of an unrolled recurrence read one weight."""
    if hasattr(model, "check"):
        model.check(graph, spec)
    layer_costs: dict[str, dict[int, dict[str, float]]] = {}
    seen_metrics: tuple[str, ...] | None = None
    for layer in graph.layers:
        options = {}
        for bits in _candidate_bits(graph, spec, layer.pinned_bits):
            cost = model.layer_cost(layer, bits, spec)
            if cost is None:
                continue
            cost = _checked_cost(cost, model, layer, bits)
            metrics = tuple(m for m in model.metrics if m in cost) + tuple(sorted(set(cost) - set(model.metrics)))
            if seen_metrics is None:
                seen_metrics = metrics
            elif metrics != seen_metrics:
                raise MpqError(f"cost model '{model.name}' returned metrics {list(metrics)} for layer "
                               f"'{layer.name}' but {list(seen_metrics)} before; every option needs the same metrics")
            bad = [m for m, v in cost.items() if not (0 <= v < float("inf"))]
            if bad:
                raise MpqError(f"cost model '{model.name}' returned {bad[0]}={cost[bad[0]]} for layer "
                               f"'{layer.name}' at {bits} bits; costs must be finite and >= 0")
            options[bits] = cost
        layer_costs[layer.name] = options
    group_costs = []
    for group in graph.groups:
        offered = set.intersection(*(set(layer_costs[n]) for n in group.layers))
        if group.pinned_bits is not None:
            if group.pinned_bits not in offered:
                raise MpqError(f"group {group.id} ({group.layers[0]}) is pinned at {group.pinned_bits} bits, which "
                               f"{spec.name} with cost model '{model.name}' does not offer for it (offered: "
                               f"{sorted(offered) or 'none'}); pass --pin-bits with one of {list(spec.precisions)} or --no-pin")
            offered = {group.pinned_bits}
        if not offered:
            raise MpqError(f"group {group.id} ({group.layers[0]}) has no precision that {spec.name} with cost "
                           f"model '{model.name}' can run (weights too large for on-chip memory?)")
        # one layer per stored weight for the model size (layers that read one weight share a group)
        storing = list({graph.layer(n).weight or n: n for n in group.layers}.values())
        group_costs.append({b: {m: sum(layer_costs[n][b][m] for n in (storing if m == "weight_bytes" else group.layers))
                                for m in seen_metrics} for b in sorted(offered)})
    resident = None
    if spec.weight_capacity is not None:  # each stored weight once (layers that read one weight share a group)
        stored = [{graph.layer(n).weight or n: graph.layer(n).params for n in group.layers} for group in graph.groups]
        resident = [{b: sum(weights.values()) * b / 8 for b in options} for weights, options in zip(stored, group_costs)]
    return CostTable(metrics=seen_metrics or (), layers=layer_costs, groups=group_costs, model_name=model.name,
                     capacity=spec.weight_capacity, resident=resident,
                     pinned=frozenset(g.id for g in graph.groups if g.pinned_bits is not None))


def _checked_cost(cost, model, layer, bits: int) -> dict[str, float]:
    """A cost model's answer as {metric: float}; MpqError naming the model and layer when it is
    not a mapping of metric names to real numbers."""
    def wrong(what: str) -> MpqError:
        return MpqError(f"cost model '{getattr(model, 'name', model)}' returned {what} for layer '{layer.name}' at "
                        f"{bits} bits; layer_cost must return None or a dict of metric name -> number")

    if not isinstance(cost, dict):
        raise wrong(f"{type(cost).__name__} {str(cost)[:40]!r}")
    out = {}
    for metric, value in cost.items():
        if not isinstance(metric, str) or isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise wrong(f"{str(metric)[:40]!r}: {str(value)[:40]!r}")
        out[metric] = float(value)
    return out


def _candidate_bits(graph: LayerGraph, spec, pinned: int | None) -> list[int]:
    return sorted(set(spec.precisions) | ({pinned} if pinned else set()))
