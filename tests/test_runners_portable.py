"""The portable path Flink and Spark use, with Python workers from an external SDK worker pool.

A Flink deployment runs Python code in SDK workers started by a Beam worker pool
(`worker_pool_main`, the `--worker_pool` entrypoint of Beam's SDK container) and reaches them with
`--environment_type=EXTERNAL --environment_config=HOST:PORT`. Here the pool is a subprocess on
localhost and Beam's embedded job server stands in for the Flink job server: the pipeline is
translated to the runner API, shipped over gRPC, and every DoFn runs in the pool's worker process.
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from gristmill import records
from gristmill.pipelines import score_random

ROOT = os.path.join(os.path.dirname(__file__), "..")
COMPOSE = os.path.join(ROOT, "deploy", "flink", "docker-compose.yml")
DOCUMENTS = 400
POOL_START_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker pool exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("localhost", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"the worker pool did not listen on port {port} within {timeout} s")


@pytest.fixture
def worker_pool(tmp_path):
    """An external SDK worker pool on a free localhost port; yields ('localhost:PORT', its log file).

    The pool starts each SDK worker as `python -c ...` from PATH, so this interpreter's directory
    goes first on PATH (a container has gristmill's Python there). The pool and its workers run in
    their own process group, which is ended on the way out whatever happened.
    """
    port = _free_port()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    log = tmp_path / "worker_pool.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                 f"--service_port={port}"], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=out)
    try:
        _wait_for_port(port, proc, POOL_START_SECONDS)
        yield f"localhost:{port}", log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def small_corpus(tmp_path, embedded_glob):
    """The first DOCUMENTS lines of the embedded C4 sample, as a C4-shaped json.gz file."""
    (source,) = records.record_files(embedded_glob)
    with gzip.open(source, "rb") as f:
        lines = list(itertools.islice(f, DOCUMENTS))
    path = tmp_path / "c4-slice.json.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    return str(path)


def test_external_worker_pool_gives_the_in_process_records(tmp_path, small_corpus, worker_pool):
    endpoint, pool_log = worker_pool
    common = ["--input", small_corpus, "--seed=5", "--unit_records=150"]
    local = score_random.run([*common, "--output", str(tmp_path / "local")])
    portable = score_random.run([*common, "--output", str(tmp_path / "portable"), "--runner=PortableRunner",
                                 "--job_endpoint=embed", "--environment_type=EXTERNAL",
                                 f"--environment_config={endpoint}"])
    expected = list(records.iter_scored_records(str(tmp_path / "local")))
    got = list(records.iter_scored_records(str(tmp_path / "portable")))
    assert len(expected) == DOCUMENTS and "score/random/seed-5" in expected[0]
    assert got == expected
    assert portable["counts"] == local["counts"] and portable["counts"]["units_total"] == 3
    assert "Starting worker" in pool_log.read_text()  # the pool, not this process, ran the DoFns


def _from_image(dockerfile: str) -> str:
    """The image of a Dockerfile's first FROM, its build ARGs' defaults filled in (`${BEAM_VERSION}`)."""
    with open(os.path.join(ROOT, dockerfile)) as f:
        lines = f.read().splitlines()
    defaults = dict(line.split(None, 1)[1].split("=", 1) for line in lines if line.startswith("ARG ") and "=" in line)
    image = next(line.split()[1] for line in lines if line.startswith("FROM "))
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)


def test_flink_compose_file_agrees_with_itself_and_the_worker_image():
    with open(COMPOSE) as f:
        services = yaml.safe_load(f)["services"]
    flink, beam_version = re.fullmatch(r"apache/beam_flink([0-9.]+)_job_server:([0-9.]+)",
                                       services["job-server"]["image"]).groups()
    assert all(services[name]["image"].startswith(f"flink:{flink}-") for name in ("jobmanager", "taskmanager"))
    pool = services["worker-pool"]
    assert pool["command"] == ["--worker_pool"] and pool["network_mode"] == "service:taskmanager"
    worker = _from_image(pool["build"]["dockerfile"])
    assert re.fullmatch(rf"apache/beam_python3\.[0-9]+_sdk:{re.escape(beam_version)}", worker), worker
    staging = "beam-artifacts:/tmp/beam-artifact-staging"
    assert staging in services["job-server"]["volumes"] and staging in services["taskmanager"]["volumes"]
    assert "--artifacts-dir=/tmp/beam-artifact-staging" in services["job-server"]["command"]
