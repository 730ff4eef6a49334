"""HAWQ-style sensitivity: Hutchinson's estimate of each layer's Hessian trace times the weight
quantization error (Yao, Dong et al., HAWQ-V3, ICML 2021).

Omega_l(b) = Tr(H_l) / n_l * ||W_l - Q_b(W_l)||^2 on the float network (the checkpoint's weights
with quantizers removed); a group's gain of b bits over its lowest precision is the drop in the
sum of its layers' Omega. Tr(H_l) is estimated with ``samples`` Rademacher vectors on
``batches`` training batches (Hessian-vector products by double back-propagation). Steps of Q_b:
the checkpoint's learned step at the bits it was trained at, LSQ's initial step otherwise.
"""
from __future__ import annotations

import torch

from ..graph import LayerGraph
from . import Gains, grid
from .datadriven import group_modules


def hutchinson_traces(model, task, modules: list[str], *, samples: int = 16, batches: int = 2, seed: int = 0) -> dict[str, float]:
    """Estimated Hessian trace of the training loss w.r.t. each module's weight."""
    from ..quant.train import loader, task_loss

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    named = dict(model.named_modules())
    params = [named[m].weight for m in modules]
    traces = dict.fromkeys(modules, 0.0)
    model.eval()
    data = loader(task, task.train_data(), shuffle=True, seed=seed)
    count = 0
    for x, y in data:
        loss = task_loss(task, model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for _ in range(samples):
            vs = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in params]
            hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
            for m, v, hv in zip(modules, vs, hvs):
                traces[m] += float((v * hv).sum())
        count += 1
        if count >= batches:
            break
    return {m: t / (samples * count) for m, t in traces.items()}


def hessian_gains(task, model, graph: LayerGraph, mapping: dict[str, str], precisions: list[int], *,
                  learned: dict[str, dict] | None = None, samples: int = 16, batches: int = 2, seed: int = 0) -> Gains:
    """``model``: the float network; ``learned``: module path -> {"bits", "weight_step"} from a
    quantized checkpoint."""
    bits = sorted(set(precisions))
    modules = sorted(set(mapping.values()))
    traces = hutchinson_traces(model, task, modules, samples=samples, batches=batches, seed=seed)
    named = dict(model.named_modules())
    omega: dict[str, dict[int, float]] = {}
    for m in modules:
        w = named[m].weight.detach().numpy()
        mean = grid.mean_abs(w)
        info = (learned or {}).get(m, {})
        omega[m] = {}
        for b in bits:
            step = info["weight_step"] if info.get("bits") == b else grid.lsq_step(mean, b)
            omega[m][b] = traces[m] / w.size * grid.quant_error(w, step, b)
    by_group = []
    for group in graph.groups:
        if group.pinned_bits is not None:
            by_group.append({group.pinned_bits: 0.0})
            continue
        members = group_modules(graph, mapping, group)
        low = bits[0]
        by_group.append({b: sum(omega[m][low] - omega[m][b] for m in members) for b in bits})
    return Gains("hessian", {"samples": samples, "batches": batches, "seed": seed}, by_group,
                 {"traces": {m: traces[m] for m in modules}})
