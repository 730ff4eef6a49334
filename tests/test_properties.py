"""Property tests of the CLI's promise on generated malformed input: gains files, spec YAML and
budget strings. Whatever the input, mpq either succeeds (exit 0, strict JSON out, no NaN) or
refuses it (exit 2, one line ``mpq: error: ...``, no traceback, no file touched); never a bug
(exit 1)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import export
from test_bad_inputs import _network, cli, snapshot

NORTHPOLE = (Path(__file__).parent.parent / "hw" / "northpole.yaml").read_text()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("props")
    export(_network(0), (torch.randn(1, 1, 28, 28),), d / "m.onnx", "torchscript", input_names=["input"])
    cwd = os.getcwd()
    os.chdir(d)
    try:
        code, _, err = cli("gains", "params", "m.onnx", "-o", "gains.json")
        assert code == 0, err
    finally:
        os.chdir(cwd)
    return d


def assert_kept(code: int, out: str, err: str) -> None:
    """Exit 0 with strict JSON (when JSON was asked for), or exit 2 with one error line."""
    assert "Traceback" not in err, err
    if code == 0:
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mpq: error:"), (code, err)


def run_in(folder: Path, files: dict[str, bytes], *args) -> tuple[int, str, str]:
    """Run ``mpq ARGS`` in a fresh copy of ``folder`` holding ``files``; the copy must be unchanged."""
    with tempfile.TemporaryDirectory() as work:
        for source in folder.iterdir():
            (Path(work) / source.name).write_bytes(source.read_bytes())
        for name, data in files.items():
            (Path(work) / name).write_bytes(data)
        before = snapshot(Path(work))
        cwd = os.getcwd()
        os.chdir(work)
        try:
            result = cli(*args)
        finally:
            os.chdir(cwd)
        assert snapshot(Path(work)) == before
    return result


def _strict(text: str):
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the output"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)


def _replace(doc, path: list, value):
    """``doc`` with the value at ``path`` (indices into nested lists/dicts, wrapped) replaced."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, dict):
        key = sorted(doc)[path[0] % len(doc)]
        return {**doc, key: _replace(doc[key], path[1:], value)}
    k = path[0] % len(doc)
    return doc[:k] + [_replace(doc[k], path[1:], value)] + doc[k + 1:]


@SETTINGS
@given(path=st.lists(st.integers(0, 50), max_size=5), value=json_values)
def test_malformed_gains_files(folder, path, value):
    doc = _replace(json.loads((folder / "gains.json").read_text()), path, value)
    data = json.dumps(doc).encode()  # may hold NaN / Infinity, as non-strict writers produce
    code, out, err = run_in(folder, {"g.json": data}, "plan", "m.onnx", "--hw", "northpole", "--budget", "latency=0.5",
                            "--gains", "g.json", "--json")
    assert_kept(code, out, err)
    if code == 0:
        plan = _strict(out)
        assert all(math.isfinite(o["gain"]) for g in plan["groups"] for o in g["options"].values())


@SETTINGS
@given(group=st.integers(1, 6), bits=st.sampled_from(["2", "4", "8"]),
       value=st.floats() | st.integers(-10 ** 400, 10 ** 400) | json_values)
def test_gains_values(folder, group, bits, value):
    """Any value at an offered precision of a free group: a finite number or a refusal."""
    doc = json.loads((folder / "gains.json").read_text())
    doc["groups"][group]["gains"][bits] = value
    code, out, err = run_in(folder, {"g.json": json.dumps(doc).encode()}, "plan", "m.onnx", "--hw", "northpole",
                            "--budget", "latency=0.5", "--gains", "g.json", "--json")
    assert_kept(code, out, err)
    if code == 0:
        assert all(math.isfinite(o["gain"]) for g in _strict(out)["groups"] for o in g["options"].values())


@SETTINGS
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_gains_files_of_random_bytes(folder, data):
    code, out, err = run_in(folder, {"g.json": data}, "plan", "m.onnx", "--hw", "northpole", "--budget",
                            "latency=0.5", "--gains", "g.json", "--json")
    assert_kept(code, out, err)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 6, 10 ** 6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from([".nan", ".inf", "-.inf", "&a x", "*a", "!!binary AAAA"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)


@SETTINGS
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=4), value=yaml_values)
def test_malformed_spec_yaml(folder, path, value):
    doc = _replace(yaml.safe_load(NORTHPOLE), path, value)
    text = yaml.safe_dump(doc, allow_unicode=True)
    code, out, err = run_in(folder, {"s.yaml": text.encode()}, "spec", "show", "s.yaml", "--json")
    assert_kept(code, out, err)
    if code == 0:
        spec = _strict(out)
        assert all(2 <= b <= 16 for b in spec["precisions"])


FIGURES = [["cores"], ["cores", "value"], ["clock_hz"], ["clock_hz", "value"], ["macs_per_cycle_per_core", 8],
           ["launch_overhead_s"], ["memory", "on_chip_bytes"], ["precisions"], ["precisions", 0], ["pins", "first"]]


@SETTINGS
@given(where=st.sampled_from(FIGURES), value=st.floats() | st.integers(-10 ** 30, 10 ** 30) | yaml_values)
def test_spec_figures(folder, where, value):
    """Any value in a numeric field: a spec whose every figure is finite and in range, or a refusal."""
    doc = yaml.safe_load(NORTHPOLE)
    node = doc
    for key in where[:-1]:
        node = node.setdefault(key, {}) if isinstance(node.get(key), dict) or key not in node else node[key]
        if not isinstance(node, (dict, list)):
            return
    if isinstance(node, list):
        node[where[-1] % len(node)] = value
    else:
        node[where[-1]] = value
    code, out, err = run_in(folder, {"s.yaml": yaml.safe_dump(doc).encode()}, "spec", "show", "s.yaml", "--json")
    assert_kept(code, out, err)
    if code == 0:
        spec = _strict(out)
        assert spec["cores"] > 0 and spec["clock_hz"] > 0 and all(2 <= b <= 16 for b in spec["precisions"])


@SETTINGS
@given(text=st.text(max_size=300))
def test_spec_yaml_of_random_text(folder, text):
    code, out, err = run_in(folder, {"s.yaml": text.encode()}, "spec", "validate", "s.yaml")
    assert_kept(code, out, err)


metric = st.sampled_from(["latency_s", "latency", "weight_bytes", "energy", "speed", "", "latency_s_s"])
number = (st.floats(min_value=0, max_value=1e12, allow_nan=False).map(repr)
          | st.sampled_from(["nan", "inf", "-1", "1e", ".", "1..2", "0x10", "1_000", "٣", "1e-400", "½"]))
unit = st.sampled_from(["", "s", "ms", "us", "µs", "B", "MB", "MiB", "kB", "J", "x", "Qs", "iB"])
budget = (st.tuples(metric, st.sampled_from(["<=", "=", "<", ">=", "=="]), number, unit).map("".join)
          | st.text(max_size=30))


@SETTINGS
@given(texts=st.lists(budget, min_size=1, max_size=3))
def test_budget_strings(folder, texts):
    """Absolute budgets stay below 1e12 here: budgets above every plan's cost are the solver's
    own tests' subject."""
    args = [a for t in texts for a in ("--budget", t)]
    code, out, err = run_in(folder, {}, "plan", "m.onnx", "--hw", "northpole", "--gains", "params", *args, "--json")
    assert_kept(code, out, err)
    if code == 0:
        _strict(out)
