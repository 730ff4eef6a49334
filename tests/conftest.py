"""Shared fixtures: real architectures exported once per session with both torch exporters."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
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


def mpq(*args, cwd=None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m planner ARGS`` (the installed CLI, as a user would) and capture its output."""
    return subprocess.run([sys.executable, "-m", "planner", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def kill_when_lines(args, path: Path, lines: int, timeout_s: float, poll_s: float = 0.05) -> None:
    """Start ``python -m planner ARGS`` and SIGKILL it as soon as ``path`` (a resume file) holds
    ``lines`` lines, or after ``timeout_s`` seconds, or when it exits first (waits for it to end)."""
    process = subprocess.Popen([sys.executable, "-m", "planner", *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            break
        time.sleep(poll_s)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2 and one line on stderr, no traceback, naming every one of ``words``."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


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
