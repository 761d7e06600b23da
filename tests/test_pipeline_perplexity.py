"""The perplexity Beam job: values equal the pure scorer's on the same texts (the scorer itself is
checked against HF transformers in test_scoring_perplexity.py), both families, runners, dead letters."""

import json
import os

import pytest

from gristmill import documents
from gristmill import records as gm_records
from gristmill.pipelines import score_perplexity
from gristmill.scoring import perplexity

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LLAMA = os.path.join(FIXTURES, "llama", "llama_gqa")
T5 = os.path.join(FIXTURES, "t5", "tiny_v1_1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, embedded_glob):
    """Five real C4 documents and one that gives a single token without BOS."""
    docs = list(documents.read_documents(embedded_glob))[:5]
    lines = [json.dumps({"text": d["text"], "url": d["url"]}) for d in docs]
    lines.append(json.dumps({"text": "a", "url": "https://short/"}))
    path = tmp_path_factory.mktemp("ppl") / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path), [d["text"] for d in docs]


def _features(out, name):
    return {r["text"]: (r[f"score/perplexity/{name}"], r[f"tokens/{name}"], r["truncated/perplexity"])
            for r in gm_records.iter_scored_records(out)}


def _reference(model, max_length, texts, **extra):
    config = perplexity.PerplexityConfig(model=model, model_name="ref", max_length=max_length, batch_size=4, **extra)
    return {t: (r.perplexity, r.n_tokens, int(r.truncated))
            for t, r in zip(texts, perplexity.PerplexityScorer(config).score_batch(texts))}


def _assert_close(got, want):
    assert got.keys() == want.keys()
    for text, (ppl, n, trunc) in want.items():
        assert got[text][0] == pytest.approx(ppl, rel=1e-5)  # float32 feature
        assert got[text][1:] == (n, trunc)


def test_llama_job_equals_scorer_dead_letters_short_docs_and_runners_agree(tmp_path, corpus):
    path, texts = corpus
    flags = ["--input", path, "--model", LLAMA, "--model_name", "tiny-llama", "--max_length=48", "--batch_size=4",
             "--add_bos=false"]
    manifest = score_perplexity.run([*flags, "--output", str(tmp_path / "a")])
    counts = manifest["counts"]
    assert manifest["reconciled"] and counts["written"] == 5
    assert counts["dead_lettered_by_reason"] == {"inference_error": 1}
    dead = [json.loads(line) for line in open(tmp_path / "a" / "dead_letters.jsonl")]
    assert "PerplexityError" in dead[0]["detail"] and "at least 2" in dead[0]["detail"]
    got = _features(str(tmp_path / "a"), "tiny-llama")
    _assert_close(got, _reference(LLAMA, 48, texts, add_bos=False))
    assert any(trunc == 1 for *_, trunc in got.values())  # 48 tokens cut C4 documents

    score_perplexity.run([*flags, "--output", str(tmp_path / "b"), "--workers=2"])
    parallel = _features(str(tmp_path / "b"), "tiny-llama")
    assert parallel.keys() == got.keys()
    for text, values in got.items():
        assert parallel[text][0] == pytest.approx(values[0], rel=1e-5) and parallel[text][1:] == values[1:]


def test_t5_job_equals_scorer(tmp_path, corpus):
    path, texts = corpus
    out = str(tmp_path / "t5")
    manifest = score_perplexity.run(["--input", path, "--output", out, "--model", T5, "--max_length=32",
                                     "--batch_size=4", "--seed=3"])
    # T5 predicts its span-corruption targets (at least a sentinel and EOS), so "a" is scored too
    assert manifest["reconciled"] and manifest["counts"]["written"] == 6
    _assert_close(_features(out, "tiny_v1_1"), _reference(T5, 32, texts + ["a"], seed=3))


def test_bad_sizes_fail_before_running(tmp_path, corpus):
    with pytest.raises(perplexity.PerplexityError, match="max_length"):
        score_perplexity.run(["--input", corpus[0], "--output", str(tmp_path / "x"), "--model", LLAMA,
                              "--max_length=1"])
