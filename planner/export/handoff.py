"""The hand-off of a plan to the tools that run it, as one library call per format.

:func:`export_plan` checks the request, builds the export (:func:`export_qdq`: a standard QDQ ONNX
with INT2/INT4/INT8/INT16 Q/DQ types; :func:`export_ort_overrides`: onnxruntime's
TensorQuantOverrides, optionally realised by ``quantize_static``; AIMET encodings with their float
model), writes it atomically and measures its fidelity when data is given. Calibration inputs
come from a task (:func:`task_feeds`) or a folder of ``.npy``/``.npz`` batches (:func:`folder_feeds`).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from planner.errors import MpqError

FORMATS = ("qdq", "ort-overrides", "aimet")


@dataclass
class Handoff:
    """What :func:`export_plan` did: ``written`` (the paths written, in order) and ``lines`` (one
    summary line per file, then notes and fidelity figures, for a person to read)."""

    written: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def export_plan(plan_path: str, model: str, output: str, *, fmt: str = "qdq", checkpoint: str | None = None,
                task_ref: str | None = None, inputs_folder: str | None = None, per_tensor: bool = False,
                max_opset: int = 25, calibrated_path: str | None = None, force: bool = False) -> Handoff:
    """Export the plan at ``plan_path`` for the ONNX ``model`` to ``output`` in format ``fmt``:

    - ``qdq``: a QDQ ONNX model (weights per output channel unless ``per_tensor``; opset at most
      ``max_opset``: 25 has INT2, 21 INT4/INT16);
    - ``ort-overrides``: onnxruntime TensorQuantOverrides JSON; with ``calibrated_path``, also
      ``quantize_static`` run with them on calibration data, written there;
    - ``aimet``: AIMET encodings 1.0.0 JSON, and the float model they refer to at ``output`` with
      suffix ``.onnx``.

    Weights and learned steps come from ``checkpoint`` (a task checkpoint, needs ``task_ref``) when
    given; activation steps are calibrated on ``inputs_folder`` or the task's training batches.
    With a task or inputs, fidelity to the float model (and to the torch network with a
    checkpoint) is measured on held-out batches, before anything is written. Every file is written
    atomically, all or none.
    Raises MpqError for inconsistent options, a plan for another model (unless ``force``), a
    checkpoint fine-tuned for another plan, or a float model that onnx.checker refuses (its QDQ
    model would be refused too)."""
    import onnx

    from planner.atomic import atomic_path, together, write_text
    from planner.export.plan import read_plan
    from planner.export.qdq import DISABLED_OPTIMIZERS
    from planner.quant.checkpoint import load_checkpoint
    from planner.tasks import load_task

    if fmt not in FORMATS:
        raise MpqError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    if checkpoint and not task_ref:
        raise MpqError("--checkpoint needs --task (the checkpoint's task, to rebuild its model)")
    if fmt != "ort-overrides" and calibrated_path:
        raise MpqError("--calibrate goes with --format ort-overrides (the qdq format calibrates on --task or --inputs)")
    if fmt == "ort-overrides" and checkpoint:
        raise MpqError("--format ort-overrides carries types only (onnxruntime calibrates the scales); "
                       "export a checkpoint's learned steps with --format qdq")
    float_path = float_model_path(output) if fmt == "aimet" else None
    if float_path is not None and float_path == Path(output):
        raise MpqError(f"-o {output}: name the encodings file .json (the float model goes to {float_path})")
    if checkpoint:
        check_plan_of_checkpoint(checkpoint, plan_path, force)
    plan = read_plan(plan_path)
    task = load_task(task_ref) if task_ref else None
    feeds = folder_feeds(inputs_folder, model) if inputs_folder else None
    torch_model = None
    out = Handoff()

    def measured(checked) -> list[str]:
        """Fidelity lines of the exported model ``checked`` on held-out data (measured before
        anything is written, so that a failure leaves no file)."""
        if checked is None or not (task is not None or feeds):
            return []
        from planner.export.fidelity import describe, fidelity

        held_out = feeds or list(task_feeds(task, split="eval"))
        return [f"  {line}" for line in
                describe(fidelity(checked, model, held_out, torch_model if fmt != "ort-overrides" else None))]

    if fmt == "ort-overrides":
        from planner.export.ortoverrides import overrides_json

        if calibrated_path and feeds is None and task is not None:
            feeds = list(task_feeds(task))
        with together(output, calibrated_path) as (output_tmp, calibrated_tmp):
            overrides, notes, proto = export_ort_overrides(plan, model, feeds=feeds, quantized_path=calibrated_tmp,
                                                           per_channel=not per_tensor, force=force)
            fidelity_lines = measured(proto)
            write_text(output_tmp, overrides_json(overrides))
        out.written.append(output)
        out.lines.append(f"wrote {output}: TensorQuantOverrides for {len(overrides)} tensors (load with "
                         "planner.export.ortoverrides.read_overrides; quantize_static with quant_format=QDQ, "
                         f"per_channel={not per_tensor})")
        if proto is not None:
            out.written.append(calibrated_path)
            out.lines.append(f"wrote {calibrated_path}: quantize_static with the overrides")
    else:
        torch_model = load_checkpoint(checkpoint, task) if checkpoint else None
        result = export_qdq(plan, model, task=task, model=torch_model, feeds=feeds, per_channel=not per_tensor,
                            max_opset=max_opset, force=force)
        proto, notes = result.model, result.notes
        if fmt == "qdq":
            check_exported(proto, model)
        fidelity_lines = measured(proto)
    if fmt == "aimet":
        from planner.export.aimet import encodings, encodings_json

        doc = encodings(result)
        with together(str(float_path), output) as (float_tmp, output_tmp):
            onnx.save(result.float_model, float_tmp)
            write_text(output_tmp, encodings_json(doc))
        out.written += [str(float_path), output]
        out.lines.append(f"wrote {output}: AIMET encodings {doc['version']}, {len(doc['param_encodings'])} parameter "
                         f"and {len(doc['activation_encodings'])} activation encodings, for the float model {float_path}")
        proto = None
    elif fmt == "qdq":
        with atomic_path(output) as tmp:
            onnx.save(proto, tmp)
        out.written.append(output)
        q = sum(n.op_type == "QuantizeLinear" for n in proto.graph.node)
        dq = sum(n.op_type == "DequantizeLinear" for n in proto.graph.node)
        channels = sum(n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
                       for n in proto.graph.node)
        out.lines.append(f"wrote {output} (opset {result.opset}): {dq - q} weight quantizers ({channels} with a scale "
                         f"per output channel) and {q} activation quantizers")
    out.lines += [f"  note: {note}" for note in notes]
    out.lines += fidelity_lines
    if proto is not None:
        out.lines.append(f"  onnxruntime 1.32 CPU: open with disabled_optimizers={DISABLED_OPTIMIZERS} "
                         "(planner.export.qdq.session does)")
    return out


def check_exported(proto, model: str) -> None:
    """Run onnx.checker on the exported QDQ model ``proto``. Where it fails and the float
    ``model`` fails the checker too, the fault is the model's (onnxruntime runs models the checker
    refuses): MpqError saying what the checker found. Where only the export fails, the
    ValidationError propagates (a bug in mpq)."""
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError:
        try:
            onnx.checker.check_model(str(model))
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MpqError(f"{model}: the model fails onnx.checker ({first}), and so would its QDQ model; "
                           "fix the model (onnx.checker.check_model says what is wrong) and export again") from None
        raise


def float_model_path(output: str) -> Path:
    """Where ``--format aimet`` writes the float model its encodings refer to: OUTPUT with .onnx."""
    return Path(output).with_suffix(".onnx")


def check_plan_of_checkpoint(checkpoint: str, plan_path: str, force: bool) -> None:
    """MpqError when the checkpoint was fine-tuned for another plan than ``plan_path`` (unless ``force``)."""
    from planner.quant.checkpoint import file_sha256, read_checkpoint

    meta = read_checkpoint(checkpoint).get("meta") or {}
    recorded = meta.get("plan_sha256") if isinstance(meta, dict) else None
    if force or not recorded or recorded == file_sha256(plan_path):
        return
    raise MpqError(f"{checkpoint} was fine-tuned for another plan ({meta.get('plan')}, sha256 {str(recorded)[:12]}...) "
                   f"than {plan_path}; use that plan, fine-tune for this one, or pass --force")


#: Layer ops whose operands are already integers: a model with them was quantized before mpq saw it.
INTEGER_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat")


def check_float_model(graph, onnx_path) -> None:
    """MpqError when ``graph``'s model is already quantized (a layer of an integer op, or a weight
    behind DequantizeLinear): quantizing it again would stack a second grid on the first (or, for
    the integer ops, give them float operands), so the plan is exported on the float model. Planning
    such a model stays possible (its costs and EAGL read the integer weights)."""
    for layer in graph.layers:
        if layer.op_type in INTEGER_OPS or layer.weight_scale is not None:
            how = (f"is {layer.op_type}" if layer.op_type in INTEGER_OPS
                   else f"reads its weight '{layer.weight}' through DequantizeLinear")
            raise MpqError(f"{onnx_path} is already quantized (layer '{layer.name}' {how}); export the plan on the "
                           "float model it was made from (plan that model with mpq plan if the plan is for this one)")


def export_qdq(plan, onnx_path: str | Path, *, task=None, model=None, feeds=None,
               per_channel: bool = True, max_opset: int = 25, force: bool = False):
    """The standard QDQ export (:class:`planner.export.qdq.QdqExport`) of a plan.

    Without a torch ``model`` it is built on ``onnx_path``: weight steps from its weights,
    activation steps calibrated on ``feeds`` (a list of tuples of input arrays; default, where
    some layer needs calibration: the task's first training batches), or activations left float
    without either. With a task's
    ``model`` (a checkpoint) it is built on a fresh export of that model, so every parameter
    (batch norms included) and every learned step is the checkpoint's; ``onnx_path`` must then
    have the same layers. Batch norms and per-channel Mul / Add after convs are folded into the
    weights first (:mod:`planner.export.bnfold`); learned levels stay and the fold goes into per-channel
    scales. The plan must record ``onnx_path``'s sha256 unless ``force``."""
    import onnx

    from planner.export.bnfold import fold_affine
    from planner.graph import load_graph
    from planner.export.qdq import calibrate, qdq_model
    from planner.quant.lsq import learned_steps

    shapes = plan.input_shapes_for(onnx_path)
    reference = load_graph(onnx_path, shapes, pin_first=None, pin_last=None)
    plan.check_model(reference, force)
    check_float_model(reference, onnx_path)
    w_bits = plan.bits_by_layer
    a_bits = {l["name"]: l["a_bits"] for l in plan.doc["layers"]}
    with tempfile.TemporaryDirectory() as folder:
        steps: dict[str, dict] = {}
        if model is None:
            source = onnx.load(onnx_path)
        else:
            from planner.quant.network import task_graph

            graph, mapping = task_graph(task, model, pin_first=None, pin_last=None, path=Path(folder) / "model.onnx")
            if [(l.name, l.weight) for l in graph.layers] != [(l.name, l.weight) for l in reference.layers]:
                raise MpqError(f"{onnx_path} and the checkpoint's model have different layers; plan on the ONNX that "
                               "mpq train wrote next to the checkpoint")
            learned = learned_steps(model)
            steps = {layer: learned[path] for layer, path in mapping.items() if path in learned}
            source = onnx.load(graph.model.path)
        folded, folds = fold_affine(source)
        onnx.save(folded, Path(folder) / "folded.onnx")
        graph = load_graph(Path(folder) / "folded.onnx", shapes, pin_first=None, pin_last=None)
        uncovered = {n: b for n, b in a_bits.items() if not (steps.get(n, {}).get("bits") == b == w_bits[n])}
        if uncovered and feeds is None and task is not None:
            feeds = list(task_feeds(task))
        activation_steps = calibrate(graph, uncovered, feeds) if uncovered and feeds else None
        result = qdq_model(graph, w_bits, activation_bits=a_bits, steps=steps, activation_steps=activation_steps,
                           folds=folds if model is not None else None, per_channel=per_channel, max_opset=max_opset)
        result.float_model = folded
    if folds:
        result.notes.append(f"{len(folds)} batch norms / per-channel affine ops folded into the weights before quantizing")
        if model is not None and not per_channel:
            result.notes.append("learned per-tensor steps times the folded factors give per-channel weight scales")
    return result


def export_ort_overrides(plan, onnx_path: str | Path, *, feeds=None, quantized_path: str | Path | None = None,
                         per_channel: bool = True, force: bool = False):
    """The plan as onnxruntime TensorQuantOverrides: (overrides, notes, quantized model or None).

    With ``quantized_path`` and ``feeds`` (tuples of input arrays), mpq also runs ``quantize_static``
    with the overrides on the model with its batch norms folded (:mod:`planner.export.bnfold`) and writes
    the quantized model there."""
    import onnx

    from planner.atomic import atomic_path
    from planner.export.bnfold import fold_affine
    from planner.graph import load_graph
    from planner.export.ortoverrides import ort_overrides, quantize_with_overrides

    graph = load_graph(onnx_path, plan.input_shapes_for(onnx_path), pin_first=None, pin_last=None)
    plan.check_model(graph, force)
    check_float_model(graph, onnx_path)
    overrides, notes = ort_overrides(graph, plan.bits_by_layer, {l["name"]: l["a_bits"] for l in plan.doc["layers"]})
    if quantized_path is None:
        return overrides, notes, None
    if not feeds:
        raise MpqError("quantize_static needs calibration inputs: give --task or --inputs FOLDER")
    with tempfile.TemporaryDirectory() as folder:
        folded, folds = fold_affine(onnx.load(onnx_path))
        onnx.save(folded, Path(folder) / "folded.onnx")
        with atomic_path(quantized_path) as tmp:
            model = quantize_with_overrides(Path(folder) / "folded.onnx", tmp, overrides, feeds, per_channel)
    if folds:
        notes.append(f"{len(folds)} batch norms / per-channel affine ops folded into the weights before quantize_static")
    return overrides, notes, model


def task_feeds(task, batches: int = 4, split: str = "train"):
    """The first ``batches`` batches of the task's ``split`` ("train": calibration, "eval": the
    validation data fidelity is measured on), unshuffled, each a tuple of the model's input arrays."""
    from planner.quant.train import loader

    data = task.train_data() if split == "train" else task.eval_data()
    for k, (x, _) in enumerate(loader(task, data, shuffle=False)):
        if k >= batches:
            break
        yield (x.numpy(),)


def folder_feeds(folder: str | Path, model: str | Path) -> list[dict]:
    """Calibration inputs from a folder, in sorted file order, checked against the ONNX ``model``:
    each ``.npy`` file one batch of a single-input model's input, each ``.npz`` one batch of several
    inputs keyed by input name. Returns one {input name: array} per file (see :func:`fit_batch`).
    Raises MpqError when the folder has no batches, a file cannot be read or a batch does not fit
    the model's inputs."""
    import numpy as np

    from planner.graph.onnxfile import model_inputs

    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix in (".npy", ".npz")) if folder.is_dir() else []
    if not files:
        raise MpqError(f"{folder}: no .npy or .npz input batches found; save batches of the model's input with numpy.save")
    inputs = model_inputs(model)
    feeds = []
    for f in files:
        try:
            data = np.load(f)
            batch = dict(data) if f.suffix == ".npz" else data
        except (OSError, ValueError) as e:
            raise MpqError(f"{f}: not a readable numpy file ({e})") from None
        feeds.append(fit_batch(batch, inputs, f, model))
    return feeds


def fit_batch(batch, inputs: dict[str, tuple], where, model) -> dict:
    """One batch (an array for a single-input model, else {name: array}) as {input name: array},
    checked against ``inputs`` (:func:`planner.graph.onnxfile.model_inputs`): every input given
    and no other, the model's element type (float64 is cast to float32 where the model reads
    float32), its rank and its fixed dimensions. MpqError naming the file ``where`` and the first
    misfit otherwise."""
    import numpy as np

    if isinstance(batch, dict):
        missing, extra = sorted(set(inputs) - set(batch)), sorted(set(batch) - set(inputs))
        if missing or extra:
            raise MpqError(f"{where}: {model} reads inputs {', '.join(inputs)}; the batch "
                           + (f"lacks '{missing[0]}'" if missing else f"has '{extra[0]}', which the model lacks")
                           + " (save one array per input name with numpy.savez)")
    elif len(inputs) != 1:
        raise MpqError(f"{where}: {model} reads {len(inputs)} inputs ({', '.join(inputs)}); save each batch as .npz "
                       "with one array per input name")
    else:
        batch = {next(iter(inputs)): batch}
    out = {}
    for name, (dtype, dims) in inputs.items():
        array = np.asarray(batch[name])
        if array.dtype == np.float64 and dtype == np.float32:
            array = array.astype(np.float32)
        expected = "x".join("N" if d is None else str(d) for d in dims)
        if dtype is not None and array.dtype != dtype:
            raise MpqError(f"{where}: input '{name}' is {array.dtype}; {model} reads {np.dtype(dtype).name} "
                           f"(shape {expected})")
        if array.ndim != len(dims) or any(d is not None and d != n for d, n in zip(dims, array.shape)):
            raise MpqError(f"{where}: input '{name}' has shape {'x'.join(map(str, array.shape))}; {model} reads "
                           f"{expected} (N: any size)")
        out[name] = array
    return out
