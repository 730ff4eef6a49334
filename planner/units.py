"""Units of cost metrics and SI formatting, shared by the library's messages and the CLI's tables.

A metric's unit is read from its name's suffix: ``latency_s`` is in seconds, ``energy_j`` in
joules, ``weight_bytes`` in bytes; other metrics (``bops``, ``macs``) are counts.
"""
from __future__ import annotations

#: Metric-name suffix -> unit.
UNITS = {"_s": "s", "_j": "J", "_bytes": "B"}


def unit(metric: str) -> str:
    """The unit of ``metric`` from its suffix (``"s"``, ``"J"``, ``"B"``), or ``""`` for a count."""
    return next((u for suffix, u in UNITS.items() if metric.endswith(suffix)), "")


def si(value: float, unit: str = "") -> str:
    """``value`` with an SI prefix and three significant digits, e.g. ``si(1.5e-6, "s") == "1.5us"``.

    Prefixes run from T (1e12) down to n (1e-9); smaller values keep the plain number."""
    if value == 0:
        return f"0{unit}"
    value = float(f"{value:.3g}")  # rounded first: 999.6e6 is 1G, not 1e+03M
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"), (1, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"
