"""The ``mpq`` command line: parse arguments, call the library, print. User errors exit 2."""
from __future__ import annotations

import json
import sys

import click

from . import report
from .errors import MpqError


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
        shapes[name] = shape
    return shapes


def _dump_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
    help="Fix a graph input's shape (repeatable); symbolic batch dimensions default to 1.")


def _pins(no_pin: bool, pin_bits: int) -> dict:
    return {"pin_first": None, "pin_last": None} if no_pin else {"pin_first": pin_bits, "pin_last": pin_bits}


pin_options = [
    click.option("--no-pin", is_flag=True, help="Do not pin the first and last layers."),
    click.option("--pin-bits", type=int, default=8, show_default=True, help="Bits of the pinned first/last layers."),
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
    """List the layers of MODEL (ONNX) with their MACs, precision groups and pins."""
    from .graph import load_graph

    graph = load_graph(model, _shape_option(input_shapes), **_pins(no_pin, pin_bits))
    if as_json:
        _dump_json(graph.to_json())
        return
    rows = [(l.name, l.op_type, report.shape(l.weight_shape), f"{l.params:,}", f"{l.macs:,}", l.group,
             l.pinned_bits or "") for l in graph.layers]
    click.echo(report.table(["layer", "op", "weight", "params", "MACs", "group", "pin"], rows,
                            right=[False, False, False, True, True, True, True]))
    t = graph.totals()
    shapes = ", ".join(f"{k}={report.shape(v)}" for k, v in graph.model.input_shapes.items())
    click.echo(f"\n{t['layers']} layers, {t['groups']} groups ({t['pinned_groups']} pinned), "
               f"{t['params']:,} params, {t['macs']:,} MACs ({report.si(t['macs'])}) at {shapes}")


def run(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and maps errors to exit codes (2: user error, 1: bug)."""
    try:
        main.main(args=argv, prog_name="mpq", standalone_mode=False)
    except MpqError as e:
        click.echo(f"mpq: error: {e}", err=True)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help())
        return 0
    except click.ClickException as e:
        command = e.ctx.command_path if getattr(e, "ctx", None) else "mpq"
        click.echo(f"{command}: error: {e.format_message()} (see {command} --help)", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("mpq: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(run())
