"""Matplotlib figures (PNG, Agg backend, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from planner.atomic import atomic_path  # noqa: E402


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
    _save(fig, out, dpi=110)


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
    _save(fig, out, dpi=120)


def sweep_plot(result, out: str | Path, title: str = "") -> None:
    """The figures of a design-space sweep (a :class:`planner.solve.sweep.SweepResult`), one panel each:
    the plan's cost (at the first target, or gain at the first budget) against each varied field,
    one line per combination of the other fields; a heatmap over the first two fields; the exact
    frontiers of up to six variants overlaid (the Pareto set's first); and, where the spec gives a
    hardware cost, the plans' cost against it with the Pareto set marked."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    from planner.solve.sweep import show

    from planner.costs import unit

    metric = result.metric
    rows = result.rows
    first = rows[0]["given"] if rows else ""
    chosen = [r for r in rows if r["given"] == first]
    at_target = bool(chosen) and chosen[0]["kind"] == "target"
    fields = list(result.variants[0].values) if result.variants else []
    largest = max((r.get("totals", {}).get(metric, 0.0) for r in rows if r.get("totals")), default=0.0)
    factor, prefix = _prefix(largest)
    metric_label = f"{metric} ({prefix}{unit(metric)})" if unit(metric) else metric
    label = f"{metric_label} at {first}" if at_target else f"gain at {first} (share of the largest)"

    def value(r):
        if not r.get("totals"):
            return float("nan")
        return r["totals"][metric] / factor if at_target else r["objective"] / r["max_gain"] if r["max_gain"] else float("nan")

    hardware = any(r["hardware_cost"] is not None and r.get("totals") for r in chosen)
    panels = ["field"] * len(fields) + (["heatmap"] if len(fields) >= 2 else []) + ["frontiers"] + (["hardware"] if hardware else [])
    cols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.2 * cols, 4.6 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    styles = ["-o", "--s", "-.^", ":D", "-v", "--x", "-.P", ":*"]
    for k, f in enumerate(fields):
        ax = flat[k]
        others = [o for o in fields if o != f]
        lines: dict[tuple, list] = {}
        for r in chosen:
            lines.setdefault(tuple(_hashable(r["values"][o]) for o in others), []).append(r)
        categorical = any(isinstance(r["values"][f], (list, tuple)) for r in chosen)
        ticks = list(dict.fromkeys(show(r["values"][f]) for r in chosen))
        if all(len(members) == 1 for members in lines.values()):  # random samples: no lines to draw
            lines = {(): chosen}
            styles_here = ["o"]
        else:
            styles_here = styles
        for n, (key, members) in enumerate(sorted(lines.items())):
            members = sorted(members, key=lambda r: ticks.index(show(r["values"][f])) if categorical else r["values"][f])
            xs = [ticks.index(show(r["values"][f])) if categorical else r["values"][f] for r in members]
            name = ", ".join(f"{o}={show(v)}" for o, v in zip(others, key)) or None
            ax.plot(xs, [value(r) for r in members], styles_here[n % len(styles_here)], markersize=5, linewidth=1.4,
                    label=name if n < 8 else None)
        if categorical:
            ax.set_xticks(range(len(ticks)))
            ax.set_xticklabels([f"{{{t}}}" for t in ticks])
        else:
            xs = [r["values"][f] for r in chosen]
            if min(xs) > 0 and max(xs) / min(xs) >= 8:
                ax.set_xscale("log", base=2)
        ax.set_xlabel(f)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if others and len(lines) > 1:
            ax.legend(fontsize=8)
    k = len(fields)
    if len(fields) >= 2:
        ax = flat[k]
        k += 1
        fx, fy = fields[0], fields[1]
        xt = list(dict.fromkeys(show(r["values"][fx]) for r in chosen))
        yt = list(dict.fromkeys(show(r["values"][fy]) for r in chosen))
        if len({(show(r["values"][fx]), show(r["values"][fy])) for r in chosen}) == len(xt) * len(yt):
            _heatmap(fig, ax, chosen, fx, fy, xt, yt, value, at_target)
            ax.set_title(label + (" (best over other fields)" if len(fields) > 2 else ""), fontsize=9)
        else:  # random samples: no grid, one dot per variant
            def coordinate(r, f, ticks):
                v = r["values"][f]
                return ticks.index(show(v)) if isinstance(v, (list, tuple)) else v

            dots = ax.scatter([coordinate(r, fx, xt) for r in chosen], [coordinate(r, fy, yt) for r in chosen],
                              c=[value(r) for r in chosen], cmap="viridis_r" if at_target else "viridis", edgecolor="black")
            fig.colorbar(dots, ax=ax)
            for f, ticks, axis in ((fx, xt, ax.xaxis), (fy, yt, ax.yaxis)):
                if any(isinstance(r["values"][f], (list, tuple)) for r in chosen):
                    axis.set_ticks(range(len(ticks)))
                    axis.set_ticklabels(ticks)
            ax.grid(alpha=0.3)
            ax.set_title(label, fontsize=9)
        ax.set_xlabel(fx)
        ax.set_ylabel(fy)
    ax = flat[k]
    k += 1
    feasible = [(v, r) for v, r in zip(result.variants, result.results) if r["frontier"]["costs"]]
    marked = {r["variant"] for r in chosen if r["pareto"]}
    order = sorted(feasible, key=lambda vr: (vr[0].index not in marked, vr[0].index))
    picked = order[:6] if marked else feasible[:: max(1, -(-len(feasible) // 6))][:6]
    scale = max((r["max_gain"] or 0 for _, r in feasible), default=0) or 1.0
    for n, (v, r) in enumerate(sorted(picked, key=lambda vr: vr[0].index)):
        ax.step(np.array(r["frontier"]["costs"]) / factor, np.array(r["frontier"]["gains"]) / scale, where="post", linewidth=1.3,
                linestyle=["-", "--", "-.", ":"][n % 4], label=f"{v.index}: {v.describe() or 'base'}")
    if at_target:
        ax.axhline(chosen[0]["fraction"], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}" if f"{x:g}"[0] in "25" else ""))
    ax.set_xlabel(f"{metric_label} of the plan")
    ax.set_ylabel("total gain (share of the sweep's largest)")
    ax.set_title("exact frontiers" + (" (Pareto variants)" if marked else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if hardware:
        ax = flat[k]
        givens = list(dict.fromkeys(r["given"] for r in rows if r["kind"] == chosen[0]["kind"]))[:4] if at_target else [first]
        for n, given in enumerate(givens):
            points = [r for r in rows if r["given"] == given and r["hardware_cost"] is not None and r.get("totals")]
            color = f"C{n}"
            ax.scatter([r["hardware_cost"] for r in points], [value(r) for r in points], facecolor="white",
                       edgecolor=color, zorder=2)
            front = sorted((r for r in points if r["pareto"]), key=lambda r: r["hardware_cost"])
            ax.plot([r["hardware_cost"] for r in front], [value(r) for r in front], "-o", color=color, zorder=3,
                    label=f"{given}: Pareto set")
            for r in points:
                ax.annotate(", ".join(show(r["values"][f]) for f in fields), (r["hardware_cost"], value(r)), fontsize=6,
                            xytext=(3, 3), textcoords="offset points", color=color)
        cost_unit = result.variants[0].spec.hardware_cost_unit
        ax.set_xlabel("hardware cost" + (f" ({cost_unit})" if cost_unit else ""))
        ax.set_ylabel(f"{metric_label} of the plan" if at_target else label)
        ax.set_title("hardware cost against the plan (open: dominated)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Design-space sweep")
    _save(fig, out, dpi=110)


def _save(fig, out: str | Path, dpi: int) -> None:
    """Lay ``fig`` out, write it to ``out`` as PNG at ``dpi`` (atomically) and close it."""
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def _prefix(largest: float) -> tuple[float, str]:
    """(factor, SI prefix) that writes values up to ``largest`` with 1-3 digits before the point."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if largest >= factor:
            return factor, prefix
    return 1.0, ""


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _heatmap(fig, ax, rows, fx, fy, xt, yt, value, lower_is_better) -> None:
    """``value`` of the rows on the grid of fields ``fx`` x ``fy`` (the best where further fields vary)."""
    import numpy as np

    from planner.solve.sweep import show

    grid = np.full((len(yt), len(xt)), np.nan)
    for r in rows:
        i, j = yt.index(show(r["values"][fy])), xt.index(show(r["values"][fx]))
        v = value(r)
        if not np.isnan(v):
            grid[i, j] = v if np.isnan(grid[i, j]) else (min if lower_is_better else max)(grid[i, j], v)
    image = ax.imshow(grid, cmap="viridis_r" if lower_is_better else "viridis", aspect="auto", origin="lower")
    for i in range(len(yt)):
        for j in range(len(xt)):
            v = grid[i, j]
            dark = not np.isnan(v) and sum(image.cmap(image.norm(v))[:3]) < 1.5
            ax.text(j, i, "infeasible" if np.isnan(v) else f"{v:.3g}", ha="center", va="center", fontsize=9,
                    color="red" if np.isnan(v) else "white" if dark else "black")
    ax.set_xticks(range(len(xt)))
    ax.set_xticklabels(xt)
    ax.set_yticks(range(len(yt)))
    ax.set_yticklabels(yt)
    fig.colorbar(image, ax=ax)
