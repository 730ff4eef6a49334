"""Stage 4, the solver: the multiple-choice knapsack of per-group precisions, solved exactly.

``solve(gains, costs, budgets)`` returns a ``Solution`` (bits per group, the solver's status and
bound); ``budget`` parses and resolves budgets (absolute or a fraction of the way from the cheapest
to the dearest plan); ``frontier`` sweeps a budget for a whole accuracy-cost curve; ``sweep`` plans
one model on every variant of an accelerator spec (a design-space sweep).
"""
from planner.solve.budget import Budget, add_chip_limit, parse_budget, resolve
from planner.solve.knapsack import Solution, explain, greedy, solve

__all__ = ["Budget", "Solution", "add_chip_limit", "explain", "greedy", "parse_budget", "resolve", "solve"]
