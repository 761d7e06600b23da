"""Runs the CPU benchmark set, one after another, and prints each ratio with the peer's version.

    make bench            # installs the `ref` extra (PyTorch, transformers, sentence-transformers) first
    python benchmarks/run_all.py [--only NAME ...] [--results DIR]

The default set is the side-by-side CPU speed set (about 10-14 minutes on 2 shared cores):
Ask-LLM with SmolLM2-135M against HF transformers, MiniLM embeddings against
sentence-transformers, the Beam per-record overhead against a plain Beam pipeline (when
`benchmarks/beam_overhead.py` is there) and the density sketch throughput. `--only` also reaches
the longer or accuracy benchmarks (askllm_throughput, train_throughput, density_accuracy,
askllm_hplt_auc). Each benchmark is its own script; the side-by-side ones write JSON into
`--results`, from which `tables.py` renders the markdown tables of BENCHMARKS.md (written to
`DIR/tables.md` too). GPU: `benchmarks/gpu.sh`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tables  # noqa: E402

# name -> (arguments, writes JSON via --json)
CPU_SET = {
    "askllm_cpu": ([], True),
    "embedding_throughput": ([], True),
    "beam_overhead": ([], False),
    "density_throughput": (["--skip-embed"], False),
}
MORE = {
    "askllm_throughput": ([], False),
    "train_throughput": ([], False),
    "density_accuracy": ([], False),
    "askllm_hplt_auc": ([], False),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CPU_SET | MORE), help="run only these")
    parser.add_argument("--results", default="bench-results", help="where JSON results and tables.md go")
    args = parser.parse_args()
    os.makedirs(args.results, exist_ok=True)
    chosen = {n: v for n, v in (CPU_SET | MORE).items() if (n in args.only if args.only else n in CPU_SET)}
    failed, summary, started = [], [], time.monotonic()
    for name, (extra, writes_json) in chosen.items():
        script = os.path.join(HERE, f"{name}.py")
        if not os.path.exists(script):
            print(f"\n=== {name}: {script} not there, skipped", flush=True)
            continue
        out = os.path.join(args.results, f"{name}.json")
        cmd = [sys.executable, script, *extra] + (["--json", out] if writes_json else [])
        print(f"\n=== {name} ===", flush=True)
        start = time.monotonic()
        rc = subprocess.call(cmd, env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
        print(f"--- {name}: exit {rc}, {time.monotonic() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
        elif writes_json:
            with open(out) as f:
                summary += tables.summary_lines(json.load(f))
    rendered = tables.render(args.results)
    with open(os.path.join(args.results, "tables.md"), "w") as f:
        f.write(rendered + "\n")
    print(f"\n=== summary ({time.monotonic() - started:.0f} s in all; tables in {args.results}/tables.md) ===")
    for line in summary:
        print(line)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
