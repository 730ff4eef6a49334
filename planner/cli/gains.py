"""``mpq gains METHOD``: estimate each group's gain of higher precision and write a gains file.

Every method runs through :func:`planner.gains.registry.estimate`; each command prints the same
table (one row per free group, one column per precision) and its wall time.
"""
from __future__ import annotations

import time

import click

from planner.cli import tables
from planner.cli.options import (BIT_WIDTH, COUNT, LEARNING_RATE, POSITIVE, Progress, bits_list, check_paths,
                                 executor_options, gains_options, hw_pin_options, input_shape_option, input_shapes,
                                 no_pin_option, note_unused, ref_file, seed_option, task_option, threads, with_options)
from planner.errors import MpqError


spec_or_bits_options = [
    click.option("--hw", "hw_name", default=None, metavar="SPEC", help="Take precisions and pins from this spec."),
    click.option("--bits", default="2,4,8", show_default=True, help="Precisions when no --hw is given."),
]
output_option = click.option("-o", "--output", required=True, metavar="GAINS.json", help="Write the gains here.")


@click.group()
def gains() -> None:
    """Estimate each group's gain of higher precision and write a gains file."""


def _print_gains(result, graph, output: str, wall_s: float, what: str) -> None:
    """The gains table (free groups x precisions; ALPS adds whether a gain is above its noise
    floor) and one line saying what was written and how long it took."""
    bits = sorted({b for g in graph.free_groups for b in result.by_group[g.id]})
    noise = result.extra.get("noise_floor") if result.method == "alps" else None
    rows = []
    for group in graph.free_groups:
        values = result.by_group[group.id]
        row = [group.id, group.layers[0], *(f"{values[b]:.5g}" if b in values else "-" for b in bits)]
        if noise is not None:
            row.append("yes" if abs(max(values.values())) > noise else "no")
        rows.append(row)
    headers = ["group", "first layer", *(f"gain at {b}-bit" for b in bits)] + (["above noise"] if noise is not None else [])
    click.echo(tables.table(headers, rows))
    click.echo(f"wrote {output}: {what} for {len(graph.free_groups)} free groups at bits {bits} in {wall_s:.1f} s")


def _write(result, graph, output: str, start: float, what: str) -> None:
    result.write(graph, output)
    _print_gains(result, graph, output, time.perf_counter() - start, what)


def _data_free_command(method: str, help_text: str):
    @gains.command(method, help=help_text)
    @click.argument("model")
    @with_options(spec_or_bits_options)
    @with_options(gains_options[1:])
    @output_option
    @input_shape_option
    @with_options(hw_pin_options)
    def command(model, hw_name, bits, step, mode, weighting, seed, output, shape_texts, no_pin, pin_bits) -> None:
        from planner.costs.setup import graph_and_precisions
        from planner.gains.registry import Source, estimate

        start = time.perf_counter()
        check_paths({"MODEL": model, "--hw": hw_name}, {"-o": output})
        graph, precisions = graph_and_precisions(model, hw=hw_name, bits=None if hw_name else bits_list(bits),
                                                 input_shapes=input_shapes(shape_texts), no_pin=no_pin, pin_bits=pin_bits)
        result = estimate(method, Source(graph=graph), precisions, step=step, mode=mode, weighting=weighting, seed=seed)
        _write(result, graph, output, start, f"{method} gains")

    return command


for _method, _help in [
    ("uniform", "Baseline: every group gains the same per step up."),
    ("random", "Baseline: seeded random gains."),
    ("params", "Baseline: gain = weight count per step up."),
    ("qerror", "Baseline: drop in weight quantization error ||W - Q(W)||^2."),
]:
    _data_free_command(_method, _help)


@gains.command("eagl")
@click.argument("model", required=False)
@click.option("--task", "task_ref", default=None, metavar="TASK", help="With --checkpoint: EAGL on the checkpoint's "
              "weights at its learned steps.")
@click.option("--checkpoint", "checkpoint_path", default=None, metavar="CKPT")
@with_options(spec_or_bits_options)
@with_options(gains_options[1:4])
@output_option
@input_shape_option
@with_options(hw_pin_options)
def gains_eagl(model, task_ref, checkpoint_path, hw_name, bits, step, mode, weighting, output, shape_texts, no_pin,
               pin_bits) -> None:
    """EAGL: entropy of each layer's quantized weights (data-free, seconds).

    On an ONNX MODEL (steps from its QDQ scales, else LSQ's initialisation), or on a task's
    checkpoint (--task, --checkpoint) at the steps that quantization-aware training learned.
    Pins and precisions come from --hw when given, as for mpq plan."""
    from planner.gains.registry import Source, estimate

    start = time.perf_counter()
    check_paths({"MODEL": model, "--hw": hw_name, "--checkpoint": checkpoint_path, "--task": ref_file(task_ref)},
                {"-o": output})
    if checkpoint_path or task_ref:
        if not (checkpoint_path and task_ref):
            raise MpqError("EAGL on a checkpoint needs both --task and --checkpoint")
        from planner.gains.registry import task_source

        spec = None
        if hw_name:
            from hw import load_spec

            spec = load_spec(hw_name)
        source = task_source(task_ref, checkpoint_path, spec=spec, no_pin=no_pin, pin_bits=pin_bits)
        precisions = list(spec.precisions) if spec else bits_list(bits)
    else:
        if not model:
            raise MpqError("give an ONNX MODEL, or --task and --checkpoint")
        from planner.costs.setup import graph_and_precisions

        graph, precisions = graph_and_precisions(model, hw=hw_name, bits=None if hw_name else bits_list(bits),
                                                 input_shapes=input_shapes(shape_texts), no_pin=no_pin, pin_bits=pin_bits)
        source = Source(graph=graph)
    result = estimate("eagl", source, precisions, step=step, mode=mode, weighting=weighting)
    _write(result, source.graph, output, start, "eagl gains")


data_gains_options = [
    task_option,
    click.option("--checkpoint", "checkpoint_path", required=True, metavar="CKPT",
                 help="The network trained at the high precision (e.g. mpq train --bits 4)."),
    click.option("--bits", default="2,4", show_default=True, help="Precisions to estimate gains for."),
    output_option,
    no_pin_option,
    click.option("--pin-bits", type=BIT_WIDTH, default=None, help="Bits of pinned layers (default 8)."),
]

score_metric_option = click.option(
    "--metric", type=click.Choice(["accuracy", "loss", "kl"]), default="loss", show_default=True,
    help="Validation score: accuracy, minus the loss, or minus the KL divergence to the high-precision network.")


def _measure(method: str, task_ref, checkpoint_path, bits, output, no_pin, pin_bits, *, jobs_total=None,
             workers=1, executor=None, ray_address=None, resume_file=None, **options) -> None:
    """A data-driven gains command: check paths, load the task's network, estimate (resumable
    methods keep finished jobs in the job store), write, print."""
    from planner.gains.registry import METHODS, estimate, task_source
    from planner.jobs.store import JobStore, resume_path

    start = time.perf_counter()
    precisions = bits_list(bits)
    resumable = "resume" in METHODS[method].options
    store_path = (resume_file or resume_path(output)) if resumable else None
    check_paths({"--task": ref_file(task_ref), "--checkpoint": checkpoint_path}, {"-o": output, "--resume-file": store_path})
    executor = executor or ("processes" if workers > 1 else "local")
    if executor == "ray" and ray_address:
        from planner.jobs.ray_executor import check_address

        check_address(ray_address)
    threads()
    source = task_source(task_ref, checkpoint_path, no_pin=no_pin, pin_bits=pin_bits)
    store = JobStore(store_path) if store_path else None
    total = jobs_total(source.graph) if jobs_total else 0
    with Progress(total, f"{method} {source.task.name}", unit="job") as bar:
        extra = {"resume": store, "progress": lambda key, value: bar.update(1), "executor": executor,
                 "workers": workers, "ray_address": ray_address} if resumable else {}
        result = estimate(method, source, precisions, **options, **extra)
    if store is not None:
        note_unused(store)
    if method == "alps":
        noise = result.extra["noise_floor"]
        click.echo(f"ALPS ({options['metric']}, {options['epochs']:g} epoch, {executor} x{workers}): base score "
                   f"{result.extra['base_score']:.5f} over {options['seeds']} seeds"
                   + (f", noise floor (std) {noise:.5f}" if noise is not None else ""))
    _write(result, source.graph, output, start, f"{method} gains")
    if store is not None and not resume_file:
        store.remove()


@gains.command("alps")
@with_options(data_gains_options)
@click.option("--epochs", type=POSITIVE, default=1.0, show_default=True, help="Fine-tuning epochs per group (paper: 1).")
@click.option("--lr", type=LEARNING_RATE, default=None, help="Fine-tuning learning rate (default: the task's).")
@score_metric_option
@click.option("--seeds", type=COUNT, default=3, show_default=True,
              help="Seeds of the base and of every lowered group (gain: mean paired difference; base spread: the noise floor).")
@with_options(executor_options)
def gains_alps(task_ref, checkpoint_path, bits, output, no_pin, pin_bits, epochs, lr, metric, seeds, workers, executor,
               ray_address, resume_file) -> None:
    """ALPS: drop each group one step, fine-tune, measure the score lost (resumable)."""
    from planner.gains.alps import job_count

    _measure("alps", task_ref, checkpoint_path, bits, output, no_pin, pin_bits,
             jobs_total=lambda graph: job_count(graph, seeds), workers=workers, executor=executor,
             ray_address=ray_address, resume_file=resume_file, epochs=epochs, lr=lr, metric=metric, seeds=seeds)


@gains.command("hessian")
@with_options(data_gains_options)
@click.option("--samples", type=COUNT, default=16, show_default=True, help="Rademacher vectors per batch.")
@click.option("--batches", type=COUNT, default=2, show_default=True, help="Training batches.")
@seed_option
def gains_hessian(task_ref, checkpoint_path, bits, output, no_pin, pin_bits, samples, batches, seed) -> None:
    """HAWQ: Hutchinson Hessian trace x weight quantization error, per group."""
    _measure("hessian", task_ref, checkpoint_path, bits, output, no_pin, pin_bits, samples=samples, batches=batches,
             seed=seed)


@gains.command("sensitivity")
@with_options(data_gains_options)
@score_metric_option
@with_options(executor_options)
def gains_sensitivity(task_ref, checkpoint_path, bits, output, no_pin, pin_bits, metric, workers, executor, ray_address,
                      resume_file) -> None:
    """AIMET-style: lower each group alone without fine-tuning and score it (resumable)."""
    _measure("sensitivity", task_ref, checkpoint_path, bits, output, no_pin, pin_bits, workers=workers,
             executor=executor, ray_address=ray_address, resume_file=resume_file, metric=metric)
