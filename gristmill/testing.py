"""Helpers for testing gristmill and scorers built on it: a fake model and encoder, small corpora.

For plumbing tests only. `FakeModel` scores a text by a hash of it, so a test can check that a
job batches, attaches, dead-letters and writes what a model returns, in a `TestPipeline` or a
real run, without weights. It measures nothing: no delivered feature, benchmark or demo may use
it, and a scorer's real behaviour is tested against its model or a reference (CONTRIBUTING.md,
"Testing a scorer").

    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from gristmill import testing
    from gristmill.pipelines import inference

    with TestPipeline() as p:
        out = p | beam.Create(testing.unit_items(["alpha", "beta"])) | inference.RunModel(testing.fake_model_spec())
        assert_that(out, equal_to(testing.expected_items(["alpha", "beta"])))

The corpus helpers write the small inputs the suite reads: numbered documents as JSON lines, a
corpus with one bad record of each kind, and the path of the embedded C4 sample. Importing this
module imports neither Beam nor a model (the helpers that need Beam import it when called).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import json
import os
from typing import Any, Sequence

from gristmill import records
from gristmill.documents import embedded_corpus

__all__ = ["EMBEDDED_C4", "FAIL_TEXT", "FAKE_FEATURE", "MAX_BYTES", "FakeEncoded", "FakeEncoder", "FakeModel",
           "embedded_corpus", "expected_items", "fake_model_spec", "fake_score", "good_doc", "unit_items",
           "write_bad_corpus", "write_corpus"]

# The one file of the embedded C4 sample (1,000 real C4 `en` documents); `embedded_corpus()` is its glob.
EMBEDDED_C4 = str(importlib.resources.files("gristmill") / "data" / "c4-olmo" / "c4-sample.00000-of-00001.json.gz")
# The --max_document_bytes of tests that read `write_bad_corpus`'s corpus (its too-large record exceeds it).
MAX_BYTES = 1000
# The score feature `fake_model_spec` attaches.
FAKE_FEATURE = "score/fake/m"
FAIL_TEXT = "boom"  # a batch holding a document with this text fails in FakeModel


# --------------------------------------------------------------------------- fake model


@dataclasses.dataclass(frozen=True)
class FakeEncoded:
    """What FakeEncoder makes of a text: the text itself, its length in words (Beam batches by length)."""

    text: str

    @property
    def length(self) -> int:
        return len(self.text.split())


class FakeEncoder:
    """A tokenizer-free encoder for `inference.ModelSpec.load_encoder`."""

    def encode(self, text: str) -> FakeEncoded:
        return FakeEncoded(text)


class FakeModel:
    """A deterministic stand-in for a model: the score of a text is a hash of it, in [0, 1].

    A batch holding a document whose text is `FAIL_TEXT` ("boom") raises, so that a test can see a
    failed batch become inference-error dead letters.
    """

    def score_encoded(self, batch: Sequence[FakeEncoded]) -> list[float]:
        if any(e.text == FAIL_TEXT for e in batch):
            raise RuntimeError("the fake model failed")
        return [fake_score(e.text) for e in batch]


def fake_score(text: str) -> float:
    """The score FakeModel gives a text."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:6], 16) / 0xFFFFFF


def fake_model_spec(feature: str = FAKE_FEATURE, batch_size: int = 2, **spec: Any):
    """An `inference.ModelSpec` of FakeModel and FakeEncoder that adds the score as `feature`.

    `inference.RunModel(fake_model_spec())` is the transform a model scorer's job runs, with the
    fake behind it; `spec` sets the other ModelSpec fields (batches_per_call, length_boundaries...).
    """
    from gristmill.pipelines import inference
    return inference.ModelSpec(name="fake", load_model=FakeModel, load_encoder=FakeEncoder,
                               attach=lambda record, score: {**record, feature: score}, batch_size=batch_size, **spec)


def unit_items(texts: Sequence[str], unit: str = "u") -> list:
    """The Item stream of one unit holding these texts: its UNIT Item, then one RECORD per text (ids d0, d1...).

    What the kit's reader emits and a scorer's transform maps; feed it to `beam.Create`.
    """
    from gristmill.pipelines import kit, units
    info = kit.UnitInfo(unit, units.InputFile("f", 1, 0.0), 0, True, len(texts), 0)
    return [kit.Item(kit.UNIT, unit, 0, info)] + [
        kit.Item(kit.RECORD, unit, i + 1, {records.ID: f"d{i}", records.TEXT: t}) for i, t in enumerate(texts)]


def expected_items(texts: Sequence[str], unit: str = "u", feature: str = FAKE_FEATURE) -> list:
    """`unit_items(texts)` after `RunModel(fake_model_spec(feature))`: each record with its fake score."""
    from gristmill.pipelines import kit
    items = unit_items(texts, unit)
    return [item._replace(value={**item.value, feature: fake_score(item.value[records.TEXT])})
            if item.kind == kit.RECORD else item for item in items]


# --------------------------------------------------------------------------- corpora


def good_doc(i: int) -> dict:
    """Document number i: a short valid JSON object with text, url and timestamp."""
    return {"text": f"Document number {i}. It has some words about topic {i % 7}.",
            "url": f"https://example.com/{i}", "timestamp": f"2019-04-2{i % 10}T00:00:00Z"}


def write_corpus(path: str, start: int, count: int) -> str:
    """Writes documents start .. start + count - 1 as JSON lines (text and url) to `path`; returns it."""
    with open(path, "w") as f:
        for i in range(start, start + count):
            f.write(json.dumps({"text": f"Document {i} talks about topic {i % 5} at some length.",
                                "url": f"https://example.com/{i}"}) + "\n")
    return path


def write_bad_corpus(directory: str) -> tuple[str, dict[tuple[str, int], str]]:
    """A corpus with good documents and exactly one bad record of each kind, in `directory`.

    Read with `max_document_bytes=MAX_BYTES`. Returns (glob, expected): expected maps (file name,
    record number) -> the dead-letter reason the reader should give.
    """
    lines = [
        json.dumps(good_doc(1)).encode(),                    # 1 good
        b"this is not json",                                 # 2 invalid_json
        b"[1, 2, 3]",                                        # 3 not_an_object
        json.dumps({"url": "u"}).encode(),                   # 4 missing_text
        json.dumps({"text": 5}).encode(),                    # 5 non_string_text
        json.dumps({"text": "   \n\t"}).encode(),            # 6 empty_text
        b'{"text": "bad \xff\xfe bytes"}',                   # 7 invalid_utf8
        json.dumps({"text": "x" * (MAX_BYTES + 1)}).encode(),  # 8 too_large
        json.dumps({"text": "dated", "date": "2019-04-20", "url": "d"}).encode(),  # 9 good, `date` alias
    ]
    with open(os.path.join(directory, "a.jsonl"), "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    good = b"".join(json.dumps(good_doc(i)).encode() + b"\n" for i in range(10, 60))
    whole = gzip.compress(good)
    with open(os.path.join(directory, "b.jsonl.gz"), "wb") as f:
        f.write(whole[: len(whole) * 2 // 3])  # truncated gzip member
    examples = [records.encode_tfrecord(records.serialize({"id": f"t{i}", "text": f"tf doc {i}", "url": f"t/{i}"}))
                for i in range(3)]
    no_text = records.encode_tfrecord(records.serialize({"id": "nt", "text": "x"}).replace(b"text", b"txet"))
    not_example = records.encode_tfrecord(b"\xff\xff\xff\xff")
    with open(os.path.join(directory, "c.tfrecord"), "wb") as f:
        f.write(examples[0] + no_text + not_example + examples[1] + examples[2][:-7])
    expected = {
        ("a.jsonl", 2): "invalid_json", ("a.jsonl", 3): "not_an_object", ("a.jsonl", 4): "missing_text",
        ("a.jsonl", 5): "non_string_text", ("a.jsonl", 6): "empty_text", ("a.jsonl", 7): "invalid_utf8",
        ("a.jsonl", 8): "too_large", ("c.tfrecord", 2): "missing_text", ("c.tfrecord", 3): "invalid_example",
        ("c.tfrecord", 5): "corrupt_tfrecord",
    }
    return os.path.join(directory, "*"), expected
