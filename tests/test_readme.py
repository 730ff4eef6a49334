"""The README stands alone: its links stay inside the repository, the names it documents exist,
its Python API example runs, and its data-side figures come from stored benchmark output."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "results" / "README.md"]


def _relative_links(path: Path) -> list[str]:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    return [link for link in links if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(doc):
    for link in _relative_links(doc):
        target = (doc.parent / link).resolve()
        assert target.is_relative_to(ROOT), f"{doc.name} links outside the repository: {link}"
        assert target.exists(), f"{doc.name} links to a missing file: {link}"


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_documented_python_names_exist():
    names = sorted(set(re.findall(r"`((?:planner|costmodels|hw)(?:\.[A-Za-z_]\w*)+)", README)))
    assert names, "the README documents no Python names"
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"the README names what does not exist: {missing}"


def test_python_api_example_runs(exported, tmp_path, monkeypatch):
    block = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S).group(1)
    demo = "examples/models/efficientnet_lite0.onnx"
    assert demo in block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(block.replace(demo, str(exported("resnet18"))), namespace)  # noqa: S102 - our own README
    plan = (tmp_path / "plan.json").read_text()
    assert '"status": "OPTIMAL"' in plan


def test_data_side_figures_come_from_the_stored_walkthrough():
    data_side = README.split("### The data side", 1)[1].split("\n#", 1)[0]
    mnist = README.split("- `mnist`:", 1)[1].split("\n- ", 1)[0]
    transcript = (ROOT / "benchmarks" / "results" / "walkthrough.md").read_text()
    assert "benchmarks/walkthrough.py" in mnist
    figures = re.findall(r"\d+\.\d+%", data_side + mnist)
    assert figures, "the data-side paragraph quotes no figures"
    for figure in figures:
        assert figure.rstrip("%") in transcript, f"{figure} is not in benchmarks/results/walkthrough.md"
