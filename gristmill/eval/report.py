"""`gristmill report --experiment DIR [--scored GLOB] --output report.html [--json report.json]`.

One self-contained HTML page (CSS inline, figures as base64 PNG from matplotlib's Agg backend,
no external assets) with these sections (their HTML ids):

- `summary`: the experiment's corpus counts, runs and skipped samplers.
- `histograms`: the histogram of every `score/...` feature of the scored records (Figure 9).
- `kendall`: Kendall tau-b between every two scorers over the documents having both (Figure 7).
- `extremes`: the highest and lowest scored documents of each scorer (text excerpts).
- `curves`: learning curves, held-out perplexity vs training tokens, one line per run.
- `results`: final values, over-scaling against the next model size of the grid and speed-up
  against the full-data run of the same size (PAPER.md §5.4, §6.3), or n/a with the reason.

The data of every section is computed by pure functions (`score_table`, `histograms`,
`extremes`, `learning_curves`, `results_table`) into a `ReportData`; writers (`HtmlWriter`,
`JsonWriter`) only render it (STYLE rule 19).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np

from gristmill import flagparse, records
from gristmill.eval import metrics

SECTIONS = ("summary", "histograms", "kendall", "extremes", "curves", "results")
SCORE_PREFIX = "score/"
EXCERPT_CHARS = 300
FULL = metrics.FULL


class ReportError(ValueError):
    """The report cannot be built (no experiment, unreadable results)."""


# --- scores ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ScoreTable:
    """Documents and their scores: scores[name][i] is document i's score (NaN when it has none)."""

    ids: list[str]
    texts: list[str]
    scores: dict[str, np.ndarray]


def score_table(items: Iterable[Mapping[str, Any]]) -> ScoreTable:
    """Collects every `score/...` float feature of the records into aligned arrays (sorted names)."""
    ids, texts, columns = [], [], {}
    for i, record in enumerate(items):
        ids.append(str(record.get(records.ID, "")))
        texts.append(str(record.get(records.TEXT, "")))
        for key, value in record.items():
            if key.startswith(SCORE_PREFIX) and isinstance(value, (int, float)) and not isinstance(value, bool):
                columns.setdefault(key, {})[i] = float(value)
    n = len(ids)
    scores = {}
    for name in sorted(columns):
        column = np.full(n, np.nan)
        column[list(columns[name])] = list(columns[name].values())
        scores[name] = column
    return ScoreTable(ids, texts, scores)


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


def excerpt(text: str, chars: int = EXCERPT_CHARS) -> str:
    """The first `chars` characters of a text, whitespace collapsed, with an ellipsis when cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[:chars].rstrip() + "\u2026"


def extremes(table: ScoreTable, n: int = 5, chars: int = EXCERPT_CHARS) -> dict[str, dict[str, list[dict]]]:
    """Per scorer: the `n` highest and `n` lowest scored documents ({score, id, excerpt}); ties by id."""
    out = {}
    for name, values in table.scores.items():
        have = np.flatnonzero(np.isfinite(values))
        ids = np.asarray(table.ids, dtype=object)[have]
        order = have[np.lexsort((ids.astype(str), values[have]))]  # ascending score, then id

        def rows(indices):
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
    runs = sorted({(r.model, r.steps, r.sampler, float(r.rate)) for r in finals},
                  key=lambda k: (order.index(k[0]), k[1] or 0, k[2] != FULL, k[2], k[3]))
    table = []
    for model, steps, sampler, rate in runs:
        values = {r.metric: r.value for r in finals
                  if (r.model, r.steps, r.sampler) == (model, steps, sampler) and math.isclose(r.rate, rate)}
        row: dict[str, Any] = {"model": model, "steps": steps, "sampler": sampler, "rate": rate,
                               "label": run_label(model, steps, sampler, rate), "values": values,
                               "documents": extra.get((model, steps, sampler, rate), {}).get("documents"),
                               "over_scaling": None, "over_scaling_note": "", "speed_up": {}}
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


def build_report(experiment_dir: Optional[str], scored: Optional[str] = None, *, bins: int = 30,
                 top_n: int = 5, chars: int = EXCERPT_CHARS) -> ReportData:
    """Reads an experiment directory (and a scored-record glob; default: the experiment's) into ReportData."""
    from gristmill.eval import experiment as experiment_lib

    info: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if experiment_dir:
        info = experiment_lib.read_experiment(experiment_dir)
        rows = experiment_lib.read_results(experiment_dir)
        if scored is None:
            scored = ",".join(info.get("config", {}).get("scored", ())) or None
    table = ScoreTable([], [], {})
    if scored:
        from gristmill.pipelines import transforms

        table = score_table(r for pattern in scored.split(",") for r in transforms.iter_scored_records(pattern))
    metric_names = sorted({row["metric"] for row in rows})
    lower = info.get("lower_is_better") or [m for m in metric_names if m.startswith("perplexity")]
    declared = info.get("config", {}).get("models", ())
    correlation = metrics.rank_correlation_matrix(table.scores) if len(table.scores) >= 2 else None
    return ReportData(
        title=f"gristmill report: {os.path.basename(os.path.normpath(experiment_dir)) if experiment_dir else scored}",
        experiment=info, scored=scored, scorers=score_summary(table), histograms=histograms(table, bins),
        correlation=correlation, extremes=extremes(table, top_n, chars), curves=learning_curves(rows),
        table=results_table(rows, lower_is_better=lower, models=declared) if rows else [], metrics=metric_names)


# --- writers ---------------------------------------------------------------------------------

class Writer(Protocol):
    """Renders ReportData to a file."""

    def write(self, report: ReportData, path: str) -> None: ...


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, metrics.CorrelationMatrix):
        return {"names": obj.names, "tau": _jsonable(obj.tau), "pairs": obj.pairs.tolist()}
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
        data = {f.name: _jsonable(getattr(report, f.name)) for f in dataclasses.fields(report)}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{uri}">'


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


_CSS = """
body { font-family: -apple-system, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.text { text-align: left; max-width: 700px; }
.note { color: #777; font-size: .9em; } .figs img { max-width: 32%; margin: .2em; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


class HtmlWriter:
    """One self-contained HTML page (inline CSS, base64 PNG figures)."""

    def write(self, report: ReportData, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.render(report))

    def render(self, report: ReportData) -> str:
        """The page as a string."""
        import matplotlib

        matplotlib.use("Agg")
        body = [f"<h1>{html.escape(report.title)}</h1>", self.summary(report), self.histograms(report),
                self.kendall(report), self.extremes(report), self.curves(report), self.results(report)]
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")

    @staticmethod
    def _section(section_id: str, title: str, content: str) -> str:
        return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>\n{content}\n</section>'

    def summary(self, report: ReportData) -> str:
        info = report.experiment
        parts = []
        corpus = info.get("corpus", {})
        if corpus:
            parts.append(f"<p>{corpus.get('documents')} documents: {corpus.get('train_documents')} to train on, "
                         f"{corpus.get('heldout_documents')} held out (<code>c4_heldout</code>).</p>")
        if report.scored:
            parts.append(f"<p>Scored records: <code>{html.escape(report.scored)}</code>.</p>")
        sets = info.get("text_sets", {})
        if sets:
            parts.append("<p>Held-out text sets: " + ", ".join(
                f"<code>{html.escape(n)}</code> ({s.get('documents')} documents, {s.get('examples')} examples)"
                for n, s in sets.items()) + ".</p>")
        runs = info.get("runs", [])
        if runs:
            parts.append(f"<p>{len(runs)} runs: " + ", ".join(f"<code>{html.escape(r)}</code>" for r in runs) + "</p>")
        skipped = info.get("skipped_samplers", {})
        if skipped:
            parts.append("<p>Skipped samplers:</p><ul>" + "".join(
                f"<li><b>{html.escape(n)}</b>: {html.escape(reason)}</li>" for n, reason in skipped.items()) + "</ul>")
        if not parts:
            parts.append('<p class="note">No experiment summary (experiment.json) found.</p>')
        return self._section("summary", "Summary", "\n".join(parts))

    def histograms(self, report: ReportData) -> str:
        import matplotlib.pyplot as plt

        if not report.histograms:
            return self._section("histograms", "Score histograms",
                                 '<p class="note">No score features (pass --scored with scored records).</p>')
        figs = []
        for name, (counts, edges) in report.histograms.items():
            fig, ax = plt.subplots(figsize=(4, 2.8))
            ax.stairs(counts, edges, fill=True, alpha=.7)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("score")
            ax.set_ylabel("documents")
            figs.append(_img(_png(fig), f"histogram of {name}"))
        rows = "".join(f"<tr><td class=\"text\"><code>{html.escape(n)}</code></td><td>{s['documents']}</td>"
                       f"<td>{_fmt(s['min'])}</td><td>{_fmt(s['median'])}</td><td>{_fmt(s['max'])}</td></tr>"
                       for n, s in report.scorers.items())
        table = ("<table><tr><th>score</th><th>documents</th><th>min</th><th>median</th><th>max</th></tr>"
                 f"{rows}</table>")
        return self._section("histograms", "Score histograms", table + '<div class="figs">' + "".join(figs) + "</div>")

    def kendall(self, report: ReportData) -> str:
        import matplotlib.pyplot as plt

        m = report.correlation
        if m is None:
            return self._section("kendall", "Kendall tau between scorers",
                                 '<p class="note">Needs at least two score features.</p>')
        k = len(m.names)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * k, 1.0 + 0.8 * k))
        ax.imshow(np.nan_to_num(m.tau, nan=0.0), vmin=-1, vmax=1, cmap="RdBu_r")
        short = [n.removeprefix(SCORE_PREFIX) for n in m.names]
        ax.set_xticks(range(k), short, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), short, fontsize=8)
        for i in range(k):
            for j in range(k):
                dark = not np.isnan(m.tau[i, j]) and abs(m.tau[i, j]) > 0.6
                ax.text(j, i, "n/a" if np.isnan(m.tau[i, j]) else f"{m.tau[i, j]:.2f}", ha="center", va="center",
                        fontsize=8, color="white" if dark else "black")
        head = "".join(f"<th>{html.escape(s)}</th>" for s in short)
        rows = "".join("<tr><th>" + html.escape(short[i]) + "</th>" + "".join(
            f"<td>{_fmt(float(m.tau[i, j]), 3)}<br><span class=\"note\">n={m.pairs[i, j]}</span></td>"
            for j in range(k)) + "</tr>" for i in range(k))
        content = (_img(_png(fig), "Kendall tau matrix")
                   + '<p class="note">Kendall tau-b over the documents having both scores (n), as in Figure 7 '
                     "of the paper.</p>" + f"<table><tr><th></th>{head}</tr>{rows}</table>")
        return self._section("kendall", "Kendall tau between scorers", content)

    def extremes(self, report: ReportData) -> str:
        if not report.extremes:
            return self._section("extremes", "Highest and lowest scored documents",
                                 '<p class="note">No score features.</p>')
        parts = []
        for name, sides in report.extremes.items():
            parts.append(f"<h3><code>{html.escape(name)}</code></h3>")
            for side in ("highest", "lowest"):
                rows = "".join(f"<tr><td>{_fmt(d['score'])}</td><td class=\"text\">{html.escape(d['excerpt'])}"
                               f"<br><span class=\"note\">{html.escape(d['id'])}</span></td></tr>" for d in sides[side])
                parts.append(f"<table><tr><th>{side}</th><th>document</th></tr>{rows}</table>")
        return self._section("extremes", "Highest and lowest scored documents", "\n".join(parts))

    def curves(self, report: ReportData) -> str:
        import matplotlib.pyplot as plt

        if not report.curves:
            return self._section("curves", "Learning curves", '<p class="note">No results with training tokens.</p>')
        figs = []
        entries = [e for runs in report.curves.values() for e in runs]
        samplers = sorted({e["sampler"] for e in entries} - {FULL})
        models = list(dict.fromkeys(e["model"] for e in entries))
        colours = {name: f"C{i % 10}" for i, name in enumerate(samplers)}
        colours[FULL] = "black"
        styles = {model: ("-", "--", ":", "-.")[i % 4] for i, model in enumerate(models)}
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
            figs.append(_img(_png(fig), f"learning curves of {metric}"))
        return self._section("curves", "Learning curves", '<div class="figs">' + "".join(figs) + "</div>")

    def results(self, report: ReportData) -> str:
        if not report.table:
            return self._section("results", "Results", '<p class="note">No results.</p>')
        metric_heads = "".join(f"<th>{html.escape(m)}</th>" for m in report.metrics)
        speed_heads = "".join(f"<th>speed-up {html.escape(m)}</th>" for m in report.metrics)
        rows = []
        for r in report.table:
            values = "".join(f"<td>{_fmt(r['values'].get(m))}</td>" for m in report.metrics)
            over = f"{r['over_scaling']:.1f}%<br>" if r["over_scaling"] is not None else ""
            documents = "all" if r["sampler"] == FULL else _fmt(r["documents"], 6)
            speeds = []
            for m in report.metrics:
                s = r["speed_up"].get(m)
                if s is None:
                    speeds.append("<td>&mdash;</td>")
                elif s["percent"] is None:
                    speeds.append(f"<td><span class=\"note\">{html.escape(s['note'])}</span></td>")
                else:
                    speeds.append(f"<td>{s['percent']:.1f}%<br><span class=\"note\">{s['tokens_needed']:.3g} "
                                  "tokens</span></td>")
            rows.append(f"<tr><td class=\"text\">{html.escape(r['model'])}</td><td>{_fmt(r['steps'])}</td>"
                        f"<td class=\"text\">{html.escape(r['sampler'])}</td><td>{100 * r['rate']:g}%</td>"
                        f"<td>{documents}</td>{values}<td>{over}<span class=\"note\">"
                        f"{html.escape(r['over_scaling_note'])}</span></td>{''.join(speeds)}</tr>")
        head = (f"<tr><th>model</th><th>steps</th><th>sampler</th><th>rate</th><th>documents</th>{metric_heads}"
                f"<th>over-scaling</th>{speed_heads}</tr>")
        note = ('<p class="note">Final checkpoint values. Over-scaling = 100 &times; mean over metrics of the '
                "sampled run's improvement over the full-data run of its size, divided by the next larger "
                "size's improvement (perplexities: lower is better). Speed-up = 100 &times; (1 &minus; tokens "
                "the run needs to reach the full-data run's final value / the full-data run's tokens).</p>")
        return self._section("results", "Results", note + f"<table>{head}{''.join(rows)}</table>")


# --- entry point -----------------------------------------------------------------------------

def write_report(experiment_dir: Optional[str], output: str, scored: Optional[str] = None, *,
                 json_output: Optional[str] = None, bins: int = 30, top_n: int = 5) -> ReportData:
    """Builds the report and writes the HTML page (and the JSON data when asked)."""
    if not experiment_dir and not scored:
        raise ReportError("give --experiment, --scored or both")
    report = build_report(experiment_dir, scored, bins=bins, top_n=top_n)
    HtmlWriter().write(report, output)
    if json_output:
        JsonWriter().write(report, json_output)
    return report


def run(argv: list[str]) -> ReportData:
    """Entry point of `gristmill report`."""
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_string("experiment", None, "Experiment directory (results.jsonl, experiment.json).", flag_values=fv)
    flags.DEFINE_string("scored", None, "Scored TFRecord glob(s), comma-separated; default: the experiment's.",
                        flag_values=fv)
    flags.DEFINE_string("output", "report.html", "The HTML page to write.", flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the report's data as JSON here.", flag_values=fv)
    flags.DEFINE_integer("bins", 30, "Histogram bins.", flag_values=fv)
    flags.DEFINE_integer("top", 5, "Highest / lowest documents shown per scorer.", flag_values=fv)
    flagparse.parse(fv, argv, "gristmill report --experiment DIR [--scored GLOB] --output report.html")
    return write_report(fv.experiment, fv.output, fv.scored, json_output=fv.json, bins=fv.bins, top_n=fv.top)
