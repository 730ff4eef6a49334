"""Real models from several exporters, checked against an independent count.

The ONNX files come from PyPI wheels (installed by ``make test`` without their dependencies):
PaddleOCR's detector, recognizer and direction classifier exported by Paddle2ONNX
(``rapidocr-onnxruntime``; unknown dimensions stored as ``-1`` or ``?``), Google's Magika byte
classifier converted by tf2onnx (``magika``) and Silero's voice-activity detector exported by
PyTorch and by spox (``silero-vad``); and BERT (with an attention mask), GPT-2 and ViT built by
Hugging Face ``transformers`` from a small config with random weights and exported by
``torch.onnx``. The independent count walks the ONNX graph itself and takes every operand's
shape from running the model in onnxruntime: layers, weight elements (of the tensor the layer
consumes) and multiply-accumulates.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from conftest import assert_user_error, mpq
from planner import load_graph

LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def packaged(module: str, relative: str) -> Path:
    """A file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.submodule_search_locations, f"{module} is not installed (make test installs it)"
    return Path(spec.submodule_search_locations[0]) / relative


WHEEL_MODELS = {  # name: (package, file, input shapes)
    "paddle_cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": (1, 3, 48, 192)}),
    "paddle_rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 192)}),
    "paddle_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 64, 96)}),
    "tf2onnx_magika": ("magika", "models/standard_v3_3/model.onnx", {"bytes": (1, 2048)}),
    "torch_silero": ("silero_vad", "data/silero_vad_16k_sequence.onnx",
                     {"input": (1, 576), "h": (1, 1, 128), "c": (1, 1, 128)}),
    "spox_silero": ("silero_vad", "data/silero_vad_openvino_16k.onnx", {"input": (1, 576), "state": (2, 1, 128)}),
}


class _LastHidden(torch.nn.Module):
    """A transformers model called with keyword inputs, returning its last hidden state."""

    def __init__(self, inner: torch.nn.Module, keys: list[str]):
        super().__init__()
        self.inner, self.keys = inner, keys

    def forward(self, *args):
        return self.inner(**dict(zip(self.keys, args))).last_hidden_state


def _transformers_models():
    """(name, module, inputs, input names) of small random-weight transformers models."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, ViTConfig, ViTModel

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[0, 12:] = 0
    bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                vocab_size=1000, max_position_embeddings=64), add_pooling_layer=False)
    gpt2 = GPT2Model(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=64,
                                bos_token_id=0, eos_token_id=0))
    vit = ViTModel(ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             image_size=32, patch_size=8), add_pooling_layer=False)
    return [("hf_bert", bert, (ids, mask), ["input_ids", "attention_mask"]),
            ("hf_gpt2", gpt2, (ids, mask), ["input_ids", "attention_mask"]),
            ("hf_vit", vit, (torch.randn(1, 3, 32, 32),), ["pixel_values"])]


def _export_last_hidden(module, inputs: tuple, names: list[str], path: Path) -> None:
    """Export a transformers model's last hidden state (TorchScript exporter, opset 17, quietly),
    inputs named ``names``, batch and sequence dimensions dynamic (images: batch and size fixed)."""
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LastHidden(module, names).eval(), inputs, str(path), input_names=names,
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names if n != "pixel_values"},
                          dynamo=False, opset_version=17)


@pytest.fixture(scope="module")
def real_models(tmp_path_factory):
    """name -> (path, input shapes, torch module or None), the transformers ones exported once."""
    folder = tmp_path_factory.mktemp("real")
    models = {name: (packaged(pkg, rel), shapes, None) for name, (pkg, rel, shapes) in WHEEL_MODELS.items()}
    for name, module, inputs, names in _transformers_models():
        path = folder / f"{name}.onnx"
        _export_last_hidden(module, inputs, names, path)
        models[name] = (path, {n: tuple(x.shape) for n, x in zip(names, inputs)}, module)
    return models


def independent_count(path: Path, shapes: dict[str, tuple]) -> tuple[int, int, int]:
    """(layers, weight elements, MACs) by walking the graph, with shapes from onnxruntime.

    A layer is a Conv/ConvTranspose/Gemm/MatMul with at least one operand that depends on a graph
    input; its weight is the operand that does not (counted by the element count onnxruntime
    gives it), none for activation x activation MatMuls."""
    model = onnx.load(str(path))
    g = model.graph
    constant = {t.name for t in g.initializer}
    for node in g.node:
        inputs = [i for i in node.input if i]
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if node.op_type == "Constant" or (inputs and all(i in constant for i in inputs) and not has_subgraph):
            constant.update(node.output)
    layers = [n for n in g.node if n.op_type in LAYER_OPS and not all(i in constant for i in n.input[:2])]
    probes = sorted({t for n in layers for t in [*n.input[:2], n.output[0]]} - {o.name for o in g.output})
    g.output.extend(helper.make_empty_tensor_value_info(t) for t in probes)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    feeds = {i.name: np.ones(shapes[i.name], dtypes[i.type]) for i in session.get_inputs()}
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    params = macs = 0
    for node in layers:
        a, w = (values[t].shape for t in node.input[:2])
        out = values[node.output[0]].shape
        if node.op_type == "Conv":
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            macs += int(np.prod(a)) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            macs += int(np.prod(out)) * (a[0] if trans_a else a[-1])
        else:
            macs += int(np.prod(out)) * a[-1]
        weight = next((s for t, s in zip(node.input[:2], (a, w)) if t in constant), None)
        params += int(np.prod(weight)) if weight is not None else 0
    return len(layers), params, macs


def _torch_weight_count(module: torch.nn.Module) -> int:
    """Elements of the weights of the module's Linear, Conv and GPT-2 Conv1D layers."""
    return sum(m.weight.numel() for m in module.modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) or type(m).__name__ == "Conv1D")


NAMES = [*WHEEL_MODELS, "hf_bert", "hf_gpt2", "hf_vit"]


@pytest.mark.parametrize("name", NAMES)
def test_counts_match_an_independent_walk(real_models, name):
    path, shapes, module = real_models[name]
    graph = load_graph(path, shapes)
    totals = graph.totals()
    assert (totals["layers"], totals["params"], totals["macs"]) == independent_count(path, shapes)
    for layer in graph.layers:
        assert layer.params == (int(np.prod(layer.weight_shape)) if layer.weight else 0)
    if module is not None:
        assert totals["params"] == _torch_weight_count(module)
        assert sum(l.weight is None for l in graph.layers) == 2 * 2  # Q.K^T and P.V in each of 2 blocks


@pytest.mark.parametrize("name", NAMES)
def test_plan_on_real_models(real_models, name, tmp_path):
    from planner.cli.commands import run

    path, shapes, _ = real_models[name]
    out = tmp_path / "plan.json"
    args = ["plan", str(path), "--hw", "northpole", "--budget", "latency=0.5", "-o", str(out)]
    for input_name, shape in shapes.items():
        args += ["--input-shape", f"{input_name}={'x'.join(map(str, shape))}"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert run(args) == 0
    doc = json.loads(out.read_text())
    graph = load_graph(path, shapes)
    assert sorted(l["name"] for l in doc["layers"]) == sorted(l.name for l in graph.layers)
    assert {l["w_bits"] for l in doc["layers"]} <= {2, 4, 8}


def test_paddle_minus_one_dims_take_input_shapes(real_models, tmp_path):
    """The Paddle classifier stores its batch as -1 and its height and width as '?': as a user would."""
    path, _, _ = real_models["paddle_cls"]
    model = onnx.load(str(path), load_external_data=False)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1
    out = tmp_path / "plan.json"
    result = mpq("plan", path, "--input-shape", "x=1x3x48x192", "--hw", "northpole", "--budget", "latency=0.5",
                 "-o", out)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(out.read_text())["layers"]) == 54
    assert_user_error(mpq("inspect", path), "dimension 2", "--input-shape")


def test_transformer_with_computed_weights(real_models, tmp_path):
    """BERT's weights rewritten into ConstantOfShape producers: the same counts as stored."""
    from test_computed_weights import computed_copy

    path, shapes, module = real_models["hf_bert"]
    computed_copy(path, tmp_path / "computed.onnx", "constantofshape")
    stored, computed = load_graph(path, shapes).totals(), load_graph(tmp_path / "computed.onnx", shapes).totals()
    assert computed == stored and computed["params"] == _torch_weight_count(module)


def test_load_graph_memory_on_a_transformers_bert(tmp_path):
    """Peak memory of load_graph on a BERT exported by transformers with an attention mask (so that
    ONNX inference leaves shapes to onnxruntime) stays within 2x the weights: the weights are
    neither parsed into memory nor copied for onnxruntime. Measured in a fresh process."""
    import subprocess
    import sys

    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
                     add_pooling_layer=False)
    names = ["input_ids", "attention_mask"]
    inputs = (torch.randint(0, 30522, (1, 64)), torch.ones(1, 64, dtype=torch.long))
    path = tmp_path / "bert.onnx"
    _export_last_hidden(bert, inputs, names, path)
    weights = sum(p.numel() * 4 for p in bert.parameters())
    code = (
        "import sys\n"
        "def status(key):\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key))\n"
        "import planner, onnx, onnxruntime, numpy\n"
        "base = status('VmRSS')\n"
        "g = planner.load_graph(sys.argv[1], {'input_ids': (1, 64), 'attention_mask': (1, 64)})\n"
        "print(len(g.layers), status('VmHWM') - base)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    layers, peak = map(int, out.stdout.split())
    assert layers == 4 * 8
    assert peak <= 2 * weights, f"load_graph peak {peak / 2**20:.0f} MB for {weights / 2**20:.0f} MB of weights"


def test_a_model_whose_layers_all_sit_in_if_branches_says_so():
    """silero-vad's main model holds its whole network in the branches of an If (one per sample
    rate): mpq plans the main graph only, and said "no layers found ... nothing to plan", as if the
    model had none. Now the message counts the layer nodes inside the subgraphs and says what to do."""
    path = packaged("silero_vad", "data/silero_vad.onnx")
    result = mpq("inspect", path, "--input-shape", "input=1x512", "--input-shape", "state=2x1x128")
    assert_user_error(result, "no layers found", "its 12 such nodes sit inside If/Loop/Scan subgraphs",
                      "without control flow")
