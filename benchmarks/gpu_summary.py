"""The results of a `benchmarks/gpu.sh` run as at most three files: summary.json, summary.txt and
steps.tar.gz (every step's log, status and JSON), beside the device.json that gpu.sh wrote.

    python benchmarks/gpu_summary.py WORK_DIR RESULTS_DIR [--deadline 330 --elapsed 200 --smoke]

Per step: its state (ok, failed, timed_out, cut by the deadline), then its numbers: Ask-LLM docs/s
and tokens/s of every attention implementation and of the PyTorch peer, each one's ratio to the
peer and fraction of the chip's dense bf16 peak (`gristmill.training.metrics.PEAK_TFLOPS`), the
length buckets' gain; training tokens/s and MFU; embedding docs/s and ratio to
sentence-transformers. On a GPU the summary also checks the targets of issue 19.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tarfile
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (step, what, key in the step summary, target): met when the value is at least the target
TARGETS = (("askllm_xl", "Ask-LLM FLAN-T5-XL shape, bf16, seq 512: documents/s", "best_docs_per_s", 450.0),
           ("askllm_xl", "... fraction of the chip's dense bf16 peak", "best_fraction_of_peak", 0.70),
           ("askllm_xl", "... ratio to HF transformers eager bf16", "best_ratio_vs_torch", 3.5),
           ("train_large", "T5-Large training MFU", "mfu", 0.45))


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def peak_tflops(device_kind: str) -> Optional[float]:
    """Dense bf16 peak of a device kind from the training metrics table, or None."""
    try:
        from gristmill.training.metrics import PEAK_TFLOPS
    except ImportError:  # no JAX: nothing ran, and the summary still says why
        return None

    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_kind.lower():
            return PEAK_TFLOPS[key]
    return None


def _fraction(tflops: Optional[float], peak: Optional[float]) -> Optional[float]:
    return tflops / peak if tflops is not None and peak else None


def _rate(entry: dict, peak: Optional[float]) -> dict:
    if "docs_per_s" not in entry:
        return {k: entry[k] for k in ("error", "skipped") if k in entry}
    out = {k: entry.get(k) for k in ("docs_per_s", "tokens_per_s", "tflops", "ratio_vs_torch") if k in entry}
    out["fraction_of_peak"] = _fraction(entry.get("tflops"), peak)
    return out


def askllm_summary(result: dict, peak: Optional[float]) -> dict:
    out = {k: result.get(k) for k in ("preset", "dtype", "seq_len", "batch_size", "params", "gflop_per_doc",
                                      "max_abs_logprob_diff", "done") if k in result}
    for impl, entry in result.get("impls", {}).items():
        out[f"jax_{impl}"] = _rate(entry, peak)
    if "torch" in result:
        out["torch"] = _rate(result["torch"], peak)
    measured = [v for k, v in out.items() if k.startswith("jax_") and "docs_per_s" in v]
    if measured:
        best = max(measured, key=lambda v: v["docs_per_s"])
        out["best_docs_per_s"] = best["docs_per_s"]
        out["best_fraction_of_peak"] = best["fraction_of_peak"]
        out["best_ratio_vs_torch"] = best.get("ratio_vs_torch")
    buckets = result.get("buckets")
    if buckets:
        out["buckets"] = {"buckets": buckets.get("buckets"), "measured": buckets.get("measured", {}),
                          "padded_tokens_vs_pad_all": {
                              k: v["tokens"] / buckets["policies"][k.rsplit("/", 1)[0] + "/max"]["tokens"]
                              for k, v in buckets.get("policies", {}).items() if not k.endswith("/max")}}
    return out


def train_summary(result: dict, peak: Optional[float]) -> dict:
    keys = ("size", "params", "dtype", "batch", "lengths", "step_ms", "tokens_per_s", "tflops", "mfu", "warmup_s")
    rows = [{k: row.get(k) for k in keys} | {"fraction_of_peak": _fraction(row.get("tflops"), peak)}
            for row in result.get("rows", [])]
    out = {"rows": rows, "done": result.get("done")}
    if rows:
        out["mfu"] = rows[-1]["mfu"]
        out["tokens_per_s"] = rows[-1]["tokens_per_s"]
    return out


def embedding_summary(result: dict, peak: Optional[float]) -> dict:
    keys = ("dtype", "gristmill_docs_per_s", "peer_docs_per_s", "ratio", "min_cosine_vs_peer")
    return {"model": result.get("model"), "docs": result.get("docs"), "done": result.get("done"),
            "rows": [{k: row.get(k) for k in keys} for row in result.get("rows", [])]}


SUMMARIES = {"askllm_throughput": askllm_summary, "train_throughput": train_summary,
             "embedding_throughput": embedding_summary}


def summarize(work_dir: str, device: Optional[dict] = None, **run) -> dict:
    """The summary dict of the step files in `work_dir` (missing pieces become nulls, never errors)."""
    device = device or {}
    peak = peak_tflops(device.get("device", ""))
    summary = {"device": {k: device.get(k) for k in ("device", "count", "driver", "gpu", "memory", "error")
                          if k in device},
               "peak_bf16_tflops": peak, **run, "steps": {}}
    statuses = [_load(p) or {} for p in glob.glob(os.path.join(work_dir, "*.status.json"))]
    for status in sorted(statuses, key=lambda s: s.get("order", 0)):
        name = status.get("step")
        if not name:
            continue
        entry = {k: status.get(k) for k in ("state", "rc", "seconds", "limit_s", "note") if k in status}
        result = _load(os.path.join(work_dir, f"{name}.json"))
        if result and result.get("benchmark") in SUMMARIES:
            entry.update(SUMMARIES[result["benchmark"]](result, peak))
        log = os.path.join(work_dir, f"{name}.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                lines = [line.rstrip() for line in f if line.strip() and "it/s]" not in line]
            entry["log_tail"] = lines[-3:]
        summary["steps"][name] = entry
    if device.get("platform") == "gpu":
        summary["targets"] = [
            {"what": what, "target": target, "value": summary["steps"].get(step, {}).get(key),
             "met": (summary["steps"].get(step, {}).get(key) or 0) >= target}
            for step, what, key, target in TARGETS]
    return summary


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def text(summary: dict) -> str:
    """A few readable lines of the summary."""
    d = summary.get("device", {})
    lines = [f"device: {d.get('device')} x{d.get('count')} driver {d.get('driver')}; dense bf16 peak "
             f"{summary.get('peak_bf16_tflops')} TFLOP/s; elapsed {summary.get('elapsed_s')} s of "
             f"{summary.get('deadline_s')} s" + (" (SMOKE: CPU, tiny shapes)" if summary.get("smoke") else "")]
    if d.get("error"):
        lines.append(f"device error: {d['error']}")
    for name, s in summary["steps"].items():
        note = f" ({s['note']})" if s.get("note") else ""
        lines.append(f"{name}: {s.get('state')} after {s.get('seconds')} s{note}")
        for key, v in s.items():
            if key.startswith("jax_") or key == "torch":
                if "docs_per_s" in v:
                    lines.append(f"  {key:10s} {v['docs_per_s']:10.2f} docs/s {_num(v.get('tokens_per_s'), '12,.0f')} "
                                 f"tokens/s {_num(v.get('tflops'), '8.2f')} TFLOP/s, peak fraction "
                                 f"{_num(v.get('fraction_of_peak'), '.3f')}"
                                 + (f", vs torch {_num(v.get('ratio_vs_torch'), '.2f')}x" if key != "torch" else ""))
                else:
                    lines.append(f"  {key:10s} {v.get('skipped') or v.get('error')}")
        for policy, v in s.get("buckets", {}).get("measured", {}).items():
            lines.append(f"  buckets {policy:8s} {v['docs_per_s']:10.2f} docs/s, "
                         f"{_num(v.get('gain_vs_max'), '.2f')}x vs pad-all")
        for row in s.get("rows", []):
            if "mfu" in row:
                lines.append(f"  {row['size']} {row['dtype']} batch {row['batch']} {row['lengths']}: "
                             f"{_num(row['tokens_per_s'], ',.0f')} tokens/s, {_num(row['tflops'], '.2f')} TFLOP/s, "
                             f"MFU {_num(row['mfu'], '.3f')}")
            else:
                lines.append(f"  {row['dtype']}: gristmill {_num(row['gristmill_docs_per_s'], '.1f')} docs/s, peer "
                             f"{_num(row['peer_docs_per_s'], '.1f')} docs/s, {_num(row['ratio'], '.2f')}x, "
                             f"min cosine {_num(row['min_cosine_vs_peer'], '.5f')}")
    for t in summary.get("targets", []):
        lines.append(f"target {t['what']}: {_num(t['value'], '.3f')} (>= {t['target']}) "
                     + ("met" if t["met"] else "NOT met"))
    return "\n".join(lines)


def write(work_dir: str, results_dir: str, **run) -> dict:
    """Writes summary.json, summary.txt and steps.tar.gz into `results_dir`; returns the summary."""
    summary = summarize(work_dir, _load(os.path.join(results_dir, "device.json")), **run)
    for name, data in (("summary.json", json.dumps(summary, indent=1)), ("summary.txt", text(summary) + "\n")):
        with open(os.path.join(results_dir, name + ".tmp"), "w") as f:
            f.write(data)
        os.replace(os.path.join(results_dir, name + ".tmp"), os.path.join(results_dir, name))
    with tarfile.open(os.path.join(results_dir, "steps.tar.gz.tmp"), "w:gz") as tar:
        for path in sorted(glob.glob(os.path.join(work_dir, "*"))):
            tar.add(path, arcname=os.path.join("steps", os.path.basename(path)))
    os.replace(os.path.join(results_dir, "steps.tar.gz.tmp"), os.path.join(results_dir, "steps.tar.gz"))
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir")
    parser.add_argument("results_dir")
    parser.add_argument("--deadline", type=int)
    parser.add_argument("--elapsed", type=int)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--print", action="store_true", help="print the text summary")
    args = parser.parse_args(argv)
    summary = write(args.work_dir, args.results_dir, deadline_s=args.deadline, elapsed_s=args.elapsed,
                    smoke=args.smoke)
    if args.print:
        print(text(summary), flush=True)


if __name__ == "__main__":
    main()
