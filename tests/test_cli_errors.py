"""Bad input gets exit code 2 and one line on stderr, never a traceback."""
from __future__ import annotations


import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import assert_user_error, export, mpq


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, exported):
    folder = tmp_path_factory.mktemp("bad")
    good = exported("resnet18")
    (folder / "text.onnx").write_text("this is a text file, not a model\n" * 20)
    (folder / "truncated.onnx").write_bytes(good.read_bytes()[:30000])
    proto = onnx.load(str(good))
    onnx.save(proto, str(folder / "external.onnx"), save_as_external_data=True, location="external.data")
    (folder / "external.data").unlink()
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(relu), str(folder / "nolayers.onnx"))
    export(torch.nn.Sequential(torch.nn.Linear(16, 8)).eval(), (torch.randn(1, 5, 16),), folder / "dynamic.onnx",
           "torchscript", input_names=["tokens"], dynamic_axes={"tokens": {0: "batch", 1: "seq"}})
    return folder


@pytest.mark.parametrize("name,words", [
    ("missing.onnx", ["no such file"]),
    ("text.onnx", ["not a valid ONNX model"]),
    ("truncated.onnx", ["not a valid ONNX model"]),
    ("external.onnx", ["external data file 'external.data'", "not found"]),
    ("nolayers.onnx", ["no layers found"]),
    ("dynamic.onnx", ["input 'tokens' dimension 1", "--input-shape tokens=1xNx16"]),
])
def test_inspect_bad_input(bad_models, name, words):
    assert_user_error(mpq("inspect", bad_models / name), *words)


def test_bad_input_shape_option(bad_models):
    assert_user_error(mpq("inspect", bad_models / "dynamic.onnx", "--input-shape", "tokens=1xAx16"), "expected NAME=")
    assert_user_error(mpq("inspect", bad_models / "dynamic.onnx", "--input-shape", "other=1x2"), "not a graph input")
    assert mpq("inspect", bad_models / "dynamic.onnx", "--input-shape", "tokens=1x9x16").returncode == 0


def test_unknown_option_is_one_line():
    assert_user_error(mpq("inspect", "--frobnicate"), "No such option")


def hard_cpsat_model():
    """A CP-SAT model (1,500 groups of 3 options under 5 random knapsack budgets) and a solver on
    2 workers with a 60 s limit, far from proved optimal in 0.3 s, with CP-SAT's SIGINT handling
    off as planner.solve.knapsack sets it for every solve."""
    import random

    from ortools.sat.python import cp_model

    rng = random.Random(1)
    model = cp_model.CpModel()
    x = [[model.new_bool_var("") for _ in range(3)] for _ in range(1500)]
    for options in x:
        model.add_exactly_one(options)
    variables = [v for options in x for v in options]
    for _ in range(5):
        weights = [rng.randint(1, 100) * (b + 1) for _ in x for b in range(3)]
        model.add(cp_model.LinearExpr.weighted_sum(variables, weights) <= 1500 * 150)
    model.maximize(cp_model.LinearExpr.weighted_sum(variables, [rng.randint(1, 100) * (b + 1) for _ in x for b in range(3)]))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = 60
    solver.parameters.num_workers = 2
    solver.parameters.catch_sigint_signal = False
    return solver, model


def test_ctrl_c_stops_a_cpsat_solve_at_once():
    """Ctrl-C during a CP-SAT search raises KeyboardInterrupt in the main thread within a moment
    (CP-SAT's own handler would end the search as if its time were up and leave Python's handler
    replaced)."""
    import _thread
    import signal
    import threading
    import time

    from planner.solve.knapsack import _solve_interruptibly

    solver, model = hard_cpsat_model()
    timer = threading.Timer(0.3, _thread.interrupt_main)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh process has it
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _solve_interruptibly(solver, model)
        assert time.perf_counter() - start < 10
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


def test_a_stop_event_ends_a_cpsat_search_in_a_worker_thread():
    """A solve on a worker thread (a frontier point), where Ctrl-C never arrives, ends within a
    moment once its ``stop`` event is set, with SearchStopped; set before, the search never starts."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from planner.solve.knapsack import SearchStopped, _solve_interruptibly

    solver, model = hard_cpsat_model()
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        future = pool.submit(_solve_interruptibly, solver, model, stop)
        time.sleep(0.3)
        stop.set()
        with pytest.raises(SearchStopped):
            future.result(timeout=10)
        assert time.perf_counter() - start < 10
        with pytest.raises(SearchStopped, match="before it began"):
            pool.submit(_solve_interruptibly, *hard_cpsat_model(), stop).result(timeout=10)


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_ctrl_c_at_any_moment_is_one_line_and_leaves_no_file(exported, tmp_path, delay):
    """SIGINT while the CLI imports, loads the model or solves: exit 130, 'mpq: interrupted', and
    no file but the input (or, if the run already finished, exit 0 and its outputs; or, on a
    loaded machine where the signal lands before the interpreter has installed its handler, the
    default end by SIGINT, silent, which a shell reports as 130 too)."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    model = shutil.copy(exported("resnet18"), tmp_path / "m.onnx")
    process = subprocess.Popen([sys.executable, "-m", "planner", "plan", model, "--hw", "northpole", "--budget",
                                "latency=0.5", "-o", "p.json", "--csv", "p.csv"], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    files = sorted(p.name for p in tmp_path.iterdir())
    if process.returncode == 0:
        assert files == ["m.onnx", "p.csv", "p.json"]
    elif process.returncode == -signal.SIGINT:
        assert (err, files) == ("", ["m.onnx"])
    else:
        assert (process.returncode, err, files) == (130, "mpq: interrupted\n", ["m.onnx"])


def test_an_error_importing_mpqs_own_modules_is_a_bug_not_a_user_error(monkeypatch):
    """userfiles.load_object blames the user only for the user's code: a built-in task whose
    module fails to import raises the original error (exit 1 with a traceback in the CLI)."""
    import importlib

    from planner import MpqError
    from planner.tasks import load_task

    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == "planner.tasks.mnist":
            raise ZeroDivisionError("bug in mpq")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ZeroDivisionError):
        load_task("mnist")
    with pytest.raises(MpqError, match="does not exist"):
        load_task("planner.tasks.no_such_task:task")


def test_a_fine_tune_resumes_only_from_its_own_start(tmp_path):
    """The resume state of a fit that started from other weights is not used: the result equals
    a fresh fit (before, its config held only epochs, lr, seed, ... and the other run's
    weights were picked up)."""
    from tiny_task import TinyMnist

    from planner.quant.train import fit

    task = TinyMnist()
    resume = tmp_path / "state.partial"

    def interrupt_after_first_epoch(step, total):
        if step == total // 2 + 1:
            raise KeyboardInterrupt

    other = task.model()
    with pytest.raises(KeyboardInterrupt):
        fit(other, task, epochs=2, lr=0.05, seed=0, progress=interrupt_after_first_epoch, resume=resume,
            reestimate_bn=False)
    assert resume.exists()

    def start():
        torch.manual_seed(1)
        model = task.model()
        for p in model.parameters():
            p.data.mul_(0.5)
        return model

    resumed = fit(start(), task, epochs=2, lr=0.05, seed=0, resume=resume, reestimate_bn=False)
    fresh = fit(start(), task, epochs=2, lr=0.05, seed=0, reestimate_bn=False)
    for (name, a), b in zip(resumed.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_oversized_spec_and_json_files_are_refused_by_size_naming_the_limit(tmp_path):
    """A spec over 1 MiB and a plan over 256 MiB are refused before they are read, with the size
    and the limit (sparse files: nothing is written to disk)."""
    from hw import load_spec
    from planner import MpqError
    from planner.userfiles import read_json

    spec, plan = tmp_path / "big.yaml", tmp_path / "big.json"
    for path, size in ((spec, 2 ** 20 + 1), (plan, 2 ** 28 + 1)):
        with open(path, "wb") as f:
            f.truncate(size)
    with pytest.raises(MpqError, match=r"big.yaml: 1,048,577 bytes is too large for a spec file \(at most 1,048,576\)"):
        load_spec(spec)
    with pytest.raises(MpqError, match=r"big.json: 268,435,457 bytes is too large for a plan file \(at most 268,435,456\)"):
        read_json(plan, "plan")
