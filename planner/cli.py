"""The ``mpq`` command line: parse arguments, call the library, print. User errors exit 2."""
from __future__ import annotations

import json
import math
import sys

import click

from . import report
from .errors import MpqError


#: The largest dimension --input-shape accepts (ONNX and numpy index with int64; real inputs are far smaller).
MAX_DIM = 2 ** 31 - 1


def _shape_option(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for text in values:
        name, sep, dims = text.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape:
            raise MpqError(f"--input-shape '{text}': expected NAME=DxDx... (e.g. input=1x3x224x224)")
        if not all(1 <= d <= MAX_DIM for d in shape):
            raise MpqError(f"--input-shape '{text}': every dimension must be from 1 to {MAX_DIM:,}")
        shapes[name] = shape
    return shapes


class _Number(click.ParamType):
    """A finite int or float option with optional bounds (``low_open``: strictly above ``low``)."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
        self.kind, self.low, self.high, self.low_open = kind, low, high, low_open
        self.name = "integer" if kind is int else "number"

    def convert(self, value, param, ctx):
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = self.kind(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            self.fail(f"{value} must be {'>' if self.low_open else '>='} {self.low:g}", param, ctx)
        if self.high is not None and number > self.high:
            self.fail(f"{value} must be <= {self.high:g}", param, ctx)
        return number


class _BitWidth(click.ParamType):
    """One bit width from hw.SUPPORTED_BITS."""

    name = "bits"

    def convert(self, value, param, ctx):
        from hw import SUPPORTED_BITS

        try:
            bits = int(str(value).strip())
        except ValueError:
            bits = None
        if bits not in SUPPORTED_BITS:
            self.fail(f"{value!r} is not a supported bit width (the integers {SUPPORTED_BITS[0]} to "
                      f"{SUPPORTED_BITS[-1]})", param, ctx)
        return bits


BIT_WIDTH = _BitWidth()
POSITIVE = _Number(float, 0, low_open=True)
LEARNING_RATE = _Number(float, 0, 3.4e38, low_open=True)  # torch keeps it in float32
NON_NEGATIVE = _Number(float, 0)
COUNT = _Number(int, 1)
SEED = _Number(int, 0, 2 ** 32 - 1)


def _check_paths(inputs: dict, outputs: dict) -> None:
    """Before any work: outputs writable, distinct, and none of them an input (see userfiles)."""
    from .userfiles import check_paths

    check_paths(inputs, outputs)


def _ref_file(ref: str | None) -> str | None:
    """The file of a ``path/file.py:object`` reference (a task or cost model), else None."""
    where = (ref or "").rpartition(":")[0]
    return where if where.endswith(".py") else None


def _dump_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
    help="Fix a graph input's shape (repeatable); symbolic batch dimensions default to 1.")


def _pins(no_pin: bool, pin_bits: int) -> dict:
    return {"pin_first": None, "pin_last": None} if no_pin else {"pin_first": pin_bits, "pin_last": pin_bits}


pin_options = [
    click.option("--no-pin", is_flag=True, help="Do not pin the first and last layers."),
    click.option("--pin-bits", type=BIT_WIDTH, default=8, show_default=True, help="Bits of the pinned first/last layers."),
]


def _with(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpq")
def main() -> None:
    """mpq: plan per-layer 2/4/8-bit precision for an integer accelerator."""


@main.command()
@click.argument("model")
@input_shape_option
@_with(pin_options)
@click.option("--json", "as_json", is_flag=True, help="Print the layer graph as JSON.")
def inspect(model: str, input_shapes, no_pin: bool, pin_bits: int, as_json: bool) -> None:
    """List the layers of MODEL (ONNX) with their MACs, precision groups and pins (and, for a QDQ
    model, each layer's weight and input bits read from its Q/DQ types)."""
    from .graph import load_graph
    from .qdq import layer_bits

    graph = load_graph(model, _shape_option(input_shapes), **_pins(no_pin, pin_bits))
    quantized = layer_bits(graph)
    has_qdq = any(b["w_bits"] or any(b["a_bits"]) for b in quantized.values())
    if as_json:
        doc = graph.to_json()
        if has_qdq:  # bits read from the Q/DQ element types
            for entry in doc["layers"]:
                entry.update({k: quantized[entry["name"]][k] for k in ("w_bits", "a_bits")})
        _dump_json(doc)
        return
    rows = [(l.name, l.op_type, report.shape(l.weight_shape), f"{l.params:,}", f"{l.macs:,}", l.group,
             l.pinned_bits or "") for l in graph.layers]
    headers = ["layer", "op", "weight", "params", "MACs", "group", "pin"]
    if has_qdq:
        headers += ["w_bits", "a_bits"]
        rows = [(*r, quantized[l.name]["w_bits"] or "float",
                 "/".join(str(b or "float") for b in quantized[l.name]["a_bits"])) for r, l in zip(rows, graph.layers)]
    click.echo(report.table(headers, rows, right=[False, False, False, True, True, True, True, True, True][:len(headers)]))
    if has_qdq:
        click.echo("\nw_bits / a_bits: read from the Q/DQ element types"
                   + (" (and mpq's metadata where levels sit in a wider type)"
                      if any(b["containers"] for b in quantized.values()) else ""))
    t = graph.totals()
    shapes = ", ".join(f"{k}={report.shape(v)}" for k, v in graph.model.input_shapes.items())
    click.echo(f"\n{t['layers']} layers, {t['groups']} groups ({t['pinned_groups']} pinned), "
               f"{t['params']:,} params, {t['macs']:,} MACs ({report.si(t['macs'])}) at {shapes}")


def _load_graph_for(model: str, input_shapes, spec, no_pin: bool, pin_bits: int | None):
    """The LayerGraph with pins from the CLI (--no-pin, --pin-bits) or else from the spec."""
    from .graph import load_graph

    if no_pin:
        pins = {"pin_first": None, "pin_last": None}
    elif pin_bits is not None:
        pins = {"pin_first": pin_bits, "pin_last": pin_bits}
    else:
        pins = {"pin_first": spec.pin_first, "pin_last": spec.pin_last}
    return load_graph(model, _shape_option(input_shapes), **pins)


def _cost_model(name: str | None, spec, lut: str | None):
    from costmodels import load_cost_model

    name = name or ("lut" if lut else spec.cost_model)
    return load_cost_model(name, **({"table": lut} if lut else {}))


hw_pin_options = [
    click.option("--no-pin", is_flag=True, help="Do not pin the first and last layers."),
    click.option("--pin-bits", type=BIT_WIDTH, default=None, help="Bits of the pinned first/last layers (default: the spec's pins)."),
]
cost_model_options = [
    click.option("--cost-model", "cost_model", default=None, metavar="NAME|FILE.py:Class",
                 help="Cost model (default: the spec's, usually northpole)."),
    click.option("--lut", default=None, metavar="CSV", help="Latency table for the lut cost model (layer,bits,latency_s)."),
]


@main.group()
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
@click.option("--json", "as_json", is_flag=True, help="Print the resolved spec as JSON.")
def spec_show(name: str, as_json: bool) -> None:
    """Show a spec (shipped NAME or a path) with every figure and its source."""
    import dataclasses

    from hw import load_spec, shipped_specs

    s = load_spec(name)
    if as_json:
        _dump_json(dataclasses.asdict(s) | {"assumptions": list(s.assumptions)})
        return
    click.echo(f"{s.name}: {s.description}")
    click.echo(f"file: {s.path}  (shipped specs: {', '.join(shipped_specs())})\n")
    rows = [("precisions", ", ".join(map(str, s.precisions)), "", "")]

    def add(path: str, label: str, value):
        if value is None:
            return
        rows.append((label, report.si(value), "assumed" if path in s.assumptions else "", s.sources.get(path, "")))

    add("cores", "cores", s.cores)
    add("clock_hz", "clock (Hz)", s.clock_hz)
    for b, v in s.macs_per_cycle.items():
        add(f"macs_per_cycle_per_core.{b}", f"MACs/cycle/core @{b}b", v)
    for b in s.precisions:
        rows.append((f"peak MAC/s @{b}b", report.si(s.macs_per_second(b)), "derived", "cores x MACs/cycle x clock"))
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
    click.echo(report.table(["figure", "value", "", "source"], rows, right=[False, True, False, False]))


def _metric_header(metric: str) -> str:
    from .costs import unit

    return f"{metric} ({unit(metric)})" if unit(metric) else metric


@main.command()
@click.argument("model")
@click.option("--hw", "hw_name", required=True, metavar="SPEC", help="Accelerator spec: shipped name or YAML path.")
@_with(cost_model_options)
@click.option("--bits", type=BIT_WIDTH, default=8, show_default=True, help="Uniform precision of the free layers.")
@click.option("--plan", "plan_path", default=None, metavar="PLAN.json", help="Cost this plan's bits instead.")
@input_shape_option
@_with(hw_pin_options)
@click.option("--summary", is_flag=True, help="Totals only, no per-layer table.")
@click.option("--json", "as_json", is_flag=True, help="Print the costs as JSON.")
@click.option("--force", is_flag=True, help="Use gains or plan files made for another model (another sha256).")
def cost(model, hw_name, cost_model, lut, bits, plan_path, input_shapes, no_pin, pin_bits, summary, as_json,
         force) -> None:
    """Per-layer and total cost of MODEL on an accelerator, at uniform precision or for a plan."""
    from hw import load_spec

    from .costs import cost_table

    spec_ = load_spec(hw_name)
    graph = _load_graph_for(model, input_shapes, spec_, no_pin, pin_bits)
    table = cost_table(graph, spec_, _cost_model(cost_model, spec_, lut))
    if plan_path:
        from .plan import read_plan

        choice = read_plan(plan_path).bits_for(graph, force)
        for g, b in enumerate(choice):
            if b not in table.groups[g]:
                raise MpqError(f"{plan_path}: the plan gives group {g} ({graph.groups[g].layers[0]}) {b} bits, which "
                               f"{spec_.name} with cost model '{table.model_name}' does not offer (offered: "
                               f"{table.options(g)}); make a plan for this spec with mpq plan --hw {hw_name}")
        what = f"plan {plan_path}"
    else:
        choice = table.uniform(bits)
        if choice is None:
            lacking = next(g for g in graph.groups if bits not in table.groups[g.id])
            raise MpqError(f"{spec_.name} with cost model '{table.model_name}' does not offer {bits} bits for "
                           f"{lacking.layers[0]} (offered: {table.options(lacking.id)}); choose --bits from them")
        what = f"uniform {bits}-bit" + ("" if no_pin else " (pinned layers at their pins)")
    totals = table.total(choice)
    primary = table.metrics[0]
    uniform = {b: (table.total(u) if (u := table.uniform(b)) else None) for b in (8, 4, 2)}
    speedup = {f"{b}bit": (uniform[8][primary] / uniform[b][primary]) if uniform[b] and uniform[8] and uniform[b][primary] else None
               for b in (4, 2)}
    layer_rows = []
    for layer in graph.layers:
        b = choice[layer.group]
        layer_rows.append({"name": layer.name, "group": layer.group, "bits": b, "cost": table.layers[layer.name][b]})
    resident = table.resident_bytes(choice)
    fit = None if resident is None else {"on_chip_weight_bytes": resident, "capacity_bytes": table.capacity,
                                         "fits": resident <= table.capacity}
    if as_json:
        _dump_json({"model": graph.model.path, "hardware": spec_.name, "cost_model": table.model_name,
                    "what": what, "metrics": list(table.metrics), "layers": layer_rows, "totals": totals,
                    "uniform": {str(b): v for b, v in uniform.items()}, "speedup_over_8bit": speedup,
                    "primary_metric": primary, "fit": fit})
        return
    rows = [(r["name"], r["group"], r["bits"], *(f"{r['cost'][m]:.4g}" for m in table.metrics)) for r in layer_rows]
    rows.append(("total", "", "", *(f"{totals[m]:.4g}" for m in table.metrics)))
    if not summary:
        click.echo(report.table(["layer", "group", "bits", *map(_metric_header, table.metrics)], rows,
                                right=[False, True, True] + [True] * len(table.metrics)) + "\n")
    click.echo(f"{graph.model.path} on {spec_.name}, cost model {table.model_name}, {what}")
    for b in (8, 4, 2):
        if uniform[b] is None:
            click.echo(f"  uniform {b}-bit: not offered")
        else:
            click.echo(f"  uniform {b}-bit: " + ", ".join(f"{m}={report.si(uniform[b][m], _unit(m))}" for m in table.metrics))
    parts = [f"{k[:-3]}-bit x{v:.2f}" for k, v in speedup.items() if v]
    click.echo(f"  speedup over uniform 8-bit ({primary}): {', '.join(parts) or 'n/a'}")
    if fit:
        click.echo(f"  weights on chip: {report.si(resident, 'B')} of {report.si(table.capacity, 'B')} "
                   f"({100 * resident / table.capacity:.1f}%): " + ("fits" if fit["fits"] else "does NOT fit"))


def _unit(metric: str) -> str:
    from .costs import unit

    return unit(metric)


@main.command()
@click.argument("model")
@click.option("--hw", "hw_names", multiple=True, required=True, metavar="SPEC", help="Accelerator spec (repeat).")
@click.option("--cost-model", "cost_models", multiple=True, metavar="NAME", help="Cost model (repeat; default: each spec's own).")
@click.option("--lut", default=None, metavar="CSV", help="Latency table for the lut cost model.")
@click.option("--metric", default=None, help="Metric to compare (default: each cost model's first, e.g. latency_s).")
@click.option("--plot", "plot_path", default=None, metavar="OUT.png", help="Write a PNG of per-layer cost shares.")
@click.option("--top", type=COUNT, default=5, show_default=True, help="Layers listed per disagreement.")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(model, hw_names, cost_models, lut, metric, plot_path, top, input_shapes, as_json) -> None:
    """Compare where (spec, cost model) pairs reward lower precision, layer by layer."""
    from costmodels import load_cost_model
    from hw import load_spec

    from . import compare as cmp
    from .graph import load_graph

    _check_paths({"MODEL": model, "--lut": lut, **{f"--hw {h}": h for h in hw_names},
                  **{f"--cost-model {c}": _ref_file(c) for c in cost_models}}, {"--plot": plot_path})
    graph = load_graph(model, _shape_option(input_shapes), pin_first=None, pin_last=None)
    pairs, skipped = [], []
    for hw_name in hw_names:
        spec_ = load_spec(hw_name)
        for name in cost_models or [("lut" if lut else spec_.cost_model)]:
            cm = load_cost_model(name, **({"table": lut} if name == "lut" and lut else {}))
            try:
                pairs.append(cmp.pair_costs(graph, spec_, cm, metric))
            except MpqError as e:
                skipped.append(f"{spec_.name}/{cm.name}: {e}")
    if len(pairs) < 2:
        raise MpqError("compare needs at least two (spec, cost model) pairs that apply; "
                       + ("skipped: " + "; ".join(skipped) if skipped else "give --hw twice or --cost-model twice"))
    data = cmp.compare(graph, pairs, top)
    data["skipped"] = skipped
    if plot_path:
        from .plots import compare_plot

        compare_plot(data, plot_path)
    if as_json:
        _dump_json(data)
        return
    rows = []
    for p in data["pairs"]:
        tot = p["total"]
        rows.append((f"{p['spec']}/{p['cost_model']}", p["metric"], *(report.si(tot[b]) if tot[b] is not None else "n/a" for b in ("8", "4", "2")),
                     *(f"x{p[k]:.2f}" if p[k] else "n/a" for k in ("speedup_8to4", "speedup_4to2"))))
    click.echo(report.table(["pair", "metric", "8-bit", "4-bit", "2-bit", "8->4", "4->2"], rows,
                            right=[False, False, True, True, True, True, True]))
    click.echo("\nrank correlation of the layers' savings (1 = same order):")
    corr_rows = [(c["a"], c["b"], c["step"].replace("to", "->"), c["layers"],
                  "n/a" if c["spearman"] is None else f"{c['spearman']:.3f}",
                  "n/a" if c["kendall"] is None else f"{c['kendall']:.3f}") for c in data["correlations"]]
    click.echo(report.table(["pair A", "pair B", "step", "layers", "Spearman", "Kendall"], corr_rows,
                            right=[False, False, False, True, True, True]))
    for c in data["correlations"]:
        if c["disagree"] and c["step"] == "8to4":
            click.echo(f"\nlargest disagreements, 8->4, {c['a']} vs {c['b']} (rank 1 = largest saving):")
            click.echo(report.table(["layer", "rank A", "rank B", "saving A %", "saving B %"],
                                    [(d["layer"], f"{d['rank_a']:.0f}", f"{d['rank_b']:.0f}", f"{100 * d['saving_a']:.2f}",
                                      f"{100 * d['saving_b']:.2f}") for d in c["disagree"]]))
    for s in skipped:
        click.echo(f"skipped {s}")
    if plot_path:
        click.echo(f"\nwrote {plot_path}")


def _between(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        low, high = (int(x) for x in text.replace(":", ",").split(","))
    except ValueError:
        raise MpqError(f"--between '{text}': expected two bit widths, e.g. 2,4") from None
    from hw import check_bits

    low, high = check_bits(low, f"--between {text}"), check_bits(high, f"--between {text}")
    if low >= high:
        raise MpqError(f"--between '{text}': LOW must be below HIGH (the sweep runs from uniform LOW-bit to "
                       f"uniform HIGH-bit), e.g. {min(low, high)},{max(low, high)}")
    return (low, high)


gains_options = [
    click.option("--gains", "gains_names", multiple=True, metavar="METHOD|FILE",
                 help="Gains: eagl (default), uniform, random, params, qerror, or a gains JSON file."),
    click.option("--step", type=click.Choice(["auto", "lsq", "mse"]), default="auto", show_default=True,
                 help="Quantization step for eagl/qerror: the model's (QDQ scale) else LSQ init; lsq; mse."),
    click.option("--mode", type=click.Choice(["entropy", "difference"]), default="entropy", show_default=True,
                 help="eagl: gain = entropy at b (paper) or entropy minus the lowest precision's."),
    click.option("--weighting", type=click.Choice(["none", "params"]), default="none", show_default=True,
                 help="eagl: weight each layer's entropy by its weight count."),
    click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random baseline."),
]


def _planning_inputs(model, hw_name, cost_model, lut, gains_names) -> dict:
    """The files a planning command reads, by option (for _check_paths)."""
    return {"MODEL": model, "--hw": hw_name, "--cost-model": _ref_file(cost_model), "--lut": lut,
            **{f"--gains {g}": g for g in gains_names}}


def _offered(table) -> list[int]:
    """Every precision some group is offered."""
    return sorted({b for options in table.groups for b in options})


def _gains(name: str, graph, precisions, step, mode, weighting, seed, force: bool = False):
    from .gains import compute

    options = {"eagl": {"step": step, "mode": mode, "weighting": weighting}, "random": {"seed": seed},
               "qerror": {"step": "lsq" if step == "auto" else step}}.get(name, {})
    return compute(name, graph, list(precisions), force=force, **options)


def _setup(model, hw_name, cost_model, lut, input_shapes, no_pin, pin_bits, bits=None):
    from hw import load_spec

    from .costs import cost_table

    spec_ = load_spec(hw_name)
    graph = _load_graph_for(model, input_shapes, spec_, no_pin, pin_bits)
    table = cost_table(graph, spec_, _cost_model(cost_model, spec_, lut))
    if bits is not None:
        allowed = _bits_list(bits)
        unknown = [b for b in allowed if b not in spec_.precisions]
        if unknown:
            raise MpqError(f"--bits {bits}: {unknown[0]} bits is not a precision of {spec_.name} {list(spec_.precisions)}")
        table = table.restricted(allowed, {g.id for g in graph.groups if g.pinned_bits is not None})
    return spec_, graph, table


bits_restriction_option = click.option(
    "--bits", "restrict_bits", default=None, metavar="2,4",
    help="Offer free groups only these precisions (e.g. 2,4 for the paper's two-precision case).")


@main.command()
@click.argument("model")
@click.option("--hw", "hw_name", required=True, metavar="SPEC", help="Accelerator spec: shipped name or YAML path.")
@_with(cost_model_options)
@click.option("--budget", "budget_texts", multiple=True, required=True, metavar="METRIC<=VALUE|METRIC=R",
              help="A budget: latency_s<=1.5e-3, weight_bytes<=3MB, or latency=0.5 (a fraction of the way "
                   "from the cheapest plan to the dearest). Repeat for several.")
@click.option("--between", default=None, metavar="LOW,HIGH",
              help="Fractional budgets run from uniform LOW-bit to uniform HIGH-bit instead (e.g. 2,4).")
@_with(gains_options)
@click.option("-o", "--output", default=None, metavar="PLAN.json", help="Write the plan JSON here.")
@click.option("--csv", "csv_path", default=None, metavar="BITMAP.csv", help="Write the layer,weight,w_bits,a_bits table.")
@click.option("--explain", is_flag=True, help="Show why the most contested groups got their bits.")
@click.option("--method", type=click.Choice(["cpsat", "knapsack"]), default="cpsat", show_default=True,
              help="Solver: CP-SAT (any budgets) or OR-Tools' 0-1 knapsack (two precisions, one budget).")
@click.option("--time-limit", type=POSITIVE, default=60.0, show_default=True, help="Solver time limit (s).")
@click.option("--timings", is_flag=True, help="Record the solver's wall time in the plan (then runs differ).")
@bits_restriction_option
@input_shape_option
@_with(hw_pin_options)
@click.option("--json", "as_json", is_flag=True, help="Print the plan JSON instead of the summary.")
@click.option("--force", is_flag=True, help="Use gains or plan files made for another model (another sha256).")
def plan(model, hw_name, cost_model, lut, budget_texts, between, gains_names, step, mode, weighting, seed, output,
         csv_path, explain, method, time_limit, timings, restrict_bits, input_shapes, no_pin, pin_bits, as_json,
         force) -> None:
    """Choose each layer's precision under the budgets, maximising the total gain."""
    from . import plan as plans
    from .atomic import together
    from .budget import add_chip_limit, parse_budget, resolve
    from .solve import explain as why
    from .solve import solve

    _check_paths(_planning_inputs(model, hw_name, cost_model, lut, gains_names), {"-o": output, "--csv": csv_path})
    spec_, graph, table = _setup(model, hw_name, cost_model, lut, input_shapes, no_pin, pin_bits, restrict_bits)
    if len(gains_names) > 1:
        raise MpqError("mpq plan takes one --gains; compare several with mpq frontier")
    budgets = [parse_budget(t, table.metrics) for t in budget_texts]
    limits = resolve(budgets, table, _between(between))
    table, budgets, limits = add_chip_limit(table, budgets, limits)
    gains = _gains(gains_names[0] if gains_names else "eagl", graph, _offered(table), step, mode, weighting, seed, force)
    solution = solve(gains.by_group, table.groups, limits, method=method, time_limit_s=time_limit)
    doc = plans.build_plan(graph, spec_, table, gains, budgets, limits, solution, timings)
    plans.validate(doc)
    with together(output, csv_path) as (plan_tmp, csv_tmp):
        if output:
            plans.write_plan(doc, plan_tmp, validated=True)  # validated just above
        if csv_path:
            plans.write_bitmap(doc, csv_tmp)
    if as_json:
        click.echo(plans.plan_json(doc), nl=False)
        return
    _print_plan_summary(doc, graph, table, solution)
    if explain:
        rows = why(gains.by_group, table.groups, limits, solution.bits)
        metric = sorted(limits)[0]
        click.echo(f"\nmost contested groups (price of {metric}: {rows[0]['price'][metric]:.4g} gain per unit)" if rows else "")
        click.echo(report.table(
            ["group", "first layer", "bits", "runner-up", "gain", "runner-up gain", f"extra {metric}", "gain per unit", "net margin"],
            [(r["group"], graph.groups[r["group"]].layers[0], r["bits"], r["runner_up"], f"{r['gain']:.4g}",
              f"{r['gain_runner_up']:.4g}", f"{r['delta_cost'][metric]:.4g}",
              "-" if r["gain_per_cost"][metric] is None else f"{r['gain_per_cost'][metric]:.4g}", f"{r['margin']:.3g}")
             for r in rows]))
        click.echo("a group keeps the option with the larger net value (gain - price x cost); a small margin "
                   "means a small change of budget or gain flips it")
    for path in (output, csv_path):
        if path:
            click.echo(f"wrote {path}")


def _print_plan_summary(doc, graph, table, solution) -> None:
    rows = [(l["name"], l["group"], l["w_bits"], "pin" if graph.groups[l["group"]].pinned_bits else "") for l in doc["layers"]]
    click.echo(report.table(["layer", "group", "bits", ""], rows, right=[False, True, True, False]))
    counts: dict[int, int] = {}
    for g in doc["groups"]:
        counts[g["bits"]] = counts.get(g["bits"], 0) + 1
    s = doc["solver"]
    click.echo(f"\n{len(doc['layers'])} layers in {len(doc['groups'])} groups: "
               + ", ".join(f"{counts[b]} at {b}-bit" for b in sorted(counts, reverse=True))
               + f"; gains {doc['gains']['method']} {json.dumps(doc['gains']['params'], sort_keys=True)}")
    click.echo(f"solver {s['status']} ({s['method']}): objective {s['objective']:.6g}, bound {s['bound']:.6g}, "
               f"gap {s['relative_gap']:.2g}, {solution.wall_time_s:.3f} s, {s['groups_fixed_by_presolve']} groups "
               f"fixed by presolve; rounding error <= {s['gain_error_bound']:.2g} gain")
    for b in doc["budgets"]:
        used = doc["totals"][b["metric"]]
        share = f" ({100 * used / b['limit']:.1f}% of budget)" if b["limit"] else ""
        click.echo(f"budget {b['given']}: {b['metric']} <= {report.si(b['limit'], _unit(b['metric']))}, "
                   f"plan {report.si(used, _unit(b['metric']))}{share}")
    click.echo("totals: " + ", ".join(f"{m}={report.si(v, _unit(m))}" for m, v in doc["totals"].items()))
    primary = table.metrics[0]
    parts = []
    for b in (8, 4):
        ref = doc["reference"].get(f"uniform_{b}bit")
        if ref and doc["totals"][primary]:
            parts.append(f"x{ref[primary] / doc['totals'][primary]:.2f} vs uniform {b}-bit")
    click.echo(f"speedup ({primary}): " + ", ".join(parts))


@main.command()
@click.argument("model")
@click.option("--hw", "hw_name", required=True, metavar="SPEC", help="Accelerator spec: shipped name or YAML path.")
@_with(cost_model_options)
@click.option("--metric", default=None, help="Budgeted metric to sweep (default: the cost model's first, e.g. latency_s).")
@click.option("--between", default=None, metavar="LOW,HIGH", help="Sweep from uniform LOW-bit to uniform HIGH-bit "
              "(default: from the cheapest plan to the dearest).")
@click.option("--points", type=_Number(int, 2), default=11, show_default=True, help="Budgets in the sweep.")
@_with(gains_options)
@click.option("--plot", "plot_path", default=None, metavar="OUT.png", help="Write the frontier plot.")
@click.option("--csv", "csv_path", default=None, metavar="OUT.csv", help="Write the points as CSV "
              "(finished points are checkpointed beside it, so a rerun resumes).")
@click.option("--time-limit", type=POSITIVE, default=60.0, show_default=True, help="Solver time limit per point (s).")
@bits_restriction_option
@input_shape_option
@_with(hw_pin_options)
@click.option("--json", "as_json", is_flag=True, help="Print the points as JSON.")
@click.option("--inputs", "inputs_folder", default=None, metavar="FOLDER",
              help="Score every plan post-training on these input batches (.npy): top-1 agreement and output "
                   "cosine of its QDQ export to the float model, beside the gain (table, JSON, CSV, plot).")
@click.option("--force", is_flag=True, help="Use gains or plan files made for another model (another sha256).")
def frontier(model, hw_name, cost_model, lut, metric, between, points, gains_names, step, mode, weighting, seed,
             plot_path, csv_path, time_limit, restrict_bits, input_shapes, no_pin, pin_bits, as_json,
             inputs_folder, force) -> None:
    """Optimal plans over a sweep of budgets, one curve per gain method (with --inputs, each plan's
    post-training fidelity to the float model, measured)."""
    from .atomic import together
    from .budget import parse_budget
    from .checkpoint import Checkpoint
    from .frontier import sweep

    _check_paths(_planning_inputs(model, hw_name, cost_model, lut, gains_names),
                 {"--csv": csv_path, "--plot": plot_path, "checkpoint": csv_path and csv_path + ".partial.jsonl"})
    spec_, graph, table = _setup(model, hw_name, cost_model, lut, input_shapes, no_pin, pin_bits, restrict_bits)
    metric = parse_budget(f"{metric}=0", table.metrics).metric if metric else table.metrics[0]
    methods = list(dict.fromkeys(gains_names or ("eagl",)))
    gains_list = [_gains(n, graph, _offered(table), step, mode, weighting, seed, force) for n in methods]
    fractions = [round(k / (points - 1), 9) for k in range(points)]
    checkpoint = Checkpoint(csv_path + ".partial.jsonl") if csv_path else None
    with _progress(len(gains_list) * len(fractions), "frontier") as bar:
        result = sweep(table, gains_list, metric, fractions, between=_between(between), checkpoint=checkpoint,
                       key_prefix=_frontier_key(graph, spec_, table, time_limit),
                       progress=lambda done, total: bar.update(1), time_limit_s=time_limit)
    if checkpoint:
        _note_unused(checkpoint)
    uniform = {}
    for b in (2, 4, 8):
        choice = table.uniform(b)
        if choice is not None:
            uniform[b] = {"totals": table.total(choice),
                          "gain": {g.method: sum(g.by_group[k][bb] for k, bb in enumerate(choice)) for g in gains_list}}
    rows = [p.to_json() for p in result]
    if inputs_folder:  # post-training fidelity of every optimal plan, measured in onnxruntime
        from .fidelity import score_plans
        from .workflow import folder_feeds

        plans = [{l.name: p["bits"][l.group] for l in graph.layers} for p in rows]
        for p, score in zip(rows, score_plans(graph, plans, folder_feeds(inputs_folder))):
            p["fidelity"] = score
    with together(csv_path, plot_path) as (csv_tmp, plot_tmp):
        if csv_path:
            _write_frontier_csv(rows, metric, uniform, csv_tmp)
        if plot_path:
            from .plots import frontier_plot

            frontier_plot(rows, uniform, metric, plot_tmp,
                          title=f"{_file_name(graph.model.path)} on {spec_.name}: optimal plans over {metric} budgets")
    if checkpoint:
        checkpoint.remove()
    if as_json:
        _dump_json({"metric": metric, "points": rows, "uniform": {str(b): u for b, u in uniform.items()}})
        return
    ref = uniform.get(8, {}).get("totals", {}).get(metric)
    table_rows = []
    for p in rows:
        gap = "-" if p["greedy_objective"] is None or not p["objective"] else f"{100 * (1 - p['greedy_objective'] / p['objective']):.2f}%"
        table_rows.append((p["method"], f"{p['fraction']:.2f}", report.si(p["limit"], _unit(metric)),
                           f"{p['totals'][metric] / ref:.3f}" if ref else "-", f"{p['objective']:.5g}", p["status"], gap)
                          + ((f"{100 * p['fidelity']['top1_agreement']:.1f}%", f"{p['fidelity']['cosine']:.4f}")
                             if inputs_folder else ()))
    fidelity_headers = ["top-1 vs float", "cosine vs float"] if inputs_folder else []
    click.echo(report.table(["gains", "r", f"budget {metric}", "vs 8-bit", "total gain", "status", "greedy short by"]
                            + fidelity_headers, table_rows,
                            right=[False, True, True, True, True, False, True] + [True] * len(fidelity_headers)))
    if inputs_folder:
        click.echo("top-1 / cosine vs float: each plan exported post-training (weights per channel, activations "
                   "calibrated on --inputs) against the float model in onnxruntime")
    for path in (csv_path, plot_path):
        if path:
            click.echo(f"wrote {path}")


def _frontier_key(graph, spec, table, time_limit: float) -> str:
    """What a frontier point depends on besides its gains, metric and fraction (which the sweep
    adds): the model, the spec, and every cost of every option (so input shapes, pins, --bits,
    the cost model and its files such as --lut all count), and the solver's time limit."""
    from .gains.datadriven import config_key

    return config_key(model=graph.model.sha256, spec=spec.sha256, cost_model=table.model_name, metrics=table.metrics,
                      costs=[{str(b): c for b, c in options.items()} for options in table.groups],
                      time_limit=time_limit)


def _note_unused(checkpoint) -> None:
    """Say on stderr when a checkpoint held results that this run did not use (other inputs)."""
    if checkpoint.unused():
        click.echo(f"mpq: note: ignored {checkpoint.unused()} result(s) in {checkpoint.path} made for other "
                   "inputs", err=True)


def _file_name(path) -> str:
    from pathlib import Path

    return Path(path).name if path else "model"


def _write_frontier_csv(rows, metric, uniform, path) -> None:
    import csv
    import io

    from .atomic import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    metrics = list(rows[0]["totals"]) if rows else [metric]
    measured = ["top1_agreement", "cosine"] if rows and all("fidelity" in p for p in rows) else []
    writer.writerow(["method", "fraction", "limit", "objective", "bound", "status", "greedy_objective", *metrics, "bits",
                     *measured])
    for p in rows:
        writer.writerow([p["method"], p["fraction"], repr(p["limit"]), repr(p["objective"]), repr(p["bound"]), p["status"],
                         "" if p["greedy_objective"] is None else repr(p["greedy_objective"]),
                         *(repr(p["totals"][m]) for m in metrics), " ".join(map(str, p["bits"])),
                         *(repr(p["fidelity"][k]) for k in measured)])
    write_text(path, buffer.getvalue())


class _progress:
    """A tqdm bar on a terminal (stderr), nothing otherwise."""

    def __init__(self, total: int, desc: str, unit: str = "it"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty(), leave=False)

    def __enter__(self):
        return self.bar

    def __exit__(self, *exc):
        self.bar.close()


@main.group()
def gains() -> None:
    """Estimate each group's gain of higher precision and write a gains file."""


def _data_free_gains_command(method: str, help_text: str):
    @gains.command(method, help=help_text)
    @click.argument("model")
    @click.option("--hw", "hw_name", default=None, metavar="SPEC", help="Take precisions and pins from this spec.")
    @click.option("--bits", default="2,4,8", show_default=True, help="Precisions when no --hw is given.")
    @_with(gains_options[1:])
    @click.option("-o", "--output", required=True, metavar="GAINS.json", help="Write the gains here.")
    @input_shape_option
    @_with(hw_pin_options)
    def command(model, hw_name, bits, step, mode, weighting, seed, output, input_shapes, no_pin, pin_bits) -> None:
        _check_paths({"MODEL": model, "--hw": hw_name}, {"-o": output})
        graph, precisions = _graph_and_precisions(model, hw_name, bits, input_shapes, no_pin, pin_bits)
        result = _gains(method, graph, precisions, step, mode, weighting, seed)
        result.write(graph, output)
        click.echo(f"wrote {output}: {method} gains for {len(graph.free_groups)} free groups at bits {precisions}")

    return command


def _graph_and_precisions(model, hw_name, bits, input_shapes, no_pin, pin_bits):
    from .graph import load_graph

    if hw_name:
        from hw import load_spec

        spec_ = load_spec(hw_name)
        return _load_graph_for(model, input_shapes, spec_, no_pin, pin_bits), list(spec_.precisions)
    precisions = _bits_list(bits)
    return load_graph(model, _shape_option(input_shapes), **_pins(no_pin, pin_bits or 8)), precisions


for _method, _help in [
    ("uniform", "Baseline: every group gains the same per step up."),
    ("random", "Baseline: seeded random gains."),
    ("params", "Baseline: gain = weight count per step up."),
    ("qerror", "Baseline: drop in weight quantization error ||W - Q(W)||^2."),
]:
    _data_free_gains_command(_method, _help)


# ------------------------------------------------------------------------------ the data side

task_option = click.option("--task", "task_ref", required=True, metavar="TASK",
                           help="Built-in mnist or minilm, package.module:object or path/file.py:object.")


def _task(ref: str):
    from .tasks import load_task

    return load_task(ref)


def _threads() -> None:
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))


@main.command()
@task_option
@click.option("--bits", type=BIT_WIDTH, default=None, help="Train quantization-aware (LSQ) at these bits; pinned layers at --pin-bits.")
@click.option("--init", "init_path", default=None, metavar="CKPT", help="Start from this checkpoint (default: fresh weights).")
@click.option("--epochs", type=POSITIVE, default=None, help="Epochs (default: the task's).")
@click.option("--lr", type=LEARNING_RATE, default=None, help="Learning rate (default: the task's).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--pin-bits", type=BIT_WIDTH, default=8, show_default=True, help="Bits of the pinned first and last layers.")
@click.option("-o", "--output", required=True, metavar="CKPT", help="Write the checkpoint here (and OUTPUT with .onnx: "
              "the float ONNX export to plan on). Finished epochs are kept in OUTPUT.partial: a rerun resumes.")
def train(task_ref, bits, init_path, epochs, lr, seed, pin_bits, output) -> None:
    """Train a task's model: full precision, or LSQ quantization-aware at uniform --bits."""
    from pathlib import Path

    from . import workflow
    from .atomic import together
    from .quant.checkpoint import load_checkpoint, save_checkpoint
    from .userfiles import check_output

    check_output("-o", output)
    onnx_path = Path(output).with_suffix(".onnx")
    if output.endswith(".onnx"):
        raise MpqError(f"-o {output}: the checkpoint and its ONNX export ({onnx_path}) would be the same file; "
                       f"name the checkpoint with another suffix, e.g. -o {Path(output).with_suffix('.pt')}")
    _check_paths({"--task": _ref_file(task_ref), "--init": init_path},
                 {"-o": output, "ONNX export": str(onnx_path), "resume file": output + ".partial"})
    _threads()
    task = _task(task_ref)
    model = load_checkpoint(init_path, task) if init_path else task.model()
    with _progress(0, f"train {task.name}" + (f" {bits}-bit" if bits else " full precision"), unit="step") as bar:
        def tick(step, total):
            bar.total = total
            bar.update(1)
        model = workflow.train(task, model, bits=bits, epochs=epochs, lr=lr, seed=seed, pins=(pin_bits, pin_bits),
                               progress=tick, resume=output + ".partial")
    _check_trained(model, lr)
    test = task.evaluate(model)
    with together(output, onnx_path) as (checkpoint_tmp, onnx_tmp):
        save_checkpoint(checkpoint_tmp, model, task, test_score=test, bits=bits, init=init_path, seed=seed)
        workflow.save_onnx_for_planning(task, model, onnx_tmp)
    click.echo(f"{task.name}: test score {test:.2f} ({'W%dA%d' % (bits, bits) if bits else 'full precision'}"
               f"{', pinned layers %d-bit' % pin_bits if bits else ''}); wrote {output} and {onnx_path}")


@main.command()
@task_option
@click.option("--checkpoint", "checkpoint_path", required=True, metavar="CKPT", help="The model to evaluate.")
@click.option("--plan", "plan_path", default=None, metavar="PLAN.json", help="Apply this plan's bits first (no fine-tuning).")
@click.option("--json", "as_json", is_flag=True)
def evaluate(task_ref, checkpoint_path, plan_path, as_json) -> None:
    """Score a checkpoint on the task's test split (and its validation loss)."""
    from . import workflow
    from .plan import read_plan
    from .quant.checkpoint import load_checkpoint
    from .quant.lsq import bits_of
    from .quant.train import score

    _threads()
    task = _task(task_ref)
    model = load_checkpoint(checkpoint_path, task)
    if plan_path:
        model = workflow.apply_plan(task, model, read_plan(plan_path))
    result = {"test_score": task.evaluate(model), "validation_loss": -score(model, task, task.eval_data(), "loss"),
              "bits": bits_of(model)}
    if as_json:
        _dump_json(result)
        return
    counts = {}
    for b in result["bits"].values():
        counts[b] = counts.get(b, 0) + 1
    mix = ", ".join(f"{n} layers at {b}-bit" for b, n in sorted(counts.items(), reverse=True)) or "full precision"
    click.echo(f"{task.name}: test score {result['test_score']:.2f}, validation loss {result['validation_loss']:.4f} ({mix})")


@main.command()
@click.argument("plan_path", metavar="PLAN")
@task_option
@click.option("--checkpoint", "checkpoint_path", required=True, metavar="CKPT",
              help="Start from this checkpoint (e.g. the LSQ 4-bit network).")
@click.option("--epochs", type=POSITIVE, default=None, help="Fine-tuning epochs (default: the task's).")
@click.option("--lr", type=LEARNING_RATE, default=None, help="Learning rate (default: the task's fine-tuning rate).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--distill", type=_Number(float, 0, 1), default=0.0, show_default=True,
              help="Weight of distillation from --teacher (default teacher: the starting checkpoint).")
@click.option("--teacher", "teacher_path", default=None, metavar="CKPT", help="Teacher for --distill.")
@click.option("-o", "--output", required=True, metavar="CKPT", help="Write the fine-tuned checkpoint here.")
def finetune(plan_path, task_ref, checkpoint_path, epochs, lr, seed, distill, teacher_path, output) -> None:
    """Apply a plan's bits to the task's model and fine-tune it with LSQ; report the test score."""
    from . import workflow
    from .plan import read_plan
    from .quant.checkpoint import load_checkpoint, save_checkpoint
    from .quant.train import fit

    _check_paths({"PLAN": plan_path, "--task": _ref_file(task_ref), "--checkpoint": checkpoint_path,
                  "--teacher": teacher_path}, {"-o": output, "resume file": output + ".partial"})
    _threads()
    task = _task(task_ref)
    plan = read_plan(plan_path)
    base = load_checkpoint(checkpoint_path, task)
    model = workflow.apply_plan(task, base, plan)
    teacher = load_checkpoint(teacher_path, task) if teacher_path else base
    with _progress(0, f"finetune {task.name}", unit="step") as bar:
        def tick(step, total):
            bar.total = total
            bar.update(1)
        fit(model, task, epochs=epochs if epochs is not None else getattr(task, "finetune_epochs", 5),
            lr=lr if lr is not None else getattr(task, "finetune_lr", 0.01), seed=seed,
            teacher=teacher if distill > 0 else None, distill=distill, progress=tick, resume=output + ".partial")
    _check_trained(model, lr)
    test = task.evaluate(model)
    save_checkpoint(output, model, task, test_score=test, plan=plan_path, plan_sha256=_sha(plan_path),
                    init=checkpoint_path, seed=seed)
    click.echo(f"{task.name}: test score {test:.2f} after fine-tuning {plan_path}; wrote {output}")


def _check_trained(model, lr) -> None:
    """MpqError when training left a non-finite weight (it diverged): no NaN checkpoint is written."""
    import torch

    bad = next((name for name, t in model.state_dict().items()
                if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise MpqError(f"training diverged: {bad} is not finite (learning rate {lr if lr is not None else 'default'}); "
                       "try a lower --lr")


def _check_plan_of_checkpoint(checkpoint_path, plan_path, force: bool) -> None:
    """MpqError when the checkpoint was fine-tuned for another plan than ``plan_path`` (unless ``force``)."""
    from .quant.checkpoint import read_checkpoint

    meta = read_checkpoint(checkpoint_path).get("meta") or {}
    recorded = meta.get("plan_sha256") if isinstance(meta, dict) else None
    if force or not recorded or recorded == _sha(plan_path):
        return
    raise MpqError(f"{checkpoint_path} was fine-tuned for another plan ({meta.get('plan')}, sha256 {str(recorded)[:12]}...) "
                   f"than {plan_path}; use that plan, fine-tune for this one, or pass --force")


def _sha(path) -> str:
    from .quant.checkpoint import file_sha256

    return file_sha256(path)


@main.command()
@click.argument("plan_path", metavar="PLAN")
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["qdq", "ort-overrides", "aimet"]), default="qdq", show_default=True,
              help="qdq: standard QDQ ONNX; ort-overrides: onnxruntime TensorQuantOverrides JSON; aimet: AIMET "
                   "encodings 1.0.0 JSON (and the float model they refer to, batch norms folded, as OUT.onnx).")
@click.option("--checkpoint", "checkpoint_path", default=None, metavar="CKPT",
              help="Take weights and learned steps from this checkpoint (needs --task).")
@click.option("--task", "task_ref", default=None, metavar="TASK", help="The checkpoint's task; also calibrates "
              "activation steps that no checkpoint gives.")
@click.option("--inputs", "inputs_folder", default=None, metavar="FOLDER",
              help="Input batches to calibrate on and measure fidelity on, instead of the task's data "
                   "(.npy per batch, .npz for several inputs).")
@click.option("-o", "--output", required=True, metavar="OUT", help="Write the QDQ model (or the JSON) here.")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor (default: one per output channel).")
@click.option("--max-opset", type=click.IntRange(13, 25), default=25, show_default=True,
              help="qdq: highest ONNX opset to write: 25 has INT2 Q/DQ, 21 INT4 and INT16 (2-bit levels then sit in INT4).")
@click.option("--calibrate", "calibrated_path", default=None, metavar="OUT.onnx",
              help="ort-overrides: also run quantize_static with the overrides on the task's data (or --inputs) "
                   "and write the quantized model here.")
@click.option("--force", is_flag=True, help="Use gains or plan files made for another model (another sha256).")
def export(plan_path, model, fmt, checkpoint_path, task_ref, inputs_folder, output, per_tensor, max_opset,
           calibrated_path, force) -> None:
    """Hand PLAN's bits for MODEL to the tools that run it. With --task (its validation data) or
    --inputs, every export reports its fidelity: top-1 agreement and output cosine to the float
    model, and to the torch network with --checkpoint. --format qdq writes a standard QDQ
    ONNX whose Q/DQ element types (INT2, INT4, INT8, INT16) carry each layer's bits (runs in
    onnxruntime, see planner.qdq.session); --format ort-overrides writes the TensorQuantOverrides
    that onnxruntime's quantize_static realizes; --format aimet writes AIMET encodings (1.0.0)
    and, beside them (OUT with .onnx), the float model they refer to."""
    import onnx

    from . import workflow
    from .atomic import atomic_path, together, write_text
    from .plan import read_plan
    from .qdq import DISABLED_OPTIMIZERS
    from .quant.checkpoint import load_checkpoint

    if checkpoint_path and not task_ref:
        raise MpqError("--checkpoint needs --task (the checkpoint's task, to rebuild its model)")
    if fmt != "ort-overrides" and calibrated_path:
        raise MpqError("--calibrate goes with --format ort-overrides (the qdq format calibrates on --task or --inputs)")
    if fmt == "ort-overrides" and checkpoint_path:
        raise MpqError("--format ort-overrides carries types only (onnxruntime calibrates the scales); "
                       "export a checkpoint's learned steps with --format qdq")
    from pathlib import Path

    float_path = Path(output).with_suffix(".onnx") if fmt == "aimet" else None
    if float_path is not None and float_path == Path(output):
        raise MpqError(f"-o {output}: name the encodings file .json (the float model goes to {float_path})")
    _check_paths({"PLAN": plan_path, "MODEL": model, "--checkpoint": checkpoint_path, "--task": _ref_file(task_ref)},
                 {"-o": output, "--calibrate": calibrated_path, "the float model": float_path and str(float_path)})
    if checkpoint_path:
        _check_plan_of_checkpoint(checkpoint_path, plan_path, force)
    plan = read_plan(plan_path)
    task = _task(task_ref) if task_ref else None
    feeds = workflow.folder_feeds(inputs_folder) if inputs_folder else None
    torch_model = None
    if fmt == "ort-overrides":
        from .ortoverrides import overrides_json

        if calibrated_path and feeds is None and task is not None:
            feeds = list(workflow.task_feeds(task))
        overrides, notes, proto = workflow.export_ort_overrides(plan, model, feeds=feeds, quantized_path=calibrated_path,
                                                                per_channel=not per_tensor, force=force)
        write_text(output, overrides_json(overrides))
        click.echo(f"wrote {output}: TensorQuantOverrides for {len(overrides)} tensors (load with "
                   "planner.ortoverrides.read_overrides; quantize_static with quant_format=QDQ, "
                   f"per_channel={not per_tensor})")
        if proto is not None:
            click.echo(f"wrote {calibrated_path}: quantize_static with the overrides")
    else:
        torch_model = load_checkpoint(checkpoint_path, task) if checkpoint_path else None
        result = workflow.export_qdq(plan, model, task=task, model=torch_model, feeds=feeds,
                                     per_channel=not per_tensor, max_opset=max_opset, force=force)
        proto, notes = result.model, result.notes
    if fmt == "aimet":
        from .aimet import encodings, encodings_json

        doc = encodings(result)
        with together(str(float_path), output) as (float_tmp, output_tmp):
            onnx.save(result.float_model, float_tmp)
            write_text(output_tmp, encodings_json(doc))
        click.echo(f"wrote {output}: AIMET encodings {doc['version']}, {len(doc['param_encodings'])} parameter and "
                   f"{len(doc['activation_encodings'])} activation encodings, for the float model {float_path}")
        proto = None
    elif fmt == "qdq":
        onnx.checker.check_model(proto)
        with atomic_path(output) as tmp:
            onnx.save(proto, tmp)
        q = sum(n.op_type == "QuantizeLinear" for n in proto.graph.node)
        dq = sum(n.op_type == "DequantizeLinear" for n in proto.graph.node)
        channels = sum(n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
                       for n in proto.graph.node)
        click.echo(f"wrote {output} (opset {result.opset}): {dq - q} weight quantizers ({channels} with a scale per "
                   f"output channel) and {q} activation quantizers")
    for note in notes:
        click.echo(f"  note: {note}")
    checked = result.model if fmt == "aimet" else proto
    if checked is not None and (task is not None or feeds):
        from .fidelity import describe, fidelity

        held_out = feeds or list(workflow.task_feeds(task, split="eval"))
        for line in describe(fidelity(checked, model, held_out, torch_model if fmt != "ort-overrides" else None)):
            click.echo(f"  {line}")
    if proto is not None:
        click.echo(f"  onnxruntime 1.32 CPU: open with disabled_optimizers={DISABLED_OPTIMIZERS} "
                   "(planner.qdq.session does)")


def _task_context(task_ref, checkpoint_path, no_pin, pin_bits):
    """Task, model at the checkpoint, its graph and layer->module map."""
    from . import workflow
    from .quant.checkpoint import load_checkpoint

    task = _task(task_ref)
    model = load_checkpoint(checkpoint_path, task)
    pins = (None, None) if no_pin else (pin_bits or 8, pin_bits or 8)
    graph, mapping = workflow.task_graph(task, model, pin_first=pins[0], pin_last=pins[1])
    return task, model, graph, mapping


data_gains_options = [
    task_option,
    click.option("--checkpoint", "checkpoint_path", required=True, metavar="CKPT",
                 help="The network trained at the high precision (e.g. mpq train --bits 4)."),
    click.option("--bits", default="2,4", show_default=True, help="Precisions to estimate gains for."),
    click.option("-o", "--output", required=True, metavar="GAINS.json", help="Write the gains here."),
    click.option("--no-pin", is_flag=True, help="Do not pin the first and last layers."),
    click.option("--pin-bits", type=BIT_WIDTH, default=None, help="Bits of pinned layers (default 8)."),
]


executor_options = [
    click.option("--workers", type=_Number(int, 0), default=1, show_default=True, help="Parallel workers."),
    click.option("--executor", type=click.Choice(["local", "processes", "ray"]), default=None,
                 help="Where jobs run (default: processes with --workers > 1, else local)."),
    click.option("--ray-address", default=None, help="Ray cluster address (default: start a local instance)."),
    click.option("--resume-file", default=None, metavar="JSONL",
                 help="Checkpoint of finished jobs (default: OUTPUT.partial.jsonl, removed when done)."),
]


def _check_data_gains_paths(task_ref, checkpoint_path, output, resume_path=None, executor=None,
                            ray_address=None) -> None:
    """Before any work: paths (see _check_paths) and, for the ray executor, the cluster's address."""
    _check_paths({"--task": _ref_file(task_ref), "--checkpoint": checkpoint_path},
                 {"-o": output, "--resume-file": resume_path})
    if executor == "ray" and ray_address:
        from .ray_executor import check_address

        check_address(ray_address)


def _bits_list(text: str, option: str = "--bits") -> list[int]:
    """Sorted distinct bit widths of a comma-separated option; each one of hw.SUPPORTED_BITS."""
    from hw import check_bits

    try:
        values = sorted({int(b) for b in text.split(",")})
    except ValueError:
        raise MpqError(f"{option} '{text}': expected comma-separated bit widths, e.g. 2,4") from None
    return [check_bits(b, f"{option} {text}") for b in values]


@gains.command("alps")
@_with(data_gains_options)
@click.option("--epochs", type=POSITIVE, default=1.0, show_default=True, help="Fine-tuning epochs per group (paper: 1).")
@click.option("--lr", type=LEARNING_RATE, default=None, help="Fine-tuning learning rate (default: the task's).")
@click.option("--metric", type=click.Choice(["accuracy", "loss", "kl"]), default="loss", show_default=True,
              help="Validation score: accuracy, minus the loss, or minus the KL divergence to the high-precision network.")
@click.option("--seeds", type=COUNT, default=3, show_default=True,
              help="Seeds of the base and of every lowered group (gain: mean paired difference; base spread: the noise floor).")
@_with(executor_options)
def gains_alps(task_ref, checkpoint_path, bits, output, no_pin, pin_bits, epochs, lr, metric, seeds, workers, executor,
               ray_address, resume_file) -> None:
    """ALPS: drop each group one step, fine-tune, measure the score lost (resumable)."""
    import time

    from .checkpoint import Checkpoint
    from .gains.alps import alps, job_count

    precisions = _bits_list(bits)
    _check_data_gains_paths(task_ref, checkpoint_path, output, resume_file or output + ".partial.jsonl", executor,
                            ray_address)
    resume = Checkpoint(resume_file or output + ".partial.jsonl")
    _threads()
    task, model, graph, mapping = _task_context(task_ref, checkpoint_path, no_pin, pin_bits)
    executor = executor or ("processes" if workers > 1 else "local")
    start = time.perf_counter()
    with _progress(job_count(graph, seeds), f"alps {task.name}", unit="job") as bar:
        result = alps(task, checkpoint_path, graph, mapping, precisions, epochs=epochs, lr=lr, metric=metric,
                      seeds=seeds, executor=executor, workers=workers, ray_address=ray_address, resume=resume,
                      progress=lambda key, value: bar.update(1))
    _note_unused(resume)
    result.write(graph, output)
    if not resume_file:
        resume.remove()
    wall = time.perf_counter() - start
    extra = result.extra
    noise = extra["noise_floor"]
    click.echo(f"ALPS ({metric}, {epochs:g} epoch, {executor} x{workers}): base score {extra['base_score']:.5f} over "
               f"{seeds} seeds, noise floor (std) {noise:.5f}" if noise is not None else "")
    rows = []
    for group in graph.free_groups:
        values = result.by_group[group.id]
        gain = max(values.values())
        rows.append((group.id, group.layers[0], " -> ".join(map(str, sorted(values, reverse=True))), f"{gain:.5f}",
                     "yes" if noise is not None and abs(gain) > noise else "no"))
    click.echo(report.table(["group", "first layer", "step", "gain", "above noise"], rows))
    click.echo(f"wrote {output} in {wall:.1f} s")


@gains.command("hessian")
@_with(data_gains_options)
@click.option("--samples", type=COUNT, default=16, show_default=True, help="Rademacher vectors per batch.")
@click.option("--batches", type=COUNT, default=2, show_default=True, help="Training batches.")
@click.option("--seed", type=SEED, default=0, show_default=True)
def gains_hessian(task_ref, checkpoint_path, bits, output, no_pin, pin_bits, samples, batches, seed) -> None:
    """HAWQ: Hutchinson Hessian trace x weight quantization error, per group."""
    from .gains.hessian import hessian_gains
    from .quant.lsq import learned_steps
    from .torchmap import float_copy

    precisions = _bits_list(bits)
    _check_data_gains_paths(task_ref, checkpoint_path, output)
    _threads()
    task, model, graph, mapping = _task_context(task_ref, checkpoint_path, no_pin, pin_bits)
    result = hessian_gains(task, float_copy(model), graph, mapping, precisions, learned=learned_steps(model),
                           samples=samples, batches=batches, seed=seed)
    result.write(graph, output)
    click.echo(f"wrote {output}: Hessian-trace gains for {len(graph.free_groups)} free groups")


@gains.command("sensitivity")
@_with(data_gains_options)
@click.option("--metric", type=click.Choice(["accuracy", "loss", "kl"]), default="loss", show_default=True)
@_with(executor_options)
def gains_sensitivity(task_ref, checkpoint_path, bits, output, no_pin, pin_bits, metric, workers, executor, ray_address,
                      resume_file) -> None:
    """AIMET-style: lower each group alone without fine-tuning and score it (resumable)."""
    from .checkpoint import Checkpoint
    from .gains.sensitivity import sensitivity_gains

    precisions = _bits_list(bits)
    _check_data_gains_paths(task_ref, checkpoint_path, output, resume_file or output + ".partial.jsonl", executor,
                            ray_address)
    resume = Checkpoint(resume_file or output + ".partial.jsonl")
    _threads()
    task, model, graph, mapping = _task_context(task_ref, checkpoint_path, no_pin, pin_bits)
    executor = executor or ("processes" if workers > 1 else "local")
    with _progress(0, f"sensitivity {task.name}", unit="job") as bar:
        result = sensitivity_gains(task, checkpoint_path, graph, mapping, precisions, metric=metric,
                                   executor=executor, workers=workers, ray_address=ray_address, resume=resume,
                                   progress=lambda key, value: bar.update(1))
    _note_unused(resume)
    result.write(graph, output)
    if not resume_file:
        resume.remove()
    click.echo(f"wrote {output}: sensitivity gains ({metric}) for {len(graph.free_groups)} free groups")


@gains.command("eagl")
@click.argument("model", required=False)
@click.option("--task", "task_ref", default=None, metavar="TASK", help="With --checkpoint: EAGL on the checkpoint's "
              "weights at its learned steps.")
@click.option("--checkpoint", "checkpoint_path", default=None, metavar="CKPT")
@click.option("--hw", "hw_name", default=None, metavar="SPEC", help="Take precisions and pins from this spec.")
@click.option("--bits", default="2,4,8", show_default=True, help="Precisions when no --hw is given.")
@_with(gains_options[1:4])
@click.option("-o", "--output", required=True, metavar="GAINS.json", help="Write the gains here.")
@input_shape_option
@_with(hw_pin_options)
def gains_eagl(model, task_ref, checkpoint_path, hw_name, bits, step, mode, weighting, output, input_shapes, no_pin,
               pin_bits) -> None:
    """EAGL: entropy of each layer's quantized weights (data-free, seconds).

    On an ONNX MODEL (steps from its QDQ scales, else LSQ's initialisation), or on a task's
    checkpoint (--task, --checkpoint) at the steps that quantization-aware training learned."""
    from .gains.eagl import eagl

    _check_paths({"MODEL": model, "--hw": hw_name, "--checkpoint": checkpoint_path, "--task": _ref_file(task_ref)},
                 {"-o": output})
    if checkpoint_path or task_ref:
        if not (checkpoint_path and task_ref):
            raise MpqError("EAGL on a checkpoint needs both --task and --checkpoint")
        from .quant.lsq import learned_steps

        task, torch_model, graph, mapping = _task_context(task_ref, checkpoint_path, no_pin, pin_bits)
        steps = learned_steps(torch_model)
        learned = {layer: {steps[path]["bits"]: steps[path]["weight_step"]} for layer, path in mapping.items()
                   if "weight_step" in steps.get(path, {})}
        precisions = _bits_list(bits) if not hw_name else list(__import__("hw").load_spec(hw_name).precisions)
        result = eagl(graph, precisions, step=step, mode=mode, weighting=weighting, learned_steps=learned)
    else:
        if not model:
            raise MpqError("give an ONNX MODEL, or --task and --checkpoint")
        graph, precisions = _graph_and_precisions(model, hw_name, bits, input_shapes, no_pin, pin_bits)
        result = eagl(graph, precisions, step=step, mode=mode, weighting=weighting)
    result.write(graph, output)
    click.echo(f"wrote {output}: eagl gains for {len(graph.free_groups)} free groups at bits {precisions}")


# ------------------------------------------------------------------------------ design-space sweeps

@main.command()
@click.argument("model")
@click.option("--hw", "hw_name", required=True, metavar="SPEC", help="Base accelerator spec: shipped name or YAML path.")
@click.option("--vary", "vary_texts", multiple=True, metavar="FIELD=V1,V2,...",
              help="A spec field by dotted path and its values (cores=64,128,256; macs_per_cycle_per_core.2=4096,8192; "
                   "memory.on_chip_bytes=1e6,4e6), or precision sets (precisions=4,8/2,4,8). Repeat: the grid of all.")
@click.option("--samples", type=COUNT, default=None, help="Instead of the grid, this many random points of its box.")
@click.option("--sample-seed", type=SEED, default=0, show_default=True, help="Seed of --samples.")
@click.option("--target-gain", "targets", type=_Number(float), multiple=True, metavar="F",
              help="Plan the cheapest plan reaching F (e.g. 0.95) of the variant's largest total gain of a plan that "
                   "fits the chip (repeatable).")
@click.option("--budget", "budget_texts", multiple=True, metavar="METRIC<=VALUE|METRIC=R",
              help="Plan the best plan within this budget (repeatable; commas join metrics into one budget).")
@_with(cost_model_options)
@_with(gains_options)
@click.option("-o", "--output", "outputs", multiple=True, metavar="OUT.csv|OUT.json",
              help="Write the rows as CSV or JSON (by suffix; repeatable).")
@click.option("--plot", "plot_path", default=None, metavar="OUT.png", help="Write the sweep plots.")
@click.option("--time-limit", type=POSITIVE, default=60.0, show_default=True, help="Solver time limit per budget (s).")
@input_shape_option
@_with(hw_pin_options)
@_with(executor_options)
def sweep(model, hw_name, vary_texts, samples, sample_seed, targets, budget_texts, cost_model, lut, gains_names, step,
          mode, weighting, seed, outputs, plot_path, time_limit, input_shapes, no_pin, pin_bits, workers, executor,
          ray_address, resume_file) -> None:
    """Plan MODEL on every variant of a spec (design-space sweep): exact frontier, plans at gain
    targets or budgets, hardware cost and the Pareto set of (hardware cost, cost of the plan)."""
    import time

    from . import sweep as sw
    from .atomic import together, write_text
    from .checkpoint import Checkpoint
    from .graph import load_graph

    start = time.perf_counter()
    bad = [o for o in outputs if not o.endswith((".csv", ".json"))]
    if bad:
        raise MpqError(f"-o {bad[0]}: write .csv or .json")
    _check_paths(_planning_inputs(model, hw_name, cost_model, lut, gains_names),
                 {**{f"-o {o}": o for o in outputs}, "--plot": plot_path,
                  "--resume-file": resume_file or (outputs[0] + ".partial.jsonl" if outputs else None)})
    if len(gains_names) > 1:
        raise MpqError("mpq sweep takes one --gains")
    base, data = sw.load_base(hw_name)
    items = sw.variants(data, base.path, [sw.parse_vary(t) for t in vary_texts], samples=samples, seed=sample_seed)
    pins = (None, None) if no_pin else (pin_bits, pin_bits) if pin_bits is not None else (base.pin_first, base.pin_last)
    shapes = _shape_option(input_shapes)
    graph = load_graph(model, shapes, pin_first=pins[0], pin_last=pins[1])
    gains_ = _gains(gains_names[0] if gains_names else "eagl", graph, sw.precisions_of(items), step, mode, weighting, seed)
    resume = resume_file or (outputs[0] + ".partial.jsonl" if outputs else None)
    checkpoint = Checkpoint(resume) if resume else None
    executor = executor or ("processes" if workers > 1 else "local")

    def tick(variant, done, total, cached, seconds):
        click.echo(f"sweep [{done}/{total}] variant {variant.index} {variant.describe() or '(base spec)'}: "
                   f"{'from checkpoint' if cached else 'computed'} ({seconds:.1f} s)", err=True)

    result = sw.run_sweep(graph, items, gains_, cost_model=cost_model or ("lut" if lut else base.cost_model), lut=lut,
                          input_shapes=shapes, pins=pins, targets=list(targets), budgets=list(budget_texts),
                          time_limit_s=time_limit, checkpoint=checkpoint, executor=executor, workers=workers,
                          ray_address=ray_address, progress=tick)
    header = {"model": {"path": graph.model.path, "sha256": graph.model.sha256, "input_shapes": graph.model.input_shapes},
              "hardware": {"name": base.name, "sha256": base.sha256}, "hardware_cost_unit": base.hardware_cost_unit,
              "cost_model": cost_model or ("lut" if lut else base.cost_model), "pins": list(pins),
              "gains": {"method": gains_.method, "params": gains_.params}, "precisions": sw.precisions_of(items),
              "axes": [{"field": a.field, "values": [list(v) if isinstance(v, tuple) else v for v in a.values]}
                       for a in map(sw.parse_vary, vary_texts)],
              "samples": samples, "sample_seed": sample_seed if samples else None}
    with together(*outputs, plot_path) as temporaries:
        for out, tmp in zip(outputs, temporaries):
            write_text(tmp, sw.to_csv(result) if out.endswith(".csv") else sw.to_json(result, header))
        if plot_path:
            from .plots import sweep_plot

            sweep_plot(result, temporaries[-1], title=f"{_file_name(graph.model.path)} on variants of {base.name}")
    if checkpoint and not resume_file:
        checkpoint.remove()
    fields, _ = sw.columns(result)
    metric = result.metric
    rows = []
    givens = list(dict.fromkeys(r["given"] for r in result.rows))
    for r in sorted(result.rows, key=lambda r: (givens.index(r["given"]), r["variant"])):
        totals = r.get("totals") or {}
        share = f"{100 * r['objective'] / r['max_gain']:.1f}%" if totals and r["max_gain"] else "-"
        rows.append((r["variant"], *(sw.show(r["values"][f]) for f in fields), r["given"], r["status"],
                     report.si(totals[metric], _unit(metric)) if totals else "-", share,
                     "-" if r["hardware_cost"] is None else f"{r['hardware_cost']:.5g}",
                     {True: "*", False: "", None: ""}[r["pareto"]]))
    click.echo(report.table(["variant", *fields, "plan for", "status", metric, "gain", "hw cost", "pareto"], rows))
    unit = f" ({base.hardware_cost_unit})" if base.hardware_cost_unit else ""
    click.echo(f"\n{len(items)} variants ({len(result.computed)} computed, {len(items) - len(result.computed)} from the "
               f"checkpoint) in {time.perf_counter() - start:.1f} s; gains {gains_.method} on bits {sw.precisions_of(items)}"
               + (f"; hw cost{unit}: * marks the Pareto set of (hw cost, {metric} at a target; gain at a budget)"
                  if any(r["pareto"] is not None for r in result.rows) else ""))
    for path in (*outputs, plot_path):
        if path:
            click.echo(f"wrote {path}")


def _one_line(text: object) -> str:
    from .userfiles import one_line

    return one_line(text)


def run(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and maps errors to exit codes: 2 for a user error (one line,
    ``mpq: error: ...``), 130 for Ctrl-C (``mpq: interrupted``), 1 for a bug (a traceback and a
    line asking for a report). Outputs are written atomically, so none of these leaves a
    partial file."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            with main.make_context("mpq", args) as ctx:
                main.invoke(ctx)
        except click.exceptions.Exit as e:
            return e.exit_code
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            return 0
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            command = ctx.command_path if ctx else "mpq"
            where = f"{command[4:]}: " if command.startswith("mpq ") else ""
            click.echo(f"mpq: error: {where}{_one_line(e.format_message())} (see {command} --help)", err=True)
            return 2
        except click.exceptions.Abort:
            raise KeyboardInterrupt from None
    except MpqError as e:
        click.echo(f"mpq: error: {_one_line(e)}", err=True)
        return 2
    except KeyboardInterrupt:
        _interrupted()
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        import traceback

        traceback.print_exc()
        click.echo("mpq: internal error (a bug in mpq, not in your input); please report it with the command "
                   "and the traceback above", err=True)
        return 1
    return 0


def _interrupted() -> None:
    """Say ``mpq: interrupted`` once on stderr, ignoring a second Ctrl-C while doing so; the
    handler is restored afterwards, so an in-process caller of :func:`run` keeps its Ctrl-C
    (``python -m planner`` ignores it from there to its exit)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stderr.write("mpq: interrupted\n")
        sys.stderr.flush()
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(run())
