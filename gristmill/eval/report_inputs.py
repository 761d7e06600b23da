"""What `gristmill report` reads: scored records with their facts, the jobs' manifests behind them,
the experiment's run states, selection plans and held-out split.

Readers only (local or gs:// through `gristmill.io`); what the page shows from them is computed by
the pure functions of `report_sections` and `report`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

from gristmill import io, records, sampling
from gristmill.eval import report_sections as sections
from gristmill.eval import scores as scores_lib

FULL = sections.FULL


def read_documents(spec: Optional[str]) -> tuple[scores_lib.ScoreTable, sections.DocumentFacts]:
    """The score table and the facts of scored records (comma-separated directories or globs), in one pass."""
    builder = sections.FactsBuilder()

    def tee():
        for part in (p.strip() for p in str(spec or "").split(",") if p.strip()):
            for record in records.iter_scored_records(part):
                builder.add(record)
                yield record

    table = scores_lib.score_table(tee())
    return table, builder.build()


# --- the jobs behind the records -------------------------------------------------------------

def _has_manifest(directory: str, cache: dict[str, bool]) -> bool:
    if directory not in cache:
        cache[directory] = bool(directory) and io.exists(io.join(directory, records.MANIFEST_FILE))
    return cache[directory]


def output_dir_of(path: str, cache: Optional[dict[str, bool]] = None, levels: int = 3) -> Optional[str]:
    """The gristmill output directory holding a path (itself or one of its `levels` parents with a
    manifest.json), or None."""
    cache = {} if cache is None else cache
    current = str(path).rstrip("/")
    for _ in range(levels + 1):
        if _has_manifest(current, cache):
            return current
        parent = io.dirname(current)
        if not parent or parent == current:
            return None
        current = parent
    return None


def _key(path: str) -> str:
    """A directory as one spelling: gs:// as it is, a local path absolute (manifests list inputs absolute)."""
    return path.rstrip("/") if io.is_remote(path) else os.path.abspath(path)


def _read_manifest(path: str) -> Optional[dict[str, Any]]:
    """A manifest.json as a dict, or None when it cannot be read (the page then leaves that job out)."""
    try:
        manifest = io.read_json(path)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def find_stages(specs: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(output directory, manifest) of every job behind the scored records: the directories the specs
    name (or hold the files of), the jobs upstream of them through each manifest's `inputs`, and,
    after them, the sibling jobs that read any of those outputs (a `select` over the scores)."""
    cache: dict[str, bool] = {}
    starts = []
    for spec in specs:
        spec = str(spec).strip()
        if not spec:
            continue
        if any(c in spec for c in "*?["):
            found = io.glob(spec, allow_empty=True)
            owner = output_dir_of(found[0], cache) if found else None
        else:
            owner = output_dir_of(spec, cache, levels=0 if io.is_dir(spec) else 3)
        if owner:
            starts.append(_key(owner))
    manifests: dict[str, dict[str, Any]] = {}
    order: list[str] = []

    def visit(directory: str) -> None:
        if _key(directory) in manifests:
            return
        manifest = _read_manifest(io.join(directory, records.MANIFEST_FILE))
        if manifest is None:
            return
        manifests[_key(directory)] = manifest
        for item in manifest.get("inputs", []):
            owner = output_dir_of(str(item.get("path", "")), cache)
            if owner:
                visit(_key(owner))
        order.append(directory)

    for start in starts:
        visit(start)
    chain = {_key(d) for d in order}
    downstream, seen = [], set(chain)
    for parent in sorted({io.dirname(d.rstrip("/")) for d in order}):
        for path in io.glob(io.join(parent, "*", records.MANIFEST_FILE), allow_empty=True):
            directory = _key(io.dirname(path))
            if directory in seen:
                continue
            seen.add(directory)
            manifest = _read_manifest(path)
            if manifest is None:
                continue
            owners = {output_dir_of(str(i.get("path", "")), cache) for i in manifest.get("inputs", [])}
            if any(o and _key(o) in chain for o in owners):
                downstream.append((directory, manifest))
    return [(d, manifests[_key(d)]) for d in order] + downstream


# --- the experiment --------------------------------------------------------------------------

def run_states(experiment_dir: str, runs: Sequence[str]) -> dict[str, str]:
    """Each planned run's state: `finished` (eval.json written), `unfinished` (its directory exists
    without one: failed, or still running) or `not started`."""
    from gristmill.eval import results as experiment_lib

    states = {}
    for run in runs:
        directory = io.join(experiment_dir, run)
        if io.exists(io.join(directory, experiment_lib.EVAL_FILE)):
            states[run] = "finished"
        elif io.exists(directory) or io.is_dir(directory):
            states[run] = "unfinished"
        else:
            states[run] = "not started"
    return states


def read_plans(experiment_dir: str, status: Mapping[str, Any], base_dir: Optional[str]
               ) -> list[tuple[str, str, sampling.Plan]]:
    """(sampler, displayed path, plan) of each sampled grid cell's lowest seed with a plan.json; a
    sampler and rate trained at several model sizes share one plan, read once."""
    from gristmill.eval import results as experiment_lib

    found, seen = [], set()
    for group in status.get("groups", []):
        tail = io.basename(group["group"].replace(os.sep, "/"))
        if tail == FULL or tail in seen:
            continue
        for seed in sorted(group["seeds_planned"]):
            run = group["runs"][seed]
            path = io.join(experiment_dir, run, experiment_lib.PLAN_FILE)
            if io.exists(path):
                plan = sampling.Plan.from_json(io.read_bytes(path))
                sampler = tail[:-len(f"-{plan.rate:g}")] if tail.endswith(f"-{plan.rate:g}") else tail
                found.append((sampler, sections.display_path(path, base_dir), plan))
                seen.add(tail)
                break
    return found


def heldout_ids(experiment_dir: str) -> set[str]:
    """The ids of the experiment's held-out split (data/c4_heldout.jsonl; empty when absent)."""
    from gristmill.eval import results as experiment_lib

    path = io.join(experiment_dir, experiment_lib.HELDOUT_DATA)
    if not io.exists(path):
        return set()
    return {json.loads(line)["id"] for line in io.read_text(path).splitlines() if line.strip()}


