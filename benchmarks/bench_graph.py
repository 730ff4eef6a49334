"""How fast and how lean is load_graph? Ratios against ONNX's own loading, measured in one run.

    python benchmarks/bench_graph.py

For a ResNet-50 and a BERT-base-sized export (built once, cached under benchmarks/cache/):
- time of ``planner.load_graph`` / time of ``onnx.load`` + ``onnx.shape_inference.infer_shapes``
  on the same file (medians of 5; target <= 1.5);
- peak memory of ``load_graph`` in a fresh process (peak RSS minus RSS after imports) over the
  size of the weights (target <= 2.5).
"""
from __future__ import annotations

import onnx

from _common import child_peak_rss, exported, median_time

from planner import load_graph


def weight_bytes(path) -> int:
    model = onnx.load(str(path))
    return sum(len(t.raw_data) for t in model.graph.initializer)


def main() -> None:
    print(f"{'model':10} {'load_graph':>11} {'onnx load+infer':>16} {'time ratio':>11} {'weights':>9} "
          f"{'peak mem':>9} {'mem ratio':>10}")
    for arch in ("resnet50", "bert-base"):
        path = exported(arch)
        ours = median_time(lambda: load_graph(path))
        theirs = median_time(lambda: onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True))
        size = weight_bytes(path)
        mem = child_peak_rss(
            "import planner, onnx\nBASELINE()\n"
            f"g = planner.load_graph({str(path)!r})\nresult = {{'layers': len(g.layers)}}\n")
        peak = mem["peak_rss"] - mem["base_rss"]
        print(f"{arch:10} {ours * 1e3:9.0f}ms {theirs * 1e3:14.0f}ms {ours / theirs:10.2f}x "
              f"{size / 2**20:7.0f}MB {peak / 2**20:7.0f}MB {peak / size:9.2f}x")
    print("targets: time ratio <= 1.5, memory ratio <= 2.5")


if __name__ == "__main__":
    main()
