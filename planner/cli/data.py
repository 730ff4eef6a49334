"""The data side: train, evaluate, finetune a task's network, and export a plan to the tools
that run it (export also works on an ONNX model alone)."""
from __future__ import annotations

import click

from planner.cli import tables
from planner.cli.options import (BIT_WIDTH, LEARNING_RATE, POSITIVE, Number, Progress, check_paths, dump_json,
                                 force_option, json_option, ref_file, seed_option, task_option, threads)
from planner.errors import MpqError


def _check_trained(model, lr) -> None:
    """MpqError when training left a non-finite weight (it diverged): no NaN checkpoint is written."""
    import torch

    bad = next((name for name, t in model.state_dict().items()
                if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise MpqError(f"training diverged: {bad} is not finite (learning rate {lr if lr is not None else 'default'}); "
                       "try a lower --lr")


class _StepProgress(Progress):
    """Progress of training steps; the total is known once training starts (``tick(step, total)``)."""

    def tick(self, step: int, total: int) -> None:
        self.total = total
        self.update(1)


@click.command()
@task_option
@click.option("--bits", type=BIT_WIDTH, default=None, help="Train quantization-aware (LSQ) at these bits; pinned layers at --pin-bits.")
@click.option("--init", "init_path", default=None, metavar="CKPT", help="Start from this checkpoint (default: fresh weights).")
@click.option("--epochs", type=POSITIVE, default=None, help="Epochs (default: the task's).")
@click.option("--lr", type=LEARNING_RATE, default=None, help="Learning rate (default: the task's).")
@seed_option
@click.option("--pin-bits", type=BIT_WIDTH, default=8, show_default=True, help="Bits of the pinned first and last layers.")
@click.option("-o", "--output", required=True, metavar="CKPT", help="Write the checkpoint here (and OUTPUT with .onnx: "
              "the float ONNX export to plan on). Finished epochs are kept in OUTPUT.partial: a rerun resumes.")
def train(task_ref, bits, init_path, epochs, lr, seed, pin_bits, output) -> None:
    """Train a task's model: full precision, or LSQ quantization-aware at uniform --bits."""
    from pathlib import Path

    from planner.atomic import together
    from planner.quant import network
    from planner.quant.checkpoint import load_checkpoint, save_checkpoint
    from planner.tasks import load_task
    from planner.userfiles import check_output

    check_output("-o", output)
    onnx_path = Path(output).with_suffix(".onnx")
    if output.endswith(".onnx"):
        raise MpqError(f"-o {output}: the checkpoint and its ONNX export ({onnx_path}) would be the same file; "
                       f"name the checkpoint with another suffix, e.g. -o {Path(output).with_suffix('.pt')}")
    check_paths({"--task": ref_file(task_ref), "--init": init_path},
                {"-o": output, "ONNX export": str(onnx_path), "resume file": output + ".partial"})
    threads()
    task = load_task(task_ref)
    model = load_checkpoint(init_path, task) if init_path else task.model()
    with _StepProgress(0, f"train {task.name}" + (f" {bits}-bit" if bits else " full precision"), unit="step") as bar:
        model = network.train(task, model, bits=bits, epochs=epochs, lr=lr, seed=seed, pins=(pin_bits, pin_bits),
                              progress=bar.tick, resume=output + ".partial")
    _check_trained(model, lr)
    test = task.evaluate(model)
    with together(output, onnx_path) as (checkpoint_tmp, onnx_tmp):
        save_checkpoint(checkpoint_tmp, model, task, test_score=test, bits=bits, init=init_path, seed=seed)
        network.save_onnx_for_planning(task, model, onnx_tmp)
    click.echo(f"{task.name}: test score {test:.2f} ({'W%dA%d' % (bits, bits) if bits else 'full precision'}"
               f"{', pinned layers %d-bit' % pin_bits if bits else ''}); wrote {output} and {onnx_path}")


@click.command()
@task_option
@click.option("--checkpoint", "checkpoint_path", required=True, metavar="CKPT", help="The model to evaluate.")
@click.option("--plan", "plan_path", default=None, metavar="PLAN.json", help="Apply this plan's bits first (no fine-tuning).")
@json_option("the scores")
def evaluate(task_ref, checkpoint_path, plan_path, as_json) -> None:
    """Score a checkpoint on the task's test split (and its validation loss)."""
    from planner.export.plan import read_plan
    from planner.quant import network
    from planner.quant.checkpoint import load_checkpoint
    from planner.tasks import load_task

    threads()
    task = load_task(task_ref)
    model = load_checkpoint(checkpoint_path, task)
    if plan_path:
        model = network.apply_plan(task, model, read_plan(plan_path))
    result = network.evaluate(task, model)
    if as_json:
        dump_json(result)
        return
    layers, groups = result["layer_bits"], result["group_bits"]
    mix = (f"{len(layers)} layers in {len(groups)} groups: " + tables.bits_mix(list(layers.values()), groups)
           if any(b is not None for b in groups) else "full precision")
    click.echo(f"{task.name}: test score {result['test_score']:.2f}, validation loss {result['validation_loss']:.4f} ({mix})")


@click.command()
@click.argument("plan_path", metavar="PLAN")
@task_option
@click.option("--checkpoint", "checkpoint_path", required=True, metavar="CKPT",
              help="Start from this checkpoint (e.g. the LSQ 4-bit network).")
@click.option("--epochs", type=POSITIVE, default=None, help="Fine-tuning epochs (default: the task's).")
@click.option("--lr", type=LEARNING_RATE, default=None, help="Learning rate (default: the task's fine-tuning rate).")
@seed_option
@click.option("--distill", type=Number(float, 0, 1), default=0.0, show_default=True,
              help="Weight of distillation from --teacher (default teacher: the starting checkpoint).")
@click.option("--teacher", "teacher_path", default=None, metavar="CKPT", help="Teacher for --distill.")
@click.option("-o", "--output", required=True, metavar="CKPT", help="Write the fine-tuned checkpoint here.")
def finetune(plan_path, task_ref, checkpoint_path, epochs, lr, seed, distill, teacher_path, output) -> None:
    """Apply a plan's bits to the task's model and fine-tune it with LSQ; report the test score."""
    from planner.export.plan import read_plan
    from planner.quant import network
    from planner.quant.checkpoint import file_sha256, load_checkpoint, save_checkpoint
    from planner.tasks import load_task

    check_paths({"PLAN": plan_path, "--task": ref_file(task_ref), "--checkpoint": checkpoint_path,
                 "--teacher": teacher_path}, {"-o": output, "resume file": output + ".partial"})
    threads()
    task = load_task(task_ref)
    plan = read_plan(plan_path)
    base = load_checkpoint(checkpoint_path, task)
    teacher = load_checkpoint(teacher_path, task) if teacher_path else base
    with _StepProgress(0, f"finetune {task.name}", unit="step") as bar:
        model = network.finetune(task, base, plan, epochs=epochs, lr=lr, seed=seed, teacher=teacher, distill=distill,
                                 progress=bar.tick, resume=output + ".partial")
    _check_trained(model, lr)
    test = task.evaluate(model)
    save_checkpoint(output, model, task, test_score=test, plan=plan_path, plan_sha256=file_sha256(plan_path),
                    init=checkpoint_path, seed=seed)
    click.echo(f"{task.name}: test score {test:.2f} after fine-tuning {plan_path}; wrote {output}")


@click.command()
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
@force_option
def export(plan_path, model, fmt, checkpoint_path, task_ref, inputs_folder, output, per_tensor, max_opset,
           calibrated_path, force) -> None:
    """Hand PLAN's bits for MODEL to the tools that run it. With --task (its validation data) or
    --inputs, every export reports its fidelity: top-1 agreement and output cosine to the float
    model, and to the torch network with --checkpoint. --format qdq writes a standard QDQ
    ONNX whose Q/DQ element types (INT2, INT4, INT8, INT16) carry each layer's bits (runs in
    onnxruntime, see planner.export.qdq.session); --format ort-overrides writes the TensorQuantOverrides
    that onnxruntime's quantize_static realizes; --format aimet writes AIMET encodings (1.0.0)
    and, beside them (OUT with .onnx), the float model they refer to."""
    from pathlib import Path

    from planner.export.handoff import export_plan, float_model_path

    float_path = float_model_path(output) if fmt == "aimet" else None
    distinct = float_path is not None and float_path != Path(output)  # else export_plan says how to name them
    check_paths({"PLAN": plan_path, "MODEL": model, "--checkpoint": checkpoint_path, "--task": ref_file(task_ref)},
                {"-o": output, "--calibrate": calibrated_path, "the float model": str(float_path) if distinct else None})
    result = export_plan(plan_path, model, output, fmt=fmt, checkpoint=checkpoint_path, task_ref=task_ref,
                         inputs_folder=inputs_folder, per_tensor=per_tensor, max_opset=max_opset,
                         calibrated_path=calibrated_path, force=force)
    for line in result.lines:
        click.echo(line)
