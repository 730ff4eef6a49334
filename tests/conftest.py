"""Shared fixtures: real architectures exported once per session with both torch exporters."""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import archs  # noqa: E402

BUILDERS = {
    "resnet50": archs.resnet50,
    "resnet18": archs.resnet18,
    "bert": archs.bert,
    "mobilenet": archs.mobilenet,
    "inception": archs.inception,
}
EXPORTERS = ["torchscript", "dynamo"]


def export(model, inputs, path: Path, exporter: str, **kwargs) -> Path:
    """Export with the TorchScript exporter (dynamo=False) or the default (dynamo) one, quietly."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, inputs, str(path), dynamo=exporter == "dynamo", **kwargs)
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(arch, exporter) -> path of the ONNX file (built once per session)."""
    folder = tmp_path_factory.mktemp("onnx")
    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, exporter: str = "torchscript") -> Path:
        key = (arch, exporter)
        if key not in cache:
            model, inputs = BUILDERS[arch]()
            cache[key] = export(model, inputs, folder / f"{arch}_{exporter}.onnx", exporter)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def built():
    """built(arch) -> (module, example inputs), built once per session."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = BUILDERS[arch]()
        return cache[arch]

    return get
