"""Peak memory and time of `gristmill select` as the corpus grows: exact top-k over N scored documents.

    python benchmarks/select_memory.py --documents 100000 400000 [--text_bytes 2000] [--workdir DIR]

Writes N C4-shaped records (about --text_bytes of text each, a uniform score) as TFRecord files
of 50,000, runs `gristmill select --rule topk --rate 0.2` on them in a child process and prints
the child's peak RSS (getrusage) and wall time per N. Memory should stay flat as N grows: pass 1
keeps only (id, score, tokens) rows and the exact plan is found by histogram passes.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from gristmill import records

PER_FILE = 50_000
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no will").split()


def write_corpus(directory: str, documents: int, text_bytes: int, seed: int = 0) -> str:
    """N records in TFRecord files of PER_FILE; returns their glob."""
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    for start in range(0, documents, PER_FILE):
        path = os.path.join(directory, f"part-{start // PER_FILE:05d}.tfrecord")
        with open(path, "wb") as f:
            for i in range(start, min(start + PER_FILE, documents)):
                words, size = [], 0
                while size < text_bytes:
                    words.append(rng.choice(WORDS))
                    size += len(words[-1]) + 1
                f.write(records.encode_tfrecord(records.serialize({
                    "id": f"{i:032x}", "text": " ".join(words), "url": f"https://example.com/{i}",
                    "score/bench/uniform": rng.random()})))
    return os.path.join(directory, "*.tfrecord")


def run_select(pattern: str, output: str) -> tuple[float, float]:
    """(peak RSS GB of the select process, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "gristmill.cli", "select", "--input", pattern, "--output", output,
                    "--score", "score/bench/uniform", "--rule", "topk", "--rate", "0.2"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("note: an earlier child had a higher peak; run one size per process for exact numbers")
    return peak / 1024**2, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--text_bytes", type=int, default=2000)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="select-memory-")
    for n in args.documents:
        corpus = os.path.join(work, f"corpus-{n}")
        pattern = write_corpus(corpus, n, args.text_bytes)
        peak, wall = run_select(pattern, os.path.join(work, f"select-{n}"))
        print(f"select exact topk, {n:,} documents: peak RSS {peak:.2f} GB, {wall:.0f} s", flush=True)
        shutil.rmtree(corpus)
        shutil.rmtree(os.path.join(work, f"select-{n}"))


if __name__ == "__main__":
    main()
