"""`gristmill score askllm-head`: distilled Ask-LLM (beyond the paper, the cost lever).

    gristmill score askllm-head --input out/density --output out/head --model smollm2-135m-instruct \\
        --sample 2000 [--holdout 0.2] [--head_kind ridge|logistic] [--head FILE]

    units of the input --(cached embeddings, or the density embedder)--> units/<u>.tfrecord + .emb.npy
    every unit --the --sample documents with the smallest hash of their id (Top.Smallest)--> sample
    sample --Ask-LLM (RunInference)--> log P(yes) - log P(no) --fit the head on all but the held-out part
          --> head.npz; held-out agreement (Spearman, Kendall, top-20% overlap) --> head_report.json
    every unit --head(embedding) (side input)--> units/<u>.tfrecord with score/askllm-head/<model_name>

The input is a gristmill output directory whose units carry cached embeddings (a `score density`
output: `DIR/units/<u>.emb.npy` beside `DIR/units/<u>.tfrecord`, rows in record order). An input
file without a cache is embedded here with the density job's embedder (`--embedder`, default:
the input run's embedder, else minilm). The embeddings are kept beside this job's units too, so
the output chains into jobs that reuse them.

Every document gets `score/askllm-head/<model_name>`, the head's predicted Ask-LLM log-odds
(higher = better, select with top-k). The documents of the sample also keep what the LLM said:
`score/askllm/<model_name>` = P(yes), `logp/askllm/<model_name>/yes|no` and `truncated/askllm`,
so a user can see the labels the head learned from; those features exist on the sample only.

The sample is bounded (`--sample`, a global Top.Smallest over a salted id hash, so it is the same
whatever the units or workers); the held-out part is `heads.held_out_split` of the sample ids. The
report's cost per document: the LLM's model time on the sample (compilation of its few length
buckets included) against the head's time on every document; the embedding cost is the density
job's (paid once for every embedding-based scorer), or this job's when it had to embed.
`--head FILE` applies a saved head (copied to `head.npz`) without any LLM call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
import time
from typing import Any, Optional

import apache_beam as beam
import numpy as np

from gristmill import io, records, sampling
from gristmill.pipelines import inference, kit, score_askllm, score_density, units
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


def cache_path(records_path: str) -> str:
    """The embedding cache of an input unit file: `<u>.tfrecord` -> `<u>.emb.npy`."""
    stem = records_path[: -len(units.RECORDS_SUFFIX)] if records_path.endswith(units.RECORDS_SUFFIX) \
        else records_path
    return stem + score_density.EMBEDDINGS_SUFFIX


def input_embedder(inputs: tuple[str, ...]) -> str:
    """The embedder the input run used (a density output's `embedder`), else minilm."""
    for spec in inputs:
        if io.is_dir(spec) and io.exists(io.join(spec, records.MANIFEST_FILE)):
            embedder = records.read_manifest(spec).get("config", {}).get("embedder")
            if embedder:
                return str(embedder)
    return "minilm"


def sample_keys(ids: list[str], seed: int) -> np.ndarray:
    """The hash uniforms that choose the sample (salted apart from selection plans and the held-out split)."""
    return sampling.uniform_from_ids([_SAMPLE_SALT + i.encode("utf-8") for i in ids], seed)


# ------------------------------------------------------------------------------------ pass 1


def _write_embeddings(output_dir: str, info: kit.UnitInfo, items: list) -> dict[str, Any]:
    """WriteUnits hook: each record's embedding (computed now, or row number-1 of the input's cache)
    goes into this unit's cache, in record order."""
    vectors, cached = [], None
    for item in items:
        if item.kind != kit.RECORD:
            continue
        vector = item.value.pop(score_density.EMBEDDING, None)
        if vector is None:
            if cached is None:
                cached = score_density.load_array(cache_path(info.file.path))
            if item.number > len(cached):
                raise ValueError(f"{info.file.path}: record {item.number} but {len(cached)} cached embeddings")
            vector = cached[item.number - 1]
        vectors.append(np.asarray(vector, np.float32))
    if vectors:
        score_density.save_array(score_density.embedding_path(output_dir, info.key), np.stack(vectors))
    return {"embeddings": units.relative_unit_path(info.key, score_density.EMBEDDINGS_SUFFIX) if vectors else None}


def _read_unit(output_dir: str, marker: dict) -> tuple[list[records.Record], np.ndarray]:
    path = io.join(output_dir, marker["records"])
    with io.open_read(path) as f:
        recs = [records.deserialize(data) for data in records.iter_tfrecords(f)]
    embeddings = score_density.load_array(io.join(output_dir, marker["embeddings"]))
    if len(embeddings) != len(recs):
        raise ValueError(f"unit {marker['key']}: {len(recs)} records but {len(embeddings)} cached embeddings")
    return recs, embeddings


def _unit_candidates(marker: dict, output_dir: str, n: int, seed: int):
    """A unit's n sample candidates (key, id, text, embedding): the global n smallest are among them."""
    if not marker.get("records"):
        return
    recs, embeddings = _read_unit(output_dir, marker)
    keys = sample_keys([r[records.ID] for r in recs], seed)
    for i in heapq.nsmallest(n, range(len(recs)), key=lambda i: (keys[i], recs[i][records.ID])):
        yield float(keys[i]), recs[i][records.ID], recs[i][records.TEXT], embeddings[i]


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
    x = np.stack([np.asarray(r[score_density.EMBEDDING], np.float64) for r in done])
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


class _ApplyHeadFn(beam.DoFn):
    """Pass 2: a unit marker -> its records rewritten with the head's score (and the sample's LLM
    features); yields the marker with the head's time on the unit."""

    def __init__(self, output_dir: str, feature: str, model_name: str):
        self.output_dir, self.feature, self.model_name = output_dir, feature, model_name

    def setup(self):
        self.progress = kit.Progress("documents scored by the head")

    def process(self, marker: dict, head: heads.AskLLMHead, llm: dict):
        seconds, n = 0.0, 0
        if marker.get("records"):
            recs, embeddings = _read_unit(self.output_dir, marker)
            start = time.perf_counter()
            scores = head.predict(embeddings)
            seconds, n = time.perf_counter() - start, len(recs)
            out = []
            for record, score in zip(recs, scores):
                record[self.feature] = float(score)
                if record[records.ID] in llm:
                    record = score_askllm.add_askllm_features(record, llm[record[records.ID]], self.model_name)
                out.append(record)
            io.atomic_write(io.join(self.output_dir, marker["records"]),
                            b"".join(records.encode_tfrecord(records.serialize(r)) for r in out))
            self.progress.tick(n)
        yield {**marker, "_head_seconds": seconds, "_head_documents": n}


def write_report(markers: list[dict], report: dict, output_dir: str, embedded_here: bool) -> dict:
    """Adds the head's measured cost over every document to the fit's report and writes it."""
    n = sum(m["_head_documents"] for m in markers)
    head_each = sum(m["_head_seconds"] for m in markers) / max(n, 1)
    llm_each = report["cost"]["llm_seconds_per_doc"]
    report = {**report, "documents_scored": n,
              "cost": {**report["cost"], "head_seconds_per_doc": head_each,
                       "llm_over_head": llm_each / head_each if head_each > 0 else None,
                       "embedding": "embedded by this run (input files without a cache)" if embedded_here
                       else "cached by the input run (the density job's cost, paid once)"}}
    io.write_json(io.join(output_dir, REPORT_FILE), report)
    return report


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

    has_cache = [io.exists(cache_path(w.file.path)) for w in prepared.work]
    cached = [w for w, c in zip(prepared.work, has_cache) if c]
    to_embed = [w for w, c in zip(prepared.work, has_cache) if not c]
    written = [pipeline | "ReusedUnits" >> beam.Create(prepared.reused)]
    if cached:
        written.append(kit.read(pipeline, dataclasses.replace(prepared, work=cached), "ReadCached")
                       | "WriteCachedUnits" >> kit.WriteUnits(output, _write_embeddings))
    if to_embed:
        embed = score_density.embed_spec(score_density.DensityConfig(embedder=embedder,
                                                                     share_model=config.share_model), options)
        written.append(kit.read(pipeline, dataclasses.replace(prepared, work=to_embed), "ReadToEmbed")
                       | "Embed" >> inference.RunModel(embed)
                       | "WriteEmbeddedUnits" >> kit.WriteUnits(output, _write_embeddings))
    listed = tuple(written) | "EveryUnit" >> beam.Flatten() | "ListUnits" >> beam.combiners.ToList()

    if config.head:
        head = pipeline | "HeadPath" >> beam.Create([config.head]) | "LoadHead" >> beam.Map(heads.AskLLMHead.load)
        llm = pipeline | "NoLabels" >> beam.Create([{}])
        saved = [head | "SaveHead" >> beam.Map(lambda h: h.save(io.join(output, HEAD_FILE)))]
    else:
        n, seed = config.sample, config.seed
        fitted = (listed
                  | "UnitsToSample" >> beam.FlatMap(lambda ms: ms)
                  | "SpreadSampling" >> beam.Reshuffle()
                  | "UnitCandidates" >> beam.FlatMap(_unit_candidates, output, n, seed)
                  | "Sample" >> beam.combiners.Top.Smallest(n, key=lambda c: (c[0], c[1]))
                  | "SampleItems" >> beam.FlatMap(lambda cs: [
                      kit.Item(kit.RECORD, "sample", i, {records.ID: c[1], records.TEXT: c[2],
                                                         score_density.EMBEDDING: c[3]})
                      for i, c in enumerate(cs)])
                  | "SpreadSample" >> beam.Reshuffle()
                  | "AskLLM" >> inference.RunModel(timed_llm_spec(config, options))
                  | "ListScored" >> beam.combiners.ToList()
                  | "FitHead" >> beam.Map(fit, config, embedder))
        head = fitted | "Head" >> beam.Map(lambda f: f["head"])
        llm = fitted | "Labels" >> beam.Map(lambda f: f["llm"])
        saved = [head | "SaveHead" >> beam.Map(lambda h: h.save(io.join(output, HEAD_FILE)))]
    applied = (listed
               | "UnitsToScore" >> beam.FlatMap(lambda ms: ms)
               | "SpreadScoring" >> beam.Reshuffle()
               | "ApplyHead" >> beam.ParDo(_ApplyHeadFn(output, config.feature, config.model_name),
                                           beam.pvalue.AsSingleton(head), beam.pvalue.AsSingleton(llm)))
    files = {"head": HEAD_FILE}
    if not config.head:
        report = fitted | "Report" >> beam.Map(lambda f: f["report"])
        saved.append(applied | "ListApplied" >> beam.combiners.ToList()
                     | "WriteReport" >> beam.Map(write_report, beam.pvalue.AsSingleton(report), output,
                                                          bool(to_embed)))
        files["head_report"] = REPORT_FILE
    _ = applied | "Finalize" >> kit.Finalize(output, prepared.base, prepared.reused, files, after=saved,
                                             markers_include_reused=True)
    return kit.run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
