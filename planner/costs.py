"""Costs of every group at every precision: a cost model applied to a LayerGraph on a spec.

``costs[group][bits][metric]`` is the sum over the group's layers; an option is offered only if
the cost model offers it for every layer of the group. Pinned groups are offered their pinned
precision alone.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from .errors import MpqError
from .graph import LayerGraph

UNITS = {"_s": "s", "_j": "J", "_bytes": "B"}


def unit(metric: str) -> str:
    return next((u for suffix, u in UNITS.items() if metric.endswith(suffix)), "")


@dataclass
class CostTable:
    """Per-layer and per-group costs of every offered option.

    ``layers[name][bits]`` and ``groups[id][bits]`` map metric -> value; ``metrics`` are the
    metrics every option carries, in the cost model's order.
    """

    metrics: tuple[str, ...]
    layers: dict[str, dict[int, dict[str, float]]]
    groups: list[dict[int, dict[str, float]]]
    model_name: str

    def options(self, group: int) -> list[int]:
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
        return CostTable(metrics=self.metrics, layers=self.layers, groups=groups, model_name=self.model_name)

    def uniform(self, bits: int) -> list[int] | None:
        """Free groups at ``bits`` (pinned ones at their pin), or None if some group lacks it."""
        choice = []
        for options in self.groups:
            if len(options) == 1:
                choice.append(next(iter(options)))
            elif bits in options:
                choice.append(bits)
            else:
                return None
        return choice


def cost_table(graph: LayerGraph, spec, model) -> CostTable:
    """Apply ``model`` to every layer of ``graph`` at every precision of ``spec``."""
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
        group_costs.append({b: {m: sum(layer_costs[n][b][m] for n in group.layers) for m in seen_metrics}
                            for b in sorted(offered)})
    return CostTable(metrics=seen_metrics or (), layers=layer_costs, groups=group_costs, model_name=model.name)


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
