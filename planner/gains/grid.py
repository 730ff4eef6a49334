"""The signed b-bit grid and the statistics gain estimators read from it, in one or two passes.

Weights are read in chunks (a few MB each) so that a memory-mapped tensor of any size is
streamed, never copied whole. Levels are q = clip(round(w / s), -2^(b-1), 2^(b-1) - 1).
"""
from __future__ import annotations

import numpy as np

CHUNK = 1 << 20  # elements per chunk: 4 MB of float32


def qrange(bits: int) -> tuple[int, int]:
    """(Q_N, Q_P) of the signed b-bit grid: levels -Q_N .. Q_P."""
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1 if bits > 1 else 0


def chunks(values: np.ndarray, size: int = CHUNK):
    """Flat float32 chunks of ``values`` (a view where the data already is float32)."""
    flat = values.reshape(-1)
    for start in range(0, flat.size, size):
        yield np.asarray(flat[start:start + size], dtype=np.float32)


def mean_abs(values: np.ndarray) -> float:
    total = 0.0
    for chunk in chunks(values):
        total += float(np.abs(chunk).sum(dtype=np.float64))
    return total / max(values.size, 1)


def lsq_step(mean_absolute: float, bits: int) -> float:
    """LSQ's initial step, 2 * mean(|w|) / sqrt(Q_P) (Esser et al. 2019)."""
    return 2 * mean_absolute / np.sqrt(max(qrange(bits)[1], 1))


def level_counts(values: np.ndarray, steps: dict[int, float | np.ndarray]) -> dict[int, np.ndarray]:
    """Histogram over the 2^b levels at every (bits, step), reading each weight once.

    A step may be an array broadcastable against ``values`` (per-channel scales); then the
    tensor is processed whole instead of in chunks.
    """
    counts = {b: np.zeros(2 ** b, dtype=np.int64) for b in steps}
    if any(np.ndim(s) for s in steps.values()):
        pieces = [(np.asarray(values, dtype=np.float32), steps)]
    else:
        pieces = ((chunk, steps) for chunk in chunks(values))
    buffer = None
    for chunk, chunk_steps in pieces:
        if buffer is None or buffer.shape != chunk.shape:
            buffer = np.empty(chunk.shape, dtype=np.float32)
        for b, step in chunk_steps.items():
            qn, qp = qrange(b)
            np.multiply(chunk, np.float32(1.0) / np.asarray(step, dtype=np.float32), out=buffer)
            np.rint(buffer, out=buffer)
            np.clip(buffer, -qn, qp, out=buffer)
            buffer += qn
            counts[b] += np.bincount(buffer.reshape(-1).astype(np.intp), minlength=2 ** b)
    return counts


def entropy(counts: np.ndarray) -> float:
    """Shannon entropy in bits of a histogram."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def quant_error(values: np.ndarray, step: float | np.ndarray, bits: int) -> float:
    """||w - Q_b(w)||^2 with Q_b the b-bit grid of step ``step``."""
    qn, qp = qrange(bits)
    if np.ndim(step):
        w = np.asarray(values, dtype=np.float64)
        return float(((w - np.clip(np.rint(w / step), -qn, qp) * step) ** 2).sum())
    total = 0.0
    for chunk in chunks(values):
        q = np.clip(np.rint(chunk / np.float32(step)), -qn, qp) * np.float32(step)
        total += float(np.square(chunk - q, dtype=np.float64).sum())
    return total


def mse_step(values: np.ndarray, bits: int, sample: int = 1 << 18) -> float:
    """The step minimising ||w - Q_b(w)||^2: a grid search over multiples of LSQ's initial step
    on an evenly strided sample, refined once around the best candidate."""
    flat = values.reshape(-1)
    stride = max(1, flat.size // sample)
    w = np.asarray(flat[::stride], dtype=np.float64)
    base = lsq_step(float(np.abs(w).mean()), bits)
    if base == 0:
        return 1.0
    qn, qp = qrange(bits)

    def error(step: float) -> float:
        return float(((w - np.clip(np.rint(w / step), -qn, qp) * step) ** 2).sum())

    candidates = base * np.linspace(0.05, 3.0, 60)
    best = min(candidates, key=error)
    fine = best + base * np.linspace(-0.05, 0.05, 21)
    return float(min((s for s in fine if s > 0), key=error))
