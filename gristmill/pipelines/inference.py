"""One JAX ModelHandler for every batched model call: Ask-LLM, embeddings, perplexity, heads.

    Items --Encode (tokenise; records only)--> (item, encoded) --RunInference(JaxModelHandler)-->
          (item, result or error) --attach--> Items (scored records, or inference_error dead letters)

A model is anything with `score_encoded(list of encoded) -> list of results`, built by a
`ModelSpec` that also builds the tokenizer-only encoder (`encode(text) -> encoded`, where
`encoded.length` is the token count). Tokenising before batching lets Beam's BatchElements group
documents by their real token length (`length_fn` + `bucket_boundaries`), so the model pads each
batch to a short bucket. Non-record Items (unit infos, dead letters) ride along with length 0 and
are returned untouched, which keeps a unit in one fused stage (see `kit`). A batch whose inference
raises becomes `inference_error` dead letters, one per document, naming the error.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from gristmill.pipelines import kit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build one model and its encoder, and how Beam should batch for it.

    load_model: builds the model (weights loaded, functions compiled), once per worker process.
    load_encoder: builds the tokenizer-only encoder (no weights), once per worker.
    attach: (record, result) -> record with the model's features added.
    length_boundaries: token lengths at which Beam's batching starts a new length bucket.
    """

    name: str
    load_model: Callable[[], Any]
    load_encoder: Callable[[], Any]
    attach: Callable[[dict, Any], dict]
    batch_size: int = 16
    batches_per_call: int = 4
    length_boundaries: tuple[int, ...] = ()
    share_model: bool = False
    model_copies: Optional[int] = None
    resource_hints: dict[str, Any] = dataclasses.field(default_factory=dict)


def _length(element: Any) -> int:
    encoded = element[1]
    return 0 if encoded is None else int(encoded.length)


class JaxModelHandler(ModelHandler[tuple, PredictionResult, Any]):
    """Beam ModelHandler for gristmill's JAX models, over (Item, encoded or None) elements."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self._resource_hints = dict(spec.resource_hints)

    def load_model(self) -> Any:
        start = time.monotonic()
        model = self.spec.load_model()
        log.info("%s: model loaded in %.1f s", self.spec.name, time.monotonic() - start)
        return model

    def run_inference(self, batch: Sequence[tuple], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        positions = [i for i, (_, encoded) in enumerate(batch) if encoded is not None]
        results: list[Any] = [None] * len(batch)
        if positions:
            try:
                outputs = model.score_encoded([batch[i][1] for i in positions])
                for i, output in zip(positions, outputs):
                    results[i] = output
            except Exception as err:  # noqa: BLE001 (each document of the batch becomes a dead letter)
                log.warning("%s: a batch of %d failed: %s", self.spec.name, len(positions), err)
                for i in positions:
                    results[i] = err
        return [PredictionResult(element, result, model_id=self.spec.name) for element, result in zip(batch, results)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"min_batch_size": 1, "length_fn": _length,
                                  "max_batch_size": self.spec.batch_size * self.spec.batches_per_call}
        if self.spec.length_boundaries:
            kwargs["bucket_boundaries"] = list(self.spec.length_boundaries)
        return kwargs

    def share_model_across_processes(self) -> bool:
        return self.spec.share_model

    def model_copies(self) -> int:
        return self.spec.model_copies or 1

    def get_resource_hints(self) -> dict[str, Any]:
        return dict(self._resource_hints)

    def get_metrics_namespace(self) -> str:
        return f"gristmill.{self.spec.name}"


class _EncodeFn(beam.DoFn):
    """Items -> (Item, encoded): records are tokenised; other Items get None. Encoding errors dead-letter."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def setup(self):
        self.encoder = self.spec.load_encoder()

    def process(self, item: kit.Item):
        if item.kind != kit.RECORD:
            yield item, None
            return
        try:
            yield item, self.encoder.encode(item.value["text"])
        except Exception as err:  # noqa: BLE001 (a document the tokenizer cannot take is dead-lettered)
            yield kit.dead_letter(item, kit.INFERENCE_ERROR, f"cannot tokenise: {type(err).__name__}: {err}"), None


class _AttachFn(beam.DoFn):
    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def setup(self):
        self.progress = kit.Progress(f"documents scored by {self.spec.name}")

    def process(self, prediction: PredictionResult):
        item, _ = prediction.example
        result = prediction.inference
        if item.kind != kit.RECORD:
            yield item
        elif isinstance(result, Exception):
            yield kit.dead_letter(item, kit.INFERENCE_ERROR, f"{type(result).__name__}: {result}")
        else:
            self.progress.tick()
            yield item._replace(value=self.spec.attach(item.value, result))


class RunModel(beam.PTransform):
    """Items -> Items with the model's features on every record (or inference_error dead letters).

    Example: with the Ask-LLM spec, a record `{"id": "ab12", "text": "The Eiffel Tower ..."}` comes
    out with `score/askllm/<model>` = 0.83 and its log-probabilities; a unit info passes unchanged.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec

    def expand(self, items):
        return (items
                | "Encode" >> beam.ParDo(_EncodeFn(self.spec))
                | "RunInference" >> RunInference(JaxModelHandler(self.spec))
                | "Attach" >> beam.ParDo(_AttachFn(self.spec)))
