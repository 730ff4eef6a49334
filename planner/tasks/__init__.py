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

``load_task("mnist")``, ``load_task("mnist-deep")`` and ``load_task("minilm")`` give the built-in tasks;
``"package.module:object"`` or ``"path/file.py:object"`` loads a user's (an object, or a class /
function that returns one).
"""
from __future__ import annotations

from planner.errors import MpqError
from planner.userfiles import call_user, load_object

BUILTIN = {"mnist": "planner.tasks.mnist:task", "mnist-deep": "planner.tasks.mnist:deep_task", "minilm": "planner.tasks.minilm:task"}
REQUIRED = ("model", "train_data", "eval_data", "evaluate")


def load_task(ref: str):
    """The task object named by ``ref`` (see the module docstring)."""
    ref = BUILTIN.get(ref, ref)
    if ":" not in ref:
        raise MpqError(f"--task '{ref}': expected a built-in task ({', '.join(BUILTIN)}), package.module:object "
                       "or path/file.py:object")
    task = load_object(ref, f"--task {ref}")
    if isinstance(task, type) or (callable(task) and not any(hasattr(task, r) for r in REQUIRED)):
        task = call_user(task, f"--task {ref}")
    missing = [r for r in REQUIRED if not callable(getattr(task, r, None))]
    if missing:
        raise MpqError(f"--task {ref}: the task lacks {', '.join(missing)}(); a task needs "
                       "model(), train_data(), eval_data() and evaluate(model)")
    if not hasattr(task, "name"):
        task.name = ref.rpartition(":")[2]
    task.ref = ref
    return task
