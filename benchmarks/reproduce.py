"""Does the method work? The accuracy-cost frontier of EAGL and ALPS against the baselines.

    python benchmarks/reproduce.py            # the full run (about 65 minutes on 2 cores; resumable)
    python benchmarks/reproduce.py --quick    # fewer budgets, seeds and methods (under 15 minutes)

For each task: train full precision, quantize to 4 bits with LSQ (pinned layers 8-bit), estimate
gains with every method, plan on NorthPole latency at budgets r of the way from all-2-bit to
all-4-bit (free groups at 2 or 4 bits, pins at 8), fine-tune every plan with the same recipe,
and score it on the test split. Everything expensive is cached under benchmarks/cache/reproduce
(checkpoints, gains files, a JSON-lines store of every score and timing): an interrupted run
resumes where it stopped. Results go to benchmarks/results/ (CSV, PNG, Markdown).

The fine-tuning recipe, the same for every method and budget: start from the LSQ 4-bit network,
lower the planned groups to 2 bits, fine-tune with LSQ and distillation from the 4-bit network
(weight 0.5, temperature 2), batch-norm statistics re-estimated at the end.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.jobs.store import JobStore  # noqa: E402
from planner.jobs.executors import run_jobs  # noqa: E402

CACHE = ROOT / "benchmarks" / "cache" / "reproduce"
RECIPE = "bn-random"  # part of every fine-tune's key: a change of recipe reruns them
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Setup:
    """What one task's experiment runs."""

    task: str
    pipeline_seeds: list[int]
    fractions: list[float]
    methods: list[str]
    finetune_epochs: float
    finetune_lr: float
    distill: float = 0.5
    noise_seeds: int = 5
    alps_seeds: int = 3
    alps_epochs: float = 1.0
    base_epochs: float | None = None
    extra: dict = field(default_factory=dict)


def setups(quick: bool) -> dict[str, Setup]:
    if quick:
        return {
            "mnist": Setup("mnist", [0], [0.0, 0.5, 1.0], ["eagl", "alps", "hessian", "sensitivity", "params", "random-0"],
                           finetune_epochs=2, finetune_lr=0.01, noise_seeds=3, alps_seeds=2),
            "minilm": Setup("minilm", [0], [0.5], ["eagl", "random-0"], finetune_epochs=0.25, finetune_lr=1e-3,
                            noise_seeds=0, alps_seeds=1, base_epochs=0.25),
        }
    return {
        "mnist": Setup("mnist", [0, 1, 2], [round(0.1 * k, 1) for k in range(11)],
                       ["eagl", "alps", "alps-accuracy", "hessian", "sensitivity", "params", "random-0", "random-1", "random-2"],
                       finetune_epochs=3, finetune_lr=0.01, noise_seeds=5, alps_seeds=3),
        "minilm": Setup("minilm", [0], [0.0, 0.25, 0.5, 0.75, 1.0], ["eagl", "alps", "random-0"],
                        finetune_epochs=0.5, finetune_lr=1e-3, noise_seeds=3, alps_seeds=1, alps_epochs=0.1,
                        base_epochs=0.5),
    }


class Run:
    """One task's pipeline with its caches."""

    def __init__(self, setup: Setup, store: JobStore, executor: str, workers: int, log, ray_address: str | None = None,
                 folder: Path = CACHE):
        import torch

        from planner.tasks import load_task

        torch.set_num_threads(1)  # one thread per process: deterministic, no spinning threads under load
        self.setup, self.store, self.executor, self.workers, self.log = setup, store, executor, workers, log
        self.parallel = {"executor": executor, "workers": workers, "ray_address": ray_address}
        self.task = load_task(setup.task)
        self.folder = folder / setup.task
        self._graphs: dict[int, tuple] = {}

    # -------------------------------------------------------------- models

    def checkpoints(self, seed: int) -> dict[str, Path]:
        """Full precision, LSQ 4-bit and LSQ 8-bit networks of one pipeline seed (cached)."""
        from planner.quant import network
        from planner.quant.checkpoint import load_checkpoint, save_checkpoint

        folder = self.folder / f"seed{seed}"
        paths = {"fp": folder / "fp.pt", "w4": folder / "w4.pt", "w8": folder / "w8.pt"}
        if not paths["fp"].exists():
            self.log(f"{self.setup.task} seed {seed}: full-precision network")
            start = time.perf_counter()
            model = self.task.model()
            if self.setup.task != "minilm":  # MiniLM comes trained
                model = network.train(self.task, model, seed=seed)
            save_checkpoint(paths["fp"], model, self.task, test_score=self.task.evaluate(model))
            self.store.put(f"{self.setup.task}:{seed}:time:fp", time.perf_counter() - start)
        for name, bits in (("w4", 4), ("w8", 8)):
            if not paths[name].exists():
                self.log(f"{self.setup.task} seed {seed}: LSQ {bits}-bit network")
                start = time.perf_counter()
                model = network.train(self.task, load_checkpoint(paths["fp"], self.task), bits=bits, seed=seed,
                                       epochs=self.setup.base_epochs)
                save_checkpoint(paths[name], model, self.task, test_score=self.task.evaluate(model))
                if name == "w4":
                    network.save_onnx_for_planning(self.task, model, folder / "w4.onnx")
                self.store.put(f"{self.setup.task}:{seed}:time:{name}", time.perf_counter() - start)
        return paths

    def score_of(self, path: Path) -> float:
        from planner.quant.checkpoint import read_checkpoint

        return float(read_checkpoint(path)["meta"]["test_score"])

    def graph(self, seed: int, paths: dict[str, Path]):
        """(LayerGraph, layer -> module map) of the seed's 4-bit network, exported once per seed."""
        from planner.quant import network
        from planner.quant.checkpoint import load_checkpoint

        if seed not in self._graphs:
            self._graphs[seed] = network.task_graph(self.task, load_checkpoint(paths["w4"], self.task))
        return self._graphs[seed]

    # -------------------------------------------------------------- gains

    def gains(self, seed: int, method: str, paths: dict[str, Path]):
        """Gains of one method (cached as a gains file; wall time in the store)."""
        from planner.gains import baselines, read_gains
        from planner.gains.alps import alps
        from planner.gains.eagl import eagl
        from planner.gains.hessian import hessian_gains
        from planner.gains.sensitivity import sensitivity_gains
        from planner.quant.checkpoint import load_checkpoint
        from planner.quant.lsq import learned_steps
        from planner.quant.torchmap import float_copy

        graph, mapping = self.graph(seed, paths)
        out = self.folder / f"seed{seed}" / f"gains-{method}.json"
        if out.exists():
            return graph, mapping, read_gains(out, graph)
        base = load_checkpoint(paths["w4"], self.task)
        self.log(f"{self.setup.task} seed {seed}: gains {method}")
        start = time.perf_counter()
        bits = [2, 4]
        if method == "eagl":
            steps = learned_steps(base)
            learned = {layer: {steps[p]["bits"]: steps[p]["weight_step"]} for layer, p in mapping.items()
                       if "weight_step" in steps.get(p, {})}
            result = eagl(graph, bits, learned_steps=learned)
        elif method in ("alps", "alps-accuracy"):
            resume = JobStore(self.folder / f"seed{seed}" / f"{method}.jsonl")
            result = alps(self.task, paths["w4"], graph, mapping, bits, epochs=self.setup.alps_epochs,
                          metric="accuracy" if method == "alps-accuracy" else "kl", seeds=self.setup.alps_seeds,
                          **self.parallel, resume=resume,
                          progress=lambda k, v: self.log(f"  alps job {k.split(':', 1)[1]} -> {v:.5f}"))
        elif method == "hessian":
            result = hessian_gains(self.task, float_copy(base), graph, mapping, bits, learned=learned_steps(base), seed=seed)
        elif method == "sensitivity":
            result = sensitivity_gains(self.task, paths["w4"], graph, mapping, bits, metric="kl", **self.parallel,
                                       resume=JobStore(self.folder / f"seed{seed}" / "sensitivity.jsonl"))
        elif method == "params":
            result = baselines.params(graph, bits)
        elif method.startswith("random-"):
            result = baselines.random(graph, bits, seed=1000 * seed + int(method.split("-")[1]))
        else:
            raise ValueError(method)
        self.store.put(f"{self.setup.task}:{seed}:time:gains:{method}", time.perf_counter() - start)
        result.write(graph, out)
        return graph, mapping, read_gains(out, graph)

    # -------------------------------------------------------------- plans and fine-tunes

    def plans(self, seed: int, paths: dict[str, Path]) -> list[dict]:
        """Every (method, r) plan: bits per module, relative latency, solver time."""
        from planner.solve.budget import endpoints
        from planner.solve import solve
        from planner.quant.torchmap import bits_by_module

        rows = []
        for method in self.setup.methods:
            graph, mapping, gains = self.gains(seed, method, paths)
            table = planning_table(graph, mapping)
            by_group = [{b: gains.by_group[g].get(b, 0.0) for b in options} for g, options in enumerate(table.groups)]
            low, high = endpoints(table, "latency_s", (2, 4))
            for r in self.setup.fractions:
                solution = solve(by_group, table.groups, {"latency_s": low + r * (high - low)})
                by_layer = {l.name: solution.bits[l.group] for l in graph.layers}
                rows.append({"seed": seed, "method": method, "fraction": r, "latency_s": solution.totals["latency_s"],
                             "status": solution.status, "solve_s": solution.wall_time_s,
                             "bits": bits_by_module(graph, mapping, by_layer),
                             "groups_at_4": sum(b == 4 for g, b in zip(graph.groups, solution.bits) if g.pinned_bits is None)})
        return rows

    def uniform_latency(self, seed: int, paths: dict[str, Path]) -> dict[int, float]:
        graph, mapping = self.graph(seed, paths)
        table = planning_table(graph, mapping, restrict=False)
        return {b: table.total(table.uniform(b))["latency_s"] for b in (2, 4, 8)}

    def finetune_all(self, jobs: dict[str, dict]) -> None:
        """Run the fine-tunes not in the store yet, storing each result as it finishes."""
        todo = {k: v for k, v in jobs.items() if k not in self.store}
        if not todo:
            return
        self.log(f"{self.setup.task}: {len(todo)} fine-tunes to run ({len(jobs) - len(todo)} already done), "
                 f"executor {self.executor} x{self.workers}")
        done = [0]
        start = time.perf_counter()

        def finished(key: str, value: dict) -> None:
            self.store.put(key, value)
            done[0] += 1
            elapsed = time.perf_counter() - start
            eta = elapsed / done[0] * (len(todo) - done[0])
            self.log(f"  [{done[0]}/{len(todo)}] {key.split(':', 2)[2][:60]} -> test {value['test']:.2f} "
                     f"(ETA {eta / 60:.1f} min)")

        from planner.quant.network import finetune_job

        run_jobs(finetune_job, todo, finished, **self.parallel)

    def job(self, paths, bits_by_module, seed: int) -> dict:
        return {"task_ref": self.setup.task, "checkpoint": str(paths["w4"]), "bits_by_module": bits_by_module,
                "epochs": self.setup.finetune_epochs, "lr": self.setup.finetune_lr, "seed": seed, "distill": self.setup.distill}

    def run(self) -> dict:
        s = self.setup
        records, uniform, noise = [], {}, []
        all_jobs: dict[str, dict] = {}
        pipeline = {}
        for seed in s.pipeline_seeds:
            paths = self.checkpoints(seed)
            plans = self.plans(seed, paths)
            latency = self.uniform_latency(seed, paths)
            pipeline[seed] = (paths, plans, latency)
            for p in plans:
                key = f"{s.task}:ft:{seed}:{json.dumps(p['bits'], sort_keys=True)}:{s.finetune_epochs}:{s.finetune_lr}:{s.distill}:{RECIPE}"
                p["key"] = key
                all_jobs[key] = self.job(paths, p["bits"], seed)
            w8 = {m: 8 for m in _module_bits(paths["w8"])}
            all_jobs[f"{s.task}:ft8:{seed}:{RECIPE}"] = {**self.job({"w4": paths["w8"]}, w8, seed), "distill": 0.0}
        if s.noise_seeds:  # one mid-frontier plan, fine-tuned with several seeds
            seed0 = s.pipeline_seeds[0]
            paths, plans, _ = pipeline[seed0]
            probe = min((p for p in plans if p["method"] == s.methods[0]), key=lambda p: abs(p["fraction"] - 0.5))
            for k in range(s.noise_seeds):
                all_jobs[f"{s.task}:noise:{seed0}:{k}:{RECIPE}"] = {**self.job(paths, probe["bits"], 100 + k)}
        self.finetune_all(all_jobs)
        for seed, (paths, plans, latency) in pipeline.items():
            for p in plans:
                result = self.store.get(p["key"])
                records.append({**{k: v for k, v in p.items() if k not in ("bits", "key")}, "test": result["test"],
                                "relative_latency": p["latency_s"] / latency[8]})
            uniform[seed] = {"latency": latency, "fp": self.score_of(paths["fp"]), "w4": self.score_of(paths["w4"]),
                             "w8": self.store.get(f"{s.task}:ft8:{seed}:{RECIPE}")["test"]}
        if s.noise_seeds:
            noise = [self.store.get(f"{s.task}:noise:{s.pipeline_seeds[0]}:{k}:{RECIPE}")["test"] for k in range(s.noise_seeds)]
        times = {m: [self.store.get(f"{s.task}:{seed}:time:gains:{m}") for seed in s.pipeline_seeds] for m in s.methods}
        return {"records": records, "uniform": uniform, "noise": noise, "gain_times": times, "setup": s.__dict__}


def planning_table(graph, mapping: dict[str, str], restrict: bool = True):
    """NorthPole costs with free groups at 2 or 4 bits (``restrict``), pins at 8, and groups the
    torch model cannot quantize (attention MatMuls: torch.matmul, not modules) kept at 8 bits."""
    from costmodels import load_cost_model
    from hw import load_spec
    from planner.costs import cost_table

    full = cost_table(graph, load_spec("northpole"), load_cost_model("northpole"))
    fixed = {g.id for g in graph.groups if g.pinned_bits is not None}
    table = full.restricted([2, 4] if restrict else [2, 4, 8], fixed)
    for g in graph.groups:
        if g.id not in fixed and not any(n in mapping for n in g.layers):
            table.groups[g.id] = {8: full.groups[g.id][8]}
    return table


def _module_bits(path: Path) -> list[str]:
    from planner.quant.checkpoint import read_checkpoint

    return list(read_checkpoint(path)["bits"])


# ------------------------------------------------------------------------------ report

INTRO = """# Does the method work? EAGL and ALPS against the baselines

Written by `python benchmarks/reproduce.py` (this file, the CSVs and the PNGs); every number below
comes from that run. The question (Bablani et al., arXiv 2301.13330): does a mix of 4- and
2-bit layers chosen by EAGL or ALPS recover the accuracy of the higher precision and beat
commensurate methods over the whole accuracy-throughput frontier, at a fraction of their compute?

**Protocol.** For each task and pipeline seed: train at full precision, quantize to W4A4 with LSQ
(first and last layers pinned at 8 bits), estimate every method's gains on that network, plan on
NorthPole latency with the exact solver at budgets r of the way from all-2-bit to all-4-bit (free
groups at 2 or 4 bits), fine-tune every plan with the same recipe, score it on the test split. No
method is tuned on the test split: ALPS, sensitivity and the Hessian read the training and
validation splits only.

**Fine-tuning recipe** (the same for every method and budget), chosen for stability before any
method was compared: start from the LSQ 4-bit network, lower the planned groups, fine-tune with LSQ
and distillation from the 4-bit network (weight 0.5, temperature 2), re-estimate batch-norm
statistics at the end. Its spread over fine-tuning seeds on one fixed plan is reported per task as
the noise; a difference between methods smaller than that spread is not a win.

**Methods.** `eagl`: entropy of each layer's weights on the grid of the steps LSQ learned at 4 bits
(data-free). `alps`: each group lowered to 2 bits, fine-tuned one epoch, scored by the KL divergence
to the 4-bit network on the validation split (continuous: accuracy on 500 validation digits is below
the noise). `alps-accuracy`: the same scored by validation accuracy, as the paper does. `hessian`:
HAWQ's Hutchinson trace x weight quantization error. `sensitivity`: AIMET-style, each group lowered
without fine-tuning, KL to the 4-bit network. `params`: weight count. `random`: seeded random gains
(three seeds per pipeline seed, averaged).
"""

TASK_NOTES = {
    "mnist": """**The MNIST network.** The 3-stage ResNet of the reference calibration (widths 8/16/32, 6 free
groups), kept at that size because 2-bit layers hurt it: there, plain LSQ at W2A2 lost about 8
points against W4A4. The stable recipe (distillation, BN re-estimation) narrows that gap to the
"room to plan" figure below, still several times the noise; widths were not swept. With 6 free
groups there are only 64 possible plans: identical plans are fine-tuned once per pipeline seed
(same seed, same result), so methods that choose the same plan get the same number. ALPS scores by KL to the 4-bit network on the 500 validation digits
(accuracy on them moves in steps of 0.2 points, below the noise); `alps-accuracy` is the paper's
accuracy score, for comparison.""",
    "minilm": """**The transformer.** all-MiniLM-L6-v2 with its trained weights (`planner.tasks.minilm`): its
score is Recall@1 of 1,000 first halves of standard-library docstring paragraphs retrieving their
own second halves; training and ALPS distil toward the full-precision embeddings on 1,000 disjoint
paragraphs, ALPS scores by mean (1 - cosine) to them on 300 validation paragraphs. The 24 Linear
groups (Q/K/V of a block are one group) are planned; the attention MatMuls (activation x
activation) stay at 8 bits, and the embedding output and pooler are not quantized. Scaled to 2 CPU
cores: the 4-bit base is trained for half an epoch, every plan is fine-tuned for half an epoch and
ALPS fine-tunes each lowered group for a tenth of an epoch (the paper: one), one seed.""",
}


def family(method: str) -> str:
    return "random" if method.startswith("random-") else method


def summarise(result: dict) -> dict:
    """Mean, spread and count of test scores per (method family, fraction)."""
    cells: dict[tuple[str, float], list[dict]] = {}
    for r in result["records"]:
        cells.setdefault((family(r["method"]), r["fraction"]), []).append(r)
    table = {}
    for (m, f), rows in cells.items():
        scores = [r["test"] for r in rows]
        table[(m, f)] = {"mean": statistics.fmean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                         "min": min(scores), "max": max(scores), "n": len(scores),
                         "latency": statistics.fmean(r["relative_latency"] for r in rows),
                         "solve_s": statistics.fmean(r["solve_s"] for r in rows)}
    return table


def plot(task: str, result: dict, table: dict, out: Path, metric_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    methods = list(dict.fromkeys(family(m) for m in result["setup"]["methods"]))
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1))]
    for k, m in enumerate(methods):
        points = sorted((f, v) for (mm, f), v in table.items() if mm == m)
        xs = [v["latency"] for _, v in points]
        ys = [v["mean"] for _, v in points]
        lo = [v["mean"] - v["std"] for _, v in points]
        hi = [v["mean"] + v["std"] for _, v in points]
        line, = ax.plot(xs, ys, marker="o", markersize=4, linestyle=styles[k % len(styles)], label=m)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
    seeds = list(result["uniform"].values())
    lat = {b: statistics.fmean(u["latency"][b] / u["latency"][8] for u in seeds) for b in (2, 4, 8)}
    w8 = statistics.fmean(u["w8"] for u in seeds)
    w4 = statistics.fmean(u["w4"] for u in seeds)
    fp = statistics.fmean(u["fp"] for u in seeds)
    w2 = [v["mean"] for (m, f), v in table.items() if f == 0.0]
    ax.plot([lat[8]], [w8], marker="*", markersize=13, color="black", linestyle="none", label="uniform 8-bit (LSQ)")
    ax.plot([lat[4]], [w4], marker="P", markersize=11, color="black", linestyle="none", label="uniform 4-bit (LSQ base)")
    if w2:
        ax.plot([lat[2]], [statistics.fmean(w2)], marker="X", markersize=11, color="black", linestyle="none",
                label="uniform 2-bit (r = 0)")
    ax.axhline(fp, color="grey", linestyle="--", linewidth=1, label="full precision")
    ax.set_xlabel("latency on NorthPole relative to uniform 8-bit (pinned layers 8-bit)")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{task}: accuracy vs latency of optimal plans (mean ± std over pipeline seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_outputs(results: dict[str, dict], quick: bool) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    lines = []
    for task, result in results.items():
        table = summarise(result)
        metric = "test accuracy (%)" if task == "mnist" else "Recall@1 (%)"
        plot(task, result, table, RESULTS / f"{task}-frontier{suffix}.png", metric)
        with open(RESULTS / f"{task}-runs{suffix}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["seed", "method", "fraction", "relative_latency", "groups_at_4", "test", "status", "solve_s"])
            for r in result["records"]:
                writer.writerow([r["seed"], r["method"], r["fraction"], f"{r['relative_latency']:.4f}", r["groups_at_4"],
                                 f"{r['test']:.2f}", r["status"], f"{r['solve_s']:.4f}"])
        lines.append(markdown(task, result, table, metric, suffix))
    return "\n\n".join(lines)


def markdown(task: str, result: dict, table: dict, metric: str, suffix: str) -> str:
    setup = result["setup"]
    methods = list(dict.fromkeys(family(m) for m in setup["methods"]))
    fractions = setup["fractions"]
    seeds = list(result["uniform"].values())
    noise = result["noise"]
    spread = statistics.stdev(noise) if len(noise) > 1 else None
    out = [f"## {task}{' (quick run)' if suffix else ''}", ""]
    if not suffix and task in TASK_NOTES:
        out += [TASK_NOTES[task], ""]
    out.append(f"Pipeline seeds: {len(setup['pipeline_seeds'])}; budgets r = {', '.join(map(str, fractions))} of the way "
               f"from all-2-bit to all-4-bit NorthPole latency; fine-tuning {setup['finetune_epochs']} epoch(s), lr "
               f"{setup['finetune_lr']}, distillation weight {setup['distill']} from the 4-bit network, batch-norm statistics (if any) re-estimated; "
               f"ALPS {setup['alps_epochs']} epoch(s) per group, {setup['alps_seeds']} fine-tuning seed(s) averaged.")
    out.append("")
    fp = statistics.fmean(u["fp"] for u in seeds)
    out.append(f"Reference points ({metric}, mean over pipeline seeds): full precision {fp:.2f}, uniform 8-bit "
               f"{statistics.fmean(u['w8'] for u in seeds):.2f}, uniform 4-bit {statistics.fmean(u['w4'] for u in seeds):.2f}.")
    if spread is not None:
        out.append(f"Noise: one plan ({setup['methods'][0]}, mid-frontier) fine-tuned with {len(noise)} seeds: "
                   f"{', '.join(f'{x:.2f}' for x in noise)} (std {spread:.2f}). A difference smaller than this is not a win.")
    ends = [table.get((methods[0], f)) for f in (0.0, 1.0)]
    if all(ends):
        gap = ends[1]["mean"] - ends[0]["mean"]
        out.append(f"Room to plan: all-4-bit (r = 1) scores {ends[1]['mean']:.2f}, all-2-bit (r = 0) {ends[0]['mean']:.2f} "
                   f"after the same fine-tuning, a gap of {gap:.2f}" + (f" ({gap / spread:.1f}x the noise)." if spread else "."))
    out.append("")
    out.append(f"![{task} frontier]({task}-frontier{suffix}.png)")
    out.append("")
    header = "| method | " + " | ".join(f"r={f}" for f in fractions) + " | mean over r |"
    out += [header, "|" + "---|" * (len(fractions) + 2)]
    area = {}
    for m in methods:
        cells = [table.get((m, f)) for f in fractions]
        area[m] = statistics.fmean(c["mean"] for c in cells if c)
        out.append(f"| {m} | " + " | ".join(f"{c['mean']:.2f} ± {c['std']:.2f}" if c else "-" for c in cells)
                   + f" | {area[m]:.2f} |")
    out.append("")
    out.append("Relative latency at each r (mean): " + ", ".join(
        f"r={f}: {statistics.fmean(v['latency'] for (m, ff), v in table.items() if ff == f):.3f}" for f in fractions))
    out.append("")
    out.append("Wall time of each gain method (seconds, mean over pipeline seeds): " + ", ".join(
        f"{m} {statistics.fmean(t for t in ts if t is not None):.3g}" for m, ts in result["gain_times"].items()
        if any(t is not None for t in ts)))
    out.append(f"Solver time per frontier point: mean {statistics.fmean(r['solve_s'] for r in result['records']) * 1e3:.0f} ms, "
               f"max {max(r['solve_s'] for r in result['records']) * 1e3:.0f} ms; statuses: "
               f"{', '.join(sorted({r['status'] for r in result['records']}))}.")
    out.append("")
    out += verdict(task, result, table, methods, fractions, spread, metric)
    return "\n".join(out)


def verdict(task: str, result: dict, table: dict, methods: list[str], fractions: list[float], spread: float | None,
            metric: str) -> list[str]:
    """The paper's claims, each with what these numbers say."""
    seeds = list(result["uniform"].values())
    w4 = statistics.fmean(u["w4"] for u in seeds)
    reference = "the LSQ 4-bit base"
    if 1.0 in fractions and table.get((methods[0], 1.0)):  # all-4-bit through the same fine-tuning: the fair reference
        w4, reference = table[(methods[0], 1.0)]["mean"], "all-4-bit after the same fine-tuning (r = 1)"
    noise = spread if spread is not None else 0.0
    ours = [m for m in ("eagl", "alps") if m in methods]
    baselines = [m for m in methods if m not in ("eagl", "alps", "alps-accuracy")]
    out = [f"### Claims of the paper, checked on {task}", ""]
    recover = []
    for m in ours:
        hit = next((f for f in fractions if f < 1.0 and table.get((m, f)) and table[(m, f)]["mean"] >= w4 - noise), None)
        recover.append(f"{m}: " + (f"within the noise ({noise:.2f}) of {reference} ({w4:.2f}) from r = {hit} "
                                   f"(latency {table[(m, hit)]['latency']:.3f} of 8-bit)" if hit is not None else
                                   f"never within the noise ({noise:.2f}) of {reference} ({w4:.2f}) below r = 1"))
    out.append("1. *A mix of 4- and 2-bit layers recovers the accuracy of the higher precision.* " + "; ".join(recover) + ".")
    lines = []
    for m in ours:
        wins = losses = ties = 0
        for f in fractions:
            if f in (0.0, 1.0) or not table.get((m, f)):
                continue  # all methods give the same all-2 / all-4 plan there
            best = max((table[(b, f)]["mean"] for b in baselines if (b, f) in table), default=None)
            if best is None:
                continue
            difference = table[(m, f)]["mean"] - best
            wins += difference > noise
            losses += difference < -noise
            ties += abs(difference) <= noise
        lines.append(f"{m} vs the best baseline at each interior budget: {wins} wins, {ties} within noise, {losses} losses")
    out.append("2. *It beats commensurate methods over the whole frontier.* " + "; ".join(lines) + ".")
    times = {m: statistics.fmean(t for t in ts if t is not None) for m, ts in result["gain_times"].items()
             if any(t is not None for t in ts)}
    if "eagl" in times:
        others = ", ".join(f"{m} {t / times['eagl']:.0f}x" for m, t in times.items() if m != "eagl" and not m.startswith("random")
                           and m != "params")
        out.append(f"3. *At a fraction of their compute.* EAGL took {times['eagl'] * 1e3:.1f} ms; the data-driven methods took "
                   f"(as multiples of EAGL): {others}.")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer budgets, seeds and methods (under 15 minutes).")
    parser.add_argument("--task", choices=["mnist", "minilm", "all"], default="all")
    parser.add_argument("--executor", choices=["local", "processes", "ray"], default="processes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: a local instance with --executor ray).")
    options = parser.parse_args()
    chosen = setups(options.quick)
    tasks = list(chosen) if options.task == "all" else [options.task]
    cache = CACHE / ("quick" if options.quick else "full")
    store = JobStore(cache / "store.jsonl")
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {message}", flush=True)

    results = {}
    for task in tasks:
        results[task] = Run(chosen[task], store, options.executor, options.workers, log, options.ray_address, cache).run()
    text = INTRO + "\n" + write_outputs(results, options.quick)
    name = "README-quick.md" if options.quick else "README.md"
    (RESULTS / name).write_text(text + "\n")
    with open(RESULTS / ("results-quick.json" if options.quick else "results.json"), "w") as f:
        json.dump({t: {k: v for k, v in r.items() if not k.startswith("_")} for t, r in results.items()}, f, indent=1,
                  default=str)
    log(f"done; wrote {RESULTS / name}")
    print(text)


if __name__ == "__main__":
    main()
