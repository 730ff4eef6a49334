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


def chunks(values, size: int | None = None):
    """Flat float32 chunks of ``values`` in order (views where the data already is float32).
    ``values`` is an array or a source with a ``chunks(size)`` method (e.g.
    :class:`planner.onnxfile.FileTensor`), whose chunks may share one buffer: use each chunk
    before asking for the next."""
    size = size or CHUNK
    if hasattr(values, "chunks"):
        yield from values.chunks(size)
        return
    flat = np.asarray(values).reshape(-1)
    for start in range(0, flat.size, size):
        yield np.asarray(flat[start:start + size], dtype=np.float32)


def mean_abs(values) -> float:
    """mean(|w|) of an array or chunk source; see :func:`abs_stats`."""
    return abs_stats(values)[0]


def abs_stats(values) -> tuple[float, float]:
    """(mean |w|, max |w|) of an array or chunk source (see :func:`chunks`), in one pass. The mean:
    per chunk of CHUNK weights a float32 (pairwise) sum of |w|, the chunks' sums added in order in
    float64. The weights come in pieces of 4 chunks (1 MB of float32, in L2), whose chunks are
    summed in one call (the same sums, fewer calls). The max is NaN where a weight is NaN, 0 for
    no weights."""
    count, total, peaks, block = values.size, 0.0, [0.0], None
    for piece in chunks(values, 4 * CHUNK):  # whole chunks, but for the last piece
        block = np.empty(piece.size, np.float32) if block is None else block
        magnitudes = np.abs(piece, out=block[:piece.size])
        whole = piece.size // CHUNK
        if whole:
            for row_sum in np.add.reduce(magnitudes[:whole * CHUNK].reshape(whole, CHUNK), axis=1).tolist():
                total += row_sum
        if piece.size % CHUNK:
            total += float(magnitudes[whole * CHUNK:].sum())  # float32 pairwise sum of the last chunk
        peaks.append(magnitudes.max())
    return total / max(count, 1), float(np.max(peaks))  # np.max: a NaN wins over numbers


def lsq_step(mean_absolute: float, bits: int) -> float:
    """LSQ's initial step, 2 * mean(|w|) / sqrt(Q_P) (Esser et al. 2019)."""
    return 2 * mean_absolute / np.sqrt(max(qrange(bits)[1], 1))


def level_counts(values, steps: dict[int, float | np.ndarray], peak: float | None = None) -> dict[int, np.ndarray]:
    """Histogram over the 2^b levels at every (bits, step) with 1 <= b <= 16, in one pass.
    ``values``: an array or a chunk source (see :func:`chunks`).

    Level of w: clip(floor(w / step + 1/2), -Q_N, Q_P), i.e. rounding half up (it differs from
    round-half-even only for weights exactly half way between two levels), computed in float32 as
    ``w * float32(1/step) + float32(Q_N + 1/2)``. Returns ``{bits: counts}``, counts[i] the number
    of weights at level i - Q_N (int64, length 2^b).

    One pass per tensor for all precisions: in each chunk (sized to the cache) the level indices of
    several grids are packed into one 16-bit key (4 and 8 bits: index_4 + 16 * index_8), the keys
    sorted (numpy sorts 16-bit integers vectorised) and counted (:func:`_add_sorted_counts`), and
    every grid's counts summed from the keys' counts once per tensor. Memory: O(chunk + 2^b), whatever the tensor size. A step may be an array
    broadcastable against ``values`` (per-channel scales); then, and for a step below 2.9e-39 (of
    subnormal weights: its inverse overflows float32), the tensor is divided by it whole
    (float32) and the quotient counted on the unit grid. ``peak``: max |w| where known (see
    :func:`abs_stats`); a grid on which -peak and peak land inside the levels needs no clipping.
    """
    divide = any(np.ndim(s) or abs(float(s)) < _SMALLEST_STEP for s in steps.values())
    if divide:  # per-channel steps, or a step so small (subnormal weights) that 1/step overflows float32
        whole = np.asarray(values, dtype=np.float32)
        grids = [(b, (whole / np.asarray(s, dtype=np.float32)).reshape(-1), np.float32(1.0)) for b, s in steps.items()]
    else:
        grids = [(b, values, np.float32(1.0 / float(s))) for b, s in steps.items()]
    counts = {b: np.zeros(2 ** b, dtype=np.int64) for b in steps}
    for pack in _packs(sorted(grids, key=lambda g: g[0])):
        _count_packed(pack, counts, None if divide else peak)
    return counts


# The smallest step whose inverse float32 holds (steps below it divide instead of multiplying).
_SMALLEST_STEP = 1.0 / float(np.finfo(np.float32).max)


def _packs(grids: list[tuple]) -> list[list[tuple]]:
    """Consecutive grids whose level counts multiply to at most 2^16 (one 16-bit key each)."""
    packs: list[list[tuple]] = []
    for g in grids:
        if packs and sum(b for b, *_ in packs[-1]) + g[0] <= 16:
            packs[-1].append(g)
        else:
            packs.append([g])
    return packs


def _count_packed(grids: list[tuple], counts: dict[int, np.ndarray], peak: float | None = None) -> None:
    """Add to ``counts`` the levels of ``grids`` [(bits, values, float32 1/step)], whose 2^bits
    multiply to at most 2^16, reading each distinct ``values`` once in chunks of SORT_CHUNK.
    With ``peak`` (max |values|), a grid is clipped as cheaply as the peak allows: not at all,
    or on int16 levels instead of float32 y (see :func:`_clipping`).

    Each chunk's packed keys are sorted and the number of each key added to a histogram of the
    keys (2^(sum of bits) counts, see :func:`_add_sorted_counts`); each grid's counts are that
    histogram summed over the other grids' digits, once per tensor."""
    total = grids[0][1].size
    size = min(SORT_CHUNK, max(total, 1))
    sources = list({id(values): values for _, values, _ in grids}.values())
    slot = [next(k for k, v in enumerate(sources) if v is values) for _, values, _ in grids]
    by_key = np.zeros(1 << sum(bits for bits, *_ in grids), dtype=np.int64)
    y, key, index = np.empty(size, np.float32), np.empty(size, np.uint16), np.empty(size, np.uint16)
    clips = [_clipping(bits, inverse, peak) for bits, _, inverse in grids]
    for chunk in zip(*(chunks(values, size) for values in sources)):
        n = chunk[0].size
        y_n, key_n, index_n = y[:n], key[:n], index[:n]
        place = 1
        for (bits, _, inverse), k, clip in zip(grids, slot, clips):
            np.multiply(chunk[k], inverse, out=y_n, dtype=np.float32)
            y_n += np.float32(qrange(bits)[0] + 0.5)
            level = key_n if place == 1 else index_n
            if clip == "float":
                np.clip(y_n, np.float32(0), np.float32(2 ** bits - 0.5), out=y_n)
            if clip == "int16":  # truncate, then clip the integers: the same levels, fewer bytes to clip
                signed = level.view(np.int16)
                np.copyto(signed, y_n, casting="unsafe")
                np.clip(signed, 0, 2 ** bits - 1, out=signed)
            else:
                np.copyto(level, y_n, casting="unsafe")  # truncation = floor for y >= 0
            if place > 1:
                index_n *= np.uint16(place)
                key_n += index_n
            place <<= bits
        key_n.sort()  # numpy sorts 16-bit integers vectorised
        _add_sorted_counts(key_n, by_key)
    digits = by_key.reshape([1 << bits for bits, *_ in reversed(grids)])  # the last grid is the leading axis
    for axis, (bits, *_) in enumerate(reversed(grids)):
        counts[bits] += digits.sum(axis=tuple(a for a in range(len(grids)) if a != axis))


def _add_sorted_counts(keys: np.ndarray, by_key: np.ndarray) -> None:
    """Add to ``by_key[k]`` the number of times k occurs in the sorted uint16 ``keys`` (all below
    ``by_key.size``). Few possible keys (at most one per 16 weights): a binary search for where
    each key from the first to the last starts (O(range x log n), no pass over the weights); else
    the lengths of the runs of equal keys (one comparison pass)."""
    n = keys.size
    if by_key.size * 16 <= n:
        first, last = int(keys[0]), int(keys[-1])
        starts = np.searchsorted(keys, np.arange(first, last + 1, dtype=np.uint16))
        by_key[first:last] += np.diff(starts)
        by_key[last] += n - starts[-1]
        return
    edges = np.flatnonzero(keys[1:] != keys[:-1])
    edges = np.concatenate(([0], edges + 1, [n]))
    by_key[keys[edges[:-1]]] += np.diff(edges)  # the keys at run starts are distinct


def _clipping(bits: int, inverse: np.float32, peak: float | None) -> str:
    """How the counting loop keeps the b-bit levels of weights |w| <= ``peak`` in range:
    "none" where y = w * inverse + Q_N + 1/2 stays within [0, 2^b - 1/2] at w = -peak and
    w = peak (float32 rounding is monotone, so every weight's y lies between those two);
    "int16" where y stays strictly within int16's range (and b <= 15): y truncated to int16 and
    the integers clipped to [0, 2^b - 1], which gives the levels of the float clip to
    [0, 2^b - 1/2] followed by the truncation (every y < 0 becomes 0 either way); else "float"
    (no finite peak known: clip y, then truncate)."""
    if peak is None or not np.isfinite(peak):
        return "float"
    offset = np.float32(qrange(bits)[0] + 0.5)  # float32 scalars: the same roundings as the counting loop
    low, high = np.float32(-peak) * inverse + offset, np.float32(peak) * inverse + offset
    if low >= 0 and high <= np.float32(2 ** bits - 0.5):
        return "none"
    if bits <= 15 and low > -32768 and high < 32767:
        return "int16"
    return "float"


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
