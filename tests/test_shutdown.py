"""Stopping a job: SIGTERM and Ctrl-C end it within seconds, with one line, and no process outlives it."""

import signal
import subprocess
import sys

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
