"""The data of the report's experiment-level sections, as pure functions over what the report read.

`gristmill.eval.report` reads the inputs (experiment directory, scored records, manifests) and
calls these to fill its `ReportData`; its writers only render. Sections computed here:

- `run_status`: planned, finished, unfinished and never-started training runs, per grid cell
  the seeds planned and finished, and the skipped samplers with their reasons.
- `rate_curves`: the paper's headline plot, final metric value against sampling rate, one line
  per sampler, the full-data run as a horizontal reference.
- `selections` + `composition` + `threshold_documents`: what each selection plan of the
  experiment kept, by source file and URL host, tokens and lengths before and after, and the
  documents nearest its threshold.
- `thresholds`, `log_scales`: the plans' thresholds on each score histogram, and which scores
  span orders of magnitude (log-scale x).
- `coverage`: Ask-LLM score (quality) against Density score (coverage) per document, the
  documents each plan over those scores kept marked.
- `stage_summary` + `truncation`: pipeline health from the jobs' manifests.

The inputs are read by `report_inputs` (records, manifests, plans); nothing here does I/O.

Paths shown on the page go through `display_path` (relative to the report's directory), so a
report never prints a machine's absolute paths.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import urllib.parse
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from gristmill import io, records, sampling
from gristmill.eval import metrics
from gristmill.eval import scores as scores_lib

FULL = metrics.FULL
ASKLLM_PREFIX = "score/askllm/"
DENSITY_PREFIX = "score/density/"
TRUNCATED_PREFIX = "truncated/"
TOKENS_PREFIX = "tokens/"
LOG_SPAN = 1e3          # a positive score whose 99th / 1st percentile exceeds this is drawn on a log scale
MAX_POINTS = 20000      # scatter points drawn at most (a deterministic subsample beyond)
MARK_RATE = 0.2         # the scatter marks the selections at the grid's rate nearest this
NO_HOST, NO_SOURCE = "(no url)", "(no source)"
_SEED_DIR = re.compile(r"^(?P<group>.+)[/\\]seed-(?P<seed>-?\d+)$")


# --- paths -----------------------------------------------------------------------------------

def display_path(path: Optional[str], base_dir: Optional[str]) -> str:
    """A path as the page shows it: gs:// paths as they are; a file of the installed gristmill
    package as `gristmill/...`; any other local path relative to `base_dir` (the report's
    directory). Comma-separated lists are shown element by element; "" for None."""
    if not path:
        return ""
    path = str(path)
    if "," in path:
        return ",".join(display_path(p.strip(), base_dir) for p in path.split(",") if p.strip())
    if io.is_remote(path):
        return path
    full = os.path.abspath(path)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../gristmill
    if full == package or full.startswith(package + os.sep):
        return "gristmill/" + os.path.relpath(full, package).replace(os.sep, "/")
    if base_dir is None or io.is_remote(base_dir):
        return path if not os.path.isabs(path) else os.path.basename(path)
    return os.path.relpath(full, os.path.abspath(base_dir or ".")).replace(os.sep, "/")


# --- documents -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DocumentFacts:
    """Per document of a ScoreTable (same order): where it came from and how long it is.

    sources: the input file's base name; hosts: the URL's host (lowercase); chars: text length;
    proxy_tokens: `sampling.approx_token_count` of the text; tokens: `tokens/<tokenizer>` counts
    (-1 where absent); truncated: `truncated/<scorer>` flags (1 cut, 0 not, -1 absent).
    """

    sources: list[str]
    hosts: list[str]
    chars: np.ndarray
    proxy_tokens: np.ndarray
    tokens: dict[str, np.ndarray]
    truncated: dict[str, np.ndarray]


def host_of(url: str) -> str:
    """The lowercase host of a URL, or `(no url)`."""
    if not url:
        return NO_HOST
    try:
        host = urllib.parse.urlsplit(url if "//" in url else "//" + url).hostname
    except ValueError:
        host = None
    return host or NO_HOST


class FactsBuilder:
    """Accumulates DocumentFacts record by record (so records are read once, alongside the score table)."""

    def __init__(self):
        self.sources: list[str] = []
        self.hosts: list[str] = []
        self.chars: list[int] = []
        self.proxy: list[int] = []
        self.tokens: dict[str, dict[int, int]] = {}
        self.truncated: dict[str, dict[int, int]] = {}

    def add(self, record: Mapping[str, Any]) -> None:
        """Adds the next record's facts."""
        i = len(self.sources)
        text = str(record.get(records.TEXT, ""))
        source = record.get(records.SOURCE)
        self.sources.append(io.basename(str(source)) if source else NO_SOURCE)
        self.hosts.append(host_of(str(record.get(records.URL, "") or "")))
        self.chars.append(len(text))
        self.proxy.append(sampling.approx_token_count(text))
        for key, value in record.items():
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                if key.startswith(TOKENS_PREFIX):
                    self.tokens.setdefault(key, {})[i] = int(value)
                elif key.startswith(TRUNCATED_PREFIX):
                    self.truncated.setdefault(key, {})[i] = int(value)

    def build(self) -> DocumentFacts:
        """The facts of every record added, in order."""
        n = len(self.sources)

        def columns(found: dict[str, dict[int, int]]) -> dict[str, np.ndarray]:
            out = {}
            for name in sorted(found):
                column = np.full(n, -1, dtype=np.int64)
                column[list(found[name])] = list(found[name].values())
                out[name] = column
            return out

        return DocumentFacts(self.sources, self.hosts, np.asarray(self.chars, dtype=np.int64),
                             np.asarray(self.proxy, dtype=np.int64), columns(self.tokens), columns(self.truncated))


def document_facts(items: Iterable[Mapping[str, Any]]) -> DocumentFacts:
    """Collects the facts of records (in order): source, host, length, token counts, truncation flags."""
    builder = FactsBuilder()
    for record in items:
        builder.add(record)
    return builder.build()


# --- run status ------------------------------------------------------------------------------

def split_seed(run: str) -> tuple[str, Optional[int]]:
    """`runs/m-s40/askllm-0.2/seed-1` -> (`runs/m-s40/askllm-0.2`, 1); a run without a seed part -> (run, None)."""
    m = _SEED_DIR.match(run)
    return (m["group"], int(m["seed"])) if m else (run, None)


def run_status(info: Mapping[str, Any], states: Mapping[str, str]) -> dict[str, Any]:
    """Planned runs (experiment.json `runs`) by state, per grid cell, and the skipped samplers.

    states: run -> `finished` (its eval.json exists), `unfinished` (its directory exists but no
    eval.json: it failed, or is still running) or `not started`. `complete`: the experiment wrote
    its seed comparison, which it does after its last run.
    """
    runs = list(info.get("runs", []))
    default_seed = (info.get("seeds") or [info.get("config", {}).get("seed", 0)])[0]
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        group, seed = split_seed(run)
        entry = groups.setdefault(group, {"group": group, "seeds_planned": [], "seeds_finished": [],
                                          "seeds_unfinished": [], "runs": {}})
        seed = default_seed if seed is None else seed
        entry["seeds_planned"].append(seed)
        entry["runs"][seed] = run
        state = states.get(run, "not started")
        if state == "finished":
            entry["seeds_finished"].append(seed)
        elif state == "unfinished":
            entry["seeds_unfinished"].append(seed)
    for entry in groups.values():
        planned, done = len(entry["seeds_planned"]), len(entry["seeds_finished"])
        entry["seeds_not_started"] = [s for s in entry["seeds_planned"]
                                      if s not in entry["seeds_finished"] + entry["seeds_unfinished"]]
        entry["state"] = ("finished" if done == planned else "unfinished" if entry["seeds_unfinished"]
                          else "partly finished" if done else "not started")
    counts = {state: sum(1 for r in runs if states.get(r, "not started") == state)
              for state in ("finished", "unfinished", "not started")}
    return {"planned": len(runs), **{k.replace(" ", "_"): v for k, v in counts.items()},
            "complete": "seed_comparison" in info, "groups": list(groups.values()),
            "unfinished_runs": [r for r in runs if states.get(r) == "unfinished"],
            "skipped": dict(info.get("skipped_samplers", {}))}


def missing_from_results(status: Mapping[str, Any], table: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The grid cells and skipped samplers that have no row in the results table, each with why."""
    have = {(f"{r['model']}-s{r['steps']}", r["sampler"] if r["sampler"] == FULL else f"{r['sampler']}-{r['rate']:g}")
            for r in table}
    out = []
    for g in status.get("groups", []):
        parts = g["group"].replace("\\", "/").split("/")
        if len(parts) >= 3 and (parts[-2], parts[-1]) in have:
            continue
        done, planned = len(g["seeds_finished"]), len(g["seeds_planned"])
        out.append({"name": "/".join(parts[-2:]), "why": f"{done} of {planned} seeds finished ({g['state']})"})
    for name, reason in status.get("skipped", {}).items():
        out.append({"name": name, "why": f"skipped: {reason}"})
    return out


# --- the headline plot: metric against sampling rate ----------------------------------------

def rate_curves(table: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per metric, per (model, steps): the full-data value and each sampler's points (rate, value,
    std, seeds) sorted by rate, and the distinct rates, from the results table's final values."""
    out: dict[str, dict[tuple, dict[str, Any]]] = {}
    for row in table:
        for metric, value in row["values"].items():
            group = out.setdefault(metric, {}).setdefault((row["model"], row["steps"]), {
                "model": row["model"], "steps": row["steps"], "full": None, "full_std": None, "samplers": {}})
            std = row.get("spread", {}).get(metric)
            if row["sampler"] == FULL:
                group["full"], group["full_std"] = value, std
                continue
            group["samplers"].setdefault(row["sampler"], []).append(
                {"rate": row["rate"], "value": value, "std": std, "seeds": row.get("seeds", 1)})
    result = {}
    for metric in sorted(out):
        groups = []
        for group in out[metric].values():
            for points in group["samplers"].values():
                points.sort(key=lambda p: p["rate"])
            group["samplers"] = dict(sorted(group["samplers"].items()))
            group["rates"] = sorted({p["rate"] for points in group["samplers"].values() for p in points})
            groups.append(group)
        result[metric] = groups
    return result


def rate_note(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A note for the headline plot when the grid has a single sampling rate ("" otherwise)."""
    rates = sorted({r for groups in curves.values() for g in groups for r in g["rates"]})
    if len(rates) != 1:
        return ""
    return (f"This grid has one sampling rate ({100 * rates[0]:g}%), so each sampler is a single point; "
            f"add rates to the grid's \"rates\" to draw lines.")


def over_scaling_note(table: Sequence[Mapping[str, Any]]) -> str:
    """The one note that replaces the over-scaling column when the grid has a single model size ("" otherwise)."""
    sizes = sorted({r["model"] for r in table})
    if len(sizes) != 1:
        return ""
    return (f"Over-scaling compares a sampled model with the next larger model size trained on all the data "
            f"(the paper's T5-Small against T5-Base, and so on). This grid trains one size ({sizes[0]}), so there "
            f"is nothing to compare with: add a larger size to the grid's \"models\" to measure it.")


# --- selections ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Selection:
    """One selection plan over the report's documents.

    label: `<sampler> <rate>%`; path: where the plan is (as displayed); population: which
    documents of the table the plan was made over; kept: which of them it keeps.
    """

    label: str
    sampler: str
    rate: float
    seed: int
    path: str
    plan: sampling.Plan
    population: np.ndarray
    kept: np.ndarray


def selection_mask(plan: sampling.Plan, table: scores_lib.ScoreTable, population: np.ndarray) -> np.ndarray:
    """The documents of `population` the plan keeps (the same decision as training's, `sampling.keep_mask`)."""
    index = np.flatnonzero(population)
    ids = [table.ids[i] for i in index]
    scores = table.scores.get(plan.score_feature) if plan.score_feature else None
    if plan.score_feature and scores is None:
        raise sampling.SamplingError(f"no document has the plan's score feature {plan.score_feature!r}")
    kept = sampling.keep_mask(plan, ids, scores[index] if scores is not None else None)
    mask = np.zeros(len(table.ids), dtype=bool)
    mask[index[np.asarray(kept, dtype=bool)]] = True
    return mask


def selections(plans: Sequence[tuple[str, str, sampling.Plan]], table: scores_lib.ScoreTable,
               population: np.ndarray) -> tuple[list[Selection], list[str]]:
    """Applies each (sampler, displayed path, plan) to the population; returns the selections and a
    note per plan that could not be applied."""
    out, notes = [], []
    for sampler, path, plan in plans:
        try:
            kept = selection_mask(plan, table, population)
        except sampling.SamplingError as e:
            notes.append(f"{sampler}: {e}")
            continue
        out.append(Selection(f"{sampler} {100 * plan.rate:g}%", sampler, plan.rate, plan.seed, path, plan,
                             population, kept))
    return out, notes


def tokens_of(plan: sampling.Plan, facts: DocumentFacts) -> np.ndarray:
    """Token counts the way the plan counted them: its `tokens/<tokenizer>` feature, else the bytes / 4 proxy."""
    if plan.tokens_feature and plan.tokens_feature in facts.tokens:
        counts = facts.tokens[plan.tokens_feature]
        return np.where(counts >= 0, counts, facts.proxy_tokens)
    return facts.proxy_tokens


def _lengths(tokens: np.ndarray) -> dict[str, float]:
    if tokens.size == 0:
        return {"documents": 0, "tokens": 0, "mean_tokens": math.nan, "median_tokens": math.nan}
    return {"documents": int(tokens.size), "tokens": int(tokens.sum()), "mean_tokens": float(tokens.mean()),
            "median_tokens": float(np.median(tokens))}


def threshold_of(plan: sampling.Plan) -> tuple[Optional[float], str]:
    """The score a plan's decision turns on and what it means: top-k / bottom-k their threshold
    score; IPS the score whose keep probability is 50% (2c); random none."""
    rule = plan.rule
    if isinstance(rule, sampling.TopK):
        return rule.threshold_score, "keeps scores above it"
    if isinstance(rule, sampling.BottomK):
        return rule.threshold_score, "keeps scores below it"
    if isinstance(rule, sampling.IPS) and rule.c is not None:
        return 2 * rule.c, f"keep probability min(1, c / score) is 50% here (c = {rule.c:.4g})"
    return None, "ignores scores (a uniform random subset)"


def _top(names: Sequence[str], masks: Sequence[np.ndarray], base: np.ndarray, n: int) -> list[dict[str, Any]]:
    names = np.asarray(names, dtype=object)
    values, counts = np.unique(names[base], return_counts=True) if base.any() else ([], [])
    ranked = sorted(zip(values, counts), key=lambda vc: (-vc[1], vc[0]))
    top = [v for v, _ in ranked[:n]]
    rows = [{"name": v, "documents": int(c), "kept": [int(((names == v) & m).sum()) for m in masks], "other": False}
            for v, c in ranked[:n]]
    rest = base & ~np.isin(names, top)
    if rest.any():
        rows.append({"name": f"{len(ranked) - len(top)} others", "documents": int(rest.sum()),
                     "kept": [int((rest & m).sum()) for m in masks], "other": True})
    return rows


def composition(chosen: Sequence[Selection], facts: DocumentFacts, top: int = 10) -> dict[str, Any]:
    """What each selection kept from its population: documents, tokens and lengths before and
    after, and counts by source file and URL host (the `top` most frequent, then the rest)."""
    if not chosen:
        return {"selections": [], "hosts": [], "sources": [], "population": 0}
    base = chosen[0].population
    rows = []
    for s in chosen:
        tokens = tokens_of(s.plan, facts)
        value, meaning = threshold_of(s.plan)
        rows.append({"label": s.label, "sampler": s.sampler, "rule": s.plan.rule.name,
                     "score": s.plan.score_feature, "seed": s.seed, "path": s.path,
                     "rate_by": s.plan.rate_by, "threshold": value, "threshold_meaning": meaning,
                     "tokens_feature": s.plan.tokens_feature,
                     "before": _lengths(tokens[s.population]), "after": _lengths(tokens[s.kept])})
    masks = [s.kept for s in chosen]
    return {"selections": rows, "population": int(base.sum()),
            "hosts": _top(facts.hosts, masks, base, top), "sources": _top(facts.sources, masks, base, top)}


def threshold_documents(selection: Selection, table: scores_lib.ScoreTable, n: int = 3,
                        chars: int = 200) -> list[dict[str, Any]]:
    """The `n` kept and `n` dropped documents whose scores are nearest the plan's threshold
    (`threshold_of`), nearest first; [] for rules without one."""
    value, _ = threshold_of(selection.plan)
    if value is None or selection.plan.score_feature not in table.scores:
        return []
    scores = table.scores[selection.plan.score_feature]
    have = selection.population & np.isfinite(scores)
    out = []
    for kept in (True, False):
        index = np.flatnonzero(have & (selection.kept == kept))
        ids = np.asarray([table.ids[i] for i in index], dtype=object).astype(str)
        order = index[np.lexsort((ids, np.abs(scores[index] - value)))][:n]
        for i in order:
            p = sampling.inclusion_probability(selection.plan, float(scores[i]))
            out.append({"kept": kept, "score": float(scores[i]), "probability": float(p), "id": table.ids[i],
                        "url": table.url(i), "excerpt": scores_lib.excerpt(table.texts[i], chars)})
    return out


def thresholds(chosen: Sequence[Selection]) -> dict[str, list[dict[str, Any]]]:
    """Per score feature, the thresholds of the selections over it (drawn on its histogram)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for s in chosen:
        value, meaning = threshold_of(s.plan)
        if value is not None and s.plan.score_feature:
            out.setdefault(s.plan.score_feature, []).append(
                {"label": s.label, "rule": s.plan.rule.name, "value": float(value), "meaning": meaning})
    return out


# --- scales and the coverage / quality scatter ----------------------------------------------

def spans_orders(values: np.ndarray, span: float = LOG_SPAN) -> bool:
    """Whether finite values are all positive and their bulk spans orders of magnitude: the 99th
    percentile over the 1st exceeds `span` (draw them on a log scale). Percentiles rather than max
    / min, so a uniform score in (0, 1) whose smallest draw is 0.0007 stays on a linear scale."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2 or v.min() <= 0:
        return False
    low, high = np.percentile(v, [1, 99])
    return bool(high / low > span)


def log_scales(table: scores_lib.ScoreTable) -> dict[str, bool]:
    """Per score feature: whether its histogram needs a log-scale x (`spans_orders`)."""
    return {name: spans_orders(values) for name, values in table.scores.items()}


def _pick(features: Iterable[str], prefix: str) -> list[str]:
    return sorted(f for f in features if f.startswith(prefix))


def coverage(table: scores_lib.ScoreTable, chosen: Sequence[Selection], max_points: int = MAX_POINTS
             ) -> Optional[dict[str, Any]]:
    """Ask-LLM (quality, y) against Density (coverage, x) per document having both; None without both.

    Documents are grouped by which selections over those two scores kept them (`kept by both`,
    `kept by <sampler> only`, `kept by neither`), at one rate both were planned at (the one
    nearest `MARK_RATE`, the paper's and demo's 20%); with no such selection every document is one
    group and `note` says so. Beyond `max_points` documents a deterministic subsample is drawn.
    """
    ask, den = _pick(table.scores, ASKLLM_PREFIX), _pick(table.scores, DENSITY_PREFIX)
    if not ask or not den:
        return None
    x, y = table.scores[den[0]], table.scores[ask[0]]
    both = np.isfinite(x) & np.isfinite(y)
    candidates = [s for s in chosen if s.plan.score_feature in (ask[0], den[0])]
    rates_of = {f: {s.rate for s in candidates if s.plan.score_feature == f} for f in (ask[0], den[0])}
    common = (rates_of[ask[0]] & rates_of[den[0]]) or rates_of[ask[0]] | rates_of[den[0]]
    rate = min(common, key=lambda r: (abs(r - MARK_RATE), r)) if common else None
    marking = []
    for f in (ask[0], den[0]):
        at_rate = [s for s in candidates if s.plan.score_feature == f and s.rate == rate]
        if at_rate:
            marking.append(at_rate[0])
    notes = []
    if len(ask) > 1 or len(den) > 1:
        notes.append(f"Several such scores: drawn are {ask[0]} and {den[0]}.")
    if marking:
        shown = both & marking[0].population
        hidden = int((both & ~marking[0].population).sum())
        if hidden:
            notes.append(f"{hidden} documents outside the plans' population (the held-out split) are not shown.")
        kept = [s.kept for s in marking]
        names = [s.sampler for s in marking]
        group = np.full(len(table.ids), "kept by neither", dtype=object)
        if len(kept) == 2:
            group[kept[0] & ~kept[1]] = f"kept by {names[0]} only"
            group[kept[1] & ~kept[0]] = f"kept by {names[1]} only"
            group[kept[0] & kept[1]] = "kept by both"
        else:
            group[kept[0]] = f"kept by {names[0]}"
    else:
        shown = both
        group = np.full(len(table.ids), "all documents", dtype=object)
        notes.append("No selection plan over these scores was found: every document is shown, none marked.")
    index = np.flatnonzero(shown)
    if index.size > max_points:
        u = sampling.uniform_from_ids([table.ids[i] for i in index], 0)
        index = np.sort(index[np.argsort(u, kind="stable")[:max_points]])
        notes.append(f"A uniform subsample of {max_points} of the {int(shown.sum())} documents is drawn.")
    groups = sorted(set(group[index].tolist()), key=lambda g: (g == "kept by neither", g))
    return {"x": den[0], "y": ask[0], "points": {"x": x[index].tolist(), "y": y[index].tolist(),
                                                 "group": group[index].tolist()},
            "groups": {g: int((group[index] == g).sum()) for g in groups}, "documents": int(shown.sum()),
            "selections": [s.label for s in marking], "log_x": spans_orders(x[index]),
            "log_y": spans_orders(y[index]), "note": " ".join(notes)}


# --- pipeline health -------------------------------------------------------------------------

def seconds_between(start: Optional[str], end: Optional[str]) -> Optional[float]:
    """Seconds from one ISO 8601 time to another, None when either is missing or unreadable."""
    try:
        return (datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def truncation(facts: DocumentFacts) -> dict[str, dict[str, Any]]:
    """Per `truncated/<scorer>` feature: documents flagged, documents cut and the rate."""
    out = {}
    for name, flags in facts.truncated.items():
        have = flags >= 0
        cut = int((flags == 1).sum())
        out[name] = {"scorer": name.removeprefix(TRUNCATED_PREFIX), "documents": int(have.sum()), "truncated": cut,
                     "rate": cut / int(have.sum()) if have.any() else math.nan}
    return out


def stage_summary(directory: str, manifest: Mapping[str, Any], base_dir: Optional[str],
                  cut: Optional[Mapping[str, Mapping[str, Any]]] = None) -> dict[str, Any]:
    """One row of the pipeline health table from a job's manifest: counts (read, written,
    dead-lettered by reason, excluded by reason), units and units reused, duration, whether the
    counts reconcile, the scorer's max_length and its truncation rate when the records tell."""
    counts = manifest.get("counts", {})
    job = str(manifest.get("job", "?"))
    scorer = job.split()[-1] if job.startswith("score ") else None
    config = manifest.get("config", {}) if isinstance(manifest.get("config"), Mapping) else {}
    return {"job": job, "output": display_path(directory, base_dir), "read": counts.get("read"),
            "written": counts.get("written"), "dead_lettered": counts.get("dead_lettered"),
            "dead_by_reason": dict(counts.get("dead_lettered_by_reason", {})),
            "excluded": dict(counts.get("excluded", {})), "units": counts.get("units_total"),
            "units_reused": counts.get("units_reused"), "reconciled": manifest.get("reconciled"),
            "seconds": seconds_between(manifest.get("started_at"), manifest.get("finished_at")),
            "max_length": config.get("max_length"),
            "truncation": (cut or {}).get(f"{TRUNCATED_PREFIX}{scorer}") if scorer else None}
