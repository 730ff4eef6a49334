"""What the commands share: option types and decorators, argument parsing, path checks, progress.

Nothing here computes a result; it turns command-line text into the values the library takes.
"""
from __future__ import annotations

import json
import math
import sys
import time

import click

from planner.errors import MpqError

#: The largest dimension --input-shape accepts (ONNX and numpy index with int64; real inputs are far smaller).
MAX_DIM = 2 ** 31 - 1


def input_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``NAME=DxDx...`` texts -> {input name: shape}; MpqError for a malformed one."""
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


def bits_list(text: str, option: str = "--bits") -> list[int]:
    """Sorted distinct bit widths of a comma-separated option; each one of hw.SUPPORTED_BITS."""
    from hw import check_bits

    try:
        values = sorted({int(b) for b in text.split(",")})
    except ValueError:
        raise MpqError(f"{option} '{text}': expected comma-separated bit widths, e.g. 2,4") from None
    return [check_bits(b, f"{option} {text}") for b in values]


def between(text: str | None) -> tuple[int, int] | None:
    """``LOW,HIGH`` -> (low, high) bit widths with low < high; None for no text."""
    if not text:
        return None
    try:
        low, high = (int(x) for x in text.replace(":", ",").split(","))
    except ValueError:
        raise MpqError(f"--between '{text}': expected two bit widths, e.g. 2,4") from None
    from hw import check_bits

    low, high = check_bits(low, f"--between {text}"), check_bits(high, f"--between {text}")
    if low >= high:
        example = f"{high},{low}" if low > high else "2,4"
        raise MpqError(f"--between '{text}': LOW must be below HIGH (the sweep runs from uniform LOW-bit to "
                       f"uniform HIGH-bit), e.g. {example}")
    return (low, high)


class Number(click.ParamType):
    """A finite int or float option with optional bounds (``low_open``: strictly above ``low``)."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
        self.kind, self.low, self.high, self.low_open = kind, low, high, low_open
        self.name = "integer" if kind is int else "number"

    def convert(self, value, param, ctx):
        """The value as ``kind``, or a click failure naming the bound it breaks."""
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


class BitWidth(click.ParamType):
    """One bit width from hw.SUPPORTED_BITS."""

    name = "bits"

    def convert(self, value, param, ctx):
        """The width as an int, or a click failure naming the supported range."""
        from hw import SUPPORTED_BITS

        try:
            bits = int(str(value).strip())
        except ValueError:
            bits = None
        if bits not in SUPPORTED_BITS:
            self.fail(f"{value!r} is not a supported bit width (the integers {SUPPORTED_BITS[0]} to "
                      f"{SUPPORTED_BITS[-1]})", param, ctx)
        return bits


BIT_WIDTH = BitWidth()
POSITIVE = Number(float, 0, low_open=True)
LEARNING_RATE = Number(float, 0, 3.4e38, low_open=True)  # torch keeps it in float32
COUNT = Number(int, 1)
SEED = Number(int, 0, 2 ** 32 - 1)


def check_paths(inputs: dict, outputs: dict) -> None:
    """Before any work: outputs writable, distinct, and none of them an input (see userfiles)."""
    from planner.userfiles import check_paths as check

    check(inputs, outputs)


def ref_file(ref: str | None) -> str | None:
    """The file of a ``path/file.py:object`` reference (a task or cost model), else None."""
    where = (ref or "").rpartition(":")[0]
    return where if where.endswith(".py") else None


def dump_json(data) -> None:
    """Print ``data`` as indented, key-sorted JSON."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def with_options(options):
    """A decorator applying several click options in the order listed."""
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def threads() -> None:
    """Cap torch's threads at 4 (more slow small models down)."""
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))


def note_unused(store) -> None:
    """Say on stderr when a job store held results that this run did not use (other inputs)."""
    if store.unused():
        click.echo(f"mpq: note: ignored {store.unused()} result(s) in {store.path} made for other inputs", err=True)


class Progress:
    """Progress of long work on stderr: a tqdm bar on a terminal; elsewhere (logs, CI, redirects)
    a line ``DESC: DONE/TOTAL UNIT, ELAPSED s`` at most every ``every_s`` seconds and at the end.
    Use as a context manager; ``update(n)`` counts finished work, ``total`` may be set later."""

    def __init__(self, total: int, desc: str, unit: str = "it", every_s: float = 5.0):
        from tqdm import tqdm

        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not self.tty, leave=False)
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = self.shown = 0
        self.start = self.last = time.monotonic()

    def __enter__(self):
        return self

    def update(self, n: int = 1) -> None:
        """Count ``n`` more finished pieces."""
        self.done += n
        if self.tty:
            self.bar.total = self.total
            self.bar.update(n)
        elif time.monotonic() - self.last >= self.every_s:
            self._line()

    def _line(self) -> None:
        self.last, self.shown = time.monotonic(), self.done
        total = f"/{self.total}" if self.total else ""
        click.echo(f"{self.desc}: {self.done}{total} {self.unit}, {self.last - self.start:.0f} s", err=True)

    def __exit__(self, *exc):
        self.bar.close()
        if not self.tty and exc[0] is None and self.done != self.shown and time.monotonic() - self.start >= self.every_s:
            self._line()  # the final count, unless the last line already showed it


# Shared options ------------------------------------------------------------------------------

input_shape_option = click.option(
    "--input-shape", "shape_texts", multiple=True, metavar="NAME=1x3x224x224",
    help="Fix a graph input's shape (repeatable); symbolic batch dimensions default to 1.")
hw_option = click.option("--hw", "hw_name", required=True, metavar="SPEC", help="Accelerator spec: shipped name or YAML path.")
no_pin_option = click.option("--no-pin", is_flag=True, help="Do not pin the first and last layers.")
pin_options = [
    no_pin_option,
    click.option("--pin-bits", type=BIT_WIDTH, default=8, show_default=True, help="Bits of the pinned first/last layers."),
]
hw_pin_options = [
    no_pin_option,
    click.option("--pin-bits", type=BIT_WIDTH, default=None, help="Bits of the pinned first/last layers (default: the spec's pins)."),
]
cost_model_options = [
    click.option("--cost-model", "cost_model", default=None, metavar="NAME|FILE.py:Class",
                 help="Cost model (default: the spec's, usually northpole)."),
    click.option("--lut", default=None, metavar="CSV", help="Latency table for the lut cost model (layer,bits,latency_s)."),
]
model_hw_options = [click.argument("model"), hw_option, *cost_model_options]
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
bits_restriction_option = click.option(
    "--bits", "restrict_bits", default=None, metavar="2,4",
    help="Offer free groups only these precisions (e.g. 2,4 for the paper's two-precision case).")
force_option = click.option("--force", is_flag=True, help="Use gains or plan files made for another model (another sha256).")
seed_option = click.option("--seed", type=SEED, default=0, show_default=True)
task_option = click.option("--task", "task_ref", required=True, metavar="TASK",
                           help="Built-in mnist, mnist-deep or minilm, package.module:object or path/file.py:object.")
executor_options = [
    click.option("--workers", type=Number(int, 0), default=1, show_default=True, help="Parallel workers."),
    click.option("--executor", type=click.Choice(["local", "processes", "ray"]), default=None,
                 help="Where jobs run (default: processes with --workers > 1, else local)."),
    click.option("--ray-address", default=None, help="Ray cluster address (default: start a local instance)."),
    click.option("--resume-file", default=None, metavar="JSONL",
                 help="Job store of finished jobs (default: OUTPUT.partial.jsonl, removed when done)."),
]


def json_option(what: str):
    """The ``--json`` flag (``as_json``) of a command that prints ``what`` ("the costs") as JSON."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def time_limit_option(per: str):
    """The solver's ``--time-limit`` in seconds (default 60); ``per`` (" per point") says what it limits."""
    return click.option("--time-limit", type=POSITIVE, default=60.0, show_default=True,
                        help=f"Solver time limit{per} (s).")


def planning_inputs(model, hw_name, cost_model, lut, gains_names) -> dict:
    """The files a planning command reads, by option (for check_paths)."""
    return {"MODEL": model, "--hw": hw_name, "--cost-model": ref_file(cost_model), "--lut": lut,
            **{f"--gains {g}": g for g in gains_names}}


def gain_options(step, mode, weighting, seed) -> dict:
    """The common gain options as keyword arguments of planner.gains.registry.estimate."""
    return {"step": step, "mode": mode, "weighting": weighting, "seed": seed}


def prepare(model, hw_name, cost_model, lut, shapes, no_pin, pin_bits, restrict_bits=None):
    """planner.costs.setup.prepare from the command line's texts."""
    from planner.costs.setup import prepare as library_prepare

    return library_prepare(model, hw_name, cost_model=cost_model, lut=lut, input_shapes=input_shapes(shapes),
                           no_pin=no_pin, pin_bits=pin_bits,
                           bits=bits_list(restrict_bits) if restrict_bits is not None else None)
