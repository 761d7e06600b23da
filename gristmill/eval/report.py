"""`gristmill report --experiment DIR [--scored SPEC] --output report.html [--json F] [--quality F] [--calibration F]`.

One self-contained HTML page (CSS inline, figures as base64 PNG from matplotlib's Agg backend,
no external assets), rendered from the Jinja2 template `templates/report.html.j2`, with these
sections (their HTML ids):

- `summary`: the experiment's corpus counts, runs and skipped samplers.
- `histograms`: the histogram of every `score/...` feature of the scored records (Figure 9).
- `kendall`: Kendall tau-b between every two scorers over the documents having both (Figure 7).
- `calibration`: per scorer the score at each percentile and the documents at chosen
  percentiles, and those documents' percentiles under every scorer side by side (App. E).
- `extremes`: the highest and lowest scored documents of each scorer (text excerpts).
- `quality`: selection quality against labels, from a `gristmill evaluate` JSON (`--quality`).
- `curves`: learning curves, held-out perplexity vs training tokens, one line per run.
- `results`: final values, over-scaling against the next model size of the grid and speed-up
  against the full-data run of the same size (docs/paper.md §5.4, §6.3), or n/a with the reason.

Every score feature present in the records gets its histogram, calibration rows and a row and
column of the tau matrix. The data of every section is computed by pure functions
(`score_summary`, `histograms`, `extremes`, `calibration.calibration`, `learning_curves`,
`results_table`) into a `ReportData`; writers (`HtmlWriter`, `JsonWriter`) only render it
(CONTRIBUTING.md style rule 19). Inputs and outputs may be local or gs:// paths (`gristmill.io`).
"""

from __future__ import annotations

import base64
import dataclasses
import io as bytes_io
import math
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

import jinja2
import numpy as np

from gristmill import flags, io
from gristmill.errors import UsageError
from gristmill.eval import calibration as calibration_lib
from gristmill.eval import metrics
from gristmill.eval import scores as scores_lib

# The score table lives in `scores` (shared with calibration and quality); these names stay here too.
ScoreTable = scores_lib.ScoreTable
score_table = scores_lib.score_table
excerpt = scores_lib.excerpt
EXCERPT_CHARS = scores_lib.EXCERPT_CHARS
SCORE_PREFIX = scores_lib.SCORE_PREFIX

SECTIONS = ("summary", "histograms", "kendall", "calibration", "extremes", "quality", "curves", "results")
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
    """Per scorer: (counts, edges) of its scores (missing ones left out)."""
    out = {}
    for name, values in table.scores.items():
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
    (training tokens, value) in token order; rows without tokens are left out. Runs sorted by label."""
    curves: dict[str, dict[tuple, dict[str, Any]]] = {}
    for r in metrics.as_results(rows):
        if r.tokens is None:
            continue
        key = (r.model, r.steps, r.sampler, float(r.rate))
        entry = curves.setdefault(r.metric, {}).setdefault(key, {
            "label": run_label(*key), "model": r.model, "steps": r.steps, "sampler": r.sampler,
            "rate": float(r.rate), "points": []})
        entry["points"].append((float(r.tokens), float(r.value)))
    out = {}
    for metric in sorted(curves):
        runs = sorted(curves[metric].values(), key=lambda e: e["label"])
        for e in runs:
            e["points"].sort()
        out[metric] = runs
    return out


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
    """One row per run: final metric values, over-scaling and per-metric speed-up, each with a note when n/a.

    Over-scaling compares a run with the full-data run of the next larger model size of the grid
    (same training steps), averaged over every metric; speed-up compares the run's curve with
    the full-data run of its own size. Model sizes are ordered by `model_order`.
    """
    results = metrics.as_results(rows)
    finals = metrics.final_results(results)
    metric_names = sorted({r.metric for r in finals})
    order = model_order(rows, models)
    extra = {(row["model"], row.get("steps"), row["sampler"], float(row["rate"])): row for row in rows}
    spread: dict[tuple, tuple[int, float]] = {}  # run + metric -> (step, std) of its last evaluation
    for row in rows:
        key = (row["model"], row.get("steps"), row["sampler"], float(row["rate"]), row.get("metric"))
        if row.get("std") is not None and (row.get("step") or 0) >= spread.get(key, (-1, 0.0))[0]:
            spread[key] = (row.get("step") or 0, float(row["std"]))
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
                                          if (model, steps, sampler, rate, m) in spread}}
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
                                       f"n/a: never reaches the full-data value {s.target:.4g}"}
        table.append(row)
    return table


# --- the report data -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReportData:
    """Everything the writers render (plain values)."""

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


def build_report(experiment_dir: Optional[str], scored: Optional[str] = None, *, bins: int = 30,
                 top_n: int = 5, chars: int = EXCERPT_CHARS, quality: Optional[str] = None,
                 documents: Sequence[str] = ()) -> ReportData:
    """Reads an experiment directory, scored records (default: the experiment's) and an `evaluate`
    JSON into ReportData; `documents`: ids shown side by side in the calibration section."""
    from gristmill.eval import experiment as experiment_lib

    info: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if experiment_dir:
        info = experiment_lib.read_experiment(experiment_dir)
        rows = experiment_lib.read_results(experiment_dir)
        if scored is None:
            scored = ",".join(info.get("config", {}).get("scored", ())) or None
    table = scores_lib.read_score_table(scored) if scored else ScoreTable([], [], {})
    metric_names = sorted({row["metric"] for row in rows})
    lower = info.get("lower_is_better") or [m for m in metric_names if m.startswith("perplexity")]
    declared = info.get("config", {}).get("models", ())
    cal = calibration_lib.calibration(table, ids=documents) if table.scores else None
    correlation = cal.agreement if cal is not None and len(table.scores) >= 2 else None
    name = io.basename(experiment_dir.rstrip("/")) if experiment_dir else scored
    return ReportData(
        title=f"gristmill report: {name}", experiment=info, scored=scored, scorers=score_summary(table),
        histograms=histograms(table, bins), correlation=correlation, extremes=extremes(table, top_n, chars),
        curves=learning_curves(rows),
        table=results_table(rows, lower_is_better=lower, models=declared) if rows else [], metrics=metric_names,
        calibration=cal, quality=io.read_json(quality) if quality else None)


# --- writers ---------------------------------------------------------------------------------

class Writer(Protocol):
    """Renders ReportData to a file."""

    def write(self, report: ReportData, path: str) -> None: ...


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
        io.write_json(path, {f.name: _jsonable(getattr(report, f.name)) for f in dataclasses.fields(report)})


# figures: matplotlib (Agg) -> base64 PNG data URIs, so the page needs no other file

def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_figures(report: ReportData) -> dict[str, str]:
    """Per score feature, its histogram as a PNG data URI."""
    import matplotlib.pyplot as plt

    figures = {}
    for name, (counts, edges) in report.histograms.items():
        fig, ax = plt.subplots(figsize=(4, 2.8))
        ax.stairs(counts, edges, fill=True, alpha=.7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score")
        ax.set_ylabel("documents")
        figures[name] = _png(fig)
    return figures


def short_name(feature: str) -> str:
    """A score feature without its `score/` prefix, for axis labels."""
    return feature.removeprefix(SCORE_PREFIX)


def kendall_figure(m: metrics.CorrelationMatrix) -> str:
    """The tau matrix as a heat map with its values, a PNG data URI."""
    import matplotlib.pyplot as plt

    k = len(m.names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * k, 1.0 + 0.8 * k))
    ax.imshow(np.nan_to_num(m.tau, nan=0.0), vmin=-1, vmax=1, cmap="RdBu_r")
    short = [short_name(n) for n in m.names]
    ax.set_xticks(range(k), short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), short, fontsize=8)
    for i in range(k):
        for j in range(k):
            dark = not np.isnan(m.tau[i, j]) and abs(m.tau[i, j]) > 0.6
            ax.text(j, i, "n/a" if np.isnan(m.tau[i, j]) else f"{m.tau[i, j]:.2f}", ha="center", va="center",
                    fontsize=8, color="white" if dark else "black")
    return _png(fig)


def curve_figures(report: ReportData) -> dict[str, str]:
    """Per metric, the learning curves of every run as a PNG data URI."""
    import matplotlib.pyplot as plt

    entries = [e for runs in report.curves.values() for e in runs]
    samplers = sorted({e["sampler"] for e in entries} - {FULL})
    models = list(dict.fromkeys(e["model"] for e in entries))
    colours = {name: f"C{i % 10}" for i, name in enumerate(samplers)}
    colours[FULL] = "black"
    styles = {model: ("-", "--", ":", "-.")[i % 4] for i, model in enumerate(models)}
    figures = {}
    for metric, runs in report.curves.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for e in runs:
            t, v = zip(*e["points"])
            ax.plot(t, v, marker="o", markersize=3, label=e["label"], color=colours[e["sampler"]],
                    linestyle=styles[e["model"]])
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(metric.split("/")[0])
        values = [v for e in runs for _, v in e["points"]]
        if min(values) > 0 and max(values) / min(values) > 10:  # early checkpoints sit decades higher
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        figures[metric] = _png(fig)
    return figures


def number(x: Any, digits: int = 4) -> str:
    """A value for the page: floats to `digits` significant digits, None / NaN as n/a."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


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
    env.filters["short"] = short_name
    return env


class HtmlWriter:
    """One self-contained HTML page (inline CSS, base64 PNG figures) from `templates/report.html.j2`."""

    def write(self, report: ReportData, path: str) -> None:
        io.write_text(path, self.render(report))

    def render(self, report: ReportData) -> str:
        """The page as a string."""
        import matplotlib

        matplotlib.use("Agg")
        figures = {"histograms": histogram_figures(report), "curves": curve_figures(report) if report.curves else {},
                   "kendall": kendall_figure(report.correlation) if report.correlation is not None else None}
        return template_environment().get_template(TEMPLATE).render(
            report=report, figures=figures, full=FULL, sections=SECTIONS,
            calibration_percentiles=[calibration_lib.percentile_key(p) for p in calibration_lib.PERCENTILES])


# --- entry point -----------------------------------------------------------------------------

def write_report(experiment_dir: Optional[str], output: str, scored: Optional[str] = None, *,
                 json_output: Optional[str] = None, bins: int = 30, top_n: int = 5, quality: Optional[str] = None,
                 calibration_output: Optional[str] = None, documents: Sequence[str] = ()) -> ReportData:
    """Builds the report and writes the HTML page (and the JSON data and calibration.json when asked)."""
    if not experiment_dir and not scored:
        raise ReportError("give --experiment, --scored or both")
    report = build_report(experiment_dir, scored, bins=bins, top_n=top_n, quality=quality, documents=documents)
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
