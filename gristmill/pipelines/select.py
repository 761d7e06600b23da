"""`gristmill select`: turn scores into a training subset with a selection plan (PAPER.md §4).

    gristmill select --input 'out/askllm/scored-*.tfrecord' --output out/top60 \\
        --score score/askllm/flan-t5-xl --rule topk --rate 0.6 [--seed 0] [--plan_only]

One pass computes the plan over the whole corpus (`gristmill.sampling`): exactly, by gathering
(id, score, tokens) of every document in memory (about 100 bytes a document: fine to tens of
millions), or with `--approximate` from Beam's approximate quantiles (top-k, bottom-k, random)
or a score histogram (IPS), whose error bound the plan records in `expected_error`. The plan is
saved as `plan.json`, then applied record by record: the selected records are written with all
their features (`scored-*.tfrecord`, so selections chain), and `report.json` + `histogram.png`
give the counts, the realised rate and the score distribution before and after.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import uuid
from typing import Any, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from gristmill import records, sampling
from gristmill.pipelines import job, transforms

PLAN_FILE = "plan.json"
REPORT_FILE = "report.json"
HISTOGRAM_FILE = "histogram.png"
NUM_QUANTILES = 10001
HISTOGRAM_SAMPLE = 10000
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """What to select: a rule over a score feature at a rate, or an existing plan file."""

    rule: str = "topk"
    score: Optional[str] = None
    rate: float = 1.0
    rate_by: str = sampling.DOCUMENTS
    seed: int = 0
    tokens_feature: Optional[str] = None
    missing: str = sampling.MissingScorePolicy.ERROR.value
    approximate: bool = False
    plan: Optional[str] = None
    plan_only: bool = False

    def __post_init__(self):
        if self.plan:
            return
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


def _exact_plan(rows: list[tuple[str, Optional[float], int]], config: SelectConfig) -> sampling.Plan:
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
                      histogram: Optional[dict[str, Any]]) -> sampling.Plan:
    common = dict(rate=config.rate, seed=config.seed, num_documents=summary["documents"],
                  num_tokens=summary["tokens"], rate_by=config.rate_by, score_feature=config.score,
                  tokens_feature=config.tokens_feature or sampling.PROXY_TOKENS,
                  num_missing=summary["missing"], missing=config.missing)
    if config.rule == "ips":
        return sampling.plan_from_histogram(histogram["edges"], histogram["weights"], histogram["inverse"],
                                            **common)
    return sampling.plan_from_quantiles(config.rule, quantiles, **common)


def _write_file(path: str, data: bytes) -> None:
    temp = path + f".tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temp) as out:
        out.write(data)
    FileSystems.rename([temp], [path])


def _check_missing(row, config: SelectConfig):
    doc_id, score, _ = row
    if score is None and config.score and config.missing == sampling.MissingScorePolicy.ERROR.value:
        raise sampling.MissingScoreError(
            f"document {doc_id} has no {config.score!r} feature (use --missing drop|keep to allow it)")
    return row


class PlanSelection(beam.PTransform):
    """Documents -> a single-element PCollection holding the selection plan over all of them."""

    def __init__(self, config: SelectConfig):
        super().__init__()
        self.config = config

    def expand(self, docs):
        config = self.config
        rows = docs | "IdScoreTokens" >> beam.Map(
            lambda r: (r[records.ID], score_of(r, config.score), tokens_of(r, config.tokens_feature)))
        if not config.approximate:
            return (rows
                    | "GatherAll" >> beam.combiners.ToList()
                    | "ExactPlan" >> beam.Map(_exact_plan, config))
        rows = rows | "CheckMissing" >> beam.Map(_check_missing, config)
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
                    lambda s, q, h: _approximate_plan(config, s, q, h),
                    beam.pvalue.AsSingleton(quantiles), beam.pvalue.AsSingleton(histogram)))


def load_plan(path: str) -> sampling.Plan:
    """Reads a plan file written by `gristmill select` (local or gs://)."""
    with FileSystems.open(path) as f:
        return sampling.Plan.from_json(f.read())


def _decide(record, plan: sampling.Plan):
    score = score_of(record, plan.score_feature)
    if score is None and plan.score_feature and plan.missing == sampling.MissingScorePolicy.DROP:
        return beam.pvalue.TaggedOutput("missing_score", record)
    if sampling.keep(plan, record[records.ID], score):
        return record
    return beam.pvalue.TaggedOutput("not_selected", record)


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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _write_report(_, output_dir, plan, selected, not_selected, missing, before, after):
    report = {
        "plan": json.loads(plan.to_json()),
        "selected": selected,
        "not_selected": not_selected,
        "missing_score_dropped": missing,
        "realised_rate_documents": selected / max(1, selected + not_selected),
        "target_rate": plan.rate,
        "rate_by": plan.rate_by,
        "histogram": "histogram.png (a uniform sample of up to %d scores before and after)" % HISTOGRAM_SAMPLE,
    }
    _write_file(transforms.join(output_dir, REPORT_FILE), json.dumps(report, indent=2, sort_keys=True).encode())
    feature = plan.score_feature or "score"
    _write_file(transforms.join(output_dir, HISTOGRAM_FILE), histogram_png(before, after, feature))
    log.info("select: kept %d of %d documents (%.3f; target %.3f by %s)", selected, selected + not_selected,
             report["realised_rate_documents"], plan.rate, plan.rate_by)
    yield report


class SelectOptions(PipelineOptions):
    """Flags of `gristmill select`."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--score", default=None, help="Score feature, e.g. score/askllm/flan-t5-xl.")
        parser.add_argument("--rule", default="topk", help="topk, bottomk, ips (keep prob. ~ 1/score) or random.")
        parser.add_argument("--rate", type=float, default=None, help="Target fraction in (0, 1].")
        parser.add_argument("--rate_by", default=sampling.DOCUMENTS, help="documents or tokens.")
        parser.add_argument("--tokens_feature", default=None,
                            help="tokens/<tokenizer> feature for --rate_by tokens (default: UTF-8 bytes / 4).")
        parser.add_argument("--missing", default="error",
                            help="Documents without the score: error (default), drop or keep.")
        parser.add_argument("--approximate", action="store_true",
                            help="Plan from approximate quantiles / a histogram instead of gathering all scores.")
        parser.add_argument("--plan", default=None, help="Apply this existing plan.json instead of planning.")
        parser.add_argument("--plan_only", action="store_true", help="Write plan.json and the report only.")


def select_config(opts: SelectOptions, seed: int) -> SelectConfig:
    """The SelectConfig the flags describe."""
    if opts.rate is None and not opts.plan:
        raise job.UsageError("--rate is required (a fraction in (0, 1]) unless --plan is given")
    return SelectConfig(rule=opts.rule, score=opts.score, rate=opts.rate if opts.rate is not None else 1.0,
                        rate_by=opts.rate_by, seed=seed, tokens_feature=opts.tokens_feature,
                        missing=opts.missing, approximate=opts.approximate, plan=opts.plan,
                        plan_only=opts.plan_only)


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    pipeline_options, corpus, opts = job.parse_options(argv, SelectOptions)
    config = select_config(opts, corpus.seed)
    pipeline = job.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    files, docs, dead = job.read_corpus(pipeline, corpus)
    if config.plan:
        plan = pipeline | "LoadPlan" >> beam.Create([load_plan(config.plan)])
    else:
        plan = docs | "Plan" >> PlanSelection(config)
    plan_side = beam.pvalue.AsSingleton(plan)
    output = corpus.output
    _ = plan | "WritePlan" >> beam.Map(lambda p: _write_file(transforms.join(output, PLAN_FILE), p.to_json().encode()))
    decided = docs | "Apply" >> beam.Map(_decide, plan_side).with_outputs("not_selected", "missing_score",
                                                                         main="selected")
    selected, not_selected, missing = decided.selected, decided.not_selected, decided.missing_score
    count = lambda pc, label: pc | label >> beam.combiners.Count.Globally()  # noqa: E731
    n_selected, n_not, n_missing = count(selected, "CountSelected"), count(not_selected, "CountNot"), count(
        missing, "CountMissing")
    feature = lambda r, p: score_of(r, p.score_feature) or 0.0  # noqa: E731
    sample = lambda pc, label: (pc  # noqa: E731
                                | f"{label}Scores" >> beam.Map(feature, plan_side)
                                | f"{label}Sample" >> beam.combiners.Sample.FixedSizeGlobally(HISTOGRAM_SAMPLE))
    pipeline | "WriteReport" >> beam.Create([None]) | "Report" >> beam.FlatMap(
        _write_report, output, plan_side, beam.pvalue.AsSingleton(n_selected), beam.pvalue.AsSingleton(n_not),
        beam.pvalue.AsSingleton(n_missing), beam.pvalue.AsSingleton(sample(docs, "Before")),
        beam.pvalue.AsSingleton(sample(selected, "After")))
    excluded = (pipeline
                | "Exclusions" >> beam.Create([None])
                | "ExcludedCounts" >> beam.Map(lambda _, a, b: {"not_selected": a, "missing_score": b},
                                               beam.pvalue.AsSingleton(n_not), beam.pvalue.AsSingleton(n_missing)))
    to_write = selected
    if config.plan_only:
        to_write = selected | "PlanOnly" >> beam.Filter(lambda _: False)
        excluded = (excluded | "AllExcluded" >> beam.Map(
            lambda d, s: dict(d, plan_only=s), beam.pvalue.AsSingleton(n_selected)))
    base = job.manifest_base("select", config, pipeline_options, files)
    job.write_outputs(pipeline, output, corpus.num_shards, base, docs, to_write, dead, excluded)
    return job.run_pipeline(pipeline, output, is_test=test_pipeline is not None)
