"""Training, fine-tuning (LSQ) and scoring of a task's model. The library never prints:
progress goes to an optional callback ``progress(step, total)``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

METRICS = ("accuracy", "loss", "kl")


def loader(task, dataset, *, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=getattr(task, "batch_size", 64), shuffle=shuffle, generator=generator)


def task_loss(task, outputs, targets) -> torch.Tensor:
    loss = getattr(task, "loss", None)
    return loss(outputs, targets) if loss is not None else F.cross_entropy(outputs, targets)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KL(teacher || student) on softened logits, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t


def fit(model: nn.Module, task, *, epochs: float, lr: float, seed: int, teacher: nn.Module | None = None,
        distill: float = 0.0, weight_decay: float = 5e-4, reestimate_bn: bool = True, progress=None) -> nn.Module:
    """Train ``model`` in place with SGD (momentum 0.9, cosine schedule) for ``epochs`` (may be
    fractional) on the task's training data; with a ``teacher``, the loss mixes in distillation
    with weight ``distill``. Batch-norm statistics are re-estimated at the end (quantized
    networks drift from the statistics of their float parents)."""
    torch.manual_seed(seed)
    data = loader(task, task.train_data(), shuffle=True, seed=seed)
    steps = max(1, math.ceil(epochs * len(data)))
    steps_params = [p for n, p in model.named_parameters() if n.endswith(".step")]
    other = [p for n, p in model.named_parameters() if not n.endswith(".step")]
    optimizer = torch.optim.SGD([{"params": other, "weight_decay": weight_decay},
                                 {"params": steps_params, "weight_decay": 0.0}], lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    augment = getattr(task, "augment", None)
    generator = torch.Generator().manual_seed(seed + 1)
    if teacher is not None:
        teacher.eval()
    model.train()
    step = 0
    while step < steps:
        for x, y in data:
            if augment is not None:
                x = augment(x, generator)
            outputs = model(x)
            loss = task_loss(task, outputs, y)
            if teacher is not None and distill > 0:
                with torch.no_grad():
                    target = teacher(x)
                divergence = getattr(task, "distillation_loss", distillation_loss)
                loss = (1 - distill) * loss + distill * divergence(outputs, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress:
                progress(step, steps)
            if step >= steps:
                break
    if reestimate_bn:
        reestimate_batch_norm(model, task, seed)
    return model.eval()


@torch.no_grad()
def reestimate_batch_norm(model: nn.Module, task, seed: int = 0) -> None:
    """Recompute every BatchNorm's running statistics over the training data (no augmentation)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x, _ in loader(task, task.train_data(), shuffle=False, seed=seed):
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def outputs_of(model: nn.Module, task, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, targets = [], []
    for x, y in loader(task, dataset, shuffle=False):
        outs.append(model(x))
        targets.append(y)
    return torch.cat(outs), torch.cat(targets)


@torch.no_grad()
def score(model: nn.Module, task, dataset, metric: str = "accuracy", teacher: nn.Module | None = None) -> float:
    """Higher is better: accuracy (the task's ``score`` where it has one), minus the mean loss,
    or minus the mean KL divergence to ``teacher`` (the task's ``divergence`` where it has one)."""
    if metric == "accuracy":
        if hasattr(task, "score"):
            return float(task.score(model, dataset))
        outputs, targets = outputs_of(model, task, dataset)
        return float((outputs.argmax(-1) == targets).float().mean())
    outputs, targets = outputs_of(model, task, dataset)
    if metric == "loss":
        return -float(task_loss(task, outputs, targets))
    if metric == "kl":
        reference, _ = outputs_of(teacher, task, dataset)
        if hasattr(task, "divergence"):  # e.g. embeddings, where a softmax over outputs means nothing
            return -float(task.divergence(outputs, reference))
        return -float(F.kl_div(F.log_softmax(outputs, -1), F.log_softmax(reference, -1), log_target=True,
                               reduction="batchmean"))
    raise ValueError(f"unknown metric {metric}")
