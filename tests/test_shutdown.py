"""Stopping a job: SIGTERM and Ctrl-C end it within seconds, with one line, and no process outlives it."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

_JOB = """
import subprocess, sys, time
from gristmill import shutdown
def job():
    workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)]
    print(" ".join(str(w.pid) for w in workers), flush=True)
    time.sleep(120)
shutdown.run_stoppable(job, "gristmill score random")
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_job_and_its_workers_at_once_with_one_line(signum):
    job = subprocess.Popen([sys.executable, "-c", _JOB], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in job.stdout.readline().split()]
    assert len(workers) == 2 and all(psutil.pid_exists(pid) for pid in workers)
    job.send_signal(signum)
    _, err = job.communicate(timeout=60)  # only a guard against a hang
    assert job.returncode == 128 + signum
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"gristmill score random: stopped by {signal.Signals(signum).name} (2 worker process(es) "
                     f"killed); finished units are kept, rerun the same command to resume"]
    for pid in workers:
        with pytest.raises(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(pid)


def test_sigterm_stops_a_two_worker_job_and_a_rerun_resumes(tmp_path):
    import json
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n in range(4):
        with open(corpus / f"part-{n}.jsonl", "w") as f:
            for i in range(8000):
                f.write(json.dumps({"text": f"file {n} document {i} " + "words " * 30}) + "\n")
    out = str(tmp_path / "out")
    argv = [sys.executable, "-m", "gristmill.cli", "score", "random", "--input", str(corpus / "*.jsonl"),
            "--output", out, "--workers=2", "--unit_records=1000"]
    job = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(job.pid)
    deadline = time.monotonic() + 120  # a guard: wait for the second worker process (the launcher is the first)
    while not proc.children(recursive=True) and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    workers = proc.children(recursive=True)
    assert workers, "the job never started its second worker"
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGTERM
    stops = [line for line in err.splitlines() if "stopped by SIGTERM" in line]
    assert len(stops) == 1 and "Traceback" not in err
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["counts"]["written"] == 32000
