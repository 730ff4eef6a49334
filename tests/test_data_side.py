"""LSQ, torch <-> ONNX mapping, ALPS (with resume after kill -9), fine-tuning and QDQ export."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error, kill_when_lines, mpq
from planner import load_graph
from planner.errors import MpqError
from planner.quant.lsq import LsqQuantizer, apply_bits, bits_of
from planner.quant.torchmap import from_torch

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


def _onnx_quantize_dequantize(x: np.ndarray, step: float, signed: bool) -> np.ndarray:
    """QuantizeLinear -> DequantizeLinear (8 bits, zero point 0) of ``x`` in onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    zero = numpy_helper.from_array(np.zeros((), np.int8 if signed else np.uint8), "z")
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array(step, np.float32), "s"), zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    run = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return run.run(None, {"x": x.astype(np.float32)})[0]


@pytest.mark.parametrize("training", [False, True])
def test_lsq_quantizer_computes_what_onnx_quantize_dequantize_computes(training):
    """The LSQ forward is bit for bit onnxruntime's QuantizeLinear -> DequantizeLinear at the stored
    step, in training and in eval mode. At this step and batch size (0.01143, 1,000 values, 8 bits)
    the old gradient-scaling trick ``(s - s*g).detach() + s*g`` moved the step by one float32 ulp,
    so torch and the export computed other values (and other levels near rounding boundaries)."""
    step = float(np.float32(0.01143))
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 0.5
    for signed, values in ((True, x), (False, x.abs())):
        q = LsqQuantizer(bits=8, signed=signed)
        with torch.no_grad():
            q.step.fill_(step)
        q.initialized.fill_(True)
        q.train(training)
        torch_out = q(values.clone().requires_grad_(training)).detach().numpy()
        assert np.array_equal(torch_out, _onnx_quantize_dequantize(values.numpy(), step, signed))


def _best_step_by_hand(values: np.ndarray, bits: int, signed: bool, peak: float) -> float:
    """The step of the least squared round-and-clip error among 20 clipping ranges 5% .. 100% of ``peak``."""
    qn, qp = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    errors = {}
    for k in range(1, 21):
        step = np.float32(k / 20 * peak / qp)
        levels = np.clip(np.round(values.astype(np.float32) / step), -qn, qp)
        errors[float(step)] = float(((levels * step - values) ** 2).sum())
    return min(errors, key=errors.get)


def test_calibrate_sets_steps_from_the_float_network_on_the_batches():
    """``calibrate`` gives each weight the least-squared-error step of a 20-range search, each
    activation below 8 bits the same on what the FULL-PRECISION network feeds it (sign from the
    data: unsigned after the ReLU), and at 8 bits the step that spans its largest magnitude."""
    from planner.quant.lsq import calibrate

    torch.manual_seed(0)
    float_model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    model = apply_bits(float_model, {"0": 4, "2": 8})
    batches = [torch.randn(20, 12) * 3 for _ in range(2)]
    model(batches[0] * 100)  # LSQ's own initialisation first: calibrate replaces it
    calibrate(model, batches)
    x = torch.cat(batches)
    with torch.no_grad():
        hidden = float_model[1](float_model[0](x)).numpy()
    first, second = model[0], model[2]
    assert first.input_quantizer.signed and not second.input_quantizer.signed
    assert first.input_quantizer.step.item() == pytest.approx(
        _best_step_by_hand(x.numpy(), 4, True, float(x.abs().max())), rel=1e-6)
    assert second.input_quantizer.step.item() == pytest.approx(float(hidden.max()) / 255, rel=1e-6)
    for layer in (first, second):
        w = layer.weight.detach().numpy()
        assert layer.weight_quantizer.step.item() == pytest.approx(
            _best_step_by_hand(w, layer.bits, True, float(np.abs(w).max())), rel=1e-6)
    with pytest.raises(MpqError, match="at least one input batch"):
        calibrate(model, [])


def test_apply_bits_quantizes_weight_and_input_as_by_hand_on_a_copy(built):
    """A depthwise conv at 4 bits and the classifier at 8 compute exactly the float op on the
    hand-quantized weight (signed, LSQ's initial step) and input (sign from the data, the step
    from the first batch); the original model stays float."""
    import torch.nn.functional as F

    model, inputs = built("mobilenet")
    graph, mapping = from_torch(model, inputs)
    depthwise = next(p for p in mapping.values() if model.get_submodule(p).groups > 1)
    quantized = apply_bits(model, {depthwise: 4, "classifier": 8})
    assert bits_of(quantized) == {depthwise: 4, "classifier": 8} and bits_of(model) == {}
    seen = {}
    hooks = [quantized.get_submodule(p).register_forward_hook(lambda m, a, o, p=p: seen.__setitem__(p, (a[0], o)))
             for p in (depthwise, "classifier")]
    with torch.no_grad():
        quantized(*inputs)
    for h in hooks:
        h.remove()
    for path, bits in ((depthwise, 4), ("classifier", 8)):
        x, output = seen[path]
        float_layer = model.get_submodule(path)
        w = float_layer.weight.detach()
        signed = bool((x < 0).any())
        x_q = fake_quant(x, bits, lsq_initial_step(x, bits, signed), signed)
        w_q = fake_quant(w, bits, lsq_initial_step(w, bits, True), True)
        if path == "classifier":
            expected = F.linear(x_q, w_q, float_layer.bias)
        else:
            expected = F.conv2d(x_q, w_q, float_layer.bias, float_layer.stride, float_layer.padding,
                                float_layer.dilation, float_layer.groups)
        assert torch.allclose(output, expected, atol=1e-5), path
        assert not torch.allclose(output, float_layer(x), atol=1e-3), path  # and that is not the float op


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
    args = ["gains", "alps", "--task", TINY, "--checkpoint", trained / "w4.pt", "--epochs", "0.5", "--seeds", "2",
            "--resume-file", resume, "-o", out]
    kill_when_lines(args, resume, 2, timeout_s=240)
    finished = [json.loads(l)["key"] for l in resume.read_text().splitlines() if l.strip()]
    assert len(finished) >= 2 and not out.exists()
    result = mpq(*args)
    assert result.returncode == 0, result.stderr
    keys = [json.loads(l)["key"] for l in resume.read_text().splitlines() if l.strip()]
    assert len(keys) == len(set(keys)) == 2 * (1 + 6)  # base and 6 free groups, 2 seeds each, none computed twice
    assert keys[: len(finished)] == finished
    doc = json.loads(out.read_text())
    assert doc["method"] == "alps" and doc["extra"]["noise_floor"] is not None
    for group in doc["groups"]:
        if group["pinned_bits"]:
            assert group["gains"] == {"8": 0.0}
        else:
            assert set(group["gains"]) == {"2", "4"} and group["gains"]["2"] == 0.0
    # pairing: a group's gain is the mean over seeds of (base - lowered) fine-tuned with the same
    # seed, measured here job by job; the spread of those differences is reported
    from planner.gains.alps import alps_job

    group = next(g for g in doc["groups"] if not g["pinned_bits"])
    modules = dict.fromkeys([f"{name.strip('/').rpartition('/')[0].replace('/', '.')}" for name in group["layers"]], 2)
    common = {"task_ref": TINY, "checkpoint": str((trained / "w4.pt").resolve()), "epochs": 0.5,
              "lr": 0.01, "metric": "loss"}
    differences = [alps_job(**common, bits_by_module={}, seed=s) - alps_job(**common, bits_by_module=modules, seed=s)
                   for s in (0, 1)]
    assert group["gains"]["4"] == pytest.approx(sum(differences) / 2, abs=1e-9)
    spread = doc["extra"]["paired_spread"][str(group["id"])]
    assert spread == pytest.approx(abs(differences[0] - differences[1]) / 2 ** 0.5, abs=1e-9)


def test_alps_is_deterministic_across_workers(trained, tmp_path):
    from planner.quant import network
    from planner.jobs.store import JobStore
    from planner.gains.alps import alps
    from planner.quant.checkpoint import load_checkpoint
    from planner.tasks import load_task

    task = load_task(TINY)
    graph, mapping = network.task_graph(task, load_checkpoint(trained / "w4.pt", task))
    runs = []
    for workers, name in ((1, "a"), (2, "b")):
        gains = alps(task, trained / "w4.pt", graph, mapping, [2, 4], epochs=0.25, seeds=1, metric="kl",
                     executor="processes", workers=workers, resume=JobStore(tmp_path / f"{name}.jsonl"))
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
    from planner.export.qdq import session  # onnxruntime 1.32 needs two optimizers off for UINT2 / UINT4 activations

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


# ------------------------------------------------------------------------------ attention MatMuls

ATTENTION = str(Path(__file__).with_name("tiny_task.py")) + ":attention_task"


def fake_quant(x: torch.Tensor, bits: int, step: float, signed: bool) -> torch.Tensor:
    """The b-bit grid by hand: signed levels -2^(b-1) .. 2^(b-1)-1, unsigned 0 .. 2^b-1."""
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    return torch.clamp(torch.round(x / step), lo, hi) * step


def lsq_initial_step(x: torch.Tensor, bits: int, signed: bool) -> float:
    top = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    return 2 * float(x.abs().mean()) / max(top, 1) ** 0.5


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    """The row-attention network trained in full precision, then LSQ 4-bit (pins at 8), saved as a
    checkpoint with its planning ONNX."""
    from planner.quant import network
    from planner.quant.checkpoint import save_checkpoint
    from planner.tasks import load_task

    folder = tmp_path_factory.mktemp("attention")
    task = load_task(ATTENTION)
    fp = network.train(task, task.model())
    w4 = network.train(task, fp, bits=4)
    save_checkpoint(folder / "w4.pt", w4, task)
    network.save_onnx_for_planning(task, w4, folder / "w4.onnx")
    graph, mapping = network.task_graph(task, w4)
    return {"task": task, "fp": fp, "w4": w4, "folder": folder, "graph": graph, "mapping": mapping}


def attention_groups(graph) -> dict[str, int]:
    """Group id of the Q·Kᵀ ("scores") and P·V ("context") layers."""
    return {name: graph.layer(f"/{name}/MatMul").group for name in ("scores", "context")}


def test_every_attention_layer_maps_to_a_module_both_ways(attention):
    graph, mapping, model = attention["graph"], attention["mapping"], attention["w4"]
    assert set(mapping) == {l.name for l in graph.layers}  # every planned layer has a torch module
    assert len(set(mapping.values())) == len(mapping)  # and every module one layer: the map inverts
    layers = {path: name for name, path in mapping.items()}
    assert set(layers) == set(bits_of(model))  # the 4-bit training quantized every layer, MatMuls too
    assert layers["scores"] == "/scores/MatMul" and layers["context"] == "/context/MatMul"
    assert graph.layer("/scores/MatMul").weight is None and len(graph.layer("/context/MatMul").activation_inputs) == 2


def test_attention_layers_map_in_execution_order_without_scope_names(attention, tmp_path):
    """The dynamo exporter names nodes without module scopes: the weightless MatMuls map to the
    MatMul modules in the order they run, the weighted layers by shape and order."""
    from conftest import export
    from planner.quant.torchmap import layer_modules

    model = attention["fp"]
    x = torch.stack([attention["task"].train_data()[0][0]])
    graph = load_graph(export(model, (x,), tmp_path / "dynamo.onnx", "dynamo"))
    weightless = [l.name for l in graph.layers if l.weight is None]
    assert len(weightless) == 2 and not any("scores" in n or "context" in n for n in weightless)
    mapping = layer_modules(graph, model, (x,))
    assert [mapping[n] for n in weightless] == ["scores", "context"]
    assert sorted(mapping.values()) == sorted(attention["mapping"].values())


def test_quantized_matmul_equals_hand_fake_quant_with_own_step_and_sign_per_input(attention):
    """Both inputs of Q·Kᵀ and P·V are quantized, each on its own grid: P (softmax) unsigned, V, Q, K
    signed; the module's output equals the product of the hand-quantized inputs."""
    task = attention["task"]
    float_model = attention["fp"]
    x = torch.stack([task.train_data()[k][0] for k in range(20)])
    seen = {}
    hooks = [float_model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a))
             for n in ("scores", "context")]
    with torch.no_grad():
        float_model(x)
    for h in hooks:
        h.remove()
    quantized = apply_bits(float_model, {"scores": 4, "context": 4})
    with torch.no_grad():
        quantized(x)  # the first batch initialises the steps and signs
    for name, signs in (("scores", (True, True)), ("context", (False, True))):
        module = quantized.get_submodule(name)
        a, b = seen[name]
        assert (module.input_quantizer.signed, module.other_quantizer.signed) == signs
        steps = [lsq_initial_step(t, 4, s) for t, s in zip((a, b), signs)]
        assert module.input_quantizer.step.item() == pytest.approx(steps[0], rel=1e-5)
        assert module.other_quantizer.step.item() == pytest.approx(steps[1], rel=1e-5)
        expected = fake_quant(a, 4, steps[0], signs[0]) @ fake_quant(b, 4, steps[1], signs[1])
        with torch.no_grad():
            assert torch.allclose(module(a, b), expected, atol=1e-5)
    v = seen["context"][1]
    assert float(v.min()) < 0 and float(fake_quant(v, 4, lsq_initial_step(v, 4, True), True).min()) < 0


def test_planned_attention_bits_change_the_network(attention):
    """The network at a plan's attention bits equals the float network with both inputs of Q·Kᵀ and
    P·V fake-quantized by hand; 2 bits changes its output, 8 bits stays close to float (LSQ's initial
    step shrinks at least sqrt(255/3) = 9.2-fold from 2 to 8 bits, so the error must shrink at least
    10-fold and the top-1 answers stay). A model with a bare torch.matmul is refused rather than run
    in float."""
    from planner.errors import MpqError
    from planner.quant.torchmap import bits_by_module

    task, graph, mapping, fp = attention["task"], attention["graph"], attention["mapping"], attention["fp"]
    x = torch.stack([task.eval_data()[k][0] for k in range(100)])

    def by_hand(bits):
        def quantized_product(module, inputs, output):
            a, b = (fake_quant(t, bits, lsq_initial_step(t, bits, bool((t < 0).any())), bool((t < 0).any()))
                    for t in inputs)
            return a @ b

        hooks = [fp.get_submodule(n).register_forward_hook(quantized_product) for n in ("scores", "context")]
        try:
            return fp(x)
        finally:
            for h in hooks:
                h.remove()

    with torch.no_grad():
        reference = fp(x)
        differences, agreement = {}, {}
        for bits in (2, 8):
            by_layer = {"/scores/MatMul": bits, "/context/MatMul": bits}
            model = apply_bits(fp, bits_by_module(graph, mapping, by_layer))
            assert bits_of(model) == {"scores": bits, "context": bits}
            out = model(x)
            assert torch.allclose(out, by_hand(bits), atol=1e-4)
            differences[bits] = float((out - reference).abs().max() / reference.abs().max())
            agreement[bits] = float((out.argmax(1) == reference.argmax(1)).float().mean())
    assert differences[2] > 10 * differences[8] and agreement[8] >= 0.98 > agreement[2], (differences, agreement)
    bert, inputs = __import__("archs").bert(blocks=1)
    bert_graph, bert_mapping = from_torch(bert, inputs)
    with pytest.raises(MpqError, match="no torch module.*MatMul modules"):
        bits_by_module(bert_graph, bert_mapping, {l.name: 4 for l in bert_graph.layers})
    from planner.gains.alps import alps
    from planner.gains.hessian import hessian_gains
    from planner.gains.sensitivity import sensitivity_gains

    for measure in (alps, sensitivity_gains):  # measured gains, not gain 0, or a refusal
        with pytest.raises(MpqError, match="no torch module"):
            measure(task, "unused.pt", bert_graph, bert_mapping, [2, 4])
    with pytest.raises(MpqError, match="no torch module"):
        hessian_gains(task, bert, bert_graph, bert_mapping, [2, 4])


def test_finetune_runs_the_planned_attention_bits(attention, tmp_path):
    """mpq finetune on a plan: the checkpoint it writes runs every layer, the attention MatMuls
    included, at the plan's bits."""
    from planner.quant.checkpoint import read_checkpoint

    folder, mapping = attention["folder"], attention["mapping"]
    plan = tmp_path / "plan.json"
    result = mpq("plan", folder / "w4.onnx", "--hw", "northpole", "--bits", "2,4", "--budget", "latency=0.6",
                 "--gains", "params", "-o", plan)
    assert result.returncode == 0, result.stderr
    planned = {l["name"]: l["w_bits"] for l in json.loads(plan.read_text())["layers"]}
    assert {planned["/scores/MatMul"], planned["/context/MatMul"]} <= {2, 4} and set(planned.values()) == {2, 4, 8}
    result = mpq("finetune", plan, "--task", ATTENTION, "--checkpoint", folder / "w4.pt", "--epochs", "0.1",
                 "-o", tmp_path / "ft.pt")
    assert result.returncode == 0, result.stderr
    assert read_checkpoint(tmp_path / "ft.pt")["bits"] == {mapping[name]: bits for name, bits in planned.items()}


def test_checkpoint_carries_learned_steps_of_both_inputs(attention):
    from planner.quant.checkpoint import load_checkpoint, read_checkpoint
    from planner.quant.lsq import learned_steps

    task = attention["task"]
    state = read_checkpoint(attention["folder"] / "w4.pt")["state_dict"]
    steps = learned_steps(load_checkpoint(attention["folder"] / "w4.pt", task))
    for name in ("scores", "context"):
        first, second = float(state[f"{name}.input_quantizer.step"]), float(state[f"{name}.other_quantizer.step"])
        assert steps[name]["input_steps"] == [pytest.approx(first), pytest.approx(second)] and first != second
        assert steps[name]["inputs_signed"] == [bool(state[f"{name}.input_quantizer.signed_flag"]),
                                                bool(state[f"{name}.other_quantizer.signed_flag"])]
        assert "weight_step" not in steps[name] and steps[name]["bits"] == 4
    assert steps["context"]["inputs_signed"] == [False, True] and steps["scores"]["inputs_signed"] == [True, True]


def test_float_copy_drops_quantizers_on_a_copy(attention):
    from planner.quant.lsq import MatMul
    from planner.quant.torchmap import float_copy

    w4 = attention["w4"]
    plain = float_copy(w4)
    assert bits_of(plain) == {} and len(bits_of(w4)) == 10
    assert type(plain.scores) is MatMul and type(plain.up) is torch.nn.Linear
    assert torch.equal(plain.up.weight, w4.up.weight) and plain.up.weight is not w4.up.weight


def test_attention_groups_have_measured_gains(attention, tmp_path):
    """ALPS, sensitivity and the Hessian measure the attention groups (lowering their MatMul
    modules) instead of giving them gain 0."""
    from planner.jobs.store import JobStore
    from planner.gains.alps import alps
    from planner.gains.hessian import hessian_gains
    from planner.gains.sensitivity import sensitivity_gains
    from planner.quant.checkpoint import load_checkpoint
    from planner.quant.lsq import learned_steps
    from planner.quant.train import score
    from planner.quant.torchmap import float_copy

    task, graph, mapping = attention["task"], attention["graph"], attention["mapping"]
    checkpoint = attention["folder"] / "w4.pt"
    groups = attention_groups(graph)
    sensitivity = sensitivity_gains(task, checkpoint, graph, mapping, [2, 4], metric="kl",
                                    resume=JobStore(tmp_path / "s.jsonl"))
    alps_gains = alps(task, checkpoint, graph, mapping, [2, 4], epochs=0.25, seeds=1, metric="kl",
                      resume=JobStore(tmp_path / "a.jsonl"))
    base = load_checkpoint(checkpoint, task)
    hessian = hessian_gains(task, float_copy(base), graph, mapping, [2, 4], learned=learned_steps(base), samples=4)
    for name, group in groups.items():
        for gains in (sensitivity, alps_gains, hessian):
            assert gains.by_group[group][4] != 0.0, (gains.method, name)
        # sensitivity's score at 2 bits is the checkpoint with that MatMul lowered, scored by hand
        lowered = apply_bits(base, {name: 2})
        assert lowered.get_submodule(name).bits == 2
        by_hand = score(lowered, task, task.eval_data(), "kl", teacher=base)
        assert sensitivity.extra["scores"][str(group)]["2"] == pytest.approx(by_hand, rel=1e-6)
    assert alps_gains.extra["unmeasured_groups"] == []


def test_sixteen_bit_layers_use_sixteen_bit_levels(attention):
    """16 bits: levels -32768 .. 32767 (weights, signed inputs) and 0 .. 65535 (unsigned inputs),
    the network equals its hand-quantized self, uses levels beyond the 8-bit range and fine-tunes."""
    from planner.errors import MpqError
    from planner.quant.train import fit

    q = LsqQuantizer(bits=16, signed=True)
    assert q.levels() == (32768, 32767) and LsqQuantizer(bits=16, signed=False).levels() == (0, 65535)
    torch.manual_seed(0)
    w = torch.randn(1000) * 3
    step = lsq_initial_step(w, 16, True)
    assert torch.allclose(q(w), fake_quant(w, 16, step, True), atol=step)
    assert float((q(w) - w).abs().max()) <= q.step.item() / 2 * (1 + 1e-4)  # no clipping: only rounding
    task, fp = attention["task"], attention["fp"]
    x = torch.stack([task.eval_data()[k][0] for k in range(100)])
    model = apply_bits(fp, dict.fromkeys(attention["mapping"].values(), 16))
    seen = {}
    hook = model.context.register_forward_hook(lambda m, a, o: seen.update(a=a[0], b=a[1], o=o))
    with torch.no_grad():
        out, reference = model(x), fp(x)
    hook.remove()
    sa, sb = model.context.input_quantizer.step.item(), model.context.other_quantizer.step.item()
    assert sa == pytest.approx(lsq_initial_step(seen["a"], 16, False), rel=1e-5)
    assert sb == pytest.approx(lsq_initial_step(seen["b"], 16, True), rel=1e-5)
    assert torch.allclose(seen["o"], fake_quant(seen["a"], 16, sa, False) @ fake_quant(seen["b"], 16, sb, True), atol=1e-5)
    assert bool((out.argmax(1) == reference.argmax(1)).all())
    weight_levels = model.up.weight_quantizer.integer_levels(model.up.weight)
    input_levels = model.context.input_quantizer.integer_levels(seen["a"])
    assert 127 < float(weight_levels.abs().max()) <= 32768 and 255 < float(input_levels.max()) <= 65535
    fit(model, task, epochs=0.2, lr=0.01, seed=0)
    assert all(torch.isfinite(p).all() for p in model.parameters()) and task.evaluate(model) > 10
    with pytest.raises(MpqError, match="2 to 16 bits"):
        apply_bits(fp, {"up": 32})
