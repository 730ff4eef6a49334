"""Budgets: ``latency_s<=1.5e-3``, ``weight_bytes<=3MB`` (absolute) or ``latency=0.5`` (a
fraction r of the way from the cheapest plan to the dearest, HAWQ-V3 style; with ``between``
the endpoints are two uniform precisions instead, e.g. all-2-bit to all-4-bit).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from planner.costs import CostTable, unit
from planner.errors import MpqError

_PREFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "n": 1e-9,
             "p": 1e-12, "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40}
_FORM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|=)\s*([^\s]+)\s*$")
_NUMBER = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]*)$")


@dataclass(frozen=True)
class Budget:
    """One budget as given. ``limit`` is absolute (metric units) or None; ``fraction`` in [0, 1]."""

    metric: str
    text: str
    limit: float | None = None
    fraction: float | None = None


def parse_budget(text: str, metrics: tuple[str, ...]) -> Budget:
    """Parse ``metric<=value[unit]`` or ``metric=fraction``; metric names may drop their unit
    suffix (``latency`` for ``latency_s``). MpqError naming what is wrong otherwise (a negative
    value, a fraction outside [0, 1], an unknown metric or unit, a number beyond float range)."""
    match = _FORM.match(text)
    if not match:
        raise MpqError(f"budget '{text}': expected METRIC<=VALUE (e.g. latency_s<=1.5e-3, weight_bytes<=3MB) "
                       "or METRIC=FRACTION (e.g. latency=0.5)")
    name, op, value = match.groups()
    metric = _metric(name, metrics, text)
    number = _NUMBER.match(value)
    if not number and value.startswith("-") and _NUMBER.match(value[1:]):
        raise MpqError(f"budget '{text}': {value} is negative; " + (
            "a fractional budget is a number from 0 (cheapest plan) to 1 (dearest)" if op == "=" else
            f"a limit on {metric} is 0 or more"))
    if not number:
        raise MpqError(f"budget '{text}': '{value}' is not a number")
    amount, suffix = float(number.group(1)), number.group(2)
    if not math.isfinite(amount):
        raise MpqError(f"budget '{text}': {value} is not a finite number; give a limit below 1e308")
    if op == "=":
        if suffix or not 0.0 <= amount <= 1.0:
            raise MpqError(f"budget '{text}': a fractional budget is a number from 0 (cheapest plan) to 1 (dearest); "
                           f"for an absolute one write {metric}<={value}")
        return Budget(metric=metric, text=text, fraction=amount)
    limit = amount * _unit_factor(suffix, metric, text)
    if not math.isfinite(limit):
        raise MpqError(f"budget '{text}': {value} is not a finite number of {unit(metric) or 'units'}; "
                       "give a limit below 1e308")
    return Budget(metric=metric, text=text, limit=limit)


def _metric(name: str, metrics: tuple[str, ...], text: str) -> str:
    if name in metrics:
        return name
    matches = [m for m in metrics if m.rsplit("_", 1)[0] == name or m.split("_", 1)[0] == name]
    if len(matches) == 1:
        return matches[0]
    raise MpqError(f"budget '{text}': unknown metric '{name}'; this cost model has {', '.join(metrics)}")


def _unit_factor(suffix: str, metric: str, text: str) -> float:
    if not suffix:
        return 1.0
    base = unit(metric)
    if base and suffix.endswith(base):
        prefix = suffix[: -len(base)]
    elif base == "B" and suffix.endswith("iB"):
        prefix = suffix[:-1]
    elif not base:
        prefix = suffix
    else:
        raise MpqError(f"budget '{text}': unit '{suffix}' does not fit {metric} (in {base})")
    if prefix not in _PREFIXES:
        raise MpqError(f"budget '{text}': unknown unit prefix in '{suffix}'")
    return _PREFIXES[prefix]


def endpoints(table: CostTable, metric: str, between: tuple[int, int] | None) -> tuple[float, float]:
    """(low, high) totals of ``metric`` that fractions 0 and 1 stand for."""
    from planner.solve.knapsack import cheapest, dearest

    if between is None:
        return cheapest(table.groups, metric), dearest(table.groups, metric)
    totals = []
    for bits in between:
        choice = table.uniform(bits)
        if choice is None:
            raise MpqError(f"--between {between[0]},{between[1]}: uniform {bits}-bit is not offered on this hardware")
        totals.append(table.total(choice)[metric])
    return totals[0], totals[1]


def resolve(budgets: list[Budget], table: CostTable, between: tuple[int, int] | None = None) -> dict[str, float]:
    """Absolute limits per metric (the tightest where a metric is budgeted twice)."""
    limits: dict[str, float] = {}
    for b in budgets:
        if b.limit is not None:
            limit = b.limit
        else:
            low, high = endpoints(table, b.metric, between)
            limit = low + b.fraction * (high - low)
        limits[b.metric] = min(limit, limits.get(b.metric, limit))
    return limits


def add_chip_limit(table: CostTable, budgets: list[Budget], limits: dict[str, float]
                   ) -> tuple[CostTable, list[Budget], dict[str, float]]:
    """Add the implicit budget of a spec that keeps every weight on chip: the plan's on-chip
    weight bytes within the chip's capacity (see ``CostTable.with_chip_limit``; nothing is added
    where every plan fits). Returns the table carrying that metric, the budgets and the limits.
    Raises MpqError saying how much fits when no plan does."""
    table, chip = table.with_chip_limit()
    for metric, capacity in chip.items():
        budgets = [*budgets, Budget(metric=metric, text=f"implicit: every weight on chip, {metric}<={capacity:.12g}",
                                    limit=capacity)]
        limits = {**limits, metric: capacity}
    return table, budgets, limits
