"""The statistics, cache key and README headline of benchmarks/reproduce.py, and the deeper MNIST
network it plans."""
from __future__ import annotations

import importlib
import math
import random

import pytest
from scipy import stats

from tests.test_perf_table import BENCHMARKS


@pytest.fixture()
def reproduce(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("reproduce")


def test_spearman_matches_scipy_with_ties(reproduce):
    rng = random.Random(3)
    for n in (5, 12, 40):
        a = [rng.choice([0.0, 1.0, 2.5, rng.random()]) for _ in range(n)]
        b = [x + rng.gauss(0, 1) if k % 3 else 1.0 for k, x in enumerate(a)]
        assert reproduce.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert reproduce.spearman([1, 1, 1], [1, 2, 3]) is None


def test_spearman_interval_brackets_the_estimate(reproduce):
    rng = random.Random(0)
    a = [rng.random() for _ in range(30)]
    b = [x + 0.3 * rng.random() for x in a]
    r = reproduce.spearman_ci(a, b)
    assert r["lo"] <= r["rho"] <= r["hi"] and r["n"] == 30 and r["rho"] > 0.8


def test_sign_test_matches_scipy_binomtest(reproduce):
    for wins, losses in ((0, 0), (9, 0), (7, 2), (3, 3), (1, 8), (12, 20)):
        expected = 1.0 if wins + losses == 0 else stats.binomtest(wins, wins + losses, 0.5).pvalue
        assert reproduce.sign_test(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_paired_counts_and_interval(reproduce):
    d = [0.5, 0.2, 0.0, -0.1, 0.4, 0.3, 0.6, 0.1, 0.2]
    r = reproduce.paired(d)
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (7, 1, 1, 9)
    assert r["mean"] == pytest.approx(sum(d) / 9) and r["lo"] <= r["mean"] <= r["hi"]
    assert r["p"] == pytest.approx(stats.binomtest(7, 8, 0.5).pvalue)


def test_code_version_follows_the_planner_sources(reproduce, tmp_path, monkeypatch):
    for folder in reproduce.VERSIONED:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    first = reproduce.code_version()
    (tmp_path / "planner" / "__pycache__").mkdir()
    (tmp_path / "planner" / "__pycache__" / "a.py").write_text("compiled")
    assert reproduce.code_version() == first
    (tmp_path / "planner" / "a.py").write_text("x = 2\n")
    second = reproduce.code_version()
    assert second != first
    monkeypatch.setattr(reproduce, "RECIPE", "another recipe")
    assert reproduce.code_version() not in (first, second)


def _result(reproduce):
    """A two-method, two-run result: eagl beats params by 1 point at each interior budget."""
    records = []
    for run in ("0/0", "1/1"):
        for method, bonus in (("eagl", 1.0), ("params", 0.0), ("random-0", -1.0)):
            for f in (0.0, 0.5, 1.0):
                score = 90 + 5 * f + (bonus if 0 < f < 1 else 0)
                records.append({"seed": int(run[0]), "ft_seed": int(run[0]), "run": run, "method": method, "fraction": f,
                                "test": score, "ptq": score - 10, "relative_latency": 0.3 + 0.2 * f})
    setup = {"methods": ["eagl", "params", "random-0"], "fractions": [0.0, 0.5, 1.0], "runs": [[0, 0], [1, 1]],
             "metric_name": "accuracy"}
    return {"setup": setup, "records": records, "noise": [90.0, 90.5], "uniform": {"0": {"fp": 99.0, "w4": 98.0}}}


def test_comparisons_pick_the_best_baseline_and_pair_by_run(reproduce):
    comp = reproduce.comparisons(_result(reproduce), "test")
    assert comp["best"] == "params" and comp["pairs"] == 2
    assert comp["methods"]["eagl"]["mean"] == pytest.approx(1.0) and comp["methods"]["eagl"]["wins"] == 2
    assert comp["methods"]["random"]["mean"] == pytest.approx(-1.0)


def test_readme_headline_replaced_between_markers(reproduce, tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{reproduce.START}\nold\n{reproduce.END}\nafter\n")
    monkeypatch.setattr(reproduce, "README", readme)
    reproduce.update_readme({"toy": _result(reproduce)}, "v1", "abc")
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{reproduce.END}\nafter\n")
    row = next(line for line in text.splitlines() if line.startswith("| eagl |"))
    assert row.split(" | ")[1] == "93.50" and "+1.00" in row  # 90 + 2.5 + 1 at r = 0.5, 1 point above params


def test_deep_mnist_network_has_16_free_groups():
    from planner.quant import network
    from planner.tasks import load_task

    task = load_task("mnist-deep")
    graph, mapping = network.task_graph(task, task.model())
    assert len(graph.free_groups) == 16 and len(graph.groups) == 18
    assert all(any(n in mapping for n in g.layers) for g in graph.free_groups)
    shared = [g for g in graph.free_groups if len(g.layers) == 2]  # 1x1 downsample + first conv of stages 2-4
    assert len(shared) == 3 and all(any("downsample" in n for n in g.layers) for g in shared)
    assert math.isclose(task.evaluate(task.model()), task.evaluate(task.model()))


def test_batch_norm_reestimation_stopping_each_pass_early_matches_full_passes():
    """Each pass ends at the norm being re-estimated; the statistics equal those of full forward
    passes in the documented order (a naive re-implementation here), for every norm of a ResNet,
    and ``bn_samples`` on the task sets the sample count."""
    import copy
    from types import SimpleNamespace

    import torch

    from planner.quant.train import loader, reestimate_batch_norm
    from planner.tasks.mnist import ResNet

    torch.manual_seed(0)
    x = torch.randn(96, 1, 28, 28)
    task = SimpleNamespace(train_data=lambda: torch.utils.data.TensorDataset(x, torch.zeros(96)), batch_size=32,
                           bn_samples=64)
    model = ResNet(widths=(4, 8), blocks=1)
    expected = copy.deepcopy(model)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0))
    batches = [b for b, _ in loader(task, torch.utils.data.Subset(task.train_data(), order[:64].tolist()), shuffle=False)]
    expected.eval()
    norms = [m for m in expected.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
        with torch.no_grad():
            for b in batches:
                expected(b)
        norm.eval()
        norm.momentum = 0.1
    with torch.no_grad():
        reestimate_batch_norm(model, task, seed=0)
    got = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(got) == len(norms) == 6
    for a, b in zip(got, norms):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-6)
        assert int(a.num_batches_tracked) == 2 and not a.training


def test_premise_table_from_gains_files(reproduce, tmp_path):
    """Per free group: EAGL summed and per layer, the measured losses, weightless groups marked."""
    import json

    groups = [(["stem"], 8), (["a", "a_down"], None), (["b"], None), (["mm"], None), (["c"], None), (["fc"], 8)]
    values = {"eagl": [0, 5.0, 2.9, 2.7, 2.6, 0], "sensitivity": [0, 0.1, 0.5, 0.2, 0.05, 0]}

    def doc(m, extra=None):
        return {"groups": [{"id": k, "layers": layers, "pinned_bits": pin,
                            "gains": {"8": 0.0} if pin else {"2": 0.0, "4": values[m][k]}}
                           for k, (layers, pin) in enumerate(groups)], **({"extra": extra} if extra else {})}

    (tmp_path / "gains-eagl.json").write_text(json.dumps(doc("eagl", {"estimated_layers": ["mm"]})))
    (tmp_path / "gains-sensitivity.json").write_text(json.dumps(doc("sensitivity")))
    table = reproduce.premise_table(tmp_path)
    rows = {r["layer"]: r for r in table["rows"]}
    assert sorted(rows) == ["a", "b", "c", "mm"] and not rows["mm"]["weighted"]
    assert rows["a"]["eagl per layer"] == 2.5 and rows["a"]["layers"] == 2
    rho = table["spearman"]
    assert rho["eagl vs sensitivity (all groups)"]["rho"] == pytest.approx(
        stats.spearmanr([5.0, 2.9, 2.7, 2.6], [0.1, 0.5, 0.2, 0.05]).statistic)
    assert rho["eagl per layer vs sensitivity (weighted groups)"]["rho"] == pytest.approx(
        stats.spearmanr([2.5, 2.9, 2.6], [0.1, 0.5, 0.05]).statistic)
    assert not any("alps" in k for k in rho)  # ALPS not measured: no such rows


def test_ptq_pairs_count_each_base_once(reproduce):
    """Two fine-tuning seeds of one base: fine-tuned scores pair over runs, PTQ (the same for both
    runs) over bases, so no PTQ pair is counted twice."""
    result = _result(reproduce)
    for r in result["records"]:
        r["seed"] = 0
    assert reproduce.comparisons(result, "test")["pairs"] == 2
    ptq = reproduce.comparisons(result, "ptq")
    assert ptq["pairs"] == 1 and ptq["methods"]["eagl"]["n"] == 1 and ptq["unit"] == "(base, budget)"
