"""Bad input gets exit code 2 and one line on stderr, never a traceback."""
from __future__ import annotations


import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import assert_user_error, export, mpq


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, exported):
    folder = tmp_path_factory.mktemp("bad")
    good = exported("resnet18")
    (folder / "text.onnx").write_text("this is a text file, not a model\n" * 20)
    (folder / "truncated.onnx").write_bytes(good.read_bytes()[:30000])
    proto = onnx.load(str(good))
    onnx.save(proto, str(folder / "external.onnx"), save_as_external_data=True, location="external.data")
    (folder / "external.data").unlink()
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(relu), str(folder / "nolayers.onnx"))
    export(torch.nn.Sequential(torch.nn.Linear(16, 8)).eval(), (torch.randn(1, 5, 16),), folder / "dynamic.onnx",
           "torchscript", input_names=["tokens"], dynamic_axes={"tokens": {0: "batch", 1: "seq"}})
    return folder


@pytest.mark.parametrize("name,words", [
    ("missing.onnx", ["no such file"]),
    ("text.onnx", ["not a valid ONNX model"]),
    ("truncated.onnx", ["not a valid ONNX model"]),
    ("external.onnx", ["external data file 'external.data'", "not found"]),
    ("nolayers.onnx", ["no layers found"]),
    ("dynamic.onnx", ["input 'tokens' dimension 1", "--input-shape tokens=1xNx16"]),
])
def test_inspect_bad_input(bad_models, name, words):
    assert_user_error(mpq("inspect", bad_models / name), *words)


def test_bad_input_shape_option(bad_models):
    assert_user_error(mpq("inspect", bad_models / "dynamic.onnx", "--input-shape", "tokens=1xAx16"), "expected NAME=")
    assert_user_error(mpq("inspect", bad_models / "dynamic.onnx", "--input-shape", "other=1x2"), "not a graph input")
    assert mpq("inspect", bad_models / "dynamic.onnx", "--input-shape", "tokens=1x9x16").returncode == 0


def test_unknown_option_is_one_line():
    assert_user_error(mpq("inspect", "--frobnicate"), "No such option")
