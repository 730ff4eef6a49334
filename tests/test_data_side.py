"""LSQ, torch <-> ONNX mapping, ALPS (with resume after kill -9), fine-tuning and QDQ export."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error, mpq
from planner import load_graph
from planner.quant.lsq import LsqQuantizer, apply_bits, bits_of
from planner.torchmap import from_torch

TINY = str(Path(__file__).with_name("tiny_task.py")) + ":task"



# ------------------------------------------------------------------------------ LSQ

def test_lsq_levels_clipping_and_step_gradient():
    q = LsqQuantizer(bits=2, signed=True)  # levels -2, -1, 0, 1
    with torch.no_grad():
        q.step.fill_(0.5)
    q.initialized.fill_(True)
    x = torch.tensor([-3.0, -0.8, -0.2, 0.1, 0.3, 0.74, 2.0], requires_grad=True)
    y = q(x)
    assert y.tolist() == [-1.0, -1.0, -0.0, 0.0, 0.5, 0.5, 0.5]  # x/s clipped to [-2, 1], rounded, times s
    y.sum().backward()
    # LSQ step gradient: -Q_N or Q_P when clipped, round(x/s) - x/s inside; scaled by 1/sqrt(N * Q_P)
    v = [-6.0, -1.6, -0.4, 0.2, 0.6, 1.48, 4.0]
    expected = sum(-2 if t < -2 else 1 if t > 1 else round(t) - t for t in v) / (7 * 1) ** 0.5
    assert q.step.grad.item() == pytest.approx(expected, rel=1e-5)
    # the input's gradient passes straight through inside the range and stops outside
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_lsq_initialisation_and_two_bit_values():
    torch.manual_seed(0)
    w = torch.randn(64, 32)
    q = LsqQuantizer(bits=2, signed=True)
    out = q(w)
    assert q.step.item() == pytest.approx(2 * w.abs().mean().item() / 1.0, rel=1e-6)  # Q_P = 1 at 2 bits
    assert len(torch.unique(out)) <= 4
    act = LsqQuantizer(bits=4, signed=None)
    act(torch.rand(10, 5))
    assert not act.signed and act.levels() == (0, 15)


def test_apply_bits_swaps_a_copy_and_keeps_full_precision(built):
    model, inputs = built("mobilenet")
    graph, mapping = from_torch(model, inputs)
    depthwise = next(p for p in mapping.values() if model.get_submodule(p).groups > 1)
    quantized = apply_bits(model, {depthwise: 4, "classifier": 8})
    assert bits_of(quantized) == {depthwise: 4, "classifier": 8} and bits_of(model) == {}
    with torch.no_grad():
        assert torch.allclose(quantized(*inputs), quantized(*inputs))
        assert not torch.equal(quantized(*inputs), model(*inputs))


@pytest.mark.parametrize("arch", ["resnet18", "bert", "mobilenet"])
def test_from_torch_maps_every_weighted_layer(built, arch):
    model, inputs = built(arch) if arch != "bert" else __import__("archs").bert(blocks=2)
    graph, mapping = from_torch(model, inputs)
    modules = dict(model.named_modules())
    weighted = [l for l in graph.layers if l.weight is not None]
    assert len(mapping) == len(weighted) > 0
    for layer in weighted:
        module = modules[mapping[layer.name]]
        assert isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
        assert module.weight.numel() == layer.params


# ------------------------------------------------------------------------------ the MNIST pipeline

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny task: full precision, then LSQ 4-bit (pinned 8), via the CLI."""
    folder = tmp_path_factory.mktemp("tiny")
    assert mpq("train", "--task", TINY, "-o", folder / "fp.pt").returncode == 0
    result = mpq("train", "--task", TINY, "--init", folder / "fp.pt", "--bits", "4", "-o", folder / "w4.pt")
    assert result.returncode == 0, result.stderr
    return folder


def test_alps_gains_and_resume_after_kill(trained, tmp_path):
    out, resume = tmp_path / "alps.json", tmp_path / "alps.partial.jsonl"
    command = [sys.executable, "-m", "planner", "gains", "alps", "--task", TINY, "--checkpoint", str(trained / "w4.pt"),
               "--epochs", "0.5", "--seeds", "2", "--resume-file", str(resume), "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if resume.exists() and len(resume.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = [json.loads(l)["key"] for l in resume.read_text().splitlines() if l.strip()]
    assert len(finished) >= 2 and not out.exists()
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    keys = [json.loads(l)["key"] for l in resume.read_text().splitlines() if l.strip()]
    assert len(keys) == len(set(keys)) == 2 + 6  # 2 base seeds + 6 free groups, none computed twice
    assert keys[: len(finished)] == finished
    doc = json.loads(out.read_text())
    assert doc["method"] == "alps" and doc["extra"]["noise_floor"] is not None
    for group in doc["groups"]:
        if group["pinned_bits"]:
            assert group["gains"] == {"8": 0.0}
        else:
            assert set(group["gains"]) == {"2", "4"} and group["gains"]["2"] == 0.0


def test_alps_is_deterministic_across_workers(trained, tmp_path):
    from planner import workflow
    from planner.checkpoint import Checkpoint
    from planner.gains.alps import alps
    from planner.quant.checkpoint import load_checkpoint
    from planner.tasks import load_task

    task = load_task(TINY)
    graph, mapping = workflow.task_graph(task, load_checkpoint(trained / "w4.pt", task))
    runs = []
    for workers, name in ((1, "a"), (2, "b")):
        gains = alps(task, trained / "w4.pt", graph, mapping, [2, 4], epochs=0.25, seeds=1, metric="kl",
                     executor="processes", workers=workers, resume=Checkpoint(tmp_path / f"{name}.jsonl"))
        runs.append(gains.by_group)
    assert runs[0] == runs[1]


def test_plan_finetune_export_agree_in_onnxruntime(trained, tmp_path):
    """The QDQ model in onnxruntime matches the torch quantized model on the MNIST test split."""
    from planner.quant.checkpoint import load_checkpoint
    from planner.tasks import load_task

    plan = tmp_path / "plan.json"
    assert mpq("gains", "hessian", "--task", TINY, "--checkpoint", trained / "w4.pt", "--samples", "2",
               "-o", tmp_path / "hessian.json").returncode == 0
    result = mpq("plan", trained / "w4.onnx", "--hw", "northpole", "--bits", "2,4", "--budget", "latency=0.5",
                 "--gains", tmp_path / "hessian.json", "-o", plan)
    assert result.returncode == 0, result.stderr
    result = mpq("finetune", plan, "--task", TINY, "--checkpoint", trained / "w4.pt", "--epochs", "0.5",
                 "-o", tmp_path / "ft.pt")
    assert result.returncode == 0, result.stderr
    result = mpq("export", plan, trained / "w4.onnx", "--checkpoint", tmp_path / "ft.pt", "--task", TINY,
                 "-o", tmp_path / "ft.qdq.onnx")
    assert result.returncode == 0, result.stderr
    task = load_task(TINY)
    model = load_checkpoint(tmp_path / "ft.pt", task)
    bits = {l["name"]: l["w_bits"] for l in json.loads(plan.read_text())["layers"]}
    assert sorted(set(bits_of(model).values())) == sorted(set(bits.values()))
    x, _ = task.test_data().tensors
    with torch.no_grad():
        reference = model(x).numpy()
    from planner.qdq import session  # onnxruntime 1.32 needs two optimizers off for UINT2 / UINT4 activations

    logits = session(str(tmp_path / "ft.qdq.onnx")).run(None, {"input": x.numpy()})[0]
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    difference = float(np.abs(logits - reference).max())
    print(f"QDQ vs torch on {len(x)} test digits: top-1 agreement {agreement:.4f}, max logit difference {difference:.2e}")
    assert agreement >= 0.99
    kinds = {n.op_type for n in __import__("onnx").load(str(tmp_path / "ft.qdq.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds and "BatchNormalization" not in kinds  # native 2/4-bit types, no Clip


def test_eagl_on_qdq_equals_eagl_on_checkpoint(trained, tmp_path):
    uniform = tmp_path / "u4.json"
    assert mpq("plan", trained / "w4.onnx", "--hw", "northpole", "--bits", "2,4", "--budget", "latency=1",
               "--gains", "uniform", "-o", uniform).returncode == 0
    assert mpq("export", uniform, trained / "w4.onnx", "--checkpoint", trained / "w4.pt", "--task", TINY,
               "-o", tmp_path / "w4.qdq.onnx").returncode == 0
    assert mpq("gains", "eagl", tmp_path / "w4.qdq.onnx", "--bits", "2,4", "-o", tmp_path / "a.json").returncode == 0
    assert mpq("gains", "eagl", "--task", TINY, "--checkpoint", trained / "w4.pt", "--bits", "2,4",
               "-o", tmp_path / "b.json").returncode == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert [g["gains"] for g in a["groups"]] == [g["gains"] for g in b["groups"]]
    assert all("4-bit grid" in s for n, s in a["extra"]["steps"].items() if "stem" not in n and "fc" not in n)
    graph = load_graph(tmp_path / "w4.qdq.onnx")
    assert len(graph.layers) == 10 and all(l.weight_scale for l in graph.layers)


def test_data_side_bad_inputs(trained, tmp_path):
    (tmp_path / "broken.py").write_text("import no_such_module\n")
    assert_user_error(mpq("train", "--task", f"{tmp_path / 'broken.py'}:task", "-o", tmp_path / "x.pt"), "failed to import")
    no_eval = str(Path(__file__).with_name("tiny_task.py")) + ":NoEvaluate"
    assert_user_error(mpq("train", "--task", no_eval, "-o", tmp_path / "x.pt"), "lacks evaluate()")
    assert_user_error(mpq("evaluate", "--task", "mnist", "--checkpoint", trained / "w4.pt"), "checkpoint is for another model")
    assert_user_error(mpq("evaluate", "--task", TINY, "--checkpoint", trained / "w4.onnx"), "not a readable checkpoint")
    other_plan = tmp_path / "other.json"
    assert mpq("plan", Path(__file__).parent / "no.onnx", "--hw", "northpole", "--budget", "latency=1").returncode == 2
    import torch as _torch
    from conftest import export

    export(_torch.nn.Sequential(_torch.nn.Conv2d(1, 4, 3), _torch.nn.ReLU(), _torch.nn.Conv2d(4, 4, 3)).eval(),
           (_torch.randn(1, 1, 8, 8),), tmp_path / "other.onnx", "torchscript")
    assert mpq("plan", tmp_path / "other.onnx", "--hw", "northpole", "--budget", "latency=1", "--no-pin",
               "-o", other_plan).returncode == 0
    assert_user_error(mpq("finetune", other_plan, "--task", TINY, "--checkpoint", trained / "w4.pt", "-o", tmp_path / "f.pt"),
                   "plan is for another model")
    assert not (tmp_path / "f.pt").exists() and not (tmp_path / "x.pt").exists()


def test_fit_resumes_after_interruption_with_the_same_result(tmp_path):
    from planner.quant.train import fit, loader
    from planner.tasks import load_task

    task = load_task(TINY)
    steps_per_epoch = len(loader(task, task.train_data(), shuffle=True))
    reference = apply_bits(task.model(), {"stage2.conv1": 2, "fc": 8})
    fit(reference, task, epochs=2, lr=0.05, seed=3)

    model = apply_bits(task.model(), {"stage2.conv1": 2, "fc": 8})

    def interrupt(step, total):
        if step == steps_per_epoch + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, task, epochs=2, lr=0.05, seed=3, resume=tmp_path / "state", progress=interrupt)
    assert (tmp_path / "state").exists()
    resumed = apply_bits(task.model(), {"stage2.conv1": 2, "fc": 8})
    seen = []
    fit(resumed, task, epochs=2, lr=0.05, seed=3, resume=tmp_path / "state", progress=lambda s, t: seen.append(s))
    assert seen[0] == steps_per_epoch + 1 and not (tmp_path / "state").exists()
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_batch_norm_statistics_come_from_a_random_sample_of_a_sorted_dataset():
    """Training sets are often stored sorted by class (the MNIST task's is): re-estimating on the
    first samples would describe a few classes only."""
    from types import SimpleNamespace

    from planner.quant.train import reestimate_batch_norm

    inputs = torch.cat([torch.zeros(500, 1, 2, 2), torch.ones(500, 1, 2, 2)])  # "class 0" then "class 1"
    task = SimpleNamespace(train_data=lambda: torch.utils.data.TensorDataset(inputs, torch.zeros(1000)), batch_size=50)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1))
    reestimate_batch_norm(model, task, seed=0, samples=200)
    assert 0.35 < float(model[0].running_mean) < 0.65
