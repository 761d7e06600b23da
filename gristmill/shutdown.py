"""Stopping a job on Ctrl-C or SIGTERM: within a second, with one line, and no process left behind.

    code = shutdown.run_stoppable(lambda: run(argv), "gristmill score random")

Beam's local runners start worker processes (`--workers N`) and threads that a plain
KeyboardInterrupt unwinds slowly and noisily (a long traceback, seconds of shutdown), and a
SIGTERM'd launcher would leave its workers running. Here either signal wakes a watcher thread
that kills every descendant process, releases this process's leases (finished units stay, so a
rerun resumes), prints one line and exits at once with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable


def descendants() -> list:
    """Every process this one started, recursively (psutil.Process objects)."""
    import psutil
    return psutil.Process().children(recursive=True)


def kill(processes: list) -> None:
    """Kills processes with SIGKILL and waits for them briefly."""
    import psutil
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=5)


def release_leases() -> None:
    """Releases the output leases this process holds (jobs started through the kit)."""
    kit = sys.modules.get("gristmill.pipelines.kit")
    if kit is not None:
        for output in list(kit._LEASES):
            with contextlib.suppress(Exception):
                kit.release_output(output)


def _stop(signum: int, what: str) -> None:
    workers = descendants()
    print(f"{what}: stopped by {signal.Signals(signum).name}"
          f"{f' ({len(workers)} worker process(es) killed)' if workers else ''}; finished units are kept, "
          f"rerun the same command to resume", file=sys.stderr, flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # Beam's threads complain of the killed workers: not news
    kill(workers)
    release_leases()
    os._exit(128 + signum)  # Beam's threads and gRPC servers would take seconds to wind down


def _watch(fd: int, what: str) -> None:
    """Waits on the signal wake-up pipe; stops the process at the first SIGINT or SIGTERM."""
    try:
        while True:
            data = os.read(fd, 1)
            if not data:
                return
            if data[0] in (signal.SIGINT, signal.SIGTERM):
                _stop(data[0], what)
    except OSError:
        return
    finally:
        os.close(fd)


def run_stoppable(fn: Callable[[], object], what: str) -> int:
    """Runs fn; on SIGINT/SIGTERM stops everything at once and exits with 128 + signal (see module doc).

    The stop runs in a watcher thread woken by the signal itself (Python's wake-up fd), so it
    does not wait for the main thread, which may be blocked inside Beam or gRPC.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    threading.Thread(target=_watch, args=(read_fd, what), name="gristmill-stop", daemon=True).start()
    try:
        fn()
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the watcher reads EOF and ends
