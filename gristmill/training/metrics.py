"""Per-step training metrics and the writers they go to (one interface: JSON lines, log lines).

`StepRecorder` turns the train step's metrics into one record per step (loss, learning rate,
tokens/s, MFU, epoch, ...) and hands it to every `MetricsWriter`: `JsonlWriter` appends it to
OUTPUT/metrics.jsonl, `LogWriter` prints a progress line every few steps.

Step time is the time between consecutive steps' metrics becoming available on the host, so it
includes everything the step waited for (input pipeline, checkpoints); the first step after a
(re)start includes compilation and is left out of the means.

MFU = FLOPs per step / step time / (peak FLOP/s per device x devices), with FLOPs per row from
`model.flops_per_sequence` (6N per token + attention) and the peak from `--peak_tflops` or the
`PEAK_TFLOPS` table (dense bf16); on CPU and unknown devices the MFU is null. tokens/s counts
input tokens (batch x inputs_length), the paper's convention (1024 x 512 per step).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any, Mapping, Optional, Protocol, Sequence

import jax
import numpy as np

from gristmill.training.configs import TrainError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

# Dense bfloat16 peak TFLOP/s per chip, matched as a substring of `jax.Device.device_kind`
# (longest key first). Vendor datasheets; SXM parts for NVIDIA unless named.
PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "H800": 989.0,
    "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L4": 121.0, "V100": 125.0,  # V100: fp16
    "TPU v2": 45.0, "TPU v3": 123.0, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
    "TPU v5": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}


def peak_flops_per_device(device: Any = None, peak_tflops: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s of one device: ``peak_tflops`` if given, else `PEAK_TFLOPS` by device kind, else None."""
    if peak_tflops:
        return peak_tflops * 1e12
    kind = getattr(device or jax.devices()[0], "device_kind", "")
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in kind.lower():
            return PEAK_TFLOPS[key] * 1e12
    return None


class MetricsWriter(Protocol):
    """Where step records go. ``flush`` is called at every checkpoint and makes the records so far durable."""

    def write(self, record: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """One JSON object per line in ``path``, keeping the lines of an earlier run up to ``resume_step``.

    A local file is appended to and flushed line by line. Object stores (gs://) cannot append, so
    there the lines go to a local copy that `flush` uploads whole (atomically), at every
    checkpoint; a run resumed from a checkpoint drops later lines anyway.
    """

    def __init__(self, path: str, resume_step: int = 0):
        from gristmill import io  # here, not at import: the benchmarks use this module without Cloud Storage

        self.path = str(path)
        kept = []
        if io.exists(self.path):
            kept = [line + "\n" for line in io.read_text(self.path).splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        self._remote = io.is_remote(self.path)
        if self._remote:
            self._tmp = tempfile.TemporaryDirectory(prefix="gristmill-metrics-")
            local = os.path.join(self._tmp.name, io.basename(self.path))
        else:
            io.makedirs(io.dirname(self.path))
            local = self.path
        with open(local, "w", encoding="utf-8") as f:
            f.writelines(kept)
        self._local = local
        self._file = open(local, "a", encoding="utf-8")
        if self._remote:
            self.flush()

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one record."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def flush(self) -> None:
        """Uploads the file when it lives in an object store (local files are always current)."""
        self._file.flush()
        if self._remote:
            from gristmill import io

            with open(self._local, "rb") as f:
                io.atomic_write(self.path, f.read())

    def close(self) -> None:
        """Flushes and closes; writing after this is an error."""
        if self._file.closed:
            return
        self.flush()
        self._file.close()
        if self._remote:
            self._tmp.cleanup()


class LogWriter:
    """A progress line (loss, accuracy, learning rate, tokens/s, MFU, epoch) every ``every`` steps and at the end."""

    def __init__(self, total_steps: int, every: int, logger: logging.Logger = log):
        self.total_steps, self.every, self.logger = total_steps, every, logger

    def write(self, record: Mapping[str, Any]) -> None:
        """Logs the record when its step is a multiple of ``every`` or the last one."""
        step = record["step"]
        if step % self.every and step != self.total_steps:
            return
        mfu = f" MFU {100 * record['mfu']:.1f}%" if record.get("mfu") is not None else ""
        epoch = f"{record['epoch']:.2f}" if record.get("epoch") is not None else str(record.get("data_epoch"))
        self.logger.info("step %d/%d loss %.4f acc %.3f lr %.2e %.0f tok/s%s epoch %s", step, self.total_steps,
                         record["loss"], record["accuracy"], record["learning_rate"], record["tokens_per_second"],
                         mfu, epoch)

    def flush(self) -> None:
        """Nothing to flush: log lines are written at once."""

    def close(self) -> None:
        """Nothing to close."""


class StepRecorder:
    """Turns each step's metrics into one record (see the module docstring) and writes it to every writer.

    Refuses a non-finite loss (TrainError) so a diverged run stops at the step it diverged.
    """

    def __init__(self, writers: Sequence[MetricsWriter], *, start_step: int, tokens_per_step: int,
                 flops_per_step: float, peak_flops: Optional[float], devices: int):
        self.writers, self.start_step = list(writers), start_step
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.peak = peak_flops * devices if peak_flops else None
        self.throughput: list[float] = []
        self.mfus: list[float] = []
        self.last: dict[str, Any] = {}
        self.t_start = self.t_prev = time.monotonic()

    def __call__(self, step: int, metrics: Any, position: Mapping[str, Any], epochs: Optional[float]) -> dict[str, Any]:
        """Records step ``step`` (its device metrics, the data position after it, epochs read); returns the record."""
        values = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(values["loss"]):
            raise TrainError(f"loss is {values['loss']} at step {step}; resume from an earlier checkpoint with "
                             "another learning rate or seed")
        now = time.monotonic()
        seconds, self.t_prev = now - self.t_prev, now
        first = step == self.start_step + 1
        out = {"step": step, **values, "step_time_s": seconds, "tokens_per_second": self.tokens_per_step / seconds,
               "mfu": self.flops_per_step / seconds / self.peak if self.peak else None,
               "tokens_seen": step * self.tokens_per_step, "epoch": epochs, "data_epoch": position["epoch"],
               "includes_compile": first, "elapsed_s": now - self.t_start}
        if not first:
            self.throughput.append(out["tokens_per_second"])
            if out["mfu"] is not None:
                self.mfus.append(out["mfu"])
        for writer in self.writers:
            writer.write(out)
        self.last = out
        return out

    def flush(self) -> None:
        """Flushes every writer (called at each checkpoint)."""
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        """Closes every writer."""
        for writer in self.writers:
            writer.close()

    @property
    def mean_tokens_per_second(self) -> Optional[float]:
        """Mean tokens/s over the steps after the first (which includes compilation)."""
        return float(np.mean(self.throughput)) if self.throughput else None

    @property
    def mean_mfu(self) -> Optional[float]:
        """Mean MFU over the same steps; None without a known peak."""
        return float(np.mean(self.mfus)) if self.mfus else None
