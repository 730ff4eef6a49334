"""Design-space sweeps: the exact precision frontier of one model on many variants of a spec.

A variant is the base spec with numeric fields set by their dotted paths (``cores=128``,
``macs_per_cycle_per_core.2=4096``, ``memory.on_chip_bytes=1e6``) and possibly another set of
precisions (per-precision tables keep the entries of the set); each variant is validated as a
full spec. For every variant:

- the exact frontier: every Pareto-optimal plan of (cost on the primary metric, total gain)
  among the plans that fit the chip, by dynamic programming over the groups with dominance
  pruning (:func:`pareto_frontier`). A variant of a spec that keeps every weight on chip
  (``memory.weights_on_chip``) holds a plan's weight bytes in its capacity,
  min(``memory.on_chip_bytes``, ``cores`` x ``memory.per_core_bytes``) as the variant sets them
  (:attr:`hw.HardwareSpec.weight_capacity`), as ``mpq plan`` and ``mpq frontier`` do;
- at each gain target F, the cheapest plan that fits whose total gain is at least F x the
  largest total gain of the variant, which is the largest total gain of a plan that fits (the
  gain of the dearest plan where every plan fits), read off that frontier: exact, because the
  frontier holds every plan that fits and that no other plan that fits beats on both cost and
  gain;
- at each budget, the optimum of :func:`planner.solve.knapsack.solve` (CP-SAT) with the chip's implicit
  ``on_chip_weight_bytes`` budget where it can bind, as ``mpq plan`` finds it (a fraction r of a
  budget is of the way from the cheapest plan to the dearest, fitting or not, as in ``mpq plan``);
- its hardware cost (:meth:`hw.HardwareSpec.hardware_cost`), where the spec gives one.

Gains are computed once, on the union of the precisions of all variants, so every variant's
gains share one zero (each free group at the lowest precision of the sweep) and a target means
the same on every variant. A variant whose cost table cannot be built (a layer too large for
on-chip memory, pins at a precision the variant lacks), on which no plan fits the chip (the note
says how much fits), or whose budget cannot be met gives rows with status ``infeasible`` and
the reason, not an error.

Finished variants are kept in a checkpoint keyed by everything that determines them, so an
interrupted sweep recomputes only unfinished ones; variants run on any executor.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import numpy as np

from planner.errors import MpqError
from planner.userfiles import finite

FORMAT = "mpq.sweep/v1"
#: Version of a variant's result, part of its checkpoint key: 2 keeps every plan within the chip's
#: weight capacity, so results of version 1 (which did not) are never read back.
RESULT_VERSION = 2
#: Largest frontier (points) kept while merging groups; beyond it the sweep stops with an error.
MAX_FRONTIER_POINTS = 2_000_000
#: Per-precision tables of a spec, restricted to a variant's precisions.
PER_PRECISION = ("macs_per_cycle_per_core", "energy.per_mac_j", "hardware_cost.per_mac_unit")
DESIGN_POINT = "mpq sweep: design point"


# --------------------------------------------------------------------------------------------
# Axes and variants


@dataclass(frozen=True)
class Axis:
    """One ``--vary``: a dotted spec field (or ``precisions``) and its values, in the order given.
    Numeric values are floats (ints when whole); precision sets are tuples of ints."""

    field: str
    values: tuple


@dataclass
class Variant:
    """A design point: ``values`` maps each axis field to its value here; ``data`` is the full
    spec as YAML data and ``spec`` its validated :class:`hw.HardwareSpec`."""

    index: int
    values: dict
    data: dict
    spec: object = None

    def describe(self) -> str:
        """``cores=64 precisions=4,8``: the variant's axis values, as in tables."""
        return " ".join(f"{f}={show(v)}" for f, v in self.values.items())


@cache
def _schema() -> dict:
    return json.loads(resources.files("hw").joinpath("spec.schema.json").read_text())


def _deref(node: dict) -> dict:
    while "$ref" in node:
        node = _schema()["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _is_figure(node: dict) -> bool:
    return any(alt.get("type") == "number" for alt in node.get("oneOf", []))


def numeric_fields() -> list[str]:
    """Every numeric spec field, by dotted path (``B`` stands for a bit width)."""
    found = []

    def walk(node, path):
        node = _deref(node)
        if _is_figure(node):
            found.append(path)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}" if path else name)
        if "propertyNames" in node:
            walk(node["additionalProperties"], f"{path}.B")

    walk(_schema(), "")
    return found


def _field_node(path: str) -> dict | None:
    """The schema of the numeric field at ``path``, None if there is none."""
    node = _schema()
    for part in path.split("."):
        node = _deref(node)
        if part in node.get("properties", {}):
            node = node["properties"][part]
        elif "propertyNames" in node and re.fullmatch(node["propertyNames"]["pattern"], part):
            node = node["additionalProperties"]
        else:
            return None
    node = _deref(node)
    return node if _is_figure(node) else None


def parse_vary(text: str) -> Axis:
    """``FIELD=V1,V2,...`` (a numeric field by dotted path) or ``precisions=4,8/2,4,8``.

    Raises MpqError naming the field when the path is not a numeric spec field or a value is not
    a number (or, for precisions, not a set of bit widths)."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
        raise MpqError(f"--vary '{text}': expected FIELD=V1,V2,... (e.g. cores=64,128,256) or precisions=4,8/2,4,8")
    if name == "precisions":
        sets = []
        for part in values.split("/"):
            try:
                bits = tuple(sorted({int(b) for b in part.split(",")}))
            except ValueError:
                raise MpqError(f"--vary precisions: '{part}' is not a set of bit widths; write e.g. "
                               "precisions=4,8/2,4,8") from None
            if not bits or min(bits) < 1 or max(bits) > 32:
                raise MpqError(f"--vary precisions: '{part}': bit widths run from 1 to 32")
            sets.append(bits)
        return Axis("precisions", tuple(dict.fromkeys(sets)))
    if _field_node(name) is None:
        raise MpqError(f"--vary {name}: not a numeric spec field; vary one of {', '.join(numeric_fields())} "
                       "(B: a bit width, e.g. macs_per_cycle_per_core.2) or precisions")
    numbers = [_tidy(finite(part.strip(), f"--vary {name}")) for part in values.split(",")]
    return Axis(name, tuple(dict.fromkeys(numbers)))


def _tidy(x: float):
    return int(x) if float(x).is_integer() and abs(x) < 2 ** 53 else float(x)


def show(value) -> str:
    """A varied value as text (a precision set as 2,4,8)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def apply(base: dict, values: dict) -> dict:
    """The spec data of ``base`` with ``values`` set ({dotted field: number, "precisions": bits})."""
    data = copy.deepcopy(base)
    for path, value in values.items():
        if path == "precisions":
            continue
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(_key(node, part), {})
        key = _key(node, leaf)
        current = node.get(key)
        now = current.get("value") if isinstance(current, dict) else current
        if now != value:  # a changed figure is a hypothesis, not the source's number
            node[key] = {"value": value, "source": DESIGN_POINT, "assumption": True}
    if "precisions" in values:
        bits = list(values["precisions"])
        data["precisions"] = bits
        for path in PER_PRECISION:
            *parents, leaf = path.split(".")
            node = data
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and isinstance(node.get(leaf), dict):
                node[leaf] = {k: v for k, v in node[leaf].items() if int(k) in bits}
    return data


def _key(node: dict, part: str):
    """YAML loads bit-width keys as ints: find ``part`` as the key the data already uses."""
    return int(part) if part.isdigit() and any(isinstance(k, int) for k in node) else part


def variants(base: dict, where: str, axes: list[Axis], *, samples: int | None = None, seed: int = 0) -> list[Variant]:
    """Every point of the grid of ``axes`` (the first axis varies slowest), or ``samples`` random
    points of their box (seeded; a numeric field is drawn uniformly between its smallest and
    largest value, as a whole number where all its values are whole; a precision set is drawn
    among those given). Each is validated as a full spec; raises MpqError naming the field of the
    first value that makes an invalid spec."""
    from hw import parse_spec

    fields = [a.field for a in axes]
    if len(set(fields)) != len(fields):
        raise MpqError(f"--vary {next(f for f in fields if fields.count(f) > 1)}: given twice; list all its values once")
    for axis in axes:  # each value alone first, so an error names the value that causes it
        for value in axis.values:
            try:
                parse_spec(apply(base, {axis.field: value}), where)
            except MpqError as e:
                raise MpqError(f"--vary {axis.field}={show(value)}: {e}") from None
    if samples is None:
        points = [dict(zip(fields, combo)) for combo in itertools.product(*(a.values for a in axes))]
    else:
        if samples < 1:
            raise MpqError("--samples must be at least 1")
        rng = np.random.default_rng(seed)
        points = []
        for _ in range(samples):
            point = {}
            for axis in axes:
                if axis.field == "precisions":
                    point[axis.field] = axis.values[int(rng.integers(len(axis.values)))]
                else:
                    low, high = min(axis.values), max(axis.values)
                    whole = all(isinstance(v, int) for v in axis.values)
                    point[axis.field] = int(rng.integers(low, high + 1)) if whole else _tidy(float(rng.uniform(low, high)))
            points.append(point)
    out = []
    for k, point in enumerate(points):
        variant = Variant(index=k, values=point, data=apply(base, point))
        try:
            variant.spec = parse_spec(variant.data, where)
        except MpqError as e:
            raise MpqError(f"--vary {variant.describe()}: {e}") from None
        out.append(variant)
    return out


def precisions_of(items: list[Variant]) -> list[int]:
    """The union of the variants' precisions: what gains are computed on."""
    return sorted({b for v in items for b in v.spec.precisions})


# --------------------------------------------------------------------------------------------
# The exact frontier


@dataclass
class Frontier:
    """Every Pareto-optimal plan of (total ``metric``, total gain) among the plans considered
    (those that fit the chip, where :func:`pareto_frontier` was given a capacity): ``costs``
    strictly ascending, ``gains`` strictly ascending, so no such plan has both a lower cost and a
    higher gain than a point without being one. ``plan(i)`` gives the bits per group of point i."""

    metric: str
    costs: np.ndarray
    gains: np.ndarray
    steps: list[tuple[np.ndarray, np.ndarray]] = field(repr=False)

    def plan(self, i: int) -> list[int]:
        """The bits per group (in group order) of point ``i``."""
        bits = []
        for parents, choices in reversed(self.steps):
            bits.append(int(choices[i]))
            i = int(parents[i])
        return bits[::-1]

    def cheapest_reaching(self, gain: float) -> int | None:
        """Index of the cheapest point with total gain >= ``gain`` (None if none reaches it)."""
        i = int(np.searchsorted(self.gains, gain, side="left"))
        return i if i < len(self.gains) else None

    def best_within(self, limit: float) -> int | None:
        """Index of the point of largest gain with cost <= ``limit`` (None if none)."""
        i = int(np.searchsorted(self.costs, limit, side="right")) - 1
        return i if i >= 0 else None


def pareto_frontier(gains: list[dict[int, float]], costs: list[dict[int, dict[str, float]]], metric: str,
                    max_points: int = MAX_FRONTIER_POINTS, *, resident: list[dict[int, float]] | None = None,
                    capacity: float | None = None) -> Frontier:
    """The exact frontier of a multiple-choice knapsack (one option per group), over the plans
    that fit the chip where ``resident`` and ``capacity`` are given.

    ``resident[g][bits]`` are the bytes group g's weights take in on-chip memory and ``capacity``
    the bytes the chip holds (:class:`planner.costs.table.CostTable` ``resident`` and ``capacity``): a
    plan fits when the sum of its bytes is at most ``capacity``, exactly (no tolerance; the bytes,
    weights x bits / 8, are exact in double precision). The frontier is then every plan that fits
    and that no other plan that fits beats on both cost and gain.

    Groups are merged one at a time; after each merge, partial plans that another partial plan
    beats (no dearer, at least as much gain) are dropped, which loses nothing because both would
    be extended by the same choices of the remaining groups (Nemhauser-Ullmann). Where the
    capacity can bind (the dearest plan does not fit), a partial plan beats another only if it
    also takes no more bytes, except that a partial plan that fits with any choice of the
    remaining groups takes "no bytes" (its completions all fit); partial plans that fit with no
    choice of the remaining groups are dropped (:func:`_merge_fitting`). Where even the dearest
    plan fits, this is the unconstrained frontier, found as before. Costs and gains are summed in
    group order in double precision, as :meth:`planner.costs.table.CostTable.total` sums them. Among
    plans of equal cost and gain the one found first (lower bits, earlier groups; where the
    capacity binds, fewer bytes first) is kept. Time O(sum over groups of options x partial plans
    kept), times their log where the capacity binds (more partial plans are kept then: 36,000 at
    most on EfficientNet-Lite0 against 1,336); raises MpqError if the partial plans kept grow
    beyond ``max_points``, a group lacks gains for an option it offers, or no plan fits."""
    binds = resident is not None and capacity is not None and sum(max(r.values()) for r in resident) > capacity
    if binds and sum(min(r.values()) for r in resident) > capacity:
        raise MpqError(f"no plan fits in {capacity:.12g} bytes of on-chip memory")
    # bytes the groups after g take at least / at most: rest_low[g + 1], rest_high[g + 1]
    rest_low = rest_high = None
    if binds:
        rest_low = np.concatenate([np.cumsum([min(r.values()) for r in resident][::-1])[::-1], [0.0]])
        rest_high = np.concatenate([np.cumsum([max(r.values()) for r in resident][::-1])[::-1], [0.0]])
    cost = np.zeros(1)
    gain = np.zeros(1)
    taken = np.zeros(1)  # bytes of each partial plan; -inf once every completion of it fits
    steps = []
    for g, options in enumerate(costs):
        bits = sorted(options)
        missing = [b for b in bits if b not in gains[g]]
        if missing:
            raise MpqError(f"group {g} has no gain for {missing[0]} bits, which the cost model offers; "
                           "give gains for every precision of the sweep")
        n = len(cost)
        all_cost = np.concatenate([cost + options[b][metric] for b in bits])
        all_gain = np.concatenate([gain + gains[g][b] for b in bits])
        parents = np.tile(np.arange(n), len(bits))
        choices = np.repeat(np.array(bits), n)
        if binds:
            all_taken = np.concatenate([taken + resident[g][b] for b in bits])
            keep = _merge_fitting(all_cost, all_gain, all_taken, capacity, rest_low[g + 1], rest_high[g + 1])
            taken = np.where(all_taken[keep] + rest_high[g + 1] <= capacity, -np.inf, all_taken[keep])
        else:
            order = np.lexsort((-all_gain, all_cost))  # by cost, then the larger gain first; stable
            best = np.maximum.accumulate(all_gain[order])
            keep = order[np.concatenate([[True], all_gain[order][1:] > best[:-1]])]
        cost, gain = all_cost[keep], all_gain[keep]
        if len(cost) > max_points:
            raise MpqError(f"the exact frontier exceeds {max_points:,} plans after {g + 1} of {len(costs)} groups; "
                           "sweep with --budget instead (solved by CP-SAT, no frontier needed)")
        steps.append((parents[keep], choices[keep]))
    return Frontier(metric=metric, costs=cost, gains=gain, steps=steps)


def _merge_fitting(cost: np.ndarray, gain: np.ndarray, taken: np.ndarray, capacity: float, rest_low: float,
                   rest_high: float) -> np.ndarray:
    """Indices, by ascending cost, of the partial plans to keep after a merge under a capacity.

    ``taken`` are their bytes (-inf for one whose every completion fits); the remaining groups
    take from ``rest_low`` to ``rest_high`` bytes. Dropped: plans that cannot fit (``taken +
    rest_low > capacity``), and plans beaten by an earlier one in the order (cost, larger gain,
    fewer bytes, position) that is no dearer, has at least as much gain and takes no more bytes,
    a plan all of whose completions fit counting as taking none. Plans all of whose completions
    fit are only beaten by such plans: the running maximum of their gains decides them at once;
    the others go through a staircase of (bytes, best gain) of the kept ones."""
    from bisect import bisect_right

    safe = taken + rest_high <= capacity
    key = np.where(safe, -np.inf, taken)
    order = np.lexsort((key, -gain, cost))
    order = order[taken[order] + rest_low <= capacity]
    gains, safe_sorted = gain[order], safe[order]
    best_safe = np.maximum.accumulate(np.where(safe_sorted, gains, -np.inf))  # over positions <= i
    before = np.concatenate([[-np.inf], best_safe[:-1]])  # over positions < i
    keep = gains > before  # not beaten by an earlier plan whose completions all fit
    band = np.flatnonzero(keep & ~safe_sorted)
    steps_taken: list[float] = []  # ascending bytes of the kept band plans ...
    steps_gain: list[float] = []   # ... and the best gain among those taking at most as many
    for i, t, v in zip(band.tolist(), taken[order[band]].tolist(), gains[band].tolist()):
        j = bisect_right(steps_taken, t)
        if j and steps_gain[j - 1] >= v:
            keep[i] = False
            continue
        k = bisect_right(steps_gain, v, j)  # the steps this plan now covers (more bytes, no more gain)
        steps_taken[j:k] = [t]
        steps_gain[j:k] = [v]
    return order[keep]


# --------------------------------------------------------------------------------------------
# One variant


_GRAPHS: dict[tuple, object] = {}  # LayerGraphs by (file, shapes, pins), loaded once per process


def _graph(model: str, shapes: str, pin_first: int | None, pin_last: int | None):
    from planner.graph import load_graph

    key = (model, shapes, pin_first, pin_last)
    if key not in _GRAPHS:
        _GRAPHS[key] = load_graph(model, {k: tuple(v) for k, v in json.loads(shapes).items()},
                                  pin_first=pin_first, pin_last=pin_last)
    return _GRAPHS[key]


def evaluate_variant(model: str, shapes: str, pins: list, data: dict, where: str, cost_model: str, lut: str | None,
                     gains: list[dict[int, float]], targets: list[float], budgets: list[str],
                     time_limit_s: float) -> dict:
    """One variant: its frontier and its plans at ``targets`` then ``budgets`` (JSON data).

    ``shapes`` is the JSON of the input shapes, ``pins`` [first, last], ``data`` the variant's
    spec data, ``gains[g][bits]`` the sweep's gains. Returns {"status", "note", "metrics",
    "hardware_cost", "max_gain", "weight_capacity", "frontier": {"costs", "gains"}, "rows": [...]},
    a variant that cannot run at all (no plan fits the chip included) with status "infeasible".
    ``weight_capacity`` is the bytes of on-chip memory for weights (None where weights may live
    off chip); every plan and frontier point fits in it, ``max_gain`` is the largest gain of a
    plan that fits, and "metrics" ends with ``on_chip_weight_bytes`` where the capacity binds (as
    ``mpq plan`` lists it). Module-level, so every executor can run it."""
    from costmodels import load_cost_model
    from hw import parse_spec

    from planner.solve.budget import parse_budget, resolve
    from planner.costs import cost_table
    from planner.solve import solve
    from planner.solve.knapsack import objective

    spec = parse_spec(data, where)
    graph = _graph(model, shapes, *pins)
    gains = [{int(b): v for b, v in g.items()} for g in gains]
    hardware = spec.hardware_cost()
    targets_rows = [{"kind": "target", "given": f"gain>={f:g}", "fraction": f} for f in targets]
    budget_rows = [{"kind": "budget", "given": text} for text in budgets]
    capacity = spec.weight_capacity
    try:
        table = cost_table(graph, spec, load_cost_model(cost_model, **({"table": lut} if lut else {})))
        fitted, chip = table.with_chip_limit()  # raises, saying how much fits, when no plan fits
    except MpqError as e:
        return {"status": "infeasible", "note": str(e), "metrics": [], "hardware_cost": hardware, "max_gain": None,
                "weight_capacity": capacity, "frontier": {"costs": [], "gains": []},
                "rows": [r | {"status": "infeasible", "note": str(e)} for r in targets_rows + budget_rows]}
    metric = table.metrics[0]
    front = pareto_frontier(gains, table.groups, metric, resident=table.resident, capacity=table.capacity)
    top = front.plan(len(front.gains) - 1)
    max_gain = objective(gains, top)
    rows = []
    for row in targets_rows:
        threshold = row["fraction"] * float(front.gains[-1])
        i = front.cheapest_reaching(threshold)
        if i is None:
            rows.append(row | {"gain_threshold": threshold, "status": "unreachable",
                               "note": f"no plan reaches gain {threshold:.6g}"})
            continue
        bits = front.plan(i)
        rows.append(row | {"gain_threshold": threshold, "status": "OPTIMAL", "objective": objective(gains, bits),
                           "totals": fitted.total(bits), "bits": bits})
    for row in budget_rows:
        try:
            parsed = [parse_budget(part, table.metrics) for part in row["given"].split(",")]
            limits = resolve(parsed, table)  # fractions of the way from the cheapest plan to the dearest, as mpq plan
            solution = solve(gains, fitted.groups, {**limits, **chip}, time_limit_s=time_limit_s)
        except MpqError as e:
            rows.append(row | {"status": "infeasible", "note": str(e)})
            continue
        fraction = parsed[0].fraction if len(parsed) == 1 else None
        rows.append(row | {"fraction": fraction, "limits": limits, "status": solution.status,
                           "objective": solution.objective, "bound": solution.bound, "totals": solution.totals,
                           "bits": solution.bits})
    return json.loads(json.dumps({
        "status": "ok", "note": "", "metrics": list(fitted.metrics), "hardware_cost": hardware, "max_gain": max_gain,
        "weight_capacity": capacity, "frontier": {"costs": front.costs.tolist(), "gains": front.gains.tolist()}, "rows": rows}))


# --------------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepResult:
    """What :func:`run_sweep` found: per variant its result (as :func:`evaluate_variant` returns
    it), and the rows over all variants with the Pareto set marked."""

    variants: list[Variant]
    results: list[dict]
    rows: list[dict]
    metric: str
    computed: list[int]


def variant_key(common: dict, variant: Variant) -> str:
    """Checkpoint key: a hash of everything that determines a variant's result."""
    text = json.dumps([FORMAT, RESULT_VERSION, common, variant.data], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def run_sweep(graph, items: list[Variant], gains, *, cost_model: str, lut: str | None = None,
              input_shapes: dict | None = None, pins: tuple = (8, 8), targets: list[float] = (), budgets: list[str] = (),
              time_limit_s: float = 60.0, checkpoint=None, executor: str = "local", workers: int = 1,
              ray_address: str | None = None, progress=None) -> SweepResult:
    """Evaluate every variant (skipping those in ``checkpoint``) and mark the Pareto set.

    ``graph``: the LayerGraph, loaded from its file with ``input_shapes`` (as given) and ``pins``
    (bits of the first and last layers, None: not pinned), which is how workers load it again;
    ``gains``: a :class:`planner.gains.Gains` over :func:`precisions_of` the variants;
    ``targets``: fractions F in (0, 1]; ``budgets``: budget texts (``latency=0.5``, several
    metrics joined by commas make one budget). ``progress(variant, done, total, cached, seconds)``
    is called as each variant finishes. Raises MpqError for targets out of range."""
    from planner.jobs.executors import run_jobs

    if not targets and not budgets:
        raise MpqError("give --target-gain F (e.g. 0.95) or --budget (e.g. latency=0.5): what to plan for")
    bad = [f for f in targets if not 0 < f <= 1]
    if bad:
        raise MpqError(f"--target-gain {bad[0]:g}: a target is a fraction of the largest gain, in (0, 1]")
    from costmodels import load_cost_model

    load_cost_model(cost_model, **({"table": lut} if lut else {}))  # a bad name or table fails here, once
    files = [f for f in (lut, cost_model.rsplit(":", 1)[0] if ":" in cost_model else None) if f and os.path.isfile(f)]
    file_sha = {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}  # their contents count too
    shapes = json.dumps({k: list(v) for k, v in (input_shapes or {}).items()}, sort_keys=True)
    pins = list(pins)
    by_group = [{str(b): v for b, v in sorted(g.items())} for g in gains.by_group]
    common = {"model": graph.model.sha256, "shapes": graph.model.input_shapes, "pins": pins,
              "cost_model": cost_model, "files": file_sha, "gains": [gains.method, gains.params, by_group],
              "targets": list(targets), "budgets": list(budgets), "time_limit_s": time_limit_s}
    keys = [variant_key(common, v) for v in items]
    results: dict[int, dict] = {}
    computed, started = [], time.perf_counter()

    def finished(index: int, value: dict, cached: bool) -> None:
        results[index] = value
        if progress:
            progress(items[index], len(results), len(items), cached, time.perf_counter() - started)

    _GRAPHS.setdefault((graph.model.path, shapes, *pins), graph)  # local jobs use the graph loaded here
    jobs = {}
    for v, key in zip(items, keys):
        cached = checkpoint.get(key) if checkpoint else None
        if cached is not None:
            finished(v.index, cached, True)
        else:
            jobs[str(v.index)] = dict(model=graph.model.path, shapes=shapes, pins=pins, data=v.data,
                                      where=f"{v.spec.path or v.spec.name} with {v.describe()}", cost_model=cost_model,
                                      lut=lut, gains=by_group, targets=list(targets), budgets=list(budgets),
                                      time_limit_s=time_limit_s)

    def on_result(index: str, value: dict) -> None:
        if checkpoint:
            checkpoint.put(keys[int(index)], value)
        computed.append(int(index))
        finished(int(index), value, False)

    run_jobs(evaluate_variant, jobs, on_result, executor=executor, workers=workers, ray_address=ray_address)
    ordered = [results[v.index] for v in items]
    metric = next((r["metrics"][0] for r in ordered if r["metrics"]), "")
    rows = []
    for v, result in zip(items, ordered):
        for row in result["rows"]:
            rows.append({"variant": v.index, "values": v.values, "method": gains.method,
                         "hardware_cost": result["hardware_cost"], "max_gain": result["max_gain"], **row})
    mark_pareto(rows, metric)
    return SweepResult(variants=items, results=ordered, rows=rows, metric=metric, computed=sorted(computed))


def mark_pareto(rows: list[dict], metric: str) -> None:
    """Set ``row["pareto"]`` for rows of one target or budget across variants: True where no
    other variant is at least as good on both (hardware cost, ``metric`` at a target) or
    (hardware cost, gain at a budget) and better on one; None where there is no hardware cost
    or no plan."""
    by_given: dict[str, list[dict]] = {}
    for row in rows:
        row["pareto"] = None
        if row.get("hardware_cost") is not None and row.get("totals"):
            by_given.setdefault(row["given"], []).append(row)
    for group in by_given.values():
        def point(r):
            return (r["hardware_cost"], r["totals"][metric] if r["kind"] == "target" else -r["objective"])

        for row in group:
            a = point(row)
            row["pareto"] = not any(b[0] <= a[0] and b[1] <= a[1] and b != a for b in map(point, group))


# --------------------------------------------------------------------------------------------
# Output


def columns(result: SweepResult) -> tuple[list[str], list[str]]:
    """(varied fields, metrics) in the order of the CSV columns."""
    fields = list(result.variants[0].values) if result.variants else []
    metrics = list(dict.fromkeys(m for r in result.results for m in r["metrics"]))
    return fields, metrics


def to_csv(result: SweepResult) -> str:
    """One line per (variant, target or budget); numbers as Python writes them (exact), so the
    bytes depend only on the inputs. Shares with ``mpq frontier --csv`` the columns method,
    fraction, limit, objective, bound, status, the metrics and bits."""
    fields, metrics = columns(result)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", *fields, "method", "kind", "given", "fraction", "limit", "gain_threshold", "objective",
                     "bound", "max_gain", "status", *metrics, "hardware_cost", "pareto", "bits", "note"])
    for row in result.rows:
        limits = row.get("limits") or {}
        limit = repr(next(iter(limits.values()))) if len(limits) == 1 else " ".join(f"{m}<={v!r}" for m, v in limits.items())
        totals = row.get("totals") or {}
        writer.writerow([
            row["variant"], *(" ".join(map(str, v)) if isinstance(v := row["values"][f], (list, tuple)) else v for f in fields),
            row["method"], row["kind"], row["given"], _cell(row.get("fraction")), limit, _cell(row.get("gain_threshold")),
            _cell(row.get("objective")), _cell(row.get("bound")), _cell(row.get("max_gain")), row["status"],
            *(_cell(totals.get(m)) for m in metrics), _cell(row.get("hardware_cost")),
            "" if row["pareto"] is None else ("yes" if row["pareto"] else "no"),
            " ".join(map(str, row.get("bits") or [])), row.get("note", "")])
    return buffer.getvalue()


def _cell(value) -> str:
    return "" if value is None else repr(value)


def to_json(result: SweepResult, header: dict) -> str:
    """The sweep as JSON: ``header`` (model, spec, cost model, gains, axes), every variant with
    its values, hardware cost, weight capacity and exact frontier, and the rows; keys sorted, so the bytes depend
    only on the inputs."""
    doc = {"schema": FORMAT, **header, "metric": result.metric, "variants": [
        {"index": v.index, "values": {f: list(x) if isinstance(x, tuple) else x for f, x in v.values.items()},
         "status": r["status"], "note": r["note"], "hardware_cost": r["hardware_cost"], "max_gain": r["max_gain"],
         "weight_capacity": r["weight_capacity"], "frontier": r["frontier"]} for v, r in zip(result.variants, result.results)],
        "rows": [{**row, "values": {f: list(x) if isinstance(x, tuple) else x for f, x in row["values"].items()}}
                 for row in result.rows]}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def load_base(name_or_path: str):
    """The base spec (validated) and its YAML data."""
    import yaml
    from pathlib import Path

    from hw import load_spec

    spec = load_spec(name_or_path)
    return spec, yaml.safe_load(Path(spec.path).read_bytes())


def sweep_model(model: str, hw: str, vary_texts: list[str], *, samples: int | None = None, sample_seed: int = 0,
                targets: list[float] = (), budgets: list[str] = (), cost_model: str | None = None,
                lut: str | None = None, gains: str = "eagl", gain_options: dict | None = None,
                input_shapes: dict | None = None, no_pin: bool = False, pin_bits: int | None = None,
                time_limit_s: float = 60.0, checkpoint=None, executor: str = "local", workers: int = 1,
                ray_address: str | None = None, progress=None):
    """Plan the ONNX ``model`` on every variant of spec ``hw`` that ``vary_texts`` describe
    (``FIELD=V1,V2``; the grid of all, or ``samples`` random points of its box), at each gain
    target and budget; the design-space sweep of ``mpq sweep``.

    Pins follow the base spec (see :func:`planner.costs.setup.pins_for`); gains (a method or
    file, with ``gain_options``) are estimated once on the precisions of all variants.
    ``checkpoint`` (a JobStore or None) keeps finished variants; ``progress(variant, done, total,
    cached, seconds)`` follows them. Returns ``(result, variants, header)``: the SweepResult, the
    variants, and the header the JSON output starts with. Raises MpqError for a bad axis, spec,
    target or budget."""
    from planner.costs.setup import pins_for
    from planner.gains.registry import Source, estimate
    from planner.graph import load_graph

    base, data = load_base(hw)
    axes = [parse_vary(t) for t in vary_texts]
    items = variants(data, base.path, axes, samples=samples, seed=sample_seed)
    pins = pins_for(base, no_pin=no_pin, pin_bits=pin_bits)
    shapes = input_shapes or {}
    graph = load_graph(model, shapes, pin_first=pins[0], pin_last=pins[1])
    found = estimate(gains, Source(graph=graph), precisions_of(items), **(gain_options or {}))
    cost_model = cost_model or ("lut" if lut else base.cost_model)
    result = run_sweep(graph, items, found, cost_model=cost_model, lut=lut, input_shapes=shapes, pins=pins,
                       targets=list(targets), budgets=list(budgets), time_limit_s=time_limit_s, checkpoint=checkpoint,
                       executor=executor, workers=workers, ray_address=ray_address, progress=progress)
    header = {"model": {"path": graph.model.path, "sha256": graph.model.sha256, "input_shapes": graph.model.input_shapes},
              "hardware": {"name": base.name, "sha256": base.sha256}, "hardware_cost_unit": base.hardware_cost_unit,
              "cost_model": cost_model, "pins": list(pins),
              "gains": {"method": found.method, "params": found.params}, "precisions": precisions_of(items),
              "axes": [{"field": a.field, "values": [list(v) if isinstance(v, tuple) else v for v in a.values]}
                       for a in axes],
              "samples": samples, "sample_seed": sample_seed if samples else None}
    return result, items, header
