"""What EAGL costs per weight, stage by stage, against one numpy pass and one read of the data;
a diagnostic for the streaming `mpq plan` target of bench_scale.py (prints; writes no results).

    python benchmarks/eagl_floor.py [DATA_FILE] [--cores 2]

Every stage runs on one thread over a chunk of 2^18 float32 weights (1 MB, in L2: the best case;
Gaussian weights, precisions 2/4/8 as in the benchmarks, so the 4- and 8-bit grids are counted)
and is timed in CPU time of the thread (time.thread_time, the least of 7 repeats), so that other
processes on a shared machine change the figures little. The page-cache read is timed on
DATA_FILE (default: the 5 GB decoder that bench_scale.py builds, else a 256 MB temporary file),
read twice first so that it is warm, in 1 MB blocks (as EAGL streams a large weight) and in
64 MB blocks (as bench_scale.py's "one read of the data").

The bound printed at the end: EAGL's CPU time per weight (read + mean |w| + level counts) over
``--cores`` cores with nothing else to do, against the wall time the target "plan <= 1.5 x one
read" leaves for the whole plan on the decoder (1.36 B weights), with the read timed now and
with the warm read recorded in benchmarks/results/bench_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from planner.gains import grid

WEIGHTS = 1 << 18
DECODER = Path(__file__).resolve().parent / "cache" / "llm_24x2048x5632" / "decoder.data"
DECODER_WEIGHTS = 1_364_197_376
RESULTS = Path(__file__).resolve().parent / "results"


def cpu_ns_per_weight(fn, weights: int, repeats: int = 7, inner: int = 20) -> float:
    """Least CPU time of this thread per call of ``fn``, in ns per weight."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(inner):
            fn()
        best = min(best, (time.thread_time() - start) / inner)
    return best / weights * 1e9


def read_ns_per_weight(path: Path, block: int) -> tuple[float, float]:
    """(CPU ns per float32 weight, GiB/s of wall time) of one sequential read of ``path`` into one
    reused buffer of ``block`` bytes (the file read twice before: warm page cache)."""
    buffer = memoryview(bytearray(block))

    def read() -> None:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass

    read()
    read()
    wall, cpu = time.perf_counter(), time.thread_time()
    read()
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    size = path.stat().st_size
    return cpu / (size / 4) * 1e9, size / wall / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DECODER if DECODER.exists() else None)
    parser.add_argument("--cores", type=int, default=2)
    options = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; CPU ns per weight, one thread, chunk of {WEIGHTS} float32 weights")
    w = (np.random.default_rng(0).standard_normal(WEIGHTS) * 0.02).astype(np.float32)
    mean, peak = grid.abs_stats(w)
    steps = {b: grid.lsq_step(mean, b) for b in (4, 8)}  # precisions 2/4/8: the 2-bit entropy is not needed
    numpy_pass = cpu_ns_per_weight(lambda: np.add.reduce(w), WEIGHTS)
    stats = cpu_ns_per_weight(lambda: grid.abs_stats(w), WEIGHTS)
    counts = cpu_ns_per_weight(lambda: grid.level_counts(w, steps, peak=peak), WEIGHTS)
    temporary = None
    if options.data is None:
        temporary = tempfile.NamedTemporaryFile(suffix=".bin", delete=False)
        np.zeros(64 << 20, np.float32).tofile(temporary.name)
        options.data = Path(temporary.name)
    try:
        small_read, small_rate = read_ns_per_weight(options.data, 1 << 20)
        large_read, large_rate = read_ns_per_weight(options.data, 64 << 20)
    finally:
        if temporary is not None:
            os.unlink(temporary.name)
    print(f"  one numpy pass (float32 sum):              {numpy_pass:.3f}")
    print(f"  page-cache read, 1 MB blocks:             {small_read:.3f}  ({small_rate:.1f} GiB/s wall)")
    print(f"  page-cache read, 64 MB blocks:            {large_read:.3f}  ({large_rate:.1f} GiB/s wall)")
    print(f"  mean and max |w| (grid.abs_stats):        {stats:.3f}")
    print(f"  4- and 8-bit level counts (level_counts): {counts:.3f}")
    eagl = small_read + stats + counts
    eagl_s = DECODER_WEIGHTS * eagl * 1e-9 / options.cores
    print(f"EAGL: {eagl:.2f} ns per weight = {eagl / numpy_pass:.1f} numpy passes; on the decoder "
          f"({DECODER_WEIGHTS / 1e9:.2f} B weights) on {options.cores} idle cores >= {eagl_s:.2f} s")
    reads = {"now": DECODER_WEIGHTS * 4 / (large_rate * 2**30)}
    recorded = RESULTS / "bench_scale.json"
    if recorded.exists():
        warm = [f for f in json.loads(recorded.read_text())["figures"] if f["figure"].startswith(
            "streaming `mpq plan` wall / one read of the data, warm")]
        if warm:
            reads["bench_scale.json"] = warm[0]["read_s"]
    for source, read_s in reads.items():
        budget = 1.5 * read_s
        print(f"  one read of the data {read_s:.2f} s ({source}): the target leaves {budget:.2f} s for the whole plan, "
              f"<= {budget * options.cores / DECODER_WEIGHTS * 1e9:.2f} ns of CPU per weight; EAGL alone is "
              f"{eagl_s / read_s:.2f} x the read")


if __name__ == "__main__":
    main()
