"""The paper's evaluation metrics as pure functions: over-scaling, speed-up, Kendall tau-b, histograms.

Results are tables of `Result` rows (or dicts with the same keys): one value of one metric for
one trained model (`model` size, `sampler`, sampling `rate`, training budget `steps`), at one
checkpoint (`step`, `tokens` seen). Functions return plain values (floats, tuples, numpy
arrays); rendering lives in `gristmill.eval.report`.

Over-scaling (docs/paper.md §5.4, [P §4.3]): "the relative improvement of a model when compared
against the next-largest model size, averaged over all downstream evaluations":

    OverScaling = mean_metric 100 * (Perf(M, sampled) - Perf(M, full)) / (Perf(M_next, full) - Perf(M, full))

so the model trained on all the data scores 0% and a sampled model that performs like the next
model size trained on all the data scores 100%. Worked example: T5-L full 80, T5-XL full 84,
T5-L sampled 81 gives 100 * 1 / 4 = 25%; a perplexity (lower is better) of L full 20, XL full 16,
L sampled 19 gives 100 * (-(19 - 20)) / (-(16 - 20)) = 25%; the over-scaling is their mean, 25%.

Speed-up (docs/paper.md §6.3, "X% of the data, corresponding to an X% training speedup"; the exact
computation is not given): the training tokens a sampled run needs to reach the final value of
the full-data run and stay at or beyond it, `speed-up % = 100 * (1 - tokens_needed / tokens_full)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Collection, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
from scipy import stats

FULL = "full"


class MetricError(ValueError):
    """A metric cannot be computed from the given results (missing rows, undefined ratio)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    """One value of one metric for one trained model at one checkpoint.

    model: model size name (e.g. `t5_1_1_small`). sampler: the data sampler (`full` for all the
    data). rate: the sampled fraction (1.0 for `full`). metric: e.g. `perplexity/c4_heldout`.
    steps: the run's training budget in steps (None when the table has one budget). step, tokens:
    the checkpoint this value was measured at (training steps, training tokens seen).
    """

    model: str
    sampler: str
    rate: float
    metric: str
    value: float
    steps: Optional[int] = None
    step: Optional[int] = None
    tokens: Optional[int] = None

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Result:
        """A Result from a dict (a results.jsonl line); keys beyond the fields are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"model", "sampler", "rate", "metric", "value"} - set(row)
        if missing:
            raise MetricError(f"result row lacks {sorted(missing)}: {dict(row)!r}")
        return cls(**{k: v for k, v in row.items() if k in names})

    @property
    def run_key(self) -> tuple:
        """What identifies the run and metric (everything but the checkpoint and value)."""
        return (self.model, self.sampler, float(self.rate), self.steps, self.metric)


ResultLike = Union[Result, Mapping[str, Any]]


def as_results(rows: Iterable[ResultLike]) -> list[Result]:
    """Rows as `Result`s (dicts are converted)."""
    return [r if isinstance(r, Result) else Result.from_dict(r) for r in rows]


def final_results(rows: Iterable[ResultLike]) -> list[Result]:
    """The last checkpoint of every run and metric: per `run_key`, the row with the largest step.

    Rows without a step must be the only row of their key (MetricError otherwise).
    """
    best: dict[tuple, Result] = {}
    for row in as_results(rows):
        key = row.run_key
        old = best.get(key)
        if old is None:
            best[key] = row
            continue
        if old.step is None or row.step is None or old.step == row.step:
            raise MetricError(f"two results for model {row.model!r}, sampler {row.sampler!r}, rate {row.rate}, "
                              f"steps {row.steps}, metric {row.metric!r} at the same checkpoint (step {row.step})")
        if row.step > old.step:
            best[key] = row
    return list(best.values())


def _lookup(rows: Sequence[Result], *, model: str, sampler: str, metric: str, rate: Optional[float],
            steps: Optional[int]) -> float:
    found = [r for r in rows if r.model == model and r.sampler == sampler and r.metric == metric
             and (rate is None or math.isclose(float(r.rate), float(rate)))
             and (steps is None or r.steps == steps)]
    what = (f"model {model!r}, sampler {sampler!r}, metric {metric!r}"
            + (f", rate {rate}" if rate is not None else "") + (f", steps {steps}" if steps is not None else ""))
    if not found:
        raise MetricError(f"no result for {what}")
    if len(found) > 1:
        options = sorted({(r.rate, r.steps) for r in found})
        raise MetricError(f"{len(found)} results for {what} (rate, steps) = {options}: name the rate and steps")
    value = float(found[0].value)
    if not math.isfinite(value):
        raise MetricError(f"result for {what} is not finite ({value})")
    return value


def over_scaling_terms(results: Iterable[ResultLike], *, model: str, sampler: str, next_model: str,
                       metrics: Sequence[str], lower_is_better: Collection[str] = (),
                       full_sampler: str = FULL, rate: Optional[float] = None,
                       steps: Optional[int] = None) -> dict[str, float]:
    """Per-metric over-scaling in percent (see `over_scaling`), in the order of `metrics`."""
    if not metrics:
        raise MetricError("over-scaling needs at least one metric")
    rows = final_results(results)
    terms: dict[str, float] = {}
    for metric in metrics:
        sign = -1.0 if metric in lower_is_better else 1.0
        base = _lookup(rows, model=model, sampler=full_sampler, metric=metric, rate=None, steps=steps)
        sampled = _lookup(rows, model=model, sampler=sampler, metric=metric, rate=rate, steps=steps)
        bigger = _lookup(rows, model=next_model, sampler=full_sampler, metric=metric, rate=None, steps=steps)
        gain = sign * (sampled - base)       # improvement of the sampled model over full data
        scale_gain = sign * (bigger - base)  # improvement of the next model size over this one
        if not scale_gain > 0:
            raise MetricError(
                f"over-scaling is undefined on {metric!r}: the next model {next_model!r} is not better than "
                f"{model!r} on full data ({bigger:g} vs {base:g}, "
                f"{'lower' if sign < 0 else 'higher'} is better)")
        terms[metric] = 100.0 * gain / scale_gain
    return terms


def over_scaling(results: Iterable[ResultLike], *, model: str, sampler: str, next_model: str,
                 metrics: Sequence[str], lower_is_better: Collection[str] = (), full_sampler: str = FULL,
                 rate: Optional[float] = None, steps: Optional[int] = None) -> float:
    """Over-scaling (%) of `model` trained on `sampler`'s data, relative to `next_model` (docs/paper.md §5.4).

        100 * mean over metrics of gain(model, sampler) / gain(next_model, full)
        gain(model, sampler)  = s * (Perf(model, sampler) - Perf(model, full))
        gain(next_model, full) = s * (Perf(next_model, full) - Perf(model, full))

    with s = -1 for metrics in `lower_is_better` (perplexities) and +1 otherwise: both gains are
    improvements, positive when better. Negating both leaves each ratio unchanged, so the flip
    does not change the number; it fixes what the ratio means (the paper's "improvement", whose
    sign convention for perplexities it leaves unstated, docs/paper.md §9.7) and lets the function
    check the premise of the definition, that the next model size is better on every metric.
    Where it is not (gain(next_model, full) <= 0), the ratio would be meaningless (its sign
    inverted, or a division by zero) and MetricError is raised naming the metric.

    0% for the full-data model itself, 100% for a model that performs as `next_model` does on
    full data, negative when sampling hurts. Values are the final checkpoint of each run
    (`final_results`); `rate` and `steps` pick the sampled run and budget when the table holds
    several (MetricError when a lookup is missing or ambiguous).
    """
    terms = over_scaling_terms(results, model=model, sampler=sampler, next_model=next_model, metrics=metrics,
                               lower_is_better=lower_is_better, full_sampler=full_sampler, rate=rate, steps=steps)
    return float(np.mean(list(terms.values())))


# --- speed-up --------------------------------------------------------------------------------

class SpeedUp(NamedTuple):
    """percent: 100 * (1 - tokens_needed / tokens_full), None if the target is never reached.
    tokens_needed: training tokens the sampled run needs to reach `target` (None if never).
    tokens_full: tokens of the full-data run's final checkpoint. target: its final value."""

    percent: Optional[float]
    tokens_needed: Optional[float]
    tokens_full: float
    target: float


def _curve(points: Iterable[Sequence[float]], name: str) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray([(float(t), float(v)) for t, v in points], dtype=np.float64).reshape(-1, 2)
    if array.shape[0] == 0:
        raise MetricError(f"{name} curve is empty")
    if not np.isfinite(array).all():
        raise MetricError(f"{name} curve has non-finite values")
    order = np.argsort(array[:, 0], kind="stable")
    tokens, values = array[order, 0], array[order, 1]
    if (np.diff(tokens) <= 0).any():
        raise MetricError(f"{name} curve has two points at the same token count")
    return tokens, values


def speed_up(curve_sampler: Iterable[Sequence[float]], curve_full: Iterable[Sequence[float]], *,
             lower_is_better: bool) -> SpeedUp:
    """How much sooner a sampled run reaches the full-data run's final value (docs/paper.md §6.3).

    Curves are (training tokens, metric value) points at logged checkpoints. The target is the
    full curve's value at its last point (tokens_full). A point meets the target when its value
    is <= target (lower is better) or >= target (otherwise). tokens_needed is where the sampled
    curve reaches the target *and stays there*: after its last logged point that misses the
    target, linearly interpolated between that point and the next one; a curve whose every
    point meets the target needs its first point's tokens (nothing is known before it). A noisy
    early checkpoint that dips below the target and climbs back does not count, and a curve
    whose last point misses the target never reaches it (None).
    speed-up % = 100 * (1 - tokens_needed / tokens_full): 0% when it needs as many tokens as
    the full run, negative when it needs more, None when it never reaches the target.

    Example: full [(100, 10), (200, 8)] (target 8, 200 tokens), sampled [(50, 9), (150, 7)]:
    the sampled curve crosses 8 half way, at 100 tokens, so the speed-up is 50%; sampled
    [(50, 7), (150, 9)] ends above 8, so it never reaches full data.
    """
    full_t, full_v = _curve(curve_full, "full-data")
    t, v = _curve(curve_sampler, "sampled")
    target, tokens_full = float(full_v[-1]), float(full_t[-1])
    reached = v <= target if lower_is_better else v >= target
    if not reached[-1]:
        return SpeedUp(None, None, tokens_full, target)
    missed = np.flatnonzero(~reached)
    if missed.size == 0:
        needed = float(t[0])
    else:
        i = int(missed[-1]) + 1  # the first point of the run of points that stay at the target
        t0, t1, v0, v1 = t[i - 1], t[i], v[i - 1], v[i]
        needed = float(t0 + (target - v0) / (v1 - v0) * (t1 - t0))
    return SpeedUp(100.0 * (1.0 - needed / tokens_full), needed, tokens_full, target)


# --- rank correlation ------------------------------------------------------------------------

def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two score arrays over the same documents (ties accounted for).

        tau_b = (C - D) / sqrt((n0 - n1) * (n0 - n2))

    C, D: concordant and discordant pairs; n0 = n(n-1)/2; n1, n2: pairs tied in a, in b.
    `scipy.stats.kendalltau` computes it in O(n log n). NaN when fewer than 2 documents or
    either array is constant. Figure 7 of the paper is a matrix of these over 500k documents.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise MetricError(f"kendall_tau needs arrays of the same length, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise MetricError("kendall_tau needs finite values (drop missing scores first)")
    if x.size < 2 or x.min() == x.max() or y.min() == y.max():
        return float("nan")  # undefined; scipy would say so with a warning
    return float(stats.kendalltau(x, y, variant="b").statistic)


class CorrelationMatrix(NamedTuple):
    """names: the scorers; tau[i, j]: Kendall tau-b of scorers i and j over the documents that
    have both scores (NaN if fewer than 2); pairs[i, j]: how many documents that is."""

    names: list[str]
    tau: np.ndarray
    pairs: np.ndarray


def rank_correlation_matrix(scores: Mapping[str, Sequence[float]]) -> CorrelationMatrix:
    """Kendall tau-b between every two scorers (Figure 7 of the paper).

    scores: scorer name -> array of scores over one common list of documents, NaN where a
    document lacks that score (Ask-LLM may score only a subset). Each pair is compared over the
    documents having both scores. The diagonal is 1 (over the scorer's own documents).
    """
    names = list(scores)
    arrays = [np.asarray(scores[name], dtype=np.float64).ravel() for name in names]
    sizes = {a.size for a in arrays}
    if len(sizes) > 1:
        raise MetricError(f"score arrays must be aligned over the same documents, got lengths "
                          f"{dict(zip(names, (a.size for a in arrays)))}")
    k = len(names)
    tau = np.full((k, k), np.nan)
    pairs = np.zeros((k, k), dtype=np.int64)
    for i in range(k):
        for j in range(i, k):
            both = np.isfinite(arrays[i]) & np.isfinite(arrays[j])
            pairs[i, j] = pairs[j, i] = int(both.sum())
            tau[i, j] = tau[j, i] = kendall_tau(arrays[i][both], arrays[j][both])
    return CorrelationMatrix(names, tau, pairs)


# --- histograms ------------------------------------------------------------------------------

def histogram(values: Sequence[float], bins: Union[int, Sequence[float]] = 30) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of the finite values (NaN = missing score, left out), numpy's binning.

    bins: a number of equal-width bins over [min, max], or the edges. An empty input gives zero
    counts over [0, 1].
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0 and isinstance(bins, int):
        return np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1)
    counts, edges = np.histogram(x, bins=bins)
    return counts.astype(np.int64), edges
