"""Fold the affine ops a compiler folds into the weights before they are quantized, so the
exported levels are the ones that run: BatchNormalization (inference form) and Mul / Add by a
constant that is one value per output channel (or one value), directly after a Conv or a
ConvTranspose (one group) whose output nothing else reads. The Conv takes the op's output name,
its weight becomes weight * factor per output channel and its bias bias * factor + shift.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from planner.export.qdq import Fold

_FOLDABLE = ("BatchNormalization", "Mul", "Add")


def fold_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Fold]]:
    """A copy of ``model`` with every foldable op folded, and per folded weight (initializer
    name) its :class:`Fold` (the weight before any fold and the product of the factors)."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    folds: dict[str, Fold] = {}
    touched: set[str] = set()
    while _fold_one(folded, folds, touched):
        pass
    _prune(folded.graph, touched)
    return folded, folds


def _prune(g: onnx.GraphProto, names: set[str]) -> None:
    """Remove the Identity nodes and initializers among ``names`` that nothing reads any more,
    and the graph inputs that list those initializers (IR 3 lists every initializer as an input:
    left behind, they become inputs the model must be fed)."""
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type == "Identity" and n.output[0] in names and n.output[0] not in used]
        for n in dead:
            names.add(n.input[0])
            g.node.remove(n)
        if not dead:
            break
    dropped = {t.name for t in g.initializer if t.name in names and t.name not in used}
    for t in [t for t in g.initializer if t.name in dropped]:
        g.initializer.remove(t)
    for value in [v for v in g.input if v.name in dropped]:
        g.input.remove(value)


def _fold_one(model: onnx.ModelProto, folds: dict[str, Fold], touched: set[str]) -> bool:
    g = model.graph
    init = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for o in g.output:
        uses[o.name] = uses.get(o.name, 0) + 1
    for node in g.node:
        if node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        inputs = list(node.input)
        if node.op_type == "BatchNormalization":
            x, params = inputs[0], inputs[1:5]
            if len(params) != 4 or not all(_constant(p, producers, init) for p in params):
                continue
        else:
            params = [i for i in inputs if _constant(i, producers, init)]
            if len(params) != 1:
                continue
            x = next(i for i in inputs if i not in params)
        conv = producers.get(x)
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or uses.get(x) != 1:
            continue
        weight = _stored(conv.input[1], producers, init, uses)
        if weight is None or any(a.name == "group" and a.i > 1 for a in conv.attribute if conv.op_type == "ConvTranspose"):
            continue
        w = numpy_helper.to_array(init[weight])
        if w.dtype != np.float32:
            continue
        axis = 0 if conv.op_type == "Conv" else 1
        channels = w.shape[axis]
        if node.op_type == "BatchNormalization":
            scale, shift, mean, var = (_value(p, producers, init).astype(np.float64) for p in params)
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            factor = scale / np.sqrt(var + eps)
            shift = shift - mean * factor
        else:
            c = _per_channel(_value(params[0], producers, init), channels, w.ndim)
            if c is None:
                continue
            factor, shift = (c, np.zeros(channels)) if node.op_type == "Mul" else (np.ones(channels), c)
        bias_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if bias_name is not None and (bias_name not in init or uses.get(bias_name) != 1):
            continue
        bias = numpy_helper.to_array(init[bias_name]).astype(np.float64) if bias_name else np.zeros(channels)
        shape = [1] * w.ndim
        shape[axis] = channels
        new_w = (w * factor.reshape(shape)).astype(np.float32)
        if weight in folds:
            folds[weight].factor = folds[weight].factor * factor
        else:
            folds[weight] = Fold(original=w, factor=factor.copy(), axis=axis)
        init[weight].CopyFrom(numpy_helper.from_array(new_w, weight))
        new_bias = (bias * factor + shift).astype(np.float32)
        if bias_name:
            init[bias_name].CopyFrom(numpy_helper.from_array(new_bias, bias_name))
        else:
            bias_name = f"{weight}_folded_bias"
            g.initializer.append(numpy_helper.from_array(new_bias, bias_name))
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = bias_name
        conv.output[0] = node.output[0]
        g.node.remove(node)
        touched.update(params)
        return True
    return False


def _constant(name: str, producers: dict, init: dict) -> bool:
    """Whether ``name`` is an initializer, possibly behind Identity ops."""
    while name not in init:
        node = producers.get(name)
        if node is None or node.op_type != "Identity":
            return False
        name = node.input[0]
    return True


def _value(name: str, producers: dict, init: dict) -> np.ndarray:
    while name not in init:
        name = producers[name].input[0]
    return numpy_helper.to_array(init[name])


def _stored(operand: str, producers: dict, init: dict, uses: dict) -> str | None:
    """The initializer behind a weight operand through Identity ops, if only this path reads it."""
    name = operand
    while name not in init:
        node = producers.get(name)
        if node is None or node.op_type != "Identity" or uses.get(name) != 1:
            return None
        name = node.input[0]
    return name if uses.get(name) == 1 else None


def _per_channel(c: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``c`` as one value per output channel when it broadcasts over (N, C, ...) that way."""
    if c.size == 1:
        return np.full(channels, float(c.reshape(())))
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if shape[1] != channels or any(d != 1 for k, d in enumerate(shape) if k != 1):
        return None
    return c.reshape(channels).astype(np.float64)
