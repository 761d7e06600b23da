"""gristmill against DataTrove on the simplest job: read C4-shaped JSON lines, add a hash score, write.

    python benchmarks/throughput_datatrove.py [--documents 200000] [--files 4] [--rounds 3] [--corpus DIR]

The same input (N documents of about 2 KB in F gzip JSON-lines files) goes through
- gristmill `score random` in one process (the default in-process runner),
- gristmill `score random --workers 2` (Beam's multi-process local runner),
- DataTrove 0.10: JsonlReader -> a step adding a BLAKE2b score to the metadata -> JsonlWriter,
  F tasks on 2 workers (its LocalPipelineExecutor); its writer gzips by default, so it also runs
  with uncompressed output (gristmill writes uncompressed TFRecords).
Runs alternate, so each side sees the same background load; the median wall time, CPU time (the
process and its children) and peak RSS (summed over the process tree) of each are printed, with the
ratios of wall times (DataTrove's / this: above 1 means gristmill is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no will").split()

DATATROVE = """
import hashlib, sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

def score(data, rank=0, world_size=1):
    for doc in data:
        digest = hashlib.blake2b(doc.text.encode(), digest_size=8, key=(0).to_bytes(8, "little")).digest()
        doc.metadata["score/random/seed-0"] = (int.from_bytes(digest, "big") >> 11) * 2.0**-53
        yield doc

source, output, logs, tasks, compression = sys.argv[1:6]
if __name__ == "__main__":  # its executor starts workers with forkserver, which imports this file
    writer = JsonlWriter(output, compression=None if compression == "none" else compression)
    LocalPipelineExecutor(pipeline=[JsonlReader(source), score, writer], tasks=int(tasks), workers=2,
                          logging_dir=logs).run()
"""


def write_corpus(directory: str, documents: int, files: int) -> None:
    """N documents of about 2 KB in F gzip JSON-lines files."""
    rng = random.Random(0)
    os.makedirs(directory, exist_ok=True)
    per_file = -(-documents // files)
    for f in range(files):
        with gzip.open(os.path.join(directory, f"c4-{f:05d}.json.gz"), "wt") as out:
            for i in range(f * per_file, min((f + 1) * per_file, documents)):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 650)))
                out.write(json.dumps({"text": text, "url": f"https://example.com/{i}",
                                      "timestamp": "2019-04-21T10:00:00Z"}) + "\n")


def timed(argv: list[str]) -> tuple[float, float, float]:
    """Runs argv; returns (wall seconds, CPU seconds of its process tree, peak summed RSS in GB).

    Both are sampled every 20 ms over the whole process tree (both sides start worker processes;
    DataTrove's are its forkserver's children, which getrusage does not count), so CPU misses at
    most each process's last 20 ms.
    """
    start = time.monotonic()
    job = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root, peak, cpu = psutil.Process(job.pid), 0, {}
    while job.poll() is None:
        rss = 0
        with contextlib.suppress(psutil.Error):
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                    cpu[process.pid] = times.user + times.system  # the last sample of each process
        peak = max(peak, rss)
        time.sleep(0.02)
    wall = time.monotonic() - start
    if job.returncode:
        raise subprocess.CalledProcessError(job.returncode, argv)
    return wall, sum(cpu.values()), peak / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", help="keep the generated corpus in this directory and reuse it when there")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="throughput-")
    corpus = args.corpus or os.path.join(work, "c4")
    if not (args.corpus and os.path.isdir(corpus)):
        write_corpus(corpus, args.documents, args.files)
    script = os.path.join(work, "datatrove_job.py")
    with open(script, "w") as f:
        f.write(DATATROVE)
    gristmill = [sys.executable, "-m", "gristmill.cli", "score", "random", "--input", os.path.join(corpus, "*.json.gz")]
    sides = {
        "gristmill (1 process)": lambda out: gristmill + ["--output", out],
        "gristmill --workers 2": lambda out: gristmill + ["--output", out, "--workers", "2"],
        "datatrove (2 workers)": lambda out: [sys.executable, script, corpus, out, out + "-logs", str(args.files),
                                              "gzip"],
        "datatrove (2 workers, uncompressed output)": lambda out: [sys.executable, script, corpus, out, out + "-logs",
                                                                   str(args.files), "none"],
    }
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        for name, argv in sides.items():
            out = os.path.join(work, "out")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + "-logs", ignore_errors=True)
            runs[name].append(timed(argv(out)))
            wall, cpu, rss = runs[name][-1]
            print(f"round {round_ + 1}: {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.2f} GB", flush=True)
    median = {name: tuple(statistics.median(r[k] for r in rs) for k in range(3)) for name, rs in runs.items()}
    gzip_peer = median["datatrove (2 workers)"][0]
    plain_peer = median["datatrove (2 workers, uncompressed output)"][0]
    print("\n| side | median wall | CPU | peak RSS | documents/s | DataTrove gzip / this | "
          "DataTrove uncompressed / this |\n|---|---|---|---|---|---|---|")
    for name, (wall, cpu, rss) in median.items():
        print(f"| {name} | {wall:.1f} s | {cpu:.1f} s | {rss:.2f} GB | {args.documents / wall:,.0f} | "
              f"{gzip_peer / wall:.2f}x | {plain_peer / wall:.2f}x |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
