"""Tasks: what ALPS, the data-driven baselines and fine-tuning need from a model and its data.

A task is any object with

- ``name``: str;
- ``model()``: a fresh ``torch.nn.Module`` (the architecture; weights come from checkpoints);
- ``train_data()``: a ``torch.utils.data.Dataset`` of (input, target) to train on;
- ``eval_data()``: a held-out *validation* Dataset (never the test split): ALPS and the
  sensitivity baselines score on it;
- ``evaluate(model) -> float``: the task's score on its *test* split, higher is better;

and optionally ``loss(outputs, targets)`` (default: cross-entropy), ``score(model, dataset)``
(the validation "accuracy" metric; default: top-1 accuracy), ``divergence(outputs, reference)``
(the "kl" metric; default: KL of softmaxed outputs), ``distillation_loss(student, teacher)``
(default: softened KL), ``augment(x, generator)`` (training augmentation), ``batch_size``
(default 64), ``example_inputs()`` (for the ONNX export; default: the first training input with a
batch dimension of 1), ``lr`` / ``epochs`` / ``finetune_lr`` / ``finetune_epochs`` defaults.
Models take one input tensor (a task with several inputs stacks them).

``load_task("mnist")`` gives the built-in MNIST task; ``"package.module:object"`` or
``"path/file.py:object"`` loads a user's (an object, or a class / function that returns one).
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ..errors import MpqError

BUILTIN = {"mnist": "planner.tasks.mnist:task", "minilm": "planner.tasks.minilm:task"}
REQUIRED = ("model", "train_data", "eval_data", "evaluate")


def load_task(ref: str):
    """The task object named by ``ref`` (see the module docstring)."""
    ref = BUILTIN.get(ref, ref)
    if ":" not in ref:
        raise MpqError(f"--task '{ref}': expected a built-in task ({', '.join(BUILTIN)}), package.module:object "
                       "or path/file.py:object")
    where, name = ref.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise MpqError(f"--task {ref}: no such file {path}")
        spec = importlib.util.spec_from_file_location(f"mpq_task_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise MpqError(f"--task {ref}: {path} failed to import ({type(e).__name__}: {e})") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise MpqError(f"--task {ref}: module '{where}' does not import ({type(e).__name__}: {e})") from None
    if not hasattr(module, name):
        raise MpqError(f"--task {ref}: '{where}' has no '{name}'")
    task = getattr(module, name)
    if isinstance(task, type) or (callable(task) and not any(hasattr(task, r) for r in REQUIRED)):
        task = task()
    missing = [r for r in REQUIRED if not callable(getattr(task, r, None))]
    if missing:
        raise MpqError(f"--task {ref}: the task lacks {', '.join(missing)}(); a task needs "
                       "model(), train_data(), eval_data() and evaluate(model)")
    if not hasattr(task, "name"):
        task.name = name
    task.ref = ref
    return task
