"""The tf.data training input: plan filter == sampling.keep, shards, token conservation, T5 structure.

Records are written with gristmill.records and read back independently (records.iter_tfrecords
+ records.deserialize + sampling.keep) to check what tf.data keeps. Most tests use a byte-level
vocabulary (a public fake, like SeqIO's test vocabularies); one runs a trained SentencePiece.
"""

import collections
import gzip
import importlib.resources
import json

import numpy as np
import pytest

from gristmill import io, records, sampling
from gristmill.training import data as D
from gristmill.training import vocab as V

C4 = importlib.resources.files("gristmill") / "data/c4-olmo/c4-sample.00000-of-00001.json.gz"
SCORE = records.score_feature("test", "lognormal")
TOKENS = records.tokens_feature("bytes")


class ByteVocabulary:
    """UTF-8 bytes + 3 (0 pad, 1 eos, 2 unk), then 100 sentinels."""

    eos_id = 1
    vocab_size = 256 + 3 + 100

    def encode(self, text):
        return [b + 3 for b in text.encode("utf-8")]


def c4_docs(n):
    with C4.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def write_corpus(directory, docs, splits, missing_every=0):
    rng = np.random.default_rng(0)
    paths, start = [], 0
    for shard, size in enumerate(splits):
        path = directory / f"scored-{shard:05d}-of-{len(splits):05d}.tfrecord"
        with open(path, "wb") as f:
            for i in range(start, start + size):
                doc = docs[i]
                record = {records.ID: f"{i:04d}-{hash(doc['url']) & 0xFFFF:04x}", records.TEXT: doc["text"],
                          records.URL: doc["url"], TOKENS: len(doc["text"].encode("utf-8"))}
                if not (missing_every and i % missing_every == 0):
                    record[SCORE] = float(rng.lognormal())
                f.write(records.encode_tfrecord(records.serialize(record)))
        paths.append(str(path))
        start += size
    return paths


def read_back(paths):
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.extend(records.deserialize(r) for r in records.iter_tfrecords(f))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scored")
    paths = write_corpus(directory, c4_docs(120), [50, 40, 30])
    return str(directory / "scored-*.tfrecord"), paths


def small_config(**kw):
    return D.InputConfig(**{"batch_size": 4, "inputs_length": 128, "targets_length": 29,
                            "concat_documents": 16, "shuffle_buffer": 64, **kw})


# --- the plan filter -------------------------------------------------------------------------

@pytest.mark.parametrize("rule,rate_by", [("topk", "documents"), ("bottomk", "tokens"), ("ips", "documents"),
                                          ("ips", "tokens"), ("random", "documents")])
def test_kept_subset_equals_sampling_keep(corpus, rule, rate_by):
    pattern, paths = corpus
    plan = D.plan_from_records(pattern, rule, rate=0.3, seed=11, score_feature=SCORE if rule != "random" else None,
                               rate_by=rate_by, tokens_feature=TOKENS)
    recs = read_back(paths)
    direct = sampling.plan_from_scores(rule, [r[records.ID] for r in recs], [r[SCORE] for r in recs], rate=0.3,
                                       seed=11, tokens=[r[TOKENS] for r in recs], rate_by=rate_by,
                                       score_feature=SCORE if rule != "random" else None, tokens_feature=TOKENS)
    assert plan == direct
    expected = {r[records.ID] for r in recs if sampling.keep(plan, r[records.ID], r.get(SCORE))}
    kept = D.selected_ids(pattern, plan)
    assert kept == expected
    assert 0 < len(kept) < len(recs)
    if rule in ("topk", "random") and rate_by == "documents":
        assert len(kept) == 36
    assert D.selected_ids(pattern) == {r[records.ID] for r in recs}


def test_an_output_directory_is_read_through_its_manifest(tmp_path):
    """`--data DIR`: exactly the files the manifest lists, not a stale shard beside them; no manifest, no read."""
    docs = c4_docs(30)
    paths = write_corpus(tmp_path, docs, [20, 10])  # scored-00000-of-00002 (listed), scored-00001-of-00002 (stale)
    listed = paths[0].rsplit("/", 1)[1]
    io.write_json(str(tmp_path / records.MANIFEST_FILE), {"outputs": {"records": [listed]}})
    assert D.list_files(str(tmp_path)) == [paths[0]]
    assert D.list_files([str(tmp_path), paths[0]]) == [paths[0]]
    assert D.selected_ids(str(tmp_path)) == {r[records.ID] for r in read_back(paths[:1])}
    assert D.list_files(str(tmp_path / "scored-*.tfrecord")) == paths  # a glob reads what it matches
    (tmp_path / records.MANIFEST_FILE).unlink()
    with pytest.raises(D.DataError, match="did not finish"):
        D.list_files(str(tmp_path))


def test_missing_scores_follow_the_plan_policy(tmp_path):
    paths = write_corpus(tmp_path, c4_docs(30), [30], missing_every=4)
    recs = read_back(paths)
    ids = [r[records.ID] for r in recs]
    scores = [r.get(SCORE) for r in recs]
    with pytest.raises(sampling.MissingScoreError, match="has no score feature"):
        D.plan_from_records(paths, "topk", rate=0.5, seed=0, score_feature=SCORE)
    keep_plan = sampling.plan_from_scores("topk", ids, scores, rate=0.5, seed=0, score_feature=SCORE, missing="keep")
    kept = D.selected_ids(paths, keep_plan)
    assert {ids[i] for i in range(0, 30, 4)} <= kept
    assert kept == {i for i, s in zip(ids, scores) if sampling.keep(keep_plan, i, s)}
    strict = sampling.plan_from_scores("topk", ids[1:4], scores[1:4], rate=0.5, seed=0, score_feature=SCORE)
    with pytest.raises(Exception, match=f"document '{ids[0]}' has no score feature '{SCORE}'"):
        D.selected_ids(paths, strict)


@pytest.mark.parametrize("num_hosts", [2, 3, 5])
def test_host_shards_partition_the_subset(corpus, num_hosts):
    pattern, _ = corpus  # 3 files: 2 and 3 hosts split files, 5 hosts split records
    plan = D.plan_from_records(pattern, "ips", rate=0.5, seed=1, score_feature=SCORE)
    whole = D.selected_ids(pattern, plan)
    parts = []
    for host in range(num_hosts):
        ds = D.read_documents(pattern, plan, num_hosts=num_hosts, host_index=host)
        parts.append([d[records.ID].decode() for d in ds.as_numpy_iterator()])
    assert sum(len(p) for p in parts) == len(whole)  # disjoint
    assert set().union(*map(set, parts)) == whole
    assert all(parts)


# --- batches ---------------------------------------------------------------------------------

def body_tokens(batches, vocab_size):
    """Plain tokens (no pad, eos or sentinel) across encoder inputs and decoder targets."""
    counts = collections.Counter()
    for b in batches:
        for name in ("encoder_input_tokens", "decoder_target_tokens"):
            t = b[name].ravel()
            counts.update(t[(t > 2) & (t < vocab_size - 100)].tolist())
    return counts


@pytest.mark.parametrize("pack", [True, False])
def test_every_kept_token_once_per_epoch(corpus, pack):
    pattern, paths = corpus
    vocab = ByteVocabulary()
    plan = D.plan_from_records(pattern, "topk", rate=0.4, seed=2, score_feature=SCORE)
    kept = D.selected_ids(pattern, plan)
    expected = collections.Counter()
    for r in read_back(paths):
        if r[records.ID] in kept:
            expected.update(vocab.encode(r[records.TEXT]))
    config = small_config(pack=pack, num_epochs=2, drop_remainder=False)
    batches = list(D.train_batches(pattern, vocab, config, plan))
    got = body_tokens(batches, vocab.vocab_size)
    assert got == collections.Counter({k: 2 * v for k, v in expected.items()})


def test_batch_shapes_and_t5_packing_structure(corpus):
    pattern, _ = corpus
    config = small_config(num_epochs=1)
    batches = list(D.train_batches(pattern, ByteVocabulary(), config))
    assert len(batches) > 10
    for b in batches:
        assert set(b) == set(D.FEATURES_PACKED)
        for name, array in b.items():
            assert array.dtype == np.int32
            assert array.shape == (4, 128 if name.startswith("encoder") else 29), name
        for r in range(4):
            seg, tgt, dec_in = b["decoder_segment_ids"][r], b["decoder_target_tokens"][r], b["decoder_input_tokens"][r]
            for s in range(1, seg.max() + 1):
                where = np.flatnonzero(seg == s)
                assert (np.diff(where) == 1).all()  # contiguous segments
                assert dec_in[where[0]] == 0 and (dec_in[where[1:]] == tgt[where[:-1]]).all()
                assert (b["decoder_positions"][r][where] == np.arange(where.size)).all()
                assert tgt[where[-1]] == ByteVocabulary.eos_id
                enc = np.flatnonzero(b["encoder_segment_ids"][r] == s)
                assert (b["encoder_positions"][r][enc] == np.arange(enc.size)).all()
                assert b["encoder_input_tokens"][r][enc[-1]] == ByteVocabulary.eos_id
            assert ((b["decoder_loss_weights"][r] == 1) == (tgt > 0)).all()
    full = [b for b in batches if (b["encoder_segment_ids"] == 1).all()]
    assert full, "full chunks fill a row exactly (random_spans_helper lengths)"


def test_unpacked_rows_have_one_example(corpus):
    pattern, _ = corpus
    b = next(D.train_batches(pattern, ByteVocabulary(), small_config(pack=False)))
    assert set(b) == set(D.FEATURES_UNPACKED)
    assert b["encoder_input_tokens"].shape == (4, 128) and b["decoder_target_tokens"].shape == (4, 29)
    assert ((b["decoder_target_tokens"] == 1).sum(axis=1) == 1).all()  # one EOS per row


def test_deterministic_given_seed(corpus):
    pattern, _ = corpus
    plan = D.plan_from_records(pattern, "random", rate=0.6, seed=3)
    run = lambda seed: list(D.train_batches(pattern, ByteVocabulary(), small_config(seed=seed, num_epochs=2), plan))  # noqa: E731
    a, b, c = run(5), run(5), run(6)
    assert len(a) == len(b)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert not all(np.array_equal(x["encoder_input_tokens"], y["encoder_input_tokens"]) for x, y in zip(a, c))


def test_with_a_trained_sentencepiece_vocabulary(corpus, tmp_path):
    pattern, paths = corpus
    texts = [r[records.TEXT] for r in read_back(paths)]
    vocab = V.train_sentencepiece(texts[:40], 400, tmp_path / "sp")
    config = small_config(shuffle_buffer=0, concat_documents=4)
    b = next(D.train_batches(pattern, vocab, config))
    row = b["encoder_input_tokens"][0]
    first = row[b["encoder_segment_ids"][0] == 1]
    assert (first[:-1] < vocab.vocab_size).all() and first[-1] == vocab.eos_id
    sentinels = first[first >= vocab.vocab_size - 100]
    assert sentinels.tolist() == list(range(vocab.vocab_size - 1, vocab.vocab_size - 1 - sentinels.size, -1))
    shown = vocab.decode(first, skip_special_tokens=False)
    words = shown.replace("<extra_id_", " <").split()[:5]
    assert any(w in texts[0] for w in words if not w.startswith("<"))


# --- pure helpers ----------------------------------------------------------------------------

def test_pack_examples_docstring_example():
    rows = D.pack_examples([(np.array([5, 6, 1]), np.array([7, 1])), (np.array([8, 1]), np.array([9, 3, 1]))], 6, 5)
    assert rows["encoder_input_tokens"].tolist() == [[5, 6, 1, 8, 1, 0]]
    assert rows["encoder_segment_ids"].tolist() == [[1, 1, 1, 2, 2, 0]]
    assert rows["encoder_positions"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert rows["decoder_target_tokens"].tolist() == [[7, 1, 9, 3, 1]]
    assert rows["decoder_input_tokens"].tolist() == [[0, 7, 0, 9, 3]]
    assert rows["decoder_segment_ids"].tolist() == [[1, 1, 2, 2, 2]]
    assert rows["decoder_positions"].tolist() == [[0, 1, 0, 1, 2]]
    assert rows["decoder_loss_weights"].tolist() == [[1, 1, 1, 1, 1]]
    two = D.pack_examples([(np.array([5, 1]), np.array([7, 7, 1])), (np.array([8, 1]), np.array([9, 3, 1]))], 6, 5)
    assert two["decoder_segment_ids"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    with pytest.raises(D.DataError, match="exceeds row lengths"):
        D.pack_examples([(np.arange(7), np.arange(2))], 6, 5)


def test_epochs_for_token_budget_matches_the_paper():
    budget = 1024 * 512 * 1_000_000  # 524B tokens
    for fraction, paper_epochs in ((1.0, 2.8), (0.8, 3.5), (0.6, 4.7), (0.4, 7.1), (0.2, 14.2), (0.1, 28.4)):
        assert D.epochs_for_token_budget(budget, fraction * 184e9) == pytest.approx(paper_epochs, abs=0.1)
    with pytest.raises(D.DataError):
        D.epochs_for_token_budget(budget, 0)


def test_bad_configuration(tmp_path):
    with pytest.raises(D.DataError, match="targets_length 100 < 114"):
        D.InputConfig(batch_size=8, targets_length=100)
    with pytest.raises(D.DataError, match="host_index 2 outside"):
        D.InputConfig(batch_size=8, num_hosts=2, host_index=2)
    with pytest.raises(D.DataError, match="no files match"):
        D.list_files(str(tmp_path / "nothing-*.tfrecord"))
