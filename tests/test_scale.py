"""LLM-size planning by streaming: external data through memory maps, transformer grouping."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from archs import decoder_onnx
from planner import load_graph
from planner.gains.eagl import eagl


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llm") / "decoder.onnx"
    info = decoder_onnx(path, blocks=8, hidden=256, ffn=1024, heads=4, vocab=4096)
    return path, info


def test_decoder_groups_qkv_and_gated_mlp(decoder):
    path, _ = decoder
    graph = load_graph(path, {"input_ids": (1, 32)})
    for block in range(8):
        names = {tuple(g.layers) for g in graph.groups}
        assert tuple(f"layers.{block}.{n}_proj" for n in "qkv") in names
        assert (f"layers.{block}.gate_proj", f"layers.{block}.up_proj") in names
    assert [g.layers for g in graph.groups if g.pinned_bits] == [["layers.0.q_proj", "layers.0.k_proj", "layers.0.v_proj"],
                                                               ["logits"]]
    scores = graph.layer("layers.3.scores")
    assert scores.weight is None and scores.macs == 4 * 32 * 32 * 64


def test_symbolic_sequence_needs_a_shape(decoder):
    from planner import MpqError

    with pytest.raises(MpqError, match="input 'input_ids' dimension 1 \\('seq'\\)"):
        load_graph(decoder[0])


PEAK_GROWTH = """
import json, sys
from planner import load_graph
from planner.gains.eagl import eagl
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key))
base = status('VmRSS')
graph = load_graph(sys.argv[1], {'input_ids': (1, 32)})
eagl(graph, [2, 4, 8], workers=1)
print(json.dumps({'growth': status('VmHWM') - base}))
"""


def peak_growth(path) -> int:
    """Peak RSS growth (bytes) of load_graph + EAGL on ``path`` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PEAK_GROWTH, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["growth"]


def test_streaming_memory_does_not_grow_with_the_model(decoder, tmp_path):
    """load_graph + EAGL over memory-mapped external data read the weights one tensor at a time:
    the peak memory is the same for 1 and for 8 blocks of the same width. The 7 extra blocks add
    7 x 4 MB of weights (4 x 256^2 + 3 x 256 x 1024 floats each); holding even one of them would
    add 4 MB, so the peaks may differ by less than one tensor (the 4 MB embedding, the largest).
    Measured: 13.5 MB and 14.2 MB (imports and the graph included), 0.7 MB apart."""
    path, info = decoder
    small = decoder_onnx(tmp_path / "one_block.onnx", blocks=1, hidden=256, ffn=1024, heads=4, vocab=4096)
    assert small["largest"] == info["largest"] and info["bytes"] - small["bytes"] == 7 * info["largest"]
    difference = peak_growth(path) - peak_growth(tmp_path / "one_block.onnx")
    assert difference < info["largest"], (difference, info)


def test_parallel_eagl_equals_serial(decoder):
    graph = load_graph(decoder[0], {"input_ids": (1, 32)})
    assert eagl(graph, [2, 4, 8], workers=1).by_group == eagl(graph, [2, 4, 8], workers=2).by_group


def test_plan_on_external_data_model(decoder, tmp_path):
    path, _ = decoder
    out = tmp_path / "plan.json"
    result = subprocess.run([sys.executable, "-m", "planner", "plan", str(path), "--hw", "northpole", "--budget",
                             "latency=0.5", "--input-shape", "input_ids=1x32", "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["solver"]["status"] == "OPTIMAL" and len(doc["groups"]) == 8 * 6 + 1


def test_eagl_leaves_the_cpu_that_hashes_the_model(decoder, monkeypatch):
    """While the model file is still hashed on a background thread (mpq plan), EAGL's default
    takes one thread fewer than the CPUs; once the hash is done, one per CPU."""
    import concurrent.futures
    import os

    from planner.graph.onnxfile import _sha256_in_background

    graph = load_graph(decoder[0], {"input_ids": (1, 32)})
    pending = _sha256_in_background(decoder[0])
    assert len(graph.model.sha256) == 64 and graph.model.hashing() is False  # read: done
    graph.model.sha256 = pending
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    pools = []
    real_pool = concurrent.futures.ThreadPoolExecutor
    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor",
                        lambda n, **kw: pools.append(n) or real_pool(n, **kw))
    monkeypatch.setattr(pending, "running", lambda: True)
    first = eagl(graph, [2, 4, 8])
    assert pools == []  # one thread: the hash takes the other CPU
    monkeypatch.setattr(pending, "running", lambda: False)
    assert eagl(graph, [2, 4, 8]).by_group == first.by_group and pools == [2]
    assert len(graph.model.sha256) == 64 and graph.model.hashing() is False
