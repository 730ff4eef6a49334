"""Shared pieces of the data-driven gain methods (ALPS, Hessian, sensitivity)."""
from __future__ import annotations

import hashlib
import json

from ..errors import MpqError
from ..graph import LayerGraph


def group_modules(graph: LayerGraph, mapping: dict[str, str], group) -> list[str]:
    """Module paths of a group's layers (Conv2d / Linear / MatMul modules; a layer without a module,
    e.g. a bare ``torch.matmul``, contributes none)."""
    return sorted({mapping[n] for n in group.layers if n in mapping})


def group_bits(graph: LayerGraph, mapping: dict[str, str], base_bits: dict[str, int], group) -> int | None:
    """The precision a checkpoint runs a group at (None: the group's layers are not quantized)."""
    bits = {base_bits.get(m) for m in group_modules(graph, mapping, group)}
    if len(bits) > 1:
        raise MpqError(f"the checkpoint runs the layers of group {group.id} ({group.layers[0]}) at different bits "
                       f"{sorted(map(str, bits))}; a group shares one precision")
    return bits.pop() if bits else None


def lower(precisions: list[int], bits: int) -> int | None:
    below = [b for b in sorted(precisions) if b < bits]
    return below[-1] if below else None


def config_key(**config) -> str:
    """A short hash of everything a result depends on (checkpoint keys stay valid only for it)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
