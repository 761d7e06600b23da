"""The accelerator and the package versions of a `benchmarks/gpu.sh` run, as one JSON file.

    python benchmarks/gpu_device.py OUT/device.json [--smoke]

Exits 1 (after writing the file, with an "error") when JAX sees no GPU, unless --smoke.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
            "torch", "transformers", "sentence-transformers", "tokenizers", "safetensors", "sentencepiece", "numpy")


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _nvidia_smi() -> dict:
    fields = ("name", "driver_version", "memory.total", "clocks.max.sm", "power.limit")
    try:
        line = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    return dict(zip(("gpu", "driver", "memory", "max_sm_clock", "power_limit"), (v.strip() for v in line.split(","))))


def _torch() -> dict:
    try:
        import torch
    except ImportError as exc:
        return {"torch_error": str(exc)}
    out = {"torch_cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        out["torch_device"] = torch.cuda.get_device_name(0)
        out["cudnn"] = torch.backends.cudnn.version()
    return out


def describe() -> dict:
    """Device, driver and versions; ``error`` when JAX cannot start or sees no GPU."""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "executable": sys.executable, "packages": _versions()}
    try:
        import jax

        devices = jax.devices()
        info.update(device=devices[0].device_kind, platform=devices[0].platform, count=len(devices),
                    backend=jax.default_backend())
    except Exception as exc:  # no usable backend: say so, do not crash
        info["error"] = f"JAX could not start: {exc}"
    info.update(_nvidia_smi())
    info.update(_torch())
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--smoke", action="store_true", help="a CPU device is fine")
    args = parser.parse_args(argv)
    info = describe()
    if not args.smoke and "error" not in info and info.get("platform") != "gpu":
        info["error"] = (f"JAX sees {info.get('count')} {info.get('platform')} device(s), not a GPU (jaxlib "
                         f"without the CUDA plugin, or JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r})")
    if not args.smoke and info.get("torch_cuda_available") is False:
        info["warning"] = "torch sees no CUDA device: the PyTorch peers will fail"
    with open(args.path, "w") as f:
        json.dump(info, f, indent=1)
    shown = ("device", "count", "driver", "error", "warning")
    print(json.dumps({k: info[k] for k in shown if k in info}), flush=True)
    return 1 if "error" in info and not args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
