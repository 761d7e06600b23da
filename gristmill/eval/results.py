"""The experiment directory's layout and its results: rows per run and seed, means over seeds.

`gristmill experiment` (gristmill/experiment.py) writes an experiment directory; `gristmill
report` and the demo read it. Both go through this module: the file names, writing and reading
results.jsonl and experiment.json, `mean_over_seeds` (one row per run without its seed, checkpoint
and metric) and `compare_to_full` (is a sampler's final value beyond the seeds' spread from full
data's?).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from gristmill import io
from gristmill.eval import metrics
from gristmill.eval.grid import ExperimentError

EXPERIMENT_FILE = "experiment.json"
RESULTS_FILE = "results.jsonl"
SEED_RESULTS_FILE = "results_by_seed.jsonl"
EVAL_FILE = "eval.json"
PLAN_FILE = "plan.json"
TRAIN_DATA = os.path.join("data", "train.tfrecord")
HELDOUT_DATA = os.path.join("data", "c4_heldout.jsonl")
VOCAB_PATH = os.path.join("vocab", "spiece.model")
PERPLEXITY = "perplexity"


def metric_name(text_set: str) -> str:
    """The results' metric name of a text set's perplexity, e.g. `perplexity/c4_heldout`."""
    return f"{PERPLEXITY}/{text_set}"


def write_results(output: str, rows: Sequence[Mapping[str, Any]], name: str = RESULTS_FILE) -> None:
    """Writes OUTPUT/results.jsonl (or `name`) with all rows so far, atomically."""
    io.write_text(io.join(output, name), "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def _group_of(run: str, seed: Any) -> str:
    tail = os.sep + f"seed-{seed}"
    return run[:-len(tail)] if run.endswith(tail) else run


def mean_over_seeds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run without its seed, checkpoint, metric): value = mean over the seeds.

    Adds `std` (sample standard deviation, ddof=1; 0 for one seed), `min`, `max`, `values` and
    `seeds` (in seed order); `documents` is the mean too (IPS and random plans differ by seed).
    Rows of one seed pass through with std 0, so every consumer of results.jsonl reads one shape.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        run = _group_of(row["run"], row.get("seed"))
        groups.setdefault((run, row.get("step"), row["metric"]), []).append(row)
    out = []
    for (run, _, _), members in groups.items():
        members = sorted(members, key=lambda r: r.get("seed") or 0)
        values = np.asarray([float(r["value"]) for r in members])
        docs = [r["documents"] for r in members if r.get("documents") is not None]
        merged = {k: v for k, v in members[0].items() if k != "seed"}
        merged.update(run=run, value=float(values.mean()), std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                      min=float(values.min()), max=float(values.max()), values=values.tolist(),
                      seeds=[r.get("seed") for r in members],
                      documents=float(np.mean(docs)) if docs else None)
        out.append(merged)
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeedComparison:
    """A sampler's final value against full data's, over seeds: is the difference beyond the spread?"""

    model: str
    steps: int
    sampler: str
    rate: float
    metric: str
    mean: float
    std: float
    full_mean: float
    full_std: float
    seeds: int

    @property
    def difference(self) -> float:
        return self.mean - self.full_mean

    @property
    def within_spread(self) -> bool:
        """True when |mean - full mean| <= std + full std: the seeds cannot tell the two apart."""
        return abs(self.difference) <= self.std + self.full_std


def compare_to_full(rows: Sequence[Mapping[str, Any]]) -> list[SeedComparison]:
    """Each non-full run's final mean (rows of `mean_over_seeds`) against the full run of its size and steps."""
    finals = {}
    for row in rows:
        key = (row["model"], row.get("steps"), row["sampler"], float(row["rate"]), row["metric"])
        if key not in finals or (row.get("step") or 0) > (finals[key].get("step") or 0):
            finals[key] = row
    out = []
    for (model, steps, sampler, rate, metric), row in sorted(finals.items(), key=lambda kv: str(kv[0])):
        full = finals.get((model, steps, metrics.FULL, 1.0, metric))
        if sampler == metrics.FULL or full is None:
            continue
        out.append(SeedComparison(model=model, steps=steps, sampler=sampler, rate=rate, metric=metric,
                                  mean=row["value"], std=row.get("std", 0.0), full_mean=full["value"],
                                  full_std=full.get("std", 0.0), seeds=len(row.get("seeds") or [row.get("seed")])))
    return out


def read_results(output: str) -> list[dict[str, Any]]:
    """The rows of OUTPUT/results.jsonl."""
    path = io.join(output, RESULTS_FILE)
    if not io.exists(path):
        raise ExperimentError(f"{output}: no {RESULTS_FILE} (not an experiment directory?)")
    return [json.loads(line) for line in io.read_text(path).splitlines() if line.strip()]


def read_experiment(output: str) -> dict[str, Any]:
    """OUTPUT/experiment.json ({} when absent)."""
    path = io.join(output, EXPERIMENT_FILE)
    return io.read_json(path) if io.exists(path) else {}
