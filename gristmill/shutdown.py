"""Stopping a job on Ctrl-C or SIGTERM: within a second, with one line, and no process left behind.

    code = shutdown.run_stoppable(lambda: run(argv), "gristmill score random")

Beam's local runners start worker processes (`--workers N`) and threads that a plain
KeyboardInterrupt unwinds slowly and noisily (a long traceback, seconds of shutdown), and a
SIGTERM'd launcher would leave its workers running. Here SIGTERM is turned into the same
interrupt as Ctrl-C; on either, every descendant process is killed, this process's leases are
released (finished units stay, so a rerun resumes), one line is printed, and the process exits
at once with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Callable

log = logging.getLogger(__name__)


class Stopped(KeyboardInterrupt):
    """The job was asked to stop (SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, _frame):
    raise Stopped(signum)


def kill_descendants() -> int:
    """Kills (SIGKILL) every process this one started, recursively; returns how many."""
    import psutil
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=5)
    return len(children)


def release_leases() -> None:
    """Releases the output leases this process holds (jobs started through the kit)."""
    kit = sys.modules.get("gristmill.pipelines.kit")
    if kit is not None:
        for output in list(kit._LEASES):
            with contextlib.suppress(Exception):
                kit.release_output(output)


def run_stoppable(fn: Callable[[], object], what: str) -> int:
    """Runs fn; on SIGINT/SIGTERM stops everything at once and exits with 128 + signal (see module doc)."""
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        fn()
        return 0
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        killed = kill_descendants()
        release_leases()
        print(f"{what}: stopped by {signal.Signals(signum).name}"
              f"{f' ({killed} worker process(es) killed)' if killed else ''}; finished units are kept, "
              f"rerun the same command to resume", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(128 + signum)  # Beam's threads and gRPC servers would take seconds to wind down
    finally:
        signal.signal(signal.SIGTERM, previous)
