"""PyTorch <-> ONNX: export a module, read its LayerGraph and map ONNX layers to module paths.

The export keeps parameter names as initializer names (TorchScript exporter, no constant
folding, so batch norms are not folded into the weights), which maps a layer's weight
``layer1.0.conv1.weight`` to the module ``layer1.0.conv1``. Where a name does not resolve, layers
are matched to Conv2d/Linear modules in execution order by weight shape.

Layers without a weight (activation x activation MatMuls: attention's Q·Kᵀ and P·V) map to
:class:`planner.quant.lsq.MatMul` modules: by the module scope the exporter writes into the node
name (``/encoder/layer.0/attention/self/scores/MatMul`` -> ``encoder.layer.0.attention.self.scores``),
else in execution order. A product written as a bare ``torch.matmul`` has no module: the layer
stays unmapped, and running or measuring it at planned bits is refused (:func:`bits_by_module`,
:func:`require_modules`).
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from planner.errors import MpqError
from planner.graph import LayerGraph, load_graph
from planner.quant.lsq import QUANTIZED, MatMul, bits_of, plain

LAYER_MODULES = (nn.Conv2d, nn.Linear)


def export_onnx(model: nn.Module, example_inputs: tuple, path: str | Path) -> Path:
    """Export ``model`` (quantized layers as their float selves) to ONNX at ``path``, with a
    symbolic batch dimension on every input."""
    float_model = float_copy(model).eval()
    names = [f"input{k}" if len(example_inputs) > 1 else "input" for k in range(len(example_inputs))]
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(float_model, tuple(example_inputs), str(path), dynamo=False, do_constant_folding=False,
                          opset_version=17, input_names=names, dynamic_axes={n: {0: "batch"} for n in names})
    return Path(path)


def float_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every quantized layer replaced by its float self (same
    weights; learned steps dropped); ``model`` is not changed."""
    import copy

    model = copy.deepcopy(model)
    for path in bits_of(model):
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, plain(getattr(parent, name)))
    return model


def from_torch(model: nn.Module, example_inputs: tuple, *, path: str | Path | None = None,
               pin_first: int | None = 8, pin_last: int | None = 8) -> tuple[LayerGraph, dict[str, str]]:
    """Export ``model`` (to ``path``, else a temporary file), build its LayerGraph and return it with
    the map layer name -> module path (see :func:`layer_modules`)."""
    target = path
    if path is None:
        fd, target = tempfile.mkstemp(suffix=".onnx")
        os.close(fd)
    try:
        export_onnx(model, example_inputs, target)
        graph = load_graph(target, pin_first=pin_first, pin_last=pin_last)
        mapping = layer_modules(graph, model, example_inputs)
        if path is None:
            _detach_from_file(graph)
    finally:
        if path is None:
            os.unlink(target)
    return graph, mapping


def _detach_from_file(graph: LayerGraph) -> None:
    graph.model.path = None


def layer_modules(graph: LayerGraph, model: nn.Module, example_inputs: tuple | None = None) -> dict[str, str]:
    """Layer name -> module path: every layer with a weight to its Conv2d/Linear module, by
    parameter name, else by the order in which modules run (checked by weight shape); every
    layer without a weight to its MatMul module, by the module scope in the node's name, else
    by the order in which MatMul modules run. Weightless layers of a model without MatMul
    modules (a bare ``torch.matmul``) are absent from the map."""
    modules = dict(model.named_modules())
    mapping, unresolved = _by_name([l for l in graph.layers if l.weight is not None], modules,
                                   lambda l: l.weight[: -len(".weight")] if l.weight.endswith(".weight") else None,
                                   LAYER_MODULES + QUANTIZED, "torch module of the same weight name", example_inputs)
    if unresolved:
        order = _execution_order(model, example_inputs, LAYER_MODULES + QUANTIZED)
        remaining = [p for p in order if p not in mapping.values() and not isinstance(modules[p], MatMul)]
        for layer, path in zip(unresolved, remaining):
            weight = modules[path].weight
            if sorted(weight.shape) != sorted(layer.weight_shape or []):
                raise MpqError(f"cannot map layer '{layer.name}' (weight {layer.weight_shape}) to a module: "
                               f"the next module to run, '{path}', has weight {list(weight.shape)}")
            mapping[layer.name] = path
        if len(remaining) < len(unresolved):
            raise MpqError(f"{len(unresolved) - len(remaining)} layers have no Conv2d/Linear module in the model")
    mapping.update(_matmul_modules(graph, model, modules, example_inputs))
    return mapping


def _matmul_modules(graph: LayerGraph, model: nn.Module, modules: dict[str, nn.Module],
                    example_inputs: tuple | None) -> dict[str, str]:
    """Weightless layer name -> MatMul module path (see :func:`layer_modules`)."""
    matmuls = [p for p, m in modules.items() if isinstance(m, MatMul)]
    weightless = [l for l in graph.layers if l.weight is None]
    if not matmuls or not weightless:
        return {}
    mapping, unresolved = _by_name(weightless, modules,
                                   lambda l: l.name.strip("/").rpartition("/")[0].replace("/", "."),
                                   (MatMul,), "MatMul module of the same scope", example_inputs)
    if unresolved:
        remaining = [p for p in _execution_order(model, example_inputs, (MatMul,)) if p not in mapping.values()]
        if len(remaining) != len(unresolved):
            raise MpqError(f"the model runs {len(remaining)} unmapped MatMul modules for {len(unresolved)} "
                           f"activation x activation layers (e.g. '{unresolved[0].name}'); write every such "
                           "product as a planner.quant.lsq.MatMul module, and only those")
        mapping.update((layer.name, path) for layer, path in zip(unresolved, remaining))
    return mapping


def _by_name(layers: list, modules: dict[str, nn.Module], path_of, kinds: tuple, what: str,
             example_inputs: tuple | None) -> tuple[dict[str, str], list]:
    """Map each layer to the module at ``path_of(layer)`` where that is one of ``kinds``: the map
    layer name -> module path, and the layers left unmapped (in order). Raises MpqError when some
    are left and there are no ``example_inputs`` to map them by execution order (``what``: the
    module they lack, for the message)."""
    mapping, unresolved = {}, []
    for layer in layers:
        path = path_of(layer)
        if path in modules and isinstance(modules[path], kinds):
            mapping[layer.name] = path
        else:
            unresolved.append(layer)
    if unresolved and example_inputs is None:
        raise MpqError(f"layer '{unresolved[0].name}' has no {what}; export the model with "
                       "planner.quant.torchmap.from_torch so that names are kept")
    return mapping, unresolved


def require_modules(graph: LayerGraph, mapping: dict[str, str], layers=None) -> None:
    """Raise MpqError when a layer (of ``layers``, default: every layer of a free group) has no
    torch module: torch could neither run it at its planned bits nor measure its gain."""
    names = layers if layers is not None else [n for g in graph.free_groups for n in g.layers]
    missing = [n for n in names if n not in mapping]
    if missing:
        raise MpqError(f"layer '{missing[0]}' ({len(missing)} in all) has no torch module, so torch cannot run or "
                       "measure it at planned bits; write activation x activation products as "
                       "planner.quant.lsq.MatMul modules (or pin those layers)")


def _execution_order(model: nn.Module, example_inputs: tuple, kinds: tuple) -> list[str]:
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, a, o, p=p: order.append(p))
               for p, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def bits_by_module(graph: LayerGraph, mapping: dict[str, str], bits_by_layer: dict[str, int]) -> dict[str, int]:
    """Module path -> bits from per-layer bits (a plan's; layers not named, or None, stay float;
    a module shared by two layers must get one precision). Raises MpqError when a layer with
    bits has no module (torch would run it in float while the plan costs it at its bits)."""
    require_modules(graph, mapping, [n for n, b in bits_by_layer.items() if b is not None])
    out: dict[str, int] = {}
    for layer_name, path in mapping.items():
        bits = bits_by_layer.get(layer_name)
        if bits is None:
            continue
        if out.get(path, bits) != bits:
            raise MpqError(f"module '{path}' runs as two layers planned at {out[path]} and {bits} bits; "
                           "a shared module needs one precision")
        out[path] = bits
    return out
