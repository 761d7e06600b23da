"""T5 span corruption (the "span_corruption" pre-training objective) as pure numpy functions.

The same computation as T5's `random_spans_noise_mask`, `noise_span_to_unique_sentinel` and
`nonnoise_span_to_unique_sentinel` (t5/data/preprocessors.py), with numpy's Generator in place of
TF's stateless shuffles, so masks are deterministic given a seed but not bitwise T5's own.

A sequence of L tokens gets round(L * noise_density) noise tokens (at least 1, at most L - 1),
split into round(noise / mean_noise_span_length) spans (at least 1). Noise and non-noise token
counts are each cut into that many non-empty runs by a random segmentation, and the runs are
interleaved non-noise first, so the sequence always starts with kept text and ends with noise.
Each noise span is replaced in the inputs by one sentinel id, counting down from the top of the
vocabulary (`vocab_size - 1`, `vocab_size - 2`, ...); the targets hold, for each span, the same
sentinel followed by the span's tokens. EOS is appended to both.

Worked example (vocab_size 32100, eos 1, seed 0, noise density 0.15, mean span length 3):

    tokens  = [100, 101, ..., 139]          # 40 tokens: round(6.0) = 6 noise in round(2.0) = 2 spans
    inputs  = [100, ..., 110, 32099, 115, ..., 137, 32098, 1]
    targets = [32099, 111, 112, 113, 114, 32098, 138, 139, 1]

Every token appears exactly once across inputs and targets; sentinels alternate between them in
descending order. (As in T5 without `random_roll`, the last tokens are always noise.)

Examples (`corrupted_examples`, the one builder behind training, held-out perplexity and the
perplexity scorer): tokens are cut into chunks of `tokens_length` (T5's `random_spans_helper`:
568 for 512 inputs) and each chunk is corrupted. Training draws the noise of a whole group of
concatenated documents from one generator; a document scored on its own gets, for chunk c, a
generator seeded by ``(seed, text_key(text), c)``, so its examples depend on its text alone.

This module sits on the ground floor (numpy only): `scoring`, `training` and `eval` all use it.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence, Union

import numpy as np

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0

Seed = Union[int, Sequence[int], np.random.Generator]


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of `num_segments` non-empty runs that partition `num_items`, uniformly at random."""
    starts = np.zeros(num_items - 1, dtype=bool)
    starts[: num_segments - 1] = True
    rng.shuffle(starts)
    segment_id = np.cumsum(np.concatenate([[False], starts]))
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, seed: Seed, *, noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> np.ndarray:
    """Boolean mask of `length` with T5's span structure: True marks noise (to be predicted).

    Counts are computed in float32 with round-half-to-even, as T5's TF ops do. Lengths below 2
    are computed as 2 and cut, so a 1-token sequence has no noise (and, as in T5, its targets
    are a lone sentinel and EOS).
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if not 0 < noise_density < 1 or mean_noise_span_length < 1:
        raise ValueError(f"need 0 < noise_density < 1 and mean_noise_span_length >= 1, got "
                         f"{noise_density}, {mean_noise_span_length}")
    rng = _rng(seed)
    orig_length, length = length, max(length, 2)
    num_noise = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(np.round(np.float32(num_noise) / np.float32(mean_noise_span_length))), 1)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_index = np.repeat(np.arange(2 * num_spans), interleaved)
    return (span_index % 2 == 1)[:orig_length]


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """Replaces each run of noise tokens by one sentinel: vocab_size - 1 for the first, then down."""
    tokens = np.asarray(tokens)
    prev_is_noise = np.concatenate([[False], noise_mask[:-1]])
    first = noise_mask & ~prev_is_noise
    subsequent = noise_mask & prev_is_noise
    sentinels = (vocab_size - np.cumsum(first)).astype(tokens.dtype)
    return np.where(first, sentinels, tokens)[~subsequent]


def span_corruption(tokens: Sequence[int], seed: Seed, *, vocab_size: int, eos_id: int = 1,
                    num_sentinels: int = 100, noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of T5 span corruption of one token sequence, each ending with EOS.

    Deterministic given `seed` (an int, a sequence of ints such as (seed, epoch, index), or a
    numpy Generator). Sentinel ids come from the top of the vocabulary, so `vocab_size` must
    include the extra ids (32100 for T5's 32000-piece vocabulary plus 100 sentinels); more noise
    spans than `num_sentinels` (sequences longer than ~2000 tokens at T5's settings) is an error,
    since their sentinels would collide with ordinary pieces.
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.max() >= vocab_size or tokens.min() < 0):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got range [{tokens.min()}, {tokens.max()}]")
    mask = random_spans_noise_mask(tokens.size, seed, noise_density=noise_density,
                                   mean_noise_span_length=mean_noise_span_length)
    num_spans = int(np.count_nonzero(mask & ~np.concatenate([[False], mask[:-1]])))
    if num_spans > num_sentinels:
        raise ValueError(f"{tokens.size} tokens give {num_spans} noise spans but the vocabulary has only "
                         f"{num_sentinels} sentinels: split the sequence (see random_spans_helper)")
    eos = np.asarray([eos_id], dtype=np.int32)
    inputs = noise_span_to_unique_sentinel(tokens, mask, vocab_size)
    targets = noise_span_to_unique_sentinel(tokens, ~mask, vocab_size)
    return np.concatenate([inputs, eos]), np.concatenate([targets, eos])


def random_spans_helper(inputs_length: int = 512, *, noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
    """(tokens_length, targets_length): the longest raw chunk whose corrupted inputs (with EOS)
    fit `inputs_length`, and the targets length it then produces. T5: 512 -> (568, 114).

    Chunk the token stream to `tokens_length` before corruption so inputs come out full.
    """
    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        return (tokens_length - num_noise + num_spans * extra_tokens_per_span_inputs + 1,
                num_noise + num_spans * extra_tokens_per_span_targets + 1)

    if inputs_length < 2:
        raise ValueError(f"inputs_length must be >= 2, got {inputs_length}")
    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    targets_length = lengths(tokens_length)[1]
    if noise_density == 0.5 and targets_length > inputs_length:  # T5's tweak for 50% noise
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


Example = tuple[np.ndarray, np.ndarray]


def text_key(text: str) -> int:
    """The 64-bit key seeding a document's noise: blake2b-64 of its UTF-8 text, big-endian.

    Keyed by the text, not an id, so exact duplicates get the same examples (and equal scores).
    """
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def split_chunks(token_lists: Sequence[Sequence[int]], tokens_length: int) -> list[np.ndarray]:
    """Concatenates the documents' tokens and cuts them into chunks of tokens_length (last shorter)."""
    flat = _concatenate(token_lists)
    return [flat[i:i + tokens_length] for i in range(0, flat.size, tokens_length)]


def _concatenate(token_lists: Sequence[Sequence[int]]) -> np.ndarray:
    return np.concatenate([np.asarray(t, dtype=np.int32) for t in token_lists] or [np.zeros(0, np.int32)])


def corrupted_examples(token_lists: Sequence[Sequence[int]], tokens_length: Optional[int], seed: Seed, *,
                       key: Optional[int] = None, vocab_size: int, eos_id: int = 1,
                       noise_density: float = NOISE_DENSITY,
                       mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> list[Example]:
    """(inputs, targets) of each chunk of the concatenated tokens, span-corrupted (see `span_corruption`).

    `tokens_length`: chunk length (`split_chunks`: the last chunk shorter, no tokens no chunk);
    None makes all the tokens one chunk, even when there are none (EOS alone on both sides).
    Without `key`, one generator from `seed` draws the noise of chunk after chunk (training's
    groups); with `key` (a document's `text_key`), chunk c has its own generator seeded by
    ``(seed, key, c)``, so a document's examples depend on its text alone.
    """
    chunks = [_concatenate(token_lists)] if tokens_length is None else split_chunks(token_lists, tokens_length)
    shared = _rng(seed) if key is None else None

    def chunk_rng(c: int) -> np.random.Generator:
        return shared if shared is not None else np.random.default_rng([seed, key, c])

    return [span_corruption(chunk, chunk_rng(c), vocab_size=vocab_size, eos_id=eos_id, noise_density=noise_density,
                            mean_noise_span_length=mean_noise_span_length)
            for c, chunk in enumerate(chunks)]
