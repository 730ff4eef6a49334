"""The plan runs whose outputs are stored in ``tests/data/plans`` (see ``test_same_plans.py``).

    python tests/golden_plans.py      # rewrite the stored plans (only when a change is meant to alter plans)

Each run is an ``mpq plan`` or ``mpq frontier`` command line on a real model; the stored file is the
command's output with the model's location removed (``model.path``), so that a refactoring can be
checked to leave every number, every bit and every tie-break unchanged.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data" / "plans"
ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "examples" / "models" / "efficientnet_lite0.onnx"

# name -> (model key, command, output suffix). MODEL and OUT are substituted.
RUNS = {
    "demo-eagl-latency": ("demo", ["plan", "MODEL", "--hw", "northpole", "--gains", "eagl", "--budget", "latency=0.5",
                                   "--between", "2,4", "-o", "OUT"], ".json"),
    "demo-qerror-two-budgets": ("demo", ["plan", "MODEL", "--hw", "northpole", "--gains", "qerror", "--budget",
                                         "latency=0.35", "--budget", "weight_bytes<=3MB", "-o", "OUT"], ".json"),
    "demo-knapsack": ("demo", ["plan", "MODEL", "--hw", "northpole", "--method", "knapsack", "--bits", "2,4",
                               "--budget", "latency=0.4", "-o", "OUT"], ".json"),
    "demo-frontier": ("demo", ["frontier", "MODEL", "--hw", "northpole", "--between", "2,4", "--points", "11",
                               "--gains", "eagl", "--gains", "qerror", "--gains", "params", "--gains", "random",
                               "--csv", "OUT"], ".csv"),
    "resnet18-bops": ("resnet18", ["plan", "MODEL", "--hw", "gpu_a100", "--cost-model", "bops", "--gains", "eagl",
                                   "--mode", "difference", "--budget", "bops=0.5", "-o", "OUT"], ".json"),
    "mobilenet-edge": ("mobilenet", ["plan", "MODEL", "--hw", "edge_npu", "--gains", "params", "--budget",
                                     "latency=0.3", "-o", "OUT", ], ".json"),
    "bert-roofline": ("bert", ["plan", "MODEL", "--hw", "gpu_a100", "--cost-model", "roofline", "--gains", "eagl",
                               "--weighting", "params", "--budget", "latency=0.6", "-o", "OUT"], ".json"),
    "inception-random": ("inception", ["plan", "MODEL", "--hw", "northpole", "--gains", "random", "--seed", "3",
                                       "--budget", "latency=0.5", "--bits", "2,4,8", "-o", "OUT"], ".json"),
}


def run(name: str, model: Path, out_dir: Path) -> str:
    """Run ``RUNS[name]`` on ``model`` and return its output file's text, ``model.path`` removed."""
    _, command, suffix = RUNS[name]
    out = out_dir / f"{name}{suffix}"
    args = [str(model) if a == "MODEL" else str(out) if a == "OUT" else a for a in command]
    result = subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"mpq {' '.join(args)} failed:\n{result.stderr}")
    text = out.read_text()
    if suffix == ".json":
        plan = json.loads(text)
        plan["model"].pop("path", None)
        text = json.dumps(plan, indent=1, sort_keys=True) + "\n"
    return text


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import tempfile

    from conftest import BUILDERS, export

    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"demo": DEMO_MODEL}
        for key in sorted({key for key, _, _ in RUNS.values()} - {"demo"}):
            module, inputs = BUILDERS[key]()
            models[key] = export(module, inputs, Path(tmp) / f"{key}.onnx", "torchscript")
        for name, (key, _, suffix) in RUNS.items():
            (DATA / f"{name}{suffix}").write_text(run(name, models[key], Path(tmp)))
            print("wrote", DATA / f"{name}{suffix}")


if __name__ == "__main__":
    main()
