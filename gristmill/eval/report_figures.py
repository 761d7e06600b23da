"""The report's figures: matplotlib (Agg) drawings of a `ReportData`, each a base64 PNG data URI.

Writers only: every number drawn was computed into the ReportData by `gristmill.eval.report` and
`gristmill.eval.report_sections`. Legends sit outside the plot area, so they never hide a line.
"""

from __future__ import annotations

import base64
import io as bytes_io
from typing import Any

import numpy as np

from gristmill.eval import metrics
from gristmill.eval import scores as scores_lib

FULL = metrics.FULL
DPI = 90


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _legend_outside(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, **kwargs)


def short_name(feature: str) -> str:
    """A score feature without its `score/` prefix, for axis labels."""
    return feature.removeprefix(scores_lib.SCORE_PREFIX)


def histogram_figures(report: Any) -> dict[str, str]:
    """Per score feature, its histogram (log-scale x where the score spans orders of magnitude) with
    the thresholds of the selections over it drawn as vertical lines."""
    import matplotlib.pyplot as plt

    figures = {}
    for name, (counts, edges) in report.histograms.items():
        fig, ax = plt.subplots(figsize=(4.2, 2.8))
        ax.stairs(counts, edges, fill=True, alpha=.7, color="C0")
        if report.log_scales.get(name):
            ax.set_xscale("log")
        for i, t in enumerate(report.thresholds.get(name, [])):
            ax.axvline(t["value"], color=f"C{(i + 1) % 10}", linestyle="--", linewidth=1.2,
                       label=f"{t['label']} ({t['rule']})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score" + (" (log scale)" if report.log_scales.get(name) else ""))
        ax.set_ylabel("documents")
        if report.thresholds.get(name):
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), fontsize=7, frameon=False)
        figures[name] = _png(fig)
    return figures


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


def _colours(samplers) -> dict[str, str]:
    colours = {name: f"C{i % 10}" for i, name in enumerate(sorted(set(samplers) - {FULL}))}
    colours[FULL] = "black"
    return colours


def curve_figures(report: Any) -> dict[str, str]:
    """Per metric, the learning curves of every run (the seeds' spread shaded), legend outside."""
    import matplotlib.pyplot as plt

    entries = [e for runs in report.curves.values() for e in runs]
    colours = _colours(e["sampler"] for e in entries)
    models = list(dict.fromkeys(e["model"] for e in entries))
    # line style tells model sizes apart, or the rates of one sampler when the grid has one size
    by_rate = len(models) == 1
    keys = sorted({e["rate"] for e in entries}) if by_rate else models
    styles = {k: ("-", "--", ":", "-.")[i % 4] for i, k in enumerate(keys)}
    figures = {}
    for metric, runs in report.curves.items():
        fig, ax = plt.subplots(figsize=(7.5, 4.0))
        for e in runs:
            t, v = (np.asarray(x, dtype=float) for x in zip(*e["points"]))
            std = np.asarray([s or 0.0 for s in e.get("std", [0.0] * len(t))], dtype=float)
            seeds = e.get("seeds", 1)
            label = e["label"] + (f" ({seeds} seeds)" if seeds and seeds > 1 else "")
            ax.plot(t, v, marker="o", markersize=3, label=label, color=colours[e["sampler"]],
                    linestyle=styles[e["rate"] if by_rate else e["model"]])
            if std.any():
                ax.fill_between(t, v - std, v + std, color=colours[e["sampler"]], alpha=0.12, linewidth=0)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(metric.split("/")[0])
        values = [v for e in runs for _, v in e["points"]]
        if min(values) > 0 and max(values) / min(values) > 10:  # early checkpoints sit decades higher
            ax.set_yscale("log")
        _legend_outside(ax, fontsize=7)
        figures[metric] = _png(fig)
    return figures


def rate_figures(report: Any) -> dict[str, str]:
    """The headline plot per metric and (model, steps): final value against sampling rate, one line
    per sampler (± the seeds' standard deviation), full data a horizontal line."""
    import matplotlib.pyplot as plt

    figures = {}
    for metric, groups in report.rate_curves.items():
        for g in groups:
            colours = _colours(g["samplers"])
            fig, ax = plt.subplots(figsize=(6.0, 3.6))
            if g["full"] is not None:
                ax.axhline(g["full"], color="black", linestyle="--", linewidth=1.2, label="full data (100%)")
                if g.get("full_std"):
                    ax.axhspan(g["full"] - g["full_std"], g["full"] + g["full_std"], color="black", alpha=0.07)
            for name, points in g["samplers"].items():
                rates = [100 * p["rate"] for p in points]
                values = [p["value"] for p in points]
                errors = [p["std"] if p["std"] and (p["seeds"] or 1) > 1 else 0.0 for p in points]
                ax.errorbar(rates, values, yerr=errors if any(errors) else None, marker="o", markersize=5,
                            capsize=3, color=colours[name], label=name)
            ax.set_xlim(0, 105)
            ax.set_xlabel("sampling rate (% of the training documents)")
            ax.set_ylabel(f"final {metric}")
            ax.set_title(f"{metric} ({g['model']}, {g['steps']} steps)", fontsize=10)
            _legend_outside(ax, fontsize=7)
            figures[f"{metric} {g['model']} s{g['steps']}"] = _png(fig)
    return figures


GROUP_STYLE = {"kept by neither": ("#bbbbbb", 8), "all documents": ("C0", 10), "kept by both": ("C3", 18)}


def coverage_figure(c: dict[str, Any]) -> str:
    """Ask-LLM against Density per document, coloured by which selections kept it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    x, y = np.asarray(c["points"]["x"]), np.asarray(c["points"]["y"])
    group = np.asarray(c["points"]["group"], dtype=object)
    others = iter(("C1", "C2", "C4", "C5"))
    for name in sorted(c["groups"], key=lambda g: g != "kept by neither"):  # the unmarked ones underneath
        colour, size = GROUP_STYLE.get(name) or (next(others, "C6"), 14)
        mask = group == name
        ax.scatter(x[mask], y[mask], s=size, color=colour, alpha=0.75, linewidths=0,
                   label=f"{name} ({int(mask.sum())})")
    if c["log_x"]:
        ax.set_xscale("log")
    if c["log_y"]:
        ax.set_yscale("log")
    ax.set_xlabel(f"{c['x']} (coverage: higher = denser region)")
    ax.set_ylabel(f"{c['y']} (quality)")
    _legend_outside(ax, fontsize=8)
    return _png(fig)
