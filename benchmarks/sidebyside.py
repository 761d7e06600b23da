"""Side-by-side timing of two implementations on a shared machine: persistent workers, interleaved rounds.

Each side runs in its own worker process (so JAX and PyTorch never share a thread pool), loads its
model and compiles or warms up once, then waits. The parent asks the workers for one timed round
each, in turn, for `rounds` rounds: both sides see the same background load, and the best round of
each is reported (on a machine shared with other jobs the fastest round is the least disturbed one).

A worker is `python SCRIPT --worker SIDE SETTINGS_JSON`; it calls `serve(setup)` where `setup()`
returns `(run_round, info)`: `run_round()` does the timed work once and returns a dict of outputs
to keep (numpy arrays are saved for the parent), `info` is a dict printed with the results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np


def serve(setup: Callable[[], tuple[Callable[[], dict], dict]]) -> None:
    """Worker side: set up, say ready, then answer `run` / `save PATH` / `quit` lines on stdin."""
    start = time.perf_counter()
    run_round, info = setup()
    first = time.perf_counter()
    outputs = run_round()  # the first round compiles / warms up and is not timed
    info = dict(info, setup_s=round(first - start, 1), first_round_s=round(time.perf_counter() - first, 1))
    _reply({"ready": True, "info": info})
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "run":
            t0 = time.perf_counter()
            outputs = run_round()
            _reply({"seconds": time.perf_counter() - t0})
        elif command[0] == "save":
            np.savez(command[1], **{k: np.asarray(v) for k, v in outputs.items()})
            _reply({"saved": command[1]})


def _reply(message: dict) -> None:
    sys.stdout.write("@@" + json.dumps(message) + "\n")
    sys.stdout.flush()


class Worker:
    """Parent side handle of one worker process."""

    def __init__(self, script: str, side: str, settings: dict, python: str = sys.executable,
                 env: dict | None = None):
        self.side = side
        cmd = [python, os.path.abspath(script), "--worker", side, json.dumps(settings)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **(env or {})))

    def read(self) -> dict:
        """The next protocol message (other output of the worker is passed through to stderr)."""
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
            sys.stderr.write(line)
        raise RuntimeError(f"{self.side} worker exited with {self.proc.wait()} before answering")

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def compare(workers: Sequence[Worker], rounds: int, save_dir: str | None = None) -> dict[str, Any]:
    """Waits for every worker to be ready, runs `rounds` interleaved timed rounds, returns per side
    `{"info", "times", "best_s", "outputs"}` (outputs: path of the saved npz when save_dir is given)."""
    result = {}
    try:
        for w in workers:  # set up one after the other: loading and compiling are not timed anyway
            result[w.side] = {"info": w.read()["info"], "times": []}
        for _ in range(rounds):
            for w in workers:
                result[w.side]["times"].append(w.ask("run")["seconds"])
        for w in workers:
            result[w.side]["best_s"] = min(result[w.side]["times"])
            if save_dir:
                path = os.path.join(save_dir, f"{w.side}.npz")
                w.ask(f"save {path}")
                result[w.side]["outputs"] = path
    finally:
        for w in workers:
            w.close()
    return result


def worker_main(setups: dict[str, Callable[[dict], tuple[Callable[[], dict], dict]]], argv: Sequence[str]) -> bool:
    """If argv is `--worker SIDE SETTINGS_JSON`, serve that side and return True."""
    if len(argv) >= 3 and argv[0] == "--worker":
        settings = json.loads(argv[2])
        serve(lambda: setups[argv[1]](settings))
        return True
    return False
