"""`gristmill select`: turn scores into a training subset with a selection plan (docs/paper.md §4).

    gristmill select --input out/askllm --output out/top60 \\
        --score score/askllm/flan-t5-xl --rule topk --rate 0.6 [--seed 0] [--plan_only]

Pass 1 reads every record once and keeps, per input unit, a small columnar file of what planning
needs (`versions/<v>/columns/<unit>.<h>.npz`: float32 score, the id's hash uniform, token count;
about 21 bytes a document), so the passes that follow read those files, not the records, and the
runner holds nothing per document between them. The plan over the whole corpus
(`gristmill.sampling`) is exact by default, in bounded memory: radix-histogram passes and a gather
of the few documents at the threshold (`gristmill.threshold_search`; byte-identical to planning in
memory), or with `--approximate` from Beam's approximate quantiles (top-k, bottom-k, random) or a
score histogram (IPS), whose error bound the plan records in `expected_error`. The plan is
saved as `plan.json`, then applied record by record: the selected records are written with all
their features, one file per input unit (`units/<unit>.tfrecord`, listed in the manifest's
`outputs.records`; `--input` of the next job can be this directory, so selections chain), and
`report.json` + `histogram.png` give the counts, the realised rate and the score distribution
before and after. Plan, report and histogram are written under `versions/<v>/` (the manifest's
`outputs.plan`, `outputs.report`, `outputs.histogram`), with latest copies at the top level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _bytes_io
import json
import logging
from typing import Any, NamedTuple, Optional

import apache_beam as beam
import numpy as np

from gristmill import exact_sum, io, records, sampling, threshold_search
from gristmill.pipelines import kit, units

PLAN_FILE = "plan.json"
REPORT_FILE = "report.json"
HISTOGRAM_FILE = "histogram.png"
SELECTED, NOT_SELECTED, MISSING_SCORE, PLAN_ONLY = "selected", "not_selected", "missing_score", "plan_only"
COLUMNS_DIR, COLUMNS_SUFFIX = "columns", ".npz"
NUM_QUANTILES = 10001
HISTOGRAM_SAMPLE = 10000
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """What to select: a rule over a score feature at a rate, or an existing plan file."""

    rule: str = dataclasses.field(default="topk", metadata={
        "help": "topk, bottomk, ips (keep probability ~ 1/score) or random"})
    score: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Score feature, e.g. score/askllm/flan-t5-xl"})
    rate: Optional[float] = dataclasses.field(default=None, metadata={"help": "Target fraction in (0, 1]"})
    rate_by: str = dataclasses.field(default=sampling.DOCUMENTS, metadata={"help": "documents or tokens"})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the keep decisions (IPS, random, ties)"})
    tokens_feature: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "tokens/<tokenizer> feature for --rate_by tokens (default: UTF-8 bytes / 4)"})
    missing: str = dataclasses.field(default=sampling.MissingScorePolicy.ERROR.value, metadata={
        "help": "Documents without the score: error, drop or keep"})
    approximate: bool = dataclasses.field(default=False, metadata={
        "help": "Plan from approximate quantiles / a histogram instead of gathering all scores"})
    plan: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Apply this existing plan.json instead of planning"})
    plan_only: bool = dataclasses.field(default=False, metadata={"help": "Write plan.json and the report only"})

    def __post_init__(self):
        if self.plan:
            return
        if self.rate is None:
            raise ValueError("--rate is required (a fraction in (0, 1]) unless --plan is given")
        self.spec()

    def spec(self) -> sampling.SelectionSpec:
        """What to select, checked (`sampling.SelectionSpec`)."""
        return sampling.SelectionSpec(rule=self.rule, score=self.score, rate=self.rate, rate_by=self.rate_by,
                                      missing=self.missing)


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


def absent_score_message(feature: str, present: Any, documents: int) -> str:
    """Why a plan over `feature` cannot be made, naming the score features the records do have."""
    have = sorted(present or ())
    found = f"the score features they have: {', '.join(have)}" if have else "they have no score/... feature at all"
    return (f"no scored documents to plan over: each of the {documents} documents has no score feature "
            f"{feature!r}; {found}")


def _exact_plan(rows: list[tuple[str, Optional[float], int]], config: SelectConfig,
                present: Any = ()) -> sampling.Plan:
    """The in-memory exact plan (`sampling.plan_from_rows`): for IPS, and zero-token corpora."""
    message = absent_score_message(config.score, present, len(rows)) if config.score else None
    return sampling.plan_from_rows(rows, config.spec(), seed=config.seed, tokens_feature=config.tokens_feature,
                                   absent_message=message)


def histogram_edges(quantiles: list[float]) -> np.ndarray:
    """Histogram edges for IPS planning from score quantiles: unique, with the top edge above the max."""
    edges = np.unique(np.asarray(quantiles, dtype=np.float64))
    if edges.size == 1:
        edges = np.append(edges, edges[0] * 2)
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges


def _write_file(output_dir: str, version: str, name: str, data: bytes) -> None:
    """Writes a job file of this version (`versions/<v>/<name>`, listed in the manifest, never replaced)
    and its latest copy at the top level (`<name>`, replaced by the next version)."""
    kit.write_once(output_dir, kit.version_path(version, name), data)  # a rerun keeps the version's file
    io.atomic_write(io.join(output_dir, name), data)


# --- pass 1: each unit's columns, spilled to a small file -----------------------------------------

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


def planning_of(config: SelectConfig) -> Planning:
    """The Planning of a select run: from its flags, or from the plan file it applies."""
    if config.plan:
        plan = load_plan(config.plan)
        return Planning(plan.rule.name, plan.score_feature, plan.seed, config.tokens_feature, plan.missing.value)
    return Planning(config.rule, config.score, config.seed, config.tokens_feature, config.missing)


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


class _SpillFn(beam.DoFn):
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


# --- exact top-k, bottom-k and random: threshold_search over the columns -----------------------------

def _start_state(facts: dict[str, Any], config: SelectConfig) -> dict[str, Any]:
    by_tokens = config.rate_by == sampling.TOKENS
    total = facts["tokens"] if by_tokens else facts["documents"]
    return {"target": config.rate * total, "documents": facts["documents"], "tokens": facts["tokens"],
            "in_memory": bool(by_tokens and facts["zero_tokens"]), "search": threshold_search.Search()}


def _sort_keys(columns: Columns, rule: str):
    scores = None if rule == sampling.Random.name else columns.score
    return threshold_search.sort_keys(rule, scores, columns.u)


class _LevelHistogram(beam.CombineFn):
    """Documents and tokens per bin of one level of `threshold_search` over Columns, among the documents
    under the prefix chosen so far (side input: the search state)."""

    def __init__(self, rule: str):
        self.rule = rule

    def create_accumulator(self, state):
        return np.zeros((2, threshold_search.BINS), dtype=np.int64)

    def add_input(self, acc, columns, state):
        if state["in_memory"] or state["search"].keeps_all:
            return acc
        key32, m = _sort_keys(columns, self.rule)
        return acc + threshold_search.histogram(key32, m, columns.tokens, state["search"].prefix)

    def merge_accumulators(self, accs, state):
        return sum(accs, np.zeros((2, threshold_search.BINS), dtype=np.int64))

    def extract_output(self, acc, state):
        return acc


def _next_state(counts: np.ndarray, state: dict[str, Any], config: SelectConfig) -> dict[str, Any]:
    if state["in_memory"]:
        return state
    search = threshold_search.choose(state["search"], counts, config.rate_by == sampling.TOKENS, state["target"])
    return {**state, "search": search}


def _latest(rows):
    return max(rows, key=lambda r: (r[0], r[1]), default=None)


class _Gather(beam.CombineFn):
    """The documents at the threshold (the full prefix) and the first one below them, as
    `threshold_search` Rows; or, for a corpus with zero-token documents planned by tokens, every
    document's columns (planned in memory: about 21 bytes a document)."""

    def __init__(self, rule: str):
        self.rule = rule

    def create_accumulator(self, state):
        return [], None, []

    def add_input(self, acc, columns, state):
        rows, after, kept = acc
        if state["in_memory"]:
            return rows, after, kept + [columns]
        search = state["search"]
        if search.keeps_all:
            return acc
        key32, m = _sort_keys(columns, self.rule)
        score = (lambda k: None) if self.rule == sampling.Random.name else (lambda k: float(columns.score[k]))

        def row(k):
            return int(key32[k]), int(m[k]), score(k), float(columns.u[k]), int(columns.tokens[k])

        inside = threshold_search.prefix_mask(key32, m, search.prefix)
        below = np.flatnonzero(~inside & threshold_search.below_prefix(key32, m, search.prefix))
        best_below = after
        if below.size:  # the highest-ranked of them: the largest (key32, m)
            best_below = _latest([r for r in (after, row(below[np.lexsort((m[below], key32[below]))[-1]]))
                                  if r is not None])
        return rows + [row(k) for k in np.flatnonzero(inside)], best_below, kept

    def merge_accumulators(self, accs, state):
        rows, afters, kept = [], [], []
        for r, a, k in accs:
            rows += r
            kept += k
            if a is not None:
                afters.append(a)
        return rows, _latest(afters), kept

    def extract_output(self, acc, state):
        return acc


def _search_plan(state: dict[str, Any], gathered: tuple, facts: dict[str, Any], config: SelectConfig) -> sampling.Plan:
    """The plan from the finished search (or, for zero-token documents, from every document's columns)."""
    if config.score and config.spec().needs_scores and state["documents"] == 0:
        raise sampling.MissingScoreError(absent_score_message(config.score, facts["present"], facts["missing"]))
    rows, after, kept = gathered
    common = dict(rate=config.rate, seed=config.seed, rate_by=config.rate_by,
                  tokens_feature=config.tokens_feature or sampling.PROXY_TOKENS, num_missing=facts["missing"],
                  missing=config.missing)
    if state["in_memory"]:
        return sampling.plan_from_uniforms(
            config.rule, np.concatenate([c.score for c in kept]), np.concatenate([c.u for c in kept]),
            np.concatenate([c.tokens for c in kept]), score_feature=config.score, **common)
    found, documents, tokens = threshold_search.threshold(
        state["search"], rows, after, config.rate_by == sampling.TOKENS, state["target"])
    return threshold_search.to_plan(config.rule, found, documents, tokens, num_documents=state["documents"],
                                    num_tokens=state["tokens"], score_feature=config.score, **common)


class BoundedExactPlan(beam.PTransform):
    """Corpus facts -> the exact top-k / bottom-k / random plan, in bounded memory.

    Four histogram passes over the units' Columns and one gather of the few documents at the threshold
    (`gristmill.threshold_search`); the plan equals `sampling.plan_from_scores` over the same documents.
    """

    def __init__(self, config: SelectConfig, output_dir: str, planning: Planning):
        super().__init__()
        self.config, self.output_dir, self.planning = config, output_dir, planning

    def expand(self, facts):
        config, rule = self.config, self.config.rule
        facts_side = beam.pvalue.AsSingleton(facts)
        state = facts | "Start" >> beam.Map(_start_state, config)
        for level in range(threshold_search.LEVELS):
            side = beam.pvalue.AsSingleton(state)
            state = (facts
                     | f"Columns{level}" >> UnitColumns(self.output_dir, self.planning)
                     | f"Level{level}" >> beam.CombineGlobally(_LevelHistogram(rule), side)
                     | f"Choose{level}" >> beam.Map(_next_state, side, config))
        side = beam.pvalue.AsSingleton(state)
        gathered = (facts
                    | "ColumnsGather" >> UnitColumns(self.output_dir, self.planning)
                    | "Gather" >> beam.CombineGlobally(_Gather(rule), side))
        return (state
                | "SearchPlan" >> beam.Map(_search_plan, beam.pvalue.AsSingleton(gathered), facts_side, config))


# --- exact IPS: threshold_search's IPS section over the columns --------------------------------------

class _IpsLevel(beam.CombineFn):
    """One pass of the bounded IPS search (`threshold_search.ips_histogram`) over Columns: pass 1 (side
    input: a search without a bin) over every document, pass 2 inside the bin the search names."""

    def __init__(self, by_tokens: bool):
        self.by_tokens = by_tokens

    def create_accumulator(self, search):
        return np.zeros((2, threshold_search.BINS), dtype=np.int64), {}

    def add_input(self, acc, columns, search):
        if search.done:
            return acc
        part = threshold_search.ips_histogram(columns.score, columns.tokens, self.by_tokens, search.high)
        return threshold_search.ips_merge(acc, part)

    def merge_accumulators(self, accs, search):
        merged = None
        for acc in accs:
            merged = acc if merged is None else threshold_search.ips_merge(merged, acc)
        return merged

    def extract_output(self, acc, search):
        return acc


class _IpsExpected(beam.CombineFn):
    """Exact sums of the inclusion probabilities and of probability * tokens, once c is known."""

    def create_accumulator(self, search):
        return exact_sum.ZERO, exact_sum.ZERO

    def add_input(self, acc, columns, search):
        documents, tokens = threshold_search.ips_expected(columns.score, columns.tokens, search.c)
        return exact_sum.add(acc[0], documents), exact_sum.add(acc[1], tokens)

    def merge_accumulators(self, accs, search):
        accs = list(accs)
        return exact_sum.add_all(a[0] for a in accs), exact_sum.add_all(a[1] for a in accs)

    def extract_output(self, acc, search):
        return acc


def _ips_start(facts: dict[str, Any], config: SelectConfig) -> threshold_search.IpsSearch:
    by_tokens = config.rate_by == sampling.TOKENS
    return threshold_search.IpsSearch(config.rate * (facts["tokens"] if by_tokens else facts["documents"]))


def _ips_plan(expected, search: threshold_search.IpsSearch, facts: dict[str, Any],
              config: SelectConfig) -> sampling.Plan:
    if facts["documents"] == 0:
        raise sampling.MissingScoreError(absent_score_message(config.score, facts["present"], facts["missing"]))
    return threshold_search.ips_to_plan(
        search.c, *expected, num_documents=facts["documents"], num_tokens=facts["tokens"],
        rate=config.rate, seed=config.seed, rate_by=config.rate_by, score_feature=config.score,
        tokens_feature=config.tokens_feature or sampling.PROXY_TOKENS, num_missing=facts["missing"],
        missing=config.missing)


class BoundedIpsPlan(beam.PTransform):
    """Corpus facts -> the exact IPS plan, in bounded memory.

    Two radix passes over the units' Columns find the distinct score where the normaliser's piecewise
    linear function crosses the target, a third sums the expected sizes (`gristmill.threshold_search`,
    IPS section); every sum is exact, so the plan equals `sampling.plan_from_scores` over the same
    documents, byte for byte.
    """

    def __init__(self, config: SelectConfig, output_dir: str, planning: Planning):
        super().__init__()
        self.config, self.output_dir, self.planning = config, output_dir, planning

    def expand(self, facts):
        config = self.config
        by_tokens = config.rate_by == sampling.TOKENS
        start = facts | "Start" >> beam.Map(_ips_start, config)
        start_side = beam.pvalue.AsSingleton(start)
        high = (facts
                | "Columns0" >> UnitColumns(self.output_dir, self.planning)
                | "Level0" >> beam.CombineGlobally(_IpsLevel(by_tokens), start_side)
                | "ChooseBin" >> beam.Map(lambda h, st: threshold_search.ips_choose_high(*h, by_tokens, st.target),
                                         start_side))
        high_side = beam.pvalue.AsSingleton(high)
        search = (facts
                  | "Columns1" >> UnitColumns(self.output_dir, self.planning)
                  | "Level1" >> beam.CombineGlobally(_IpsLevel(by_tokens), high_side)
                  | "ChooseScore" >> beam.Map(lambda h, s: threshold_search.ips_choose_score(s, *h, by_tokens),
                                              high_side))
        search_side = beam.pvalue.AsSingleton(search)
        expected = (facts
                    | "ColumnsExpected" >> UnitColumns(self.output_dir, self.planning)
                    | "Expected" >> beam.CombineGlobally(_IpsExpected(), search_side))
        return expected | "IpsPlan" >> beam.Map(_ips_plan, search_side, beam.pvalue.AsSingleton(facts), config)


# --- approximate plans ---------------------------------------------------------------------------

class _IpsHistogram(beam.CombineFn):
    """Per-bin sums of weight and weight/score over edges from a side input (sampling.ips_histogram),
    over Columns. The accumulator is the pair of sum arrays, so merging is addition."""

    def __init__(self, by_tokens: bool):
        self.by_tokens = by_tokens

    def create_accumulator(self, quantiles):
        size = histogram_edges(quantiles).size - 1
        return np.zeros(size), np.zeros(size)

    def add_input(self, acc, columns, quantiles):
        if not len(columns.score):
            return acc
        weights = columns.tokens if self.by_tokens else np.ones(len(columns.score))
        w, inv = sampling.ips_histogram(columns.score, weights, histogram_edges(quantiles))
        return acc[0] + w, acc[1] + inv

    def merge_accumulators(self, accs, quantiles):
        accs = list(accs)
        return sum(a[0] for a in accs), sum(a[1] for a in accs)

    def extract_output(self, acc, quantiles):
        return {"edges": histogram_edges(quantiles).tolist(), "weights": np.asarray(acc[0]).tolist(),
                "inverse": np.asarray(acc[1]).tolist()}


def _approximate_plan(facts: dict[str, Any], quantiles: list[float], histogram: Optional[dict[str, Any]],
                      config: SelectConfig) -> sampling.Plan:
    if config.score and facts["documents"] == 0:
        raise sampling.MissingScoreError(absent_score_message(config.score, facts["present"], facts["missing"]))
    common = dict(rate=config.rate, seed=config.seed, num_documents=facts["documents"],
                  num_tokens=facts["tokens"], rate_by=config.rate_by, score_feature=config.score,
                  tokens_feature=config.tokens_feature or sampling.PROXY_TOKENS,
                  num_missing=facts["missing"], missing=config.missing)
    if config.rule == sampling.IPS.name:
        return sampling.plan_from_histogram(histogram["edges"], histogram["weights"], histogram["inverse"],
                                            **common)
    return sampling.plan_from_quantiles(config.rule, quantiles, **common)


class PlanSelection(beam.PTransform):
    """Corpus facts (`corpus_facts`, with the units' Columns files) -> a single-element PCollection
    holding the selection plan over all of them: exact in bounded memory, or --approximate."""

    def __init__(self, config: SelectConfig, output_dir: str, planning: Planning):
        super().__init__()
        self.config, self.output_dir, self.planning = config, output_dir, planning

    def expand(self, facts):
        config = self.config
        if not config.approximate:
            if config.rule == sampling.IPS.name:
                return facts | "ExactIps" >> BoundedIpsPlan(config, self.output_dir, self.planning)
            return facts | "Exact" >> BoundedExactPlan(config, self.output_dir, self.planning)
        if not config.spec().needs_scores:
            quantiles = facts.pipeline | "NoQuantiles" >> beam.Create([None])
        else:
            quantiles = (facts
                         | "ColumnsQuantiles" >> UnitColumns(self.output_dir, self.planning)
                         | "Scores" >> beam.FlatMap(lambda columns: columns.score.tolist())
                         | "Quantiles" >> beam.ApproximateQuantiles.Globally(NUM_QUANTILES))
        if config.rule == sampling.IPS.name:
            histogram = (facts
                         | "ColumnsHistogram" >> UnitColumns(self.output_dir, self.planning)
                         | "IpsHistogram" >> beam.CombineGlobally(_IpsHistogram(config.rate_by == sampling.TOKENS),
                                                                  beam.pvalue.AsSingleton(quantiles)))
        else:
            histogram = facts.pipeline | "NoHistogram" >> beam.Create([None])
        return (facts
                | "ApproximatePlan" >> beam.Map(_approximate_plan, beam.pvalue.AsSingleton(quantiles),
                                                beam.pvalue.AsSingleton(histogram), config))


def load_plan(path: str) -> sampling.Plan:
    """Reads a plan file written by `gristmill select` (local or gs://)."""
    return sampling.Plan.from_json(io.read_bytes(path))


def decision(record: records.Record, plan: sampling.Plan) -> str:
    """`selected`, `not_selected` or `missing_score` (dropped for lack of the score) for one record."""
    return row_decision(record[records.ID], score_of(record, plan.score_feature), plan)


def row_decision(doc_id: str, score: Optional[float], plan: sampling.Plan) -> str:
    """`decision` from a document's id and score alone."""
    if score is None and plan.score_feature and plan.missing == sampling.MissingScorePolicy.DROP:
        return MISSING_SCORE
    return SELECTED if sampling.keep(plan, doc_id, score) else NOT_SELECTED


def _apply(item: kit.Item, plan: sampling.Plan, plan_only: bool) -> kit.Item:
    if item.kind != kit.RECORD:
        return item
    outcome = decision(item.value, plan)
    if outcome == SELECTED and not plan_only:
        return item
    return kit.as_item(item, PLAN_ONLY if outcome == SELECTED else outcome)


def histogram_png(before: list[float], after: list[float], feature: str) -> bytes:
    """A PNG of the score distribution before and after selection (densities over shared bins)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if before:
        bins = np.histogram_bin_edges(np.asarray(before), bins=40)
        ax.hist(before, bins=bins, alpha=0.5, label=f"before ({len(before)} sampled)", density=True)
        if after:
            ax.hist(after, bins=bins, alpha=0.5, label=f"after ({len(after)} sampled)", density=True)
    ax.set_xlabel(feature)
    ax.set_ylabel("density")
    if before:
        ax.legend()
    fig.tight_layout()
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _sample_keys(u: np.ndarray) -> np.ndarray:
    """A per-document key for the histograms' samples: a mix of all 53 bits of u, so the sample is
    not tied to the keep decision (which reads u's top bits)."""
    m = np.round(np.asarray(u, dtype=np.float64) * 2.0**53).astype(np.uint64)
    with np.errstate(over="ignore"):
        return m * np.uint64(0x9E3779B97F4A7C15)


def unit_outcome(columns: Columns, plan: sampling.Plan) -> np.ndarray:
    """Each document's `row_decision` as 0 (selected), 1 (not selected) or 2 (missing score, dropped),
    from its Columns (a missing score under policy error fails the job earlier, in `corpus_facts`)."""
    outcome = np.ones(len(columns.u), dtype=np.int64)
    if not plan.rule.needs_scores:
        outcome[plan.rule.keep(None, columns.u)] = 0
        return outcome
    present = columns.scored
    keep = plan.rule.keep(columns.score[present], columns.u[present])
    outcome[np.flatnonzero(present)[keep]] = 0
    if plan.missing == sampling.MissingScorePolicy.DROP:
        outcome[~present] = 2
    elif plan.missing == sampling.MissingScorePolicy.KEEP:
        outcome[~present] = 0
    return outcome


class _Outcomes(beam.CombineFn):
    """Counts of selected, not selected and dropped documents, and up to HISTOGRAM_SAMPLE scores before
    and after selection (those with the smallest `_sample_keys`: the same sample on every runner)."""

    def create_accumulator(self, plan):
        empty = (np.zeros(0, dtype=np.uint64), np.zeros(0))
        return np.zeros(3, dtype=np.int64), empty, empty

    @staticmethod
    def _smallest(parts):
        keys = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        order = np.lexsort((scores, keys))[:HISTOGRAM_SAMPLE]
        return keys[order], scores[order]

    def add_input(self, acc, columns, plan):
        counts, before, after = acc
        outcome = unit_outcome(columns, plan)
        counts = counts + np.bincount(outcome, minlength=3)
        keys = _sample_keys(columns.u)
        scored = columns.scored
        kept = scored & (outcome == 0)
        return (counts, self._smallest([before, (keys[scored], columns.score[scored])]),
                self._smallest([after, (keys[kept], columns.score[kept])]))

    def merge_accumulators(self, accs, plan):
        accs = list(accs)
        return (sum(a[0] for a in accs), self._smallest([a[1] for a in accs]),
                self._smallest([a[2] for a in accs]))

    def extract_output(self, acc, plan):
        counts, before, after = acc
        return {SELECTED: int(counts[0]), NOT_SELECTED: int(counts[1]), MISSING_SCORE: int(counts[2]),
                "before": before[1].tolist(), "after": after[1].tolist()}


def _write_report(_, output_dir, version, plan, outcomes):
    selected, not_selected = outcomes[SELECTED], outcomes[NOT_SELECTED]
    report = {
        "plan": json.loads(plan.to_json()),
        "selected": selected,
        "not_selected": not_selected,
        "missing_score_dropped": outcomes[MISSING_SCORE],
        "realised_rate_documents": selected / max(1, selected + not_selected),
        "target_rate": plan.rate,
        "rate_by": plan.rate_by,
        "histogram": f"histogram.png (a uniform sample of up to {HISTOGRAM_SAMPLE} scores before and after)",
    }
    _write_file(output_dir, version, REPORT_FILE, json.dumps(report, indent=2, sort_keys=True).encode())
    feature = plan.score_feature or "score"
    _write_file(output_dir, version, HISTOGRAM_FILE, histogram_png(outcomes["before"], outcomes["after"], feature))
    log.info("select: kept %d of %d documents (%.3f; target %.3f by %s)", selected, selected + not_selected,
             report["realised_rate_documents"], plan.rate, plan.rate_by)
    yield report


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest.

    Pass 1 reads every unit and writes its Columns (score, hash uniform, tokens: about 21 bytes a
    document, `versions/<v>/columns/`), dropping the records as they are read; the plan's passes
    and the report read those files (or the plan comes from --plan); the last pass applies the plan
    to the records unit by unit. Nothing the runner holds between passes grows with the corpus
    beyond one small dict per unit. The plan depends on the whole input, so the input files'
    identities are part of the units' keys: a resumed run redoes only missing units, a run over
    more files re-selects all, as a new version beside the old one (`versions/<v>/plan.json`; the
    top-level plan.json, report.json and histogram.png are the latest version's copies).
    """
    options, config, pipeline_options = kit.parse(argv, SelectConfig, __doc__)
    files = kit.input_files(options)
    prepared = kit.prepare("select", options, config, pipeline_options,
                           {"inputs": [f.identity() for f in files]}, files=files, replans=True)
    output = options.output
    pipeline = kit.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    every_file = [units.FileWork(f, options.unit_records, "", unit_bytes=options.unit_bytes) for f in files]
    everything = dataclasses.replace(prepared, work=every_file, documents=kit.documents_in(options))
    version = prepared.base["fingerprint"][:16]  # the inputs are part of it: a new input is a new version
    planning = planning_of(config)
    facts = (kit.read(pipeline, everything, "ReadForPlan")
             | "SpillColumns" >> beam.ParDo(_SpillFn(output, version, planning))
             | "Units" >> beam.combiners.ToList()
             | "Facts" >> beam.Map(corpus_facts, planning))
    if config.plan:
        plan = pipeline | "LoadPlan" >> beam.Create([load_plan(config.plan)])
    else:
        plan = facts | "Plan" >> PlanSelection(config, output, planning)
    plan_side = beam.pvalue.AsSingleton(plan)
    plan_written = plan | "WritePlan" >> beam.Map(
        lambda p: _write_file(output, version, PLAN_FILE, p.to_json().encode()))
    outcomes = (facts
                | "ColumnsOutcomes" >> UnitColumns(output, dataclasses.replace(planning, rule=sampling.Random.name))
                | "Outcomes" >> beam.CombineGlobally(_Outcomes(), plan_side))
    report = pipeline | "Report" >> beam.Create([None]) | "WriteReport" >> beam.FlatMap(
        _write_report, output, version, plan_side, beam.pvalue.AsSingleton(outcomes))
    applied = kit.read(pipeline, prepared) | "Apply" >> beam.Map(_apply, plan_side, config.plan_only)
    kit.write(prepared, applied, after=[plan_written, report],
              files={name: kit.version_path(version, file) for name, file in
                     (("plan", PLAN_FILE), ("report", REPORT_FILE), ("histogram", HISTOGRAM_FILE))})
    return kit.run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
