"""`gristmill select`'s first pass: each unit's documents as a small columns file (what planning needs).

Pass 1 of `select` reads every record once and keeps, per input unit, what the plan, its checks and
the report need of each document (`Columns`: float32 score, the id's hash uniform, token count; about
21 bytes a document) in `versions/<v>/columns/<unit>.<h>.npz`. Every later pass reads these files
(`UnitColumns`), so what a runner holds between passes is a list of files, never the documents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _bytes_io
import json
from typing import Any, NamedTuple, Optional

import apache_beam as beam
import numpy as np

from gristmill import io, records, sampling
from gristmill.pipelines import kit

COLUMNS_DIR, COLUMNS_SUFFIX = "columns", ".npz"


def score_of(record: records.Record, feature: Optional[str]) -> Optional[float]:
    """The record's score under `feature`, or None when it has none (or no feature is needed)."""
    if feature is None:
        return None
    value = record.get(feature)
    if isinstance(value, list):
        raise ValueError(f"document {record[records.ID]}: {feature!r} has {len(value)} values, expected one")
    return None if value is None else float(value)


def tokens_of(record: records.Record, feature: Optional[str]) -> int:
    """Token count of a record: its `tokens/<tokenizer>` feature, else the byte-length proxy."""
    if feature:
        if feature not in record:
            raise ValueError(f"document {record[records.ID]} has no {feature!r} feature")
        return int(record[feature])
    return sampling.approx_token_count(record[records.TEXT])


@dataclasses.dataclass(frozen=True)
class Planning:
    """What pass 1 reads of each document: the score feature, the rule that reads it (its checks), the
    seed of the hash uniforms, the tokens feature and the missing-score policy (--plan's when given)."""

    rule: str
    feature: Optional[str]
    seed: int
    tokens_feature: Optional[str]
    missing: str

    @property
    def needs_score(self) -> bool:
        """Whether the planned population is the documents with the score (else every document)."""
        return sampling.RULES[self.rule].needs_scores and self.feature is not None

    def columns_path(self, version: str, unit: str) -> str:
        """A unit's columns file, relative to the output directory: named by what its columns hold."""
        what = json.dumps([self.feature, self.tokens_feature, self.seed]).encode()
        return kit.version_path(version, f"{COLUMNS_DIR}/{unit}.{hashlib.blake2b(what, digest_size=4).hexdigest()}"
                                         f"{COLUMNS_SUFFIX}")


class Columns(NamedTuple):
    """One unit's documents as columns: all the plan, the report and their checks need of them (about
    21 bytes a document). scored: has the score feature; score: float32 values as float64 (NaN where
    absent); u: `sampling.uniform_from_id` of the id with the planning seed; tokens: int64."""

    scored: np.ndarray
    score: np.ndarray
    u: np.ndarray
    tokens: np.ndarray

    def population(self, planning: Planning) -> Columns:
        """The documents a plan is made over: those with the score, or every document (no score needed)."""
        if not planning.needs_score:
            return self
        keep = self.scored
        return Columns(keep[keep], self.score[keep], self.u[keep], self.tokens[keep])


def columns_bytes(columns: Columns) -> bytes:
    """A Columns as an .npz file's bytes (score stored as float32)."""
    buffer = _bytes_io.BytesIO()
    np.savez(buffer, scored=columns.scored, score=columns.score.astype(np.float32), u=columns.u,
             tokens=columns.tokens)
    return buffer.getvalue()


def read_columns(output_dir: str, relative_path: str) -> Columns:
    """A unit's Columns from its file under the output directory (written by pass 1)."""
    with np.load(_bytes_io.BytesIO(io.read_bytes(io.join(output_dir, relative_path)))) as data:
        return Columns(data["scored"], data["score"].astype(np.float64), data["u"], data["tokens"])


class _UnitSpill:
    """One unit's documents as they are read: lists until the unit's info Item closes it."""

    def __init__(self):
        self.ids, self.scores, self.u, self.tokens, self.features = [], [], [], [], set()

    def add(self, record: records.Record, planning: Planning) -> None:
        doc_id = record[records.ID]
        self.ids.append(doc_id)
        self.scores.append(score_of(record, planning.feature))
        self.u.append(sampling.uniform_from_id(doc_id, planning.seed))
        self.tokens.append(tokens_of(record, planning.tokens_feature))
        self.features.update(k for k in record if k.startswith("score/"))

    def finish(self, output_dir: str, version: str, planning: Planning, unit: str) -> dict[str, Any]:
        """Writes the unit's columns file (once: a rerun keeps it) and returns what the plan needs to know
        of the unit without reading it: its file, counts, score features and first bad document."""
        scored = np.array([s is not None for s in self.scores], dtype=bool)
        with np.errstate(over="ignore", invalid="ignore"):
            raw = np.array([np.nan if s is None else s for s in self.scores], dtype=np.float64)
            score = raw.astype(np.float32).astype(np.float64)
        columns = Columns(scored, score, np.array(self.u, dtype=np.float64), np.array(self.tokens, dtype=np.int64))
        path = planning.columns_path(version, unit)
        kit.write_once(output_dir, path, columns_bytes(columns))
        population = scored if planning.needs_score else np.ones(len(scored), dtype=bool)
        invalid = None
        if planning.needs_score:
            with np.errstate(invalid="ignore"):
                bad = scored & (~np.isfinite(score) | ((score <= 0) if planning.rule == sampling.IPS.name else False))
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                invalid = [self.ids[k], float(raw[k])]
        absent = ~scored if planning.needs_score else np.zeros(len(scored), dtype=bool)
        return {"unit": unit, "path": path, "documents": int(population.sum()),
                "tokens": int(columns.tokens[population].sum()), "missing": int(absent.sum()),
                "zero_tokens": int((columns.tokens[population] == 0).sum()), "features": sorted(self.features),
                "first_missing": self.ids[int(np.flatnonzero(absent)[0])] if absent.any() else None,
                "invalid": invalid}


class SpillFn(beam.DoFn):
    """Items -> one dict per unit, after writing the unit's Columns (`_UnitSpill.finish`). A unit's Items
    arrive in one bundle, its info Item last (`kit.ReadUnits`)."""

    def __init__(self, output_dir: str, version: str, planning: Planning):
        self.output_dir, self.version, self.planning = output_dir, version, planning

    def start_bundle(self):
        self.open: dict[str, _UnitSpill] = {}

    def process(self, item: kit.Item):
        if item.kind == kit.RECORD:
            self.open.setdefault(item.unit, _UnitSpill()).add(item.value, self.planning)
        elif item.kind == kit.UNIT:
            yield self.open.pop(item.unit, _UnitSpill()).finish(self.output_dir, self.version, self.planning,
                                                                 item.unit)

    def finish_bundle(self):
        if self.open:
            raise RuntimeError(f"units left unfinished at the end of a bundle: {sorted(self.open)[:5]}; a unit's "
                               f"Items must stay in one bundle")


def corpus_facts(units: list[dict[str, Any]], planning: Planning) -> dict[str, Any]:
    """The whole input's counts from its units' dicts, after the checks that need no pass over the data:
    a document without the score (policy error) or with a score the rule cannot use fails the job here,
    naming the document and the score features the records have."""
    units = sorted(units, key=lambda u: u["unit"])
    present = sorted(set().union(*(u["features"] for u in units)))
    missing = [u["first_missing"] for u in units if u["first_missing"] is not None]
    if missing and planning.missing == sampling.MissingScorePolicy.ERROR.value:
        raise sampling.MissingScoreError(
            f"document {missing[0]} has no score feature {planning.feature!r} (use --missing drop|keep to allow "
            f"it); score features in the records: {', '.join(present) or 'none'}")
    invalid = [u["invalid"] for u in units if u["invalid"] is not None]
    if invalid:
        doc_id, score = invalid[0]
        if planning.rule == sampling.IPS.name and np.isfinite(np.float32(score)):
            raise sampling.SamplingError(f"ips: scores must be > 0 (keep probability is proportional to 1/score), "
                                         f"got {score!r} for document {doc_id!r}")
        raise sampling.SamplingError(f"{planning.rule}: non-finite score {score!r} for document {doc_id!r}")
    return {"present": present, "paths": [u["path"] for u in units],
            **{k: sum(u[k] for u in units) for k in ("documents", "tokens", "missing", "zero_tokens")}}


def _paths(facts: dict[str, Any]) -> list[str]:
    return facts["paths"]


class UnitColumns(beam.PTransform):
    """The corpus facts -> each unit's Columns (population only), read afresh from its file.

    Each pass applies its own UnitColumns, so what a runner keeps between passes is the list of
    files, never the documents (the in-process runner materialises a PCollection that several passes
    read)."""

    def __init__(self, output_dir: str, planning: Planning):
        super().__init__()
        self.output_dir, self.planning = output_dir, planning

    def expand(self, facts):
        output_dir, planning = self.output_dir, self.planning
        return (facts
                | "Paths" >> beam.FlatMap(_paths)
                | "Reshuffle" >> beam.Reshuffle()
                | "Read" >> beam.Map(lambda path: read_columns(output_dir, path).population(planning)))
