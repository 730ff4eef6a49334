"""Gain estimators: ``gains[group][bits]``, the value of running a group at ``bits``.

Every method, data-free (EAGL, the baselines) or data-driven (ALPS, sensitivity, Hessian), is
registered by name in :data:`planner.gains.registry.METHODS` behind one signature,
``estimate(name, source, precisions, **options)``. Gains are relative to a group's lowest precision, which has
gain 0; only differences within a group matter to the solver.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from planner.atomic import write_text
from planner.errors import MpqError
from planner.graph import LayerGraph
from planner.userfiles import finite, read_json

SCHEMA = "mpq.gains/v1"


@dataclass
class Gains:
    """``by_group[g][bits]`` for every group id (pinned groups: their pin only, gain 0).

    ``method`` and ``params`` describe where the numbers come from; ``extra`` carries
    method-specific results (per-layer entropies, noise floors, wall time).
    """

    method: str
    params: dict
    by_group: list[dict[int, float]]
    extra: dict = field(default_factory=dict)

    def to_json(self, graph: LayerGraph) -> dict:
        """The gains file document of ``graph`` (whose groups ``by_group`` follows): per group its
        layers, pin and gain per precision (bit widths as string keys), with method, params and
        ``extra``."""
        return {
            "schema": SCHEMA, "method": self.method, "params": self.params,
            "model": {"path": graph.model.path, "sha256": graph.model.sha256},
            "groups": [{"id": g.id, "layers": g.layers, "pinned_bits": g.pinned_bits,
                        "gains": {str(b): v for b, v in sorted(self.by_group[g.id].items())}}
                       for g in graph.groups],
            **({"extra": self.extra} if self.extra else {}),
        }

    def write(self, graph: LayerGraph, path: str | Path) -> None:
        """Write the gains file atomically; MpqError (and no file) when a gain is not finite."""
        for group in graph.groups:
            for bits, value in self.by_group[group.id].items():
                finite(value, f"{self.method} gain of group {group.id} ({group.layers[0]}) at {bits} bits "
                              "(the scores it comes from are not finite: lower --lr or check the checkpoint)")
        write_text(path, json.dumps(self.to_json(graph), indent=1, sort_keys=True) + "\n")


def relative(values: dict[int, float]) -> dict[int, float]:
    """Shift a group's gains so that its lowest precision has gain 0."""
    if not values:
        return {}
    low = values[min(values)]
    return {b: v - low for b, v in values.items()}


def check_model_hash(doc: dict, path, graph: LayerGraph, kind: str, force: bool = False) -> None:
    """Raise MpqError when ``doc`` (a gains file or plan) records the sha256 of another model
    than ``graph``'s, unless ``force``. Files without a recorded hash are not checked."""
    model = doc.get("model") if isinstance(doc, dict) else None
    recorded = model.get("sha256") if isinstance(model, dict) else None
    if force or not recorded or not graph.model.sha256 or recorded == graph.model.sha256:
        return
    raise MpqError(f"{path}: {kind} for another model: made for {model.get('path') or '?'} (sha256 "
                   f"{str(recorded)[:12]}...), not {graph.model.path} (sha256 {graph.model.sha256[:12]}...); "
                   f"make one for this model, or pass --force to use it anyway")


def read_gains(path: str | Path, graph: LayerGraph, force: bool = False) -> Gains:
    """Gains from a JSON file, matched to ``graph``'s groups by layer names.

    Accepts ``{"groups": [{"layers": [...], "gains": {"2": 0, "4": 1.3}}]}`` (what mpq writes)
    or ``{"layers": {"layer name": {"2": 0, "4": 0.4}}}`` (per-layer values, summed per group).
    Every free group of the model needs gains; a file naming layers the model lacks is for
    another model, and so is one that records another model's sha256 (unless ``force``).
    Every gain must be a finite number.
    """
    doc = read_json(path, "gains")
    if not isinstance(doc, dict) or not ({"groups", "layers"} & set(doc)):
        raise MpqError(f"{path}: a gains file needs 'groups' (as mpq writes) or 'layers' (per-layer gains)")
    expected = "expected {'groups': [{'layers': [...], 'gains': {'4': 1.0, ...}}]}"

    def values_of(gains, where: str) -> dict[int, float]:
        if not isinstance(gains, dict):
            raise MpqError(f"{path}: {where}: gains must be a mapping of bits to numbers; {expected}")
        out = {}
        for b, v in gains.items():
            try:
                bits = int(b)
            except ValueError:
                raise MpqError(f"{path}: {where}: '{b}' is not a bit width; {expected}") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise MpqError(f"{path}: {where}: gain at {b} bits is {json.dumps(v)[:40]}, not a number")
            out[bits] = finite(v, f"{path}: {where}: gain at {b} bits")
        return out

    per_layer: dict[str, dict[int, float]] = {}
    if "groups" in doc:
        if not isinstance(doc["groups"], list):
            raise MpqError(f"{path}: 'groups' must be a list; {expected}")
        for k, entry in enumerate(doc["groups"]):
            layers = entry.get("layers") if isinstance(entry, dict) else None
            if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers):
                raise MpqError(f"{path}: groups.{k}: needs 'layers', a non-empty list of layer names; {expected}")
            values = values_of(entry.get("gains"), f"groups.{k}.gains")
            first, *rest = layers
            per_layer[first] = values
            for name in rest:
                per_layer[name] = dict.fromkeys(values, 0.0)
    else:
        if not isinstance(doc["layers"], dict):
            raise MpqError(f"{path}: 'layers' must map layer names to gains; {expected}")
        per_layer = {name: values_of(values, f"layers.{name}") for name, values in doc["layers"].items()}
    for key, kind in (("params", dict), ("extra", dict), ("method", str)):
        if key in doc and not isinstance(doc[key], kind):
            raise MpqError(f"{path}: '{key}' must be a {'mapping' if kind is dict else 'string'}")
    check_model_hash(doc, path, graph, "gains file", force)
    known = {l.name for l in graph.layers}
    foreign = sorted(set(per_layer) - known)
    if foreign:
        raise MpqError(f"{path}: gains for layers this model does not have (e.g. '{foreign[0]}', {len(foreign)} in "
                       f"all); the file is for another model — compute gains for {graph.model.path}")
    by_group = []
    for group in graph.groups:
        present = [per_layer[n] for n in group.layers if n in per_layer]
        if group.pinned_bits is not None:
            by_group.append({group.pinned_bits: 0.0})
            continue
        if not present:
            raise MpqError(f"{path}: no gains for group {group.id} ({group.layers[0]}); the file is for another "
                           "model or an older graph, compute gains again")
        bits = sorted(set.intersection(*(set(p) for p in present)))
        by_group.append(relative({b: sum(p[b] for p in present) for b in bits}))
    method = doc.get("method", "file")
    return Gains(method=method, params={"file": str(path), **doc.get("params", {})}, by_group=by_group,
                 extra=doc.get("extra", {}))


def compute(name: str, graph: LayerGraph, precisions: list[int], force: bool = False, **options) -> Gains:
    """Data-free gains of method ``name`` on ``graph``, or the gains file at path ``name``
    (``force``: accept a file made for another model): :func:`planner.gains.registry.estimate`
    on the graph alone. Raises MpqError for an unknown name or a method that needs a task."""
    from planner.gains.registry import Source, estimate

    return estimate(name, Source(graph=graph), precisions, force=force, **options)
