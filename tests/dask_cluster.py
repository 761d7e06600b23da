"""A real Dask cluster on 127.0.0.1 for tests and benchmarks: `dask scheduler` and `dask worker`
processes started as the docs tell a user to, each in its own process group, all killed at stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

START_SECONDS = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_command() -> list[str]:
    return [sys.executable, "-m", "dask"]  # the `dask` command of this interpreter's environment


class DaskCluster:
    """A scheduler and `workers` single-threaded workers (subprocesses); `address` is tcp://127.0.0.1:PORT.

    Example: `with DaskCluster.start(log_dir, workers=2) as cluster:` then run a job with
    `f"--dask_client_address={cluster.address}"`.
    """

    def __init__(self, log_dir: str, port: int):
        self.log_dir = log_dir
        self.address = f"tcp://127.0.0.1:{port}"
        self.scheduler: Optional[subprocess.Popen] = None
        self.workers: list[subprocess.Popen] = []
        self.started_seconds = 0.0

    @classmethod
    def start(cls, log_dir: str, workers: int = 2, timeout: float = START_SECONDS) -> DaskCluster:
        """Starts the scheduler and the workers; returns once every worker is registered."""
        begin = time.monotonic()
        port = free_port()
        cluster = cls(log_dir, port)
        try:
            cluster.scheduler = cluster._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                                             "--no-dashboard"])
            for _ in range(workers):
                cluster.add_worker(wait=False)
            cluster.wait_for_workers(workers, timeout)
        except BaseException:
            cluster.stop()
            raise
        cluster.started_seconds = time.monotonic() - begin
        return cluster

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(os.path.join(self.log_dir, f"{name}.log"), "ab") as log:
            return subprocess.Popen(_dask_command() + args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)

    def add_worker(self, wait: bool = True) -> subprocess.Popen:
        """Starts one more single-threaded worker (`dask worker --nthreads 1`), under a nanny that
        restarts its process if it dies."""
        n = len(self.workers)
        proc = self._spawn(f"worker-{n}", ["worker", self.address, "--nthreads", "1", "--nworkers", "1",
                                           "--host", "127.0.0.1", "--name", f"worker-{n}", "--no-dashboard",
                                           "--local-directory", os.path.join(self.log_dir, f"worker-{n}")])
        self.workers.append(proc)
        if wait:
            self.wait_for_workers(len(self.live_workers()))
        return proc

    def live_workers(self) -> list[subprocess.Popen]:
        """The worker processes still running."""
        return [w for w in self.workers if w.poll() is None]

    def client(self):
        """A distributed Client of this cluster (close it after use)."""
        from distributed import Client
        return Client(self.address, timeout=START_SECONDS)

    def wait_for_workers(self, n: int, timeout: float = START_SECONDS) -> None:
        """Returns once the scheduler has exactly n workers; raises naming the logs otherwise."""
        from distributed import Client
        deadline = time.monotonic() + timeout
        while True:
            if self.scheduler is not None and self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with {self.scheduler.returncode}; see {self.log_dir}")
            try:
                with Client(self.address, timeout=5) as client:
                    while True:
                        if len(client.scheduler_info(n_workers=-1)["workers"]) == n:
                            return
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"the Dask cluster did not have {n} workers within {timeout} s; "
                                               f"see {self.log_dir}")
                        time.sleep(0.2)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def worker_pids(self) -> dict[str, int]:
        """Worker name -> the pid of the process that runs its tasks, as the scheduler knows them."""
        with self.client() as client:
            names = {address: info["name"] for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}
            return {names[address]: pid for address, pid in client.run(os.getpid).items()}

    def stop(self) -> None:
        """Kills every process of the cluster (SIGTERM, then SIGKILL after 10 s)."""
        procs = [*self.workers, *([self.scheduler] if self.scheduler else [])]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
