"""AIMET-style sensitivity (Qualcomm AIMET AMP, phase 1): lower one group at a time to each
lower precision, without fine-tuning, and score on the validation split; a precision's gain is
how much better the network scores there than at the group's lowest precision."""
from __future__ import annotations

from ..graph import LayerGraph
from . import Gains
from .datadriven import group_bits, group_modules


def sensitivity_gains(task, base, base_bits: dict[str, int], graph: LayerGraph, mapping: dict[str, str],
                      precisions: list[int], *, metric: str = "loss", progress=None) -> Gains:
    import torch

    from ..quant.lsq import apply_bits
    from ..quant.train import score

    torch.manual_seed(0)
    data = task.eval_data()
    base_score = score(base, task, data, metric, teacher=base)
    by_group, scores = [], {}
    for group in graph.groups:
        if group.pinned_bits is not None:
            by_group.append({group.pinned_bits: 0.0})
            continue
        high = group_bits(graph, mapping, base_bits, group)
        candidates = [b for b in sorted(precisions) if high is None or b < high]
        values = {high: base_score} if high else {}
        for b in candidates:
            lowered = apply_bits(base, dict.fromkeys(group_modules(graph, mapping, group), b))
            values[b] = score(lowered, task, data, metric, teacher=base)
            if progress:
                progress(group.id, b)
        low = min(values)
        by_group.append({b: v - values[low] for b, v in sorted(values.items())})
        scores[str(group.id)] = {str(b): v for b, v in values.items()}
    return Gains("sensitivity", {"metric": metric}, by_group, {"base_score": base_score, "scores": scores})
