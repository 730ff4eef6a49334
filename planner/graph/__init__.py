"""Stage 1, the layer graph: an ONNX file read into layers, their shapes and weights, and groups.

``load_graph(path)`` returns a ``LayerGraph``: the quantizable layers (Conv, Gemm, MatMul, ...)
with MACs, weight counts and activation shapes, joined into ``Group``s of layers that read the
same activation (one precision per group), first and last layers pinned. ``onnxfile`` reads the
file (external data, weights stored in Constant nodes or computed by ops), ``shapes`` infers
activation shapes, ``weights`` serves weight values on demand.
"""
from planner.graph.layers import Group, Layer, LayerGraph, load_graph

__all__ = ["Group", "Layer", "LayerGraph", "load_graph"]
