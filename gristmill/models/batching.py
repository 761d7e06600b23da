"""Length buckets and fixed-shape padding, so a jitted model compiles a handful of shapes.

Beam forms batches in arrival order; padding each one to the next bucket length (and to a fixed
batch size) bounds the number of XLA compilations while wasting far less compute than padding
everything to the maximum length.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


def length_buckets(max_length: int, smallest: int = 64) -> tuple[int, ...]:
    """Padded lengths that get compiled: from `smallest` up in steps of a quarter of the last power
    of two (never less than `smallest`), then max_length.

    From 256 tokens on each bucket is at most a quarter longer than the one before, so a batch of
    similar lengths pads by about an eighth on average, with 4 programs per octave.

    >>> length_buckets(512), length_buckets(1000)
    ((64, 128, 192, 256, 320, 384, 448, 512), (64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1000))
    """
    buckets, b = [], smallest
    while b < max_length:
        buckets.append(b)
        b += max(smallest, (1 << (b.bit_length() - 1)) // 4)
    return tuple(buckets) + (max_length,)


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """Smallest bucket >= ``n``: ``bucket_length(70) == 128``, ``bucket_length(0) == 64``.

    Raises ValueError above the largest bucket: truncation is the caller's decision, never silent.
    """
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}; truncate first")


def pad_batch(seqs: Sequence[Sequence[int]], *, pad_id: int, buckets: Sequence[int] = DEFAULT_BUCKETS,
              batch_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Pads token-id lists to ``[batch_size or len(seqs), bucket_length(longest)]``.

    Returns ``(ids int32, mask int32)``; the mask is 1 on real tokens. Extra rows added to reach
    ``batch_size`` are all padding (mask 0), so callers drop results past ``len(seqs)``.

    >>> ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, buckets=(4, 8), batch_size=3)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]], [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    """
    rows = batch_size if batch_size is not None else len(seqs)
    if rows < len(seqs):
        raise ValueError(f"{len(seqs)} sequences do not fit batch_size {rows}")
    length = bucket_length(max((len(s) for s in seqs), default=0), buckets)
    ids = np.full((rows, length), pad_id, dtype=np.int32)
    mask = np.zeros((rows, length), dtype=np.int32)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
        mask[r, :len(s)] = 1
    return ids, mask
