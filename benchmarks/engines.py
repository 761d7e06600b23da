"""Engines: the same `score random` and `score density` job in-process, with `--workers 2` and on Dask.

    python benchmarks/engines.py [--random_documents 40000] [--density_documents 320] [--files 8]

The corpus is C4-shaped json.gz files made from the embedded sample (a counter in each text, so
every id differs), `--files` of them: the unit of spreading on every engine. Each job runs in its
own fresh process against its own output directory, and its wall time is measured around the
job's `run()` (flag parsing, planning, the pipeline, the manifest), so the driver's own imports
are left out:

- in-process: Beam's FnApiRunner in the driver (gristmill's default);
- `--workers 2`: the same runner with two worker processes, started by the job;
- Dask: `--runner dask` against a `dask scheduler` and two `dask worker --nthreads 1` processes on
  127.0.0.1 (tests/dask_cluster.py), started once before the Dask jobs.

Printed: wall time and documents/s of each, each engine's throughput over the in-process one from
this run, and the cluster's start-up cost: until both workers are registered, and the first job
on the fresh cluster (a 10-document `score random`, in which each worker imports gristmill).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from beam_overhead import make_corpus  # noqa: E402

JOBS = {"random": "gristmill.pipelines.score_random", "density": "gristmill.pipelines.score_density"}
ENGINES = {"in-process": [], "--workers 2": ["--workers=2"], "dask": ["--runner=dask"]}


def child(job: str, argv: list[str]) -> None:
    """Runs one job in this process; prints {seconds, written} as JSON."""
    import importlib
    module = importlib.import_module(JOBS[job])
    start = time.perf_counter()
    manifest = module.run(argv)
    print(json.dumps({"seconds": time.perf_counter() - start, "written": manifest["counts"]["written"]}))


def measure(job: str, argv: list[str]) -> dict:
    """Runs one job in a fresh subprocess and returns its measurements."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", job, "--", *argv]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, env=env, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random_documents", type=int, default=40_000, help="documents of the score random job")
    parser.add_argument("--density_documents", type=int, default=320, help="documents of the score density job")
    parser.add_argument("--files", type=int, default=8, help="json.gz files each corpus is cut into")
    parser.add_argument("--_child", choices=sorted(JOBS), help=argparse.SUPPRESS)
    parser.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        child(args._child, args.argv)
        return 0
    from tests.dask_cluster import DaskCluster

    rows, startup = [], {}
    with tempfile.TemporaryDirectory(prefix="gristmill-engines-") as tmp:
        corpora = {}
        for job, documents in (("random", args.random_documents), ("density", args.density_documents)):
            directory = os.path.join(tmp, f"{job}-in")
            os.makedirs(directory)
            corpora[job] = make_corpus(directory, documents, -(-documents // args.files))
        print(f"corpora: {args.random_documents} and {args.density_documents} documents, {args.files} files each; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        logs = os.path.join(tmp, "dask-logs")
        os.makedirs(logs)
        cluster = None
        try:
            for job in JOBS:
                for engine, flags in ENGINES.items():
                    if engine == "dask" and cluster is None:
                        cluster = DaskCluster.start(logs, workers=2)
                        startup["registered_s"] = cluster.started_seconds
                        os.makedirs(os.path.join(tmp, "warm"))
                        warm = make_corpus(os.path.join(tmp, "warm"), 10, 10)
                        first = measure("random", ["--input", warm, "--output", os.path.join(tmp, "warm-out"),
                                                   *flags, f"--dask_client_address={cluster.address}"])
                        startup["first_job_s"] = first["seconds"]
                        print(f"dask cluster: 2 workers registered in {cluster.started_seconds:.1f} s; first job "
                              f"(10 documents, workers import gristmill) {first['seconds']:.1f} s", flush=True)
                    extra = [f"--dask_client_address={cluster.address}"] if engine == "dask" else []
                    result = measure(job, ["--input", corpora[job], "--output", os.path.join(tmp, f"{job}-{engine}"),
                                           *flags, *extra])
                    rows.append({"job": job, "engine": engine, **result})
                    print(f"{job:<8} {engine:<12} {result['written']:>7} docs {result['seconds']:7.1f} s "
                          f"{result['written'] / result['seconds']:9.1f} docs/s", flush=True)
        finally:
            if cluster is not None:
                cluster.stop()
        load = os.getloadavg()[0]
    print()
    for job in JOBS:
        base = next(r for r in rows if r["job"] == job and r["engine"] == "in-process")
        for row in rows:
            if row["job"] == job and row["engine"] != "in-process":
                print(f"{job}: {row['engine']} / in-process throughput: {base['seconds'] / row['seconds']:.2f}x")
    print(f"dask start-up: {startup['registered_s']:.1f} s to 2 registered workers, "
          f"first job on the fresh cluster {startup['first_job_s']:.1f} s")
    print(f"load average at the end: {load:.1f}")
    counts = {(r["job"], r["written"]) for r in rows}
    if len(counts) != len(JOBS):
        print(f"WARNING: the engines wrote different record counts: {sorted(counts)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
