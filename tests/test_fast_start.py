"""Flags are parsed and usage errors reported before TensorFlow or JAX is imported (issue 18.7)."""

import subprocess
import sys

import pytest

_PROBE = """
import sys
from gristmill import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
heavy = sorted(m for m in ("tensorflow", "jax") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("argv, code", [
    (["score", "random", "--help"], 0),
    (["score", "random", "--input", "x.jsonl", "--output", "out", "--unit_records", "0"], 2),
    (["score", "random", "--input", "x.jsonl", "--ouptut", "out"], 2),
    (["select", "--help"], 0),
    (["--help"], 0),
])
def test_usage_before_heavy_imports(argv, code):
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert "HEAVY=\n" in done.stderr or done.stderr.endswith("HEAVY="), done.stderr[-500:]
    if code == 2:
        assert "error" in done.stderr.splitlines()[0]
