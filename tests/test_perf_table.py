"""The benchmarks' results format and the README performance table generated from it."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _modules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    common = importlib.import_module("_common")
    table = importlib.import_module("perf_table")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(table, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(table, "README", tmp_path / "README.md")
    return common, table


def test_results_file_and_generated_table(tmp_path, monkeypatch):
    common, table = _modules(tmp_path, monkeypatch)
    figures = [common.figure("EAGL / numpy pass, ResNet-50", 4.2, "x", "<= 5", eagl_ms=21.0, numpy_pass_ms=5.0),
               common.figure("solver, 5,000 groups x 3 x 3", 1.5, "s", "< 2", status="FEASIBLE"),
               common.figure("whole `mpq plan` process, BERT-base", 2.5, "s", "< 2"),
               common.figure("frontier", 3.0, "s", None)]
    path = common.write_results("bench_plan", figures)
    doc = json.loads(path.read_text())
    assert path == tmp_path / "results" / "bench_plan.json" and doc["schema"] == "mpq.bench/v1"
    assert [f["met"] for f in doc["figures"]] == [True, False, False, None]  # FEASIBLE fails "proven optimal"
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["numpy"] and doc["machine"]["cpu"]
    (tmp_path / "results" / "bench_scale-quick-2x8x8.json").write_text(path.read_text())  # other sizes: left out
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{table.START}\nold table\n{table.END}\nafter\n")
    monkeypatch.setattr(sys, "argv", ["perf_table.py"])
    table.main()
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith("\nafter\n") and "old table" not in text
    rows = [line for line in text.splitlines() if line.startswith("| `bench")]
    assert rows[0] == ("| `bench_plan.py` | EAGL / numpy pass, ResNet-50 | 4.2x | <= 5 | yes | "
                       "eagl ms 21, numpy pass ms 5 |")
    assert len(rows) == 4 and "| 1.5 s | < 2 | **no** | status FEASIBLE |" in rows[1]
    monkeypatch.setattr(sys, "argv", ["perf_table.py", "--check"])
    with pytest.raises(SystemExit) as up_to_date:
        table.main()
    assert up_to_date.value.code == 0
