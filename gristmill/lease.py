"""One writer at a time: an expiring lease on a directory, local or gs://.

    with lease.acquire("out/density", "gristmill score density"):
        ...                                  # the only writer of out/density until here

The lease is `DIR/lease.json`, created atomically (an exclusive create locally, an upload with
`ifGenerationMatch=0` on GCS), naming its holder (command, host, pid, since, expiry). A holder
renews it in the background; a lease that has expired, or whose holder process is gone from this
host, is taken over with a generation precondition, so of two processes taking over at once
exactly one wins. A second writer fails at once with `LeaseHeldError` naming the holder.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Optional

from gristmill import io

LEASE_FILE = "lease.json"
DEFAULT_TTL_SECONDS = 900.0
log = logging.getLogger(__name__)


class LeaseHeldError(RuntimeError):
    """Another live process holds the directory's lease."""


def _now() -> float:
    return time.time()


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: dict[str, Any], now: Optional[float] = None) -> bool:
    """True when a lease may be taken over: it expired, or its process is gone from this host."""
    now = _now() if now is None else now
    if float(holder.get("expires", 0)) <= now:
        return True
    return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0)))


def describe(holder: dict[str, Any]) -> str:
    """'<what> (pid P on HOST since T, expires E)'."""
    return (f"{holder.get('what', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
            f"{_iso(float(holder.get('since', 0)))}, lease expires {_iso(float(holder.get('expires', 0)))})")


class Lease:
    """A held lease; renews itself in a daemon thread until released."""

    def __init__(self, path: str, holder: dict[str, Any], generation: int, ttl: float):
        self.path, self.holder, self.generation, self.ttl = path, holder, generation, ttl
        self.lost: Optional[str] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._renew_loop, name="gristmill-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except Exception as err:  # a lost lease is reported by check(); the thread must not die loudly
                self.lost = f"renewing {self.path} failed: {err}"
                log.error("lease %s", self.lost)
                return

    def renew(self) -> None:
        """Extends the expiry; raises FileExistsError when someone else took the lease over."""
        with self._lock:
            holder = {**self.holder, "expires": _now() + self.ttl}
            io.atomic_write(self.path, _encode(holder), if_generation=self.generation)
            self.holder, self.generation = holder, io.stat(self.path).generation

    def check(self) -> None:
        """Raises LeaseHeldError when the lease was lost (taken over after an expiry)."""
        if self.lost:
            raise LeaseHeldError(f"{io.dirname(self.path)}: this job lost its lease ({self.lost}); "
                                 f"another writer may have taken over, nothing more is written")

    def release(self) -> None:
        """Stops renewing and removes the lease file (only while it is still ours)."""
        self._stop.set()
        with self._lock:
            io.delete([self.path], if_generation=self.generation)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _encode(holder: dict[str, Any]) -> bytes:
    return json.dumps(holder, sort_keys=True).encode("utf-8")


def acquire(directory: str, what: str, ttl: float = DEFAULT_TTL_SECONDS) -> Lease:
    """Takes the lease of directory for `what` (e.g. the command), or raises LeaseHeldError naming the holder."""
    path = io.join(directory, LEASE_FILE)
    io.makedirs(directory)
    for _ in range(5):
        since = _now()
        holder = {"what": what, "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                  "since": since, "expires": since + ttl}
        if io.create_exclusive(path, _encode(holder)):
            return Lease(path, holder, io.stat(path).generation, ttl)
        try:
            found = io.stat(path)
            current = json.loads(io.read_bytes(path))
        except FileNotFoundError:
            continue  # released between our create and our read: try again
        except ValueError:
            current = {}
        if not is_stale(current):
            raise LeaseHeldError(f"{directory} is in use by {describe(current)}; wait for it to finish "
                                 f"(or, if it is dead on another host, for its lease to expire)")
        log.warning("%s: taking over a stale lease of %s", directory, describe(current))
        try:
            io.atomic_write(path, _encode(holder), if_generation=found.generation)
        except FileExistsError:
            continue  # another process took it over first: look again
        return Lease(path, holder, io.stat(path).generation, ttl)
    raise LeaseHeldError(f"{directory}: could not take the lease {path} (it changes hands too fast)")
