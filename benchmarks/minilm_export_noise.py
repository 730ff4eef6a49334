"""Is the MiniLM QDQ export's 97-98% top-1 agreement with torch a mismatch or float noise? (issue 11)

    python benchmarks/minilm_export_noise.py     # about 5 minutes on 2 cores

Same setup as ``benchmarks/minilm_export.py`` (all-MiniLM-L6-v2 planned at 4/8 bits, every layer
LSQ-quantized in torch with steps from the texts, exported by ``mpq export --checkpoint``) on the
first 200 queries. It measures

- top-1 retrieval agreement and max embedding difference of the export in onnxruntime (as
  :func:`planner.export.qdq.session` opens it, and with every graph optimization off) vs torch;
- the same for the float ONNX vs the float torch network (the baseline without quantizers);
- the same for the quantized torch network run in float64 vs float32: how far float rounding
  alone moves this 4-bit network, with no export involved;
- layer by layer on 8 queries: the input of every activation quantizer in torch (forward
  pre-hooks) and in onnxruntime (QuantizeLinear inputs added as graph outputs): the largest
  difference of the float inputs, the fraction of integer levels that differ, and the fraction
  of values within 1e-4 of a rounding boundary.

Writes ``benchmarks/results/minilm_export_noise.json``.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.quant import network  # noqa: E402
from planner.export.plan import read_plan  # noqa: E402
from planner.export.qdq import session  # noqa: E402
from planner.quant.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from planner.quant.lsq import QMatMul  # noqa: E402
from planner.tasks import minilm  # noqa: E402
from _common import minilm_plan, mpq  # noqa: E402

QUERIES, LAYER_QUERIES, NEAR = 200, 8, 1e-4


def agreement(a, b) -> dict:
    """Top-1 retrieval agreement and max embedding difference of (queries, documents) pairs."""
    ra, rb = ((q @ d.T).argmax(1) for q, d in (a, b))
    return {"top1_agreement": float((ra == rb).mean()),
            "max_embedding_difference": float(max(np.abs(x - y).max() for x, y in zip(a, b)))}


def run_onnx(sess, texts):
    return [np.concatenate([sess.run(None, {"input": t[k:k + 16].numpy()})[0] for k in range(0, len(t), 16)])
            for t in texts]


def layer_by_layer(qdq_path: Path, model, queries) -> list[dict]:
    """Per activation quantizer (in graph order): torch vs onnxruntime inputs on single queries."""
    import onnxruntime as ort

    proto = onnx.load(qdq_path)
    steps = {t.name: float(numpy_helper.to_array(t)) for t in proto.graph.initializer if t.name.endswith("_scale")}
    dq_of = {n.input[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    readers = {}
    for n in proto.graph.node:
        for i, name in enumerate(n.input):
            readers.setdefault(name, []).append((n, i))
    entries = []  # (module path, input index, ONNX tensor quantized, step)
    for n in (n for n in proto.graph.node if n.op_type == "QuantizeLinear"):
        for reader, i in readers[dq_of[n.output[0]].output[0]]:
            entries.append((reader.name.strip("/").rsplit("/", 1)[0].replace("/", "."), i, n.input[0], steps[n.input[1]]))
    for name in sorted({e[2] for e in entries}):
        proto.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    modules = dict(model.named_modules())
    seen = {}
    for path, i, _, _ in entries:
        m = modules[path]
        q = m.other_quantizer if (i == 1 and isinstance(m, QMatMul)) else m.input_quantizer
        q.register_forward_pre_hook(lambda mod, args, key=(path, i): seen.__setitem__(key, args[0].detach().clone()))
    totals = {}
    for k in range(len(queries)):
        x = queries[k:k + 1]
        with torch.no_grad():
            model(x)
        outs = dict(zip(names, sess.run(None, {"input": x.numpy()})))
        for path, i, tensor, step in entries:
            t = seen[(path, i)].numpy()
            o = outs[tensor][tuple(slice(0, s) for s in t.shape)]  # torch drops the padding
            m = modules[path]
            q = m.other_quantizer if (i == 1 and isinstance(m, QMatMul)) else m.input_quantizer
            lt, lo = (q.integer_levels(torch.from_numpy(v)).numpy() for v in (t, o))
            boundary = np.abs(t / step - np.floor(t / step) - 0.5) * step < NEAR
            s = totals.setdefault((path, i), {"layer": path, "input": i, "step": step, "values": 0,
                                              "levels_differ": 0, "near_boundary": 0, "max_input_difference": 0.0})
            s["values"] += t.size
            s["levels_differ"] += int((lt != lo).sum())
            s["near_boundary"] += int(boundary.sum())
            s["max_input_difference"] = max(s["max_input_difference"], float(np.abs(t - o).max()))
    rows = []
    for s in totals.values():
        rows.append({**s, "levels_differ": s["levels_differ"] / s["values"],
                     "near_boundary": s["near_boundary"] / s["values"]})
    return rows


def main() -> None:
    import onnxruntime as ort

    start = time.perf_counter()
    torch.set_num_threads(2)
    task = minilm.MiniLMTask(sizes={"test": QUERIES, "val": 2, "train": 2})
    model = task.model()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        onnx_path, plan_path = minilm_plan(task, model, folder, "4,8")
        quantized = network.apply_plan(task, model, read_plan(plan_path))
        texts = (task._tokens["queries"], task._tokens["documents"])
        with torch.no_grad():
            minilm.encode(quantized, torch.cat(texts))
        save_checkpoint(folder / "q.pt", quantized, task)
        out = folder / "minilm.qdq.onnx"
        mpq("export", folder / "plan.json", onnx_path, "--task", "minilm", "--checkpoint", folder / "q.pt", "-o", out)
        torch_model = load_checkpoint(folder / "q.pt", task)
        with torch.no_grad():
            reference = [minilm.encode(torch_model, t).numpy() for t in texts]
            float64 = [minilm.encode(load_checkpoint(folder / "q.pt", task).double(), t).numpy() for t in texts]
            float_torch = [minilm.encode(model, t).numpy() for t in texts]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        result = {
            "queries": QUERIES,
            "qdq_onnxruntime_vs_torch": agreement(run_onnx(session(str(out)), texts), reference),
            "qdq_onnxruntime_all_optimizations_off_vs_torch": agreement(
                run_onnx(ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"]), texts), reference),
            "float_onnx_vs_float_torch": agreement(
                run_onnx(ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]), texts), float_torch),
            "torch_float64_vs_torch_float32": agreement(float64, reference),
            "qdq_vs_float_torch": agreement(reference, float_torch),
        }
        rows = layer_by_layer(out, torch_model, texts[0][:LAYER_QUERIES])
    values = sum(r["values"] for r in rows)
    result["layer_by_layer_queries"] = LAYER_QUERIES
    result["near_boundary_fraction_all_activations"] = sum(r["near_boundary"] * r["values"] for r in rows) / values
    result["first_quantizer_with_differing_levels"] = next((r["layer"] + f" input {r['input']}" for r in rows
                                                            if r["levels_differ"] > 0), None)
    result["layers"] = rows
    result["wall_s"] = round(time.perf_counter() - start, 1)
    path = ROOT / "benchmarks" / "results" / "minilm_export_noise.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("qdq_onnxruntime_vs_torch", "qdq_onnxruntime_all_optimizations_off_vs_torch",
                "float_onnx_vs_float_torch", "torch_float64_vs_torch_float32", "qdq_vs_float_torch"):
        print(f"{key}: {result[key]}")
    print(f"near a rounding boundary: {result['near_boundary_fraction_all_activations']:.2e}; first quantizer with "
          f"differing levels: {result['first_quantizer_with_differing_levels']}; wrote {path}")


if __name__ == "__main__":
    main()
