"""How fast and how lean is load_graph? Ratios against ONNX's own loading, measured in one run.

    python benchmarks/bench_graph.py

For three exports (built once, cached under benchmarks/cache/): the test suite's ResNet-50 and
BERT-base-sized encoder (TorchScript exporter), and BERT-base built by Hugging Face
``transformers`` from its default config (random weights) and exported by ``torch.onnx`` with an
attention mask, whose shapes ONNX inference cannot follow (they are sized by one onnxruntime run):
- time of ``planner.load_graph`` / time of ``onnx.load`` + ``onnx.shape_inference.infer_shapes``
  on the same file (medians of 5; target <= 1.5);
- peak memory of ``load_graph`` in a fresh process (peak RSS minus RSS after imports) over the
  size of the weights (target <= 2, issue 15).

Prints each figure with its target and writes them, with the machine they ran on, to
benchmarks/results/bench_graph.json.
"""
from __future__ import annotations

from pathlib import Path

import onnx

from _common import CACHE, child_peak_rss, exported, figure, hf_bert_base, median_time, quiet_export, write_results

from planner import load_graph

TIME_TARGET = 1.5
MEMORY_TARGET = 2.0
HF_SHAPES = {"input_ids": (1, 128), "attention_mask": (1, 128)}


def transformers_bert() -> Path:
    """BERT-base from transformers (default config, seed 0) exported with an attention mask."""
    import torch

    path = CACHE / "bert-base-transformers.onnx"
    if path.exists():
        return path
    model = hf_bert_base()
    inputs = (torch.randint(0, 30522, HF_SHAPES["input_ids"]), torch.ones(HF_SHAPES["attention_mask"], dtype=torch.long))
    CACHE.mkdir(parents=True, exist_ok=True)
    quiet_export(model, inputs, path, input_names=list(HF_SHAPES), opset_version=17,
                 dynamic_axes={n: {0: "batch", 1: "seq"} for n in HF_SHAPES})
    return path


def weight_bytes(path) -> int:
    model = onnx.load(str(path))
    return sum(len(t.raw_data) for t in model.graph.initializer)


def main() -> None:
    models = {"resnet50": (exported("resnet50"), None), "bert-base": (exported("bert-base"), None),
              "bert-base-transformers": (transformers_bert(), HF_SHAPES)}
    print(f"{'model':23} {'load_graph':>11} {'onnx load+infer':>16} {'time ratio':>11} {'weights':>9} "
          f"{'peak mem':>9} {'mem ratio':>10}")
    rows = {}
    for name, (path, shapes) in models.items():
        ours = median_time(lambda: load_graph(path, shapes))
        theirs = median_time(lambda: onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True))
        size = weight_bytes(path)
        mem = child_peak_rss(
            "import planner, onnx, onnxruntime\nBASELINE()\n"
            f"g = planner.load_graph({str(path)!r}, {shapes!r})\nresult = {{'layers': len(g.layers)}}\n")
        peak = mem["peak_rss"] - mem["base_rss"]
        rows[name] = {"layers": mem["layers"], "load_graph_s": ours, "onnx_load_infer_s": theirs,
                      "time_ratio": ours / theirs, "weight_bytes": size, "peak_bytes": peak,
                      "memory_ratio": peak / size}
        print(f"{name:23} {ours * 1e3:9.0f}ms {theirs * 1e3:14.0f}ms {ours / theirs:10.2f}x "
              f"{size / 2**20:7.0f}MB {peak / 2**20:7.0f}MB {peak / size:9.2f}x")
    print(f"targets: time ratio <= {TIME_TARGET}, memory ratio <= {MEMORY_TARGET} "
          "(issue 15: load_graph peak / weights on the transformers BERT-base, was 5.5x)")
    hf = rows["bert-base-transformers"]
    print(f"load_graph peak memory / weights, BERT-base from transformers with an attention mask: "
          f"{hf['memory_ratio']:.2f}x ({hf['peak_bytes'] / 2**20:.0f} MB for {hf['weight_bytes'] / 2**20:.0f} MB), "
          f"target <= {MEMORY_TARGET}x: {'met' if hf['memory_ratio'] <= MEMORY_TARGET else 'NOT met'}")
    figures = []
    for name, r in rows.items():
        figures.append(figure(f"load_graph / onnx.load + infer_shapes, {name}", r["time_ratio"], "x",
                              f"<= {TIME_TARGET}", load_graph_s=round(r["load_graph_s"], 4),
                              onnx_load_infer_s=round(r["onnx_load_infer_s"], 4), layers=r["layers"]))
        figures.append(figure(f"load_graph peak memory / weights, {name}", r["memory_ratio"], "x",
                              f"<= {MEMORY_TARGET}", peak_bytes=r["peak_bytes"], weight_bytes=r["weight_bytes"]))
    print(f"wrote {write_results('bench_graph', figures)}")


if __name__ == "__main__":
    main()
