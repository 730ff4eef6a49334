"""Plain-text tables and number formatting for the CLI (deterministic: no terminal-width logic)."""
from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """A fixed-width text table; ``right[i]`` right-aligns column i (default: numbers right)."""
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if right is None:
        right = [all(_numeric(r[i]) for r in cells[1:] if r[i]) and len(cells) > 1 for i in range(len(headers))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("x%"))
        return True
    except ValueError:
        return False


def si(value: float, unit: str = "") -> str:
    """1.23G-style number with an optional unit (K, M, G, T; m, u, n for small values)."""
    if value == 0:
        return f"0{unit}"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"), (1, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def shape(dims: Sequence[int] | None) -> str:
    return "-" if dims is None else "x".join(str(d) for d in dims)
