"""Does the method work? The accuracy-cost frontier of EAGL and ALPS against the baselines.

    python benchmarks/reproduce.py                  # the full run (resumable; wall time in the results README)
    python benchmarks/reproduce.py --quick          # every stage at toy sizes, end to end (not in CI: its
                                                    # MNIST half alone took 14 minutes on 2 busy cores)
    python benchmarks/reproduce.py --task minilm    # one task; results of the others stay
    python benchmarks/reproduce.py --report-only    # rewrite the READMEs from the stored result files

For each task and base seed: train full precision (MiniLM comes trained), quantize to 4 bits with
LSQ (first and last groups pinned at 8 bits), estimate gains with every method, plan on NorthPole
latency at budgets r of the way from all-2-bit to all-4-bit (free groups at 2 or 4 bits, pins at 8)
with the exact solver (and with the AIMET-style greedy on the same gains), score every plan with
no fine-tuning at all (PTQ) and after the same fine-tuning recipe, on the test split. The noise of
the recipe is measured first. Everything expensive is cached under
benchmarks/cache/reproduce/<mode>/<code version> (checkpoints, gains files, a JSON-lines store of
every score and timing): an interrupted run resumes where it stopped, and a change to the planner
package, the cost models, the hardware specs or the recipe starts afresh. Results go to
benchmarks/results/ (per-task JSON, CSV, PNG, the results README) and the headline table of the
top-level README.

The fine-tuning recipe, the same for every method and budget: start from the LSQ 4-bit network,
lower the planned groups to 2 bits, fine-tune with LSQ and distillation from the 4-bit network
(weight 0.5, temperature 2), batch-norm statistics re-estimated at the end.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.atomic import write_text  # noqa: E402
from planner.jobs.store import JobStore  # noqa: E402
from planner.jobs.executors import run_jobs  # noqa: E402

CACHE = ROOT / "benchmarks" / "cache" / "reproduce"
RECIPE = "bn-random-ptq-v2"  # part of the code version: a change of recipe reruns everything
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- reproduce:start -->", "<!-- reproduce:end -->"
VERSIONED = ("planner", "costmodels", "hw")


def code_version() -> str:
    """sha256 (16 hex digits) of the sources every result depends on: the planner package, the
    cost models and hardware specs (every .py / .json / .yaml file, by relative path) and RECIPE."""
    digest = hashlib.sha256(RECIPE.encode())
    for folder in VERSIONED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".json", ".yaml") and "__pycache__" not in path.parts:
                digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *VERSIONED], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes to the planner)" if dirty else "")


@dataclass
class Setup:
    """What one task's experiment runs.

    ``runs``: (base seed, fine-tuning seed) pairs. A base seed trains its own networks and
    estimates its own gains; each run fine-tunes that base's plans with its seed, so the methods
    are compared in pairs over (run, budget): same base, same fine-tuning seed, same recipe."""

    name: str
    task: str
    runs: list[tuple[int, int]]
    fractions: list[float]
    methods: list[str]
    finetune_epochs: float
    finetune_lr: float
    distill: float = 0.5
    noise_seeds: int = 0
    alps_seeds: int = 1
    alps_epochs: float = 1.0
    alps_metric: str = "kl"
    sensitivity_metric: str = "kl"
    alps_epoch_study: list[float] = field(default_factory=list)
    fp_epochs: float | None = None
    base_epochs: float | None = None
    trained: bool = False
    hessian_samples: int = 16
    premise: bool = False
    single_thread_timing: bool = False
    metric_name: str = "test accuracy (%)"

    @property
    def base_seeds(self) -> list[int]:
        return sorted({b for b, _ in self.runs})


ALL_METHODS = ["eagl", "alps", "alps-accuracy", "hessian", "sensitivity", "aimet", "params", "qerror",
               "random-0", "random-1", "random-2"]
OURS = ("eagl", "alps", "alps-accuracy")


def setups(quick: bool) -> dict[str, Setup]:
    if quick:
        return {
            "mnist-deep": Setup("mnist-deep", "mnist-deep", [(0, 0)], [0.0, 0.5, 1.0], ALL_METHODS, finetune_epochs=0.3,
                                finetune_lr=0.01, noise_seeds=2, alps_epochs=0.1, alps_epoch_study=[0.05, 0.1],
                                fp_epochs=2, base_epochs=1, hessian_samples=4, premise=True, single_thread_timing=True),
            "minilm": Setup("minilm", "planner.tasks.minilm:val100_task", [(0, 0), (0, 1)], [0.5],
                            [m for m in ALL_METHODS if m not in ("alps-accuracy", "random-1", "random-2")],
                            finetune_epochs=0.02, finetune_lr=1e-3, alps_epochs=0.02, alps_metric="accuracy",
                            sensitivity_metric="accuracy", base_epochs=0.05, trained=True, hessian_samples=2,
                            premise=True, metric_name="Recall@1 (%)"),
        }
    return {
        "mnist-deep": Setup("mnist-deep", "mnist-deep", [(0, 0), (1, 1), (2, 2)], [0.0, 0.25, 0.5, 0.75, 1.0],
                            ALL_METHODS, finetune_epochs=1, finetune_lr=0.01, noise_seeds=4, alps_epochs=0.25,
                            alps_epoch_study=[0.1, 0.25, 1.0], premise=True, single_thread_timing=True),
        "minilm": Setup("minilm", "planner.tasks.minilm:val100_task", [(0, 0), (0, 1), (0, 2), (1, 1), (2, 2)],
                        [0.0, 0.5, 1.0],
                        [m for m in ALL_METHODS if m != "alps-accuracy"], finetune_epochs=0.1,
                        finetune_lr=1e-3, noise_seeds=3, alps_epochs=0.1, alps_metric="accuracy",
                        sensitivity_metric="accuracy", base_epochs=0.5, trained=True, hessian_samples=4, premise=True,
                        metric_name="Recall@1 (%)"),
    }


def plan_job(task_ref: str, checkpoint: str, bits_by_module: dict[str, int], epochs: float, lr: float, seed: int,
             distill: float, finetune: bool, ptq: bool) -> dict:
    """Score one plan on the test split: ``ptq`` with no fine-tuning (the 4-bit network's learned
    steps; lowered layers re-initialised as LSQ does, from their weights and one training batch)
    and/or after fine-tuning (``finetune``: LSQ, distillation from the 4-bit network with weight
    ``distill``). Single-threaded and seeded: the same numbers for any executor."""
    import torch

    from planner.quant.checkpoint import load_checkpoint
    from planner.quant.lsq import apply_bits
    from planner.quant.train import fit, loader
    from planner.tasks import load_task

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    task = load_task(task_ref)
    base = load_checkpoint(checkpoint, task)
    out = {}
    if ptq:
        model = apply_bits(base, bits_by_module)
        model.eval()
        x, _ = next(iter(loader(task, task.train_data(), shuffle=True, seed=seed)))
        with torch.no_grad():
            model(x)  # LSQ's initialisation of the re-initialised quantizers, on training data
        out["ptq"] = task.evaluate(model)
    if finetune:
        model = apply_bits(base, bits_by_module)
        fit(model, task, epochs=epochs, lr=lr, seed=seed, teacher=base if distill > 0 else None, distill=distill)
        out["test"] = task.evaluate(model)
    return out


class Run:
    """One task's pipeline with its caches."""

    def __init__(self, setup: Setup, store: JobStore, executor: str, workers: int, log, folder: Path,
                 ray_address: str | None = None):
        import torch

        from planner.tasks import load_task

        torch.set_num_threads(1)  # one thread per process: deterministic, no spinning threads under load
        self.setup, self.store, self.executor, self.workers, self.log = setup, store, executor, workers, log
        self.parallel = {"executor": executor, "workers": workers, "ray_address": ray_address}
        self.task = load_task(setup.task)
        self.folder = folder / setup.name
        self._graphs: dict[int, tuple] = {}
        self._gains: dict[tuple[int, str], object] = {}

    def key(self, *parts) -> str:
        return ":".join([self.setup.name, *map(str, parts)])

    # -------------------------------------------------------------- models

    def checkpoints(self, seed: int) -> dict[str, Path]:
        """Full precision and LSQ 4-bit networks of one base seed (cached)."""
        from planner.quant import network
        from planner.quant.checkpoint import load_checkpoint, save_checkpoint

        folder = self.folder / f"seed{seed}"
        paths = {"fp": folder / "fp.pt", "w4": folder / "w4.pt"}
        if not paths["fp"].exists():
            self.log(f"{self.setup.name} seed {seed}: full-precision network")
            start = time.perf_counter()
            model = self.task.model()
            if not self.setup.trained:
                model = network.train(self.task, model, seed=seed, epochs=self.setup.fp_epochs)
            save_checkpoint(paths["fp"], model, self.task, test_score=self.task.evaluate(model))
            self.store.put(self.key(seed, "time", "fp"), time.perf_counter() - start)
        if not paths["w4"].exists():
            self.log(f"{self.setup.name} seed {seed}: LSQ 4-bit network")
            start = time.perf_counter()
            model = network.train(self.task, load_checkpoint(paths["fp"], self.task), bits=4, seed=seed,
                                   epochs=self.setup.base_epochs)
            save_checkpoint(paths["w4"], model, self.task, test_score=self.task.evaluate(model))
            self.store.put(self.key(seed, "time", "w4"), time.perf_counter() - start)
        return paths

    def score_of(self, path: Path) -> float:
        from planner.quant.checkpoint import read_checkpoint

        return float(read_checkpoint(path)["meta"]["test_score"])

    def graph(self, seed: int, paths: dict[str, Path]):
        """(LayerGraph, layer -> module map) of the seed's 4-bit network, exported once per seed."""
        from planner.quant import network
        from planner.quant.checkpoint import load_checkpoint

        if seed not in self._graphs:
            self._graphs[seed] = network.task_graph(self.task, load_checkpoint(paths["w4"], self.task),
                                                     path=paths["w4"].with_suffix(".onnx"))
        return self._graphs[seed]

    # -------------------------------------------------------------- gains

    def source(self, seed: int, paths):
        """What gains are estimated on: the base's 4-bit network, its graph and layer map."""
        from planner.gains.registry import Source
        from planner.quant.checkpoint import load_checkpoint

        graph, mapping = self.graph(seed, paths)
        return Source(graph=graph, task=self.task, checkpoint=str(paths["w4"]),
                      model=load_checkpoint(paths["w4"], self.task), mapping=mapping)

    def _alps(self, seed: int, paths, graph, mapping, *, epochs: float, metric: str, executor: dict, resume: JobStore):
        from planner.gains.registry import estimate

        return estimate("alps", self.source(seed, paths), [2, 4], epochs=epochs, metric=metric,
                        seeds=self.setup.alps_seeds, **executor, resume=resume)

    def gains(self, seed: int, method: str, paths: dict[str, Path]):
        """Gains of one method on one base (cached as a gains file; wall time in the store), through
        the same registry as ``mpq gains`` and ``mpq plan`` (planner.gains.registry.estimate)."""
        from planner.gains import read_gains
        from planner.gains.registry import estimate

        graph, mapping = self.graph(seed, paths)
        if (seed, method) in self._gains:
            return self._gains[(seed, method)]
        out = self.folder / f"seed{seed}" / f"gains-{method}.json"
        if out.exists():
            self._gains[(seed, method)] = read_gains(out, graph)
            return self._gains[(seed, method)]
        self.log(f"{self.setup.name} seed {seed}: gains {method}")
        resume_file = {"alps": f"alps-{self.setup.alps_metric}.jsonl", "alps-accuracy": "alps-accuracy.jsonl",
                       "sensitivity": "sensitivity.jsonl"}.get(method)
        resumed = resume_file is not None and (self.folder / f"seed{seed}" / resume_file).exists()
        start = time.perf_counter()
        bits = [2, 4]
        folder = self.folder / f"seed{seed}"
        if method in ("alps", "alps-accuracy"):
            metric = "accuracy" if method == "alps-accuracy" else self.setup.alps_metric
            result = self._alps(seed, paths, graph, mapping, epochs=self.setup.alps_epochs, metric=metric,
                                executor=self.parallel, resume=JobStore(folder / f"alps-{metric}.jsonl"))
        elif method.startswith("random-"):
            result = estimate("random", self.source(seed, paths), bits, seed=1000 * seed + int(method.split("-")[1]))
        elif method in ("eagl", "hessian", "sensitivity", "params", "qerror"):
            options = {"hessian": {"seed": seed, "samples": self.setup.hessian_samples},
                       "sensitivity": {"metric": self.setup.sensitivity_metric, **self.parallel,
                                       "resume": JobStore(folder / "sensitivity.jsonl")}}.get(method, {})
            result = estimate(method, self.source(seed, paths), bits, **options)
        else:
            raise ValueError(method)
        self.store.put(self.key(seed, "time", "gains", method), time.perf_counter() - start)
        if resumed:  # an earlier, interrupted process ran some of the jobs: the time above is partial
            self.store.put(self.key(seed, "time", "gains", method, "resumed"), True)
        result.write(graph, out)
        self._gains[(seed, method)] = read_gains(out, graph)
        return self._gains[(seed, method)]

    def single_thread_times(self, seed: int, paths) -> dict[str, float]:
        """Wall time of the parallel methods run single-threaded in this process (sensitivity, and
        ALPS at the shortest epoch budget of the study), measured afresh (nothing resumed)."""
        from planner.gains.registry import estimate

        graph, mapping = self.graph(seed, paths)
        local = {"executor": "local", "workers": 1, "ray_address": None}
        times = {}
        key = self.key(seed, "time", "single", "sensitivity")
        if key not in self.store:
            start = time.perf_counter()
            estimate("sensitivity", self.source(seed, paths), [2, 4], metric=self.setup.sensitivity_metric, **local,
                     resume=JobStore(self.folder / f"seed{seed}" / f"single-{time.time_ns()}.jsonl"))
            self.store.put(key, time.perf_counter() - start)
        times["sensitivity"] = self.store.get(key)
        if self.setup.alps_epoch_study:
            epochs = min(self.setup.alps_epoch_study)
            key = self.key(seed, "time", "single", f"alps@{epochs}")
            if key not in self.store:
                start = time.perf_counter()
                self._alps(seed, paths, graph, mapping, epochs=epochs, metric=self.setup.alps_metric, executor=local,
                           resume=JobStore(self.folder / f"seed{seed}" / f"single-{time.time_ns()}.jsonl"))
                self.store.put(key, time.perf_counter() - start)
            times[f"alps@{epochs}"] = self.store.get(key)
        return times

    def epoch_study(self, seed: int, paths, upto: float | None = None) -> dict:
        """ALPS gains at each epoch budget of the study (up to ``upto``; same metric and seeds as the
        main run), their wall times (with the executor) and pairwise Spearman correlations over the
        free groups."""
        graph, mapping = self.graph(seed, paths)
        folder = self.folder / f"seed{seed}"
        vectors, times = {}, {}
        for epochs in self.setup.alps_epoch_study:
            if upto is not None and epochs > upto:
                continue
            out = folder / f"gains-alps@{epochs}.json"
            key = self.key(seed, "time", "gains", f"alps@{epochs}")
            if epochs == self.setup.alps_epochs:
                gains = self.gains(seed, "alps", paths)
                key = self.key(seed, "time", "gains", "alps")
            elif out.exists():
                from planner.gains import read_gains

                gains = read_gains(out, graph)
            else:
                self.log(f"{self.setup.name} seed {seed}: ALPS at {epochs} epoch(s)")
                start = time.perf_counter()
                gains = self._alps(seed, paths, graph, mapping, epochs=epochs, metric=self.setup.alps_metric,
                                   executor=self.parallel, resume=JobStore(folder / f"alps-{self.setup.alps_metric}.jsonl"))
                self.store.put(key, time.perf_counter() - start)
                gains.write(graph, out)
            vectors[str(epochs)] = [gains.by_group[g.id][4] - gains.by_group[g.id][2] for g in graph.free_groups]
            times[str(epochs)] = self.store.get(key) if key in self.store else None
        names = list(vectors)
        pairs = {f"{a} vs {b}": spearman_ci(vectors[a], vectors[b]) for i, a in enumerate(names) for b in names[i + 1:]}
        return {"gains": vectors, "times": times, "spearman": pairs}

    def premise(self, seed: int, paths) -> dict:
        """EAGL's premise on one base (see :func:`premise_table`), from the gains files."""
        for m in ("eagl", "sensitivity"):
            self.gains(seed, m, paths)
        return premise_table(self.folder / f"seed{seed}")

    # -------------------------------------------------------------- plans and scores

    def plans(self, seed: int, paths: dict[str, Path]) -> list[dict]:
        """Every (method, r) plan of one base: bits per module, latency, solver status and time, and
        the objective of the exact solver and of the AIMET-style greedy on the same gains.
        ``aimet`` is the greedy's plan on the sensitivity gains (AIMET's own pipeline)."""
        from planner.solve.budget import endpoints
        from planner.solve.knapsack import greedy, objective, solve
        from planner.quant.torchmap import bits_by_module

        graph, mapping = self.graph(seed, paths)
        table = planning_table(graph, mapping)
        low, high = endpoints(table, "latency_s", (2, 4))
        rows = []
        for method in self.setup.methods:
            gains = self.gains(seed, "sensitivity" if method == "aimet" else method, paths)
            by_group = [{b: gains.by_group[g].get(b, 0.0) for b in options} for g, options in enumerate(table.groups)]
            for r in self.setup.fractions:
                budgets = {"latency_s": low + r * (high - low)}
                exact = solve(by_group, table.groups, budgets)
                start = time.perf_counter()
                greedy_bits = greedy(by_group, table.groups, budgets)
                greedy_s = time.perf_counter() - start
                bits = greedy_bits if method == "aimet" else exact.bits
                by_layer = {l.name: bits[l.group] for l in graph.layers}
                rows.append({"seed": seed, "method": method, "fraction": r,
                             "latency_s": table.total(bits)["latency_s"], "status": exact.status if method != "aimet" else "GREEDY",
                             "solve_s": exact.wall_time_s, "greedy_s": greedy_s,
                             "objective": exact.objective,
                             "greedy_objective": objective(by_group, greedy_bits) if greedy_bits else None,
                             "bits": bits_by_module(graph, mapping, by_layer),
                             "groups_at_4": sum(b == 4 for g, b in zip(graph.groups, bits) if g.pinned_bits is None)})
        return rows

    def uniform_latency(self, seed: int, paths: dict[str, Path]) -> dict[int, float]:
        graph, mapping = self.graph(seed, paths)
        table = planning_table(graph, mapping, restrict=False)
        return {b: table.total(table.uniform(b))["latency_s"] for b in (2, 4, 8)}

    def run_all(self, jobs: dict[str, dict], what: str, progress=None) -> None:
        """Run the jobs not in the store yet, storing each result as it finishes (then calling
        ``progress()``)."""
        todo = {k: v for k, v in jobs.items() if k not in self.store}
        if not todo:
            return
        self.log(f"{self.setup.name}: {len(todo)} {what} to run ({len(jobs) - len(todo)} already done), "
                 f"executor {self.executor} x{self.workers}")
        done = [0]
        start = time.perf_counter()

        def finished(key: str, value: dict) -> None:
            self.store.put(key, value)
            done[0] += 1
            eta = (time.perf_counter() - start) / done[0] * (len(todo) - done[0])
            shown = ", ".join(f"{k} {v:.2f}" for k, v in value.items())
            self.log(f"  [{done[0]}/{len(todo)}] {key.split(':')[1]} -> {shown} (ETA {eta / 60:.1f} min)")
            if progress:
                progress()

        run_jobs(plan_job, todo, finished, **self.parallel)

    def job(self, paths, bits: dict[str, int], seed: int, *, finetune: bool, ptq: bool) -> dict:
        s = self.setup
        return {"task_ref": s.task, "checkpoint": str(paths["w4"]), "bits_by_module": bits, "epochs": s.finetune_epochs,
                "lr": s.finetune_lr, "seed": seed, "distill": s.distill, "finetune": finetune, "ptq": ptq}

    def run(self, save) -> dict:
        """The whole experiment, base by base so that an interrupted run has whole bases scored:
        for each base seed its networks, gains and plans (the first base: the EAGL-premise table,
        then the noise of the recipe), then every plan scored with no fine-tuning and fine-tuned in
        each of the base's runs; after the last base, ALPS's epoch study and the single-threaded
        timings. ``save(result)`` is called after each stage and every few scores (a partial
        result: ``complete`` False)."""
        s = self.setup
        seed0 = s.base_seeds[0]
        result = {"setup": asdict(s), "noise": [], "records": [], "complete": False, "uniform": {}, "greedy": [],
                  "gain_times": {}}
        bases = {}
        for seed in s.base_seeds:
            paths = self.checkpoints(seed)
            bases[seed] = {"paths": paths, "plans": self.plans(seed, paths), "latency": self.uniform_latency(seed, paths)}
            result["uniform"][str(seed)] = {"latency": bases[seed]["latency"], "fp": self.score_of(paths["fp"]),
                                            "w4": self.score_of(paths["w4"])}
            result["gain_times"] = {m: [self.store.get(self.key(b, "time", "gains", m))
                                        if self.key(b, "time", "gains", m) in self.store else None for b in bases]
                                    for m in s.methods if m != "aimet"}
            result["greedy"] += [{k: v for k, v in p.items() if k != "bits"} for p in bases[seed]["plans"]]
            if seed == seed0:
                if s.premise:
                    result["premise"] = self.premise(seed0, paths)
                save(result)
                if s.noise_seeds:  # first: the spread of the recipe on one mid-frontier plan
                    probe = min((p for p in bases[seed0]["plans"] if p["method"] == s.methods[0]),
                                key=lambda p: abs(p["fraction"] - 0.5))
                    noise_jobs = {self.key("noise", seed0, k, RECIPE): self.job(paths, probe["bits"], 100 + k,
                                                                                  finetune=True, ptq=False)
                                  for k in range(s.noise_seeds)}
                    self.run_all(noise_jobs, "noise fine-tunes")
                    result["noise"] = [self.store.get(k)["test"] for k in noise_jobs]
                    result["noise_plan"] = {"method": probe["method"], "fraction": probe["fraction"]}
                if s.alps_epoch_study:  # the short budgets now (cheap), the longer ones after the scores
                    result["epoch_study"] = self.epoch_study(seed0, paths, upto=s.alps_epochs)
                    save(result)
            self.score_base(seed, bases, result, save)
        if s.alps_epoch_study:
            result["epoch_study"] = self.epoch_study(seed0, bases[seed0]["paths"])
            save(result)
        if s.single_thread_timing:
            result["single_thread"] = self.single_thread_times(seed0, bases[seed0]["paths"])
        result["complete"] = True
        save(result)
        return result

    def score_base(self, seed: int, bases: dict, result: dict, save) -> None:
        """PTQ and fine-tuned scores of one base's plans in each of its runs: PTQ first, then the
        fine-tunes run by run, interior budgets first; records added to ``result`` as they come."""
        s = self.setup
        paths, plans = bases[seed]["paths"], bases[seed]["plans"]
        runs = [ft for b, ft in s.runs if b == seed]
        order = sorted(s.fractions, key=lambda f: (not 0 < f < 1, abs(f - 0.5), f))
        ptq, ft = {}, {}
        for p in plans:
            plan = json.dumps(p["bits"], sort_keys=True)
            p["ptq_key"] = self.key("ptq", seed, plan)
            p["ft_keys"] = {run: self.key("ft", seed, run, plan, s.finetune_epochs, s.finetune_lr, s.distill) for run in runs}
            ptq[p["ptq_key"]] = self.job(paths, p["bits"], 0, finetune=False, ptq=True)
        for run in runs:
            for f in order:
                for p in plans:
                    if p["fraction"] == f:
                        ft[p["ft_keys"][run]] = self.job(paths, p["bits"], run, finetune=True, ptq=False)
        latency = bases[seed]["latency"]

        def records() -> list[dict]:
            out = [r for r in result["records"] if r["seed"] != seed]
            for run in runs:
                for p in plans:
                    if p["ft_keys"][run] in self.store and p["ptq_key"] in self.store:
                        out.append({**{k: v for k, v in p.items() if k not in ("bits", "ptq_key", "ft_keys")},
                                    "run": f"{seed}/{run}", "ft_seed": run, "test": self.store.get(p["ft_keys"][run])["test"],
                                    "ptq": self.store.get(p["ptq_key"])["ptq"],
                                    "relative_latency": p["latency_s"] / latency[8]})
            return out

        last = [time.perf_counter()]

        def progress() -> None:
            if time.perf_counter() - last[0] > 120:
                result["records"] = records()
                save(result)
                last[0] = time.perf_counter()

        self.run_all(ptq, "PTQ scores", progress)
        self.run_all(ft, "fine-tunes", progress)
        result["records"] = records()
        save(result)


def planning_table(graph, mapping: dict[str, str], restrict: bool = True):
    """NorthPole costs with free groups at 2 or 4 bits (``restrict``) and pins at 8; a free group
    whose layers have no torch module to quantize (none in the built-in tasks: attention's products
    are MatMul modules) is kept at 8 bits."""
    from costmodels import load_cost_model
    from hw import load_spec
    from planner.costs.table import cost_table

    full = cost_table(graph, load_spec("northpole"), load_cost_model("northpole"))
    fixed = {g.id for g in graph.groups if g.pinned_bits is not None}
    table = full.restricted([2, 4] if restrict else [2, 4, 8], fixed)
    for g in graph.groups:
        if g.id not in fixed and not any(n in mapping for n in g.layers):
            table.groups[g.id] = {8: full.groups[g.id][8]}
    return table


def premise_table(folder: Path) -> dict | None:
    """Per free group of the gains files in ``folder``: EAGL's gain of 4 over 2 bits (summed over
    the group's layers, as EAGL plans with it, and per layer), the validation score lost when the
    group alone drops to 2 bits without fine-tuning (sensitivity) and with ALPS's fine-tune (where
    measured), whether EAGL measured the group (weightless MatMuls get the median), and Spearman
    correlations with bootstrap intervals over groups, for all groups and for the measured ones."""
    docs = {}
    for m in ("eagl", "sensitivity", "alps"):
        path = folder / f"gains-{m}.json"
        if path.exists():
            docs[m] = json.loads(path.read_text())
    if "eagl" not in docs or "sensitivity" not in docs:
        return None
    estimated = set(docs["eagl"].get("extra", {}).get("estimated_layers", []))
    rows = []
    for k, g in enumerate(docs["eagl"]["groups"]):
        if g["pinned_bits"] is not None:
            continue
        row = {"group": g["id"], "layer": g["layers"][0], "layers": len(g["layers"]),
               "weighted": not any(n in estimated for n in g["layers"])}
        for m, doc in docs.items():
            other = doc["groups"][k]
            assert other["layers"] == g["layers"], f"{m} gains are for another graph"
            row[m] = other["gains"]["4"] - other["gains"]["2"]
        row["eagl per layer"] = row["eagl"] / row["layers"]
        rows.append(row)
    subsets = [("all", rows)]
    if not all(r["weighted"] for r in rows):
        subsets.append(("weighted", [r for r in rows if r["weighted"]]))
    out = {"rows": rows, "spearman": {}}
    for subset, chosen in subsets:
        for a, b in (("eagl", "sensitivity"), ("eagl", "alps"), ("eagl per layer", "sensitivity"),
                     ("eagl per layer", "alps"), ("sensitivity", "alps")):
            if a in rows[0] and b in rows[0]:
                out["spearman"][f"{a} vs {b} ({subset} groups)"] = spearman_ci([r[a] for r in chosen],
                                                                               [r[b] for r in chosen])
    return out


# ------------------------------------------------------------------------------ statistics


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    sa = math.fsum((x - ma) ** 2 for x in ra)
    sb = math.fsum((y - mb) ** 2 for y in rb)
    if sa == 0 or sb == 0:
        return None
    return math.fsum((x - ma) * (y - mb) for x, y in zip(ra, rb)) / math.sqrt(sa * sb)


def spearman_ci(a: list[float], b: list[float], reps: int = 2000, seed: int = 0) -> dict:
    """Spearman's rho with a 95% percentile bootstrap interval (items resampled with replacement)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rho = spearman(a, b)
    samples = []
    for _ in range(reps):
        idx = rng.integers(0, len(a), len(a))
        r = spearman([a[i] for i in idx], [b[i] for i in idx])
        if r is not None:
            samples.append(r)
    lo, hi = (float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))) if samples else (None, None)
    return {"rho": rho, "lo": lo, "hi": hi, "n": len(a)}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` against ``losses`` (ties dropped) at p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * math.fsum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired(differences: list[float], reps: int = 10000, seed: int = 0) -> dict:
    """Mean paired difference with a 95% percentile bootstrap interval, wins / ties / losses and
    the sign test's p-value."""
    import numpy as np

    d = np.array(differences, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (reps, len(d)))].mean(axis=1)
    wins, losses = int((d > 1e-9).sum()), int((d < -1e-9).sum())
    return {"n": len(d), "mean": float(d.mean()), "lo": float(np.percentile(means, 2.5)),
            "hi": float(np.percentile(means, 97.5)), "wins": wins, "ties": len(d) - wins - losses, "losses": losses,
            "p": sign_test(wins, losses)}


# ------------------------------------------------------------------------------ report

INTRO = """# Does the method work? EAGL and ALPS against the baselines, round 2

Written by `python benchmarks/reproduce.py` (this file, the CSVs, the PNGs and the per-task JSON
files); every number below comes from that run's stored results. The question (Bablani et al.,
arXiv 2301.13330): does a mix of 4- and 2-bit layers chosen by EAGL or ALPS recover the accuracy
of the higher precision and beat commensurate methods over the whole accuracy-throughput
frontier, at a fraction of their compute?

**Protocol.** For each task and base seed: train at full precision (MiniLM comes trained),
quantize to W4A4 with LSQ (first and last groups pinned at 8 bits), estimate every method's gains
on that network, plan on NorthPole latency at budgets r of the way from all-2-bit to all-4-bit
(free groups at 2 or 4 bits) with the exact solver, and score every plan on the test split twice:
with no fine-tuning at all (PTQ: the 4-bit network's learned steps, lowered groups re-initialised
as LSQ does from their weights and one training batch) and after the fine-tuning recipe. A *run*
is a (base seed, fine-tuning seed) pair; every method's plans are fine-tuned in the same runs, so
methods are compared in pairs over (run, budget): same base, same seed, same recipe. No method is
tuned on the test split: ALPS, sensitivity and the Hessian read the training and validation
splits only.

**Fine-tuning recipe** (the same for every method and budget): start from the LSQ 4-bit network,
lower the planned groups, fine-tune with LSQ and distillation from the 4-bit network (weight 0.5,
temperature 2), re-estimate batch-norm statistics at the end. Its spread over fine-tuning seeds is
measured first and reported per task as the noise.

**Methods.** `eagl`: entropy of each layer's weights on the grid of the steps LSQ learned at 4 bits
(data-free). `alps`: each group lowered to 2 bits alone, fine-tuned, scored on the validation split
by a continuous score (MNIST: KL divergence to the 4-bit network; MiniLM: mean cosine to the
full-precision embeddings). `alps-accuracy`: the same scored by validation accuracy, as the paper
does (MNIST only: MiniLM has no labels). `hessian`: HAWQ's Hutchinson trace x quantization error
(weights; activations for the attention products). `sensitivity`: AIMET-style, each group lowered
without fine-tuning, scored like ALPS. `aimet`: AIMET's own pipeline, the sensitivity gains planned
by the AIMET-style greedy instead of the exact solver. `params`: weight count. `qerror`: the drop in
weight quantization error from 2 to 4 bits (the data-free half of HAWQ). `random`: seeded random
gains, three seeds per base (random-0/1/2), averaged per run in the paired tests.

**Paired tests.** For each method and interior budget (0 < r < 1) of each run, the difference
between its fine-tuned score and the best baseline's (the baseline with the highest mean over those
pairs: hessian, sensitivity, aimet, params, qerror or random). Reported: the mean difference with a
95% bootstrap interval (10,000 resamples of the pairs), wins / ties / losses, and the two-sided
sign test's p-value (ties dropped). Choosing the best baseline after the fact favours the
baseline, so a win against it is conservative.
"""

TASK_NOTES = {
    "mnist-deep": """**The network** (`mnist-deep`, `planner.tasks.mnist.ResNet`): MNIST-5k (3,500 training, 500
validation, 1,000 test digits) on a ResNet of 4 stages x 2 basic blocks (widths 8/16/32/64): 16
free groups (2^16 possible plans; each stage's 1x1 downsample shares its group with the first 3x3
conv, which reads the same input), stem and classifier pinned at 8 bits. How it was chosen: the
issue asks for >= 16 free groups, which 4 x 2 blocks give exactly; the widths double per stage from
the small network's 8, and were not swept (the compute budget of this run allowed no sweep); the
criterion "all-2-bit loses at least 5x the noise against all-4-bit after the standard fine-tune"
is checked by this run itself, in the *room to plan* line below.
**Scaled to the compute budget** (2 CPU cores shared with the MiniLM run and other work, at
nice 10): three pipeline seeds, each its own base (seed s: full precision 6 epochs, LSQ 4-bit 5
epochs), its own gains and plans, fine-tuned with seed s (runs 0/0, 1/1, 2/2), so the paired tests
capture the variation between bases, gain estimates and fine-tunes together. Fine-tuning 1 epoch
(the small network's previous round: 3), batch norms re-estimated on 256 training digits. ALPS
fine-tunes each lowered group for 0.25 epoch with one seed (the paper: one epoch; the epoch study
below compares 0.1, 0.25 and 1 epoch on base 0).""",
    "minilm": """**The transformer** (`planner.tasks.minilm:val100_task`): all-MiniLM-L6-v2 with its trained
weights, scored by Recall@1 of 1,000 first halves of standard-library docstring paragraphs
retrieving their own second halves; fine-tuning distils toward the full-precision embeddings on
1,000 disjoint paragraphs. ALPS and sensitivity score by mean cosine to the full-precision
embeddings on the first 100 validation paragraphs (200 texts; the task's 300 cost three times as
much). Planned: 34 free groups, the 22 free Linear groups (Q/K/V of a block are one group) **and
the 12 attention MatMuls** (Q·Kᵀ and P·V, activation x activation), at their planned bits in
fine-tuning and scoring; the first block's Q/K/V and the last block's output dense are pinned,
the embeddings and pooling are not quantized.
**Scaled recipe** (2 CPU cores shared with the MNIST run and other work, at nice 10): three
pipeline seeds, each its own 4-bit base (half an epoch of LSQ from the trained weights, seed s),
its own gains and plans; base 0's plans are fine-tuned with three seeds (runs 0/0, 0/1, 0/2) and
bases 1 and 2 with one (runs 1/1, 2/2), so the paired tests see both the fine-tuning noise and the
variation between bases and gain estimates; fine-tuning 0.1 epoch; ALPS fine-tunes each lowered
group for 0.1 epoch (the paper: one) and scores it like sensitivity; the Hessian with 4
Rademacher samples. The noise: one plan of base 0 fine-tuned with three more seeds, first.""",
}


def family(method: str) -> str:
    return "random" if method.startswith("random-") else method


def interior(fractions) -> list[float]:
    return [f for f in fractions if 0.0 < f < 1.0]


def summarise(records: list[dict], score: str) -> dict:
    """Mean and spread of ``score`` per (method family, fraction), over runs (random seeds pooled)."""
    cells: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        cells.setdefault((family(r["method"]), r["fraction"]), []).append(r)
    table = {}
    for (m, f), rows in cells.items():
        scores = [r[score] for r in rows]
        table[(m, f)] = {"mean": statistics.fmean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                         "n": len(scores), "latency": statistics.fmean(r["relative_latency"] for r in rows)}
    return table


def per_pair(records: list[dict], score: str) -> dict[str, dict[tuple[str, float], float]]:
    """method family -> (run, fraction) -> score (random seeds averaged). PTQ scores do not depend
    on the fine-tuning seed: they are paired over (base seed, fraction), each counted once."""
    cells: dict[str, dict[tuple[str, float], list[float]]] = {}
    seen = set()
    for r in records:
        unit = str(r["seed"]) if score == "ptq" else r["run"]
        if (r["method"], unit, r["fraction"]) in seen:
            continue
        seen.add((r["method"], unit, r["fraction"]))
        cells.setdefault(family(r["method"]), {}).setdefault((unit, r["fraction"]), []).append(r[score])
    return {m: {k: statistics.fmean(v) for k, v in c.items()} for m, c in cells.items()}


def comparisons(result: dict, score: str) -> dict:
    """Every method against the best baseline over the interior (run, fraction) pairs."""
    fractions = interior(result["setup"]["fractions"])
    pairs = per_pair(result["records"], score)
    # (run, budget) pairs every method has a score for (an interrupted run may lack some)
    keys = sorted(set.intersection(*[{k for k in c if k[1] in fractions} for c in pairs.values()])) if pairs else []
    if not keys:
        return {}
    baselines = [m for m in pairs if m not in OURS]
    if not baselines:
        return {}
    best = max(baselines, key=lambda m: statistics.fmean(pairs[m][k] for k in keys))
    out = {"best": best, "pairs": len(keys), "methods": {}, "unit": "(base, budget)" if score == "ptq" else "(run, budget)"}
    for m in pairs:
        if m != best:
            out["methods"][m] = paired([pairs[m][k] - pairs[best][k] for k in keys])
    if "aimet" in pairs and "sensitivity" in pairs:
        out["aimet_vs_exact"] = paired([pairs["aimet"][k] - pairs["sensitivity"][k] for k in keys])
    return out


def noise_of(result: dict) -> tuple[float | None, str]:
    """(spread, how it was measured): the probe plan's spread over fine-tuning seeds, else the
    pooled spread of every plan over the runs' fine-tuning seeds (one base)."""
    noise = result.get("noise") or []
    if len(noise) > 1:
        plan = result.get("noise_plan", {})
        return statistics.stdev(noise), (f"one plan ({plan.get('method')}, r = {plan.get('fraction')}) fine-tuned with "
                                         f"{len(noise)} seeds: {', '.join(f'{x:.2f}' for x in noise)}")
    groups: dict[tuple, list[float]] = {}
    for r in result["records"]:
        groups.setdefault((r["seed"], r["method"], r["fraction"]), []).append(r["test"])
    variances = [statistics.variance(v) for v in groups.values() if len(v) > 1]
    if not variances:
        return None, "not measured"
    return math.sqrt(statistics.fmean(variances)), (f"pooled spread of all {len(variances)} plans over their "
                                                    f"{len(result['setup']['runs'])} fine-tuning seeds")


def fmt(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def plot_frontier(name: str, result: dict, out: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(family(m) for m in result["setup"]["methods"]))
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1))]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=False)
    for ax, score, title in ((axes[0], "test", "after fine-tuning"), (axes[1], "ptq", "no fine-tuning (PTQ)")):
        table = summarise(result["records"], score)
        for k, m in enumerate(methods):
            points = sorted((f, v) for (mm, f), v in table.items() if mm == m)
            xs = [v["latency"] for _, v in points]
            ys = [v["mean"] for _, v in points]
            line, = ax.plot(xs, ys, marker="o", markersize=4, linestyle=styles[k % len(styles)], label=m)
            ax.fill_between(xs, [v["mean"] - v["std"] for _, v in points], [v["mean"] + v["std"] for _, v in points],
                            color=line.get_color(), alpha=0.10)
        bases = list(result["uniform"].values())
        ax.axhline(statistics.fmean(u["fp"] for u in bases), color="grey", linestyle="--", linewidth=1, label="full precision")
        ax.axhline(statistics.fmean(u["w4"] for u in bases), color="black", linestyle=":", linewidth=1, label="LSQ 4-bit base")
        ax.set_xlabel("latency on NorthPole relative to uniform 8-bit")
        ax.set_ylabel(metric)
        ax.set_title(f"{name}: {title} (mean ± std over runs)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_premise(name: str, premise: dict, out: Path, score: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = premise["rows"]
    panels = [(c, label) for c, label in (("sensitivity", "no fine-tuning"), ("alps", "with ALPS's fine-tune")) if c in rows[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        for weighted, marker, kind in ((True, "o", "weighted layers"), (False, "^", "attention MatMuls")):
            chosen = [r for r in rows if r["weighted"] == weighted]
            if chosen:
                ax.scatter([r["eagl"] for r in chosen], [r[column] for r in chosen], marker=marker, label=kind, alpha=0.8)
        rho = premise["spearman"][f"eagl vs {column} (all groups)"]
        ax.set_title(f"{name}: EAGL gain vs {score} lost at 2 bits, {label}\n"
                     f"Spearman {fmt(rho['rho'])} [{fmt(rho['lo'])}, {fmt(rho['hi'])}] over {rho['n']} groups", fontsize=9)
        ax.set_xlabel("EAGL gain of 4 over 2 bits (entropy, bits)")
        ax.set_ylabel(f"{score} lost when the group alone is at 2 bits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_task_outputs(name: str, result: dict, suffix: str) -> str:
    """CSV and PNGs of one task; returns its Markdown section. The EAGL-premise table is
    recomputed from the cached gains files where they are here."""
    setup = result["setup"]
    folder = CACHE / ("quick" if suffix else "full") / result.get("version", "?") / name / f"seed{setup['runs'][0][0]}"
    if setup.get("premise") and (table := premise_table(folder)) is not None:
        result["premise"] = table
    store_path = folder.parent.parent / f"store-{name}.jsonl"
    if store_path.exists():  # timings as stored, with the marks of those an interruption cut short
        store = JobStore(store_path)
        result["started_utc"] = store.get(f"{name}:started_utc") or result.get("started_utc")
        seeds = sorted({b for b, _ in setup["runs"]})
        # a base whose gain run was interrupted and resumed has no wall time (None)
        result["gain_times"] = {m: [None if f"{name}:{b}:time:gains:{m}:resumed" in store
                                    else store.get(f"{name}:{b}:time:gains:{m}") for b in seeds]
                                for m in result["gain_times"]}
        result["gain_resumed"] = sorted(m for m in result["gain_times"]
                                        if any(f"{name}:{b}:time:gains:{m}:resumed" in store for b in seeds))
    metric = setup["metric_name"]
    if result["records"]:
        plot_frontier(name, result, RESULTS / f"{name}-frontier{suffix}.png", metric)
        with open(RESULTS / f"{name}-runs{suffix}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["base_seed", "ft_seed", "method", "fraction", "relative_latency", "groups_at_4", "test", "ptq",
                             "status", "solve_s", "objective", "greedy_objective"])
            for r in result["records"]:
                writer.writerow([r["seed"], r["ft_seed"], r["method"], r["fraction"], f"{r['relative_latency']:.4f}",
                                 r["groups_at_4"], f"{r['test']:.2f}", f"{r['ptq']:.2f}", r["status"], f"{r['solve_s']:.4f}",
                                 repr(r["objective"]), repr(r["greedy_objective"])])
    if result.get("premise"):
        plot_premise(name, result["premise"], RESULTS / f"{name}-eagl-premise{suffix}.png",
                     "validation mean cosine to full precision" if name == "minilm" else "validation score (-KL)")
    return markdown(name, result, suffix)


def score_table(result: dict, score: str) -> list[str]:
    setup = result["setup"]
    fractions = setup["fractions"]
    table = summarise(result["records"], score)
    methods = list(dict.fromkeys(family(m) for m in setup["methods"]))
    inner = interior(fractions)
    out = ["| method | " + " | ".join(f"r={f}" for f in fractions) + " | mean over 0<r<1 |",
           "|" + "---|" * (len(fractions) + 2)]
    for m in methods:
        cells = [table.get((m, f)) for f in fractions]
        inside = [table[(m, f)]["mean"] for f in inner if (m, f) in table]
        out.append(f"| {m} | " + " | ".join(f"{c['mean']:.2f} ± {c['std']:.2f}" if c else "-" for c in cells)
                   + f" | {fmt(statistics.fmean(inside)) if inside else '-'} |")
    latency = {f: [v["latency"] for (m, ff), v in table.items() if ff == f] for f in fractions}
    out.append("| relative latency | " + " | ".join(fmt(statistics.fmean(latency[f]), 3) if latency[f] else "-"
                                                    for f in fractions) + " | |")
    return out


def comparison_table(comp: dict) -> list[str]:
    out = [f"Best baseline: **{comp['best']}**; {comp['pairs']} {comp.get('unit', '(run, budget)')} pairs.", "",
           "| method - best baseline | mean difference | 95% bootstrap interval | wins / ties / losses | sign test p |",
           "|---|---|---|---|---|"]
    for m, c in comp["methods"].items():
        out.append(f"| {m} | {c['mean']:+.2f} | [{c['lo']:+.2f}, {c['hi']:+.2f}] | {c['wins']} / {c['ties']} / "
                   f"{c['losses']} | {c['p']:.3g} |")
    if "aimet_vs_exact" in comp:
        c = comp["aimet_vs_exact"]
        out += ["", f"Greedy against exact on the same (sensitivity) gains, aimet - sensitivity: {c['mean']:+.2f} "
                    f"[{c['lo']:+.2f}, {c['hi']:+.2f}], {c['wins']} / {c['ties']} / {c['losses']}, sign test p {c['p']:.3g}."]
    return out


def greedy_lines(result: dict) -> list[str]:
    """How far the greedy's objective falls short of the exact solver's, per method (interior budgets)."""
    rows = [p for p in result["greedy"] if p["method"] != "aimet" and 0 < p["fraction"] < 1]
    out = ["| gains | budgets | greedy plan differs | objective gap: mean | max |", "|---|---|---|---|---|"]
    by: dict[str, list[dict]] = {}
    for p in rows:
        by.setdefault(family(p["method"]), []).append(p)
    for m, ps in by.items():
        gaps = [1 - p["greedy_objective"] / p["objective"] for p in ps
                if p["greedy_objective"] is not None and p["objective"] > 0]
        short = sum(g > 1e-9 for g in gaps)
        out.append(f"| {m} | {len(ps)} | {short} | {100 * statistics.fmean(gaps):.2f}% | {100 * max(gaps):.2f}% |"
                   if gaps else f"| {m} | {len(ps)} | - | - | - |")
    return out


def time_lines(result: dict) -> list[str]:
    single = result.get("single_thread", {})
    out = ["| method | wall time with the executor (s, mean over bases) | single-threaded (s) |", "|---|---|---|"]
    for m, ts in result["gain_times"].items():
        known = [t for t in ts if t is not None]
        parallel = m in ("alps", "alps-accuracy", "sensitivity")
        with_executor = fmt(statistics.fmean(known), 3) if known else "-"
        alone = single.get(m) if parallel else (statistics.fmean(known) if known else None)
        if m in result.get("gain_resumed", []):
            with_executor = (f"{with_executor} ({len(known)} of {len(ts)} bases; the others were interrupted and "
                             "resumed)" if known else "interrupted and resumed: not measured")
            alone = alone if known else None
        out.append(f"| {m} | {with_executor if parallel else with_executor + ' (in-process, one thread)'} | {fmt(alone, 3)} |")
    for k, v in single.items():
        if k.startswith("alps@"):
            study = (result.get("epoch_study") or {}).get("times", {}).get(k.split("@")[1])
            out.append(f"| ALPS at {k.split('@')[1]} epoch (study) | {fmt(study, 3)} | {fmt(v, 3)} |")
    solve = [p["solve_s"] for p in result["greedy"] if p["method"] != "aimet"]
    greedy = [p["greedy_s"] for p in result["greedy"]]
    out.append(f"| exact solver, per budget | {1e3 * statistics.fmean(solve):.1f} ms (max {1e3 * max(solve):.0f} ms) | |")
    out.append(f"| greedy, per budget | {1e3 * statistics.fmean(greedy):.2f} ms | |")
    out.append("")
    executor = result.get("executor", "?")
    one = executor.endswith(" x1")
    out.append(f"Executor: {executor}" + (" (one worker: the jobs run in the process, one at a time, so these times are "
                                          "single-threaded too)" if one else "") +
               ". Every job runs on one thread; the in-process methods run on one thread. All times were taken on 2 "
               "CPU cores shared with other, heavier work, at nice 10: they are upper bounds, and their "
               "ratios are what carries over.")
    return out


def markdown(name: str, result: dict, suffix: str) -> str:
    setup = result["setup"]
    metric = setup["metric_name"]
    fractions = setup["fractions"]
    out = [f"## {name}{' (quick run)' if suffix else ''}", ""]
    if name in TASK_NOTES:
        out += [TASK_NOTES[name], ""]
    runs = ", ".join(f"{b}/{s}" for b, s in setup["runs"])
    out.append(f"Runs (base seed / fine-tuning seed): {runs}; budgets r = {', '.join(map(str, fractions))}; "
               f"fine-tuning {setup['finetune_epochs']} epoch(s), lr {setup['finetune_lr']}, distillation weight "
               f"{setup['distill']}; base: full precision {setup['fp_epochs'] or 'the task default'} epoch(s)"
               f"{' (pretrained)' if setup['trained'] else ''}, LSQ 4-bit {setup['base_epochs'] or 'the task default'} epoch(s); "
               f"ALPS {setup['alps_epochs']} epoch(s) per group, {setup['alps_seeds']} seed(s); Hessian "
               f"{setup['hessian_samples']} Rademacher samples. Code version {result.get('version', '?')} "
               f"(git {result.get('commit', '?')}).")
    out.append("")
    bases = list(result["uniform"].values())
    out.append(f"Reference points ({metric}, mean over bases): full precision {statistics.fmean(u['fp'] for u in bases):.2f}, "
               f"LSQ 4-bit base {statistics.fmean(u['w4'] for u in bases):.2f}.")
    expected = sum(1 for p in result["greedy"] for b, _ in setup["runs"] if p["seed"] == b)
    if len(result["records"]) < expected or not result.get("complete"):
        missing = []
        if setup["alps_epoch_study"] and len(result.get("epoch_study", {}).get("gains", {})) < len(setup["alps_epoch_study"]):
            missing.append("part of the ALPS epoch study")
        if setup["single_thread_timing"] and "single_thread" not in result:
            missing.append("the single-threaded timings")
        out.append(f"**Incomplete run**: {len(result['records'])} of {expected} (method, budget, run) scores done"
                   + (f"; not done: {', '.join(missing)}" if missing else "") + ".")
    if not result["records"]:
        out += ["", "**Incomplete: the plans were not scored in this run (gains, plans and the analyses below only).**", ""]
    else:
        spread, how = noise_of(result)
        first = len(result.get("noise") or []) > 1
        out.append(f"Noise{', measured first' if first else ' (pooled over the runs, as they came)'}: {how} "
                   f"(std {fmt(spread)}).")
        for score, label in (("test", "after the same fine-tuning"), ("ptq", "with no fine-tuning")):
            table = summarise(result["records"], score)
            ends = [table.get((setup["methods"][0], f)) for f in (0.0, 1.0)]
            if all(ends):
                gap = ends[1]["mean"] - ends[0]["mean"]
                ratio = f" ({gap / spread:.1f}x the noise)" if spread and score == "test" else ""
                out.append(f"Room to plan {label}: all-4-bit (r = 1) {ends[1]['mean']:.2f}, all-2-bit (r = 0) "
                           f"{ends[0]['mean']:.2f}, a gap of {gap:.2f}{ratio}.")
        out += ["", f"![{name} frontier]({name}-frontier{suffix}.png)", "",
                f"**After fine-tuning** ({metric}, mean ± std over runs):", ""]
        out += score_table(result, "test")
        out += ["", f"**PTQ, no fine-tuning** ({metric}, mean ± std over runs; a plan's PTQ score does not depend on "
                    "the fine-tuning seed):", ""]
        out += score_table(result, "ptq")
        for score, label in (("test", "after fine-tuning"), ("ptq", "PTQ")):
            comp = comparisons(result, score)
            if comp:
                out += ["", f"**Paired comparison, {label}.**", ""] + comparison_table(comp)
    out += ["", "**Greedy against exact.** The AIMET-style greedy (`planner.solve.knapsack.greedy`) on every method's gains at "
                "the interior budgets, against the exact solver's optimum (same gains, same budget): how often its plan "
                "is worse and by how much of the optimal objective.", ""]
    out += greedy_lines(result)
    out += ["", "**Wall time of each method** (gain estimation on one base).", ""] + time_lines(result)
    if result.get("premise"):
        premise = result["premise"]
        multi = sum(r.get("layers", 1) > 1 for r in premise["rows"])
        guessed = sum(not r["weighted"] for r in premise["rows"])
        out += ["", f"**EAGL's premise, per group** (base seed {setup['runs'][0][0]}): EAGL's gain of 4 over 2 bits "
                    "against the validation score lost when that group alone drops to 2 bits, without fine-tuning "
                    "(`sensitivity`) and with ALPS's fine-tune (`alps`, where measured). `eagl` is the gain EAGL plans "
                    "with, the entropy summed over the group's layers; `eagl per layer` divides it by the group's "
                    f"layer count ({multi} of {len(premise['rows'])} groups have several layers)"
                    + (f"; EAGL cannot measure the {guessed} weightless MatMul groups and gives them the median of the "
                       "others, so the `weighted groups` rows leave them out" if guessed else "")
                    + ". Spearman's rho, 95% bootstrap interval over groups (2,000 resamples):", "",
                "| pair | rho | 95% interval | groups |", "|---|---|---|---|"]
        for k, v in premise["spearman"].items():
            out.append(f"| {k} | {fmt(v['rho'])} | [{fmt(v['lo'])}, {fmt(v['hi'])}] | {v['n']} |")
        out += ["", f"![{name} EAGL premise]({name}-eagl-premise{suffix}.png)"]
    if result.get("epoch_study"):
        study = result["epoch_study"]
        out += ["", f"**ALPS's epoch budget** (base seed {setup['runs'][0][0]}, {setup['alps_metric']} score, "
                    f"{setup['alps_seeds']} seed(s)): Spearman's rho between the per-group gains at each budget, 95% "
                    "bootstrap interval over groups; wall time with the executor.", "",
                "| budgets | rho | 95% interval |", "|---|---|---|"]
        for k, v in study["spearman"].items():
            out.append(f"| {k} epoch | {fmt(v['rho'])} | [{fmt(v['lo'])}, {fmt(v['hi'])}] |")
        out += ["", "Wall time: " + ", ".join(f"{e} epoch {fmt(t, 1)} s" for e, t in study["times"].items()) + "."]
    out += [""] + verdict(name, result)
    return "\n".join(out)


def verdict(name: str, result: dict) -> list[str]:
    """The paper's claims, each with what these numbers say."""
    out = [f"### Claims of the paper, checked on {name}", ""]
    if not result["records"]:
        return out + ["Not checked: the plans were not scored (incomplete run)."]
    setup = result["setup"]
    fractions = setup["fractions"]
    spread, _ = noise_of(result)
    noise = spread or 0.0
    table = summarise(result["records"], "test")
    ours = [m for m in OURS if any(family(x) == m for x in setup["methods"])]
    reference = table.get((setup["methods"][0], 1.0))
    lines = []
    for m in ours:
        if reference is None:
            break
        hit = next((f for f in fractions if f < 1.0 and (m, f) in table and table[(m, f)]["mean"] >= reference["mean"] - noise),
                   None)
        lines.append(f"{m}: " + (f"within the noise ({noise:.2f}) of all-4-bit after the same fine-tuning "
                                 f"({reference['mean']:.2f}) from r = {hit} (latency {table[(m, hit)]['latency']:.3f} of 8-bit)"
                                 if hit is not None else f"never within the noise ({noise:.2f}) of all-4-bit "
                                                         f"({reference['mean']:.2f}) below r = 1"))
    out.append("1. *A mix of 4- and 2-bit layers recovers the accuracy of the higher precision.* " + "; ".join(lines) + ".")
    comp = comparisons(result, "test")
    if comp:
        parts = []
        for m in ours:
            c = comp["methods"].get(m)
            if c is None:
                parts.append(f"{m} is itself the best baseline's equal")
                continue
            by_interval, by_sign = c["lo"] > 0 or c["hi"] < 0, c["p"] < 0.05
            side = "above" if c["mean"] > 0 else "below"
            verdict = (f"{'beats' if c['mean'] > 0 else 'loses to'} the best baseline ({comp['best']})"
                       if by_interval and by_sign else
                       f"is {side} the best baseline ({comp['best']}) by the "
                       f"{'bootstrap interval' if by_interval else 'sign test'} only, so not shown to differ"
                       if by_interval or by_sign else f"is not distinguishable from the best baseline ({comp['best']})")
            parts.append(f"{m} {verdict}: {c['mean']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}], "
                         f"{c['wins']}/{c['ties']}/{c['losses']}, p {c['p']:.3g}")
        floor = 2.0 ** (1 - comp["pairs"])  # the two-sided sign test's least p-value: every pair on one side
        power = (f"; with {comp['pairs']} pairs the sign test cannot give p below {floor:.3g}, so no method can be "
                 "shown to differ here" if floor >= 0.05 else "")
        out.append("2. *It beats commensurate methods over the whole frontier* (paired over "
                   f"{comp['pairs']} (run, budget) pairs, after fine-tuning; a difference counts when both the 95% "
                   f"bootstrap interval excludes 0 and the sign test gives p < 0.05{power}). " + "; ".join(parts) + ".")
    times = {m: statistics.fmean(t for t in ts if t is not None) for m, ts in result["gain_times"].items()
             if any(t is not None for t in ts)}
    if "eagl" in times:
        others = ", ".join(f"{m} {t / times['eagl']:.0f}x" for m, t in times.items()
                           if m in ("alps", "alps-accuracy", "hessian", "sensitivity"))
        out.append(f"3. *At a fraction of their compute.* EAGL took {times['eagl'] * 1e3:.1f} ms; the data-driven methods "
                   f"took (as multiples of EAGL, with the executor): {others}.")
    rows = [p for p in result["greedy"] if p["method"] != "aimet" and 0 < p["fraction"] < 1
            and p["greedy_objective"] is not None and p["objective"] > 0]
    if rows:
        gaps = [1 - p["greedy_objective"] / p["objective"] for p in rows]
        line = (f"{5 if result.get('premise') else 4}. *What exactness buys* (mpq's premise, not the paper's): over {len(rows)} (gains, budget) problems the "
                f"AIMET-style greedy fell short of the exact optimum in {sum(g > 1e-9 for g in gaps)}, by "
                f"{100 * statistics.fmean(gaps):.2f}% of the objective on average (at most {100 * max(gaps):.2f}%)")
        if comp and "aimet_vs_exact" in comp:
            c = comp["aimet_vs_exact"]
            line += (f"; on the sensitivity gains, the greedy's plans (aimet) minus the exact solver's after fine-tuning: "
                     f"{c['mean']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}], {c['wins']}/{c['ties']}/{c['losses']}, p {c['p']:.3g}")
        exactness = line + "."
    if result.get("premise"):
        rho = result["premise"]["spearman"]
        parts = [f"{fmt(v['rho'])} [{fmt(v['lo'])}, {fmt(v['hi'])}] {label}"
                 for k, label in (("eagl vs sensitivity (all groups)", "against the loss without fine-tuning"),
                                  ("eagl vs alps (all groups)", "against the loss with ALPS's fine-tune"),
                                  ("eagl per layer vs sensitivity (all groups)",
                                   "for EAGL's entropy per layer against the loss without fine-tuning"),
                                  ("eagl per layer vs alps (all groups)", "per layer against the loss with ALPS's fine-tune"),
                                  ("eagl vs sensitivity (weighted groups)",
                                   "on the groups EAGL measures (not the MatMuls) against the loss without fine-tuning"))
                 if (v := rho.get(k))]
        if "eagl vs alps (all groups)" not in rho:
            parts.append("not measured with ALPS's fine-tune (ALPS did not fit this run's compute budget)")
        out.append("4. *EAGL's entropy ranks groups by their sensitivity* (the premise, per group; intervals: 95% "
                   "bootstrap over groups): Spearman " + "; ".join(parts) + ".")
    if rows:
        out.append(exactness)
    return out


def headline(results: dict[str, dict]) -> str:
    """The top-level README's table: per task, each method's mean score over the interior budgets
    after fine-tuning and with none, and its paired difference to the best baseline."""
    lines = []
    for name, result in results.items():
        setup = result["setup"]
        if not result["records"]:
            lines += [f"**{name}**: incomplete (gains and analyses only); see the results README.", ""]
            continue
        inner = interior(setup["fractions"])
        ft, ptq = summarise(result["records"], "test"), summarise(result["records"], "ptq")
        comp_ft, comp_ptq = comparisons(result, "test"), comparisons(result, "ptq")
        spread, _ = noise_of(result)
        bases = list(result["uniform"].values())
        lines += [f"**{name}** ({setup['metric_name']}; {len(setup['runs'])} runs x budgets r = "
                  f"{', '.join(map(str, inner))}; noise {fmt(spread)}; full precision "
                  f"{statistics.fmean(u['fp'] for u in bases):.2f}, LSQ 4-bit {statistics.fmean(u['w4'] for u in bases):.2f})", "",
                  "| method | fine-tuned | vs best baseline (95% CI, sign p) | PTQ | vs best baseline (95% CI) |",
                  "|---|---|---|---|---|"]
        for m in dict.fromkeys(family(x) for x in setup["methods"]):
            row = [m]
            for table, comp in ((ft, comp_ft), (ptq, comp_ptq)):
                values = [table[(m, f)]["mean"] for f in inner if (m, f) in table]
                row.append(fmt(statistics.fmean(values)) if values else "-")
                c = comp["methods"].get(m) if comp else None
                extra = f", p {c['p']:.2g}" if table is ft and c else ""
                row.append("best baseline" if comp and m == comp["best"] else
                           f"{c['mean']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]{extra}" if c else "-")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def update_readme(results: dict[str, dict], version: str, commit: str) -> None:
    text = README.read_text()
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise SystemExit(f"{README}: needs one '{START}' line and, after it, one '{END}' line")
    body = (f"Generated by `python benchmarks/reproduce.py` from benchmarks/results/results-*.json (code version "
            f"{version}, git {commit}); mean over the interior budgets; differences paired over (run, budget) to the "
            "best baseline.\n\n" + headline(results))
    new = text[:text.index(START) + len(START)] + "\n" + body + text[text.index(END):]
    if new != text:
        write_text(README, new)


def load_results(quick: bool) -> dict[str, dict]:
    suffix = "-quick" if quick else ""
    out = {}
    for name in setups(quick):
        path = RESULTS / f"results-{name}{suffix}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def write_report(quick: bool, wall: str | None = None) -> Path:
    """Rewrite the results README (and, for the full run, the top-level README's headline) from
    the stored per-task result files."""
    suffix = "-quick" if quick else ""
    results = load_results(quick)
    sections = [write_task_outputs(name, result, suffix) for name, result in results.items()]
    for name, result in results.items():  # with the premise recomputed from the cached gains
        write_text(RESULTS / f"results-{name}{suffix}.json", json.dumps(result, indent=1, default=str) + "\n")
    missing = [n for n in setups(quick) if n not in results]
    versions = sorted({r.get("version", "?") for r in results.values()})
    header = [INTRO, f"Code version(s) of these results: {', '.join(versions)} (sha256 of the planner package, cost "
                     f"models, hardware specs and recipe; cached results of another version are not reused)."]
    walls = {n: r.get("wall_s") for n, r in results.items()}
    header.append("Wall time of each task's run, from its first process's start to the last write of its results "
                  "(the two tasks ran side by side as two processes, each at nice 10 on 2 cores shared with other "
                  "work; processes stopped and resumed on the way are included): " + ", ".join(
        f"{n}: {results[n].get('started_utc', '?')} to {results[n].get('finished_utc', '?')} "
        f"({results[n].get('executor', '?')}{'' if results[n].get('complete') else ', INCOMPLETE: stopped before the end'})"
        for n in walls) + ".")
    if missing:
        header.append(f"**Not run: {', '.join(missing)}.**")
    text = "\n\n".join(header + sections) + "\n"
    path = RESULTS / ("README-quick.md" if quick else "README.md")
    write_text(path, text)
    if not quick and results:
        update_readme(results, ", ".join(versions), ", ".join(sorted({r.get("commit", "?") for r in results.values()})))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Every stage at toy sizes (a pipeline check, not results).")
    parser.add_argument("--task", choices=["mnist-deep", "minilm", "all"], default="all")
    parser.add_argument("--executor", choices=["local", "processes", "ray"], default="processes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: a local instance with --executor ray).")
    parser.add_argument("--report-only", action="store_true", help="Rewrite the READMEs from the stored result files.")
    options = parser.parse_args()
    if options.report_only:
        print(f"wrote {write_report(options.quick)}")
        return
    chosen = setups(options.quick)
    tasks = list(chosen) if options.task == "all" else [options.task]
    version, commit = code_version(), git_commit()
    cache = CACHE / ("quick" if options.quick else "full") / version
    started = time.perf_counter()
    suffix = "-quick" if options.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {message}", flush=True)

    log(f"code version {version} (git {commit}); cache {cache}")
    for task in tasks:
        task_start = time.perf_counter()
        store = JobStore(cache / f"store-{task}.jsonl")  # one per task: tasks may run as separate processes

        before = store.get(f"{task}:wall_s") or 0.0  # wall time of earlier, interrupted processes of this run
        if f"{task}:started_utc" not in store:  # the first process of this run
            store.put(f"{task}:started_utc", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))

        def save(result: dict, task=task, store=store, before=before) -> None:
            wall = before + time.perf_counter() - task_start
            store.put(f"{task}:wall_s", wall)
            result.update(version=version, commit=commit, wall_s=wall, started_utc=store.get(f"{task}:started_utc"),
                          finished_utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                          executor=f"{options.executor} x{options.workers}")
            write_text(RESULTS / f"results-{task}{suffix}.json", json.dumps(result, indent=1, default=str) + "\n")
            try:
                write_report(options.quick)
            except Exception as e:  # a report bug must not stop the experiment: --report-only rewrites it
                log(f"report not written ({type(e).__name__}: {e}); the results file is")

        Run(chosen[task], store, options.executor, options.workers, log, cache, options.ray_address).run(save)
    path = write_report(options.quick)
    log(f"done; wrote {path}")


if __name__ == "__main__":
    main()
