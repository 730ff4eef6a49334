"""Exports a compiler or runtime reads: standard QDQ (the element types carry the plan's bits),
onnxruntime TensorQuantOverrides and AIMET encodings, each checked in onnxruntime against the
float or torch network."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from conftest import export
from planner import load_graph
from planner.qdq import qdq_model
from planner.workflow import calibrate


class Attention(nn.Module):
    """One head of self-attention with an output projection: Q·Kᵀ and P·V are MatMuls of two
    activations; P (softmax) is non-negative, V is signed."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        return self.out(p @ v)


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    torch.manual_seed(0)
    model = Attention().eval()
    path = export(model, (torch.randn(2, 16, 32),), tmp_path_factory.mktemp("attention") / "attention.onnx",
                  "torchscript", input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    x = torch.randn(64, 16, 32)
    with torch.no_grad():
        reference = model(x).numpy()
    return path, x.numpy(), reference


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_attention_matmuls_quantize_each_input_with_its_own_step_and_sign(attention):
    """At 8 bits everywhere, quantizing the activations adds little error to the weights' own
    (issue 11 item 3: P·V took P's unsigned quantizer for V and clipped V's negative half)."""
    path, x, reference = attention
    graph = load_graph(path, pin_first=None, pin_last=None)
    bits = {l.name: 8 for l in graph.layers}
    two_inputs = [l for l in graph.layers if l.weight is None]
    assert len(two_inputs) == 2
    steps = calibrate(graph, bits, [(x[:32],)])
    pv = two_inputs[1]
    (p_step, p_signed), (v_step, v_signed) = steps[pv.name]
    assert not p_signed and v_signed and p_step != v_step
    weights_only = np.abs(_run(qdq_model(graph, bits), x) - reference).max()
    everything = np.abs(_run(qdq_model(graph, bits, activation_steps=steps), x) - reference).max()
    print(f"8-bit attention: max output error {weights_only:.4f} weights only, {everything:.4f} with activations")
    assert everything < 3 * weights_only
