"""`gristmill score askllm`: the Ask-LLM quality score of the paper as a Beam RunInference job.

    gristmill score askllm --model smollm2-135m-instruct --input 'c4/*.json.gz' --output out/askllm \\
        [--model_name NAME] [--prompt_template FILE] [--max_length 512] [--batch_size 16]

Every record gets `score/askllm/<model_name>` = P("yes"), `logp/askllm/<model_name>/yes|no` and
`truncated/askllm`; every other feature of the input record is kept, so scorers chain.

Documents are tokenised before batching, so Beam's BatchElements groups them by their real prompt
length and the scorer pads each batch to a fixed row count and one of a few length buckets (a
worker compiles a handful of programs whatever the corpus). The model loads once per worker
process (`--share_model` shares one copy across a worker's processes, as on GPUs).
"""

from __future__ import annotations

import dataclasses

from gristmill import records
from gristmill.models import batching
from gristmill.pipelines import inference, kit
from gristmill.scoring import askllm

SCORER_NAME = "askllm"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AskLLMJobConfig(askllm.AskLLMConfig):
    """The scorer's configuration plus how the job runs the model."""

    share_model: bool = dataclasses.field(default=False, metadata={
        "help": "Share one model copy across a worker's processes (GPU workers)"})


def add_askllm_features(record: records.Record, result: askllm.AskLLMResult, model_name: str) -> records.Record:
    """Returns the record with the Ask-LLM score, log-probabilities and truncation flag added."""
    scored = dict(record)
    scored[records.score_feature(SCORER_NAME, model_name)] = result.score
    scored[records.logp_feature(SCORER_NAME, model_name, askllm.ANSWER_YES)] = result.logp_yes
    scored[records.logp_feature(SCORER_NAME, model_name, askllm.ANSWER_NO)] = result.logp_no
    scored[records.truncated_feature(SCORER_NAME)] = int(result.truncated)
    return scored


def scorer_config(config: AskLLMJobConfig) -> askllm.AskLLMConfig:
    """The pure scorer's configuration (without the job's runtime flags)."""
    fields = {f.name for f in dataclasses.fields(askllm.AskLLMConfig)}
    return askllm.AskLLMConfig(**{k: v for k, v in dataclasses.asdict(config).items() if k in fields})


def model_spec(config: AskLLMJobConfig, options: kit.JobOptions) -> inference.ModelSpec:
    """How the kit's model handler builds, batches and attaches the Ask-LLM scorer."""
    pure = scorer_config(config)
    return inference.ModelSpec(
        name=SCORER_NAME,
        load_model=lambda: askllm.AskLLMScorer(pure),
        load_encoder=lambda: askllm.AskLLMEncoder(pure),
        attach=lambda record, result: add_askllm_features(record, result, pure.model_name),
        batch_size=pure.batch_size,
        length_boundaries=batching.length_buckets(pure.max_length)[:-1],
        share_model=config.share_model,
        resource_hints=kit.model_step_hints(options))


def score_askllm(config: AskLLMJobConfig, options: kit.JobOptions) -> inference.RunModel:
    """Items -> Items with the Ask-LLM features on every record."""
    return inference.RunModel(model_spec(config, options))


def check(config: AskLLMJobConfig) -> None:
    """Bad templates and models fail here, before any worker starts."""
    from gristmill.models import zoo

    askllm.load_template(config.prompt_template)
    zoo.check_model(config.model)


def fingerprint_extra(config: AskLLMJobConfig) -> dict:
    """The prompt template's text shapes every score, so it is part of the configuration's identity."""
    return {"prompt_template_text": askllm.load_template(config.prompt_template)}


SCORER = kit.Scorer("score askllm", AskLLMJobConfig, score_askllm, description=__doc__, check=check,
                    fingerprint_extra=fingerprint_extra)


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    return kit.run_scorer(SCORER, argv, save_main_session, test_pipeline)
