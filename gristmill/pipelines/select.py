"""`gristmill select`: turn scores into a training subset with a selection plan (docs/paper.md §4).

    gristmill select --input out/askllm --output out/top60 \\
        --score score/askllm/flan-t5-xl --rule topk --rate 0.6 [--seed 0] [--plan_only]

One pass computes the plan over the whole corpus (`gristmill.sampling`): exactly, in bounded
memory, from radix-histogram passes over (id, score, tokens) rows and a gather of the few documents
at the threshold (`gristmill.threshold_search`; byte-identical to planning in memory), or with
`--approximate` from Beam's approximate quantiles (top-k, bottom-k, random) or a score histogram
(IPS), whose error bound the plan records in `expected_error`. The plan is
saved as `plan.json`, then applied record by record: the selected records are written with all
their features, one file per input unit (`units/<unit>.tfrecord`, listed in the manifest's
`outputs.records`; `--input` of the next job can be this directory, so selections chain), and
`report.json` + `histogram.png` give the counts, the realised rate and the score distribution
before and after. Plan, report and histogram are written under `versions/<v>/` (the manifest's
`outputs.plan`, `outputs.report`, `outputs.histogram`), with latest copies at the top level.
"""

from __future__ import annotations

import dataclasses
import functools
import io as _bytes_io
import json
import logging
from typing import Any, Optional

import apache_beam as beam
import numpy as np

from gristmill import exact_sum, io, records, sampling, threshold_search
from gristmill.pipelines import kit, units

PLAN_FILE = "plan.json"
REPORT_FILE = "report.json"
HISTOGRAM_FILE = "histogram.png"
SELECTED, NOT_SELECTED, MISSING_SCORE, PLAN_ONLY = "selected", "not_selected", "missing_score", "plan_only"
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


class _Summary(beam.CombineFn):
    """Counts documents, tokens and missing scores (for the approximate planners)."""

    def __init__(self, needs_score: bool):
        self.needs_score = needs_score

    def create_accumulator(self):
        return np.zeros(3, dtype=np.int64)

    def add_input(self, acc, row):
        _, score, tokens = row
        acc = acc.copy()
        acc += (1, tokens, 0) if score is not None or not self.needs_score else (0, 0, 1)
        return acc

    def merge_accumulators(self, accs):
        return sum(accs, np.zeros(3, dtype=np.int64))

    def extract_output(self, acc):
        return {"documents": int(acc[0]), "tokens": int(acc[1]), "missing": int(acc[2])}


def histogram_edges(quantiles: list[float]) -> np.ndarray:
    """Histogram edges for IPS planning from score quantiles: unique, with the top edge above the max."""
    edges = np.unique(np.asarray(quantiles, dtype=np.float64))
    if edges.size == 1:
        edges = np.append(edges, edges[0] * 2)
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges


class _IpsHistogram(beam.CombineFn):
    """Per-bin sums of weight and weight/score over edges from a side input (sampling.ips_histogram).

    The accumulator is the pair of sum arrays, so merging is addition.
    """

    def create_accumulator(self, quantiles):
        size = histogram_edges(quantiles).size - 1
        return np.zeros(size), np.zeros(size)

    def add_inputs(self, acc, rows, quantiles):
        rows = list(rows)
        if not rows:
            return acc
        w, inv = sampling.ips_histogram([r[0] for r in rows], [r[1] for r in rows], histogram_edges(quantiles))
        return acc[0] + w, acc[1] + inv

    def add_input(self, acc, row, quantiles):
        return self.add_inputs(acc, [row], quantiles)

    def merge_accumulators(self, accs, quantiles):
        accs = list(accs)
        return sum(a[0] for a in accs), sum(a[1] for a in accs)

    def extract_output(self, acc, quantiles):
        return {"edges": histogram_edges(quantiles).tolist(), "weights": np.asarray(acc[0]).tolist(),
                "inverse": np.asarray(acc[1]).tolist()}


def _approximate_plan(config: SelectConfig, summary: dict[str, int], quantiles: list[float],
                      histogram: Optional[dict[str, Any]], present: Any = ()) -> sampling.Plan:
    if config.score and summary["documents"] == 0:
        raise sampling.MissingScoreError(absent_score_message(config.score, present, summary["missing"]))
    common = dict(rate=config.rate, seed=config.seed, num_documents=summary["documents"],
                  num_tokens=summary["tokens"], rate_by=config.rate_by, score_feature=config.score,
                  tokens_feature=config.tokens_feature or sampling.PROXY_TOKENS,
                  num_missing=summary["missing"], missing=config.missing)
    if config.rule == sampling.IPS.name:
        return sampling.plan_from_histogram(histogram["edges"], histogram["weights"], histogram["inverse"],
                                            **common)
    return sampling.plan_from_quantiles(config.rule, quantiles, **common)


def _write_file(output_dir: str, version: str, name: str, data: bytes) -> None:
    """Writes a job file of this version (`versions/<v>/<name>`, listed in the manifest, never replaced)
    and its latest copy at the top level (`<name>`, replaced by the next version)."""
    kit.write_once(output_dir, kit.version_path(version, name), data)  # a rerun keeps the version's file
    io.atomic_write(io.join(output_dir, name), data)


def _check_missing(row, config: SelectConfig, present: Any = ()):
    doc_id, score, _ = row
    if score is None and config.score and config.missing == sampling.MissingScorePolicy.ERROR.value:
        have = ", ".join(sorted(present or ())) or "none"
        raise sampling.MissingScoreError(
            f"document {doc_id} has no score feature {config.score!r} (use --missing drop|keep to allow it); "
            f"score features in the records: {have}")
    return row


class _LevelHistogram(beam.CombineFn):
    """Documents and tokens per bin of one level of `threshold_search`, among the documents under the
    prefix chosen so far (side input: the search state). Rows are binned in batches."""

    BATCH = 4096

    def create_accumulator(self, state):
        return np.zeros((2, threshold_search.BINS), dtype=np.int64), []

    def add_input(self, acc, row, state):
        counts, pending = acc
        search = state["search"]
        if threshold_search.in_prefix(row, search.prefix):
            pending.append((threshold_search.row_bits(row, len(search.prefix)), row[4]))
            if len(pending) >= self.BATCH:
                return self._flush(counts, pending), []
        return counts, pending

    @staticmethod
    def _flush(counts, pending):
        if pending:
            bins = np.fromiter((b for b, _ in pending), dtype=np.int64, count=len(pending))
            tokens = np.fromiter((t for _, t in pending), dtype=np.int64, count=len(pending))
            counts = counts.copy()
            np.add.at(counts[0], bins, 1)
            np.add.at(counts[1], bins, tokens)
        return counts

    def merge_accumulators(self, accs, state):
        return sum(self._flush(*acc) for acc in accs), []

    def extract_output(self, acc, state):
        return self._flush(*acc)


def _first_state(counts: np.ndarray, config: SelectConfig, zero_weight: int) -> dict[str, Any]:
    """The search state after level 0: the target from the corpus' totals, then level 0's choice."""
    by_tokens = config.rate_by == sampling.TOKENS
    total = int(counts[1].sum()) if by_tokens else int(counts[0].sum())
    state = {"target": config.rate * total, "documents": int(counts[0].sum()), "tokens": int(counts[1].sum()),
             "in_memory": bool(by_tokens and zero_weight)}
    return {**state, "search": threshold_search.choose(threshold_search.Search(), counts, by_tokens, state["target"])}


def _next_state(counts: np.ndarray, state: dict[str, Any], config: SelectConfig) -> dict[str, Any]:
    search = threshold_search.choose(state["search"], counts, config.rate_by == sampling.TOKENS, state["target"])
    return {**state, "search": search}


def _search_plan(state: dict[str, Any], gathered: list, after: Optional[tuple], summary: dict[str, int],
                 everything: list, config: SelectConfig, present: Any) -> sampling.Plan:
    """The plan from the finished search (or, for zero-token documents, from every row in memory)."""
    if state["in_memory"]:
        return _exact_plan(everything, config, present)
    if config.score and config.spec().needs_scores and state["documents"] == 0:
        raise sampling.MissingScoreError(absent_score_message(config.score, present, summary["missing"]))
    found, documents, tokens = threshold_search.threshold(
        state["search"], gathered, after, config.rate_by == sampling.TOKENS, state["target"])
    return threshold_search.to_plan(
        config.rule, found, documents, tokens, num_documents=state["documents"], num_tokens=state["tokens"],
        rate=config.rate, seed=config.seed, rate_by=config.rate_by, score_feature=config.score,
        tokens_feature=config.tokens_feature or sampling.PROXY_TOKENS, num_missing=summary["missing"],
        missing=config.missing)


def _finite(row, config: SelectConfig):
    doc_id, score, _ = row
    if score is not None and not np.isfinite(np.float32(score)):
        raise sampling.SamplingError(f"{config.rule}: non-finite score {score!r} for document {doc_id!r}")
    return row


def _search_row(row, config: SelectConfig):
    doc_id, score, tokens = row
    score = None if score is None else float(np.float32(score))
    return threshold_search.search_row(config.rule, score, sampling.uniform_from_id(doc_id, config.seed), tokens)


def _latest(rows):
    return max(rows, key=lambda r: (r[0], r[1]), default=None)


class BoundedExactPlan(beam.PTransform):
    """(id, score, tokens) rows -> the exact top-k / bottom-k / random plan, in bounded memory.

    Four histogram passes and one gather of the few documents at the threshold
    (`gristmill.threshold_search`); the plan equals `sampling.plan_from_scores` over the same rows.
    """

    def __init__(self, config: SelectConfig, present):
        super().__init__()
        self.config = config
        self.present = present

    def expand(self, rows):
        config = self.config
        needs_score = config.spec().needs_scores and config.score is not None
        if needs_score:
            rows = rows | "CheckMissing" >> beam.Map(_check_missing, config, self.present)
        summary = rows | "Summary" >> beam.CombineGlobally(_Summary(needs_score))
        scored = (rows
                  | "WithScore" >> beam.Filter(lambda row: row[1] is not None or not needs_score)
                  | "Finite" >> beam.Map(_finite, config))
        keyed = scored | "SortKeys" >> beam.Map(_search_row, config)
        zero_weight = beam.pvalue.AsSingleton(
            scored
            | "ZeroTokens" >> beam.Filter(lambda row: row[2] == 0)
            | "CountZero" >> beam.combiners.Count.Globally())
        start = beam.pvalue.AsSingleton(
            keyed.pipeline | "Start" >> beam.Create([{"search": threshold_search.Search()}]))
        state = (keyed
                 | "Level0" >> beam.CombineGlobally(_LevelHistogram(), start)
                 | "Choose0" >> beam.Map(_first_state, config, zero_weight))
        for level in range(1, threshold_search.LEVELS):
            side = beam.pvalue.AsSingleton(state)
            state = (keyed
                     | f"Level{level}" >> beam.CombineGlobally(_LevelHistogram(), side)
                     | f"Choose{level}" >> beam.Map(_next_state, side, config))
        side = beam.pvalue.AsSingleton(state)
        gathered = (keyed
                    | "AtThreshold" >> beam.Filter(
                        lambda row, st: not st["search"].keeps_all and not st["in_memory"]
                        and threshold_search.in_prefix(row, st["search"].prefix), side)
                    | "Gather" >> beam.combiners.ToList())
        after = (keyed
                 | "Below" >> beam.Filter(
                     lambda row, st: not st["search"].keeps_all and not st["in_memory"]
                     and threshold_search.row_top(row) < threshold_search.prefix_value(st["search"].prefix), side)
                 | "FirstBelow" >> beam.CombineGlobally(_latest))
        everything = (rows
                      | "OnlyIfZeroTokens" >> beam.Filter(lambda row, st: st["in_memory"], side)
                      | "GatherAllRows" >> beam.combiners.ToList())
        return (state
                | "SearchPlan" >> beam.Map(_search_plan, beam.pvalue.AsSingleton(gathered),
                                           beam.pvalue.AsSingleton(after), beam.pvalue.AsSingleton(summary),
                                           beam.pvalue.AsSingleton(everything), config, self.present))


def _positive(row, config: SelectConfig):
    doc_id, score, _ = row
    if not np.float32(score) > 0:
        raise sampling.SamplingError(f"ips: scores must be > 0 (keep probability is proportional to 1/score), "
                                     f"got {score!r} for document {doc_id!r}")
    return row


class _IpsLevel(beam.CombineFn):
    """One pass of the bounded IPS search (`threshold_search.ips_histogram`) over (id, score, tokens)
    rows: pass 1 (side input None) over every document, pass 2 inside the bin the search state names.
    The accumulator is (counts, exact term sums per bin, pending rows); rows are binned in batches."""

    BATCH = 4096

    def __init__(self, by_tokens: bool):
        self.by_tokens = by_tokens

    def create_accumulator(self, state):
        return (np.zeros((2, threshold_search.BINS), dtype=np.int64), {}), []

    def add_input(self, acc, row, state):
        histogram, pending = acc
        if state is not None and state.done:
            return acc
        pending.append((row[1], row[2]))
        if len(pending) >= self.BATCH:
            return self._flush(histogram, pending, state), []
        return histogram, pending

    def _flush(self, histogram, pending, state):
        if not pending:
            return histogram
        scores = np.fromiter((s for s, _ in pending), dtype=np.float64, count=len(pending))
        tokens = np.fromiter((t for _, t in pending), dtype=np.int64, count=len(pending))
        part = threshold_search.ips_histogram(scores, tokens, self.by_tokens, None if state is None else state.high)
        return threshold_search.ips_merge(histogram, part)

    def merge_accumulators(self, accs, state):
        merged = None
        for histogram, pending in accs:
            histogram = self._flush(histogram, pending, state)
            merged = histogram if merged is None else threshold_search.ips_merge(merged, histogram)
        return merged, []

    def extract_output(self, acc, state):
        return self._flush(*acc, state)


class _IpsExpected(beam.CombineFn):
    """Exact sums of the inclusion probabilities and of probability * tokens, once c is known."""

    def create_accumulator(self, search):
        return exact_sum.ZERO, exact_sum.ZERO, []

    def add_input(self, acc, row, search):
        documents, tokens, pending = acc
        pending.append((row[1], row[2]))
        if len(pending) >= _IpsLevel.BATCH:
            return (*self._flush(documents, tokens, pending, search), [])
        return documents, tokens, pending

    @staticmethod
    def _flush(documents, tokens, pending, search):
        if not pending:
            return documents, tokens
        scores = np.fromiter((s for s, _ in pending), dtype=np.float64, count=len(pending))
        counts = np.fromiter((t for _, t in pending), dtype=np.int64, count=len(pending))
        d, t = threshold_search.ips_expected(scores, counts, search.c)
        return exact_sum.add(documents, d), exact_sum.add(tokens, t)

    def merge_accumulators(self, accs, search):
        documents = tokens = exact_sum.ZERO
        for acc in accs:
            d, t = self._flush(*acc, search)
            documents, tokens = exact_sum.add(documents, d), exact_sum.add(tokens, t)
        return documents, tokens, []

    def extract_output(self, acc, search):
        return self._flush(*acc, search)


def _ips_first(histogram, config: SelectConfig) -> dict[str, Any]:
    counts, inverse = histogram
    by_tokens = config.rate_by == sampling.TOKENS
    total = int(counts[1].sum()) if by_tokens else int(counts[0].sum())
    return {"documents": int(counts[0].sum()), "tokens": int(counts[1].sum()),
            "search": threshold_search.ips_choose_high(counts, inverse, by_tokens, config.rate * total)}


def _ips_plan(expected, state: dict[str, Any], summary: dict[str, int], config: SelectConfig,
              present: Any) -> sampling.Plan:
    if state["documents"] == 0:
        raise sampling.MissingScoreError(absent_score_message(config.score, present, summary["missing"]))
    return threshold_search.ips_to_plan(
        state["search"].c, *expected, num_documents=state["documents"], num_tokens=state["tokens"],
        rate=config.rate, seed=config.seed, rate_by=config.rate_by, score_feature=config.score,
        tokens_feature=config.tokens_feature or sampling.PROXY_TOKENS, num_missing=summary["missing"],
        missing=config.missing)


class BoundedIpsPlan(beam.PTransform):
    """(id, score, tokens) rows -> the exact IPS plan, in bounded memory.

    Two radix passes over the scores' float32 bits find the distinct score where the normaliser's
    piecewise linear function crosses the target, a third sums the expected sizes
    (`gristmill.threshold_search`, IPS section); every sum is exact, so the plan equals
    `sampling.plan_from_scores` over the same rows, byte for byte.
    """

    def __init__(self, config: SelectConfig, present):
        super().__init__()
        self.config = config
        self.present = present

    def expand(self, rows):
        config = self.config
        by_tokens = config.rate_by == sampling.TOKENS
        rows = rows | "CheckMissing" >> beam.Map(_check_missing, config, self.present)
        summary = rows | "Summary" >> beam.CombineGlobally(_Summary(True))
        scored = (rows
                  | "WithScore" >> beam.Filter(lambda row: row[1] is not None)
                  | "Finite" >> beam.Map(_finite, config)
                  | "Positive" >> beam.Map(_positive, config)
                  | "Float32" >> beam.Map(lambda row: (row[0], float(np.float32(row[1])), row[2])))
        none = beam.pvalue.AsSingleton(scored.pipeline | "NoState" >> beam.Create([None]))
        first = (scored
                 | "Level0" >> beam.CombineGlobally(_IpsLevel(by_tokens), none)
                 | "ChooseBin" >> beam.Map(_ips_first, config))
        first_side = beam.pvalue.AsSingleton(first)
        search = beam.pvalue.AsSingleton(
            scored
            | "Level1" >> beam.CombineGlobally(_IpsLevel(by_tokens),
                                               beam.pvalue.AsSingleton(first | "Search0" >> beam.Map(
                                                   lambda st: st["search"])))
            | "ChooseScore" >> beam.Map(lambda h, st: threshold_search.ips_choose_score(st["search"], *h, by_tokens),
                                        first_side))
        expected = scored | "Expected" >> beam.CombineGlobally(_IpsExpected(), search)
        state = first | "WithC" >> beam.Map(lambda st, found: {**st, "search": found}, search)
        return (expected
                | "IpsPlan" >> beam.Map(_ips_plan, beam.pvalue.AsSingleton(state), beam.pvalue.AsSingleton(summary),
                                        config, self.present))


class PlanSelection(beam.PTransform):
    """(id, score, tokens) rows -> a single-element PCollection holding the selection plan over all of them.

    present: a side input of the score features the records have (named in errors).
    """

    def __init__(self, config: SelectConfig, present=None):
        super().__init__()
        self.config = config
        self.present = present

    def expand(self, rows):
        config, present = self.config, self.present
        if not config.approximate:
            if config.rule == sampling.IPS.name:
                return rows | "ExactIps" >> BoundedIpsPlan(config, present)
            return rows | "Exact" >> BoundedExactPlan(config, present)
        rows = rows | "CheckMissing" >> beam.Map(_check_missing, config, present)
        summary = rows | "Summary" >> beam.CombineGlobally(_Summary(config.score is not None))
        scored = rows | "WithScore" >> beam.Filter(lambda row: row[1] is not None)
        if not config.spec().needs_scores:
            quantiles = rows.pipeline | "NoQuantiles" >> beam.Create([None])
        else:
            quantiles = (scored
                         | "Scores" >> beam.Map(lambda row: float(np.float32(row[1])))
                         | "Quantiles" >> beam.ApproximateQuantiles.Globally(NUM_QUANTILES))
        if config.rule == sampling.IPS.name:
            weight = (lambda row: row[2]) if config.rate_by == sampling.TOKENS else (lambda row: 1)
            histogram = (scored
                         | "ScoreWeight" >> beam.Map(lambda row: (row[1], weight(row)))
                         | "IpsHistogram" >> beam.CombineGlobally(_IpsHistogram(), beam.pvalue.AsSingleton(quantiles)))
        else:
            histogram = rows.pipeline | "NoHistogram" >> beam.Create([None])
        return (summary
                | "ApproximatePlan" >> beam.Map(
                    lambda s, q, h, p: _approximate_plan(config, s, q, h, p),
                    beam.pvalue.AsSingleton(quantiles), beam.pvalue.AsSingleton(histogram), present))


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


def _write_report(_, output_dir, version, plan, selected, not_selected, missing, before, after):
    report = {
        "plan": json.loads(plan.to_json()),
        "selected": selected,
        "not_selected": not_selected,
        "missing_score_dropped": missing,
        "realised_rate_documents": selected / max(1, selected + not_selected),
        "target_rate": plan.rate,
        "rate_by": plan.rate_by,
        "histogram": f"histogram.png (a uniform sample of up to {HISTOGRAM_SAMPLE} scores before and after)",
    }
    _write_file(output_dir, version, REPORT_FILE, json.dumps(report, indent=2, sort_keys=True).encode())
    feature = plan.score_feature or "score"
    _write_file(output_dir, version, HISTOGRAM_FILE, histogram_png(before, after, feature))
    log.info("select: kept %d of %d documents (%.3f; target %.3f by %s)", selected, selected + not_selected,
             report["realised_rate_documents"], plan.rate, plan.rate_by)
    yield report


def _row_and_features(record: records.Record, config: SelectConfig) -> tuple[tuple, list[str]]:
    """A record -> ((id, score, tokens), its score feature names): all the plan and report need of it.

    The score is the plan's feature (--score, or the loaded plan's, read when the plan is applied).
    """
    row = (record[records.ID], _score_for_rows(record, config), tokens_of(record, config.tokens_feature))
    return row, [k for k in record if k.startswith("score/")]


def _score_for_rows(record: records.Record, config: SelectConfig) -> Optional[float]:
    feature = config.score
    if config.plan:
        feature = load_plan_feature(config.plan)
    return score_of(record, feature)


@functools.lru_cache(maxsize=4)
def load_plan_feature(path: str) -> Optional[str]:
    """The score feature a plan file reads (cached: each worker reads the plan once)."""
    return load_plan(path).score_feature


def _plan_score(row: tuple, plan: sampling.Plan) -> Optional[float]:
    return row[1] if plan.score_feature else None


def _scores_present(outcome: tuple[str, tuple]) -> list[float]:
    """The score of a document for the histograms: none when it has none (not plotted as 0)."""
    score = outcome[1][1]
    return [] if score is None else [score]


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest.

    Pass 1 reads every unit and computes the plan (or loads --plan); pass 2 applies it unit by
    unit. The plan depends on the whole input, so the input files' identities are part of the
    units' keys: a resumed run redoes only missing units, a run over more files re-selects all,
    as a new version beside the old one (`versions/<v>/plan.json`; the top-level plan.json,
    report.json and histogram.png are the latest version's copies).
    """
    options, config, pipeline_options = kit.parse(argv, SelectConfig, __doc__)
    files = kit.input_files(options)
    prepared = kit.prepare("select", options, config, pipeline_options,
                           {"inputs": [f.identity() for f in files]}, files=files, replans=True)
    output = options.output
    pipeline = kit.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    every_file = [units.FileWork(f, options.unit_records, "", unit_bytes=options.unit_bytes) for f in files]
    everything = dataclasses.replace(prepared, work=every_file, documents=kit.documents_in(options))
    # Pass 1 keeps only (id, score, tokens) of each document and the score features seen: the
    # records themselves are dropped as they are read, so nothing downstream holds the corpus.
    docs = (kit.read(pipeline, everything, "ReadForPlan")
            | "Documents" >> beam.Filter(lambda item: item.kind == kit.RECORD)
            | "Rows" >> beam.Map(lambda item: _row_and_features(item.value, config)))
    rows = docs | "IdScoreTokens" >> beam.Map(lambda pair: pair[0])
    present = beam.pvalue.AsSingleton(
        docs
        | "ScoreFeatures" >> beam.FlatMap(lambda pair: pair[1])
        | "PresentFeatures" >> beam.combiners.ToSet())
    if config.plan:
        plan = pipeline | "LoadPlan" >> beam.Create([load_plan(config.plan)])
    else:
        plan = rows | "Plan" >> PlanSelection(config, present)
    plan_side = beam.pvalue.AsSingleton(plan)
    version = prepared.base["fingerprint"][:16]  # the inputs are part of it: a new input is a new version
    plan_written = plan | "WritePlan" >> beam.Map(
        lambda p: _write_file(output, version, PLAN_FILE, p.to_json().encode()))
    outcomes = rows | "Outcome" >> beam.Map(lambda row, p: (row_decision(row[0], _plan_score(row, p), p), row),
                                            plan_side)

    def count(name: str):
        return beam.pvalue.AsSingleton(
            outcomes
            | f"Is{name}" >> beam.Filter(lambda kv, n=name: kv[0] == n)
            | f"Count{name}" >> beam.combiners.Count.Globally())

    before = (outcomes
              | "BeforeScores" >> beam.FlatMap(_scores_present)
              | "BeforeSample" >> beam.combiners.Sample.FixedSizeGlobally(HISTOGRAM_SAMPLE))
    after = (outcomes
             | "Kept" >> beam.Filter(lambda kv: kv[0] == SELECTED)
             | "AfterScores" >> beam.FlatMap(_scores_present)
             | "AfterSample" >> beam.combiners.Sample.FixedSizeGlobally(HISTOGRAM_SAMPLE))
    report = pipeline | "Report" >> beam.Create([None]) | "WriteReport" >> beam.FlatMap(
        _write_report, output, version, plan_side, count(SELECTED), count(NOT_SELECTED), count(MISSING_SCORE),
        beam.pvalue.AsSingleton(before), beam.pvalue.AsSingleton(after))
    applied = kit.read(pipeline, prepared) | "Apply" >> beam.Map(_apply, plan_side, config.plan_only)
    kit.write(prepared, applied, after=[plan_written, report],
              files={name: kit.version_path(version, file) for name, file in
                     (("plan", PLAN_FILE), ("report", REPORT_FILE), ("histogram", HISTOGRAM_FILE))})
    return kit.run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
