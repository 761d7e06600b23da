"""`gristmill score perplexity`: the paper's Perplexity-filtering baseline as a Beam RunInference job.

    gristmill score perplexity --model smollm2-135m-instruct --input 'c4/*.json.gz' --output out/ppl \\
        [--model_name NAME] [--max_length 512] [--batch_size 16] [--dtype float32|bfloat16] [--add_bos]

Every record gets `score/perplexity/<model_name>` (the perplexity itself, exp of the mean token
NLL; see `gristmill.scoring.perplexity` for both model families), `tokens/<model_name>` (document
tokens scored, after truncation) and `truncated/perplexity`. Every other feature is kept.

Sign convention: the score is the perplexity, so HIGHER means less like the proxy's training data.
The paper keeps LOW perplexity: select with `gristmill select --rule bottomk`. The paper's Figure
9 plots the negation (-perplexity), on which top-k is the same selection.

A document that gives fewer than 2 tokens has no perplexity and is dead-lettered
(`inference_error`, with the PerplexityError message). Documents are tokenised before batching,
so Beam groups them by real length and the scorer pads each batch to a few length buckets.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from gristmill import records
from gristmill.models import batching, zoo
from gristmill.pipelines import inference, kit
from gristmill.scoring import perplexity

SCORER_NAME = "perplexity"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerplexityJobConfig:
    """The perplexity scorer's configuration plus how the job runs the model."""

    model: str = dataclasses.field(default="smollm2-135m-instruct", metadata={
        "help": "Proxy LM: a zoo name (smollm2-135m-instruct), a .gguf file, or a HF model directory (T5, Llama, "
                "Qwen2, Mistral), local or gs://"})
    model_name: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Name in the features score/perplexity/<model_name>, tokens/<model_name> (default: the model's "
                "base name)"})
    max_length: int = dataclasses.field(default=512, metadata={
        "help": "Tokens entering the model (decoder-only: BOS included; T5: the corrupted encoder input)"})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Rows per model call"})
    dtype: str = dataclasses.field(default="float32", metadata={"help": "Compute dtype",
                                                                "choices": ("float32", "bfloat16")})
    add_bos: Optional[bool] = dataclasses.field(default=None, metadata={
        "help": "Decoder-only: put BOS first (default: as the model's tokenizer does)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "T5 only: seed of the span-corruption noise"})
    share_model: bool = dataclasses.field(default=False, metadata={
        "help": "Share one model copy across a worker's processes (GPU workers)"})

    def __post_init__(self):
        if self.model_name is None:
            object.__setattr__(self, "model_name", zoo.model_name(self.model))


def scorer_config(config: PerplexityJobConfig) -> perplexity.PerplexityConfig:
    """The pure scorer's configuration (without the job's runtime flags)."""
    fields = {f.name for f in dataclasses.fields(perplexity.PerplexityConfig)}
    return perplexity.PerplexityConfig(**{k: v for k, v in dataclasses.asdict(config).items() if k in fields})


# PerplexityScorer.encode needs the loaded model (its tokenizer, family and position limit come from
# it), so the handler's model loader and the encoder share one instance per worker process.
@functools.lru_cache(maxsize=2)
def shared_scorer(config: perplexity.PerplexityConfig) -> perplexity.PerplexityScorer:
    """The per-process PerplexityScorer of a configuration (weights loaded once)."""
    return perplexity.PerplexityScorer(config)


def add_perplexity_features(record: records.Record, result: perplexity.PerplexityResult,
                            model_name: str) -> records.Record:
    """Returns the record with the perplexity, its token count and the truncation flag added."""
    scored = dict(record)
    scored[records.score_feature(SCORER_NAME, model_name)] = result.perplexity
    scored[records.tokens_feature(model_name)] = result.n_tokens
    scored[records.truncated_feature(SCORER_NAME)] = int(result.truncated)
    return scored


def model_spec(config: PerplexityJobConfig, options: kit.JobOptions) -> inference.ModelSpec:
    """How the kit's model handler builds, batches and attaches the perplexity scorer."""
    pure = scorer_config(config)
    return inference.ModelSpec(
        name=SCORER_NAME,
        load_model=lambda: shared_scorer(pure),
        load_encoder=lambda: shared_scorer(pure),
        attach=lambda record, result: add_perplexity_features(record, result, pure.model_name),
        batch_size=pure.batch_size,
        length_boundaries=batching.length_buckets(pure.max_length)[:-1],
        share_model=config.share_model,
        resource_hints=kit.model_step_hints(options))


def score_perplexity(config: PerplexityJobConfig, options: kit.JobOptions) -> inference.RunModel:
    """Items -> Items with the perplexity features on every record (too-short documents dead-lettered)."""
    return inference.RunModel(model_spec(config, options))


def check(config: PerplexityJobConfig) -> None:
    """Bad sizes and models fail here, before any worker starts."""
    scorer_config(config)
    zoo.check_model(config.model)


SCORER = kit.Scorer("score perplexity", PerplexityJobConfig, score_perplexity, description=__doc__, check=check)


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    return kit.run_scorer(SCORER, argv, save_main_session, test_pipeline)
