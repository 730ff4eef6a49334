"""Commands about a model and a spec before any planning: inspect, spec, cost, compare."""
from __future__ import annotations

import click

from planner.cli import tables
from planner.cli.options import (COUNT, BIT_WIDTH, check_paths, dump_json, force_option, hw_pin_options,
                                 input_shape_option, input_shapes, json_option, model_hw_options, pin_options, prepare,
                                 ref_file, with_options)
from planner.units import si, unit


@click.command()
@click.argument("model")
@input_shape_option
@with_options(pin_options)
@json_option("the layer graph")
def inspect(model: str, shape_texts, no_pin: bool, pin_bits: int, as_json: bool) -> None:
    """List the layers of MODEL (ONNX) with their MACs, precision groups and pins (and, for a QDQ
    model, each layer's weight and input bits read from its Q/DQ types)."""
    from planner.costs.setup import load_pinned_graph
    from planner.export.qdq import layer_bits

    graph = load_pinned_graph(model, input_shapes=input_shapes(shape_texts), no_pin=no_pin, pin_bits=pin_bits)
    quantized = layer_bits(graph)
    has_qdq = any(b["w_bits"] or any(b["a_bits"]) for b in quantized.values())
    if as_json:
        doc = graph.to_json()
        if has_qdq:  # bits read from the Q/DQ element types
            for entry in doc["layers"]:
                entry.update({k: quantized[entry["name"]][k] for k in ("w_bits", "a_bits")})
        dump_json(doc)
        return
    rows = [(l.name, l.op_type, tables.shape(l.weight_shape), f"{l.params:,}", f"{l.macs:,}", l.group,
             l.pinned_bits or "") for l in graph.layers]
    headers = ["layer", "op", "weight", "params", "MACs", "group", "pin"]
    if has_qdq:
        headers += ["w_bits", "a_bits"]
        rows = [(*r, quantized[l.name]["w_bits"] or "float",
                 "/".join(str(b or "float") for b in quantized[l.name]["a_bits"])) for r, l in zip(rows, graph.layers)]
    click.echo(tables.table(headers, rows, right=[False, False, False, True, True, True, True, True, True][:len(headers)]))
    if has_qdq:
        click.echo("\nw_bits / a_bits: read from the Q/DQ element types"
                   + (" (and mpq's metadata where levels sit in a wider type)"
                      if any(b["containers"] for b in quantized.values()) else ""))
    t = graph.totals()
    shapes = ", ".join(f"{k}={tables.shape(v)}" for k, v in graph.model.input_shapes.items())
    click.echo(f"\n{t['layers']} layers, {t['groups']} groups ({t['pinned_groups']} pinned), "
               f"{t['params']:,} params, {t['macs']:,} MACs ({si(t['macs'])}) at {shapes}")


@click.group()
def spec() -> None:
    """Accelerator specs: validate a YAML file, show a shipped one."""


@spec.command("validate")
@click.argument("files", nargs=-1, required=True)
def spec_validate(files) -> None:
    """Check spec FILES against the format; one line per file."""
    from hw import load_spec

    for file in files:
        s = load_spec(file)
        click.echo(f"{file}: ok ({s.name}: {len(s.precisions)} precisions {list(s.precisions)}, "
                   f"{len(s.sources)} sourced figures, {len(s.assumptions)} assumptions)")


@spec.command("show")
@click.argument("name")
@json_option("the resolved spec")
def spec_show(name: str, as_json: bool) -> None:
    """Show a spec (shipped NAME or a path) with every figure and its source."""
    import dataclasses

    from hw import load_spec, shipped_specs

    s = load_spec(name)
    if as_json:
        dump_json(dataclasses.asdict(s) | {"assumptions": list(s.assumptions)})
        return
    click.echo(f"{s.name}: {s.description}")
    click.echo(f"file: {s.path}  (shipped specs: {', '.join(shipped_specs())})\n")
    rows = [("precisions", ", ".join(map(str, s.precisions)), "", "")]

    def add(path: str, label: str, value):
        if value is None:
            return
        rows.append((label, si(value), "assumed" if path in s.assumptions else "", s.sources.get(path, "")))

    add("cores", "cores", s.cores)
    add("clock_hz", "clock (Hz)", s.clock_hz)
    for b, v in s.macs_per_cycle.items():
        add(f"macs_per_cycle_per_core.{b}", f"MACs/cycle/core @{b}b", v)
    for b in s.precisions:
        rows.append((f"peak MAC/s @{b}b", si(s.macs_per_second(b)), "derived", "cores x MACs/cycle x clock"))
    add("launch_overhead_s", "overhead/layer (s)", s.launch_overhead_s or None)
    add("memory.on_chip_bytes", "on-chip memory (B)", s.on_chip_bytes)
    add("memory.per_core_bytes", "memory/core (B)", s.per_core_bytes)
    add("memory.offchip_bandwidth_bytes_per_s", "off-chip bandwidth (B/s)", s.offchip_bandwidth)
    add("memory.output_bits", "output bits", s.output_bits)
    for b, v in s.energy_per_mac_j.items():
        add(f"energy.per_mac_j.{b}", f"energy/MAC @{b}b (J)", v)
    add("energy.per_byte_onchip_j", "energy/byte on chip (J)", s.energy_per_byte_onchip_j)
    add("energy.per_byte_offchip_j", "energy/byte off chip (J)", s.energy_per_byte_offchip_j)
    rows.append(("pins (first, last)", f"{s.pin_first}, {s.pin_last}", "", ""))
    rows.append(("default cost model", s.cost_model, "", ""))
    click.echo(tables.table(["figure", "value", "kind", "source"], rows, right=[False, True, False, False]))


def metric_header(metric: str) -> str:
    """``latency_s (s)``: a metric with its unit, for a column header."""
    return f"{metric} ({unit(metric)})" if unit(metric) else metric


@click.command()
@with_options(model_hw_options)
@click.option("--bits", type=BIT_WIDTH, default=8, show_default=True, help="Uniform precision of the free layers.")
@click.option("--plan", "plan_path", default=None, metavar="PLAN.json", help="Cost this plan's bits instead.")
@input_shape_option
@with_options(hw_pin_options)
@click.option("--summary", is_flag=True, help="Totals only, no per-layer table.")
@json_option("the costs")
@force_option
def cost(model, hw_name, cost_model, lut, bits, plan_path, shape_texts, no_pin, pin_bits, summary, as_json,
         force) -> None:
    """Per-layer and total cost of MODEL on an accelerator, at uniform precision or for a plan."""
    from planner.costs.report import cost_report

    if plan_path and not shape_texts:  # a model with symbolic dimensions is costed at the plan's shapes
        from planner.export.plan import read_plan

        shape_texts = tuple(f"{name}={'x'.join(map(str, shape))}"
                            for name, shape in read_plan(plan_path).input_shapes_for(model).items())
    setup = prepare(model, hw_name, cost_model, lut, shape_texts, no_pin, pin_bits)
    report = cost_report(setup, bits=bits, plan_path=plan_path, force=force)
    if as_json:
        dump_json(report)
        return
    metrics, totals, uniform = report["metrics"], report["totals"], report["uniform"]
    if not summary:
        rows = [(r["name"], r["group"], r["bits"], *(f"{r['cost'][m]:.4g}" for m in metrics)) for r in report["layers"]]
        rows.append(("total", "", "", *(f"{totals[m]:.4g}" for m in metrics)))
        click.echo(tables.table(["layer", "group", "bits", *map(metric_header, metrics)], rows,
                                right=[False, True, True] + [True] * len(metrics)) + "\n")
    click.echo(f"{report['model']} on {report['hardware']}, cost model {report['cost_model']}, {report['what']}")
    for b in ("8", "4", "2"):
        if uniform[b] is None:
            click.echo(f"  uniform {b}-bit: not offered")
        else:
            click.echo(f"  uniform {b}-bit: " + ", ".join(f"{m}={si(uniform[b][m], unit(m))}" for m in metrics))
    parts = [f"{k[:-3]}-bit x{v:.2f}" for k, v in report["speedup_over_8bit"].items() if v]
    click.echo(f"  speedup over uniform 8-bit ({report['primary_metric']}): {', '.join(parts) or 'n/a'}")
    fit = report["fit"]
    if fit:
        resident, capacity = fit["on_chip_weight_bytes"], fit["capacity_bytes"]
        click.echo(f"  weights on chip: {si(resident, 'B')} of {si(capacity, 'B')} "
                   f"({100 * resident / capacity:.1f}%): " + ("fits" if fit["fits"] else "does NOT fit"))


@click.command()
@click.argument("model")
@click.option("--hw", "hw_names", multiple=True, required=True, metavar="SPEC", help="Accelerator spec (repeat).")
@click.option("--cost-model", "cost_models", multiple=True, metavar="NAME", help="Cost model (repeat; default: each spec's own).")
@click.option("--lut", default=None, metavar="CSV", help="Latency table for the lut cost model.")
@click.option("--metric", default=None, help="Metric to compare (default: each cost model's first, e.g. latency_s).")
@click.option("--plot", "plot_path", default=None, metavar="OUT.png", help="Write a PNG of per-layer cost shares.")
@click.option("--top", type=COUNT, default=5, show_default=True, help="Layers listed per disagreement.")
@input_shape_option
@json_option("the comparison")
def compare(model, hw_names, cost_models, lut, metric, plot_path, top, shape_texts, as_json) -> None:
    """Compare where (spec, cost model) pairs reward lower precision, layer by layer."""
    from planner.costs.compare import compare_specs
    from planner.graph import load_graph

    check_paths({"MODEL": model, "--lut": lut, **{f"--hw {h}": h for h in hw_names},
                 **{f"--cost-model {c}": ref_file(c) for c in cost_models}}, {"--plot": plot_path})
    graph = load_graph(model, input_shapes(shape_texts), pin_first=None, pin_last=None)
    data = compare_specs(graph, list(hw_names), list(cost_models) or None, lut, metric, top)
    if plot_path:
        from planner.cli.plots import compare_plot

        compare_plot(data, plot_path)
    if as_json:
        dump_json(data)
        return
    rows = []
    for p in data["pairs"]:
        tot = p["total"]
        rows.append((f"{p['spec']}/{p['cost_model']}", p["metric"], *(si(tot[b]) if tot[b] is not None else "n/a" for b in ("8", "4", "2")),
                     *(f"x{p[k]:.2f}" if p[k] else "n/a" for k in ("speedup_8to4", "speedup_4to2"))))
    click.echo(tables.table(["pair", "metric", "8-bit", "4-bit", "2-bit", "8->4", "4->2"], rows,
                            right=[False, False, True, True, True, True, True]))
    click.echo("\nrank correlation of the layers' savings (1 = same order):")
    corr_rows = [(c["a"], c["b"], c["step"].replace("to", "->"), c["layers"],
                  "n/a" if c["spearman"] is None else f"{c['spearman']:.3f}",
                  "n/a" if c["kendall"] is None else f"{c['kendall']:.3f}") for c in data["correlations"]]
    click.echo(tables.table(["pair A", "pair B", "step", "layers", "Spearman", "Kendall"], corr_rows,
                            right=[False, False, False, True, True, True]))
    for c in data["correlations"]:
        if c["disagree"] and c["step"] == "8to4":
            click.echo(f"\nlargest disagreements, 8->4, {c['a']} vs {c['b']} (rank 1 = largest saving):")
            click.echo(tables.table(["layer", "rank A", "rank B", "saving A %", "saving B %"],
                                    [(d["layer"], f"{d['rank_a']:.0f}", f"{d['rank_b']:.0f}", f"{100 * d['saving_a']:.2f}",
                                      f"{100 * d['saving_b']:.2f}") for d in c["disagree"]]))
    for s in data["skipped"]:
        click.echo(f"skipped {s}")
    if plot_path:
        click.echo(f"\nwrote {plot_path}")
