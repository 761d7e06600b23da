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

Pass 1's columns files are `select_columns`, the plan over them `select_plan`; this module is the
job: its flags, applying the plan, the report.
"""

from __future__ import annotations

import dataclasses
import io as _bytes_io
import json
import logging
from typing import Optional

import apache_beam as beam
import numpy as np

from gristmill import io, records, sampling
from gristmill.pipelines import kit, units
from gristmill.pipelines.select_columns import (  # noqa: F401 (select's names, as before the split)
    COLUMNS_DIR,
    COLUMNS_SUFFIX,
    Columns,
    Planning,
    SpillFn,
    UnitColumns,
    columns_bytes,
    corpus_facts,
    read_columns,
    score_of,
    tokens_of,
)
from gristmill.pipelines.select_plan import PlanSelection, absent_score_message, exact_plan  # noqa: F401

PLAN_FILE = "plan.json"
REPORT_FILE = "report.json"
HISTOGRAM_FILE = "histogram.png"
SELECTED, NOT_SELECTED, MISSING_SCORE, PLAN_ONLY = "selected", "not_selected", "missing_score", "plan_only"
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


def _write_file(output_dir: str, version: str, name: str, data: bytes) -> None:
    """Writes a job file of this version (`versions/<v>/<name>`, listed in the manifest, never replaced)
    and its latest copy at the top level (`<name>`, replaced by the next version)."""
    kit.write_once(output_dir, kit.version_path(version, name), data)  # a rerun keeps the version's file
    io.atomic_write(io.join(output_dir, name), data)


def planning_of(config: SelectConfig) -> Planning:
    """The Planning of a select run: from its flags, or from the plan file it applies."""
    if config.plan:
        plan = load_plan(config.plan)
        return Planning(plan.rule.name, plan.score_feature, plan.seed, config.tokens_feature, plan.missing.value)
    return Planning(config.rule, config.score, config.seed, config.tokens_feature, config.missing)


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
             | "SpillColumns" >> beam.ParDo(SpillFn(output, version, planning))
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
