"""Every benchmark module imports without the packages the accelerator machine lacks (issue 19):
Beam, TensorFlow and gguf for all of them; for what `benchmarks/gpu.sh` runs, also the model
wheels and the Cloud Storage client, with the gristmill modules those steps import lazily."""

import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "benchmarks")
ALL = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(BENCHMARKS, "*.py")))
GPU_STEPS = ["askllm_throughput", "train_throughput", "embedding_throughput", "gpu_device", "gpu_summary",
             "gristmill.models.t5", "gristmill.models.batching", "gristmill.models.tokenizers",
             "gristmill.scoring.embeddings", "gristmill.training.step", "gristmill.training.metrics"]


def _import_blocked(modules, absent) -> None:
    """Imports `modules` in a fresh interpreter where every name in `absent` is not installed."""
    code = f"""
import importlib, importlib.util, sys
sys.path[:0] = [{BENCHMARKS!r}, {os.path.join(BENCHMARKS, "gpu_absent")!r}, {REPO!r}]
from absent import block
block({tuple(absent)!r})
for name in {tuple(absent)!r}:
    assert importlib.util.find_spec(name) is None, name
    try:
        importlib.import_module(name)
        raise AssertionError(name + " is importable")
    except ImportError:
        pass
for module in {list(modules)!r}:
    importlib.import_module(module)
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]


def test_every_benchmark_module_imports_without_beam_tensorflow_gguf():
    assert {"askllm_throughput", "train_throughput", "embedding_throughput", "gpu_summary"} <= set(ALL)
    _import_blocked(ALL, ("apache_beam", "tensorflow", "gguf"))


def test_gpu_steps_import_with_everything_the_accelerator_machine_lacks():
    sys.path.insert(0, os.path.join(BENCHMARKS, "gpu_absent"))
    try:
        from absent import ABSENT  # the module only defines; blocking happens in the subprocess
    finally:
        sys.path.pop(0)
    _import_blocked(GPU_STEPS, ABSENT)
