"""Helpers shared by the benchmark scripts: cached exports, timing, peak memory of a child."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "cache"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))


def exported(arch: str) -> Path:
    """The ONNX export (TorchScript exporter) of a test architecture, built once and cached."""
    import contextlib
    import io

    import torch

    import archs

    path = CACHE / f"{arch}.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        model, inputs = {"resnet50": archs.resnet50, "bert-base": archs.bert}[arch]()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(model, inputs, str(path), dynamo=False)
    return path


def median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child_peak_rss(code: str) -> dict:
    """Run ``code`` in a fresh Python; it must set a dict ``result``, which comes back with
    ``peak_rss`` (VmHWM, bytes) and ``base_rss`` (RSS when the code called ``BASELINE()``).
    VmHWM, not ru_maxrss: Linux carries ru_maxrss of the parent across exec."""
    wrapper = (
        "import json, sys\n"
        "def _status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) * 1024\n"
        "def _rss():\n"
        "    return _status('VmRSS')\n"
        "def BASELINE():\n"
        "    global _base\n"
        "    _base = _rss()\n"
        "_base = 0\n"
        + code +
        "\nresult['peak_rss'] = _status('VmHWM')\n"
        "result['base_rss'] = _base\n"
        "print(json.dumps(result))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
