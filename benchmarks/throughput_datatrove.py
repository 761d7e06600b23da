"""gristmill against DataTrove on the simplest job: read C4-shaped JSON lines, add a hash score, write.

    python benchmarks/throughput_datatrove.py [--documents 200000] [--files 4] [--rounds 3]

The same input (N documents of about 2 KB in F gzip JSON-lines files) goes through
- gristmill `score random` in one process (the default in-process runner),
- gristmill `score random --workers 2` (Beam's multi-process local runner),
- DataTrove 0.10: JsonlReader -> a step adding a BLAKE2b score to the metadata -> JsonlWriter,
  F tasks on 2 workers (its LocalPipelineExecutor); its writer gzips by default, so it also runs
  with uncompressed output (gristmill writes uncompressed TFRecords).
Runs alternate, so each side sees the same background load; the median wall time of each and the
ratios (DataTrove's time / gristmill's: above 1 means gristmill is faster) are printed.
"""

from __future__ import annotations

import argparse
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


def timed(argv: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="throughput-")
    corpus = os.path.join(work, "c4")
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
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        for name, argv in sides.items():
            out = os.path.join(work, "out")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + "-logs", ignore_errors=True)
            times[name].append(timed(argv(out)))
            print(f"round {round_ + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    peer = median["datatrove (2 workers)"]
    for name, seconds in median.items():
        print(f"{name}: median {seconds:.1f} s, {args.documents / seconds:,.0f} documents/s, "
              f"DataTrove / this = {peer / seconds:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
