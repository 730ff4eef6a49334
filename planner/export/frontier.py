"""The frontier CSV: one row per (gain method, budget) point of ``mpq frontier``."""
from __future__ import annotations

import csv
import io


def frontier_csv(points: list[dict], metric: str) -> str:
    """CSV text of frontier ``points`` (see :class:`planner.pipeline.FrontierResult`): method,
    fraction, limit, objective, bound, status, greedy objective, every metric's total, the bits
    of each group (space-separated) and, when every point was measured, its top-1 agreement and
    cosine to the float model. Floats are written with ``repr`` (round-trip exact)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    metrics = list(points[0]["totals"]) if points else [metric]
    measured = ["top1_agreement", "cosine"] if points and all("fidelity" in p for p in points) else []
    writer.writerow(["method", "fraction", "limit", "objective", "bound", "status", "greedy_objective", *metrics, "bits",
                     *measured])
    for p in points:
        writer.writerow([p["method"], p["fraction"], repr(p["limit"]), repr(p["objective"]), repr(p["bound"]), p["status"],
                         "" if p["greedy_objective"] is None else repr(p["greedy_objective"]),
                         *(repr(p["totals"][m]) for m in metrics), " ".join(map(str, p["bits"])),
                         *(repr(p["fidelity"][k]) for k in measured)])
    return buffer.getvalue()
