"""Corpus readers: formats, ids, and one dead letter per kind of bad record."""

import gzip
import json
import os

import pytest

from gristmill import documents, records
from gristmill.testing import MAX_BYTES, good_doc

CONFIG = documents.ReaderConfig(max_document_bytes=MAX_BYTES)


def _split(items):
    items = list(items)
    docs = [i for i in items if not isinstance(i, documents.DeadLetter)]
    dead = [i for i in items if isinstance(i, documents.DeadLetter)]
    return docs, dead


def test_document_id_is_stable_and_depends_on_url_and_text():
    a = documents.document_id("https://a", "text")
    assert a == documents.document_id("https://a", "text")
    assert len(a) == 32 and int(a, 16) >= 0
    assert a != documents.document_id("https://b", "text") != documents.document_id("https://a", "text2")


def test_plain_gzip_and_glob(tmp_path):
    rows = [good_doc(i) for i in range(5)]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    with gzip.open(tmp_path / "y.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows[2:]) + "\n")
    docs, dead = _split(documents.read_documents(str(tmp_path / "*")))
    assert not dead
    assert sorted(d["text"] for d in docs) == sorted(r["text"] for r in rows)
    assert {d["source"] for d in docs} == {str(tmp_path / "x.jsonl"), str(tmp_path / "y.json.gz")}
    for d in docs:
        assert d["id"] == documents.document_id(d["url"], d["text"])


def test_generic_jsonl_text_field_and_lines_format(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"contents": "pile text", "id": 3}) + "\n")
    (tmp_path / "c.txt").write_text("first doc\nsecond doc\n")
    docs, _ = _split(documents.read_documents(str(tmp_path / "p.jsonl"), documents.ReaderConfig(text_field="contents")))
    assert docs[0]["text"] == "pile text" and docs[0]["url"] == ""
    docs, _ = _split(documents.read_documents(str(tmp_path / "c.txt")))
    assert [d["text"] for d in docs] == ["first doc", "second doc"]


def test_real_corpora(embedded_glob):
    docs, dead = _split(documents.read_documents(embedded_glob))
    assert len(docs) == 1000 and not dead
    assert all(d["timestamp"].startswith("2019-04") for d in docs)  # C4's `date` alias
    assert len({d["id"] for d in docs}) == 1000


def test_every_bad_record_becomes_one_dead_letter(bad_corpus):
    pattern, expected = bad_corpus
    docs, dead = _split(documents.read_documents(pattern, CONFIG))
    got = {(os.path.basename(d.source), d.record): d.reason for d in dead}
    truncated = {k: v for k, v in got.items() if v == "truncated_gzip"}
    assert list(truncated) and all(name == "b.jsonl.gz" for name, _ in truncated)
    assert len(truncated) == 1
    assert {k: v for k, v in got.items() if v != "truncated_gzip"} == expected
    gz_docs = [d for d in docs if d["source"].endswith("b.jsonl.gz")]
    (record_number,) = [n for (_, n) in truncated]
    assert record_number == len(gz_docs) + 1 and 0 < len(gz_docs) < 50
    assert {d["text"] for d in docs if d["source"].endswith("a.jsonl")} == {good_doc(1)["text"], "dated"}
    assert [d for d in docs if d["text"] == "dated"][0]["timestamp"] == "2019-04-20"
    assert {d["id"] for d in docs if d["source"].endswith("c.tfrecord")} == {"t0", "t1"}
    for d in dead:
        assert d.detail and json.loads(d.to_json())["reason"] == d.reason


def test_unreadable_file_and_empty_glob(tmp_path):
    (dead,) = list(documents.read_file(str(tmp_path / "missing.jsonl"), CONFIG))
    assert dead.reason == "unreadable_file" and "missing.jsonl" in dead.source
    with pytest.raises(documents.InputError, match="matches no file"):
        documents.expand_patterns([str(tmp_path / "nothing-*.json")])


def test_bad_config():
    with pytest.raises(ValueError, match="unknown input format"):
        documents.ReaderConfig(format="csv")


def test_keep_fields_become_typed_features(tmp_path):
    rows = [{"text": "first", "label": 1, "lang": "en", "score": 0.75, "good": True, "tags": ["a", "b"],
             "grades": [1, 2.5], "ids": [3, 4], "meta": {"k": [1]}, "empty": [], "huge": 2**70, "none": None},
            {"text": "second", "lang": "fr"}]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fields = ("label", "lang", "score", "good", "tags", "grades", "ids", "meta", "empty", "huge", "none")
    docs, dead = _split(documents.read_documents(str(tmp_path / "x.jsonl"), documents.ReaderConfig(keep_fields=fields)))
    assert not dead
    first, second = docs
    assert {k: first[k] for k in fields if k in first} == {
        "label": 1, "lang": b"en", "score": 0.75, "good": 1, "tags": [b"a", b"b"], "grades": [1.0, 2.5],
        "ids": [3, 4], "meta": b'{"k": [1]}', "empty": b"[]", "huge": str(2**70).encode()}
    assert "none" not in first
    assert second["lang"] == b"fr" and not set(fields) - {"lang"} & set(second)  # missing: simply absent
    assert second["id"] == documents.document_id("", "second")  # kept fields do not change the id
    # they survive the scored-record round trip with their types (int64, float, bytes)
    back = records.deserialize(records.serialize(first))
    assert back["label"] == 1 and back["lang"] == b"en" and back["score"] == 0.75 and back["grades"] == [1.0, 2.5]
    plain, _ = _split(documents.read_documents(str(tmp_path / "x.jsonl")))
    assert "label" not in plain[0]  # nothing is carried unless asked for


def test_keep_fields_cannot_shadow_record_features():
    for name in ("id", "text", "url", "source", "contents"):
        with pytest.raises(ValueError, match="keep_fields cannot name"):
            documents.ReaderConfig(text_field="contents", keep_fields=("lang", name))
    assert documents.ReaderConfig(keep_fields=["lang"]).keep_fields == ("lang",)
