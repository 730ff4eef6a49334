"""Matplotlib figures (PNG, Agg backend, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_path  # noqa: E402


def _short(name: str, width: int = 28) -> str:
    name = name.strip("/")
    return name if len(name) <= width else "…" + name[-(width - 1):]


def compare_plot(data: dict, out: str | Path) -> None:
    """Per-layer share of the 8-bit cost, and the 8 -> 4 saving, one line per (spec, model) pair."""
    names = data["layers"]
    x = list(range(len(names)))
    fig, axes = plt.subplots(3, 1, figsize=(max(10, 0.22 * len(names) + 4), 11), sharex=True)
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 1)), "x")]
    for k, pair in enumerate(data["pairs"]):
        label = f"{pair['spec']} / {pair['cost_model']} ({pair['metric']})"
        line, marker = styles[k % len(styles)]
        for ax, key in zip(axes, ("share_8bit", "saving_8to4", "saving_4to2")):
            ys = [float("nan") if v is None else 100 * v for v in pair[key]]
            ax.plot(x, ys, linestyle=line, marker=marker, markersize=3.5, linewidth=1.3, label=label, alpha=0.85)
    axes[0].set_ylabel("share of 8-bit cost (%)")
    axes[1].set_ylabel("saving 8→4 bits\n(% of 8-bit total)")
    axes[2].set_ylabel("saving 4→2 bits\n(% of 8-bit total)")
    axes[0].set_title("Per-layer cost shares: where each accelerator rewards lower precision")
    axes[0].legend(fontsize=8, loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    step = max(1, len(names) // 60)
    axes[-1].set_xticks(x[::step])
    axes[-1].set_xticklabels([_short(n) for n in names[::step]], rotation=90, fontsize=6)
    axes[-1].set_xlabel("layer (topological order)")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
