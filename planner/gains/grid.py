"""The signed b-bit grid and the statistics gain estimators read from it, in one or two passes.

Weights are read in chunks (a few MB each) so that a memory-mapped tensor of any size is
streamed, never copied whole. Levels are q = clip(round(w / s), -2^(b-1), 2^(b-1) - 1).
"""
from __future__ import annotations

import numpy as np

CHUNK = 1 << 16  # elements per chunk: 256 KB of float32, small enough to stay in cache
SORT_CHUNK = 1 << 18  # elements per chunk of level counting: 2 MB of buffers, in L2/L3


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
    """The mean absolute value of ``values`` (float32 sums per chunk; 0.0 when empty)."""
    total, buffer = 0.0, None
    for chunk in chunks(values):
        buffer = np.empty_like(chunk) if buffer is None or buffer.shape != chunk.shape else buffer
        total += float(np.abs(chunk, out=buffer).sum())  # float32 pairwise sum per chunk
    return total / max(values.size, 1)


def lsq_step(mean_absolute: float, bits: int) -> float:
    """LSQ's initial step, 2 * mean(|w|) / sqrt(Q_P) (Esser et al. 2019)."""
    return 2 * mean_absolute / np.sqrt(max(qrange(bits)[1], 1))


def level_counts(values: np.ndarray, steps: dict[int, float | np.ndarray]) -> dict[int, np.ndarray]:
    """Histogram over the 2^b levels at every (bits, step) with 1 <= b <= 16, in one pass.

    Level of w: clip(floor(w / step + 1/2), -Q_N, Q_P), i.e. rounding half up (it differs from
    round-half-even only for weights exactly half way between two levels), computed in float32 as
    ``w * float32(1/step) + float32(Q_N + 1/2)``. Returns ``{bits: counts}``, counts[i] the number
    of weights at level i - Q_N (int64, length 2^b).

    One pass per tensor for all precisions: in each chunk (sized to the cache) the level indices of
    several grids are packed into one 16-bit key (4 and 8 bits: index_4 + 16 * index_8), the keys
    sorted (numpy sorts 16-bit integers vectorised), and every grid's counts read from the runs of
    equal keys. Memory: O(chunk + 2^b), whatever the tensor size. A step may be an array
    broadcastable against ``values`` (per-channel scales); then the tensor is divided by it whole
    (float32) and the quotient counted on the unit grid.
    """
    if any(np.ndim(s) for s in steps.values()):
        whole = np.asarray(values, dtype=np.float32)
        grids = [(b, (whole / np.asarray(s, dtype=np.float32)).reshape(-1), np.float32(1.0)) for b, s in steps.items()]
    else:
        flat = values.reshape(-1)
        grids = [(b, flat, np.float32(1.0 / float(s))) for b, s in steps.items()]
    counts = {b: np.zeros(2 ** b, dtype=np.int64) for b in steps}
    for pack in _packs(sorted(grids, key=lambda g: g[0])):
        _count_packed(pack, counts)
    return counts


def _packs(grids: list[tuple]) -> list[list[tuple]]:
    """Consecutive grids whose level counts multiply to at most 2^16 (one 16-bit key each)."""
    packs: list[list[tuple]] = []
    for g in grids:
        if packs and sum(b for b, *_ in packs[-1]) + g[0] <= 16:
            packs[-1].append(g)
        else:
            packs.append([g])
    return packs


def _count_packed(grids: list[tuple], counts: dict[int, np.ndarray]) -> None:
    """Add to ``counts`` the levels of ``grids`` [(bits, flat values, float32 1/step)], whose
    2^bits multiply to at most 2^16, reading the values once in chunks of SORT_CHUNK."""
    total = grids[0][1].size
    size = min(SORT_CHUNK, max(total, 1))
    y, key, index = np.empty(size, np.float32), np.empty(size, np.uint16), np.empty(size, np.uint16)
    for start in range(0, total, size):
        n = min(size, total - start)
        y_n, key_n, index_n = y[:n], key[:n], index[:n]
        place = 1
        for bits, flat, inverse in grids:
            np.multiply(flat[start:start + n], inverse, out=y_n, dtype=np.float32)
            y_n += np.float32(qrange(bits)[0] + 0.5)
            np.clip(y_n, 0, 2 ** bits - 0.5, out=y_n)
            np.copyto(key_n if place == 1 else index_n, y_n, casting="unsafe")  # truncation = floor for y >= 0
            if place > 1:
                index_n *= np.uint16(place)
                key_n += index_n
            place <<= bits
        ordered = key_n.view(np.int16)
        ordered.sort()  # equal keys end up adjacent (in int16 order; the order is irrelevant)
        starts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        runs = np.diff(starts, prepend=0, append=n)
        keys = key_n[np.append(0, starts)].astype(np.int64)
        place = 1
        for bits, *_ in grids:
            np.add.at(counts[bits], (keys // place) % (1 << bits), runs)
            place <<= bits


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
