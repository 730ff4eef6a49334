"""Training, fine-tuning (LSQ) and scoring of a task's model. The library never prints:
progress goes to an optional callback ``progress(step, total)``."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

METRICS = ("accuracy", "loss", "kl")


def loader(task, dataset, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader of ``dataset`` in the task's ``batch_size`` (default 64); with ``shuffle``, in
    the order that ``seed`` fixes."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=getattr(task, "batch_size", 64), shuffle=shuffle, generator=generator)


def task_loss(task, outputs, targets) -> torch.Tensor:
    """The task's training loss of ``outputs`` against ``targets``: ``task.loss`` where it has one,
    else cross-entropy (a 0-d tensor)."""
    loss = getattr(task, "loss", None)
    return loss(outputs, targets) if loss is not None else F.cross_entropy(outputs, targets)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KL(teacher || student) on softened logits, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t


def fit(model: nn.Module, task, *, epochs: float, lr: float, seed: int, teacher: nn.Module | None = None,
        distill: float = 0.0, weight_decay: float = 5e-4, reestimate_bn: bool = True, progress=None,
        resume: str | Path | None = None) -> nn.Module:
    """Train ``model`` in place with SGD (momentum 0.9, cosine schedule) for ``epochs`` (may be
    fractional) on the task's training data; with a ``teacher``, the loss mixes in distillation
    with weight ``distill``. Batch-norm statistics are re-estimated at the end, sequentially in
    eval mode (see :func:`reestimate_batch_norm`).

    With ``resume`` (a file path), the state after every finished epoch (weights, optimizer,
    schedule, random generators) is saved there, a later call with the same settings continues
    from it with the same result as an uninterrupted run, and the file is removed at the end.
    """
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
    config = {"epochs": epochs, "lr": lr, "seed": seed, "distill": distill, "steps": steps,
              "weight_decay": weight_decay, "keys": sorted(model.state_dict()), "start": state_sha256(model),
              "teacher": state_sha256(teacher) if teacher is not None and distill > 0 else None,
              "task": getattr(task, "ref", getattr(task, "name", ""))}
    step = _restore(resume, config, model, optimizer, schedule, data.generator, generator) if resume else 0
    if teacher is not None:
        teacher.eval()
    model.train()
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
        else:  # a whole epoch finished: the state at an epoch boundary can be resumed exactly
            if resume and step < steps:
                _save(resume, config, step, model, optimizer, schedule, data.generator, generator)
    if reestimate_bn:
        reestimate_batch_norm(model, task, seed)
    if resume:
        Path(resume).unlink(missing_ok=True)
    return model.eval()


def state_sha256(model: nn.Module) -> str:
    """A hash of a model's state (names, shapes, dtypes and values): a resumed fine-tune must
    start from the same weights, steps and bits as the run it continues."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


def _save(path, config, step, model, optimizer, schedule, data_generator, augment_generator) -> None:
    from planner.atomic import atomic_path

    state = {"config": config, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "data_rng": data_generator.get_state(),
             "augment_rng": augment_generator.get_state(), "torch_rng": torch.get_rng_state()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _restore(path, config, model, optimizer, schedule, data_generator, augment_generator) -> int:
    """The step to continue from (0 when there is no usable saved state)."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return 0
    if state.get("config") != config:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    data_generator.set_state(state["data_rng"])
    augment_generator.set_state(state["augment_rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass once the norm being re-estimated has run."""


@torch.no_grad()
def reestimate_batch_norm(model: nn.Module, task, seed: int = 0, samples: int | None = None) -> None:
    """Recompute every BatchNorm's running statistics the way the network will run: one norm
    at a time, in forward order, over up to ``samples`` training inputs drawn at random (seeded;
    default: the task's ``bn_samples``, else 2048), with every norm before it already in eval
    mode on its new statistics. Each pass stops at the norm being re-estimated (the layers after
    it cannot change its statistics).

    Statistics gathered in training mode (each norm fed by upstream norms on batch statistics)
    describe another network than the one evaluated; with 2-bit activations the difference
    compounds layer by layer and can cost tens of points of accuracy (measured on MNIST)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    samples = samples if samples is not None else getattr(task, "bn_samples", 2048)
    data = task.train_data()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))  # datasets may be sorted by class
    subset = torch.utils.data.Subset(data, order[:samples].tolist())
    batches = [x for x, _ in loader(task, subset, shuffle=False, seed=seed)]
    model.eval()

    def stop(module, args, output):
        raise _Stop

    for norm in norms:
        momentum = norm.momentum
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the pass
        norm.train()
        handle = norm.register_forward_hook(stop)
        try:
            for x in batches:
                try:
                    model(x)
                except _Stop:
                    pass
        finally:
            handle.remove()
        norm.eval()
        norm.momentum = momentum


@torch.no_grad()
def outputs_of(model: nn.Module, task, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, targets) of ``model`` in eval mode over ``dataset`` in order, each concatenated
    over the batches."""
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
