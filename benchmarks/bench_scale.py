"""Planning an LLM-size model without loading it: memory and time of `mpq plan` by streaming;
writes benchmarks/results/bench_scale.json.

    python benchmarks/bench_scale.py [--blocks 24 --hidden 2048 --ffn 5632 --vocab 32000]

Builds once (cached under benchmarks/cache/llm/, not committed) a synthetic decoder-only
transformer in ONNX with all weights in one external data file (24 blocks, hidden 2048, gated
MLP, fp32: about 5.5 GB), then measures in one run:
- `mpq plan` (NorthPole, EAGL, latency=0.5) peak memory (VmHWM of the process) over the largest
  single tensor (target <= 3);
- `mpq plan` wall time over one sequential read of the external data file (target <= 1.5), with
  the file evicted from the page cache before each (cold: the situation of a model that does
  not fit in memory) and with the file in the page cache (warm);
- the group count and whether the solve was proven optimal;
- a 50-point frontier.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import CACHE, child_peak_rss, figure, show, write_results

import archs

OFFCHIP_SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "northpole_offchip.yaml")  # weights need not fit on chip


def evict(path) -> None:
    """Drop the file's pages from the page cache (posix_fadvise DONTNEED): the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sequential_read(path, block: int = 64 << 20) -> float:
    buffer = bytearray(block)
    view = memoryview(buffer)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - start


def run_mpq(args: list[str]) -> dict:
    code = ("import time, io, contextlib\nfrom planner import cli\nimport planner.gains.eagl, planner.solve.knapsack, costmodels, hw\n"
            "BASELINE()\nstart = time.perf_counter()\nout = io.StringIO()\n"
            f"with contextlib.redirect_stdout(out):\n    rc = cli.run({args!r})\n"
            "result = {'rc': rc, 'wall': time.perf_counter() - start, 'out': out.getvalue()[-4000:]}\n")
    return child_peak_rss(code)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output is a file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=128)
    options = parser.parse_args()
    folder = CACHE / f"llm_{options.blocks}x{options.hidden}x{options.ffn}"
    model = folder / "decoder.onnx"
    info_path = folder / "info.json"
    if not info_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        info = archs.decoder_onnx(model, blocks=options.blocks, hidden=options.hidden, ffn=options.ffn,
                                  heads=options.heads, vocab=options.vocab)
        info = {k: Path(v).name if k == "data" else v for k, v in info.items()}  # beside the model: the folder may move
        info_path.write_text(json.dumps(info))
        print(f"built {model} in {time.perf_counter() - start:.0f} s")
    info = json.loads(info_path.read_text())
    info["data"] = str(folder / Path(info["data"]).name)
    print(f"model: {options.blocks} blocks, hidden {options.hidden}, gated MLP {options.ffn}, vocab {options.vocab}: "
          f"{info['params'] / 1e9:.2f} B weights, external data {info['bytes'] / 2**30:.2f} GiB, "
          f"largest tensor {info['largest'] / 2**20:.0f} MiB")
    shape = f"input_ids=1x{options.seq}"
    plan_path = folder / "plan.json"
    plan_args = ["plan", str(model), "--hw", str(OFFCHIP_SPEC), "--budget", "latency=0.5", "--input-shape", shape, "-o", str(plan_path)]
    timings = {}
    for state in ("cold", "warm"):  # cold: the data file evicted from the page cache before each step
        if state == "cold":
            evict(info["data"])
        else:
            sequential_read(info["data"])
        read = sequential_read(info["data"])
        if state == "cold":
            evict(info["data"])
        plan = run_mpq(plan_args)
        if plan["rc"] != 0:
            raise SystemExit(f"mpq plan failed:\n{plan['out']}")
        timings[state] = (read, plan)
    doc = json.loads(plan_path.read_text())
    size = f"{info['params'] / 1e9:.2f} B weights, {info['bytes'] / 2**30:.2f} GiB"
    figures = []
    for state, (read, plan) in timings.items():
        peak, base = plan["peak_rss"], plan["base_rss"]
        print(f"[{state} page cache] one sequential read of the data file: {read:.2f} s "
              f"({info['bytes'] / read / 2**30:.1f} GiB/s); mpq plan: {plan['wall']:.2f} s")
        figures.append(show(figure(f"streaming `mpq plan` wall / one read of the data, {state} page cache ({size})",
                                   plan["wall"] / read, "x", "<= 1.5", plan_s=round(plan["wall"], 2), read_s=round(read, 2))))
        figures.append(show(figure(f"streaming `mpq plan` peak memory / largest tensor, {state} page cache",
                                   peak / info["largest"], "x", "<= 3", peak_mib=round(peak / 2**20),
                                   interpreter_and_libraries_mib=round(base / 2**20),
                                   above_baseline=round((peak - base) / info["largest"], 2))))
    groups = doc["groups"]
    print(f"groups: {len(groups)} ({sum(g['pinned_bits'] is not None for g in groups)} pinned), layers: {len(doc['layers'])}, "
          f"solver {doc['solver']['status']} (gap {doc['solver']['relative_gap']})")
    csv_path = folder / "frontier.csv"
    frontier = run_mpq(["frontier", str(model), "--hw", str(OFFCHIP_SPEC), "--points", "50", "--input-shape", shape,
                        "--csv", str(csv_path)])
    if frontier["rc"] != 0:
        raise SystemExit(f"mpq frontier failed:\n{frontier['out']}")
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    statuses = sorted({r["status"] for r in rows})
    print(f"frontier of {len(rows)} points: {frontier['wall']:.1f} s ({frontier['wall'] / len(rows):.2f} s per point "
          f"including one EAGL pass), peak memory {frontier['peak_rss'] / 2**20:.0f} MiB, solver status: {', '.join(statuses)}")
    figures.append(show(figure(f"streaming {len(rows)}-point `mpq frontier`", frontier["wall"], "s", None,
                               status=statuses[0] if len(statuses) == 1 else ", ".join(statuses),
                               groups=len(groups), peak_mib=round(frontier["peak_rss"] / 2**20))))
    default = all(getattr(options, k) == parser.get_default(k) for k in vars(options))
    name = "bench_scale" if default else f"bench_scale-quick-{options.blocks}x{options.hidden}x{options.ffn}"
    print(f"\nwrote {write_results(name, figures)}")  # other sizes: not the README's figure, not committed


if __name__ == "__main__":
    main()
