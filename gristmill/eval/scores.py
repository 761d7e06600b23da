"""Scored records as aligned score columns: the table the report, calibration and quality views share.

Every `score/...` float feature of the records becomes one column, NaN where a document lacks
it (Ask-LLM may score only a subset), so any scorer present is covered without a fixed list.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np

from gristmill import records

SCORE_PREFIX = "score/"
EXCERPT_CHARS = 300


@dataclasses.dataclass(frozen=True)
class ScoreTable:
    """Documents and their scores: scores[name][i] is document i's score (NaN when it has none)."""

    ids: list[str]
    texts: list[str]
    scores: dict[str, np.ndarray]
    urls: list[str] = dataclasses.field(default_factory=list)

    def url(self, i: int) -> str:
        """Document i's url ("" when the records carry none)."""
        return self.urls[i] if i < len(self.urls) else ""


def is_score(name: str, value: Any) -> bool:
    """Whether a record feature is a single score value (`score/...`, a float or int, not a list)."""
    return (name.startswith(SCORE_PREFIX) and isinstance(value, (int, float, np.floating, np.integer))
            and not isinstance(value, bool))


def score_table(items: Iterable[Mapping[str, Any]]) -> ScoreTable:
    """Collects every `score/...` feature of the records into aligned arrays (sorted names)."""
    ids, texts, urls, columns = [], [], [], {}
    for i, record in enumerate(items):
        ids.append(str(record.get(records.ID, "")))
        texts.append(str(record.get(records.TEXT, "")))
        urls.append(str(record.get(records.URL, "") or ""))
        for key, value in record.items():
            if is_score(key, value):
                columns.setdefault(key, {})[i] = float(value)
    n = len(ids)
    scores = {}
    for name in sorted(columns):
        column = np.full(n, np.nan)
        column[list(columns[name])] = list(columns[name].values())
        scores[name] = column
    return ScoreTable(ids, texts, scores, urls)


def read_score_table(spec: str) -> ScoreTable:
    """The score table of scored records: comma-separated output directories or globs (local or gs://)."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    return score_table(r for part in parts for r in records.iter_scored_records(part))


def excerpt(text: str, chars: int = EXCERPT_CHARS) -> str:
    """The first `chars` characters of a text, whitespace collapsed, with an ellipsis when cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[:chars].rstrip() + "\u2026"
