"""Runs every benchmark with its CPU defaults, one after another, and prints their tables.

    make bench            # installs the `ref` extra (PyTorch, transformers, sentence-transformers) first
    python benchmarks/run_all.py [--only NAME ...]

Each benchmark is its own script (see its docstring for GPU flags); this only sequences them so
they never share the machine's cores. Record what it prints in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = {
    "askllm_throughput": [],
    "density_throughput": [],
    "density_accuracy": [],
    "train_throughput": [],
    "askllm_hplt_auc": [],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    args = parser.parse_args()
    failed = []
    for name, extra in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        print(f"\n=== {name} ===", flush=True)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, os.path.join(HERE, f"{name}.py"), *extra],
                             env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
        print(f"--- {name}: exit {rc}, {time.monotonic() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
