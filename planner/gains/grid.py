"""The signed b-bit grid and the statistics gain estimators read from it, in one or two passes.

Weights are read in chunks (a few MB each) so that a memory-mapped tensor of any size is
streamed, never copied whole. Levels are q = clip(round(w / s), -2^(b-1), 2^(b-1) - 1).
"""
from __future__ import annotations

import numpy as np

CHUNK = 1 << 16  # elements per chunk: 256 KB of float32, small enough to stay in cache


def qrange(bits: int) -> tuple[int, int]:
    """(Q_N, Q_P) of the signed b-bit grid: levels -Q_N .. Q_P."""
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1 if bits > 1 else 0


def chunks(values: np.ndarray, size: int | None = None):
    """Flat float32 chunks of ``values`` (a view where the data already is float32)."""
    size = size or CHUNK
    flat = values.reshape(-1)
    for start in range(0, flat.size, size):
        yield np.asarray(flat[start:start + size], dtype=np.float32)


def mean_abs(values: np.ndarray) -> float:
    total, buffer = 0.0, None
    for chunk in chunks(values):
        buffer = np.empty_like(chunk) if buffer is None or buffer.shape != chunk.shape else buffer
        total += float(np.abs(chunk, out=buffer).sum())  # float32 pairwise sum per chunk
    return total / max(values.size, 1)


def lsq_step(mean_absolute: float, bits: int) -> float:
    """LSQ's initial step, 2 * mean(|w|) / sqrt(Q_P) (Esser et al. 2019)."""
    return 2 * mean_absolute / np.sqrt(max(qrange(bits)[1], 1))


def level_counts(values: np.ndarray, steps: dict[int, float | np.ndarray]) -> dict[int, np.ndarray]:
    """Histogram over the 2^b levels at every (bits, step), reading each weight once.

    Level of w: clip(floor(w / step + 1/2), -Q_N, Q_P), i.e. rounding half up (it differs from
    round-half-even only for weights exactly half way between two levels). A step may be an
    array broadcastable against ``values`` (per-channel scales); then the tensor is processed
    whole instead of in chunks.
    """
    counts = {b: np.zeros(2 ** b, dtype=np.int64) for b in steps}
    if any(np.ndim(s) for s in steps.values()):
        whole = np.asarray(values, dtype=np.float32)
        for b, step in steps.items():
            scaled = (whole / np.asarray(step, dtype=np.float32)).reshape(-1)
            counts[b] += _count_levels(scaled, 1.0, b, np.empty_like(scaled), np.empty(scaled.size, np.uint8))
        return counts
    scratch = np.empty(min(CHUNK, values.size), np.float32)
    index = np.empty(scratch.size, np.uint8)
    for chunk in chunks(values):
        for b, step in steps.items():
            counts[b] += _count_levels(chunk, float(step), b, scratch[:chunk.size], index[:chunk.size])
    return counts


def _count_levels(chunk: np.ndarray, step: float, bits: int, y: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Counts of the 2^b levels (b <= 8) of one flat float32 chunk, level index = level + Q_N.
    ``y`` and ``index`` are scratch buffers of the chunk's size (reused: no page faults)."""
    qn, _ = qrange(bits)
    n_levels = 2 ** bits
    np.multiply(chunk, np.float32(1.0 / step), out=y)
    y += np.float32(qn + 0.5)
    np.clip(y, 0, n_levels - 0.5, out=y)
    np.copyto(index, y, casting="unsafe")  # truncation = floor for y >= 0
    # Count pairs: two level bytes read as one uint16 (low byte first) halve bincount's work.
    even = index.size - index.size % 2
    pairs = np.bincount(index[:even].view(np.uint16), minlength=n_levels * 256)[: n_levels * 256]
    table = pairs.reshape(n_levels, 256)[:, :n_levels]  # [high byte, low byte]
    counts = table.sum(axis=0) + table.sum(axis=1)
    if even < index.size:
        counts[index[-1]] += 1
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
