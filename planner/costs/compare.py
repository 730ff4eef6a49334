"""Put (spec, cost model) pairs side by side: which layers does each reward for lower precision?

For every pair, each layer's cost at every precision (pins ignored: this is about the hardware),
its share of the model's 8-bit cost, and the saving of the 8 -> 4 and 4 -> 2 steps as a share of
that total. Between every two pairs: Spearman and Kendall rank correlation of the layers'
savings, and the layers whose ranks differ most.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from planner.errors import MpqError
from planner.graph import LayerGraph

STEPS = ((8, 4), (4, 2))


@dataclass
class PairCosts:
    """One (spec, cost model) pair: ``cost[layer][bits]`` of ``metric`` (None: not offered)."""

    spec: str
    model: str
    metric: str
    cost: dict[str, dict[int, float | None]]

    @property
    def label(self) -> str:
        """``spec/model``: the pair's name in tables and plots."""
        return f"{self.spec}/{self.model}"

    def total(self, bits: int) -> float | None:
        """The model's total cost at uniform ``bits`` (None when some layer is not offered at ``bits``)."""
        values = [c[bits] for c in self.cost.values()]
        return None if any(v is None for v in values) else sum(values)

    def share(self, layer: str, bits: int = 8) -> float | None:
        """``layer``'s share (0 to 1) of the model's total cost at ``bits`` (layers not offered
        count 0); None when the layer is not offered at ``bits`` or the total is 0."""
        total = self.total(bits) or sum(c[bits] or 0.0 for c in self.cost.values())
        value = self.cost[layer][bits]
        return None if value is None or not total else value / total

    def saving(self, layer: str, step: tuple[int, int]) -> float | None:
        """Cost saved on this layer by the step, as a share of the model's 8-bit cost."""
        high, low = (self.cost[layer][b] for b in step)
        reference = sum(c[8] or 0.0 for c in self.cost.values())
        return None if high is None or low is None or not reference else (high - low) / reference


def pair_costs(graph: LayerGraph, spec, model, metric: str | None) -> PairCosts:
    """The cost of every layer of ``graph`` on ``spec`` under cost model ``model`` at every precision
    the spec offers and the ones of ``STEPS`` (None where not offered), in ``metric`` (default: the
    model's first metric). Raises MpqError from the model's ``check`` or when the model does not
    return ``metric``."""
    if hasattr(model, "check"):
        model.check(graph, spec)
    bits_all = sorted(set(spec.precisions) | {b for s in STEPS for b in s})
    metric = metric or model.metrics[0]
    cost: dict[str, dict[int, float | None]] = {}
    for layer in graph.layers:
        row = {}
        for bits in bits_all:
            c = model.layer_cost(layer, bits, spec) if bits in spec.precisions else None
            if c is not None and metric not in c:
                raise MpqError(f"cost model '{model.name}' on {spec.name} has no metric '{metric}' "
                               f"(it has {', '.join(c)})")
            row[bits] = None if c is None else float(c[metric])
        cost[layer.name] = row
    return PairCosts(spec=spec.name, model=model.name, metric=metric, cost=cost)


def _ranks(values: list[float]) -> list[float]:
    return list(stats.rankdata([-v for v in values]))  # rank 1 = largest saving


def compare(graph: LayerGraph, pairs: list[PairCosts], top: int = 5) -> dict:
    """The comparison as plain data (what ``mpq compare --json`` prints)."""
    names = [l.name for l in graph.layers]
    result: dict = {"layers": names, "pairs": [], "correlations": []}
    for p in pairs:
        entry = {"spec": p.spec, "cost_model": p.model, "metric": p.metric,
                 "total": {str(b): p.total(b) for b in (8, 4, 2)},
                 "share_8bit": [p.share(n) for n in names]}
        for step in STEPS:
            key = f"{step[0]}to{step[1]}"
            entry[f"saving_{key}"] = [p.saving(n, step) for n in names]
            high, low = p.total(step[0]), p.total(step[1])
            entry[f"speedup_{key}"] = high / low if high and low else None
        result["pairs"].append(entry)
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            for step in STEPS:
                key = f"{step[0]}to{step[1]}"
                a_all, b_all = result["pairs"][i][f"saving_{key}"], result["pairs"][j][f"saving_{key}"]
                both = [k for k in range(len(names)) if a_all[k] is not None and b_all[k] is not None]
                row = {"a": pairs[i].label, "b": pairs[j].label, "step": key, "layers": len(both),
                       "spearman": None, "kendall": None, "disagree": []}
                if len(both) >= 3:
                    a, b = [a_all[k] for k in both], [b_all[k] for k in both]
                    row["spearman"] = _finite(stats.spearmanr(a, b).statistic)
                    row["kendall"] = _finite(stats.kendalltau(a, b).statistic)
                    ra, rb = _ranks(a), _ranks(b)
                    order = sorted(range(len(both)), key=lambda k: (-abs(ra[k] - rb[k]), both[k]))
                    row["disagree"] = [{"layer": names[both[k]], "rank_a": ra[k], "rank_b": rb[k],
                                        "saving_a": a[k], "saving_b": b[k]} for k in order[:top] if ra[k] != rb[k]]
                result["correlations"].append(row)
    return result


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def compare_specs(graph: LayerGraph, hw_names: list[str], cost_models: list[str] | None = None, lut: str | None = None,
                  metric: str | None = None, top: int = 5) -> dict:
    """:func:`compare` over every (spec, cost model) pair: each spec in ``hw_names`` with each of
    ``cost_models`` (default: the spec's own, or ``lut`` with a latency table). Pairs whose cost
    model does not apply are listed under ``skipped`` with the reason. Raises MpqError when fewer
    than two pairs apply."""
    from hw import load_spec

    from planner.costs.setup import cost_model_for

    pairs, skipped = [], []
    for hw_name in hw_names:
        spec = load_spec(hw_name)
        for name in cost_models or [None]:
            model = cost_model_for(spec, name, lut if name in (None, "lut") else None)
            try:
                pairs.append(pair_costs(graph, spec, model, metric))
            except MpqError as e:
                skipped.append(f"{spec.name}/{model.name}: {e}")
    if len(pairs) < 2:
        raise MpqError("compare needs at least two (spec, cost model) pairs that apply; "
                       + ("skipped: " + "; ".join(skipped) if skipped else "give --hw twice or --cost-model twice"))
    data = compare(graph, pairs, top)
    data["skipped"] = skipped
    return data
