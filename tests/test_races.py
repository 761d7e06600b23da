"""One writer at a time: overlapping curate runs on one work directory, two configurations into one output.

Real processes, a real GCS API server; the overlap is made certain, not hoped for: the first curate
run is stopped (SIGSTOP) while it holds the work directory, and the two jobs race through a server
that answers every request 0.2 s late, the window between checking an output and claiming it.
"""

from __future__ import annotations

import json
import os
import signal
import time

from tests import faults

UNIT_RECORDS = 8


def _corpus(directory) -> str:
    path = os.path.join(str(directory), "a.jsonl")
    faults.write_corpus(path, 200, 30, {5: "not json"})
    return path


def _curation(tmp_path, workdir: str, corpus: str) -> str:
    raw = {"name": "races", "input": corpus, "workdir": workdir, "flags": {"unit_records": UNIT_RECORDS},
           "steps": [{"name": "random", "job": "score random", "flags": {"seed": 3}},
                     {"name": "top30", "job": "select", "input_from": "random",
                      "flags": {"score": "score/random/seed-3", "rule": "topk", "rate": 0.3}}]}
    path = str(tmp_path / "curation.json")
    with open(path, "w") as f:
        json.dump(raw, f)
    return path


def _wait_for(path: str, proc, log_path: str) -> None:
    """Polls until path exists (the process holds its lease); fails if the process ends first."""
    deadline = time.monotonic() + faults.SUBPROCESS_TIMEOUT
    while not faults.exists(path):
        if proc.poll() is not None:
            output = faults.finish(proc, log_path).stdout
            raise AssertionError(f"the first run ended ({proc.returncode}) before it was seen holding {path}:\n"
                                 f"{faults.tail(output)}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def test_two_overlapping_curate_runs_one_proceeds_the_other_names_the_holder(output_root, tmp_path):
    workdir = faults.join(output_root, "work")
    config = _curation(tmp_path, workdir, _corpus(tmp_path))
    env = {faults.EMULATOR_ENV: os.environ[faults.EMULATOR_ENV]} if faults.EMULATOR_ENV in os.environ else {}
    first_log = str(tmp_path / "first.log")
    first = faults.start(["curate", "--config", config, "--run_id", "first"], env, log_path=first_log)
    try:
        _wait_for(faults.join(workdir, "lease.json"), first, first_log)
        os.kill(first.pid, signal.SIGSTOP)  # the first run now holds the work directory for as long as we like
        second = faults.run_command(["curate", "--config", config, "--run_id", "second"], env)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
    done = faults.finish(first, first_log)
    assert done.returncode == 0, f"the first run failed:\n{faults.tail(done.stdout)}"
    assert second.returncode not in (0, faults.KILLED), (
        f"the overlapping run did not fail:\n{faults.tail(second.stdout)}")
    assert f"pid {first.pid}" in second.stdout and "curate" in second.stdout, (
        f"the overlapping run's message does not name the holder (pid {first.pid}):\n{faults.tail(second.stdout)}")
    # only the first run published, and what it published is its own
    assert faults.read(faults.join(workdir, "selections/LATEST")) == b"first\n"
    assert not faults.exists(faults.join(workdir, "selections/second/manifest.json"))
    published = json.loads(faults.read(faults.join(workdir, "selections/first/manifest.json")))
    top30 = faults.manifest(faults.join(workdir, "steps/top30"))
    plan = faults.read(faults.join(workdir, "selections/first/plan.json"))
    assert plan == faults.read(faults.join(faults.join(workdir, "steps/top30"), top30["outputs"]["plan"]))
    assert published["selection"]["counts"] == top30["counts"]
    assert not faults.exists(faults.join(workdir, "lease.json")), "the finished run left its lease"


def test_two_configurations_into_one_output_at_once_one_proceeds(slow_gcs_server, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.EMULATOR_ENV, slow_gcs_server.host)
    out = f"gs://{slow_gcs_server.new_bucket()}/out"
    corpus = _corpus(tmp_path)
    logs = [str(tmp_path / f"seed-{seed}.log") for seed in (1, 2)]
    procs = [faults.start(["score", "random", "--input", corpus, "--output", out, f"--unit_records={UNIT_RECORDS}",
                           f"--seed={seed}"], slow_gcs_server.env(), log_path=log)
             for seed, log in zip((1, 2), logs)]
    results = [faults.finish(p, log) for p, log in zip(procs, logs)]
    codes = [r.returncode for r in results]
    assert sorted(c == 0 for c in codes) == [False, True], (
        f"exit codes {codes}, expected exactly one run to proceed:\n" +
        "\n----\n".join(faults.tail(r.stdout, 12) for r in results))
    winner = 1 if codes[0] == 0 else 2
    loser = results[2 - winner]
    assert loser.returncode != faults.KILLED
    assert "in use by" in loser.stdout or "different configuration" in loser.stdout, faults.tail(loser.stdout)
    job = json.loads(faults.read(faults.join(out, "job.json")))
    manifest = faults.manifest(out)
    assert job["config"]["seed"] == manifest["config"]["seed"] == winner
    assert job["fingerprint"] == manifest["fingerprint"]
    assert manifest["reconciled"] and manifest["counts"]["read"] == 31
