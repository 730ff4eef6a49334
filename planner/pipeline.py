"""The stages chained: one function per planning command, for scripts and for the CLI.

    setup = prepare("model.onnx", "northpole")               # graph + spec defaults + cost table
    result = plan(setup, ["latency=0.5"], between=(2, 4))      # gains -> budgets -> exact solve -> plan
    write_plan(result.doc, "plan.json")

``plan`` and ``frontier`` return what they computed (the plan document, the frontier points);
they print nothing and write only the job store they are given.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.costs.setup import Setup, prepare

__all__ = ["FrontierResult", "PlanResult", "frontier", "frontier_key", "plan", "prepare"]


@dataclass
class PlanResult:
    """One plan: ``doc`` (the plan document, schema mpq.plan/v1), the ``gains`` and ``solution``
    it came from, the ``budgets`` as given and their ``limits`` (metric -> limit, the chip's
    implicit on-chip budget included), and the cost ``table`` they were solved on."""

    doc: dict
    gains: object
    solution: object
    budgets: list
    limits: dict[str, float]
    table: object


def plan(setup: Setup, budget_texts: list[str], *, between: tuple[int, int] | None = None, gains: str = "eagl",
         gain_options: dict | None = None, method: str = "cpsat", time_limit_s: float = 60.0, timings: bool = False,
         force: bool = False) -> PlanResult:
    """The optimal plan of ``setup`` under ``budget_texts`` (``latency_s<=1.5e-3``, ``latency=0.5``:
    see :func:`planner.solve.budget.parse_budget`; fractions run from uniform ``between[0]``-bit to
    ``between[1]``-bit when given, else from the cheapest plan to the dearest), maximising the
    total of ``gains`` (a method name or a gains file; ``gain_options`` as in
    :func:`planner.gains.registry.estimate`). On a spec that keeps weights on chip, every plan
    also fits the chip. Raises MpqError for a bad budget, an infeasible one or unknown gains."""
    from planner.export.plan import build_plan, validate
    from planner.gains.registry import Source, estimate
    from planner.solve import add_chip_limit, parse_budget, resolve, solve

    table = setup.table
    budgets = [parse_budget(t, table.metrics) for t in budget_texts]
    limits = resolve(budgets, table, between)
    table, budgets, limits = add_chip_limit(table, budgets, limits)
    found = estimate(gains, Source(graph=setup.graph), table.offered_bits(), force=force, **(gain_options or {}))
    solution = solve(found.by_group, table.groups, limits, method=method, time_limit_s=time_limit_s)
    doc = build_plan(setup.graph, setup.spec, table, found, budgets, limits, solution, timings)
    validate(doc)
    return PlanResult(doc=doc, gains=found, solution=solution, budgets=budgets, limits=limits, table=table)


@dataclass
class FrontierResult:
    """A frontier: ``points`` (one dict per gain method and budget fraction, see
    :meth:`planner.solve.frontier.FrontierPoint.to_json`; with inputs, each has ``fidelity``),
    the swept ``metric``, and ``uniform``: for 2, 4 and 8 bits where offered, the uniform plan's
    ``totals`` and each method's total ``gain``."""

    metric: str
    points: list[dict]
    uniform: dict[int, dict]


def frontier(setup: Setup, *, metric: str | None = None, between: tuple[int, int] | None = None, points: int = 11,
             gains: list[str] = ("eagl",), gain_options: dict | None = None, time_limit_s: float = 60.0,
             resume=None, inputs: list | None = None, force: bool = False, progress=None,
             workers: int | None = None) -> FrontierResult:
    """Optimal plans of ``setup`` at ``points`` budgets of ``metric`` (default: the cost model's
    first) evenly spaced from the cheapest plan to the dearest (or uniform ``between`` bits), one
    curve per gain method. ``resume`` (a JobStore or None) keeps finished points, so a rerun
    resumes; ``progress(done, total)`` follows the solves, ``workers`` of them at once (threads;
    default: one per CPU; the points are the same whatever the number). With ``inputs`` (feeds: lists of
    {input name: array}), every plan's QDQ export is scored post-training against the float model
    in onnxruntime. Raises MpqError for an unknown metric or gains."""
    from planner.gains.registry import Source, estimate
    from planner.solve import parse_budget
    from planner.solve.frontier import sweep

    table, graph = setup.table, setup.graph
    metric = parse_budget(f"{metric}=0", table.metrics).metric if metric else table.metrics[0]
    methods = list(dict.fromkeys(gains or ("eagl",)))
    gains_list = [estimate(m, Source(graph=graph), table.offered_bits(), force=force, **(gain_options or {}))
                  for m in methods]
    fractions = [round(k / (points - 1), 9) for k in range(points)]
    result = sweep(table, gains_list, metric, fractions, between=between, checkpoint=resume,
                   key_prefix=frontier_key(setup, time_limit_s), progress=progress, time_limit_s=time_limit_s,
                   workers=workers)
    uniform = {}
    for b in (2, 4, 8):
        choice = table.uniform(b)
        if choice is not None:
            uniform[b] = {"totals": table.total(choice),
                          "gain": {g.method: sum(g.by_group[k][bb] for k, bb in enumerate(choice)) for g in gains_list}}
    rows = [p.to_json() for p in result]
    if inputs is not None:
        from planner.export.fidelity import score_plans

        plans = [{l.name: p["bits"][l.group] for l in graph.layers} for p in rows]
        for p, score in zip(rows, score_plans(graph, plans, inputs)):
            p["fidelity"] = score
    return FrontierResult(metric=metric, points=rows, uniform=uniform)


def frontier_key(setup: Setup, time_limit_s: float) -> str:
    """What a frontier point depends on besides its gains, metric and fraction (which the sweep
    adds): the model, the spec, every cost of every option (so input shapes, pins, --bits, the
    cost model and its files such as a latency table all count), and the solver's time limit."""
    from planner.gains.datadriven import config_key

    table = setup.table
    return config_key(model=setup.graph.model.sha256, spec=setup.spec.sha256, cost_model=table.model_name,
                      metrics=table.metrics, costs=[{str(b): c for b, c in options.items()} for options in table.groups],
                      time_limit=time_limit_s)
