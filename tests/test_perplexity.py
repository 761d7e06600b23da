"""Held-out perplexity: a tiny T5 trained on a few documents finds them less perplexing than other text.

The model is trained here with a minimal optax loop on `t5.logits` (cross-entropy on span
corruption targets), independent of the trainer. The batched, padded scorer is checked against
an unpadded one-example-at-a-time numpy reference.
"""

import gzip
import importlib.resources
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gristmill.eval import perplexity as P
from gristmill.models import t5
from gristmill.training import vocab as V

C4 = importlib.resources.files("gristmill") / "data/c4-olmo/c4-sample.00000-of-00001.json.gz"
EVAL = P.HeldoutPerplexityConfig(inputs_length=64, batch_size=8, seed=0)
TRAIN_DOCS = 6


def c4_texts(n):
    with C4.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for _, line in zip(range(400), f)]
    return [d for d in docs if 600 < len(d) < 1500][:n]


def shuffled_words(text, seed):
    words = text.split()
    np.random.default_rng(seed).shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    texts = c4_texts(40)
    vocabulary = V.train_sentencepiece(texts, 512, tmp_path_factory.mktemp("vocab") / "sp")
    config = t5.preset("tiny", vocab_size=512, dropout_rate=0.0)
    train_texts = texts[:TRAIN_DOCS]
    params = t5.init_params(config, jax.random.key(0))
    untrained = params
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def loss_fn(p, batch):
        weights = (batch["decoder_target_tokens"] > 0).astype(jnp.float32)
        enc = batch["encoder_input_tokens"]
        logits = t5.logits(p, config, enc, (enc > 0).astype(jnp.int32), batch["decoder_input_tokens"],
                           weights.astype(jnp.int32))
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_tokens"])
        return (nll * weights).sum() / weights.sum()

    @jax.jit
    def step(p, s, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    for i in range(60):  # fresh span-corruption noise every step (seeds disjoint from EVAL's 0)
        ex = P.heldout_examples(train_texts, vocabulary, P.HeldoutPerplexityConfig(inputs_length=64, seed=1000 + i))
        batch = {k: jnp.asarray(v) for k, v in ex.items() if k != "document"}
        params, opt_state, loss = step(params, opt_state, batch)
    return config, params, untrained, vocabulary, texts


def test_trained_model_prefers_its_training_text(trained):
    config, params, untrained, vocabulary, texts = trained
    own = P.perplexity(params, config, vocabulary, texts[:TRAIN_DOCS], EVAL)
    unseen = P.perplexity(params, config, vocabulary, texts[20:26], EVAL)
    shuffled = P.perplexity(params, config, vocabulary, [shuffled_words(t, 0) for t in texts[:TRAIN_DOCS]], EVAL)
    before = P.perplexity(untrained, config, vocabulary, texts[:TRAIN_DOCS], EVAL)
    assert own.documents == TRAIN_DOCS and own.tokens > 100 and own.examples > TRAIN_DOCS
    assert own.perplexity == pytest.approx(np.exp(own.nll_per_token))
    assert own.perplexity < unseen.perplexity
    assert own.perplexity < shuffled.perplexity
    assert own.perplexity < before.perplexity
    # an untrained T5 is close to uniform over its 512 outputs (T5 init is not exactly uniform)
    assert 100 < before.perplexity < 5000


def test_perplexity_is_deterministic_and_independent_of_batching(trained):
    config, params, _, vocabulary, texts = trained
    a = P.perplexity(params, config, vocabulary, texts[:TRAIN_DOCS], EVAL)
    b = P.perplexity(params, config, vocabulary, texts[:TRAIN_DOCS], EVAL)
    assert a == b
    c = P.perplexity(params, config, vocabulary, texts[:TRAIN_DOCS],
                     P.HeldoutPerplexityConfig(inputs_length=64, batch_size=3))
    assert c.tokens == a.tokens and c.perplexity == pytest.approx(a.perplexity, rel=1e-5)
    other_noise = P.perplexity(params, config, vocabulary, texts[:TRAIN_DOCS],
                               P.HeldoutPerplexityConfig(inputs_length=64, batch_size=8, seed=1))
    assert other_noise.perplexity != a.perplexity


def test_batched_scores_match_unpadded_reference(trained):
    config, params, _, vocabulary, texts = trained
    ex = P.heldout_examples(texts[:3], vocabulary, EVAL)
    nll, count = P.score_examples(params, config, ex, batch_size=4)
    enc_len = (ex["encoder_input_tokens"] > 0).sum(1)
    tgt_len = (ex["decoder_target_tokens"] > 0).sum(1)
    shapes = sorted({(int(a), int(b)) for a, b in zip(enc_len, tgt_len)})
    assert len(shapes) >= 2  # full chunks and shorter last chunks
    for n_enc, n_tgt in (shapes[0], shapes[-1]):  # the shortest and a full chunk; one compilation each
        rows = np.flatnonzero((enc_len == n_enc) & (tgt_len == n_tgt))
        enc = ex["encoder_input_tokens"][rows, :n_enc]
        tgt = ex["decoder_target_tokens"][rows, :n_tgt]
        dec_in = np.concatenate([np.zeros((len(rows), 1), np.int32), tgt[:, :-1]], axis=1)
        logits = np.asarray(t5.logits(params, config, enc, np.ones_like(enc), dec_in, np.ones_like(tgt)), np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        expected = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0].sum(-1)
        assert count[rows].tolist() == [n_tgt] * len(rows)
        np.testing.assert_allclose(nll[rows], expected, rtol=1e-4)


def test_examples_are_span_corruption_of_each_document(trained):
    _, _, _, vocabulary, texts = trained
    ex = P.heldout_examples(["", texts[0], "short text"], vocabulary, EVAL)
    assert set(ex["document"].tolist()) == {1, 2}  # the empty text adds no row
    tokens_length, targets_length = EVAL.lengths
    assert ex["encoder_input_tokens"].shape[1] == 64 and ex["decoder_target_tokens"].shape[1] == targets_length
    first = ex["document"] == 1
    kept = ex["encoder_input_tokens"][first]
    tgt = ex["decoder_target_tokens"][first]
    sentinel_floor = vocabulary.vocab_size - 100
    ids = vocabulary.encode(texts[0])
    pieces = np.concatenate([kept[kept > 0], tgt[tgt > 0]])
    ordinary = pieces[(pieces < sentinel_floor) & (pieces != vocabulary.eos_id)]
    assert sorted(ordinary.tolist()) == sorted(i for i in ids if i != vocabulary.eos_id)
    # independent of position in the set: same text, same rows
    alone = P.heldout_examples([texts[0]], vocabulary, EVAL)
    assert np.array_equal(alone["encoder_input_tokens"], kept)


def test_heldout_split_is_a_stable_tenth_of_the_embedded_corpus():
    docs = P.read_corpus(P.embedded_corpus())
    train, held = P.split_heldout(docs)
    assert len(train) + len(held) == len(docs) == 1000
    assert 70 <= len(held) <= 130
    assert not {d["id"] for d in train} & {d["id"] for d in held}
    assert all(P.is_heldout(d["id"]) for d in held[:10]) and not any(P.is_heldout(d["id"]) for d in train[:10])
    assert P.c4_heldout() == [d["text"] for d in held]
    assert P.text_set("c4_heldout") == P.c4_heldout()
    hq = P.text_set("high_quality")
    assert len(hq) == 60 and all(len(t) > 100 for t in hq)
    with pytest.raises(P.HeldoutPerplexityError, match="unknown text set"):
        P.text_set("wiki40b")


def test_vocabulary_larger_than_model_is_refused(trained):
    config, params, _, vocabulary, texts = trained
    with pytest.raises(P.HeldoutPerplexityError, match="not trained together"):
        P.perplexity(params, config.replace(vocab_size=256), vocabulary, texts[:1], EVAL)
