"""Stage 2, costs: every layer at every precision, priced by a cost model on an accelerator spec.

``cost_table(graph, spec, model)`` returns a ``CostTable`` (per group and precision: latency,
energy, bytes, ... as the cost model defines them); ``compare`` ranks where several (spec, cost
model) pairs disagree about what lower precision is worth.
"""
from planner.costs.table import RESIDENT, CostTable, cost_table
from planner.units import unit

__all__ = ["RESIDENT", "CostTable", "cost_table", "unit"]
