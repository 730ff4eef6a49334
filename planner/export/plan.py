"""Plans: the chosen bits per group expanded per layer, with everything needed to audit them.

``build_plan`` assembles the ``mpq.plan/v1`` document of DESIGN.md; ``write_plan`` validates it
against ``plan.schema.json`` and writes it atomically with sorted keys (same inputs, same bytes);
``write_bitmap`` writes the flat ``layer,weight,w_bits,a_bits,weight_qdq,inputs`` CSV (``weight_qdq``:
the initializer holding the layer's integer levels in mpq's QDQ export; ``inputs``: the activation
tensors it reads, ';'-separated, the tensors the export's QuantizeLinear nodes read); ``read_plan`` reads a plan
back and matches it to a LayerGraph.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema

from planner.atomic import write_text
from planner.solve.budget import Budget
from planner.costs import CostTable
from planner.errors import MpqError
from planner.gains import Gains
from planner.graph import LayerGraph
from planner.export.qdq import weight_tensor_name
from planner.solve.knapsack import Solution
from planner.userfiles import read_json

SCHEMA = "mpq.plan/v1"


@cache
def plan_schema() -> dict:
    """The JSON schema of plan files (``plan.schema.json``, shipped with the package)."""
    return json.loads(resources.files("planner.export").joinpath("plan.schema.json").read_text())


def build_plan(graph: LayerGraph, spec, table: CostTable, gains: Gains, budgets: list[Budget],
               limits: dict[str, float], solution: Solution, timings: bool = False) -> dict:
    """The plan document (schema ``plan.schema.json``) of ``solution``: the model, spec and cost
    model it was made for; the budgets (``limits``: each budget's metric -> its absolute value, in
    the metric's unit); the solver's status, objective, bound (and wall time only with ``timings``,
    then runs differ); the totals; the uniform-precision reference totals of ``table``; per group
    its bits and each option's gain and cost; per layer its weight and activation bits."""
    bits = solution.bits
    reference = {f"uniform_{b}bit": totals for b, totals in table.uniform_totals().items() if totals is not None}
    return {
        "schema": SCHEMA,
        "model": {"path": graph.model.path, "sha256": graph.model.sha256, "input_shapes": graph.model.input_shapes},
        "hardware": {"name": spec.name, "sha256": spec.sha256},
        "cost_model": table.model_name,
        "gains": {"method": gains.method, "params": gains.params},
        "budgets": [{"metric": b.metric, "limit": limits[b.metric], "given": b.text} for b in budgets],
        "solver": solution.to_json(timings),
        "totals": solution.totals,
        "reference": reference,
        "groups": [{
            "id": g.id, "bits": bits[g.id], "layers": g.layers, "pinned_bits": g.pinned_bits,
            "options": {str(b): {"gain": gains.by_group[g.id].get(b, 0.0), "cost": cost}
                        for b, cost in sorted(table.groups[g.id].items())},
        } for g in graph.groups],
        "layers": [{"name": l.name, "weight": l.weight, "w_bits": bits[l.group], "a_bits": bits[l.group], "group": l.group,
                    "weight_qdq": weight_tensor_name(l.weight) if l.weight else None, "inputs": l.activation_inputs}
                   for l in graph.layers],
    }


def validate(doc: dict, where: str = "plan") -> None:
    """Raise MpqError naming the first field (in path order) where ``doc`` breaks the plan schema;
    ``where`` names the document in the message."""
    errors = sorted(jsonschema.Draft202012Validator(plan_schema()).iter_errors(doc), key=lambda e: list(map(str, e.path)))
    if errors:
        e = errors[0]
        raise MpqError(f"{where}: not a valid mpq plan: {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}")


def plan_json(doc: dict) -> str:
    """The plan document as the file's text: indented, key-sorted JSON ending in a newline
    (same document, same bytes)."""
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def write_plan(doc: dict, path: str | Path, *, validated: bool = False) -> None:
    """Validate (unless the caller just did: ``validated``) and write atomically."""
    if not validated:
        validate(doc)
    write_text(path, plan_json(doc))


def write_plan_files(doc: dict, plan_path: str | Path | None, bitmap_path: str | Path | None, *,
                     validated: bool = False) -> None:
    """Write the plan JSON to ``plan_path`` and the bit map CSV to ``bitmap_path`` (either may be
    None), atomically and together: both or neither. The plan is validated first unless the caller
    just did (``validated``, as :func:`planner.pipeline.plan` does)."""
    from planner.atomic import together

    with together(plan_path and str(plan_path), bitmap_path and str(bitmap_path)) as (plan_tmp, bitmap_tmp):
        if plan_path:
            write_plan(doc, plan_tmp, validated=validated)
        if bitmap_path:
            write_bitmap(doc, bitmap_tmp)


def bitmap_csv(doc: dict) -> str:
    """The plan's per-layer table as CSV text: ``layer,weight,w_bits,a_bits,weight_qdq,inputs``,
    one row per layer in plan order (``inputs`` joined by ``;``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", "weight", "w_bits", "a_bits", "weight_qdq", "inputs"])
    for layer in doc["layers"]:
        writer.writerow([layer["name"], layer["weight"] or "", layer["w_bits"], layer["a_bits"],
                         layer.get("weight_qdq") or "", ";".join(layer.get("inputs", []))])
    return buffer.getvalue()


def write_bitmap(doc: dict, path: str | Path) -> None:
    """Write :func:`bitmap_csv` of ``doc`` to ``path`` atomically."""
    write_text(path, bitmap_csv(doc))


@dataclass
class PlanFile:
    """A plan read back from disk."""

    path: str
    doc: dict

    @property
    def bits_by_layer(self) -> dict[str, int]:
        """Layer name -> planned weight bits."""
        return {l["name"]: l["w_bits"] for l in self.doc["layers"]}

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> the shape the plan was made at ({} when the plan records none)."""
        return {name: tuple(shape) for name, shape in self.doc["model"].get("input_shapes", {}).items()}

    def input_shapes_for(self, model) -> dict[str, tuple[int, ...]]:
        """The recorded :attr:`input_shapes` that fit the ONNX ``model``'s inputs (same name and
        rank, equal fixed dimensions): the shapes a model with symbolic dimensions is loaded at
        wherever the plan is applied. Shapes that do not fit are left out, so that a plan for
        another model is refused for its layers (:meth:`check_model`), not for its shapes."""
        from planner.graph.onnxfile import model_inputs

        if not self.input_shapes:
            return {}
        inputs = model_inputs(model)
        return {name: shape for name, shape in self.input_shapes.items()
                if name in inputs and len(inputs[name][1]) == len(shape)
                and all(d is None or d == n for d, n in zip(inputs[name][1], shape))}

    def check_model(self, graph: LayerGraph, force: bool = False) -> None:
        """Raise MpqError unless the plan's layers are ``graph``'s layers (same names and weights)
        and, unless ``force``, the plan records ``graph``'s model sha256."""
        planned = {l["name"]: l["weight"] for l in self.doc["layers"]}
        actual = {l.name: l.weight for l in graph.layers}
        if planned != actual:
            missing = sorted(set(actual) - set(planned))
            extra = sorted(set(planned) - set(actual))
            detail = (f"it lacks layer '{missing[0]}'" if missing else f"it names layer '{extra[0]}', which the model lacks"
                      if extra else "its layers read other weights")
            raise MpqError(f"{self.path}: plan is for another model ({self.doc['model'].get('path')}; {detail}); "
                           f"make a plan for {graph.model.path} with mpq plan")
        from planner.gains import check_model_hash

        check_model_hash(self.doc, self.path, graph, "plan", force)

    def bits_for(self, graph: LayerGraph, force: bool = False) -> list[int]:
        """Bits per group of ``graph`` (after checking the plan is for this model)."""
        self.check_model(graph, force)
        by_layer = self.bits_by_layer
        out = []
        for group in graph.groups:
            values = {by_layer[n] for n in group.layers}
            if len(values) != 1:
                raise MpqError(f"{self.path}: layers of group {group.id} have different bits {sorted(values)}; "
                               "a group shares one precision")
            out.append(values.pop())
        return out


def read_plan(path: str | Path) -> PlanFile:
    """A plan file, validated against the schema; every layer's bits a supported bit width, and
    each layer listed once (a second entry would silently win over the first)."""
    from hw import check_bits

    doc = read_json(path, "plan")
    validate(doc, str(path))
    seen = set()
    for layer in doc["layers"]:
        if layer["name"] in seen:
            raise MpqError(f"{path}: layer '{layer['name']}' is listed twice; a plan gives each layer one entry "
                           "(make it again with mpq plan, or delete one entry)")
        seen.add(layer["name"])
        for key in ("w_bits", "a_bits"):
            check_bits(layer[key], f"{path}: layer {layer['name']}: {key}")
    return PlanFile(str(path), doc)
