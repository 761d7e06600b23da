"""`gristmill evaluate`: how well each scorer separates documents labelled good from the rest.

    gristmill evaluate --scored out/askllm --labels labels.jsonl [--label_field label] \\
        [--threshold_field grade --threshold 3] --output quality.json

`--scored` names scored records (gristmill output directories or globs, comma-separated).
Labels come from a JSON-lines file (`text`, optional `url`, and a label), joined to the records
by the document id `documents.document_id(url, text)`, so the labelled texts must be the texts
that were scored (score the labels file itself, or a corpus holding its documents). Without
`--labels` the label is read from the records' own `--label_field` feature (carried in by a
job's `--keep_fields label`). A label is 0/1 (or true/false); with `--threshold T` a numeric
grade counts as good when grade >= T (FineWeb-Edu's educational-value grades, 0-5, are
thresholded at 3, the cut FineWeb-Edu applies to its classifier's scores).

For every `score/...` feature, over the joined documents that have the score:

- `auc`: ROC-AUC of the raw score for "good", the Mann-Whitney U statistic over
  positives x negatives with ties counted one half (a scorer whose paper rule keeps the lowest
  scores, perplexity, is good when its AUC is below 0.5); `auc_ci`: a percentile bootstrap
  interval (documents resampled with replacement, seeded);
- `n`, `positives`, `base_rate`: the documents evaluated and the fraction labelled good;
- `precision[rule][rate]`: the fraction of good documents among those a selection at that rate
  keeps, planned over the evaluated documents with `gristmill.sampling` exactly as `select`
  plans them, for `topk` and for the scorer's paper rule (`PAPER_RULES`: askllm top-k,
  perplexity bottom-k, density IPS, random, semdedup / prototypes top-k of their score).
  Top-k and bottom-k keep a definite set (ties broken by the id hash with `--seed`); for IPS and
  random the precision is the expected one, sum(pi * good) / sum(pi) over the inclusion
  probabilities pi of the plan. `kept[rule][rate]` is that set's size (expected, for IPS).
  Compare precision with `base_rate`: what keeping documents at random would give.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from gristmill import documents, flags, io, records, sampling
from gristmill.errors import UsageError
from gristmill.eval import scores as scores_lib
from gristmill.pipelines import registry

log = logging.getLogger(__name__)

RATES = (0.1, 0.2, 0.4)
TOPK = "topk"
DEFAULT_RULE = TOPK
# score name -> the paper's rule for it, from the scorer registry (each scorer's `rule`)
PAPER_RULES = registry.paper_rules()
# Draws per bootstrap chunk (resamples x documents), to bound memory on large label sets.
_CHUNK_DRAWS = 1 << 22


class QualityError(UsageError):
    """Labels or flags that cannot be evaluated (unreadable labels, a grade without a threshold)."""


# --- metrics (pure) --------------------------------------------------------------------------

def scorer_of(feature: str) -> str:
    """The scorer of a score feature: `score/askllm/flan-t5-xl` -> `askllm`."""
    parts = feature.split("/")
    return parts[1] if len(parts) > 1 else feature


def paper_rule(feature: str) -> str:
    """The selection rule the paper uses with this feature's scorer (top-k for scorers it does not name)."""
    return PAPER_RULES.get(scorer_of(feature), DEFAULT_RULE)


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of the values, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC-AUC: P(score of a random positive > score of a random negative), ties counting 1/2.

    Mann-Whitney: (sum of the positives' average ranks - n1 (n1 + 1) / 2) / (n1 n0). NaN when
    either class is empty. Example: scores 3, 2, 2, 1 with labels 1, 1, 0, 0: of the 4
    positive-negative pairs 3 are won and 1 tied, AUC = 3.5 / 4 = 0.875.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise QualityError(f"{s.size} scores for {y.size} labels")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    u = float(average_ranks(s)[y].sum()) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n0)


def resampled_auc(scores: Sequence[float], labels: Sequence[bool], indices: np.ndarray) -> np.ndarray:
    """ROC-AUC of each resample: row b of `indices` lists the documents of resample b (repeats allowed).

    Each resample weighs a document by how often it is drawn; with the documents grouped by
    distinct score once, a resample's AUC is sum over score groups of
    positives(g) * (negatives below g + negatives(g) / 2), divided by positives x negatives.
    NaN for a resample without both classes.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    groups, inverse = np.unique(s, return_inverse=True)
    indices = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    b, g = indices.shape[0], groups.size
    cell = np.arange(b)[:, None] * g + inverse[indices]           # (resample, score group) of each draw
    drawn_positive = y[indices]
    pos = np.bincount(cell[drawn_positive], minlength=b * g).reshape(b, g).astype(np.float64)
    neg = np.bincount(cell[~drawn_positive], minlength=b * g).reshape(b, g).astype(np.float64)
    below = np.cumsum(neg, axis=1) - neg
    won = (pos * (below + 0.5 * neg)).sum(axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, won / np.where(pairs > 0, pairs, 1.0), np.nan)


def bootstrap_auc_ci(scores: Sequence[float], labels: Sequence[bool], *, resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> Optional[tuple[float, float]]:
    """Percentile bootstrap interval of `roc_auc`: documents resampled with replacement, seeded.

    Resamples that miss a class are left out; None when fewer than half of them remain, or
    when the AUC itself is undefined.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if not 0 < confidence < 1 or resamples < 1:
        raise QualityError(f"need 0 < confidence < 1 and resamples >= 1, got {confidence}, {resamples}")
    if math.isnan(roc_auc(s, y)):
        return None
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_DRAWS // max(1, s.size))
    aucs = []
    for start in range(0, resamples, per_chunk):
        rows = min(per_chunk, resamples - start)
        aucs.append(resampled_auc(s, y, rng.integers(0, s.size, size=(rows, s.size))))
    values = np.concatenate(aucs)
    values = values[np.isfinite(values)]
    if values.size < resamples / 2:
        return None
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def selection_precision(ids: Sequence[str], scores: Sequence[float], labels: Sequence[bool], *, rule: str,
                        rate: float, seed: int = 0, feature: str = "score") -> tuple[Optional[float], float]:
    """(fraction of good documents among those `rule` keeps at `rate`, how many it keeps).

    The plan is `sampling.plan_from_scores` over these documents, as `gristmill select` makes it.
    Top-k / bottom-k: the kept set itself. IPS / random: the expectation over the plan's hash
    uniforms, sum(pi * good) / sum(pi), pi the inclusion probabilities (for random the same for
    every document, so the base rate). None when nothing is kept.
    """
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    plan = sampling.plan_from_scores(rule, ids, s, rate=rate, seed=seed, score_feature=feature)
    if rule in (TOPK, "bottomk"):
        weight = sampling.keep_mask(plan, ids, s).astype(np.float64)
    elif rule == "random":  # every document equally likely: the plan's expected size spread evenly
        weight = np.full(s.size, (plan.expected_documents or 0.0) / max(1, s.size))
    else:
        weight = np.asarray(sampling.inclusion_probability(plan, s), dtype=np.float64)
    kept = float(weight.sum())
    return (float((weight * y).sum() / kept) if kept > 0 else None), kept


def rate_key(rate: float) -> str:
    """The JSON key of a rate, e.g. `0.2`."""
    return f"{rate:g}"


def evaluate_feature(ids: Sequence[str], scores: Sequence[float], labels: Sequence[bool], *, feature: str,
                     rates: Sequence[float] = RATES, resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Every quality number of one score feature over labelled documents (see the module docstring)."""
    y = np.asarray(labels, dtype=bool)
    auc = roc_auc(scores, y)
    rule = paper_rule(feature)
    out: dict[str, Any] = {
        "n": int(y.size), "positives": int(y.sum()), "base_rate": float(y.mean()) if y.size else None,
        "auc": None if math.isnan(auc) else auc,
        "auc_ci": bootstrap_auc_ci(scores, y, resamples=resamples, confidence=confidence, seed=seed),
        "paper_rule": rule, "precision": {}, "kept": {}, "errors": {}}
    for r in dict.fromkeys((TOPK, rule)):
        out["precision"][r], out["kept"][r] = {}, {}
        for rate in rates:
            try:
                precision, kept = selection_precision(ids, scores, y, rule=r, rate=rate, seed=seed, feature=feature)
            except sampling.SamplingError as err:  # e.g. IPS over scores that are not all > 0
                out["errors"][r] = str(err)
                precision, kept = None, None
            out["precision"][r][rate_key(rate)] = precision
            out["kept"][r][rate_key(rate)] = kept
    return out


def evaluate_table(table: scores_lib.ScoreTable, labels: np.ndarray, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """`evaluate_feature` for every score feature, over the documents with a label (not NaN) and that score."""
    labels = np.asarray(labels, dtype=np.float64)
    out = {}
    for name, values in table.scores.items():
        use = np.isfinite(values) & np.isfinite(labels)
        ids = [table.ids[i] for i in np.flatnonzero(use)]
        out[name] = evaluate_feature(ids, values[use], labels[use] > 0.5, feature=name, **kwargs)
    return out


# --- labels ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelConfig:
    """Where a label is and what counts as good.

    label_field: the 0/1 label. threshold_field, threshold: a numeric grade, good iff grade >=
    threshold (threshold_field defaults to label_field). text_field, url_field: the labelled
    document, which gives its id.
    """

    label_field: str = dataclasses.field(default="label", metadata={"help": "Field holding the 0/1 label"})
    threshold_field: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Field holding a numeric grade (with --threshold)"})
    threshold: Optional[float] = dataclasses.field(default=None, metadata={"help": "A grade >= this counts as good"})
    text_field: str = dataclasses.field(default="text", metadata={
        "help": "Field of the labels file holding the text"})
    url_field: str = dataclasses.field(default="url", metadata={"help": "Field of the labels file holding the url"})

    def __post_init__(self):
        if self.threshold_field and self.threshold is None:
            raise QualityError(f"--threshold_field {self.threshold_field} needs --threshold T (good iff value >= T)")

    @property
    def field(self) -> str:
        """The field the label is read from."""
        return self.threshold_field or self.label_field


def label_value(raw: Any, config: LabelConfig) -> Optional[bool]:
    """A raw label (bool, number, or its text) as good / not good; None when absent or empty."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, list):
        if len(raw) != 1:
            raise QualityError(f"label {raw!r} has {len(raw)} values, expected one")
        raw = raw[0]
    if isinstance(raw, str):
        text = raw.strip().lower()
        if not text:
            return None
        if text in ("true", "false") and config.threshold is None:
            return text == "true"
        try:
            raw = float(text)
        except ValueError:
            raise QualityError(f"label {raw!r} in {config.field!r} is not a number or true/false") from None
    if isinstance(raw, bool) and config.threshold is None:
        return raw
    value = float(raw)
    if math.isnan(value):
        return None
    if config.threshold is not None:
        return value >= config.threshold
    if value not in (0.0, 1.0):
        raise QualityError(f"label {raw!r} in {config.field!r} is not 0/1: pass --threshold T to count "
                           f"values >= T as good")
    return value == 1.0


def _json_lines(path: str) -> Iterator[tuple[int, Any]]:
    data = io.read_bytes(path)
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except ValueError as err:
                raise QualityError(f"{path} line {number}: not JSON ({err})") from None


def read_labels(path: str, config: LabelConfig = LabelConfig()) -> tuple[dict[str, bool], dict[str, int]]:
    """({document id: good}, counts) from a JSON-lines labels file (local or gs://, optionally .gz).

    counts: `rows`, `labelled` (rows with a text and a label), `unlabelled`, `no_text`,
    `duplicates` (rows repeating an id with the same label) and `conflicts` (rows repeating an id
    with another label; such ids are left out).
    """
    labels: dict[str, bool] = {}
    conflicted: set[str] = set()
    counts = {"rows": 0, "labelled": 0, "unlabelled": 0, "no_text": 0, "duplicates": 0, "conflicts": 0}
    for number, row in _json_lines(path):
        counts["rows"] += 1
        if not isinstance(row, dict):
            raise QualityError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        text = row.get(config.text_field)
        if not isinstance(text, str) or not text.strip():
            counts["no_text"] += 1
            continue
        good = label_value(row.get(config.field), config)
        if good is None:
            counts["unlabelled"] += 1
            continue
        doc_id = documents.document_id(str(row.get(config.url_field) or ""), text)
        counts["labelled"] += 1
        if doc_id in labels or doc_id in conflicted:
            if doc_id in conflicted or labels[doc_id] != good:
                counts["conflicts"] += 1
                conflicted.add(doc_id)
                labels.pop(doc_id, None)
            else:
                counts["duplicates"] += 1
            continue
        labels[doc_id] = good
    return labels, counts


def join_labels(ids: Sequence[str], labels: Mapping[str, bool]) -> tuple[np.ndarray, dict[str, int]]:
    """Labels aligned with the records' ids (1.0 good, 0.0 not, NaN unlabelled) and join counts.

    A record id seen again (the same document twice in the corpus) is labelled once only.
    """
    out = np.full(len(ids), np.nan)
    seen: set[str] = set()
    repeated = 0
    for i, doc_id in enumerate(ids):
        if doc_id in seen:
            repeated += 1
            continue
        seen.add(doc_id)
        if doc_id in labels:
            out[i] = float(labels[doc_id])
    joined = int(np.isfinite(out).sum())
    return out, {"records": len(ids), "joined": joined, "unmatched_labels": len(labels) - joined,
                 "repeated_records": repeated}


# --- the command -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """`gristmill evaluate`: scored records, labels, and how quality is measured (module docstring)."""

    scored: str = dataclasses.field(metadata={"help": "Scored records: output directories or globs, comma-separated"})
    output: str = dataclasses.field(metadata={"help": "The JSON file to write"})
    labels: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "JSON lines of {text, url?, label}; default: the records' label feature"})
    label: LabelConfig = LabelConfig()
    rates: tuple[float, ...] = dataclasses.field(default=RATES, metadata={"help": "Selection rates for precision"})
    resamples: int = dataclasses.field(default=1000, metadata={
        "flag": "bootstrap", "help": "Bootstrap resamples for the AUC interval"})
    confidence: float = dataclasses.field(default=0.95, metadata={"help": "Confidence of the AUC interval"})
    seed: int = dataclasses.field(default=0, metadata={
        "help": "Seed of the bootstrap and of the selection plans' hash"})

    def __post_init__(self):
        for rate in self.rates:
            if not 0 < rate <= 1:
                raise QualityError(f"--rates must be in (0, 1], got {rate}")


def _records_and_labels(spec: str, field: str, sink: list) -> Iterable[records.Record]:
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    for part in parts:
        for record in records.iter_scored_records(part):
            sink.append(record.get(field))
            yield record


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Reads the records and labels, evaluates every score feature, writes and returns the JSON."""
    raw: list[Any] = []
    table = scores_lib.score_table(_records_and_labels(config.scored, config.label.field, raw))
    if config.labels:
        by_id, label_counts = read_labels(config.labels, config.label)
        labels, join_counts = join_labels(table.ids, by_id)
    else:
        by_record = {}
        for doc_id, value in zip(table.ids, raw):
            good = label_value(value, config.label)
            if good is not None:
                by_record.setdefault(doc_id, good)
        label_counts = {"rows": len(raw), "labelled": len(by_record)}
        labels, join_counts = join_labels(table.ids, by_record)
    if not table.scores:
        raise QualityError(f"{config.scored}: the records have no score/... feature to evaluate")
    if join_counts["joined"] == 0:
        raise QualityError(
            f"no labelled document joined the {len(table.ids)} records of {config.scored} (ids are "
            f"document_id(url, text): label the texts that were scored, with the same url)"
            if config.labels else f"no record of {config.scored} has a {config.label.field!r} label feature "
                                  f"(score with --keep_fields {config.label.field}, or pass --labels)")
    results = evaluate_table(table, labels, rates=config.rates, resamples=config.resamples,
                             confidence=config.confidence, seed=config.seed)
    out = {"scored": config.scored, "labels": config.labels, "label": dataclasses.asdict(config.label),
           "join": {**label_counts, **join_counts}, "rates": list(config.rates),
           "bootstrap": {"resamples": config.resamples, "confidence": config.confidence, "seed": config.seed},
           "scores": results}
    io.write_json(config.output, out)
    log.info("evaluate: %d of %d records labelled (%d labels read)", join_counts["joined"], len(table.ids),
             label_counts["labelled"])
    for name, r in results.items():
        ci = r["auc_ci"]
        log.info("%s: n %d, base rate %s, AUC %s%s", name, r["n"], _fmt(r["base_rate"]), _fmt(r["auc"]),
                 f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    return out


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run(argv: list[str]) -> dict[str, Any]:
    """Entry point of `gristmill evaluate --scored SPEC [--labels FILE] [--threshold_field F --threshold T]
    --output FILE.json`."""
    return evaluate(flags.parse_config(EvaluateConfig, argv, "gristmill evaluate", __doc__))
