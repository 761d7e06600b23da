"""What a no-op rerun costs before any work: finding the finished units, by unit count.

    python benchmarks/resume_bookkeeping.py --units 1000 5000 20000 [--gcs_units 1000] [--gcs_latency 0.02]

For each N, `score random` writes N one-record units into a local output (and, with --gcs_units, into
a bucket on the test GCS server), then the two ways of finding the finished units are timed on the
same directory: reading every marker (`units.read_markers` + `verified_markers`, what each rerun did
before) and the unit index (`units.resume_markers`: one listing, the index, only unlisted markers).
On GCS the requests each way makes are counted, since each costs 20-50 ms of latency there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gristmill import io  # noqa: E402 (the jobs, which need Beam, are imported where they run)


def make_output(root: str, n: int) -> tuple[str, dict]:
    """A finished `score random` output of n one-record units."""
    from gristmill.pipelines import score_random
    corpus = os.path.join(tempfile.mkdtemp(prefix="resume-corpus-"), "c.jsonl")
    with open(corpus, "w") as f:
        f.writelines(json.dumps({"text": f"document {i}"}) + "\n" for i in range(n))
    out = io.join(root, f"random-{n}")
    manifest = score_random.run(["--input", corpus, "--output", out, "--unit_records", "1"], save_main_session=False)
    return out, manifest


class Requests:
    """Counts the object reads and listings gristmill.io makes."""

    def __init__(self):
        self.count = 0
        names = ("read_json", "read_text", "read_bytes", "list_stats", "stat")
        self._real = {name: getattr(io, name) for name in names}

    def __enter__(self):
        for name, fn in self._real.items():
            setattr(io, name, self._counted(fn))
        return self

    def _counted(self, fn):
        def wrapper(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)
        return wrapper

    def __exit__(self, *exc):
        for name, fn in self._real.items():
            setattr(io, name, fn)


def measure(out: str, manifest: dict) -> dict:
    """Seconds and requests of each way of finding the finished units of out."""
    from gristmill.pipelines import units
    result = {}
    for name, find in (("read every marker", lambda: units.verified_markers(out, units.read_markers(out))),
                       ("unit index", lambda: units.resume_markers(out, manifest))):
        with Requests() as requests:
            start = time.monotonic()
            found = find()
            result[name] = (time.monotonic() - start, requests.count, len(found))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="*", default=[1000, 5000, 20000])
    parser.add_argument("--gcs_units", type=int, nargs="*", default=[])
    parser.add_argument("--gcs_latency", type=float, default=0.0,
                        help="seconds the GCS server waits before answering each request (real GCS: 0.02-0.05)")
    args = parser.parse_args()
    places = [("local", n, tempfile.mkdtemp(prefix="resume-")) for n in args.units]
    server = None
    if args.gcs_units:
        from tests.faults import GcsServer
        server = GcsServer.start(latency=args.gcs_latency, log_dir=tempfile.mkdtemp(prefix="gcs-"))
        os.environ["STORAGE_EMULATOR_HOST"] = server.host
        places += [("gcs emulator", n, f"gs://{server.new_bucket()}") for n in args.gcs_units]
    try:
        for where, n, root in places:
            out, manifest = make_output(root, n)
            for name, (seconds, requests, found) in measure(out, manifest).items():
                print(f"{where}{f' ({args.gcs_latency * 1000:.0f} ms a request)' if root.startswith('gs://') else ''}, "
                      f"{n:,} units, {name}: {seconds:.2f} s, {requests:,} requests "
                      f"({found:,} units found)", flush=True)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
