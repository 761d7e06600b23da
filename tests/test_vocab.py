"""SentencePiece training with T5's layout, the T5Vocabulary wrapper, round trips on real C4 text."""

import gzip
import importlib.resources
import json
import logging
import pickle
import re
import unicodedata

import pytest

from gristmill.models.tokenizers import Tokenizer, load_tokenizer
from gristmill.training import vocab as V

C4 = importlib.resources.files("gristmill") / "data/c4-olmo/c4-sample.00000-of-00001.json.gz"
VOCAB_SIZE = 600  # 500 pieces + 100 sentinels


def c4_texts():
    with C4.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    texts = c4_texts()
    out = tmp_path_factory.mktemp("spm")
    vocab = V.train_sentencepiece(texts[:120], VOCAB_SIZE, out / "c4")
    return vocab, texts, out


def test_t5_layout(trained):
    vocab, _, out = trained
    sp = vocab.tokenizer._sp
    assert sp.get_piece_size() == VOCAB_SIZE - 100
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert sp.bos_id() == -1 and not sp.is_control(3)
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.vocab_size) == (0, 1, 2, VOCAB_SIZE)
    assert vocab.sentinel_id(0) == VOCAB_SIZE - 1 and vocab.sentinel_id(99) == VOCAB_SIZE - 100
    assert vocab.tokenizer.id_to_token(VOCAB_SIZE - 1) == "<extra_id_0>"
    assert vocab.tokenizer.id_to_token(VOCAB_SIZE - 100) == "<extra_id_99>"
    assert vocab.tokenizer.token_to_id("<extra_id_7>") == VOCAB_SIZE - 8
    assert (out / "c4.model").exists() and (out / "c4.vocab").exists()
    with pytest.raises(IndexError):
        vocab.sentinel_id(100)


def test_round_trip_on_held_out_c4(trained):
    vocab, texts, _ = trained
    checked = 0
    for text in texts[900:1000]:
        for line in text.split("\n"):
            ids = vocab.encode(line)
            assert all(3 <= i < VOCAB_SIZE - 100 or i == vocab.unk_id for i in ids)
            if vocab.unk_id in ids or not line.strip():
                continue
            normalised = " ".join(unicodedata.normalize("NFKC", line).split())
            assert vocab.decode(ids) == normalised
            checked += 1
    assert checked > 300
    assert vocab.encode_batch(["Hello world", "a b"]) == [vocab.encode("Hello world"), vocab.encode("a b")]


def test_decode_shows_sentinels_and_drops_pad_eos(trained):
    vocab, _, _ = trained
    ids = vocab.encode("the cat") + [vocab.sentinel_id(0)] + vocab.encode(" sat") + [vocab.eos_id, 0]
    assert vocab.decode(ids, skip_special_tokens=False) == "the cat<extra_id_0> sat"
    assert vocab.decode(ids) == "the cat sat"
    assert vocab.decode([vocab.sentinel_id(0)] + vocab.encode("cat"), skip_special_tokens=False) == "<extra_id_0> cat"
    assert vocab.sentinel_id(0) not in vocab.encode("<extra_id_0>")  # text is not parsed into sentinels


def test_training_is_deterministic_and_files_equal_texts(trained, tmp_path):
    vocab, texts, _ = trained
    lines = [line for t in texts[:120] for line in t.split("\n") if line.strip()]
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    again = V.train_sentencepiece(corpus, VOCAB_SIZE, tmp_path / "again")
    pieces = lambda v: [v.tokenizer.id_to_token(i) for i in range(v.vocab_size)]  # noqa: E731
    assert pieces(again) == pieces(vocab)


def test_wraps_gristmill_tokenizer_and_pickles(trained):
    vocab, _, out = trained
    plain = load_tokenizer(str(out / "c4.model"))  # no tokenizer_config.json: no extra ids
    assert isinstance(plain, Tokenizer) and plain.vocab_size == VOCAB_SIZE - 100
    with pytest.raises(V.VocabularyError, match="<extra_id_0> is not id"):
        V.T5Vocabulary(plain)
    sp = vocab.tokenizer._sp
    wrapped = V.T5Vocabulary(Tokenizer(sp=sp, extra_ids=100, pad_id=0, eos_id=1, unk_id=2))
    assert wrapped.encode("Data efficient") == vocab.encode("Data efficient")
    wrong = Tokenizer(sp=sp, extra_ids=100, pad_id=0, eos_id=2, unk_id=2)
    with pytest.raises(V.VocabularyError, match="eos_id is 2, T5 needs 1"):
        V.T5Vocabulary(wrong)
    copy = pickle.loads(pickle.dumps(vocab))
    assert copy.vocab_size == VOCAB_SIZE and copy.encode("pickled text") == vocab.encode("pickled text")


def test_fit_corpus_trains_the_size_sentencepiece_says_the_corpus_supports(tmp_path, caplog):
    """60 documents cannot support T5's 32,000 pieces: SentencePiece's own refusal names the most
    they support, and `fit_corpus` trains exactly that many, sentinels on top, and says so."""
    texts = c4_texts()[:60]
    with pytest.raises(V.VocabularyError, match="Vocabulary size too high") as refused:
        V.train_sentencepiece(texts, 32100, tmp_path / "hard")
    supported = int(re.search(r"value <= (\d+)", str(refused.value)).group(1))
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        vocab = V.train_sentencepiece(texts, 32100, tmp_path / "fit", fit_corpus=True)
    assert vocab.tokenizer._sp.get_piece_size() == supported < 32000
    assert vocab.vocab_size == supported + 100
    assert vocab.tokenizer.id_to_token(vocab.vocab_size - 1) == "<extra_id_0>"
    assert vocab.tokenizer.id_to_token(supported) == "<extra_id_99>"
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    [said] = [r.getMessage() for r in caplog.records if r.name == V.__name__]
    assert f"supports {supported} SentencePiece pieces, not the 32000 asked for" in said


def test_fit_corpus_changes_nothing_when_the_corpus_supports_the_size(trained, tmp_path, caplog):
    vocab, texts, _ = trained
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        fitted = V.train_sentencepiece(texts[:120], VOCAB_SIZE, tmp_path / "fit", fit_corpus=True)
    pieces = lambda v: [v.tokenizer.id_to_token(i) for i in range(v.vocab_size)]  # noqa: E731
    assert pieces(fitted) == pieces(vocab)
    assert not [r for r in caplog.records if r.name == V.__name__]


def test_bad_inputs(tmp_path):
    with pytest.raises(V.VocabularyError, match="ambiguous"):
        V.train_sentencepiece("some text", 600, tmp_path / "x")
    with pytest.raises(V.VocabularyError, match="leaves 0 pieces"):
        V.train_sentencepiece(["some text"], 100, tmp_path / "x")
    with pytest.raises(V.VocabularyError, match="not found"):
        V.train_sentencepiece(tmp_path / "nope.txt", 600, tmp_path / "x")
    with pytest.raises(V.VocabularyError, match="training of .* failed"):
        V.train_sentencepiece(["tiny corpus"], 5000, tmp_path / "x")
    with pytest.raises(V.VocabularyError, match="not found"):
        V.T5Vocabulary.from_file(tmp_path / "missing.model")


def test_published_files_are_what_sentencepiece_writes_at_the_prefix(tmp_path, monkeypatch):
    """Training runs in a temporary directory, yet the model records the prefix it was trained at:
    the published bytes are exactly SentencePiece's own when it writes to the prefix itself."""
    import sentencepiece

    real = sentencepiece.SentencePieceTrainer.train
    calls = []
    monkeypatch.setattr(sentencepiece.SentencePieceTrainer, "train",
                        staticmethod(lambda **options: (calls.append(options), real(**options))[1]))
    texts, prefix = c4_texts()[:60], tmp_path / "c4"
    V.train_sentencepiece(texts, VOCAB_SIZE, prefix)
    published = {suffix: (tmp_path / f"c4{suffix}").read_bytes() for suffix in (".model", ".vocab")}
    for path in tmp_path.iterdir():
        path.unlink()
    [options] = calls
    real(**dict(options, model_prefix=str(prefix), sentence_iterator=V._lines(texts)))
    assert published == {suffix: (tmp_path / f"c4{suffix}").read_bytes() for suffix in (".model", ".vocab")}


def test_tokenizer_train_writes_to_gcs(gcs_bucket, tmp_path):
    from gristmill import io

    texts = c4_texts()[:60]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    remote = f"{gcs_bucket}/vocab/c4"
    vocab = V.run(["--input", str(corpus), "--output", remote, "--vocab_size", str(VOCAB_SIZE)])
    local = V.train_sentencepiece(texts, VOCAB_SIZE, tmp_path / "c4")
    assert io.read_bytes(f"{remote}.vocab") == (tmp_path / "c4.vocab").read_bytes()
    loaded = V.T5Vocabulary.from_file(f"{remote}.model")
    pieces = lambda v: [v.tokenizer.id_to_token(i) for i in range(v.vocab_size)]  # noqa: E731
    assert pieces(loaded) == pieces(vocab) == pieces(local)
    assert io.glob(f"{gcs_bucket}/**") == [f"{remote}.model", f"{remote}.vocab"]
