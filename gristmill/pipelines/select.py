"""`gristmill select`: turn scores into a training subset with a selection plan (docs/paper.md §4).

    gristmill select --input out/askllm --output out/top60 \\
        --score score/askllm/flan-t5-xl --rule topk --rate 0.6 [--seed 0] [--plan_only]

One pass computes the plan over the whole corpus (`gristmill.sampling`): exactly, by gathering
(id, score, tokens) of every document in memory (about 100 bytes a document: fine to tens of
millions), or with `--approximate` from Beam's approximate quantiles (top-k, bottom-k, random)
or a score histogram (IPS), whose error bound the plan records in `expected_error`. The plan is
saved as `plan.json`, then applied record by record: the selected records are written with all
their features, one file per input unit (`units/<unit>.tfrecord`, listed in the manifest's
`outputs.records`; `--input` of the next job can be this directory, so selections chain), and
`report.json` + `histogram.png` give the counts, the realised rate and the score distribution
before and after. Plan, report and histogram are written under `versions/<v>/` (the manifest's
`outputs.plan`, `outputs.report`, `outputs.histogram`), with latest copies at the top level.
"""

from __future__ import annotations

import dataclasses
import io as _bytes_io
import json
import logging
from typing import Any, Optional

import apache_beam as beam
import numpy as np

from gristmill import io, records, sampling
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
        if self.rule not in sampling.RULES:
            raise ValueError(f"unknown rule {self.rule!r}; expected one of {sorted(sampling.RULES)}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"--rate must be in (0, 1], got {self.rate}")
        if self.rule != "random" and not self.score:
            raise ValueError(f"--rule {self.rule} needs --score FEATURE (e.g. score/askllm/flan-t5-xl)")
        if self.rate_by not in sampling.RATE_BY:
            raise ValueError(f"--rate_by must be one of {sampling.RATE_BY}, got {self.rate_by!r}")
        sampling.MissingScorePolicy(self.missing)


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
    if config.score and all(r[1] is None for r in rows):
        raise sampling.MissingScoreError(absent_score_message(config.score, present, len(rows)))
    rows = sorted(rows)
    ids = [r[0] for r in rows]
    scores = None if config.score is None else np.array([np.nan if r[1] is None else r[1] for r in rows])
    tokens = np.array([r[2] for r in rows], dtype=np.int64)
    return sampling.plan_from_scores(config.rule, ids, scores, rate=config.rate, seed=config.seed, tokens=tokens,
                                     rate_by=config.rate_by, score_feature=config.score,
                                     tokens_feature=config.tokens_feature or sampling.PROXY_TOKENS,
                                     missing=config.missing)


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
    if config.rule == "ips":
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
            f"document {doc_id} has no {config.score!r} feature (use --missing drop|keep to allow it); "
            f"score features in the records: {have}")
    return row


class PlanSelection(beam.PTransform):
    """Documents -> a single-element PCollection holding the selection plan over all of them."""

    def __init__(self, config: SelectConfig):
        super().__init__()
        self.config = config

    def expand(self, docs):
        config = self.config
        present = beam.pvalue.AsSingleton(
            docs
            | "ScoreFeatures" >> beam.FlatMap(lambda r: [k for k in r if k.startswith("score/")])
            | "PresentFeatures" >> beam.combiners.ToSet())
        rows = docs | "IdScoreTokens" >> beam.Map(
            lambda r: (r[records.ID], score_of(r, config.score), tokens_of(r, config.tokens_feature)))
        if not config.approximate:
            return (rows
                    | "GatherAll" >> beam.combiners.ToList()
                    | "ExactPlan" >> beam.Map(_exact_plan, config, present))
        rows = rows | "CheckMissing" >> beam.Map(_check_missing, config, present)
        summary = rows | "Summary" >> beam.CombineGlobally(_Summary(config.score is not None))
        scored = rows | "WithScore" >> beam.Filter(lambda row: row[1] is not None)
        if config.rule == "random":
            quantiles = rows.pipeline | "NoQuantiles" >> beam.Create([None])
        else:
            quantiles = (scored
                         | "Scores" >> beam.Map(lambda row: float(np.float32(row[1])))
                         | "Quantiles" >> beam.ApproximateQuantiles.Globally(NUM_QUANTILES))
        if config.rule == "ips":
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
    score = score_of(record, plan.score_feature)
    if score is None and plan.score_feature and plan.missing == sampling.MissingScorePolicy.DROP:
        return MISSING_SCORE
    return SELECTED if sampling.keep(plan, record[records.ID], score) else NOT_SELECTED


def _decide(record, plan: sampling.Plan):
    outcome = decision(record, plan)
    return record if outcome == SELECTED else beam.pvalue.TaggedOutput(outcome, record)


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
    docs = (kit.read(pipeline, everything, "ReadForPlan")
            | "Documents" >> beam.Filter(lambda item: item.kind == kit.RECORD)
            | "Records" >> beam.Map(lambda item: item.value))
    if config.plan:
        plan = pipeline | "LoadPlan" >> beam.Create([load_plan(config.plan)])
    else:
        plan = docs | "Plan" >> PlanSelection(config)
    plan_side = beam.pvalue.AsSingleton(plan)
    version = prepared.base["fingerprint"][:16]  # the inputs are part of it: a new input is a new version
    plan_written = plan | "WritePlan" >> beam.Map(
        lambda p: _write_file(output, version, PLAN_FILE, p.to_json().encode()))
    outcomes = docs | "Outcome" >> beam.Map(lambda r, p: (decision(r, p), r), plan_side)
    count = lambda name: beam.pvalue.AsSingleton(  # noqa: E731
        outcomes
        | f"Is{name}" >> beam.Filter(lambda kv, n=name: kv[0] == n)
        | f"Count{name}" >> beam.combiners.Count.Globally())
    feature = lambda r, p: score_of(r, p.score_feature) or 0.0  # noqa: E731
    before = (docs | "BeforeScores" >> beam.Map(feature, plan_side)
              | "BeforeSample" >> beam.combiners.Sample.FixedSizeGlobally(HISTOGRAM_SAMPLE))
    after = (outcomes
             | "Kept" >> beam.Filter(lambda kv: kv[0] == SELECTED)
             | "KeptRecords" >> beam.Map(lambda kv: kv[1])
             | "AfterScores" >> beam.Map(feature, plan_side)
             | "AfterSample" >> beam.combiners.Sample.FixedSizeGlobally(HISTOGRAM_SAMPLE))
    report = pipeline | "Report" >> beam.Create([None]) | "WriteReport" >> beam.FlatMap(
        _write_report, output, version, plan_side, count(SELECTED), count(NOT_SELECTED), count(MISSING_SCORE),
        beam.pvalue.AsSingleton(before), beam.pvalue.AsSingleton(after))
    applied = kit.read(pipeline, prepared) | "Apply" >> beam.Map(_apply, plan_side, config.plan_only)
    kit.write(prepared, applied, after=[plan_written, report],
              files={name: kit.version_path(version, file) for name, file in
                     (("plan", PLAN_FILE), ("report", REPORT_FILE), ("histogram", HISTOGRAM_FILE))})
    return kit.run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
