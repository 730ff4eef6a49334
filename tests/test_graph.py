"""ONNX -> LayerGraph on real architectures exported by both torch exporters."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from archs import count_macs_params
from conftest import EXPORTERS, export
from planner import MpqError, load_graph


def _assert_counts_match(graph, module, inputs):
    macs, params = count_macs_params(module, inputs)
    totals = graph.totals()
    assert totals["macs"] == pytest.approx(macs, rel=1e-3)
    assert totals["params"] == pytest.approx(params, rel=1e-3)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_resnet50_layers_groups_and_pins(exported, built, exporter):
    graph = load_graph(exported("resnet50", exporter))
    totals = graph.totals()
    assert (totals["layers"], totals["groups"], totals["pinned_groups"]) == (54, 50, 2)
    shared = [g for g in graph.groups if len(g.layers) == 2]
    assert len(shared) == 4  # the four bottlenecks with a downsample: conv1 + downsample conv
    for group in shared:
        shapes = sorted(graph.layer(n).weight_shape[1:] for n in group.layers)
        assert all(s[-2:] == [1, 1] for s in shapes)  # both are 1x1 convs on the block input
    stem, fc = graph.layers[0], graph.layers[-1]
    assert stem.op_type == "Conv" and stem.weight_shape == [64, 3, 7, 7] and stem.pinned_bits == 8
    assert fc.op_type == "Gemm" and fc.weight_shape == [1000, 2048] and fc.pinned_bits == 8
    assert [g.id for g in graph.groups if g.pinned_bits] == [stem.group, fc.group]
    _assert_counts_match(graph, *built("resnet50"))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_resnet18(exported, built, exporter):
    graph = load_graph(exported("resnet18", exporter))
    assert (len(graph.layers), len(graph.groups)) == (21, 18)
    _assert_counts_match(graph, *built("resnet18"))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_bert_qkv_groups_and_attention_matmuls(exported, built, exporter):
    graph = load_graph(exported("bert", exporter))
    weightless = [l for l in graph.layers if l.weight is None]
    assert len(weightless) == 24 and all(l.op_type == "MatMul" for l in weightless)
    assert all(l.params == 0 and l.macs == 12 * 128 * 128 * 64 for l in weightless)
    qkv = [g for g in graph.groups if len(g.layers) == 3]
    assert len(qkv) == 12
    for group in qkv:
        assert all(graph.layer(n).weight_shape == [768, 768] for n in group.layers)
    assert len(graph.layers) == 12 * 8 and len(graph.groups) == 12 * 6
    pinned = [g for g in graph.groups if g.pinned_bits]
    assert len(pinned) == 2 and pinned[0] is qkv[0]  # first block's Q/K/V and the last FFN output
    _assert_counts_match(graph, *built("bert"))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mobilenet_depthwise(exported, built, exporter):
    graph = load_graph(exported("mobilenet", exporter))
    depthwise = [l for l in graph.layers if l.weight_shape and l.op_type == "Conv" and l.weight_shape[1] == 1
                 and l.weight_shape[2:] == [3, 3]]
    assert len(depthwise) == 5
    assert len(graph.layers) == 17
    _assert_counts_match(graph, *built("mobilenet"))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_inception_branches_share_the_block_input(exported, built, exporter):
    graph = load_graph(exported("inception", exporter))
    # b1, b2's 1x1, b3's 1x1 and b4's conv (behind MaxPool) all read the stem output
    branch_group = graph.group_of(graph.layers[1].name)
    assert len(branch_group.layers) == 4
    assert len(graph.layers) == 9 and len(graph.groups) == 6
    _assert_counts_match(graph, *built("inception"))


def test_no_pin_and_custom_pin_bits(exported):
    path = exported("resnet18")
    assert all(g.pinned_bits is None for g in load_graph(path, pin_first=None, pin_last=None).groups)
    pinned = [g.pinned_bits for g in load_graph(path, pin_first=4, pin_last=None).groups if g.pinned_bits]
    assert pinned == [4]


def test_modelproto_and_external_data(exported, tmp_path):
    path = exported("resnet18")
    reference = load_graph(path).to_json()
    proto = onnx.load(str(path))
    assert load_graph(proto).totals() == load_graph(path).totals()
    onnx.save(proto, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    graph = load_graph(tmp_path / "m.onnx")
    assert graph.to_json()["layers"] == reference["layers"]
    assert graph.tensors.array("conv1.weight" if "conv1.weight" in graph.tensors else graph.layers[0].weight).shape == (64, 3, 7, 7)


def _linear_model(weight_node_chain: str) -> onnx.ModelProto:
    """x(1x16) @ W with W given in different ways, as exporters other than torch write them."""
    w = numpy_helper.from_array(torch.randn(8, 16).numpy(), "W")
    nodes, inits = [], []
    if weight_node_chain == "constant":
        nodes.append(helper.make_node("Constant", [], ["Wt"], value=numpy_helper.from_array(torch.randn(16, 8).numpy())))
    elif weight_node_chain == "transpose":
        inits.append(w)
        nodes.append(helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]))
    elif weight_node_chain == "dequantize":
        q = numpy_helper.from_array(torch.randint(-8, 8, (16, 8), dtype=torch.int8).numpy(), "Wq")
        inits += [q, numpy_helper.from_array(torch.tensor(0.05).numpy(), "Ws")]
        nodes.append(helper.make_node("DequantizeLinear", ["Wq", "Ws"], ["Wt"]))
    elif weight_node_chain == "computed":
        inits += [numpy_helper.from_array(torch.randn(16, 8).numpy(), "W0"),
                  numpy_helper.from_array(torch.tensor(2.0).numpy(), "two")]
        nodes.append(helper.make_node("Mul", ["W0", "two"], ["Wt"]))
    nodes.append(helper.make_node("MatMul", ["x", "Wt"], ["h"], name="fc1"))
    nodes.append(helper.make_node("Relu", ["h"], ["r"]))
    inits.append(numpy_helper.from_array(torch.randn(8, 4).numpy(), "W2"))
    nodes.append(helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("chain,root,scale", [("constant", "Wt", None), ("transpose", "W", None),
                                               ("dequantize", "Wq", "Ws"), ("computed", "Wt", None)])
def test_weights_behind_constants_and_ops(chain, root, scale):
    graph = load_graph(_linear_model(chain))
    fc1 = graph.layer("fc1")
    assert (fc1.weight, fc1.weight_scale, fc1.params, fc1.macs) == (root, scale, 128, 128)
    assert graph.layer("fc2").macs == 32


def test_symbolic_dims_need_input_shapes(tmp_path):
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.fc(x).relu()

    path = export(Encoder().eval(), (torch.randn(1, 5, 16),), tmp_path / "dyn.onnx", "torchscript",
                  input_names=["tokens"], dynamic_axes={"tokens": {0: "batch", 1: "seq"}})
    with pytest.raises(MpqError, match=r"input 'tokens' dimension 1 \('seq'\)"):
        load_graph(path)
    graph = load_graph(path, {"tokens": (1, 7, 16)})
    assert graph.layers[0].macs == 7 * 16 * 8
    assert graph.model.input_shapes == {"tokens": [1, 7, 16]}


def test_inspect_json_is_deterministic(exported, tmp_path):
    from planner.cli.commands import run
    import contextlib
    import io

    outputs = []
    for _ in range(2):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert run(["inspect", str(exported("resnet50")), "--json"]) == 0
        outputs.append(buffer.getvalue())
    assert outputs[0] == outputs[1]
    doc = json.loads(outputs[0])
    assert doc["totals"]["layers"] == 54 and doc["totals"]["groups"] == 50
    assert set(doc["layers"][0]) >= {"name", "op_type", "weight", "weight_shape", "params", "macs", "input",
                                     "in_elems", "out_elems", "group", "pinned_bits"}


def _resize_model() -> onnx.ModelProto:
    """A Resize whose sizes come from float arithmetic on Shape: ONNX inference stops there."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "factor")]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["y"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["y"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sf", "factor"], ["scaled"]),
        helper.make_node("Sqrt", ["scaled"], ["root"]),
        helper.make_node("Mul", ["root", "root"], ["squared"]),
        helper.make_node("Round", ["squared"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["sizes"], to=TensorProto.INT64),
        helper.make_node("Resize", ["y", "", "", "sizes"], ["z"], mode="nearest"),
        helper.make_node("Conv", ["z", "W2"], ["out"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_shapes_computed_at_run_time_are_measured_in_onnxruntime():
    """The layer after a Resize that ONNX inference cannot size is sized by running the model once."""
    graph = load_graph(_resize_model())
    assert graph.layer("conv2").macs == 4 * 32 * 32 * 8 * 9


def test_minus_one_dims_are_symbolic(exported, built, tmp_path):
    """Paddle writes unknown dimensions as dim_value -1: they take --input-shape like dim_params."""
    model = onnx.load(str(exported("resnet18")))
    for d in model.graph.input[0].type.tensor_type.shape.dim:
        if d.dim_value != 3:
            d.dim_value = -1
    onnx.save(model, str(tmp_path / "paddle_like.onnx"))
    with pytest.raises(MpqError, match=r"input '.*' dimension 2 \(unnamed\) is symbolic"):
        load_graph(tmp_path / "paddle_like.onnx")
    graph = load_graph(tmp_path / "paddle_like.onnx", {model.graph.input[0].name: (1, 3, 224, 224)})
    assert graph.to_json()["layers"] == load_graph(exported("resnet18")).to_json()["layers"]
    _assert_counts_match(graph, *built("resnet18"))


@pytest.mark.parametrize("where", ["onnx.shape_inference.infer_shapes", "onnxruntime.InferenceSession.run"])
def test_a_bug_inside_shape_inference_stays_a_bug(monkeypatch, where):
    """Only errors about the model become MpqError (exit 2): a programming error injected into the
    shape machinery must surface as itself, with its traceback."""
    import onnxruntime

    def broken(*args, **kwargs):
        raise ZeroDivisionError("injected")

    if where.startswith("onnx."):
        monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
        model = _linear_model("transpose")
    else:
        monkeypatch.setattr(onnxruntime.InferenceSession, "run", broken)
        model = _resize_model()  # its second conv is sized by running the model
    with pytest.raises(ZeroDivisionError):
        load_graph(model)


def test_large_weights_are_read_from_the_file_as_onnx_reads_them(exported):
    """The reader leaves large weights in the .onnx file (external data at their own offset) and
    parses only the graph: every weight reads back as onnx.load gives it, and the graph is the
    one a ModelProto in memory gives."""
    path = exported("resnet18")
    graph = load_graph(path)
    model = onnx.load(str(path))
    left_in_file = {t.name for t in graph.tensors.tensors.values() if t.data_location == TensorProto.EXTERNAL}
    assert left_in_file == {t.name for t in model.graph.initializer if len(t.raw_data) > 32 * 1024}
    assert len(left_in_file) >= 17  # the 3x3 convs of 64 channels and up, and the fc
    for tensor in model.graph.initializer:
        assert np.array_equal(np.asarray(graph.tensors.array(tensor.name)), numpy_helper.to_array(tensor)), tensor.name
    assert graph.to_json()["layers"] == load_graph(model).to_json()["layers"]


def test_a_model_reached_through_a_symbolic_link(exported, tmp_path):
    """Caches such as Hugging Face's link the model file to a blob elsewhere: weights left in the
    .onnx file are read through the link."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc123").write_bytes(exported("resnet18").read_bytes())
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "model.onnx").symlink_to(blobs / "abc123")
    graph = load_graph(tmp_path / "snapshot" / "model.onnx")
    assert graph.to_json()["layers"] == load_graph(exported("resnet18")).to_json()["layers"]
    first = graph.layers[0].weight
    assert np.array_equal(graph.tensors.array(first), load_graph(exported("resnet18")).tensors.array(first))


@pytest.mark.parametrize("dynamic", [False, True])
def test_transformers_bert_shapes_need_no_onnxruntime_run(tmp_path, monkeypatch, dynamic):
    """transformers' BERT with an attention mask builds the Expand shapes of its embeddings and
    mask from Where/ConstantOfShape on constants and, exported with dynamic axes, its Slice bounds
    from Shape(input_ids): ONNX inference alone follows neither. mpq folds those shape operands
    and infers every layer's shape without running the model (onnxruntime's run is made to fail
    here). The MACs equal the architecture's arithmetic."""
    import onnxruntime
    import torch
    from transformers import BertConfig

    from archs import hf_bert
    from conftest import export

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    model = hf_bert(config)
    seq = 16
    mask = torch.ones(1, seq, dtype=torch.long)
    mask[0, 12:] = 0
    names = ["input_ids", "attention_mask"]
    axes = {"dynamic_axes": {n: {0: "batch", 1: "seq"} for n in names}, "opset_version": 17} if dynamic else {}
    with torch.no_grad():
        path = export(model, (torch.randint(0, 100, (1, seq)), mask), tmp_path / "bert.onnx", "torchscript",
                      input_names=names, **axes)

    def no_run(*args, **kwargs):
        raise AssertionError("the model was run to measure shapes")

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", no_run)
    graph = load_graph(path, {n: (1, seq) for n in names})
    hidden, ffn, heads = 32, 64, 4
    dense, attention = seq * hidden * hidden, heads * seq * seq * (hidden // heads)
    expected = {"attention/self/query/MatMul": dense, "attention/self/key/MatMul": dense,
                "attention/self/value/MatMul": dense, "attention/self/MatMul": attention,  # Q K^T
                "attention/self/MatMul_1": attention, "attention/output/dense/MatMul": dense,  # P V
                "intermediate/dense/MatMul": seq * hidden * ffn, "output/dense/MatMul": seq * ffn * hidden}
    names = [l.name.split("/", 4)[-1] for l in graph.layers]  # /inner/encoder/layer.N/<name>
    assert names == list(expected) * 2
    assert [l.macs for l in graph.layers] == list(expected.values()) * 2


def test_model_digest_hashed_in_the_background_is_the_file_sha256(exported):
    """load_graph hashes the file on a background thread: the digest, read later, pickled or
    copied, is hashlib's sha256 of the file's bytes."""
    import copy
    import hashlib
    import pickle

    path = exported("resnet18")
    graph = load_graph(path)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert pickle.loads(pickle.dumps(graph.model)).sha256 == expected
    assert graph.model.sha256 == copy.deepcopy(graph.model).sha256 == expected
    assert graph.to_json()["model"]["sha256"] == expected
