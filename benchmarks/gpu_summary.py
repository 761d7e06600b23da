"""One JSON summary of a `benchmarks/gpu.sh` run: every step's status and headline numbers.

    python benchmarks/gpu_summary.py gpu-results

Ask-LLM rows carry docs/s per side, the ratio to HF eager and the fraction of the chip's dense
bf16 peak (`gristmill.training.metrics.PEAK_TFLOPS`); embedding rows the docs/s ratio; the
training step the last table line of `train_throughput.py` (its MFU column).
"""

from __future__ import annotations

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def peak_tflops(device_kind: str):
    """Dense bf16 peak of a device kind from the training metrics table, or None."""
    from gristmill.training.metrics import PEAK_TFLOPS

    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_kind.lower():
            return PEAK_TFLOPS[key]
    return None


def summarize(out_dir: str) -> dict:
    """The summary dict of the results in `out_dir` (missing pieces become nulls, never errors)."""
    device = _load(os.path.join(out_dir, "device.json")) or {}
    peak = peak_tflops(device.get("device", ""))
    summary = {"device": device, "peak_bf16_tflops": peak, "steps": {}}
    for status_path in sorted(glob.glob(os.path.join(out_dir, "*.status.json"))):
        status = _load(status_path) or {}
        name = status.get("step", os.path.basename(status_path).split(".")[0])
        entry = {"rc": status.get("rc"), "seconds": status.get("seconds"),
                 "timed_out": status.get("rc") in (124, 137)}
        result = _load(os.path.join(out_dir, f"{name}.json"))
        if result and result.get("benchmark") == "askllm_throughput":
            entry.update({k: result.get(k) for k in ("preset", "attention_impl", "batch_size", "ratio",
                                                      "max_abs_logprob_diff", "buckets_measured")})
            for side in ("jax", "torch"):
                if side in result:
                    entry[f"{side}_docs_per_s"] = result[side]["docs_per_s"]
                    entry[f"{side}_tflops"] = result[side]["tflops"]
                    if peak:
                        entry[f"{side}_fraction_of_peak"] = result[side]["tflops"] / peak
        elif result and result.get("benchmark") == "embedding_throughput":
            entry["rows"] = [{k: row[k] for k in ("dtype", "gristmill_docs_per_s", "peer_docs_per_s", "ratio",
                                                   "min_cosine_vs_peer")} for row in result["rows"]]
        log = os.path.join(out_dir, f"{name}.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                lines = [line.rstrip() for line in f if line.strip()]
            entry["log_tail"] = lines[-3:]
        summary["steps"][name] = entry
    return summary


if __name__ == "__main__":
    print(json.dumps(summarize(sys.argv[1] if len(sys.argv) > 1 else "gpu-results"), indent=1))
