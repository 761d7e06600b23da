"""T5 span corruption: token conservation, sentinel order, T5's lengths, determinism."""

import numpy as np
import pytest

from gristmill import span_corruption as sc

V = 32100  # T5: 32000 SentencePiece pieces + 100 sentinels
EOS = 1


def is_sentinel(ids):
    return np.asarray(ids) >= V - 100


def reconstruct(inputs, targets):
    """Original tokens from (inputs, targets): each input sentinel -> the target span after it."""
    assert inputs[-1] == EOS and targets[-1] == EOS
    spans, current = {}, None
    for t in targets[:-1]:
        if is_sentinel(t):
            current = int(t)
            spans[current] = []
        else:
            spans[current].append(int(t))
    out = []
    for t in inputs[:-1]:
        out.extend(spans.pop(int(t)) if is_sentinel(t) else [int(t)])
    assert not spans, "a target span has no sentinel in the inputs"
    return out


@pytest.mark.parametrize("length", [2, 3, 7, 20, 40, 100, 333, 568])
@pytest.mark.parametrize("seed", [0, 1, (5, 2, 99)])
def test_every_token_once_and_sentinels_alternate_descending(length, seed):
    tokens = np.random.default_rng(length).permutation(np.arange(3, 3 + length))  # unique ids
    inputs, targets = sc.span_corruption(tokens, seed, vocab_size=V, eos_id=EOS)
    assert reconstruct(inputs, targets) == tokens.tolist()
    body = np.concatenate([inputs[:-1], targets[:-1]])
    plain = body[~is_sentinel(body)]
    assert sorted(plain.tolist()) == sorted(tokens.tolist())  # each exactly once
    in_sent = inputs[is_sentinel(inputs)].tolist()
    tg_sent = targets[is_sentinel(targets)].tolist()
    n = len(in_sent)
    assert in_sent == tg_sent == list(range(V - 1, V - 1 - n, -1))
    assert n >= 1 and targets[0] == V - 1  # targets open with the first sentinel
    assert not is_sentinel(inputs[0])  # inputs open with kept text
    for seq in (inputs[:-1], targets[:-1]):  # sentinels separate runs: never two in a row
        flags = is_sentinel(seq)
        assert not (flags[1:] & flags[:-1]).any()


def test_one_token_has_no_noise_as_in_t5():
    inputs, targets = sc.span_corruption([42], 0, vocab_size=V)
    assert inputs.tolist() == [42, EOS] and targets.tolist() == [V - 1, EOS]
    inputs, targets = sc.span_corruption([], 0, vocab_size=V)
    assert inputs.tolist() == [EOS] and targets.tolist() == [EOS]


@pytest.mark.parametrize("length", [10, 40, 100, 568, 1000])
def test_noise_and_span_counts_follow_t5(length):
    for seed in range(5):
        mask = sc.random_spans_noise_mask(length, seed)
        num_noise = int(np.round(np.float32(length) * np.float32(0.15)))
        num_spans = max(1, int(np.round(num_noise / 3)))
        assert mask.sum() == num_noise
        starts = mask & ~np.concatenate([[False], mask[:-1]])
        assert starts.sum() == num_spans
        assert not mask[0] and mask[-1]  # non-noise first, noise last (no random roll)


def test_noise_spans_are_random_with_mean_length_three():
    lengths, masks = [], []
    for seed in range(300):
        mask = sc.random_spans_noise_mask(568, seed)
        masks.append(mask)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        lengths.extend(edges[1::2] - edges[::2])
    assert np.mean(lengths) == pytest.approx(85 / 28)
    assert max(lengths) > 8  # lengths vary: a random segmentation, not fixed-size spans
    freq = np.mean(masks, axis=0)[:-20]  # away from the always-noise tail
    assert 0.10 < freq.mean() < 0.20 and freq.std() < 0.05


def test_random_spans_helper_matches_t5_and_the_corruption():
    assert sc.random_spans_helper(512) == (568, 114)  # T5's span_corruption task lengths
    for inputs_length in (64, 128, 512, 1024):
        tokens_length, targets_length = sc.random_spans_helper(inputs_length)
        for seed in range(3):
            full_in, full_tg = sc.span_corruption(np.arange(tokens_length) + 3, seed, vocab_size=V)
            assert (len(full_in), len(full_tg)) == (inputs_length, targets_length)
        for length in range(1, tokens_length + 1):  # shorter chunks never overflow
            inp, tgt = sc.span_corruption(np.arange(length) + 3, length, vocab_size=V)
            assert len(inp) <= inputs_length and len(tgt) <= targets_length


def test_deterministic_given_seed():
    tokens = np.arange(3, 503)
    a = sc.span_corruption(tokens, (7, 0, 3), vocab_size=V)
    b = sc.span_corruption(tokens, (7, 0, 3), vocab_size=V)
    c = sc.span_corruption(tokens, (7, 0, 4), vocab_size=V)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.int32


def test_docstring_worked_example():
    inputs, targets = sc.span_corruption(np.arange(100, 140), 0, vocab_size=V)
    assert inputs.tolist() == list(range(100, 111)) + [32099] + list(range(115, 138)) + [32098, 1]
    assert targets.tolist() == [32099, 111, 112, 113, 114, 32098, 138, 139, 1]


def test_sentinel_mapping_on_a_hand_mask():
    tokens = np.array([10, 11, 12, 13, 14, 15])
    mask = np.array([False, True, True, False, True, False])
    assert sc.noise_span_to_unique_sentinel(tokens, mask, 50).tolist() == [10, 49, 13, 48, 15]
    assert sc.noise_span_to_unique_sentinel(tokens, ~mask, 50).tolist() == [49, 11, 12, 48, 14, 47]


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 100\)"):
        sc.span_corruption([5, 100], 0, vocab_size=100)
    with pytest.raises(ValueError, match="1-D"):
        sc.span_corruption([[5, 6]], 0, vocab_size=100)
    with pytest.raises(ValueError, match="only 100 sentinels"):
        sc.span_corruption(np.arange(3000) % 500 + 3, 0, vocab_size=V)
    with pytest.raises(ValueError, match="noise_density"):
        sc.random_spans_noise_mask(10, 0, noise_density=1.5)


def test_split_chunks_concatenates_then_cuts():
    chunks = sc.split_chunks([[1, 2, 3], [], [4, 5, 6, 7, 8]], 3)
    assert [c.tolist() for c in chunks] == [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert sc.split_chunks([], 3) == []


def _same(examples, expected):
    assert len(examples) == len(expected)
    for (inp, tgt), (want_in, want_tg) in zip(examples, expected):
        assert inp.tolist() == want_in.tolist() and tgt.tolist() == want_tg.tolist()


def test_corrupted_examples_draw_one_generator_or_one_per_chunk():
    lists = [np.arange(3, 40), [], np.arange(100, 130)]
    chunks = sc.split_chunks(lists, 25)
    assert [c.size for c in chunks] == [25, 25, 17]
    rng = np.random.default_rng((7, 0, 3))  # training: one generator for the whole group
    _same(sc.corrupted_examples(lists, 25, (7, 0, 3), vocab_size=V),
          [sc.span_corruption(c, rng, vocab_size=V) for c in chunks])
    key = sc.text_key("a document")  # a document on its own: chunk c seeded by (seed, key, c)
    _same(sc.corrupted_examples(lists, 25, 7, key=key, vocab_size=V, eos_id=EOS),
          [sc.span_corruption(c, (7, key, i), vocab_size=V, eos_id=EOS) for i, c in enumerate(chunks)])
    assert sc.corrupted_examples([[], []], 25, 0, vocab_size=V) == []
    # tokens_length None: all tokens are one chunk, even none
    _same(sc.corrupted_examples(lists, None, 7, key=key, vocab_size=V),
          [sc.span_corruption(np.concatenate(chunks), (7, key, 0), vocab_size=V)])
    _same(sc.corrupted_examples([[]], None, 0, key=key, vocab_size=V), [(np.array([1]), np.array([1]))])


def test_text_key_is_blake2b_64_of_the_text():
    assert sc.text_key("a document") == 8989495741563936255  # big-endian blake2b-64 of the UTF-8 text
    assert sc.text_key("same") == sc.text_key("same") != sc.text_key("other")
