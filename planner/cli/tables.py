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



def shape(dims: Sequence[int] | None) -> str:
    """``3x224x224`` for a tensor shape (its dimensions joined by x); ``-`` for None."""
    return "-" if dims is None else "x".join(str(d) for d in dims)


def bits_mix(layers_bits: list, groups_bits: list) -> str:
    """``16 groups (20 layers) at 8-bit, ...``: how many groups and layers run at each width
    (None: in float), widest first."""
    widths = sorted(set(groups_bits), key=lambda b: (b is not None, b or 0), reverse=True)
    return ", ".join(f"{groups_bits.count(b)} groups ({layers_bits.count(b)} layers) at "
                     + (f"{b}-bit" if b is not None else "float") for b in widths)
