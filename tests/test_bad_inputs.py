"""The promise for every bad input, command by command: exit code 2, exactly one line on stderr
starting ``mpq: error:``, no traceback, no new file, and every input file byte-identical.

Each case runs the CLI in this process (``planner.cli.commands.run``) inside a fresh copy of a folder of
inputs: a real network (the MNIST task's ResNet) exported to ONNX, plans, gains files and a
checkpoint made by mpq itself, and files broken in the ways users break them.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import export
from planner.cli.commands import run
from planner.errors import MpqError
from planner.quant.checkpoint import save_checkpoint
from planner.tasks.mnist import SmallResNet

HERE = Path(__file__).parent
NORTHPOLE = (HERE.parent / "hw" / "northpole.yaml").read_text()
TINY = f"{HERE / 'tiny_task.py'}:task"


def cli(*args) -> tuple[int, str, str]:
    """Run ``mpq ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``: relative path -> sha256 (folders: "dir")."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = (hashlib.sha256(Path(path).read_bytes()).hexdigest()
                                                    if stat.S_ISREG(os.lstat(path).st_mode) else "special")
    return found


def _network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = SmallResNet(widths=(4, 8, 8)).eval()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return model


def _edit_json(source: Path, target: Path, change) -> None:
    doc = json.loads(source.read_text())
    change(doc)
    target.write_text(json.dumps(doc))


COST_MODELS = '''
import math


class _Base:
    metrics = ("latency_s",)

    def __init__(self, **options):
        pass


class Text(_Base):
    name = "text"

    def layer_cost(self, layer, bits, spec):
        return "fast"


class Integer(_Base):
    name = "integer"

    def layer_cost(self, layer, bits, spec):
        return 5


class Nan(_Base):
    name = "nan"

    def layer_cost(self, layer, bits, spec):
        return {"latency_s": math.nan}


class Words(_Base):
    name = "words"

    def layer_cost(self, layer, bits, spec):
        return {"latency_s": "1 ms"}
'''


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The folder of inputs every case starts from (copied per case)."""
    d = tmp_path_factory.mktemp("inputs")
    example = (torch.randn(1, 1, 28, 28),)
    export(_network(0), example, d / "m.onnx", "torchscript", input_names=["input"])
    export(_network(1), example, d / "m2.onnx", "torchscript", input_names=["input"])
    export(_network(0), example, d / "dyn.onnx", "torchscript", input_names=["input"],
           dynamic_axes={"input": {2: "height", 3: "width"}})
    cwd = os.getcwd()
    os.chdir(d)
    try:
        for args in (["plan", "m.onnx", "--hw", "northpole", "--budget", "latency=0.5", "--gains", "params", "-o", "plan.json"],
                     ["plan", "m2.onnx", "--hw", "northpole", "--budget", "latency=0.5", "--gains", "params", "-o", "plan2.json"],
                     ["plan", "m.onnx", "--hw", "northpole", "--bits", "2,4", "--budget", "latency=0.3", "-o", "np24.json"],
                     ["gains", "params", "m.onnx", "-o", "gains.json"],
                     ["gains", "params", "m2.onnx", "-o", "gains2.json"]):
            code, _, err = cli(*args)
            assert code == 0, err
    finally:
        os.chdir(cwd)
    from tiny_task import TinyMnist

    save_checkpoint(d / "ckpt.pt", TinyMnist().model(), TinyMnist())
    (d / "sub").mkdir()
    (d / "sub.csv").mkdir()
    (d / "text.txt").write_text("not a model\n")
    # specs
    (d / "nan_cores.yaml").write_text(NORTHPOLE.replace("cores:\n  value: 256", "cores:\n  value: .nan"))
    (d / "nan_clock.yaml").write_text(NORTHPOLE.replace("  value: 4.0e+8", "  value: .nan"))
    (d / "inf_clock.yaml").write_text(NORTHPOLE.replace("  value: 4.0e+8", "  value: .inf"))
    (d / "nan_flat.yaml").write_text(NORTHPOLE.replace("cores:\n  value: 256", "cores: .nan\ncores_note:\n  value: 1"))
    (d / "p32.yaml").write_text(NORTHPOLE.replace("precisions: [2, 4, 8]", "precisions: [8, 32]"))
    (d / "p0.yaml").write_text(NORTHPOLE.replace("precisions: [2, 4, 8]", "precisions: [0, 4]"))
    (d / "p1.yaml").write_text(NORTHPOLE.replace("precisions: [2, 4, 8]", "precisions: [1, 2]"))
    (d / "pfloat.yaml").write_text(NORTHPOLE.replace("precisions: [2, 4, 8]", "precisions: [2.5, 4]"))
    (d / "pins0.yaml").write_text(NORTHPOLE + "\npins: {first: 0, last: 8}\n")
    lol = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lol += [f"{chr(98 + k)}: &{chr(98 + k)} [{','.join(['*' + chr(97 + k)] * 9)}]" for k in range(8)]
    (d / "laughs.yaml").write_text("\n".join(lol) + "\n")
    (d / "recursive.yaml").write_text("a: &a [*a]\n")
    (d / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (d / "empty.yaml").write_text("")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "deep.yaml").write_text("[" * 5000 + "]" * 5000 + "\n")
    (d / "huge.yaml").write_text(NORTHPOLE + "#" * (2 << 20) + "\n")
    (d / "tabs.yaml").write_text("name: x\n\tprecisions: [2]\n")
    # gains files
    gains = d / "gains.json"
    text = gains.read_text()
    first = json.loads(text)["groups"][1]
    marked = json.loads(text)
    marked["groups"][1]["gains"]["4"] = "@"  # an offered precision of a free group
    for name, literal in (("g_nan", "NaN"), ("g_inf", "Infinity"), ("g_ninf", "-Infinity"), ("g_1e400", "1e400")):
        (d / f"{name}.json").write_text(json.dumps(marked).replace('"@"', literal))
    _edit_json(gains, d / "g_params_list.json", lambda g: g.update(params=[1, 2]))
    _edit_json(gains, d / "g_method_list.json", lambda g: g.update(method=["x"]))
    _edit_json(gains, d / "g_groups_dict.json", lambda g: g.update(groups={"a": 1}))
    _edit_json(gains, d / "g_gains_list.json", lambda g: g["groups"][1].update(gains=[1, 2]))
    _edit_json(gains, d / "g_gains_text.json", lambda g: g["groups"][1]["gains"].update({"4": "high"}))
    _edit_json(gains, d / "g_gains_bool.json", lambda g: g["groups"][1]["gains"].update({"4": True}))
    _edit_json(gains, d / "g_bits_key.json", lambda g: g["groups"][1]["gains"].update({"four": 1.0}))
    _edit_json(gains, d / "g_layers_text.json", lambda g: g["groups"][1].update(layers="conv"))
    _edit_json(gains, d / "g_layers_empty.json", lambda g: g["groups"][1].update(layers=[]))
    _edit_json(gains, d / "g_entry_list.json", lambda g: g["groups"].__setitem__(1, [1, 2]))
    _edit_json(gains, d / "g_foreign.json", lambda g: g["groups"][1].update(layers=["no_such_layer"]))
    (d / "g_layers_list.json").write_text(json.dumps({"layers": [first]}))
    (d / "g_top_list.json").write_text("[1, 2, 3]\n")
    (d / "g_deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "g_binary.json").write_bytes(bytes(range(256)))
    (d / "g_empty.json").write_text("")
    (d / "g_dir.json").mkdir()
    # plans
    plan = d / "plan.json"

    def all_bits(doc, bits):
        for g in doc["groups"]:
            g["bits"] = bits
        for layer in doc["layers"]:
            layer["w_bits"] = layer["a_bits"] = bits

    _edit_json(plan, d / "p_w3.json", lambda p: all_bits(p, 3))
    _edit_json(plan, d / "p_w99.json", lambda p: all_bits(p, 99))
    _edit_json(plan, d / "p_w0.json", lambda p: all_bits(p, 0))
    _edit_json(plan, d / "p_nolayers.json", lambda p: p.update(layers=[]))
    _edit_json(plan, d / "p_twice.json", lambda p: p["layers"].append(dict(p["layers"][1], w_bits=2, a_bits=2)))
    (d / "p_nan.json").write_text(plan.read_text().replace('"objective": ', '"objective": NaN, "x": ', 1))
    (d / "p_deep.json").write_text("{\"a\":" * 50_000 + "1" + "}" * 50_000)
    (d / "p_binary.json").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (d / "p_empty.json").write_text("{}")
    # latency tables
    (d / "lut_latin1.csv").write_bytes("layer,bits,latency_s\ncouche_é,8,1e-3\n".encode("latin-1"))
    (d / "lut_nan.csv").write_text("layer,bits,latency_s\n/stem/Conv,8,nan\n")
    (d / "lut_inf.csv").write_text("layer,bits,latency_s\n/stem/Conv,8,inf\n")
    (d / "lut_neg.csv").write_text("layer,bits,latency_s\n/stem/Conv,8,-1\n")
    (d / "lut_header.csv").write_text("name,precision,time\nx,8,1\n")
    (d / "lut_bits.csv").write_text("layer,bits,latency_s\n/stem/Conv,eight,1\n")
    (d / "lut_missing.csv").write_text("layer,bits,latency_s\n/stem/Conv,8,1e-3\n")
    # input batches (--inputs; the model reads one float32 input of 1x1x28x28)
    for name, batch in (("rank", np.zeros((1, 28, 28), np.float32)), ("dims", np.zeros((1, 1, 28, 27), np.float32)),
                        ("dtype", np.zeros((1, 1, 28, 28), np.int64)), ("strings", np.array(["a", "b"]))):
        (d / f"in_{name}").mkdir()
        np.save(d / f"in_{name}" / "0.npy", batch)
    (d / "in_names").mkdir()
    np.savez(d / "in_names" / "0.npz", image=np.zeros((1, 1, 28, 28), np.float32))
    (d / "in_empty").mkdir()
    (d / "in_pickle").mkdir()
    np.save(d / "in_pickle" / "0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    # user code
    (d / "cm.py").write_text(COST_MODELS)
    (d / "cm_exit.py").write_text("import sys\nsys.exit(3)\n")
    (d / "cm_raise.py").write_text("raise ImportError('needs the vendor SDK\\ninstall it first')\n")
    (d / "t_exit.py").write_text("import sys\nsys.exit(7)\n")
    (d / "t_factory.py").write_text("def task():\n    raise RuntimeError('dataset server unreachable')\n")
    (d / "t_multiline.py").write_text("raise ValueError('line one\\nline two\\nline three')\n")
    (d / "t_syntax.py").write_text("def task(:\n")
    (d / "t_empty.py").write_text("x = 1\n")
    # checkpoints of finished work
    (d / "bin.partial.jsonl").write_bytes(bytes(range(256)) * 8)
    (d / "corrupt.partial.jsonl").write_text('{"key": "a", "value": 1}\nnot json at all\n{"key": "b", "value": 2}\n')
    (d / "list.partial.jsonl").write_text('[1, 2]\n{"key": "b", "value": 2}\n')
    (d / "a.json.partial.jsonl").mkdir()
    (d / "b.json.partial.jsonl").write_bytes(b"\xff\xfe\x00garbage\n" * 10)
    (d / "f.csv.partial.jsonl").write_text("garbage\n{}\n")
    return d


M = ["m.onnx"]
NP = ["--hw", "northpole"]
PLAN = ["plan", "m.onnx", "--hw", "northpole", "--budget", "latency=0.5", "--gains", "params"]
FRONTIER = ["frontier", "m.onnx", "--hw", "northpole", "--gains", "params", "--points", "2"]
DYN_FRONTIER = ["frontier", "dyn.onnx"] + FRONTIER[2:]
SWEEP = ["sweep", "m.onnx", "--hw", "northpole", "--vary", "cores=128,256", "--gains", "params", "--target-gain", "0.9"]
COST = ["cost", "m.onnx", "--hw", "northpole", "--summary"]
ALPS = ["gains", "alps", "--task", TINY, "--checkpoint", "ckpt.pt", "--bits", "2,4"]
SENS = ["gains", "sensitivity", "--task", TINY, "--checkpoint", "ckpt.pt", "--bits", "2,4"]
HESS = ["gains", "hessian", "--task", TINY, "--checkpoint", "ckpt.pt", "--bits", "2,4"]
TRAIN = ["train", "--task", TINY]
FINETUNE = ["finetune", "plan.json", "--task", TINY, "--checkpoint", "ckpt.pt"]
EXPORT = ["export", "plan.json", "m.onnx"]

CASES: dict[str, list] = {
    # ---- an output never replaces an input, nor another output
    "plan -o MODEL": PLAN + ["-o", "m.onnx"],
    "plan --csv MODEL": PLAN + ["--csv", "m.onnx"],
    "plan -o GAINS": ["plan", "m.onnx", *NP, "--budget", "latency=0.5", "--gains", "gains.json", "-o", "gains.json"],
    "plan -o SPEC": ["plan", "m.onnx", "--hw", "p.yaml", "--budget", "latency=0.5", "-o", "p.yaml"],
    "plan -o LUT": PLAN + ["--lut", "lut_missing.csv", "-o", "lut_missing.csv"],
    "plan -o COSTMODEL": PLAN + ["--cost-model", "cm.py:Text", "-o", "cm.py"],
    "plan -o x --csv x": PLAN + ["-o", "a.json", "--csv", "a.json"],
    "plan -o x --csv ./x": PLAN + ["-o", "a.json", "--csv", "./sub/../a.json"],
    "plan -o MODEL via ..": PLAN + ["-o", "sub/../m.onnx"],
    "plan -o symlink to MODEL": PLAN + ["-o", "link.onnx"],
    "gains uniform -o MODEL": ["gains", "uniform", "m.onnx", "-o", "m.onnx"],
    "gains random -o MODEL": ["gains", "random", "m.onnx", "-o", "m.onnx"],
    "gains params -o MODEL": ["gains", "params", "m.onnx", "-o", "m.onnx"],
    "gains qerror -o MODEL": ["gains", "qerror", "m.onnx", "-o", "m.onnx"],
    "gains eagl -o MODEL": ["gains", "eagl", "m.onnx", "-o", "m.onnx"],
    "gains eagl -o SPEC": ["gains", "eagl", "m.onnx", "--hw", "p.yaml", "-o", "p.yaml"],
    "export -o MODEL": EXPORT + ["-o", "m.onnx"],
    "export -o PLAN": EXPORT + ["-o", "plan.json"],
    "export -o CHECKPOINT": EXPORT + ["--task", TINY, "--checkpoint", "ckpt.pt", "-o", "ckpt.pt"],
    "frontier --csv MODEL": FRONTIER + ["--csv", "m.onnx"],
    "frontier --plot MODEL": FRONTIER + ["--plot", "m.onnx"],
    "frontier --csv x --plot x": FRONTIER + ["--csv", "f.out", "--plot", "f.out"],
    "compare --plot MODEL": ["compare", "m.onnx", *NP, "--hw", "edge_npu", "--plot", "m.onnx"],
    "train -o x.onnx": TRAIN + ["-o", "x.onnx"],
    "train -o INIT": TRAIN + ["--init", "ckpt.pt", "-o", "ckpt.pt"],
    "finetune -o CHECKPOINT": FINETUNE + ["-o", "ckpt.pt"],
    "finetune -o PLAN": FINETUNE + ["-o", "plan.json"],
    "alps -o CHECKPOINT": ALPS + ["-o", "ckpt.pt"],
    "alps --resume-file CHECKPOINT": ALPS + ["-o", "g.json", "--resume-file", "ckpt.pt"],
    "alps --resume-file -o": ALPS + ["-o", "g.json", "--resume-file", "g.json"],
    "sensitivity -o CHECKPOINT": SENS + ["-o", "ckpt.pt"],
    "hessian -o CHECKPOINT": HESS + ["-o", "ckpt.pt"],
    "hessian -o TASK FILE": ["gains", "hessian", "--task", "t_empty.py:task", "--checkpoint", "ckpt.pt",
                             "-o", "t_empty.py"],
    "sweep -o MODEL": SWEEP + ["-o", "m.onnx"],
    "sweep -o x -o x": SWEEP + ["-o", "s.csv", "-o", "./s.csv"],
    "sweep --plot MODEL": SWEEP + ["--plot", "m.onnx"],
    # ---- output paths that cannot be written
    "sweep --plot /proc (all or nothing)": SWEEP + ["-o", "s.csv", "--plot", "/proc/s.png"],
    "sweep -o DIR.csv": SWEEP + ["-o", "sub.csv"],
    "plan -o ''": PLAN + ["-o", ""],
    "plan -o DIR": PLAN + ["-o", "sub"],
    "plan -o parent is a file": PLAN + ["-o", "text.txt/plan.json"],
    "plan -o /proc": PLAN + ["-o", "/proc/plan.json"],
    "plan -o /proc/self/x": PLAN + ["-o", "/proc/self/plan.json"],
    "plan --csv DIR": PLAN + ["-o", "a.json", "--csv", "sub"],
    "plan --csv /proc (all or nothing)": PLAN + ["-o", "a.json", "--csv", "/proc/a.csv"],
    "plan --csv '' (all or nothing)": PLAN + ["-o", "a.json", "--csv", ""],
    "plan -o a pipe": PLAN + ["-o", "pipe"],
    "frontier --csv DIR": FRONTIER + ["--csv", "sub"],
    "frontier --plot ''": FRONTIER + ["--plot", ""],
    "frontier --plot /proc (all or nothing)": FRONTIER + ["--csv", "f.csv", "--plot", "/proc/f.png"],
    "compare --plot DIR": ["compare", "m.onnx", *NP, "--hw", "edge_npu", "--plot", "sub"],
    "compare --plot ''": ["compare", "m.onnx", *NP, "--hw", "edge_npu", "--plot", ""],
    "gains params -o DIR": ["gains", "params", "m.onnx", "-o", "sub"],
    "gains params -o ''": ["gains", "params", "m.onnx", "-o", ""],
    "gains eagl -o parent file": ["gains", "eagl", "m.onnx", "-o", "m.onnx/g.json"],
    "export -o DIR": EXPORT + ["-o", "sub"],
    "export -o /proc": EXPORT + ["-o", "/proc/q.onnx"],
    "train -o DIR": TRAIN + ["-o", "sub"],
    "train -o ''": TRAIN + ["-o", ""],
    "train -o /proc": TRAIN + ["-o", "/proc/x.pt"],
    "finetune -o DIR": FINETUNE + ["-o", "sub"],
    "alps -o ''": ALPS + ["-o", ""],
    "alps -o /proc": ALPS + ["-o", "/proc/g.json"],
    "sensitivity -o DIR": SENS + ["-o", "sub"],
    "hessian -o parent file": HESS + ["-o", "text.txt/g.json"],
    # ---- bit widths: the integers 2..16
    "plan --bits 0,4": PLAN + ["--bits", "0,4"],
    "plan --bits=-2,4": PLAN + ["--bits=-2,4"],
    "plan --bits 2,4,64": PLAN + ["--bits", "2,4,64"],
    "plan --bits 8,32": PLAN + ["--bits", "8,32"],
    "plan --bits ''": PLAN + ["--bits", ""],
    "plan --bits 2,,4": PLAN + ["--bits", "2,,4"],
    "plan --bits 4.5": PLAN + ["--bits", "4.5"],
    "plan --pin-bits 0": PLAN + ["--pin-bits", "0"],
    "plan --pin-bits 1": PLAN + ["--pin-bits", "1"],
    "plan --pin-bits 17": PLAN + ["--pin-bits", "17"],
    "plan --pin-bits x": PLAN + ["--pin-bits", "x"],
    "inspect --pin-bits 0": ["inspect", "m.onnx", "--pin-bits", "0"],
    "cost --bits 0": COST + ["--bits", "0"],
    "cost --bits 32": COST + ["--bits", "32"],
    "cost --pin-bits -8": COST + ["--pin-bits", "-8"],
    "frontier --bits 8,32": FRONTIER + ["--bits", "8,32"],
    "gains uniform --bits 0,4": ["gains", "uniform", "m.onnx", "--bits", "0,4", "-o", "g.json"],
    "gains params --bits ''": ["gains", "params", "m.onnx", "--bits", "", "-o", "g.json"],
    "gains eagl --bits 8,32": ["gains", "eagl", "m.onnx", "--bits", "8,32", "-o", "g.json"],
    "gains eagl --bits 1,2": ["gains", "eagl", "m.onnx", "--bits", "1,2", "-o", "g.json"],
    "alps --bits 0,4": ALPS[:-2] + ["--bits", "0,4", "-o", "g.json"],
    "hessian --bits 2,64": HESS[:-2] + ["--bits", "2,64", "-o", "g.json"],
    "sensitivity --bits ''": SENS[:-2] + ["--bits", "", "-o", "g.json"],
    "train --bits 1": TRAIN + ["--bits", "1", "-o", "x.pt"],
    "train --bits 32": TRAIN + ["--bits", "32", "-o", "x.pt"],
    "train --pin-bits 0": TRAIN + ["--pin-bits", "0", "-o", "x.pt"],
    "alps --pin-bits 64": ALPS + ["--pin-bits", "64", "-o", "g.json"],
    "plan --between 1,4": PLAN + ["--between", "1,4"],
    # ---- numbers: finite and in range
    "plan --time-limit -1": PLAN + ["--time-limit", "-1"],
    "plan --time-limit nan": PLAN + ["--time-limit", "nan"],
    "plan --time-limit inf": PLAN + ["--time-limit", "inf"],
    "plan --time-limit 0": PLAN + ["--time-limit", "0"],
    "plan --seed -1": ["plan", "m.onnx", *NP, "--budget", "latency=0.5", "--gains", "random", "--seed", "-1"],
    "frontier --time-limit nan": FRONTIER + ["--time-limit", "nan"],
    "frontier --points 1": FRONTIER[:-1] + ["1"],
    "frontier --points -3": FRONTIER[:-1] + ["-3"],
    "compare --top -3": ["compare", "m.onnx", *NP, "--hw", "edge_npu", "--top", "-3"],
    "compare --top 0": ["compare", "m.onnx", *NP, "--hw", "edge_npu", "--top", "0"],
    "alps --epochs -1": ALPS + ["--epochs", "-1", "-o", "g.json"],
    "alps --epochs nan": ALPS + ["--epochs", "nan", "-o", "g.json"],
    "alps --lr nan": ALPS + ["--lr", "nan", "-o", "g.json"],
    "alps --lr 0": ALPS + ["--lr", "0", "-o", "g.json"],
    "alps --seeds 0": ALPS + ["--seeds", "0", "-o", "g.json"],
    "alps --seeds -2": ALPS + ["--seeds", "-2", "-o", "g.json"],
    "alps --workers -1": ALPS + ["--workers", "-1", "-o", "g.json"],
    "hessian --samples 0": HESS + ["--samples", "0", "-o", "g.json"],
    "hessian --batches -1": HESS + ["--batches", "-1", "-o", "g.json"],
    "train --epochs -1": TRAIN + ["--epochs", "-1", "-o", "x.pt"],
    "train --epochs nan": TRAIN + ["--epochs", "nan", "-o", "x.pt"],
    "train --lr inf": TRAIN + ["--lr", "inf", "-o", "x.pt"],
    "train --lr 1e300 (float32 overflow)": TRAIN + ["--lr", "1e300", "-o", "x.pt"],
    "train --seed -1": TRAIN + ["--seed", "-1", "-o", "x.pt"],
    "train diverges (--lr 1e30)": TRAIN + ["--lr", "1e30", "--epochs", "0.05", "-o", "x.pt"],
    "finetune --lr nan": FINETUNE + ["--lr", "nan", "-o", "f.pt"],
    "finetune --epochs -1": FINETUNE + ["--epochs", "-1", "-o", "f.pt"],
    "finetune --distill 2": FINETUNE + ["--distill", "2", "-o", "f.pt"],
    "finetune --distill nan": FINETUNE + ["--distill", "nan", "-o", "f.pt"],
    "sweep --samples 0": SWEEP + ["--samples", "0"],
    "sweep --time-limit nan": SWEEP + ["--time-limit", "nan"],
    "sweep --target-gain nan": SWEEP[:-2] + ["--target-gain", "nan"],
    "sweep --sample-seed -1": SWEEP + ["--samples", "2", "--sample-seed", "-1"],
    # ---- input shapes
    "inspect --input-shape huge": ["inspect", "m.onnx", "--input-shape", "input=1x1x99999999999999999999x8"],
    "plan --input-shape huge": PLAN + ["--input-shape", "input=1x1x99999999999999999999x8"],
    "cost --input-shape 0": COST + ["--input-shape", "input=1x1x0x28"],
    "cost --input-shape -3": COST + ["--input-shape", "input=1x-3x28x28"],
    "inspect --input-shape no dims": ["inspect", "m.onnx", "--input-shape", "input="],
    "inspect --input-shape no name": ["inspect", "m.onnx", "--input-shape", "=1x2"],
    # ---- specs
    "validate cores .nan": ["spec", "validate", "nan_flat.yaml"],
    "validate cores value .nan": ["spec", "validate", "nan_cores.yaml"],
    "validate clock .nan": ["spec", "validate", "nan_clock.yaml"],
    "validate clock .inf": ["spec", "validate", "inf_clock.yaml"],
    "validate precisions [8, 32]": ["spec", "validate", "p32.yaml"],
    "validate precisions [0, 4]": ["spec", "validate", "p0.yaml"],
    "validate precisions [1, 2]": ["spec", "validate", "p1.yaml"],
    "validate precisions [2.5, 4]": ["spec", "validate", "pfloat.yaml"],
    "validate pins first 0": ["spec", "validate", "pins0.yaml"],
    "validate billion laughs": ["spec", "validate", "laughs.yaml"],
    "validate recursive anchor": ["spec", "validate", "recursive.yaml"],
    "validate binary": ["spec", "validate", "binary.yaml"],
    "validate empty": ["spec", "validate", "empty.yaml"],
    "validate list": ["spec", "validate", "list.yaml"],
    "validate deep": ["spec", "validate", "deep.yaml"],
    "validate huge": ["spec", "validate", "huge.yaml"],
    "validate tabs": ["spec", "validate", "tabs.yaml"],
    "validate directory": ["spec", "validate", "sub"],
    "validate missing": ["spec", "validate", "missing.yaml"],
    "spec show binary": ["spec", "show", "binary.yaml"],
    "plan --hw laughs": ["plan", "m.onnx", "--hw", "laughs.yaml", "--budget", "latency=0.5"],
    "cost --hw nan clock": ["cost", "m.onnx", "--hw", "nan_clock.yaml"],
    "cost --hw p32": ["cost", "m.onnx", "--hw", "p32.yaml"],
    "gains eagl --hw recursive": ["gains", "eagl", "m.onnx", "--hw", "recursive.yaml", "-o", "g.json"],
    "compare --hw binary": ["compare", "m.onnx", *NP, "--hw", "binary.yaml"],
    # ---- gains files
    "gains NaN": PLAN[:-1] + ["g_nan.json"],
    "gains Infinity": PLAN[:-1] + ["g_inf.json"],
    "gains -Infinity": PLAN[:-1] + ["g_ninf.json"],
    "gains 1e400": PLAN[:-1] + ["g_1e400.json"],
    "gains params list": PLAN[:-1] + ["g_params_list.json"],
    "gains method list": PLAN[:-1] + ["g_method_list.json"],
    "gains groups mapping": PLAN[:-1] + ["g_groups_dict.json"],
    "gains gains list": PLAN[:-1] + ["g_gains_list.json"],
    "gains gain text": PLAN[:-1] + ["g_gains_text.json"],
    "gains gain bool": PLAN[:-1] + ["g_gains_bool.json"],
    "gains bits key": PLAN[:-1] + ["g_bits_key.json"],
    "gains layers text": PLAN[:-1] + ["g_layers_text.json"],
    "gains layers empty": PLAN[:-1] + ["g_layers_empty.json"],
    "gains entry list": PLAN[:-1] + ["g_entry_list.json"],
    "gains foreign layer": PLAN[:-1] + ["g_foreign.json"],
    "gains per-layer list": PLAN[:-1] + ["g_layers_list.json"],
    "gains top-level list": PLAN[:-1] + ["g_top_list.json"],
    "gains 100,000 deep": PLAN[:-1] + ["g_deep.json"],
    "gains binary": PLAN[:-1] + ["g_binary.json"],
    "gains empty": PLAN[:-1] + ["g_empty.json"],
    "gains directory": PLAN[:-1] + ["g_dir.json"],
    "gains missing": PLAN[:-1] + ["missing.json"],
    "gains of another model": PLAN[:-1] + ["gains2.json"],
    "frontier gains of another model": FRONTIER[:4] + ["--gains", "gains2.json"],
    "frontier gains NaN": FRONTIER[:4] + ["--gains", "g_nan.json"],
    "plan two --gains": PLAN + ["--gains", "uniform"],
    # ---- plans
    "cost plan for another spec": ["cost", "m.onnx", "--hw", "gpu_a100", "--plan", "np24.json"],
    "cost plan w_bits 3": COST + ["--plan", "p_w3.json"],
    "cost plan w_bits 99": COST + ["--plan", "p_w99.json"],
    "cost plan w_bits 0": COST + ["--plan", "p_w0.json"],
    "cost plan of another model": COST + ["--plan", "plan2.json"],
    "cost plan no layers": COST + ["--plan", "p_nolayers.json"],
    "cost plan NaN": COST + ["--plan", "p_nan.json"],
    "cost plan deep": COST + ["--plan", "p_deep.json"],
    "cost plan binary": COST + ["--plan", "p_binary.json"],
    "cost plan empty object": COST + ["--plan", "p_empty.json"],
    "export plan of another model": ["export", "plan2.json", "m.onnx", "-o", "q.onnx"],
    "export plan w_bits 99": ["export", "p_w99.json", "m.onnx", "-o", "q.onnx"],
    "export plan binary": ["export", "p_binary.json", "m.onnx", "-o", "q.onnx"],
    "export plan with a layer twice": ["export", "p_twice.json", "m.onnx", "-o", "q.onnx"],
    "cost plan with a layer twice": COST + ["--plan", "p_twice.json"],
    "export --checkpoint without --task": EXPORT + ["--checkpoint", "ckpt.pt", "-o", "q.onnx"],
    "inspect a device (/dev/zero never ends)": ["inspect", "/dev/zero"],
    "--hw a device": COST[:2] + ["--hw", "/dev/zero", "--summary"],
    "--plan a device": COST + ["--plan", "/dev/zero"],
    "--lut a device": COST + ["--lut", "/dev/zero"],
    "--checkpoint a device": ["evaluate", "--task", TINY, "--checkpoint", "/dev/zero"],
    "export --inputs of another rank": EXPORT + ["--inputs", "in_rank", "-o", "q.onnx"],
    "export --inputs of another size": EXPORT + ["--inputs", "in_dims", "-o", "q.onnx"],
    "export --inputs of int64": EXPORT + ["--inputs", "in_dtype", "-o", "q.onnx"],
    "export --inputs of strings": EXPORT + ["--inputs", "in_strings", "-o", "q.onnx"],
    "export --inputs with another name": EXPORT + ["--inputs", "in_names", "-o", "q.onnx"],
    "export --inputs empty folder": EXPORT + ["--inputs", "in_empty", "-o", "q.onnx"],
    "export --inputs pickled objects": EXPORT + ["--inputs", "in_pickle", "-o", "q.onnx"],
    "export --format ort-overrides --calibrate with --inputs of another size":
        EXPORT + ["--format", "ort-overrides", "--calibrate", "c.onnx", "--inputs", "in_dims", "-o", "o.json"],
    "frontier --inputs of another size": FRONTIER + ["--inputs", "in_dims", "--csv", "f.csv"],
    "finetune plan NaN": ["finetune", "p_nan.json", "--task", TINY, "--checkpoint", "ckpt.pt", "-o", "f.pt"],
    "evaluate plan deep": ["evaluate", "--task", TINY, "--checkpoint", "ckpt.pt", "--plan", "p_deep.json"],
    # ---- latency tables and cost-model plugins
    "--lut not UTF-8": COST + ["--lut", "lut_latin1.csv"],
    "--lut nan": COST + ["--lut", "lut_nan.csv"],
    "--lut inf": COST + ["--lut", "lut_inf.csv"],
    "--lut negative": COST + ["--lut", "lut_neg.csv"],
    "--lut header": COST + ["--lut", "lut_header.csv"],
    "--lut bits": COST + ["--lut", "lut_bits.csv"],
    "--lut missing rows": COST + ["--lut", "lut_missing.csv"],
    "--lut directory": COST + ["--lut", "sub"],
    "cost model returns text": COST + ["--cost-model", "cm.py:Text"],
    "cost model returns int": COST + ["--cost-model", "cm.py:Integer"],
    "cost model returns nan": COST + ["--cost-model", "cm.py:Nan"],
    "cost model returns words": COST + ["--cost-model", "cm.py:Words"],
    "cost model sys.exit": COST + ["--cost-model", "cm_exit.py:X"],
    "cost model import fails (2 lines)": COST + ["--cost-model", "cm_raise.py:X"],
    "cost model missing class": COST + ["--cost-model", "cm.py:Missing"],
    "cost model unknown": COST + ["--cost-model", "no_such_model"],
    # ---- tasks
    "task sys.exit(7)": TRAIN[:1] + ["--task", "t_exit.py:task", "-o", "x.pt"],
    "task factory raises": TRAIN[:1] + ["--task", "t_factory.py:task", "-o", "x.pt"],
    "task multi-line error": TRAIN[:1] + ["--task", "t_multiline.py:task", "-o", "x.pt"],
    "task syntax error": TRAIN[:1] + ["--task", "t_syntax.py:task", "-o", "x.pt"],
    "task without object": TRAIN[:1] + ["--task", "t_empty.py:task", "-o", "x.pt"],
    "task missing file": TRAIN[:1] + ["--task", "nothere.py:task", "-o", "x.pt"],
    "task missing module": TRAIN[:1] + ["--task", "no_such_package.tasks:task", "-o", "x.pt"],
    "task no colon": TRAIN[:1] + ["--task", "mnist2", "-o", "x.pt"],
    "evaluate task sys.exit": ["evaluate", "--task", "t_exit.py:task", "--checkpoint", "ckpt.pt"],
    "alps task factory raises": ["gains", "alps", "--task", "t_factory.py:task", "--checkpoint", "ckpt.pt",
                                 "-o", "g.json"],
    # ---- checkpoints
    "evaluate checkpoint is text": ["evaluate", "--task", TINY, "--checkpoint", "text.txt"],
    "evaluate checkpoint is a directory": ["evaluate", "--task", TINY, "--checkpoint", "sub"],
    "evaluate checkpoint is ONNX": ["evaluate", "--task", TINY, "--checkpoint", "m.onnx"],
    "alps partial is a directory": ALPS + ["-o", "a.json"],
    "alps partial is binary": ALPS + ["-o", "b.json"],
    "alps --resume-file binary": ALPS + ["-o", "g.json", "--resume-file", "bin.partial.jsonl"],
    "alps --resume-file corrupt": ALPS + ["-o", "g.json", "--resume-file", "corrupt.partial.jsonl"],
    "alps --resume-file not entries": ALPS + ["-o", "g.json", "--resume-file", "list.partial.jsonl"],
    "alps --resume-file directory": ALPS + ["-o", "g.json", "--resume-file", "sub"],
    "sensitivity --resume-file corrupt": SENS + ["-o", "g.json", "--resume-file", "corrupt.partial.jsonl"],
    "frontier checkpoint corrupt": FRONTIER + ["--csv", "f.csv"],
    "alps --executor ray unreachable": ALPS + ["-o", "g.json", "--executor", "ray", "--ray-address", "127.0.0.1:1"],
    "alps --ray-address nonsense": ALPS + ["-o", "g.json", "--executor", "ray", "--ray-address", "nowhere"],
    # ---- budgets
    "plan budget not a number": PLAN[:4] + ["--budget", "latency<=fast"],
    "plan budget unknown metric": PLAN[:4] + ["--budget", "speed<=1"],
    "plan budget fraction 2": PLAN[:4] + ["--budget", "latency=2"],
    "plan budget unit": PLAN[:4] + ["--budget", "latency<=3MB"],
    "plan budget negative": PLAN[:4] + ["--budget", "latency<=-1"],
    "plan budget nan": PLAN[:4] + ["--budget", "latency<=nan"],
    # ---- click's own usage errors
    "unknown command": ["frobnicate"],
    "unknown option": ["plan", "m.onnx", "--frobnicate"],
    "missing --hw": ["plan", "m.onnx", "--budget", "latency=0.5"],
    "missing MODEL": ["inspect"],
    "bad choice": PLAN + ["--method", "magic"],
    "option without value": PLAN + ["-o"],
    "spec validate without files": ["spec", "validate"],
    "unknown gains subcommand": ["gains", "magic", "m.onnx"],
    # ---- models
    "inspect missing model": ["inspect", "missing.onnx"],
    "inspect text model": ["inspect", "text.txt"],
    "inspect directory": ["inspect", "sub"],
    "plan --method knapsack with 3 budgets": PLAN + ["--method", "knapsack", "--budget", "weight_bytes<=1GB",
                                                    "--budget", "energy=0.5"],
}


@pytest.fixture
def workdir(inputs, tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    shutil.copytree(inputs, work)
    shutil.copy(HERE.parent / "hw" / "northpole.yaml", work / "p.yaml")
    (work / "link.onnx").symlink_to(work / "m.onnx")
    os.mkfifo(work / "pipe")  # a file that is not a regular file (never /dev/null: old code replaced it)
    monkeypatch.chdir(work)
    return work


#: A progress line of long work when stderr is not a terminal (planner.cli.options.Progress): not an error.
PROGRESS_LINE = re.compile(r"^[\w .:/-]+: \d+(/\d+)? \w+, \d+ s$")


def assert_promise(work: Path, args: list) -> None:
    before = snapshot(work)
    task_file = (HERE / "tiny_task.py").read_bytes()
    code, out, err = cli(*args)
    lines = [line for line in err.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mpq: error:"), (code, err, out)
    assert "Traceback" not in err + out
    assert snapshot(work) == before, "files changed"
    assert (HERE / "tiny_task.py").read_bytes() == task_file


def test_the_table_is_large():
    assert len(CASES) >= 130


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(workdir, name):
    assert_promise(workdir, CASES[name])


def test_forced_use_of_another_models_gains_works(workdir):
    """--force accepts what the sha256 check refuses (layer names match, weights do not)."""
    code, out, err = cli(*PLAN[:-1], "gains2.json", "--force", "-o", "forced.json")
    assert code == 0, err
    assert json.loads((workdir / "forced.json").read_text())["model"]["sha256"] != json.loads(
        (workdir / "gains2.json").read_text())["model"]["sha256"]


def test_stale_frontier_checkpoint_is_not_reused(workdir, monkeypatch):
    """A frontier checkpoint left by a run at another input shape is ignored (with a note): the
    frontier printed equals the one computed without any checkpoint."""
    from planner.jobs.store import JobStore

    with monkeypatch.context() as m:
        m.setattr(JobStore, "remove", lambda self: None)  # as if killed before the end
        code, _, err = cli(*DYN_FRONTIER, "--csv", "f.out", "--input-shape", "input=1x1x8x8")
        assert code == 0, err
    assert len(JobStore("f.out.partial.jsonl").done) == 2
    code, out, err = cli(*DYN_FRONTIER, "--csv", "f.out", "--json", "--input-shape", "input=1x1x64x64")
    assert code == 0, err
    assert "ignored 2 result(s)" in err
    code, fresh, err = cli(*DYN_FRONTIER, "--json", "--input-shape", "input=1x1x64x64")
    assert code == 0, err
    def points(text):
        return [{k: v for k, v in p.items() if k != "solve_time_s"} for p in json.loads(text)["points"]]

    assert points(out) == points(fresh)


def test_new_files_follow_the_umask_and_existing_files_keep_their_mode(workdir):
    old = os.umask(0o022)
    try:
        code, _, err = cli(*PLAN, "-o", "new.json", "--csv", "new.csv")
        assert code == 0, err
        assert (workdir / "new.json").stat().st_mode & 0o777 == 0o644
        assert (workdir / "new.csv").stat().st_mode & 0o777 == 0o644
        os.chmod(workdir / "new.json", 0o640)
        code, _, err = cli(*PLAN, "-o", "new.json")
        assert code == 0, err
        assert (workdir / "new.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_a_bug_is_exit_1_with_a_traceback_and_a_request(workdir, monkeypatch):
    """An internal error is not blamed on the input: exit 1, the traceback, a line asking for a report."""
    import planner.graph

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(planner.graph, "load_graph", broken)
    code, _, err = cli("inspect", "m.onnx")
    assert code == 1
    assert "Traceback" in err and "ZeroDivisionError" in err and "please report" in err.splitlines()[-1]
    assert not err.startswith("mpq: error:")


@pytest.mark.parametrize("fmt", ["qdq", "aimet", "ort-overrides"])
def test_an_export_whose_fidelity_fails_writes_nothing(workdir, monkeypatch, fmt):
    """Fidelity was measured after the export's files were written: a failure there (a user error
    from onnxruntime, or a bug) left them behind (ort-overrides: the JSON and the --calibrate
    model). It is now measured first, and the two ort-overrides files are written together."""
    import planner.export.fidelity

    def failing(*args, **kwargs):
        raise MpqError("onnxruntime cannot run the float model on these inputs")

    (workdir / "good_inputs").mkdir()
    np.save(workdir / "good_inputs" / "0.npy", np.zeros((1, 1, 28, 28), np.float32))
    monkeypatch.setattr(planner.export.fidelity, "fidelity", failing)
    calibrate = ["--calibrate", "calibrated.onnx"] if fmt == "ort-overrides" else []
    assert_promise(workdir, EXPORT + ["--format", fmt, "--inputs", "good_inputs", "-o", "out.json", *calibrate])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_stale_sensitivity_results_are_not_reused(workdir):
    """Sensitivity results kept for one version of a task file are ignored (with a note) after
    the file changes: the gains equal a fresh run's (before, the key held only the task's name)."""
    def task_file(step: int) -> None:
        Path("t_var.py").write_text(
            f"import sys\nsys.path.insert(0, {str(HERE)!r})\nimport torch\nfrom tiny_task import TinyMnist\n\n\n"
            f"class Variant(TinyMnist):\n    def eval_data(self):\n"
            f"        return torch.utils.data.Subset(self._splits['val'], range(0, 500, {step}))\n\n\ntask = Variant()\n")

    args = ["gains", "sensitivity", "--task", "t_var.py:task", "--checkpoint", "ckpt.pt", "--bits", "2,4"]
    task_file(2)
    code, _, err = cli(*args, "-o", "old.json", "--resume-file", "kept.jsonl")
    assert code == 0, err
    task_file(3)
    code, _, err = cli(*args, "-o", "resumed.json", "--resume-file", "kept.jsonl")
    assert code == 0, err
    assert "ignored" in err
    code, _, err = cli(*args, "-o", "fresh.json")
    assert code == 0, err
    resumed, fresh, old = (json.loads(Path(f"{n}.json").read_text()) for n in ("resumed", "fresh", "old"))
    assert [g["gains"] for g in resumed["groups"]] == [g["gains"] for g in fresh["groups"]]
    assert [g["gains"] for g in old["groups"]] != [g["gains"] for g in fresh["groups"]]
