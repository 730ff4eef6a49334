"""Model checkpoints of a task: weights, learned steps and the bits of every quantized layer.

``save_checkpoint`` writes atomically; ``load_checkpoint`` rebuilds the task's model at the
checkpoint's bits and loads it, or raises MpqError when the file is not a checkpoint or belongs
to another model.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from planner.atomic import atomic_path
from planner.errors import MpqError
from planner.quant.lsq import apply_bits, bits_of
from planner.userfiles import not_a_file

FORMAT = "mpq.checkpoint/v1"


def save_checkpoint(path: str | Path, model: nn.Module, task, **meta) -> None:
    """Write ``model``'s weights and learned steps, its bits per quantized module, the task's name
    and ``meta`` to ``path`` atomically (a torch file of :data:`FORMAT`)."""
    doc = {"format": FORMAT, "task": getattr(task, "ref", getattr(task, "name", "")), "bits": bits_of(model),
           "state_dict": model.state_dict(), "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(doc, tmp)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint document at ``path`` (``task``, ``bits``, ``state_dict``, ``meta``), loaded on
    the CPU with weights only. Raises MpqError when the file is missing or is not an mpq checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path, "no such checkpoint")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MpqError(f"{path}: not a readable checkpoint ({type(e).__name__}); make one with mpq train") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MpqError(f"{path}: not an mpq checkpoint (no '{FORMAT}' format tag); make one with mpq train or mpq finetune")
    return doc


def load_checkpoint(path: str | Path, task) -> nn.Module:
    """The task's model at the checkpoint's bits with the checkpoint's weights and steps."""
    doc = read_checkpoint(path)
    model = apply_bits(task.model(), doc["bits"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in doc["state_dict"].items()}
    if expected != found:
        differ = sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
        raise MpqError(f"{path}: checkpoint is for another model than task '{task.name}' (e.g. '{differ[0]}' "
                       "differs); train one for this task with mpq train")
    model.load_state_dict(doc["state_dict"])
    return model.eval()


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
