"""`gristmill score askllm`: the Ask-LLM quality score of the paper as a Beam RunInference job.

    gristmill score askllm --model smollm2-135m-instruct --input 'c4/*.json.gz' --output out/askllm \\
        [--model_name NAME] [--prompt_template FILE] [--max_length 512] [--batch_size 16]

Every record gets `score/askllm/<model_name>` = P("yes"), `logp/askllm/<model_name>/yes|no` and
`truncated/askllm`; every other feature of the input record is kept, so scorers chain.

Batching: Beam's BatchElements forms batches of documents of similar length (length-aware
buckets on the character length, a cheap proxy for the token length known before tokenising),
and the scorer pads each batch to a fixed row count and one of a few token-length buckets, so a
worker compiles a handful of programs whatever the corpus. The model is loaded once per worker
process (`--share_model` shares one copy across the processes of a worker, as on GPUs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from gristmill import records
from gristmill.documents import DeadLetter
from gristmill.pipelines import job
from gristmill.pipelines.transforms import Progress
from gristmill.scoring import askllm

SCORER = "askllm"
INFERENCE_ERROR = "inference_error"
CHARS_PER_TOKEN = 4  # English web text under SentencePiece / BPE vocabularies, roughly
log = logging.getLogger(__name__)


def model_name_of(model: str) -> str:
    """The default score name of a model: its known name, or the base name of its path."""
    base = os.path.basename(str(model).rstrip("/"))
    return base[: -len(".gguf")] if base.endswith(".gguf") else base


def _text_length(element: Any) -> int:
    """Length proxy for length-aware batching; elements are (record, text) pairs."""
    text = element[1] if isinstance(element, tuple) else element
    return len(text)


class AskLLMModelHandler(ModelHandler[str, askllm.AskLLMResult, askllm.AskLLMScorer]):
    """Beam ModelHandler running the Ask-LLM scorer on batches of document texts.

    `load_model` loads the proxy model and jit-compiles its scoring function once per worker
    process; `run_inference` returns one PredictionResult per text, in order.
    """

    def __init__(self, config: askllm.AskLLMConfig, *, share_model: bool = False, batches_per_call: int = 4):
        self.config = config
        self.share_model = share_model
        self.max_batch_size = config.batch_size * batches_per_call
        self.bucket_boundaries = [b * CHARS_PER_TOKEN for b in askllm.length_buckets(config.max_length)[:-1]]

    def load_model(self) -> askllm.AskLLMScorer:
        start = time.monotonic()
        scorer = askllm.AskLLMScorer(self.config)
        log.info("ask-llm: loaded %s in %.1f s", self.config.model, time.monotonic() - start)
        return scorer

    def run_inference(self, batch: Sequence[str], model: askllm.AskLLMScorer,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        results = model.score_batch(list(batch))
        return [PredictionResult(text, result, model_id=self.config.model_name) for text, result in zip(batch, results)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self.config.batch_size, "max_batch_size": self.max_batch_size,
                "length_fn": _text_length, "bucket_boundaries": self.bucket_boundaries}

    def share_model_across_processes(self) -> bool:
        return self.share_model

    def get_metrics_namespace(self) -> str:
        return "gristmill.askllm"


def add_askllm_features(record: records.Record, result: askllm.AskLLMResult, model_name: str) -> records.Record:
    """Returns the record with the Ask-LLM score, log-probabilities and truncation flag added."""
    scored = dict(record)
    scored[records.score_feature(SCORER, model_name)] = result.score
    scored[records.logp_feature(SCORER, model_name, askllm.ANSWER_YES)] = result.logp_yes
    scored[records.logp_feature(SCORER, model_name, askllm.ANSWER_NO)] = result.logp_no
    scored[records.truncated_feature(SCORER)] = int(result.truncated)
    return scored


class _AttachScore(beam.DoFn):
    def __init__(self, model_name: str):
        self.model_name = model_name

    def setup(self):
        self.progress = Progress("documents scored by ask-llm")

    def process(self, element):
        record, prediction = element
        self.progress.tick()
        yield add_askllm_features(record, prediction.inference, self.model_name)


def _failed_batch_to_dead_letters(element) -> Iterable[DeadLetter]:
    batch, error = element
    if isinstance(error, tuple) and len(error) >= 2:  # Beam hands over (type, repr of the value, traceback)
        error = error[1]
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    for record, text in batch:
        yield DeadLetter(record.get(records.SOURCE, ""), 0, INFERENCE_ERROR,
                         f"document {record[records.ID]}: {message}", text[:200])


class ScoreAskLLM(beam.PTransform):
    """Documents -> Ask-LLM-scored documents, plus dead letters for batches whose inference failed.

    Input: record dicts with `text`. Output: (scored records, dead letters). Example: a record
    `{"id": "ab12", "text": "The Eiffel Tower ..."}` comes out with `score/askllm/<model>` = 0.83,
    `logp/askllm/<model>/yes` = -0.19, `logp/askllm/<model>/no` = -1.9, `truncated/askllm` = 0.
    """

    def __init__(self, handler: AskLLMModelHandler):
        super().__init__()
        self.handler = handler

    def expand(self, docs):
        keyed = docs | "KeyByRecord" >> beam.Map(lambda r: (r, r[records.TEXT]))
        predictions, failures = keyed | "RunInference" >> RunInference(
            KeyedModelHandler(self.handler)).with_exception_handling()
        scored = predictions | "AttachScore" >> beam.ParDo(_AttachScore(self.handler.config.model_name))
        dead = failures.failed_inferences | "FailedToDeadLetters" >> beam.FlatMap(_failed_batch_to_dead_letters)
        return scored, dead


class ScoreAskLLMOptions(PipelineOptions):
    """Flags of `gristmill score askllm`."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--model", default="smollm2-135m-instruct",
                            help="Model name (smollm2-135m-instruct), a .gguf file, or a HF model directory "
                                 "(FLAN-T5, Llama, Qwen2), local or gs://.")
        parser.add_argument("--model_name", default=None,
                            help="Name of the score feature score/askllm/<model_name> (default: the model's base name).")
        parser.add_argument("--prompt_template", default=None,
                            help="Prompt template file with one {document} placeholder (default: the paper's prompt).")
        parser.add_argument("--max_length", type=int, default=512, help="Prompt tokens; longer documents are cut.")
        parser.add_argument("--batch_size", type=int, default=16, help="Rows per model call.")
        parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="Compute dtype.")
        parser.add_argument("--share_model", action="store_true",
                            help="Share one model copy across a worker's processes (GPU workers).")
        parser.add_argument("--limit", type=int, default=0,
                            help="Score only this many documents (chosen by a hash of their id); the rest are "
                                 "written without the score. For trials; 0 scores everything.")


def askllm_config(opts: ScoreAskLLMOptions) -> askllm.AskLLMConfig:
    """The scorer configuration the flags describe."""
    return askllm.AskLLMConfig(model=opts.model, model_name=opts.model_name or model_name_of(opts.model),
                               prompt_template=opts.prompt_template, max_length=opts.max_length,
                               batch_size=opts.batch_size, dtype=opts.dtype)


def check_model(spec: str) -> None:
    """Fails before the pipeline starts when the model name or path cannot be a model (no weights read)."""
    from gristmill.models import checkpoints, zoo
    if spec in zoo.KNOWN_MODELS:
        zoo.KNOWN_MODELS[spec]()
    elif spec.endswith(".gguf"):
        if not checkpoints.exists(spec):
            raise checkpoints.CheckpointError(f"{spec}: GGUF file not found")
    elif not checkpoints.exists(checkpoints.join(spec, checkpoints.CONFIG_FILE)):
        raise checkpoints.CheckpointError(
            f"{spec}: not a known model name ({', '.join(sorted(zoo.KNOWN_MODELS))}), a .gguf file, "
            f"or a model directory with {checkpoints.CONFIG_FILE}")


def sample_key(record: records.Record) -> str:
    """A key ordering documents by a hash of their id: `--limit` scores the smallest keys."""
    return hashlib.blake2b(record[records.ID].encode("utf-8"), digest_size=8, person=b"gm-limit").hexdigest()


@beam.ptransform_fn
def SplitSample(docs, limit: int):  # noqa: N802 (a PTransform)
    """Splits documents into the `limit` with the smallest id hash and the rest: (sample, rest)."""
    threshold = (docs
                 | "HashKeys" >> beam.Map(sample_key)
                 | "SmallestKeys" >> beam.combiners.Top.Smallest(limit)
                 | "Threshold" >> beam.Map(lambda keys: keys[-1] if keys else ""))
    split = docs | "Split" >> beam.Map(
        lambda r, t: r if sample_key(r) <= t else beam.pvalue.TaggedOutput("rest", r),
        beam.pvalue.AsSingleton(threshold)).with_outputs("rest", main="sample")
    return split.sample, split.rest


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    pipeline_options, corpus, opts = job.parse_options(argv, ScoreAskLLMOptions)
    config = askllm_config(opts)
    askllm.load_template(config.prompt_template)  # bad templates and models fail here, before any worker starts
    check_model(config.model)
    pipeline = job.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    files, docs, dead = job.read_corpus(pipeline, corpus)
    handler = AskLLMModelHandler(config, share_model=opts.share_model)
    if opts.limit > 0:
        sample, rest = docs | "Limit" >> SplitSample(opts.limit)
        scored, failed = sample | "AskLLM" >> ScoreAskLLM(handler)
        scored = (scored, rest) | "WithUnscored" >> beam.Flatten()
    else:
        scored, failed = docs | "AskLLM" >> ScoreAskLLM(handler)
    base = job.manifest_base("score askllm", dataclasses.asdict(config) | {"limit": opts.limit}, pipeline_options, files)
    job.write_outputs(pipeline, corpus.output, corpus.num_shards, base, docs, scored, [dead, failed])
    return job.run_pipeline(pipeline, corpus.output, is_test=test_pipeline is not None)
