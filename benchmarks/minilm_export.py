"""Does the QDQ export of a MiniLM plan retrieve what the torch network retrieves? (issue 11)

    python benchmarks/minilm_export.py               # about 10 minutes on 2 cores
    python benchmarks/minilm_export.py --bits 8      # every layer at 8 bits

all-MiniLM-L6-v2 (real weights) planned at 4/8 bits (``--bits``) on NorthPole latency (``latency=0.5``,
parameter-count gains), every layer quantized in torch with LSQ (the attention MatMuls with a
step and sign per input). The steps are calibrated post-training (:func:`planner.quant.network.calibrate`:
least-squared-error steps on 128 training texts, 8-bit activations spanning their range), then
the network is fine-tuned with LSQ for ``--epochs`` (default 1) toward the float model's
embeddings (the task's loss is that distillation), saved as a checkpoint, exported by
``mpq export`` from it and run in onnxruntime. On all 1,000 queries of the task's test split:

- top-1 retrieval agreement between the export and the torch network (the acceptance figure)
  and the largest embedding difference;
- the torch network against the float network (is it a realistic quantized network?);
- the torch network run in float64 against itself in float32: how far float rounding alone moves
  it, with no export involved (level flips at rounding boundaries grow through the layers), the
  floor any float32 export of this network can reach.

Writes ``benchmarks/results/minilm_export.json`` (``minilm_export-wB1-B2.json`` for other
``--bits``).
"""
from __future__ import annotations

import argparse
import copy
import json
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
from planner.quant.train import fit  # noqa: E402
from planner.tasks import minilm  # noqa: E402
from _common import minilm_plan, mpq  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="4,8", help="Precisions the plan may use (default 4,8).")
    parser.add_argument("--epochs", type=float, default=1.0, help="LSQ fine-tuning epochs after calibration (default 1; 0: none).")
    args = parser.parse_args()
    bits = args.bits
    start = time.perf_counter()
    torch.set_num_threads(2)
    task = minilm.MiniLMTask()
    model = task.model()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        onnx_path, plan_path = minilm_plan(task, model, folder, bits)
        plan = read_plan(plan_path)
        quantized = network.calibrate(task, network.apply_plan(task, model, plan))
        if args.epochs > 0:
            fit(quantized, task, epochs=args.epochs, lr=task.finetune_lr, seed=0)
        queries, documents = task._tokens["queries"], task._tokens["documents"]
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
        float_embeddings = [minilm.encode(model, t).numpy() for t in (queries, documents)]
        with torch.no_grad():
            float64 = [minilm.encode(copy.deepcopy(torch_model).double(), t).numpy() for t in (queries, documents)]
    difference = float(max(np.abs(a - b).max() for a, b in zip(exported, reference)))
    retrieved = [(q @ d.T).argmax(1) for q, d in (exported, reference, float_embeddings, float64)]
    cosine = float(np.mean([(a * b).sum(1).mean() for a, b in zip(reference, float_embeddings)]))
    result = {
        "queries": int(len(queries)),
        "top1_retrieval_agreement": float((retrieved[0] == retrieved[1]).mean()),
        "max_embedding_difference": difference,
        "torch_vs_float_top1_retrieval_agreement": float((retrieved[1] == retrieved[2]).mean()),
        "torch_vs_float_mean_cosine": cosine,
        "torch_float64_vs_float32_top1_retrieval_agreement": float((retrieved[1] == retrieved[3]).mean()),
        "torch_recall_at_1": float((retrieved[1] == np.arange(len(queries))).mean()),
        "float_recall_at_1": float((retrieved[2] == np.arange(len(queries))).mean()),
        "steps": "calibrated (planner.quant.network.calibrate)" + (f", then {args.epochs:g} epoch(s) of LSQ fine-tuning toward "
                                                              "the float embeddings" if args.epochs > 0 else ""),
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
          f"torch vs float {result['torch_vs_float_top1_retrieval_agreement']:.3f} (cosine {cosine:.4f}); torch float64 "
          f"vs float32 {result['torch_float64_vs_float32_top1_retrieval_agreement']:.3f}; "
          f"{result['attention_matmuls']} attention MatMuls among {result['layers']} layers; bits read back equal "
          f"the plan: {result['bits_read_back_equal_plan']}; wrote {path}")


if __name__ == "__main__":
    main()
