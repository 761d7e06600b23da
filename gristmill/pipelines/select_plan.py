"""`gristmill select`'s plan over the whole corpus, from the units' columns files (`select_columns`).

Exact by default and in bounded memory: top-k, bottom-k and random by four radix-histogram passes
and a gather of the few documents at the threshold, IPS by two histogram passes over the float32
score's bits with exact sums (`gristmill.threshold_search`); each is byte-identical to planning in
memory (`exact_plan`). With --approximate: Beam's approximate quantiles (top-k, bottom-k, random) or
a score histogram (IPS), whose error bound the plan records in `expected_error`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import apache_beam as beam
import numpy as np

from gristmill import exact_sum, sampling, threshold_search
from gristmill.pipelines.select_columns import Columns, Planning, UnitColumns

if TYPE_CHECKING:
    from gristmill.pipelines.select import SelectConfig

NUM_QUANTILES = 10001


def absent_score_message(feature: str, present: Any, documents: int) -> str:
    """Why a plan over `feature` cannot be made, naming the score features the records do have."""
    have = sorted(present or ())
    found = f"the score features they have: {', '.join(have)}" if have else "they have no score/... feature at all"
    return (f"no scored documents to plan over: each of the {documents} documents has no score feature "
            f"{feature!r}; {found}")


def exact_plan(rows: list[tuple[str, Optional[float], int]], config: SelectConfig,
                present: Any = ()) -> sampling.Plan:
    """The exact plan over (id, score, tokens) rows held in memory (`sampling.plan_from_rows`): the plan
    the bounded planners must equal byte for byte (the tests' reference)."""
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
