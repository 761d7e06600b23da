"""Calibration views of every scorer (paper App. E, Figure 9): what a score value means.

A raw score (P("yes") = 0.31, a density of 412) says little until it is placed in its
distribution. For every `score/...` feature of a scored corpus this module computes:

- `percentiles`: the score at each percentile (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100),
  linear interpolation between order statistics (numpy's default);
- `documents`: the document at each chosen percentile (id, url, score, excerpt): the one at
  rank p / 100 * (n - 1), rounded half up, in ascending (score, id) order, so p0 is the lowest and
  p100 the highest;
- `side_by_side`: for chosen documents (those above, plus any ids asked for), their percentile
  rank under every scorer, `100 * (below + equal / 2) / n` over the documents that scorer scored
  (scipy's `percentileofscore(kind="mean")`), so a document at the 95th percentile of Ask-LLM
  and the 10th of Density reads as such;
- `agreement`: Kendall tau-b between every two scorers with the number of documents both scored
  (`metrics.rank_correlation_matrix`, Figure 7).

Pure functions over a `scores.ScoreTable`; `to_json` / `write_json` write `calibration.json`, and
`gristmill report` renders the same data as its calibration section.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional, Sequence

import numpy as np

from gristmill import io
from gristmill.eval import metrics
from gristmill.eval import scores as scores_lib

PERCENTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
DOCUMENT_PERCENTILES = (0, 10, 50, 90, 100)
EXCERPT_CHARS = 200
CALIBRATION_FILE = "calibration.json"


def percentile_key(p: float) -> str:
    """The JSON key of a percentile, e.g. `p5`, `p99.9`."""
    return f"p{p:g}"


def score_at_percentiles(values: Sequence[float], percentiles: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """The score at each percentile of the finite values (missing scores left out); {} when none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {}
    return {percentile_key(p): float(q) for p, q in zip(percentiles, np.percentile(v, list(percentiles)))}


def percentile_ranks(values: Sequence[float]) -> np.ndarray:
    """Each document's percentile rank among the finite values, 100 * (below + equal / 2) / n; NaN if missing."""
    v = np.asarray(values, dtype=np.float64)
    have = np.isfinite(v)
    ranks = np.full(v.shape, np.nan)
    ordered = np.sort(v[have])
    if ordered.size:
        below = np.searchsorted(ordered, v[have], side="left")
        at_or_below = np.searchsorted(ordered, v[have], side="right")
        ranks[have] = 100.0 * (below + at_or_below) / (2.0 * ordered.size)
    return ranks


def indices_at_percentiles(values: Sequence[float], ids: Sequence[str],
                           percentiles: Sequence[float]) -> list[Optional[int]]:
    """Per percentile p, the index of the document at 0-based rank p / 100 * (n - 1), rounded half up,
    in ascending (score, id) order (None for every p when no document has a score)."""
    v = np.asarray(values, dtype=np.float64)
    have = np.flatnonzero(np.isfinite(v))
    if have.size == 0:
        return [None] * len(percentiles)
    order = have[np.lexsort((np.asarray(ids, dtype=object)[have].astype(str), v[have]))]
    return [int(order[int(math.floor(p / 100.0 * (order.size - 1) + 0.5))]) for p in percentiles]


def _document(table: scores_lib.ScoreTable, i: int, chars: int) -> dict[str, Any]:
    return {"id": table.ids[i], "url": table.url(i), "excerpt": scores_lib.excerpt(table.texts[i], chars)}


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The calibration views of one scored corpus (see the module docstring); plain values."""

    documents_total: int
    scored: dict[str, int]
    percentiles: dict[str, dict[str, float]]
    documents: dict[str, list[dict[str, Any]]]
    side_by_side: list[dict[str, Any]]
    agreement: Optional[metrics.CorrelationMatrix]


def calibration(table: scores_lib.ScoreTable, *, percentiles: Sequence[float] = PERCENTILES,
                document_percentiles: Sequence[float] = DOCUMENT_PERCENTILES, ids: Sequence[str] = (),
                chars: int = EXCERPT_CHARS) -> Calibration:
    """Every calibration view over every score feature of the table.

    The side-by-side documents are those at `document_percentiles` of each scorer, then `ids`
    (ids the table lacks are skipped), each once, with the views that chose it in `chosen_by`.
    """
    ranks = {name: percentile_ranks(values) for name, values in table.scores.items()}
    at: dict[str, list[dict[str, Any]]] = {}
    chosen: dict[int, list[str]] = {}
    for name, values in table.scores.items():
        at[name] = []
        for p, i in zip(document_percentiles, indices_at_percentiles(values, table.ids, document_percentiles)):
            if i is None:
                continue
            at[name].append({"percentile": float(p), "score": float(values[i]), **_document(table, i, chars)})
            chosen.setdefault(i, []).append(f"{name} {percentile_key(p)}")
    position = {doc_id: i for i, doc_id in reversed(list(enumerate(table.ids)))}
    for doc_id in ids:
        if doc_id in position:
            chosen.setdefault(position[doc_id], []).append("asked for")
    rows = []
    for i, why in chosen.items():
        rows.append({**_document(table, i, chars), "chosen_by": why,
                     "percentile": {n: _finite(r[i]) for n, r in ranks.items()},
                     "score": {n: _finite(v[i]) for n, v in table.scores.items()}})
    agreement = metrics.rank_correlation_matrix(table.scores) if table.scores else None
    return Calibration(
        documents_total=len(table.ids),
        scored={name: int(np.isfinite(v).sum()) for name, v in table.scores.items()},
        percentiles={name: score_at_percentiles(v, percentiles) for name, v in table.scores.items()},
        documents=at, side_by_side=rows, agreement=agreement)


def _finite(x: float) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


def to_json(cal: Calibration) -> dict[str, Any]:
    """The calibration as JSON-ready values (NaN tau -> null)."""
    out: dict[str, Any] = {f.name: getattr(cal, f.name) for f in dataclasses.fields(cal) if f.name != "agreement"}
    m = cal.agreement
    out["agreement"] = None if m is None else {
        "names": list(m.names), "tau": [[_finite(x) for x in row] for row in m.tau.tolist()],
        "documents": m.pairs.tolist()}
    return out


def write_json(cal: Calibration, path: str) -> None:
    """Writes `calibration.json` (local or gs://, atomically), percentiles in ascending order."""
    io.write_text(path, json.dumps(to_json(cal), indent=2, ensure_ascii=False) + "\n")
