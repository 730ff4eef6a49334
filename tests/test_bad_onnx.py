"""Broken or hostile ONNX files: every command that reads a model keeps the promise for user errors.

Each case is a real torch export damaged the way a user's file can be. Every subcommand that
reads the model must exit 2 with exactly one stderr line starting ``mpq: error:`` and no
traceback, write no file, and leave every input byte-identical.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_user_error, export, mpq
from planner import load_graph
from planner.cli.commands import run


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A small MLP exported by torch (weights as initializers) and a plan made for it. Its middle
    weight (64 KB) is large enough for the reader to leave it in the file."""
    folder = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 4))
    path = export(model.eval(), (torch.randn(1, 16),), folder / "mlp.onnx", "torchscript", input_names=["x"])
    result = in_process("plan", path, "--hw", "northpole", "--budget", "latency=0.5", "-o", folder / "plan.json")
    assert result.returncode == 0, result.stderr
    return folder


def in_process(*args) -> subprocess.CompletedProcess:
    """Run the CLI in this process (as ``mpq`` would, output captured) for speed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _external(good: Path, folder: Path, edit) -> Path:
    """The MLP with its weights in ``m.data``, then ``edit(model, folder)`` applied to the .onnx."""
    model = onnx.load(str(good / "mlp.onnx"))
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    edit(model, folder)
    onnx.save(model, str(folder / "m.onnx"))
    return folder / "m.onnx"


def _set_external(key: str, value: str):
    def edit(model, folder):
        tensor = next(t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL and len(t.dims) == 2)
        entry = next((e for e in tensor.external_data if e.key == key), None) or tensor.external_data.add(key=key)
        entry.value = value
    return edit


def _edited(good: Path, folder: Path, edit) -> Path:
    model = onnx.load(str(good / "mlp.onnx"))
    edit(model)
    onnx.save(model, str(folder / "m.onnx"))
    return folder / "m.onnx"


def _weights(model) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if len(t.dims) == 2]


def _one_input_conv(good, folder):
    g = helper.make_graph([helper.make_node("Conv", ["x"], ["y"], name="conv")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "m.onnx"))
    return folder / "m.onnx"


def _sparse_weight(model):
    """The middle Linear's weight moved into a Constant's sparse_value."""
    weight = _weights(model)[1]
    values = numpy_helper.to_array(weight)
    model.graph.initializer.remove(weight)
    flat = numpy_helper.from_array(values.ravel(), "values")
    indices = numpy_helper.from_array(np.arange(values.size, dtype=np.int64), "indices")
    model.graph.node.insert(0, helper.make_node("Constant", [], [weight.name],
                                                sparse_value=helper.make_sparse_tensor(flat, indices, list(values.shape))))


def _data_type_zero(model):
    _weights(model)[1].data_type = 0


def _custom_op_before_a_layer(model):
    """A custom-domain op between the first ReLU and the next layer: neither ONNX inference nor
    onnxruntime can size the layer after it."""
    g = model.graph
    relu = next(n for n in g.node if n.op_type == "Relu")
    for node in g.node:
        node.input[:] = ["mystery" if i == relu.output[0] else i for i in node.input]
    g.node.insert(list(g.node).index(relu) + 1, helper.make_node("Mystery", [relu.output[0]], ["mystery"],
                                                                 domain="com.example"))
    model.opset_import.append(helper.make_opsetid("com.example", 1))


def _write(name: str, data: bytes):
    def build(good, folder):
        (folder / name).write_bytes(data)
        return folder / name
    return build


def _truncated(good, folder):
    data = (good / "mlp.onnx").read_bytes()
    (folder / "m.onnx").write_bytes(data[: len(data) // 3])
    return folder / "m.onnx"


def _short_raw_data(model):
    """The large weight's dims claim more elements than its raw_data holds."""
    weight = _weights(model)[1]
    weight.dims[0] += 1


def _truncated_in_a_weight(good, folder):
    """Cut inside the large weight's bytes: the lean reader's scan fails and the parser reports it."""
    data = (good / "mlp.onnx").read_bytes()
    weight = next(t for t in onnx.load(str(good / "mlp.onnx")).graph.initializer if t.raw_data and len(t.raw_data) > 60000)
    start = data.index(weight.raw_data[:64])
    (folder / "m.onnx").write_bytes(data[: start + 40000])
    return folder / "m.onnx"


def _outside_folder(good, folder):
    """Location '../outside.data', a real copy of the data one folder up."""
    inner = folder / "model"
    inner.mkdir()
    path = _external(good, inner, _set_external("location", "../outside.data"))
    shutil.copy(inner / "m.data", folder / "outside.data")
    return path


def _second_producer(model):
    """The second ReLU writes the first one's output too (two definitions of one tensor)."""
    first, second = [n for n in model.graph.node if n.op_type == "Relu"]
    for node in model.graph.node:
        node.input[:] = [first.output[0] if i == second.output[0] else i for i in node.input]
    second.output[0] = first.output[0]


def _initializer_over_a_node_output(model):
    """An initializer named like the first ReLU's output: which value the next layer reads is a guess."""
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 32), np.float32), relu.output[0]))


def _twin_initializer(model):
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((32, 16), np.float32), _weights(model)[0].name))


def _huge_dims(model):
    """The small first weight (its bytes inline) claims 2^31 x 2^31 elements."""
    _weights(model)[0].dims[:] = [1 << 31, 1 << 31]


def _typed_values(count: int, dims: list[int]):
    """The small first weight's values moved to float_data: ``count`` of them, under ``dims``."""
    def edit(model):
        weight = _weights(model)[0]
        values = numpy_helper.to_array(weight).ravel()[:count].tolist()
        weight.ClearField("raw_data")
        weight.float_data[:] = values
        weight.dims[:] = dims
    return edit


def _negative_dims(model):
    _weights(model)[0].dims[:] = [-32, -16]


CASES = {  # name: (builder(good, folder) -> model path, words the message must hold)
    "inline weight of 2^31 x 2^31": (lambda g, f: _edited(g, f, _huge_dims), ["holds 2048 bytes", "needs"]),
    "float_data of 2^31 x 2^31": (lambda g, f: _edited(g, f, _typed_values(512, [1 << 31, 1 << 31])),
                                  ["holds 512 values", "needs"]),
    "float_data shorter than its dims": (lambda g, f: _edited(g, f, _typed_values(500, [32, 16])),
                                         ["holds 500 values", "needs 512"]),
    "negative dims": (lambda g, f: _edited(g, f, _negative_dims), ["negative dimensions"]),
    "two nodes write one tensor": (lambda g, f: _edited(g, f, _second_producer), ["defined twice", "node"]),
    "initializer over a node output": (lambda g, f: _edited(g, f, _initializer_over_a_node_output),
                                       ["defined twice", "an initializer"]),
    "two initializers of one name": (lambda g, f: _edited(g, f, _twin_initializer), ["two initializers"]),
    "offset not a number": (lambda g, f: _external(g, f, _set_external("offset", "abc")), ["offset", "abc"]),
    "negative offset": (lambda g, f: _external(g, f, _set_external("offset", "-64")), ["offset", "-64"]),
    "length not a number": (lambda g, f: _external(g, f, _set_external("length", "1e3")), ["length", "1e3"]),
    "location /etc/passwd": (lambda g, f: _external(g, f, _set_external("location", "/etc/passwd")),
                             ["/etc/passwd", "folder"]),
    "location outside the folder": (_outside_folder, ["../outside.data", "folder"]),
    "missing external data": (lambda g, f: _external(g, f, lambda m, folder: (folder / "m.data").unlink()),
                              ["m.data", "not found"]),
    "short external data": (lambda g, f: _external(g, f, lambda m, folder: open(folder / "m.data", "r+b").truncate(64)),
                            ["m.data", "shorter"]),
    "conv with one input": (_one_input_conv, ["Conv", "1 input"]),
    "sparse_value weight": (lambda g, f: _edited(g, f, _sparse_weight), ["sparse_value"]),
    "data type 0": (lambda g, f: _edited(g, f, _data_type_zero), ["data type 0"]),
    "weight reshaped from too few elements": (lambda g, f: _edited(g, f, _reshaped_weight), ["16383 elements"]),
    "raw_data shorter than its dims": (lambda g, f: _edited(g, f, _short_raw_data), ["needs"]),
    "external length shorter than dims": (lambda g, f: _external(g, f, _set_external("length", "100")), ["100 bytes"]),
    "unresolvable shapes": (lambda g, f: _edited(g, f, _custom_op_before_a_layer), ["shapes"]),
    "truncated file": (_truncated, ["not a valid ONNX model"]),
    "truncated in a weight": (_truncated_in_a_weight, ["not a valid ONNX model"]),
    "text file": (_write("m.onnx", b"name,value\nx,1\n"), ["ONNX"]),
    "random bytes": (_write("m.onnx", np.random.default_rng(0).bytes(4096)), ["ONNX"]),
    "empty file": (_write("m.onnx", b""), ["ONNX"]),
}

COMMANDS = {
    "inspect": lambda m, out: ["inspect", m],
    "cost": lambda m, out: ["cost", m, "--hw", "northpole", "--summary"],
    "plan": lambda m, out: ["plan", m, "--hw", "northpole", "--budget", "latency=0.5", "-o", out / "plan_out.json"],
    "gains eagl": lambda m, out: ["gains", "eagl", m, "--hw", "northpole", "-o", out / "gains.json"],
    "export": lambda m, out: ["export", out / "plan.json", m, "-o", out / "qdq.onnx", "--force"],
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_bad_model_is_a_user_error_in_every_command(good, tmp_path, case):
    build, words = CASES[case]
    model = build(good, tmp_path)
    shutil.copy(good / "plan.json", tmp_path / "plan.json")
    before = _snapshot(tmp_path)
    for command, args in COMMANDS.items():
        result = in_process(*args(model, tmp_path))
        assert_user_error(result, "mpq: error:", *words)
        assert result.stderr.startswith("mpq: error:"), (command, result.stderr)
        assert _snapshot(tmp_path) == before, command  # no new file, inputs unchanged


@pytest.mark.parametrize("case", ["location /etc/passwd", "data type 0", "conv with one input"])
def test_bad_model_in_a_real_process(good, tmp_path, case):
    """The same promise from the installed CLI in its own process (the in-process runs above are
    for speed)."""
    build, words = CASES[case]
    model = build(good, tmp_path)
    before = _snapshot(tmp_path)
    assert_user_error(mpq("gains", "eagl", model, "--hw", "northpole", "-o", tmp_path / "gains.json"), *words)
    assert _snapshot(tmp_path) == before


def _reshaped_weight(model, times_one: bool = False):
    """The middle weight made by Reshape(flat, shape) where flat has one element too few (then
    multiplied by 1 where ``times_one``, so that the weight is computed rather than stored)."""
    weight = _weights(model)[1]
    values = numpy_helper.to_array(weight).ravel()[:-1]
    model.graph.initializer.remove(weight)
    model.graph.initializer.extend([numpy_helper.from_array(values, "flat"),
                                    numpy_helper.from_array(np.array(weight.dims, np.int64), "target"),
                                    numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    nodes = [helper.make_node("Reshape", ["flat", "target"], ["reshaped" if times_one else weight.name])]
    if times_one:
        nodes.append(helper.make_node("Mul", ["reshaped", "one"], [weight.name]))
    for node in reversed(nodes):
        model.graph.node.insert(0, node)


def _unevaluable_weight(model):
    """Its shape is declared (inspect and cost need no values), its values cannot be computed."""
    _reshaped_weight(model, times_one=True)


@pytest.mark.parametrize("command", ["plan", "gains eagl", "export"])
def test_a_computed_weight_that_cannot_be_evaluated(good, tmp_path, command):
    model = _edited(good, tmp_path, _unevaluable_weight)
    shutil.copy(good / "plan.json", tmp_path / "plan.json")
    before = _snapshot(tmp_path)
    assert_user_error(in_process(*COMMANDS[command](model, tmp_path)), "mpq: error:", "cannot reshape")
    assert _snapshot(tmp_path) == before


def test_layer_nodes_sharing_a_name_stay_separate_layers(good, tmp_path):
    """Layer nodes with one name (onnxruntime refuses such a file, ONNX tools write them) are
    separate layers named NAME:OUTPUT, in their own groups, with the counts of the same model with
    unique names; nodes with unique names keep them."""
    model = onnx.load(str(good / "mlp.onnx"))
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    for node in gemms:
        node.name = "dense"
    onnx.save(model, str(tmp_path / "same.onnx"))
    shared, unique = load_graph(tmp_path / "same.onnx"), load_graph(good / "mlp.onnx")
    assert [l.name for l in shared.layers] == [f"dense:{n.output[0]}" for n in gemms]
    assert [(l.macs, l.params, l.group, l.pinned_bits) for l in shared.layers] == \
        [(l.macs, l.params, l.group, l.pinned_bits) for l in unique.layers]
    assert len(shared.groups) == 3 and [l.name for l in unique.layers] == [n.name for n in onnx.load(
        str(good / "mlp.onnx")).graph.node if n.op_type == "Gemm"]


def _poisoned(value: float):
    def edit(model):
        weight = _weights(model)[1]
        values = numpy_helper.to_array(weight).copy()
        values[3, 5] = value
        weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    return edit


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_weight_with_nan_or_inf_is_a_user_error_where_values_are_read(good, tmp_path, value):
    """One NaN or infinite weight in the middle layer: EAGL gave that group the gains 0 (NaN) or
    0.04 bits (inf) and the export wrote levels cast from NaN (exit 0 both); qerror failed with
    advice about learning rates and printed numpy warnings. Every command that reads weight values
    is now exit 2 naming the layer; inspect, cost and the params gains read none and still work."""
    model = _edited(good, tmp_path, _poisoned(value))
    shutil.copy(good / "plan.json", tmp_path / "plan.json")
    layer = load_graph(good / "mlp.onnx").layers[1].name
    before = _snapshot(tmp_path)
    for args in (COMMANDS["plan"](model, tmp_path), COMMANDS["gains eagl"](model, tmp_path),
                 ["gains", "eagl", model, "--step", "mse", "-o", tmp_path / "g.json"],
                 ["gains", "qerror", model, "-o", tmp_path / "g.json"], COMMANDS["export"](model, tmp_path)):
        assert_user_error(in_process(*args), "mpq: error:", f"layer '{layer}'", "NaN or infinite")
    assert _snapshot(tmp_path) == before
    for args in (COMMANDS["inspect"](model, tmp_path), COMMANDS["cost"](model, tmp_path),
                 ["plan", model, "--hw", "northpole", "--budget", "latency=0.5", "--gains", "params"]):
        result = in_process(*args)
        assert result.returncode == 0 and not result.stderr, result.stderr


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))


def test_layers_inside_model_local_functions_are_a_user_error(tmp_path):
    """torch's export_modules_as_functions puts each block in a model-local function that the main
    graph calls. mpq reads the main graph only: inspect showed 2 of the 4 layers and their MACs, and
    plans left the others out (exit 0). Now every command says so and how to inline them; the
    inlined model has all 4 layers."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), _Block(), _Block(), torch.nn.Linear(16, 4)).eval()
    path = export(net, (torch.randn(2, 8),), tmp_path / "blocks.onnx", "torchscript", input_names=["x"],
                  opset_version=17, export_modules_as_functions={_Block})
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["Gemm", "_Block", "_Block", "Gemm"]
    before = _snapshot(tmp_path)
    for command, args in COMMANDS.items():
        if command != "export":
            assert_user_error(in_process(*args(path, tmp_path)), "mpq: error:", "model-local functions",
                              "inline_local_functions")
    assert _snapshot(tmp_path) == before
    onnx.save(onnx.inliner.inline_local_functions(onnx.load(str(path))), str(tmp_path / "inlined.onnx"))
    graph = load_graph(tmp_path / "inlined.onnx")
    assert [l.macs for l in graph.layers] == [2 * 8 * 16, 2 * 16 * 16, 2 * 16 * 16, 2 * 16 * 4]
