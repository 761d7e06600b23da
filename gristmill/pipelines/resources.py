"""Resource hints for the model step of a job: Dataflow's accelerator syntax, checked before submission.

Dataflow runs a transform that carries an `accelerator` resource hint on workers with that
accelerator, and the rest of the pipeline on ordinary workers ("right fitting"). The hint is the
same string Dataflow's `worker_accelerator` service option takes:

    type:nvidia-l4;count:1;install-nvidia-driver            one L4, driver installed by Dataflow
    type:nvidia-tesla-t4;count:2;install-nvidia-driver;use_nvidia_mps   two T4s shared through MPS
    type:tpu-v5-lite-podslice;topology:1x1                  a TPU v5e slice

Dataflow only reads the string once the job is submitted, so a typo would otherwise surface as a
failed job in the cloud; `parse_accelerator` rejects it on the submitting machine.
"""

from __future__ import annotations

import re
from typing import Any

from apache_beam.transforms import resources as beam_resources

TYPE, COUNT, TOPOLOGY, DRIVER, MPS = "type", "count", "topology", "install-nvidia-driver", "use_nvidia_mps"
_ORDER = (TYPE, COUNT, TOPOLOGY, DRIVER, MPS)
_FLAGS = (DRIVER, MPS)  # keys without a value (DRIVER may name a driver version: install-nvidia-driver:latest)
_TYPE_RE = re.compile(r"(nvidia|tpu)-[a-z0-9][a-z0-9-]*")
_TOPOLOGY_RE = re.compile(r"[1-9][0-9]*(x[1-9][0-9]*){1,2}")
_VERSION_RE = re.compile(r"[A-Za-z0-9._-]+")
EXAMPLE = "type:nvidia-l4;count:1;install-nvidia-driver"


class AcceleratorSpecError(ValueError):
    """An accelerator string Dataflow would not accept."""


def _fail(spec: str, reason: str) -> AcceleratorSpecError:
    return AcceleratorSpecError(f"bad accelerator {spec!r}: {reason} (expected e.g. {EXAMPLE!r})")


def _parts(spec: str) -> dict[str, str | None]:
    """'type:x;count:1;install-nvidia-driver' -> {'type': 'x', 'count': '1', 'install-nvidia-driver': None}."""
    parts: dict[str, str | None] = {}
    for raw in spec.split(";"):
        part = raw.strip()
        if not part:
            continue
        key, sep, value = (s.strip() for s in part.partition(":"))
        key = key.lower()
        if key not in _ORDER:
            raise _fail(spec, f"unknown option {key!r}; known: {', '.join(_ORDER)}")
        if key in parts:
            raise _fail(spec, f"{key!r} given twice")
        if key in _FLAGS:
            if key == MPS and sep:
                raise _fail(spec, f"{MPS} takes no value")
            if sep and not _VERSION_RE.fullmatch(value):
                raise _fail(spec, f"{DRIVER} takes an optional driver version, got {value!r}")
            parts[key] = value if sep else None
        else:
            if not value:
                raise _fail(spec, f"{key!r} needs a value ({key}:VALUE)")
            parts[key] = value
    return parts


def parse_accelerator(spec: str) -> str:
    """Checks a Dataflow accelerator string and returns it normalised (canonical order, no spaces).

    Rules: a `type` is required, `nvidia-*` or `tpu-*`. A GPU needs `count` (a positive integer)
    and `install-nvidia-driver` (without it the worker has no driver and the GPU is unusable);
    `use_nvidia_mps` is GPU-only. A TPU needs `topology` (e.g. 2x2) and takes no driver options.

        >>> parse_accelerator(" count:1; type:NVIDIA-L4 ;install-nvidia-driver")
        'type:nvidia-l4;count:1;install-nvidia-driver'
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _fail(str(spec), "empty")
    parts = _parts(spec)
    kind = (parts.get(TYPE) or "").lower()
    if not kind:
        raise _fail(spec, "no type (type:nvidia-l4, type:nvidia-tesla-t4, type:tpu-v5-lite-podslice, ...)")
    if not _TYPE_RE.fullmatch(kind):
        raise _fail(spec, f"type {kind!r} is neither an nvidia-* GPU nor a tpu-* TPU")
    parts[TYPE] = kind
    if COUNT in parts:
        count = parts[COUNT]
        if not re.fullmatch(r"[0-9]+", count) or int(count) < 1:
            raise _fail(spec, f"count must be a positive integer, got {count!r}")
        parts[COUNT] = str(int(count))
    if kind.startswith("nvidia-"):
        if COUNT not in parts:
            raise _fail(spec, "a GPU needs count:N")
        if DRIVER not in parts:
            raise _fail(spec, f"a GPU needs {DRIVER} (Dataflow installs no driver otherwise)")
        if TOPOLOGY in parts:
            raise _fail(spec, "topology is for TPUs only")
    else:
        if TOPOLOGY not in parts:
            raise _fail(spec, "a TPU needs topology:AxB (e.g. topology:2x2)")
        if not _TOPOLOGY_RE.fullmatch(parts[TOPOLOGY].lower()):
            raise _fail(spec, f"topology must look like 2x2 or 2x2x1, got {parts[TOPOLOGY]!r}")
        parts[TOPOLOGY] = parts[TOPOLOGY].lower()
        for gpu_only in (DRIVER, MPS):
            if gpu_only in parts:
                raise _fail(spec, f"{gpu_only} is for GPUs only")
    out = []
    for key in _ORDER:
        if key not in parts:
            continue
        value = parts[key]
        out.append(key if value is None else f"{key}:{value}")
    return ";".join(out)


def model_step_hints(accelerator: str | None, min_ram: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `PTransform.with_resource_hints(...)` on a job's model step.

    Empty when neither is given, so `step.with_resource_hints(**model_step_hints(None))` is a
    no-op. `min_ram` is Beam's syntax (e.g. "16GiB") and is checked by Beam's own parser.

        >>> model_step_hints("type:nvidia-l4;count:1;install-nvidia-driver", "16GiB")
        {'accelerator': 'type:nvidia-l4;count:1;install-nvidia-driver', 'min_ram': '16GiB'}
    """
    hints: dict[str, Any] = {}
    if accelerator is not None:
        hints["accelerator"] = parse_accelerator(accelerator)
    if min_ram is not None:
        try:
            beam_resources.parse_resource_hints({"min_ram": min_ram})
        except ValueError as err:
            raise ValueError(f"bad min_ram {min_ram!r}: expected a size such as 16GiB or 32GB") from err
        hints["min_ram"] = min_ram
    return hints
