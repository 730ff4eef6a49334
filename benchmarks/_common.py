"""Helpers shared by the benchmark scripts: cached exports, timing, peak memory of a child, and
the results format every benchmark writes (``write_results``), from which
``benchmarks/perf_table.py`` generates the README's performance table."""
from __future__ import annotations

import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "cache"
RESULTS = ROOT / "benchmarks" / "results"
SCHEMA = "mpq.bench/v1"
sys.path.insert(0, str(ROOT / "tests"))

_COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}


def exported(arch: str) -> Path:
    """The ONNX export (TorchScript exporter) of a test architecture, built once and cached.

    ``resnet50`` and ``bert-base`` are tests/archs.py's torch networks; ``hf-bert-base`` is
    Hugging Face ``transformers``' BertModel at BERT-base size (random weights from its config, no
    download) called with ``input_ids`` and an ``attention_mask`` (1 x 128, fixed shapes)."""
    path = CACHE / f"{arch}.onnx"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    names = None
    if arch == "hf-bert-base":
        model, inputs, names = _hf_bert_base()
    else:
        import archs

        model, inputs = {"resnet50": archs.resnet50, "bert-base": archs.bert}[arch]()
    quiet_export(model, inputs, str(path) + ".tmp", input_names=names)
    os.replace(str(path) + ".tmp", path)
    return path


def quiet_export(model, inputs: tuple, path, **options) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``) under ``no_grad``,
    its prints and warnings silenced; ``options`` go to the exporter."""
    import contextlib
    import io
    import warnings

    import torch

    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=False, **options)


def hf_bert_base():
    """Hugging Face ``transformers``' BertModel at BERT-base size (random weights from seed 0, no
    download) in eval mode, as a module (input_ids, attention_mask) -> last hidden state: see
    tests/archs.py's ``hf_bert``."""
    import archs

    return archs.hf_bert()


def _hf_bert_base():
    import torch

    model = hf_bert_base()
    ids = torch.randint(0, model.inner.config.vocab_size, (1, 128))
    mask = torch.ones(1, 128, dtype=torch.long)
    mask[0, 100:] = 0
    return model, (ids, mask), ["input_ids", "attention_mask"]


def mpq(*args) -> str:
    """Run ``python -m planner ARGS`` as a user would; its stdout (SystemExit with its output on a
    non-zero exit)."""
    done = subprocess.run([sys.executable, "-m", "planner", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return done.stdout


def minilm_plan(task, model, folder: Path, bits: str) -> tuple[Path, Path]:
    """The float ONNX of a MiniLM task's ``model`` and an ``mpq plan`` of it at ``bits`` (params
    gains, NorthPole latency=0.5), written in ``folder``: (onnx path, plan path)."""
    from planner.quant import network

    onnx_path = network.save_onnx_for_planning(task, model, folder / "minilm.onnx")
    plan_path = folder / "plan.json"
    mpq("plan", onnx_path, "--hw", "northpole", "--bits", bits, "--budget", "latency=0.5", "--gains", "params",
        "-o", plan_path)
    return onnx_path, plan_path


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


# ------------------------------------------------------------------------------------ results

def figure(name: str, value: float, unit: str, target: str | None, **details) -> dict:
    """One measured figure: ``value`` in ``unit`` against ``target`` ("<= 5", "< 1", or None for
    a figure reported without one); ``met`` is whether the target holds (None without one).
    ``details`` (e.g. the two times a ratio divides, a solver status) are kept as they are;
    a ``status`` detail other than OPTIMAL fails the target."""
    met = None
    if target is not None:
        op, bound = target.split()
        met = bool(_COMPARE[op](value, float(bound))) and details.get("status", "OPTIMAL") == "OPTIMAL"
    return {"figure": name, "value": float(value), "unit": unit, "target": target, "met": met, **details}


def show(entry: dict) -> dict:
    """Print one figure with its target; returns it."""
    value = entry["value"]
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    target = f"(target {entry['target']}: {'met' if entry['met'] else 'NOT met'})" if entry["target"] else ""
    extra = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("figure", "value", "unit", "target", "met"))
    print(f"  {entry['figure']}: {text} {entry['unit']} {target}" + (f" [{extra}]" if extra else ""))
    return entry


def machine() -> dict:
    """The machine and the versions a result was measured with."""
    from importlib import metadata

    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("numpy", "onnx", "onnxruntime", "ortools", "torch", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.platform(),
            "load_average_1min": round(os.getloadavg()[0], 2), **versions}


def write_results(name: str, figures: list[dict]) -> Path:
    """Write ``benchmarks/results/<name>.json``: the figures (see :func:`figure`) and the machine
    (CPU model, cores, load when written, Python and package versions). Returns the path."""
    path = RESULTS / f"{name}.json"
    doc = {"schema": SCHEMA, "benchmark": name, "command": f"python benchmarks/{name}.py",
           "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), "figures": figures}
    from planner.atomic import write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(doc, indent=1) + "\n")
    return path
