"""Peak memory and time of `gristmill select` as the corpus grows: an exact plan over N scored documents.

    python benchmarks/select_memory.py --documents 100000 400000 [--rule topk|ips|...] [--text_bytes 2000]
        [--workdir DIR]

Writes N C4-shaped records (about --text_bytes of text each, a uniform score in (0, 1]) as TFRecord
files of 50,000, runs `gristmill select --rule R --rate 0.2` on them in a child process and prints
the child's peak RSS (getrusage), wall time and the size of pass 1's columns files per N. Memory
should stay flat as N grows: pass 1 writes each unit's (score, uniform, tokens) columns to a small
file and the exact plan's passes read those files. GRISTMILL_PYTHONPATH runs another checkout
(e.g. a `git worktree` of an older commit) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import glob
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
                    "score/bench/uniform": 1.0 - rng.random()})))
    return os.path.join(directory, "*.tfrecord")


def run_select(pattern: str, output: str, rule: str) -> tuple[float, float]:
    """(peak RSS GB of the select process, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    env, cwd = dict(os.environ), None
    if os.environ.get("GRISTMILL_PYTHONPATH"):  # `-m` puts the working directory first on the path
        env["PYTHONPATH"] = cwd = os.environ["GRISTMILL_PYTHONPATH"]
    subprocess.run([sys.executable, "-m", "gristmill.cli", "select", "--input", pattern, "--output", output,
                    "--score", "score/bench/uniform", "--rule", rule, "--rate", "0.2"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    wall = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("note: an earlier child had a higher peak; run one size per process for exact numbers")
    return peak / 1024**2, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--rule", default="topk")
    parser.add_argument("--text_bytes", type=int, default=2000)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="select-memory-")
    for n in args.documents:
        corpus = os.path.join(work, f"corpus-{n}")
        pattern = write_corpus(corpus, n, args.text_bytes)
        output = os.path.join(work, f"select-{n}")
        peak, wall = run_select(pattern, output, args.rule)
        spilled = sum(os.path.getsize(p) for p in glob.glob(os.path.join(output, "versions", "*", "columns", "*")))
        print(f"select exact {args.rule}, {n:,} documents: peak RSS {peak:.2f} GB, {wall:.0f} s, "
              f"columns files {spilled / 1e6:.1f} MB", flush=True)
        shutil.rmtree(corpus)
        shutil.rmtree(os.path.join(work, f"select-{n}"))


if __name__ == "__main__":
    main()
