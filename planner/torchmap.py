"""PyTorch <-> ONNX: export a module, read its LayerGraph and map ONNX layers to module paths.

The export keeps parameter names as initializer names (TorchScript exporter, no constant
folding, so batch norms are not folded into the weights), which maps a layer's weight
``layer1.0.conv1.weight`` to the module ``layer1.0.conv1``. Where a name does not resolve, layers
are matched to Conv2d/Linear modules in execution order by weight shape.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import MpqError
from .graph import LayerGraph, load_graph
from .quant.lsq import QUANTIZED, bits_of, plain

LAYER_MODULES = (nn.Conv2d, nn.Linear)


def export_onnx(model: nn.Module, example_inputs: tuple, path: str | Path) -> Path:
    """Export ``model`` (quantized layers as their float selves) to ONNX at ``path``, with a
    symbolic batch dimension on every input."""
    float_model = _float_copy(model).eval()
    names = [f"input{k}" if len(example_inputs) > 1 else "input" for k in range(len(example_inputs))]
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(float_model, tuple(example_inputs), str(path), dynamo=False, do_constant_folding=False,
                          opset_version=17, input_names=names, dynamic_axes={n: {0: "batch"} for n in names})
    return Path(path)


def _float_copy(model: nn.Module) -> nn.Module:
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
    the map layer name -> module path (layers without a module, e.g. attention MatMuls, are absent)."""
    if path is None:
        fd, tmp = tempfile.mkstemp(suffix=".onnx")
        os.close(fd)
        try:
            export_onnx(model, example_inputs, tmp)
            graph = load_graph(tmp, pin_first=pin_first, pin_last=pin_last)
            mapping = layer_modules(graph, model, example_inputs)
            _detach_from_file(graph)
        finally:
            os.unlink(tmp)
    else:
        export_onnx(model, example_inputs, path)
        graph = load_graph(path, pin_first=pin_first, pin_last=pin_last)
        mapping = layer_modules(graph, model, example_inputs)
    return graph, mapping


def _detach_from_file(graph: LayerGraph) -> None:
    graph.model.path = None


def layer_modules(graph: LayerGraph, model: nn.Module, example_inputs: tuple | None = None) -> dict[str, str]:
    """Layer name -> module path for every layer with a weight, by parameter name, else by the
    order in which modules run (checked by weight shape)."""
    modules = dict(model.named_modules())
    mapping: dict[str, str] = {}
    unresolved = []
    for layer in graph.layers:
        if layer.weight is None:
            continue
        path = layer.weight[: -len(".weight")] if layer.weight.endswith(".weight") else None
        if path in modules and isinstance(modules[path], LAYER_MODULES + QUANTIZED):
            mapping[layer.name] = path
        else:
            unresolved.append(layer)
    if unresolved:
        if example_inputs is None:
            raise MpqError(f"layer '{unresolved[0].name}' has no torch module of the same weight name; "
                           "export the model with planner.from_torch so that names are kept")
        order = _execution_order(model, example_inputs)
        remaining = [p for p in order if p not in mapping.values()]
        for layer, path in zip(unresolved, remaining):
            weight = modules[path].weight
            if sorted(weight.shape) != sorted(layer.weight_shape or []):
                raise MpqError(f"cannot map layer '{layer.name}' (weight {layer.weight_shape}) to a module: "
                               f"the next module to run, '{path}', has weight {list(weight.shape)}")
            mapping[layer.name] = path
        if len(remaining) < len(unresolved):
            raise MpqError(f"{len(unresolved) - len(remaining)} layers have no Conv2d/Linear module in the model")
    return mapping


def _execution_order(model: nn.Module, example_inputs: tuple) -> list[str]:
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, a, o, p=p: order.append(p))
               for p, m in model.named_modules() if isinstance(m, LAYER_MODULES + QUANTIZED)]
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def bits_by_module(graph: LayerGraph, mapping: dict[str, str], bits_by_layer: dict[str, int]) -> dict[str, int]:
    """Module path -> bits from a plan's per-layer bits (a module shared by two layers must get
    one precision)."""
    out: dict[str, int] = {}
    for layer_name, path in mapping.items():
        bits = bits_by_layer[layer_name]
        if out.get(path, bits) != bits:
            raise MpqError(f"module '{path}' runs as two layers planned at {out[path]} and {bits} bits; "
                           "a shared module needs one precision")
        out[path] = bits
    return out
