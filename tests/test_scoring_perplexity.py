"""Perplexity scorer: per-document perplexity against HF transformers references (recorded by
tests/fixtures/make_perplexity_fixtures.py), BOS handling, truncation and batching invariance."""

import dataclasses
import json
import os
import random
import shutil

import numpy as np
import pytest

from gristmill.models import zoo
from gristmill.scoring import perplexity
from gristmill.testing import EMBEDDED_C4

HERE = os.path.dirname(__file__)
ROOT = os.path.join(HERE, "..")
REFERENCES = ("llama_gqa_bos", "qwen2_bias", "t5_tiny_v1_1")


def _reference(name):
    with open(os.path.join(HERE, "fixtures", "perplexity", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def loaded():
    """Each fixture model loaded once for the module."""
    cache = {}

    def get(model_dir):
        if model_dir not in cache:
            cache[model_dir] = zoo.load_model(os.path.join(ROOT, model_dir))
        return cache[model_dir]

    return get


def _scorer(ref, loaded, **changes):
    settings = {"max_length": ref["max_length"], "batch_size": 4, "add_bos": ref.get("add_bos"), **changes}
    config = perplexity.PerplexityConfig(model=os.path.join(ROOT, ref["model_dir"]), model_name="fixture", **settings)
    return perplexity.PerplexityScorer(config, loaded=loaded(ref["model_dir"]))


@pytest.mark.parametrize("name", REFERENCES)
def test_matches_transformers(name, loaded):
    ref = _reference(name)
    scorer = _scorer(ref, loaded)
    encoded = [scorer.encode(t) for t in ref["texts"]]
    for doc, want in zip(encoded, ref["documents"]):
        assert list(doc.ids) == want["ids"]
        assert list(doc.targets) == want.get("targets", [])
        assert (doc.truncated, doc.n_tokens, doc.n_predicted) == (want["truncated"], want["n_tokens"],
                                                                  want["n_predicted"])
    results = scorer.score_encoded(encoded)
    for got, want in zip(results, ref["documents"]):
        assert got.perplexity == pytest.approx(want["perplexity"], rel=1e-4)
        assert got.nll_mean == pytest.approx(want["nll_mean"], rel=1e-4)
        assert got.perplexity == pytest.approx(np.exp(got.nll_mean), rel=1e-12)
        assert (got.truncated, got.n_tokens, got.n_predicted) == (want["truncated"], want["n_tokens"],
                                                                  want["n_predicted"])
    assert {True, False} <= {d["truncated"] for d in ref["documents"]}  # the fixture covers both


@pytest.mark.parametrize("name", ["llama_gqa_bos", "t5_tiny_v1_1"])
def test_result_does_not_depend_on_batch_mates(name, loaded):
    ref = _reference(name)
    scorer = _scorer(ref, loaded)
    texts = ref["texts"]
    together = [r.perplexity for r in scorer.score_batch(texts)]
    alone = [scorer.score_batch([t])[0].perplexity for t in texts[:3]]
    shuffled_order = list(range(len(texts)))
    random.Random(0).shuffle(shuffled_order)
    shuffled = scorer.score_batch([texts[i] for i in shuffled_order])
    np.testing.assert_allclose(alone, together[:3], rtol=1e-5)
    np.testing.assert_allclose([shuffled[shuffled_order.index(i)].perplexity for i in range(len(texts))],
                               together, rtol=1e-5)
    bigger = _scorer(ref, loaded, batch_size=16).score_batch(texts)
    np.testing.assert_allclose([r.perplexity for r in bigger], together, rtol=1e-5)


def test_bos_follows_the_tokenizer(tmp_path, loaded):
    llama_dir = os.path.join(HERE, "fixtures", "llama", "llama_gqa")
    tok = loaded("tests/fixtures/llama/llama_gqa").tokenizer
    assert perplexity.tokenizer_adds_bos(llama_dir, tok.bos_id) is False  # post-processor adds nothing
    with_bos = tmp_path / "llama_bos"
    shutil.copytree(llama_dir, with_bos)
    config = json.loads((with_bos / "tokenizer_config.json").read_text())
    (with_bos / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    assert perplexity.tokenizer_adds_bos(str(with_bos), tok.bos_id) is True
    assert perplexity.tokenizer_adds_bos(str(with_bos), None) is False
    ref = _reference("llama_gqa_bos")  # recorded with BOS: the auto setting now reproduces it
    scorer = perplexity.PerplexityScorer(
        perplexity.PerplexityConfig(model=str(with_bos), model_name="x", max_length=48),
        loaded=loaded("tests/fixtures/llama/llama_gqa"))
    got = scorer.score_batch(ref["texts"][:2])
    assert [r.perplexity for r in got] == pytest.approx([d["perplexity"] for d in ref["documents"][:2]], rel=1e-4)
    no_bos = perplexity.PerplexityScorer(
        perplexity.PerplexityConfig(model=str(with_bos), model_name="x", max_length=48, add_bos=False),
        loaded=loaded("tests/fixtures/llama/llama_gqa"))
    assert no_bos.encode("Hello world!").ids == scorer.encode("Hello world!").ids[1:]


def test_truncation_and_huge_documents(loaded):
    ref = _reference("qwen2_bias")
    scorer = _scorer(ref, loaded)
    tok = scorer.tokenizer
    huge = " ".join(ref["texts"][:4]) * 40  # ~100k characters: only a head is encoded
    doc = scorer.encode(huge)
    assert list(doc.ids) == tok.encode(huge)[:48] and doc.truncated and doc.n_tokens == 48
    text = ref["texts"][4]  # 32 tokens, no BOS
    n = len(tok.encode(text))
    at_limit = _scorer({**ref, "max_length": n}, loaded).encode(text)
    over = _scorer({**ref, "max_length": n - 1}, loaded).encode(text)
    assert (len(at_limit.ids), at_limit.truncated) == (n, False)
    assert (len(over.ids), over.truncated, over.n_tokens) == (n - 1, True, n - 1)
    with pytest.raises(perplexity.PerplexityError, match="at least 2"):
        scorer.encode("a")  # one token and no BOS: nothing to predict
    t5_scorer = _scorer(_reference("t5_tiny_v1_1"), loaded)
    t5_doc = t5_scorer.encode(huge)
    assert t5_doc.truncated and t5_doc.n_tokens == t5_scorer.keep and len(t5_doc.ids) <= 32


def test_t5_examples_match_held_out_perplexity(loaded):
    from gristmill.eval import perplexity as eval_perplexity

    ref = _reference("t5_tiny_v1_1")
    scorer = _scorer(ref, loaded)
    texts = [t for t, d in zip(ref["texts"], ref["documents"]) if not d["truncated"]]
    examples = eval_perplexity.heldout_examples(texts, scorer.tokenizer,
                                                eval_perplexity.HeldoutPerplexityConfig(inputs_length=32))
    for row, text in enumerate(texts):
        doc = scorer.encode(text)
        inputs = examples["encoder_input_tokens"][row]
        targets = examples["decoder_target_tokens"][row]
        assert list(doc.ids) == inputs[inputs != 0].tolist()
        assert list(doc.targets) == targets[targets != 0].tolist()


def test_config_errors(loaded):
    ref = _reference("qwen2_bias")
    with pytest.raises(perplexity.PerplexityError, match="max_position_embeddings"):
        _scorer({**ref, "max_length": 512}, loaded)
    with pytest.raises(perplexity.PerplexityError, match="max_length >= 2"):
        perplexity.PerplexityConfig(model="m", model_name="m", max_length=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        perplexity.PerplexityConfig(model="m", model_name="m").max_length = 3


def test_smollm2_ranks_real_text_below_shuffled_text(smollm2):
    import gzip

    with gzip.open(EMBEDDED_C4, "rt", encoding="utf-8") as f:
        texts = [json.loads(next(f))["text"] for _ in range(3)]
    shuffled = []
    for i, text in enumerate(texts):
        words = text.split()
        random.Random(i).shuffle(words)
        shuffled.append(" ".join(words))
    scorer = perplexity.PerplexityScorer(
        perplexity.PerplexityConfig(model="smollm2-135m-instruct", model_name="smollm2-135m-instruct",
                                    max_length=48, batch_size=4), loaded=smollm2)
    assert scorer.prefix == ()  # the GGUF says add_bos_token = false
    real, noise = scorer.score_batch(texts), scorer.score_batch(shuffled)
    for r, s in zip(real, noise):
        assert 1.0 < r.perplexity < 200.0 and r.n_predicted == 47
        assert s.perplexity > 2 * r.perplexity


def test_chunked_next_token_logprobs_match_full_logits(loaded):
    from gristmill.models import llama

    model = loaded("tests/fixtures/llama/llama_gqa")
    ref = np.load(os.path.join(HERE, "fixtures", "llama", "llama_gqa", "reference.npz"))
    ids, mask = ref["ids"], ref["mask"]
    logp = ref["logits"] - np.log(np.exp(ref["logits"].astype(np.float64)).sum(-1, keepdims=True))  # HF logits
    want = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    for chunk in (5, 11, 128):  # 11 positions: several chunks, one ragged, one chunk
        got = np.asarray(llama.next_token_logprobs(model.params, model.config, ids, mask, chunk=chunk))
        np.testing.assert_allclose(np.where(mask[:, 1:] == 1, got, 0), np.where(mask[:, 1:] == 1, want, 0),
                                   atol=2e-4)
