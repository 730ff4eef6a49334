"""How close an exported model stays to the network it came from, on real inputs: top-1
agreement (the argmax over the last axis of the first output is the same) and the mean cosine
similarity of each input's output vector (logits, embeddings), the exported model run in
onnxruntime with :func:`planner.export.qdq.session`."""
from __future__ import annotations

import numpy as np
import onnx


def _outputs(run, feeds) -> np.ndarray:
    """The first output of ``run(arrays)`` over all feeds, one row per input (a scalar output is
    one row of one value)."""
    rows = [np.atleast_1d(np.asarray(run(arrays), np.float64)) for arrays in feeds]
    return np.concatenate([r.reshape(r.shape[0], -1) for r in rows])


def compare(outputs: np.ndarray, reference: np.ndarray) -> dict:
    """{"inputs", "top1_agreement" (fraction), "cosine" (mean), "max_difference"} of two output
    arrays (rows are inputs)."""
    norms = np.linalg.norm(outputs, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = (outputs * reference).sum(1) / np.where(norms > 0, norms, 1.0)
    return {"inputs": int(len(outputs)), "top1_agreement": float((outputs.argmax(1) == reference.argmax(1)).mean()),
            "cosine": float(cosine.mean()), "max_difference": float(np.abs(outputs - reference).max())}


def fidelity(exported: onnx.ModelProto, float_model: str, feeds: list, torch_model=None) -> dict[str, dict]:
    """{"float": compare(exported, float ONNX model)} and, with a ``torch_model``, {"torch":
    compare(exported, torch network)} on ``feeds`` (tuples of input arrays in the model's input
    order, or dicts by input name)."""
    import onnxruntime as ort

    from planner.export.qdq import session

    def runner(s):
        names = [i.name for i in s.get_inputs()]
        return lambda arrays: s.run(None, arrays if isinstance(arrays, dict) else dict(zip(names, arrays)))[0]

    quantized = _outputs(runner(session(exported)), feeds)
    out = {"float": compare(quantized, _outputs(runner(ort.InferenceSession(
        float_model, providers=["CPUExecutionProvider"])), feeds))}
    if torch_model is not None:
        import torch

        torch_model.eval()

        def torch_run(arrays):
            values = arrays.values() if isinstance(arrays, dict) else arrays
            with torch.no_grad():
                return torch_model(*[torch.from_numpy(np.asarray(v)) for v in values]).numpy()

        out["torch"] = compare(quantized, _outputs(torch_run, feeds))
    return out


def describe(scores: dict[str, dict]) -> list[str]:
    """One line per reference, for the CLI."""
    names = {"float": "the float model", "torch": "the fine-tuned torch network (checkpoint)"}
    return [f"fidelity vs {names[k]} on {v['inputs']} inputs: top-1 agreement {100 * v['top1_agreement']:.1f}%, "
            f"output cosine {v['cosine']:.4f}" for k, v in scores.items()]


def score_plans(graph, plans: list[dict[str, int]], feeds: list) -> list[dict]:
    """Post-training fidelity of each plan ({layer: bits}) of ``graph`` (read from its file):
    the plan's QDQ model (weights per channel, activations calibrated on ``feeds``) against the
    float model on the same ``feeds``, as :func:`compare` gives it. The float model and the
    activation statistics run once for all plans."""
    import onnxruntime as ort

    from planner.export.qdq import activation_stats, qdq_model, session, steps_from_stats

    float_session = ort.InferenceSession(graph.model.path, providers=["CPUExecutionProvider"])
    names = [i.name for i in float_session.get_inputs()]

    def runner(s):
        return lambda arrays: s.run(None, arrays if isinstance(arrays, dict) else dict(zip(names, arrays)))[0]

    reference = _outputs(runner(float_session), feeds)
    stats = activation_stats(graph, {t for l in graph.layers for t in l.activation_inputs}, feeds)
    out = []
    for bits in plans:
        exported = qdq_model(graph, bits, activation_steps=steps_from_stats(graph, stats, bits)).model
        out.append(compare(_outputs(runner(session(exported)), feeds), reference))
    return out
