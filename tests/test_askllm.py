"""Ask-LLM scoring core: the prompt, truncation, answer tokens, and real/tiny model scoring."""

import dataclasses
import gzip
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from gristmill.models import llama, tokenizers, zoo
from gristmill.scoring import askllm
from gristmill.testing import EMBEDDED_C4

HERE = os.path.dirname(__file__)
C4 = EMBEDDED_C4
TINY_T5 = os.path.join(HERE, "fixtures", "t5", "tiny_v1_1")
TINY_LLAMA = os.path.join(HERE, "fixtures", "llama", "llama_gqa")

# The paper's Figure 3 prompt with nano-askllm's whitespace, typed out independently of the file.
EXPECTED_PROMPT = (
    "###\n"
    "{document}\n"
    "###\n"
    "\n"
    "Does the previous paragraph demarcated within ### and ### contain informative signal for pre-training a "
    "large-language model? An informative datapoint should be well-formatted, contain some usable knowledge of "
    "the world, and strictly NOT have any harmful, racist, sexist, etc. content.\n"
    "\n"
    "OPTIONS:\n"
    "- yes\n"
    "- no\n"
)
QUESTION = EXPECTED_PROMPT.split("{document}")[1]


def _c4(n, skip=0):
    out = []
    with gzip.open(C4, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= skip:
                out.append(json.loads(line)["text"])
            if len(out) == n:
                return out
    return out




# ----------------------------------------------------------------------------- template


def test_default_template_byte_for_byte():
    assert askllm.load_template() == EXPECTED_PROMPT
    path = os.path.join(HERE, "..", "gristmill", "prompts", "askllm.txt")
    assert open(path, "rb").read() == EXPECTED_PROMPT.encode("utf-8")


def test_template_override_and_validation(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Is this good?\n{document}\nAnswer yes or no.")
    assert askllm.load_template(str(good)) == "Is this good?\n{document}\nAnswer yes or no."
    for name, text in [("none.txt", "no placeholder at all"), ("two.txt", "{document} and {document}")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(askllm.PromptTemplateError, match=name.replace(".", r"\.") + ".*exactly one"):
            askllm.load_template(str(tmp_path / name))
    with pytest.raises(askllm.PromptTemplateError, match="missing.txt"):
        askllm.load_template(str(tmp_path / "missing.txt"))


def test_bad_template_fails_before_loading_the_model(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Rate this: {doc}")
    config = askllm.AskLLMConfig(model="/nonexistent/model", model_name="x", prompt_template=str(bad))
    with pytest.raises(askllm.PromptTemplateError, match=r"bad\.txt: a prompt template needs exactly one \{document\}"):
        askllm.AskLLMScorer(config)


def test_prepare_document_removes_demarcation():
    assert askllm.prepare_document("keep ### this\n###") == "keep  this\n"


def test_length_buckets():
    from gristmill.models.batching import length_buckets

    assert length_buckets(512) == (64, 128, 192, 256, 320, 384, 448, 512)
    assert length_buckets(1000) == (64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1000)
    assert length_buckets(64) == (64,)
    assert length_buckets(256, smallest=32) == (32, 64, 96, 128, 160, 192, 224, 256)
    # from 256 on every bucket is at most a quarter longer than the one before: padding stays near an eighth
    buckets = length_buckets(8192)
    assert buckets[-1] == 8192 and all(b / a <= 1.25 for a, b in zip(buckets, buckets[1:]) if a >= 256), buckets


# ----------------------------------------------------------------------------- prompt ids


def test_decoder_prompt_is_one_user_turn_with_generation_prompt(smollm2):
    tok = smollm2.tokenizer
    ids, truncated = askllm.build_prompt_ids(tok, "decoder_only", EXPECTED_PROMPT, "A short document.", 512)
    assert not truncated
    text = tok.decode(ids, skip_special_tokens=False)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\n" + EXPECTED_PROMPT.replace("{document}", "A short document.")
                    + "<|im_end|>\n<|im_start|>assistant\n")
    assert ids == tok.encode(text)


def test_encoder_prompt_ends_with_eos():
    tok = tokenizers.load_tokenizer(TINY_T5)
    ids, truncated = askllm.build_prompt_ids(tok, "encoder_decoder", EXPECTED_PROMPT, "A short document.", 512)
    assert not truncated
    assert ids == tok.encode(EXPECTED_PROMPT.replace("{document}", "A short document.")) + [tok.eos_id]


@pytest.mark.parametrize("family", ["encoder_decoder", "decoder_only"])
def test_truncation_cuts_only_the_document(family, smollm2):
    tok = tokenizers.load_tokenizer(TINY_T5) if family == "encoder_decoder" else smollm2.tokenizer
    doc = " ".join(_c4(3))
    short_ids, _ = askllm.build_prompt_ids(tok, family, EXPECTED_PROMPT, "Short.", 10_000)
    overhead = len(askllm.build_prompt_ids(tok, family, EXPECTED_PROMPT, "", 10_000)[0])
    question_tokens = len(tok.encode(QUESTION))
    for max_length in (overhead + 200, overhead + 50, overhead + 6):
        ids, truncated = askllm.build_prompt_ids(tok, family, EXPECTED_PROMPT, doc, max_length)
        assert truncated and max_length - 4 <= len(ids) <= max_length
        # Everything after the document (question, options, chat suffix, eos) is intact ...
        tail = question_tokens - 2  # the first tokens of the question may merge with the document's end
        assert ids[-tail:] == short_ids[-tail:]
        # ... and what is kept of the document is its beginning.
        kept = " ".join(tok.decode(ids).split("###")[1].split())
        assert kept and " ".join(doc.split()).startswith(kept), kept
    untouched, truncated = askllm.build_prompt_ids(tok, family, EXPECTED_PROMPT, doc, 100_000)
    assert not truncated and len(untouched) > overhead + 300
    with pytest.raises(ValueError, match="without any document"):
        askllm.build_prompt_ids(tok, family, EXPECTED_PROMPT, doc, overhead - 1)


def test_truncation_of_a_huge_document(smollm2):
    doc = "word " * 200_000  # a million characters: only its head is tokenised
    ids, truncated = askllm.build_prompt_ids(smollm2.tokenizer, "decoder_only", EXPECTED_PROMPT, doc, 256)
    assert truncated and 240 <= len(ids) <= 256


def test_huge_document_that_tokenises_short_is_not_cut():
    tok = tokenizers.load_tokenizer(TINY_T5)  # SentencePiece collapses whitespace runs
    doc = " " * 100_000 + "Short."
    ids, truncated = askllm.build_prompt_ids(tok, "encoder_decoder", EXPECTED_PROMPT, doc, 256)
    assert not truncated
    assert ids == askllm.build_prompt_ids(tok, "encoder_decoder", EXPECTED_PROMPT, "Short.", 256)[0]


def test_decoder_only_needs_a_chat_template():
    tok = tokenizers.load_tokenizer(TINY_LLAMA)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        askllm.build_prompt_ids(tok, "decoder_only", EXPECTED_PROMPT, "doc", 512)


def test_answer_tokens():
    tok = tokenizers.load_tokenizer(TINY_T5)
    yes, no = askllm.resolve_answer_tokens(tok)
    assert (yes, no) == (tok.encode("yes")[0], tok.encode("no")[0]) and tok.id_to_token(no) == "▁no"


def test_answer_tokens_byte_level_have_no_leading_space(smollm2):
    yes, no = askllm.resolve_answer_tokens(smollm2.tokenizer)
    assert (smollm2.tokenizer.id_to_token(yes), smollm2.tokenizer.id_to_token(no)) == ("yes", "no")


# ----------------------------------------------------------------------------- scoring


def test_smollm2_scores_real_documents(smollm2):
    # Two short documents (bucket 128) and three cut to max_length (bucket 160): CPU-sized.
    texts = _c4(1000)
    docs = sorted(texts, key=len)[:2] + [t for t in texts if len(t) > 2000][:3]
    config = askllm.AskLLMConfig(model="smollm2-135m-instruct", model_name="smollm2-135m-instruct", max_length=160,
                                 batch_size=5)
    scorer = askllm.AskLLMScorer(config, loaded=smollm2)
    first = scorer.score_batch(docs)
    again = scorer.score_batch(list(reversed(docs)))[::-1]
    assert [r.score for r in first] == [r.score for r in again]
    for r in first:
        assert 0.0 < r.score < 1.0 and r.logp_yes < 0 and r.logp_no < 0
        assert r.score == pytest.approx(np.exp(r.logp_yes), rel=1e-12)
        assert 0 < r.n_tokens <= 160
    assert [r.truncated for r in first] == [False, False, True, True, True]
    assert len({round(r.score, 6) for r in first}) == 5
    assert scorer._answer_logprobs._cache_size() <= len(scorer.buckets)
    # Batch composition: each document alone (batch of one, its own bucket) scores the same.
    single = askllm.AskLLMScorer(dataclasses.replace(config, batch_size=1), loaded=smollm2)
    for doc, r in zip(docs, first):
        alone = single.score_batch([doc])[0]
        assert abs(alone.score - r.score) < 1e-5 and alone.n_tokens == r.n_tokens
    # And the same number straight from the model on an unpadded prompt.
    ids, _ = scorer.prompt_ids(docs[0])
    row = jnp.asarray([ids])
    lp = llama.last_position_logprobs(smollm2.params, smollm2.config, row, jnp.ones_like(row))
    assert abs(float(lp[0, scorer.yes_id]) - first[0].logp_yes) < 1e-4


@pytest.mark.parametrize("model_dir,family", [(TINY_T5, "encoder_decoder"), (TINY_LLAMA, "decoder_only")])
def test_tiny_models_score(model_dir, family):
    # Tiny tokenizers are nearly character-level: the prompt alone is ~200 tokens.
    config = askllm.AskLLMConfig(model=model_dir, model_name="tiny", max_length=256, batch_size=4)
    scorer = askllm.AskLLMScorer(config)
    assert scorer.loaded.family == family
    docs = _c4(3) + ["Short one."]
    results = scorer.score_batch(docs)
    assert [r.truncated for r in results] == [True, True, True, False]
    assert all(0.0 < r.score < 1.0 for r in results)
    fn = zoo.log_probs_fn(scorer.loaded)
    for doc, r in [(docs[0], results[0]), (docs[-1], results[-1])]:  # the same numbers without padding
        ids, _ = scorer.prompt_ids(doc)
        row = jnp.asarray([ids])
        lp = np.asarray(fn(scorer.loaded.params, row, jnp.ones_like(row)))[0]
        assert abs(lp[scorer.yes_id] - r.logp_yes) < 1e-4 and abs(lp[scorer.no_id] - r.logp_no) < 1e-4
