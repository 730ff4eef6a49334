"""HAWQ-style sensitivity: Hutchinson's estimate of each layer's Hessian trace times the weight
quantization error (Yao, Dong et al., HAWQ-V3, ICML 2021).

Omega_l(b) = Tr(H_l) / n_l * ||W_l - Q_b(W_l)||^2 on the float network (the checkpoint's weights
with quantizers removed); a group's gain of b bits over its lowest precision is the drop in the
sum of its layers' Omega. Tr(H_l) is estimated with ``samples`` Rademacher vectors on
``batches`` training batches (Hessian-vector products by double back-propagation). Steps of Q_b:
the checkpoint's learned step at the bits it was trained at, LSQ's initial step otherwise.

Layers without a weight (activation x activation MatMul modules: attention's Q·Kᵀ and P·V)
quantize only their two inputs, so for them HAWQ measures the activation quantization error,
as HAWQ-V2 (Dong et al., NeurIPS 2020, section 3.4) does for activations: on each batch j and
for each input a_k, Omega(b) = sum_k Tr(H_{a_k}) / n_{a_k} * ||a_k - Q_b(a_k)||^2, with H_{a_k}
the Hessian of the loss w.r.t. that activation tensor (same Hutchinson estimate), averaged over
the batches. Q_b uses the input's learned step and signedness at the checkpoint's bits, else
LSQ's initial step on that batch with the sign from the data (a softmax output is unsigned).
Weighted layers keep HAWQ-V3's weight-only measure.
"""
from __future__ import annotations

import math
import statistics

import torch

from planner.graph import LayerGraph
from planner.quant.lsq import MatMul
from planner.gains import Gains, grid
from planner.gains.datadriven import group_gains, group_modules


def hutchinson_traces(model, task, modules: list[str], *, samples: int = 16, batches: int = 2, seed: int = 0) -> dict[str, float]:
    """Estimated Hessian trace of the training loss w.r.t. each module's weight."""
    return hutchinson(model, task, modules, [], samples=samples, batches=batches, seed=seed)[0]


def hutchinson(model, task, weighted: list[str], matmuls: list[str], *, samples: int = 16, batches: int = 2,
               seed: int = 0) -> tuple[dict[str, float], dict[str, list[list[tuple[float, torch.Tensor]]]]]:
    """Hutchinson estimates on ``batches`` shuffled training batches, ``samples`` Rademacher
    vectors each: (Tr(H) w.r.t. each ``weighted`` module's weight, averaged over batches;
    for each ``matmuls`` module, per batch, [(Tr(H_a) / n_a, a) for each of its two inputs a]).
    """
    from planner.quant.train import loader, task_loss

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    named = dict(model.named_modules())
    params = [named[m].weight for m in weighted]
    traces = dict.fromkeys(weighted, 0.0)
    inputs: dict[str, list] = {m: [] for m in matmuls}
    captured: dict[str, tuple] = {}
    handles = [named[m].register_forward_hook(lambda mod, args, out, m=m: captured.__setitem__(m, args[:2]))
               for m in matmuls]
    model.eval()
    data = loader(task, task.train_data(), shuffle=True, seed=seed)
    count = 0
    try:
        for x, y in data:
            captured.clear()
            loss = task_loss(task, model(x), y)
            acts = [a for m in matmuls for a in captured[m]]
            grads = torch.autograd.grad(loss, params + acts, create_graph=True)
            sums = [0.0] * len(acts)
            for _ in range(samples):
                vs = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in params]
                vs += [torch.randint(0, 2, a.shape, generator=generator).to(a.dtype) * 2 - 1 for a in acts]
                hvs = torch.autograd.grad(grads, params + acts, grad_outputs=vs, retain_graph=True)
                for m, v, hv in zip(weighted, vs, hvs):
                    traces[m] += float((v * hv).sum())
                for k, (v, hv) in enumerate(zip(vs[len(params):], hvs[len(params):])):
                    sums[k] += float((v * hv).sum())
            for i, m in enumerate(matmuls):
                inputs[m].append([(sums[2 * i + j] / samples / acts[2 * i + j].numel(), acts[2 * i + j].detach())
                                  for j in range(2)])
            count += 1
            if count >= batches:
                break
    finally:
        for h in handles:
            h.remove()
    return {m: t / (samples * count) for m, t in traces.items()}, inputs


def activation_error(a: torch.Tensor, bits: int, step: float | None = None, signed: bool | None = None) -> float:
    """||a - Q_b(a)||^2 on the b-bit grid of ``step`` (default LSQ's initial step on ``a``),
    signed (levels -2^(b-1) .. 2^(b-1)-1) or unsigned (0 .. 2^b-1; default: unsigned when a >= 0)."""
    a = a.double()
    signed = bool((a < 0).any()) if signed is None else signed
    qn, qp = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    if step is None:
        step = 2 * float(a.abs().mean()) / math.sqrt(max(qp, 1))
    step = step if step > 0 else 1.0
    return float(((a - torch.clamp(torch.round(a / step), -qn, qp) * step) ** 2).sum())


def hessian_gains(task, model, graph: LayerGraph, mapping: dict[str, str], precisions: list[int], *,
                  learned: dict[str, dict] | None = None, samples: int = 16, batches: int = 2, seed: int = 0) -> Gains:
    """``model``: the float network; ``learned``: module path -> {"bits", "weight_step",
    "input_steps", "inputs_signed"} from a quantized checkpoint (see ``learned_steps``). Every
    layer of a free group needs a module (MpqError otherwise)."""
    from planner.quant.torchmap import require_modules

    require_modules(graph, mapping)
    bits = sorted(set(precisions))
    named = dict(model.named_modules())
    modules = sorted(set(mapping.values()))
    matmuls = [m for m in modules if isinstance(named[m], MatMul)]
    weighted = [m for m in modules if m not in matmuls]
    traces, inputs = hutchinson(model, task, weighted, matmuls, samples=samples, batches=batches, seed=seed)
    omega: dict[str, dict[int, float]] = {}
    for m in weighted:
        w = named[m].weight.detach().numpy()
        mean = grid.mean_abs(w)
        info = (learned or {}).get(m, {})
        omega[m] = {}
        for b in bits:
            step = info["weight_step"] if info.get("bits") == b else grid.lsq_step(mean, b)
            omega[m][b] = traces[m] / w.size * grid.quant_error(w, step, b)
    for m in matmuls:
        info = (learned or {}).get(m, {})
        omega[m] = {}
        for b in bits:
            total = 0.0
            for batch in inputs[m]:
                for k, (curvature, a) in enumerate(batch):
                    step, signed = ((info["input_steps"][k], info["inputs_signed"][k]) if info.get("bits") == b
                                    else (None, None))
                    total += curvature * activation_error(a, b, step, signed)
            omega[m][b] = total / max(len(inputs[m]), 1)
    low = bits[0]
    measured = {group.id: {b: sum(omega[m][low] - omega[m][b] for m in group_modules(graph, mapping, group))
                           for b in bits} for group in graph.free_groups}
    by_group = group_gains(graph, bits, measured)
    extra = {"traces": {m: traces[m] for m in weighted}}
    if matmuls:
        extra["input_curvatures"] = {m: [statistics.fmean(batch[k][0] for batch in inputs[m]) for k in range(2)]
                                     for m in matmuls}
    return Gains("hessian", {"samples": samples, "batches": batches, "seed": seed}, by_group, extra)

