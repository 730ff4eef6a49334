"""Cross-check mpq's per-layer counts on single-op ONNX models against onnxruntime and hand formulas.

    python benchmarks/check_counts.py

Each model is one layer op built with onnx.helper (Conv with groups, dilations, strides, pads and
auto_pad, 1-D to 3-D; ConvTranspose with groups, output_padding, output_shape and auto_pad; Gemm
with transA/transB, alpha/beta and broadcast biases, weight on either side; MatMul 1-D to 4-D
with broadcast batches, weight on either side or none; two-operand Einsum; onnxruntime's
FusedMatMul / FusedGemm). onnxruntime runs each model on all-ones inputs and weights: its output
shape is the layer's output, and, with every operand 1, each output element equals the number of
products summed into it, so output elements x that value is the MAC count, with no formula of
ours involved. Convolutions sum fewer products at padded borders (and ConvTranspose's overlaps
vary), so their MACs come from the hand formulas (output elements x C/g x kernel elements; input
elements x M/g x kernel elements, every kernel tap counted) and their output shapes from
onnxruntime. Prints one line per model and exits 1 on any disagreement. About 5 s.
"""
from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from planner.graph import load_graph


def _model(op: str, x_shape, w_shape, weight_first: bool = False, domain: str = "", extra=(), **attrs):
    """A one-node model: activation ``x`` (graph input) and weight ``w`` (initializer of ones, or a
    second graph input when ``w_shape`` is given as ('input', shape))."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    inits = []
    if w_shape[0] == "input":
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w_shape[1])))
    else:
        inits.append(numpy_helper.from_array(np.ones(w_shape, np.float32), "w"))
    for name, value in extra:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    operands = ["w", "x"] if weight_first else ["x", "w"]
    node = helper.make_node(op, operands + [name for name, _ in extra], ["y"], name="layer", domain=domain, **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def cases():
    """(label, model, hand-formula MACs or None)."""
    for label, n, c, sp, m, k, g, s, d, pads, auto in [
        ("conv2d groups dilation stride pads", 2, 6, [17, 19], 8, [3, 5], 2, [2, 1], [2, 1], [1, 2, 0, 1], None),
        ("conv2d SAME_UPPER", 1, 4, [17, 18], 6, [4, 3], 1, [2, 3], [1, 1], None, "SAME_UPPER"),
        ("conv2d SAME_LOWER", 1, 4, [17, 18], 6, [4, 2], 1, [3, 2], [1, 1], None, "SAME_LOWER"),
        ("conv2d VALID dilated", 1, 4, [17, 18], 6, [4, 3], 1, [2, 3], [2, 1], None, "VALID"),
        ("conv2d depthwise", 1, 16, [14, 14], 16, [3, 3], 16, [2, 2], [1, 1], [1, 1, 1, 1], None),
        ("conv2d depth multiplier 2", 1, 8, [14, 14], 16, [3, 3], 8, [1, 1], [1, 1], [1, 1, 1, 1], None),
        ("conv1d", 3, 4, [50], 8, [7], 1, [3], [2], [2, 1], None),
        ("conv3d", 1, 3, [8, 9, 10], 4, [3, 3, 2], 1, [1, 2, 2], [1, 1, 1], [1, 1, 0, 1, 1, 1], None),
    ]:
        attrs = {"group": g, "strides": s, "dilations": d, "kernel_shape": k}
        attrs.update({"auto_pad": auto} if auto else {"pads": pads})
        model = _model("Conv", [n, c, *sp], (m, c // g, *k), **attrs)
        yield label, model, lambda y, c=c, g=g, k=k: y.size * (c // g) * math.prod(k)
    for label, n, c, sp, m, k, g, s, d, extra in [
        ("convT2d groups stride output_padding", 2, 6, [7, 9], 8, [3, 4], 2, [2, 3], [1, 1],
         {"pads": [1, 0, 1, 2], "output_padding": [1, 2]}),
        ("convT2d dilated", 1, 4, [5, 6], 6, [3, 3], 1, [2, 2], [2, 1], {"pads": [1, 1, 1, 1]}),
        ("convT1d", 1, 4, [10], 2, [4], 1, [2], [1], {"pads": [1, 1]}),
        ("convT3d", 1, 2, [3, 4, 5], 4, [2, 2, 2], 1, [2, 2, 2], [1, 1, 1], {}),
        ("convT2d SAME_UPPER", 1, 4, [5, 6], 6, [3, 3], 1, [2, 2], [1, 1], {"auto_pad": "SAME_UPPER"}),
        ("convT2d SAME_LOWER", 1, 4, [5, 6], 6, [3, 4], 1, [2, 3], [1, 1], {"auto_pad": "SAME_LOWER"}),
        ("convT2d output_shape", 1, 4, [5, 6], 6, [3, 3], 1, [3, 3], [1, 1], {"output_shape": [16, 19]}),
    ]:
        model = _model("ConvTranspose", [n, c, *sp], (c, m // g, *k), group=g, strides=s, dilations=d, kernel_shape=k,
                       **extra)
        yield label, model, lambda y, n=n, c=c, sp=sp, m=m, g=g, k=k: n * c * math.prod(sp) * (m // g) * math.prod(k)
    for ta, tb in itertools.product([0, 1], repeat=2):
        a, b = ((10, 3) if ta else (3, 10)), ((7, 10) if tb else (10, 7))
        for bias in [(7,), (1, 7), (3, 7), (1,)]:
            yield (f"gemm transA={ta} transB={tb} bias {bias}", _model("Gemm", a, b, extra=[("c", np.ones(bias))],
                                                                      transA=ta, transB=tb, alpha=0.5, beta=2.0), None)
        yield f"gemm weight A transA={ta} transB={tb}", _model("Gemm", b, a, weight_first=True, transA=ta, transB=tb), None
        yield f"FusedGemm transA={ta} transB={tb}", _model("FusedGemm", a, b, domain="com.microsoft", transA=ta,
                                                           transB=tb, activation="Relu"), None
    for x, w, first in [((4, 16), (16, 8), False), ((2, 5, 16), (16, 8), False), ((2, 16, 5), (8, 16), True),
                        ((16,), (16, 8), False), ((2, 5, 16), (16,), False), ((16,), (16,), False),
                        ((16,), (3, 16, 8), False), ((3, 16, 5), (16,), True),
                        ((2, 1, 5, 16), ("input", (3, 16, 7)), False), ((1, 4, 10, 8), ("input", (1, 4, 8, 10)), False)]:
        yield f"matmul {x} x {w}" + (" weight left" if first else ""), _model("MatMul", x, w, weight_first=first), None
    for equation, x, w in [("bsk,nk->bsn", (2, 5, 16), (8, 16)), ("bhqd,bhkd->bhqk", (2, 4, 6, 8), ("input", (2, 4, 7, 8))),
                           ("ij,jk", (3, 5), (5, 4)), ("...k,kn->...n", (2, 3, 5), (5, 4)),
                           ("abcd,cde->abe", (2, 6, 4, 8), (4, 8, 16)), ("bij,bjk", (2, 3, 5), ("input", (2, 5, 4)))]:
        yield f"einsum {equation}", _model("Einsum", x, w, equation=equation), None
    for ta, tb in itertools.product([0, 1], repeat=2):
        x, w = ((2, 3, 5, 4) if ta else (2, 3, 4, 5)), ((2, 3, 6, 5) if tb else (2, 3, 5, 6))
        yield f"FusedMatMul transA={ta} transB={tb}", _model("FusedMatMul", x, w, domain="com.microsoft",
                                                             transA=ta, transB=tb, alpha=1.0), None


def main() -> int:
    bad = 0
    for label, model, formula in cases():
        feeds = {i.name: np.ones([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32) for i in model.graph.input}
        if any("c" == t.name for t in model.graph.initializer):  # Gemm: a zero bias keeps the count exact
            model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(
                np.zeros(numpy_helper.to_array(model.graph.initializer[-1]).shape, np.float32), "c"))
        y = np.asarray(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0])
        alpha = next((a.f for a in model.graph.node[0].attribute if a.name == "alpha"), 1.0)
        summed = round(float(y.flat[0]) / alpha)
        layer = load_graph(model, {}, pin_first=None, pin_last=None).layers[0]
        want = {"macs": y.size * summed if formula is None else formula(y), "out_elems": y.size}
        got = {"macs": layer.macs, "out_elems": layer.out_elems}
        ok = got == want
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {label}: mpq {got}, expected {want}")
    print(f"{bad} disagreements")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
