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


def frontier_plot(points: list[dict], uniform: dict[int, dict], metric: str, out: str | Path, title: str = "") -> None:
    """Total gain (as a share of each method's best) against cost relative to uniform 8-bit, one
    curve per gain method; uniform 2/4/8-bit plans marked where the hardware offers them.

    ``points``: dicts with method, totals, objective (and "fidelity": {"cosine", ...} on every
    point to add a panel of the measured output cosine to the float model against the same cost);
    ``uniform[b]``: {"totals", "gain": {method: value}}.
    """
    reference = (uniform.get(8) or max(uniform.values(), key=lambda u: u["totals"][metric]))["totals"][metric]
    measured = all("fidelity" in p for p in points)
    if measured:  # beside the gains: each plan's measured output cosine to the float model
        fig, (ax, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    else:
        fig, ax = plt.subplots(figsize=(8, 5.5))
    methods = list(dict.fromkeys(p["method"] for p in points))
    for k, method in enumerate(methods):
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["totals"][metric])
        best = max([p["objective"] for p in mine] + [u["gain"].get(method, float("-inf")) for u in uniform.values()])
        scale = best if best > 0 else 1.0
        xs = [p["totals"][metric] / reference for p in mine]
        ys = [p["objective"] / scale for p in mine]
        line, = ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.5, label=method,
                        linestyle=["-", "--", "-.", ":"][k % 4])
        if measured:
            right.plot(xs, [p["fidelity"]["cosine"] for p in mine], marker="o", markersize=3.5, linewidth=1.5,
                       label=method, linestyle=["-", "--", "-.", ":"][k % 4], color=line.get_color())
        for bits, u in sorted(uniform.items()):
            if method in u["gain"]:
                ax.plot(u["totals"][metric] / reference, u["gain"][method] / scale, marker="*", markersize=11,
                        color=line.get_color(), markeredgecolor="black", linestyle="none")
    for bits, u in sorted(uniform.items()):
        x = u["totals"][metric] / reference
        ax.axvline(x, color="grey", linewidth=0.8, linestyle=":")
        ax.annotate(f"uniform {bits}-bit", (x, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize=8, color="dimgrey", ha="right", va="bottom")
    ax.set_xlabel(f"{metric} relative to uniform 8-bit")
    ax.set_ylabel("total gain (share of the method's best plan)")
    ax.set_title(title or "Optimal plans over a sweep of budgets (★ = uniform precision)")
    ax.grid(alpha=0.3)
    ax.legend(title="gains", fontsize=9)
    if measured:
        right.set_xlabel(f"{metric} relative to uniform 8-bit")
        right.set_ylabel("output cosine to the float model (measured, post-training)")
        right.set_title("Measured fidelity of the same plans (comparable across methods)")
        right.grid(alpha=0.3)
        right.legend(title="gains", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
