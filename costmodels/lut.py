"""Measured latencies: a CSV table ``layer,bits,latency_s`` (as HAWQ-V3 and ModelOpt use).

One row per layer and precision; ``layer`` is the ONNX node name that ``mpq inspect`` prints.
A precision missing for every layer is simply not offered; a layer missing some precision that
other layers have is an error that names the missing rows. ``weight_bytes`` is added from the
weights so that memory budgets still work.
"""
from __future__ import annotations

import csv
from pathlib import Path

from planner.errors import MpqError

from . import weight_bytes


class LutCost:
    """Measured latencies from a CSV table (``layer,bits,latency_s``; seconds per layer) given as
    ``table``. Raises MpqError when there is no table or it cannot be read: missing file, not
    UTF-8, not CSV, wrong header, a row whose bits are not an integer or whose latency is not a
    finite number >= 0."""

    name = "lut"
    metrics = ("latency_s", "weight_bytes")

    def __init__(self, table: str | Path | None = None):
        if table is None:
            raise MpqError("the lut cost model needs a table: --lut latency.csv (columns layer,bits,latency_s)")
        self.path = Path(table)
        self.latency = self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict[tuple[str, int], float]:
        if not path.is_file():
            from planner.userfiles import not_a_file

            raise not_a_file(path, "no such latency table")
        table: dict[tuple[str, int], float] = {}
        try:
            return LutCost._parse(path, table)
        except UnicodeDecodeError:
            raise MpqError(f"{path}: not a text file (not UTF-8); a latency table is a CSV with columns "
                           "layer,bits,latency_s") from None
        except csv.Error as e:
            raise MpqError(f"{path}: not a valid CSV ({e})") from None

    @staticmethod
    def _parse(path: Path, table: dict[tuple[str, int], float]) -> dict[tuple[str, int], float]:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"layer", "bits", "latency_s"} <= set(reader.fieldnames):
                raise MpqError(f"{path}: expected a header with columns layer,bits,latency_s; got "
                               f"{','.join(reader.fieldnames or [])}")
            for line, row in enumerate(reader, start=2):
                try:
                    bits, latency = int(row["bits"]), float(row["latency_s"])
                except (TypeError, ValueError):
                    raise MpqError(f"{path}: line {line}: bits must be an integer and latency_s a number, "
                                   f"got {row['bits']!r}, {row['latency_s']!r}") from None
                if not 0 <= latency < float("inf"):
                    raise MpqError(f"{path}: line {line}: latency_s {row['latency_s']} is not a finite number >= 0")
                table[(row["layer"], bits)] = latency
        return table

    def check(self, graph, spec) -> None:
        """Raise MpqError when the table has no row at any precision of ``spec``, or lacks a row for
        some layer of ``graph`` at a precision it has for others (the message names the rows)."""
        offered = sorted({b for _, b in self.latency} & set(spec.precisions))
        if not offered:
            raise MpqError(f"{self.path}: no rows for any of the spec's precisions {list(spec.precisions)}")
        missing = [f"{l.name}@{b}" for l in graph.layers for b in offered if (l.name, b) not in self.latency]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise MpqError(f"{self.path}: missing rows for {', '.join(missing[:3])}{more}; the table needs "
                           f"every layer at bits {offered} (layer names as mpq inspect prints them)")

    def layer_cost(self, layer, bits: int, spec) -> dict[str, float] | None:
        """``{"latency_s": s, "weight_bytes": bytes}`` of ``layer`` at ``bits`` from the table; None
        when ``spec`` does not list ``bits`` or the table has no row for it."""
        if bits not in spec.precisions or (layer.name, bits) not in self.latency:
            return None
        return {"latency_s": self.latency[(layer.name, bits)], "weight_bytes": weight_bytes(layer, bits)}
