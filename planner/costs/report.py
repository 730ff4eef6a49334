"""What a model costs on a spec, at uniform precision or for a plan (``mpq cost``)."""
from __future__ import annotations

from planner.costs.setup import Setup
from planner.errors import MpqError


def cost_report(setup: Setup, *, bits: int = 8, plan_path: str | None = None, force: bool = False) -> dict:
    """The costs of ``setup``'s model with free groups at uniform ``bits`` (pinned ones at their
    pins), or at the bits of the plan at ``plan_path``.

    Returns a JSON-ready dict: ``what`` was costed, ``metrics``, per-layer ``layers`` (name, group,
    bits, cost), ``totals``, the ``uniform`` 8/4/2-bit reference totals (None where not offered),
    ``speedup_over_8bit`` of the primary metric, and ``fit`` (on-chip weight bytes against the
    chip's capacity) on a spec that keeps weights on chip. Raises MpqError when the spec does not
    offer ``bits`` or the plan's bits, or the plan is for another model (unless ``force``)."""
    graph, spec, table = setup.graph, setup.spec, setup.table
    if plan_path:
        from planner.export.plan import read_plan

        choice = read_plan(plan_path).bits_for(graph, force)
        for g, b in enumerate(choice):
            if b not in table.groups[g]:
                raise MpqError(f"{plan_path}: the plan gives group {g} ({graph.groups[g].layers[0]}) {b} bits, which "
                               f"{spec.name} with cost model '{table.model_name}' does not offer (offered: "
                               f"{table.options(g)}); make a plan for this spec with mpq plan --hw {spec.path or spec.name}")
        what = f"plan {plan_path}"
    else:
        choice = table.uniform(bits)
        if choice is None:
            lacking = next(g for g in graph.groups if g.pinned_bits is None and bits not in table.groups[g.id])
            raise MpqError(f"{spec.name} with cost model '{table.model_name}' does not offer {bits} bits for "
                           f"{lacking.layers[0]} (offered: {table.options(lacking.id)}); choose --bits from them")
        pinned = any(g.pinned_bits is not None for g in graph.groups)
        what = f"uniform {bits}-bit" + (" (pinned layers at their pins)" if pinned else "")
    primary = table.metrics[0]
    uniform = table.uniform_totals()
    speedup = {f"{b}bit": (uniform[8][primary] / uniform[b][primary])
               if uniform[b] and uniform[8] and uniform[b][primary] else None for b in (4, 2)}
    resident = table.resident_bytes(choice)
    fit = None if resident is None else {"on_chip_weight_bytes": resident, "capacity_bytes": table.capacity,
                                         "fits": resident <= table.capacity}
    return {"model": graph.model.path, "hardware": spec.name, "cost_model": table.model_name, "what": what,
            "metrics": list(table.metrics),
            "layers": [{"name": l.name, "group": l.group, "bits": choice[l.group], "cost": table.layers[l.name][choice[l.group]]}
                       for l in graph.layers],
            "totals": table.total(choice), "uniform": {str(b): v for b, v in uniform.items()},
            "speedup_over_8bit": speedup, "primary_metric": primary, "fit": fit}
