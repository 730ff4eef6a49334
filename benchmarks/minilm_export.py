"""Does the QDQ export of a MiniLM plan retrieve what the torch network retrieves? (issue 11)

    python benchmarks/minilm_export.py               # about 5 minutes on 2 cores
    python benchmarks/minilm_export.py --bits 8      # every layer at 8 bits

all-MiniLM-L6-v2 (real weights) planned at 4/8 bits (``--bits``) on NorthPole latency (``latency=0.5``,
parameter-count gains), every layer quantized in torch with LSQ (the attention MatMuls with a
step and sign per input, steps initialised on the texts), exported by ``mpq export`` from that
checkpoint and run in onnxruntime. On all 1,000 queries of the task's test split: top-1
retrieval agreement between the export and the torch network, and the largest embedding
difference. Writes ``benchmarks/results/minilm_export.json`` (``minilm_export-wB1-B2.json`` for other
``--bits``). ``benchmarks/minilm_export_noise.py`` measures how far the quantized torch network
disagrees with itself (float32 vs float64), the floor any export can reach.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.quant import network  # noqa: E402
from planner.graph import load_graph  # noqa: E402
from planner.export.plan import read_plan  # noqa: E402
from planner.export.qdq import layer_bits, session  # noqa: E402
from planner.quant.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from planner.tasks import minilm  # noqa: E402


def mpq(*args: str) -> str:
    """Run ``python -m planner ARGS``; its stdout (raises on a non-zero exit)."""
    done = subprocess.run([sys.executable, "-m", "planner", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="4,8", help="Precisions the plan may use (default 4,8).")
    bits = parser.parse_args().bits
    start = time.perf_counter()
    torch.set_num_threads(2)
    task = minilm.MiniLMTask()
    model = task.model()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        onnx_path = network.save_onnx_for_planning(task, model, folder / "minilm.onnx")
        plan_path = folder / "plan.json"
        mpq("plan", onnx_path, "--hw", "northpole", "--bits", bits, "--budget", "latency=0.5", "--gains", "params",
            "-o", plan_path)
        plan = read_plan(plan_path)
        quantized = network.apply_plan(task, model, plan)
        queries, documents = task._tokens["queries"], task._tokens["documents"]
        with torch.no_grad():
            minilm.encode(quantized, torch.cat([queries, documents]))  # LSQ steps start from the texts
        save_checkpoint(folder / "q.pt", quantized, task)
        out = folder / "minilm.qdq.onnx"
        printed = mpq("export", plan_path, onnx_path, "--task", "minilm", "--checkpoint", folder / "q.pt", "-o", out)
        read = layer_bits(load_graph(out))
        planned = {l["name"]: l["w_bits"] for l in plan.doc["layers"]}
        attention = [l["name"] for l in plan.doc["layers"] if l["weight"] is None]
        torch_model = load_checkpoint(folder / "q.pt", task)
        with torch.no_grad():
            reference = [minilm.encode(torch_model, t).numpy() for t in (queries, documents)]
        run = session(str(out))
        exported = [np.concatenate([run.run(None, {"input": t[k:k + 16].numpy()})[0] for k in range(0, len(t), 16)])
                    for t in (queries, documents)]
    difference = float(max(np.abs(a - b).max() for a, b in zip(exported, reference)))
    retrieved = [(q @ d.T).argmax(1) for q, d in (exported, reference)]
    result = {
        "queries": int(len(queries)),
        "top1_retrieval_agreement": float((retrieved[0] == retrieved[1]).mean()),
        "max_embedding_difference": difference,
        "layers": len(planned), "attention_matmuls": len(attention),
        "bits_read_back_equal_plan": all(read[n]["a_bits"][0] == b for n, b in planned.items()),
        "plan_bits": sorted({b for b in planned.values()}),
        "export_output": printed.strip().splitlines(),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    name = "minilm_export" if bits == "4,8" else f"minilm_export-w{bits.replace(',', '-')}"
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"MiniLM QDQ vs torch on {result['queries']} queries: top-1 retrieval agreement "
          f"{result['top1_retrieval_agreement']:.3f} (target >= 0.99), max embedding difference {difference:.2e}; "
          f"{result['attention_matmuls']} attention MatMuls among {result['layers']} layers; bits read back equal "
          f"the plan: {result['bits_read_back_equal_plan']}; wrote {path}")


if __name__ == "__main__":
    main()
