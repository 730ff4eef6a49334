"""Planning commands: plan (one budget), frontier (a sweep of budgets), sweep (spec variants)."""
from __future__ import annotations

import json

import click

from planner.cli import tables
from planner.cli.options import (Number, Progress, between, bits_restriction_option, check_paths,
                                 cost_model_options, dump_json, executor_options, force_option, gain_options,
                                 gains_options, hw_pin_options, input_shape_option, input_shapes, json_option,
                                 model_hw_options, note_unused, planning_inputs, prepare, time_limit_option, with_options)
from planner.errors import MpqError
from planner.units import si, unit


def _file_name(path) -> str:
    from pathlib import Path

    return Path(path).name if path else "model"


@click.command()
@with_options(model_hw_options)
@click.option("--budget", "budget_texts", multiple=True, required=True, metavar="METRIC<=VALUE|METRIC=R",
              help="A budget: latency_s<=1.5e-3, weight_bytes<=3MB, or latency=0.5 (a fraction of the way "
                   "from the cheapest plan to the dearest). Repeat for several.")
@click.option("--between", "between_text", default=None, metavar="LOW,HIGH",
              help="Fractional budgets run from uniform LOW-bit to uniform HIGH-bit instead (e.g. 2,4).")
@with_options(gains_options)
@click.option("-o", "--output", default=None, metavar="PLAN.json", help="Write the plan JSON here.")
@click.option("--csv", "csv_path", default=None, metavar="BITMAP.csv", help="Write the layer,weight,w_bits,a_bits table.")
@click.option("--explain", is_flag=True, help="Show why the most contested groups got their bits.")
@click.option("--method", type=click.Choice(["cpsat", "knapsack"]), default="cpsat", show_default=True,
              help="Solver: CP-SAT (any budgets) or OR-Tools' 0-1 knapsack (two precisions, one budget).")
@time_limit_option("")
@click.option("--timings", is_flag=True, help="Record the solver's wall time in the plan (then runs differ).")
@bits_restriction_option
@input_shape_option
@with_options(hw_pin_options)
@click.option("--json", "as_json", is_flag=True, help="Print the plan JSON instead of the summary.")
@force_option
def plan(model, hw_name, cost_model, lut, budget_texts, between_text, gains_names, step, mode, weighting, seed, output,
         csv_path, explain, method, time_limit, timings, restrict_bits, shape_texts, no_pin, pin_bits, as_json,
         force) -> None:
    """Choose each layer's precision under the budgets, maximising the total gain."""
    from planner import pipeline
    from planner.export.plan import plan_json, write_plan_files
    from planner.solve import explain as why

    check_paths(planning_inputs(model, hw_name, cost_model, lut, gains_names), {"-o": output, "--csv": csv_path})
    if len(gains_names) > 1:
        raise MpqError("mpq plan takes one --gains; compare several with mpq frontier")
    setup = prepare(model, hw_name, cost_model, lut, shape_texts, no_pin, pin_bits, restrict_bits)
    result = pipeline.plan(setup, list(budget_texts), between=between(between_text),
                           gains=gains_names[0] if gains_names else "eagl",
                           gain_options=gain_options(step, mode, weighting, seed), method=method,
                           time_limit_s=time_limit, timings=timings, force=force)
    write_plan_files(result.doc, output, csv_path, validated=True)  # pipeline.plan validated it
    if as_json:
        click.echo(plan_json(result.doc), nl=False)
        return
    _print_plan_summary(result, setup.graph)
    if explain:
        rows = why(result.gains.by_group, result.table.groups, result.limits, result.solution.bits)
        metric = sorted(result.limits)[0]
        click.echo(f"\nmost contested groups (price of {metric}: {rows[0]['price'][metric]:.4g} gain per unit)" if rows else "")
        click.echo(tables.table(
            ["group", "first layer", "bits", "runner-up", "gain", "runner-up gain", f"extra {metric}", "gain per unit", "net margin"],
            [(r["group"], setup.graph.groups[r["group"]].layers[0], r["bits"], r["runner_up"], f"{r['gain']:.4g}",
              f"{r['gain_runner_up']:.4g}", f"{r['delta_cost'][metric]:.4g}",
              "-" if r["gain_per_cost"][metric] is None else f"{r['gain_per_cost'][metric]:.4g}", f"{r['margin']:.3g}")
             for r in rows]))
        click.echo("a group keeps the option with the larger net value (gain - price x cost); a small margin "
                   "means a small change of budget or gain flips it")
    for path in (output, csv_path):
        if path:
            click.echo(f"wrote {path}")


def _print_plan_summary(result, graph) -> None:
    doc, solution = result.doc, result.solution
    rows = [(l["name"], l["group"], l["w_bits"], "yes" if graph.groups[l["group"]].pinned_bits else "")
            for l in doc["layers"]]
    click.echo(tables.table(["layer", "group", "bits", "pinned"], rows, right=[False, True, True, False]))
    s = doc["solver"]
    click.echo(f"\n{len(doc['layers'])} layers in {len(doc['groups'])} groups: "
               + tables.bits_mix([l["w_bits"] for l in doc["layers"]], [g["bits"] for g in doc["groups"]])
               + f"; gains {doc['gains']['method']} {json.dumps(doc['gains']['params'], sort_keys=True)}")
    click.echo(f"solver {s['status']} ({s['method']}): objective {s['objective']:.6g}, bound {s['bound']:.6g}, "
               f"gap {s['relative_gap']:.2g}, {solution.wall_time_s:.3f} s, {s['groups_fixed_by_presolve']} groups "
               f"fixed by presolve; rounding error <= {s['gain_error_bound']:.2g} gain")
    for b in doc["budgets"]:
        used = doc["totals"][b["metric"]]
        share = f" ({100 * used / b['limit']:.1f}% of budget)" if b["limit"] else ""
        click.echo(f"budget {b['given']}: {b['metric']} <= {si(b['limit'], unit(b['metric']))}, "
                   f"plan {si(used, unit(b['metric']))}{share}")
    click.echo("totals: " + ", ".join(f"{m}={si(v, unit(m))}" for m, v in doc["totals"].items()))
    primary = result.table.metrics[0]
    parts = []
    for b in (8, 4):
        ref = doc["reference"].get(f"uniform_{b}bit")
        if ref and doc["totals"][primary]:
            parts.append(f"x{ref[primary] / doc['totals'][primary]:.2f} vs uniform {b}-bit")
    click.echo(f"speedup ({primary}): " + ", ".join(parts))


@click.command()
@with_options(model_hw_options)
@click.option("--metric", default=None, help="Budgeted metric to sweep (default: the cost model's first, e.g. latency_s).")
@click.option("--between", "between_text", default=None, metavar="LOW,HIGH", help="Sweep from uniform LOW-bit to "
              "uniform HIGH-bit (default: from the cheapest plan to the dearest).")
@click.option("--points", type=Number(int, 2), default=11, show_default=True, help="Budgets in the sweep.")
@with_options(gains_options)
@click.option("--plot", "plot_path", default=None, metavar="OUT.png", help="Write the frontier plot.")
@click.option("--csv", "csv_path", default=None, metavar="OUT.csv", help="Write the points as CSV "
              "(finished points are kept beside it in OUT.csv.partial.jsonl, so a rerun resumes).")
@time_limit_option(" per point")
@click.option("--workers", type=Number(int, 1, 256), default=None, metavar="N",
              help="Points solved at once, on threads (default: one per CPU); the points do not depend on it.")
@bits_restriction_option
@input_shape_option
@with_options(hw_pin_options)
@json_option("the points")
@click.option("--inputs", "inputs_folder", default=None, metavar="FOLDER",
              help="Score every plan post-training on these input batches (.npy): top-1 agreement and output "
                   "cosine of its QDQ export to the float model, beside the gain (table, JSON, CSV, plot).")
@force_option
def frontier(model, hw_name, cost_model, lut, metric, between_text, points, gains_names, step, mode, weighting, seed,
             plot_path, csv_path, time_limit, workers, restrict_bits, shape_texts, no_pin, pin_bits, as_json,
             inputs_folder, force) -> None:
    """Optimal plans over a sweep of budgets, one curve per gain method (with --inputs, each plan's
    post-training fidelity to the float model, measured)."""
    from planner import pipeline
    from planner.atomic import together, write_text
    from planner.export.frontier import frontier_csv
    from planner.jobs.store import JobStore, resume_path

    resume_file = resume_path(csv_path)
    check_paths(planning_inputs(model, hw_name, cost_model, lut, gains_names),
                {"--csv": csv_path, "--plot": plot_path, "job store": resume_file})
    setup = prepare(model, hw_name, cost_model, lut, shape_texts, no_pin, pin_bits, restrict_bits)
    feeds = None
    if inputs_folder:
        from planner.export.handoff import folder_feeds

        feeds = folder_feeds(inputs_folder, model)
    store = JobStore(resume_file) if resume_file else None
    methods = list(dict.fromkeys(gains_names or ("eagl",)))
    with Progress(len(methods) * points, "frontier", unit="point") as bar:
        result = pipeline.frontier(setup, metric=metric, between=between(between_text), points=points, gains=methods,
                                   gain_options=gain_options(step, mode, weighting, seed), time_limit_s=time_limit,
                                   resume=store, inputs=feeds, force=force, workers=workers,
                                   progress=lambda done, total: bar.update(1))
    if store:
        note_unused(store)
    metric, rows, uniform = result.metric, result.points, result.uniform
    with together(csv_path, plot_path) as (csv_tmp, plot_tmp):
        if csv_path:
            write_text(csv_tmp, frontier_csv(rows, metric))
        if plot_path:
            from planner.cli.plots import frontier_plot

            frontier_plot(rows, uniform, metric, plot_tmp,
                          title=f"{_file_name(setup.graph.model.path)} on {setup.spec.name}: optimal plans over {metric} budgets")
    if store:
        store.remove()
    if as_json:
        dump_json({"metric": metric, "points": rows, "uniform": {str(b): u for b, u in uniform.items()}})
        return
    ref = uniform.get(8, {}).get("totals", {}).get(metric)
    table_rows = []
    for p in rows:
        gap = "-" if p["greedy_objective"] is None or not p["objective"] else f"{100 * (1 - p['greedy_objective'] / p['objective']):.2f}%"
        table_rows.append((p["method"], f"{p['fraction']:.2f}", si(p["limit"], unit(metric)),
                           f"{p['totals'][metric] / ref:.3f}" if ref else "-", f"{p['objective']:.5g}", p["status"], gap)
                          + ((f"{100 * p['fidelity']['top1_agreement']:.1f}%", f"{p['fidelity']['cosine']:.4f}")
                             if inputs_folder else ()))
    fidelity_headers = ["top-1 vs float", "cosine vs float"] if inputs_folder else []
    click.echo(tables.table(["gains", "r", f"budget {metric}", "vs 8-bit", "total gain", "status", "greedy short by"]
                            + fidelity_headers, table_rows,
                            right=[False, True, True, True, True, False, True] + [True] * len(fidelity_headers)))
    if inputs_folder:
        click.echo("top-1 / cosine vs float: each plan exported post-training (weights per channel, activations "
                   "calibrated on --inputs) against the float model in onnxruntime")
    for path in (csv_path, plot_path):
        if path:
            click.echo(f"wrote {path}")


@click.command()
@click.argument("model")
@click.option("--hw", "hw_name", required=True, metavar="SPEC", help="Base accelerator spec: shipped name or YAML path.")
@click.option("--vary", "vary_texts", multiple=True, metavar="FIELD=V1,V2,...",
              help="A spec field by dotted path and its values (cores=64,128,256; macs_per_cycle_per_core.2=4096,8192; "
                   "memory.on_chip_bytes=1e6,4e6), or precision sets (precisions=4,8/2,4,8). Repeat: the grid of all.")
@click.option("--samples", type=Number(int, 1), default=None, help="Instead of the grid, this many random points of its box.")
@click.option("--sample-seed", type=Number(int, 0, 2 ** 32 - 1), default=0, show_default=True, help="Seed of --samples.")
@click.option("--target-gain", "targets", type=Number(float), multiple=True, metavar="F",
              help="Plan the cheapest plan reaching F (e.g. 0.95) of the variant's largest total gain of a plan that "
                   "fits the chip (repeatable).")
@click.option("--budget", "budget_texts", multiple=True, metavar="METRIC<=VALUE|METRIC=R",
              help="Plan the best plan within this budget (repeatable; commas join metrics into one budget).")
@with_options(cost_model_options)
@with_options(gains_options)
@click.option("-o", "--output", "outputs", multiple=True, metavar="OUT.csv|OUT.json",
              help="Write the rows as CSV or JSON (by suffix; repeatable).")
@click.option("--plot", "plot_path", default=None, metavar="OUT.png", help="Write the sweep plots.")
@time_limit_option(" per budget")
@input_shape_option
@with_options(hw_pin_options)
@with_options(executor_options)
def sweep(model, hw_name, vary_texts, samples, sample_seed, targets, budget_texts, cost_model, lut, gains_names, step,
          mode, weighting, seed, outputs, plot_path, time_limit, shape_texts, no_pin, pin_bits, workers, executor,
          ray_address, resume_file) -> None:
    """Plan MODEL on every variant of a spec (design-space sweep): exact frontier, plans at gain
    targets or budgets, hardware cost and the Pareto set of (hardware cost, cost of the plan)."""
    import time

    from planner.atomic import together, write_text
    from planner.jobs.store import JobStore, resume_path
    from planner.solve import sweep as sw

    start = time.perf_counter()
    bad = [o for o in outputs if not o.endswith((".csv", ".json"))]
    if bad:
        raise MpqError(f"-o {bad[0]}: write .csv or .json")
    resume = resume_file or resume_path(outputs[0] if outputs else None)
    check_paths(planning_inputs(model, hw_name, cost_model, lut, gains_names),
                {**{f"-o {o}": o for o in outputs}, "--plot": plot_path, "--resume-file": resume})
    if len(gains_names) > 1:
        raise MpqError("mpq sweep takes one --gains")
    store = JobStore(resume) if resume else None

    def tick(variant, done, total, cached, seconds):
        click.echo(f"sweep [{done}/{total}] variant {variant.index} {variant.describe() or '(base spec)'}: "
                   f"{'from the job store' if cached else 'computed'} ({seconds:.1f} s)", err=True)

    result, items, header = sw.sweep_model(
        model, hw_name, list(vary_texts), samples=samples, sample_seed=sample_seed, targets=list(targets),
        budgets=list(budget_texts), cost_model=cost_model, lut=lut, gains=gains_names[0] if gains_names else "eagl",
        gain_options=gain_options(step, mode, weighting, seed), input_shapes=input_shapes(shape_texts), no_pin=no_pin,
        pin_bits=pin_bits, time_limit_s=time_limit, checkpoint=store,
        executor=executor or ("processes" if workers > 1 else "local"), workers=workers, ray_address=ray_address,
        progress=tick)
    with together(*outputs, plot_path) as temporaries:
        for out, tmp in zip(outputs, temporaries):
            write_text(tmp, sw.to_csv(result) if out.endswith(".csv") else sw.to_json(result, header))
        if plot_path:
            from planner.cli.plots import sweep_plot

            sweep_plot(result, temporaries[-1],
                       title=f"{_file_name(header['model']['path'])} on variants of {header['hardware']['name']}")
    if store and not resume_file:
        store.remove()
    fields, _ = sw.columns(result)
    metric = result.metric
    rows = []
    givens = list(dict.fromkeys(r["given"] for r in result.rows))
    for r in sorted(result.rows, key=lambda r: (givens.index(r["given"]), r["variant"])):
        totals = r.get("totals") or {}
        share = f"{100 * r['objective'] / r['max_gain']:.1f}%" if totals and r["max_gain"] else "-"
        rows.append((r["variant"], *(sw.show(r["values"][f]) for f in fields), r["given"], r["status"],
                     si(totals[metric], unit(metric)) if totals else "-", share,
                     "-" if r["hardware_cost"] is None else f"{r['hardware_cost']:.5g}",
                     {True: "*", False: "", None: ""}[r["pareto"]]))
    click.echo(tables.table(["variant", *fields, "plan for", "status", metric, "gain", "hw cost", "pareto"], rows))
    cost_unit = f" ({header['hardware_cost_unit']})" if header["hardware_cost_unit"] else ""
    click.echo(f"\n{len(items)} variants ({len(result.computed)} computed, {len(items) - len(result.computed)} from the "
               f"job store) in {time.perf_counter() - start:.1f} s; gains {header['gains']['method']} on bits "
               f"{header['precisions']}"
               + (f"; hw cost{cost_unit}: * marks the Pareto set of (hw cost, {metric} at a target; gain at a budget)"
                  if any(r["pareto"] is not None for r in result.rows) else ""))
    for path in (*outputs, plot_path):
        if path:
            click.echo(f"wrote {path}")
