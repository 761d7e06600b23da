"""`gristmill score askllm-head`: distilled Ask-LLM (beyond the paper, the cost lever).

    gristmill score askllm-head --input out/density --output out/head --model smollm2-135m-instruct \\
        --sample 2000 [--holdout 0.2] [--head_kind ridge|logistic] [--head FILE]

    units of the input --(cached embeddings, or the embedder)--> units/<u>.tfrecord + .emb.npy + marker
    every unit --the --sample documents with the smallest hash of their id (Top.Smallest)--> sample
    sample --Ask-LLM (RunInference)--> log P(yes) - log P(no) --fit the head on all but the held-out part
          --> the head, version v (a hash of it and the sample's labels); held-out agreement
    every unit --head(embedding) (side input)--> versions/<v>/<u>.tfrecord with score/askllm-head/<model_name>
    the head, the report --> versions/<v>/head.npz, versions/<v>/head_report.json

The input is a gristmill output directory whose units carry cached embeddings (a `score density`
output: `DIR/units/<u>.emb.npy`, rows in the order of the unit's records, named by each record
file's marker). An input file without a cache is embedded here (`--embedder`, default: the input
run's embedder, else minilm). The embeddings are kept beside this job's units too, so the output
chains into jobs that reuse them (`gristmill.pipelines.corpus`). A later batch fits a new head into
a new version; the files of earlier versions, which a published selection may name, are never
rewritten.

Every document gets `score/askllm-head/<model_name>`, the head's predicted Ask-LLM log-odds
(higher = better, select with top-k). The documents of the sample also keep what the LLM said:
`score/askllm/<model_name>` = P(yes), `logp/askllm/<model_name>/yes|no` and `truncated/askllm`,
so a user can see the labels the head learned from; those features exist on the sample only.

The sample is bounded (`--sample`, a global Top.Smallest over a salted id hash, so it is the same
whatever the units or workers); the held-out part is `heads.held_out_split` of the sample ids. The
report's cost per document: the LLM's model time on the sample (compilation of its few length
buckets included) against the head's time on every document; the embedding cost is the density
job's (paid once for every embedding-based scorer), or this job's when it had to embed.
`--head FILE` applies a saved head (copied to `versions/<v>/head.npz`) without any LLM call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Any, Optional

import apache_beam as beam
import numpy as np

from gristmill import io, records, sampling
from gristmill.pipelines import corpus, inference, kit, score_askllm
from gristmill.scoring import askllm, heads

SCORER_NAME = "askllm-head"
HEAD_FILE = "head.npz"
REPORT_FILE = "head_report.json"
TOP_FRACTION = 0.2
_SAMPLE_SALT = b"gristmill/askllm-head/sample/"
_SECONDS = "_llm_seconds"  # the record key an LLM timing travels under until the fit
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AskLLMHeadJobConfig(score_askllm.AskLLMJobConfig):
    """The Ask-LLM proxy (the teacher), the sample it labels and the head fitted to it."""

    sample: int = dataclasses.field(default=1000, metadata={
        "help": "Documents the LLM scores (those with the smallest hash of their id)"})
    holdout: float = dataclasses.field(default=0.2, metadata={
        "help": "Fraction of the sample held out of the fit to measure agreement"})
    head_kind: str = dataclasses.field(default=heads.RIDGE, metadata={
        "help": "The head: ridge (closed-form leave-one-out alpha) or logistic", "choices": (heads.RIDGE,
                                                                                             heads.LOGISTIC)})
    head: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Apply this saved head.npz instead of sampling and fitting (no LLM call)"})
    embedder: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Embedder for input files without cached embeddings (default: the input run's, else minilm)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the sample and of the held-out split"})

    @property
    def feature(self) -> str:
        """The score feature this job writes, `score/askllm-head/<model_name>`."""
        return records.score_feature(SCORER_NAME, self.model_name)


def input_embedder(inputs: tuple[str, ...]) -> str:
    """The embedder the input run used (a density output's `embedder`), else minilm."""
    return corpus.input_embedder(inputs) or corpus.DEFAULT_EMBEDDER


def sample_keys(ids: list[str], seed: int) -> np.ndarray:
    """The hash uniforms that choose the sample (salted apart from selection plans and the held-out split)."""
    return sampling.uniform_from_ids([_SAMPLE_SALT + i.encode("utf-8") for i in ids], seed)


def sample_candidates(marker: dict, recs: list[records.Record], x: np.ndarray, seed: int) -> list[tuple]:
    """A unit's documents as sample candidates: ((hash uniform, id), (id, text, embedding))."""
    keys = sample_keys([r[records.ID] for r in recs], seed)
    return [((float(keys[i]), r[records.ID]), (r[records.ID], r[records.TEXT], x[i])) for i, r in enumerate(recs)]


# ------------------------------------------------------------------------------------ the LLM and the fit


class _TimedModel:
    """Wraps a model so each result carries the model seconds per document of its call."""

    def __init__(self, model):
        self.model = model

    def score_encoded(self, batch):
        start = time.perf_counter()
        results = self.model.score_encoded(batch)
        each = (time.perf_counter() - start) / max(len(results), 1)
        return [(result, each) for result in results]


def timed_llm_spec(config: AskLLMHeadJobConfig, options: kit.JobOptions) -> inference.ModelSpec:
    """score_askllm's model spec, timed: the sample's records get the Ask-LLM features and a timing."""
    spec = score_askllm.model_spec(config, options)
    load, attach = spec.load_model, spec.attach
    return dataclasses.replace(spec, load_model=lambda: _TimedModel(load()),
                               attach=lambda record, timed: {**attach(record, timed[0]), _SECONDS: timed[1]})


def fit(scored: list, config: AskLLMHeadJobConfig, embedder: str) -> dict[str, Any]:
    """The sample's scored Items -> {head, report (agreement on the held-out part), llm: id -> AskLLMResult}."""
    name = config.model_name
    done = sorted((it.value for it in scored if it.kind == kit.RECORD), key=lambda r: r[records.ID])
    if len(done) < 5:
        raise heads.HeadError(f"only {len(done)} sample documents were scored by the LLM; need at least 5 "
                              f"(raise --sample)")
    ids = [r[records.ID] for r in done]
    x = np.stack([np.asarray(r[corpus.EMBEDDING], np.float64) for r in done])
    yes, no = (records.logp_feature(score_askllm.SCORER_NAME, name, a) for a in (askllm.ANSWER_YES, askllm.ANSWER_NO))
    y = heads.log_odds([r[yes] for r in done], [r[no] for r in done])
    held = heads.held_out_split(ids, config.holdout, config.seed)
    if held.sum() < 2 or (~held).sum() < 3:
        raise heads.HeadError(f"the sample of {len(ids)} splits into {int((~held).sum())} to fit and "
                              f"{int(held.sum())} held out; need 3 and 2 (raise --sample or change --holdout)")
    head = heads.fit_head(x[~held], y[~held], heads.HeadConfig(kind=config.head_kind, seed=config.seed),
                          embedder=embedder, model=name)
    agree = heads.agreement(head.predict(x[held]), y[held], top=TOP_FRACTION)
    llm = {r[records.ID]: askllm.AskLLMResult(
        score=r[records.score_feature(score_askllm.SCORER_NAME, name)], logp_yes=r[yes], logp_no=r[no],
        truncated=bool(r[records.truncated_feature(score_askllm.SCORER_NAME)]), n_tokens=0) for r in done}
    report = {
        "model": name, "embedder": embedder, "feature": config.feature,
        "sample": {"asked": config.sample, "scored": len(done), "failed": len(scored) - len(done),
                   "train": int((~held).sum()), "heldout": int(held.sum()), "holdout": config.holdout,
                   "seed": config.seed},
        "head": {"kind": head.kind, "alpha": head.alpha, "fit_heldout_error": head.heldout_error, "dim": head.dim},
        "heldout_agreement": {"n": agree.n, "spearman": agree.spearman, "kendall": agree.kendall,
                              f"top_{round(TOP_FRACTION * 100)}pct_overlap": agree.top_overlap, "k": agree.k},
        "cost": {"llm_seconds_per_doc": float(np.mean([r[_SECONDS] for r in done]))},
    }
    log.info("askllm-head: %s head on %d, held-out n=%d spearman %.3f kendall %.3f top-20%% overlap %.2f",
             head.kind, head.n_train, agree.n, agree.spearman, agree.kendall, agree.top_overlap)
    return {"head": head, "report": report, "llm": llm}


# ------------------------------------------------------------------------------------ pass 2


def head_digest(head: heads.AskLLMHead, llm: dict) -> bytes:
    """What identifies a head and the sample's labels its version carries (an .npz's bytes vary)."""
    scalars = {"bias": head.bias, "kind": head.kind, "alpha": head.alpha, "heldout_error": head.heldout_error,
               "n_train": head.n_train, "embedder": head.embedder, "model": head.model}
    labels = sorted((doc_id, list(dataclasses.astuple(result))) for doc_id, result in llm.items())
    return corpus.version_id(np.asarray(head.weights, np.float64).tobytes(), scalars, labels).encode()


def head_bytes(head: heads.AskLLMHead) -> bytes:
    """A head's .npz file as bytes."""
    return corpus.saved_bytes(head.save, HEAD_FILE)


def save_head(head: heads.AskLLMHead, output_dir: str, version: str) -> dict[str, str]:
    """Writes `versions/<v>/head.npz` unless that version's head is there; returns the outputs."""
    def same(found: bytes) -> bool:
        with tempfile.TemporaryDirectory(prefix="gristmill-") as tmp:
            path = os.path.join(tmp, HEAD_FILE)
            with open(path, "wb") as f:
                f.write(found)
            return head_digest(heads.AskLLMHead.load(path), {}) == head_digest(head, {})

    (rel,) = corpus.write_aggregate(output_dir, version, HEAD_FILE, head_bytes(head), same)
    return {"head": rel}


def score_unit(marker: dict, recs: list, x: np.ndarray, _, head: heads.AskLLMHead, llm: dict, feature: str,
               model_name: str):
    """Pass 2 (corpus.WriteVersions): a unit's records with the head's score, and the sample's LLM
    features; the transient fields carry the head's time on the unit."""
    start = time.perf_counter()
    scores = head.predict(x)
    seconds = time.perf_counter() - start
    out = []
    for record, score in zip(recs, scores):
        record[feature] = float(score)
        if record[records.ID] in llm:
            record = score_askllm.add_askllm_features(record, llm[record[records.ID]], model_name)
        out.append(record)
    return out, {"_head_seconds": seconds, "_head_documents": len(recs)}


def write_report(markers: list[dict], report: dict, output_dir: str, version: str,
                 outputs: dict[str, str]) -> dict[str, str]:
    """Adds the head's measured cost over every document to the fit's report and writes it into
    the version (once); returns the outputs with the report's path."""
    n = sum(m["_head_documents"] for m in markers if "_head_documents" in m)
    head_each = sum(m["_head_seconds"] for m in markers if "_head_seconds" in m) / max(n, 1)
    llm_each = report["cost"]["llm_seconds_per_doc"]
    embedded_here = any(m.get("embedded") for m in markers)
    report = {**report, "documents_scored": sum(m["written"] for m in markers),
              "cost": {**report["cost"], "head_seconds_per_doc": head_each,
                       "llm_over_head": llm_each / head_each if head_each > 0 else None,
                       "embedding": "embedded by this run (input files without a cache)" if embedded_here
                       else "cached by the input run (the density job's cost, paid once)"}}
    rel = corpus.write_aggregate(output_dir, version, REPORT_FILE, io.json_bytes(report),
                                 same=lambda found: bool(json.loads(found)))
    return {**outputs, "head_report": next(iter(rel))}


# ------------------------------------------------------------------------------------ the job


def check(config: AskLLMHeadJobConfig, embedder: str) -> None:
    """Bad sizes, models and heads fail here, before any worker starts."""
    if config.head:
        head = heads.AskLLMHead.load(config.head)
        if head.model and head.model != config.model_name:
            raise kit.UsageError(f"{config.head} distils {head.model!r}, not --model_name {config.model_name!r}")
        if head.embedder and head.embedder != embedder:
            raise kit.UsageError(f"{config.head} reads {head.embedder!r} embeddings, not {embedder!r}")
        return
    if config.sample < 5:
        raise kit.UsageError(f"--sample must be at least 5, got {config.sample}")
    if not 0 < config.holdout < 1:
        raise kit.UsageError(f"--holdout must be in (0, 1), got {config.holdout}")
    score_askllm.check(config)


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    options, config, pipeline_options = kit.parse(argv, AskLLMHeadJobConfig, __doc__)
    embedder = config.embedder or input_embedder(options.input)
    check(config, embedder)
    extra = {"embedder": embedder}
    if config.head:
        extra["head_sha256"] = hashlib.sha256(io.read_bytes(config.head)).hexdigest()
    else:
        extra["prompt_template_text"] = askllm.load_template(config.prompt_template)
    prepared = kit.prepare("score askllm-head", options, config, pipeline_options, extra)
    output = options.output
    pipeline = kit.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    every_unit = corpus.every_unit(corpus.write_units(pipeline, prepared, embedder, config.share_model))

    if config.head:
        head = pipeline | "HeadPath" >> beam.Create([config.head]) | "LoadHead" >> beam.Map(heads.AskLLMHead.load)
        llm = pipeline | "NoLabels" >> beam.Create([{}])
    else:
        seed = config.seed
        fitted = (corpus.smallest_sample(every_unit, output, config.sample,
                                         lambda m, recs, x: sample_candidates(m, recs, x, seed))
                  | "SampleItems" >> beam.FlatMap(lambda cs: [
                      kit.Item(kit.RECORD, "sample", i, {records.ID: c[0], records.TEXT: c[1], corpus.EMBEDDING: c[2]})
                      for i, (_, c) in enumerate(cs)])
                  | "SpreadSample" >> beam.Reshuffle()
                  | "AskLLM" >> inference.RunModel(timed_llm_spec(config, options))
                  | "ListScored" >> beam.combiners.ToList()
                  | "FitHead" >> beam.Map(fit, config, embedder))
        head = fitted | "Head" >> beam.Map(lambda f: f["head"])
        llm = fitted | "Labels" >> beam.Map(lambda f: f["llm"])
    fingerprint = prepared.base["fingerprint"]
    version = beam.pvalue.AsSingleton(
        head | "Version" >> beam.Map(lambda h, labels: corpus.version_id(head_digest(h, labels), fingerprint),
                                     beam.pvalue.AsSingleton(llm)))
    outputs = head | "SaveHead" >> beam.Map(save_head, output, version)
    scored = (every_unit
              | "Pairs" >> beam.Map(lambda m: (m, None))
              | "ApplyHead" >> corpus.WriteVersions(output, version, score_unit, beam.pvalue.AsSingleton(head),
                                                    beam.pvalue.AsSingleton(llm), config.feature, config.model_name,
                                                    what="documents scored by the head"))
    if not config.head:
        report = fitted | "Report" >> beam.Map(lambda f: f["report"])
        outputs = (scored
                   | "ListApplied" >> beam.combiners.ToList()
                   | "WriteReport" >> beam.Map(write_report, beam.pvalue.AsSingleton(report), output, version,
                                               beam.pvalue.AsSingleton(outputs)))
    _ = scored | "Finalize" >> corpus.Finalize(prepared, beam.pvalue.AsSingleton(outputs))
    return kit.run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
