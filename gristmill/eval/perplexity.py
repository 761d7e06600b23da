"""Held-out perplexity of a trained T5: the span-corruption perplexity on a fixed text set.

The paper reports "C4 perplexity" and "HQ perplexity" (docs/paper.md §5.3) but does not say how a
T5's perplexity is computed (docs/paper.md §9.3). gristmill's definition:

    perplexity = exp( sum of -log p(target token) / number of target tokens )

over the decoder targets of T5 span corruption of the held-out documents, teacher-forced
(`t5.target_logprobs`). Each document is tokenised on its own (no concatenation across
documents), cut into chunks of `tokens_length` tokens (T5's random_spans_helper: 568 for 512
inputs), and each chunk is span-corrupted (noise density 0.15, mean span 3) with a generator
seeded by (seed, a hash of the document text, chunk index): `span_corruption.corrupted_examples`,
the builder the perplexity scorer and training use too. Targets are the sentinels, the masked spans
and EOS, as in T5's training loss. Every example is padded to (inputs_length, targets_length)
and run in batches of fixed shape (the last batch is filled with empty rows of weight 0), so one
compilation serves a whole text set.

Because the examples depend only on the texts, the vocabulary and `HeldoutPerplexityConfig`, two
models that share a vocabulary are scored on exactly the same targets and their perplexities compare.
Across vocabularies they do not (different targets): an experiment trains one vocabulary.

Text sets (`TEXT_SETS`):
- `c4_heldout`: the documents of the embedded C4 sample (or any corpus) whose id falls in the
  held-out split, `is_heldout(id)`: a hash of the id, about `HELDOUT_FRACTION` = 10% of the
  documents. Experiments train on the rest (`split_heldout`).
- `high_quality`: "HQ", 60 documents shipped in `gristmill/data/heldout/high_quality.jsonl`
  (FineWeb-Edu texts graded 4-5 and Wikipedia chunks from The Pile; see its PROVENANCE.md).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import math
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gristmill import documents, io, records, sampling, span_corruption
from gristmill.documents import embedded_corpus
from gristmill.models import t5
from gristmill.training import data as training_data

C4_HELDOUT = "c4_heldout"
HIGH_QUALITY = "high_quality"
TEXT_SETS = (C4_HELDOUT, HIGH_QUALITY)
HELDOUT_FRACTION = 0.1
HELDOUT_SEED = 0
_HELDOUT_SALT = b"gristmill/heldout/"


class HeldoutPerplexityError(ValueError):
    """A held-out perplexity cannot be computed (unknown text set, no tokens, vocabulary mismatch)."""


# --- text sets -------------------------------------------------------------------------------

def heldout_mask(ids: Sequence[str | bytes], fraction: float = HELDOUT_FRACTION) -> np.ndarray:
    """Boolean mask: which document ids are in the held-out split.

    A document is held out iff `sampling.uniform_from_id("gristmill/heldout/" + id, 0) < fraction`:
    deterministic, independent of order and sharding, and (by the salt) independent of the hash
    uniforms that selection plans draw from the bare id.
    """
    if not 0 < fraction < 1:
        raise HeldoutPerplexityError(f"held-out fraction must be in (0, 1), got {fraction}")
    raw = [i.encode("utf-8") if isinstance(i, str) else bytes(i) for i in ids]
    return sampling.uniform_from_ids([_HELDOUT_SALT + i for i in raw], HELDOUT_SEED) < fraction


def is_heldout(doc_id: str | bytes, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether one document id is in the held-out split (see `heldout_mask`)."""
    return bool(heldout_mask([doc_id], fraction)[0])


def split_heldout(items: Iterable[records.Record], fraction: float = HELDOUT_FRACTION
                  ) -> tuple[list[records.Record], list[records.Record]]:
    """(train, heldout) record lists, split by `heldout_mask` of their `id`, order kept."""
    items = list(items)
    mask = heldout_mask([r[records.ID] for r in items], fraction)
    return [r for r, h in zip(items, mask) if not h], [r for r, h in zip(items, mask) if h]


def read_corpus(pattern: str) -> list[records.Record]:
    """Documents of a corpus glob (JSON lines, gzip, TFRecords); HeldoutPerplexityError if any record is bad."""
    docs = []
    for item in documents.read_documents(pattern):
        if isinstance(item, documents.DeadLetter):
            raise HeldoutPerplexityError(f"{item.source} record {item.record}: {item.reason} ({item.detail})")
        docs.append(item)
    return docs


def high_quality_path() -> str:
    """Path of the shipped HQ text set."""
    return str(importlib.resources.files("gristmill") / "data" / "heldout" / "high_quality.jsonl")


def c4_heldout(corpus: Optional[str] = None, fraction: float = HELDOUT_FRACTION) -> list[str]:
    """Texts of the held-out split of a corpus (default: the embedded C4 sample), in corpus order."""
    return [r[records.TEXT] for r in split_heldout(read_corpus(corpus or embedded_corpus()), fraction)[1]]


def high_quality() -> list[str]:
    """Texts of the shipped HQ set (60 documents)."""
    return [json.loads(line)["text"] for line in io.read_text(high_quality_path()).splitlines() if line.strip()]


def text_set(name: str, corpus: Optional[str] = None) -> list[str]:
    """The texts of a named set: `c4_heldout` (of `corpus`, default the embedded sample) or `high_quality`."""
    if name == C4_HELDOUT:
        return c4_heldout(corpus)
    if name == HIGH_QUALITY:
        return high_quality()
    raise HeldoutPerplexityError(f"unknown text set {name!r}; known: {TEXT_SETS}")


# --- examples --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class HeldoutPerplexityConfig:
    """How held-out texts become scored examples (fix it across the models you compare).

    inputs_length: encoder length (the chunk length follows from it, T5's random_spans_helper).
    noise_density, mean_noise_span_length: T5 span corruption. seed: the corruption noise.
    batch_size: rows per forward pass (memory only; results do not depend on it).
    max_documents: use only the first documents of a set (None: all).
    """

    inputs_length: int = 512
    noise_density: float = span_corruption.NOISE_DENSITY
    mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH
    seed: int = 0
    batch_size: int = 16
    max_documents: Optional[int] = None

    def __post_init__(self):
        if self.inputs_length < 2 or self.batch_size < 1:
            raise HeldoutPerplexityError(f"need inputs_length >= 2 and batch_size >= 1, got "
                                         f"{self.inputs_length}, {self.batch_size}")

    @property
    def lengths(self) -> tuple[int, int]:
        """(tokens per chunk, targets_length)."""
        return span_corruption.random_spans_helper(self.inputs_length, noise_density=self.noise_density,
                                                   mean_noise_span_length=self.mean_noise_span_length)


def heldout_examples(texts: Sequence[str], vocabulary: training_data.Vocabulary,
                     config: HeldoutPerplexityConfig = HeldoutPerplexityConfig()) -> dict[str, np.ndarray]:
    """Span-corrupted, padded examples of the texts: `encoder_input_tokens` [N, inputs_length],
    `decoder_input_tokens`, `decoder_target_tokens` [N, targets_length] and `document` [N] (the
    index of each row's text). Deterministic in (texts, vocabulary, config); empty texts add no row.
    """
    texts = list(texts)[:config.max_documents]
    tokens_length, targets_length = config.lengths
    encode = getattr(vocabulary, "encode_batch", None) or (lambda ts: [vocabulary.encode(t) for t in ts])
    examples, owners = [], []
    for index, (text, ids) in enumerate(zip(texts, encode(texts))):
        chunks = span_corruption.corrupted_examples(
            [ids], tokens_length, config.seed, key=span_corruption.text_key(text),
            vocab_size=int(vocabulary.vocab_size), eos_id=int(vocabulary.eos_id),
            noise_density=config.noise_density, mean_noise_span_length=config.mean_noise_span_length)
        examples.extend(chunks)
        owners.extend([index] * len(chunks))
    if not examples:
        raise HeldoutPerplexityError(f"no tokens to score in {len(texts)} texts")
    rows = training_data.pad_examples(examples, config.inputs_length, targets_length)
    return {"encoder_input_tokens": rows["encoder_input_tokens"],
            "decoder_input_tokens": rows["decoder_input_tokens"],
            "decoder_target_tokens": rows["decoder_target_tokens"],
            "document": np.asarray(owners, dtype=np.int32)}


# --- scoring ---------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("config",))
def row_nll(params: t5.Params, config: t5.T5Config, encoder_input_tokens: jax.Array,
            decoder_target_tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row: (sum of -log p(target) over real target tokens, number of them); pad id 0 is ignored.

    The log-probabilities are `t5.target_logprobs` (full output vocabulary, float32), summed in float32.
    """
    weights = (decoder_target_tokens != config.pad_id)
    target_logp = t5.target_logprobs(params, config, encoder_input_tokens,
                                     (encoder_input_tokens != config.pad_id).astype(jnp.int32),
                                     decoder_target_tokens, weights.astype(jnp.int32))  # [B, T]
    return -(target_logp * weights).sum(axis=-1), weights.sum(axis=-1)


class Perplexity(NamedTuple):
    """perplexity = exp(nll_per_token); tokens: target tokens scored; examples: rows; documents: texts
    with at least one token."""

    perplexity: float
    nll_per_token: float
    tokens: int
    examples: int
    documents: int


def score_examples(params: t5.Params, config: t5.T5Config, examples: Mapping[str, np.ndarray],
                   batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(nll sum, target token count) per row of `heldout_examples`, in fixed-shape batches."""
    n = examples["encoder_input_tokens"].shape[0]
    names = ("encoder_input_tokens", "decoder_target_tokens")
    nll, count = np.zeros(n, np.float64), np.zeros(n, np.int64)
    for start in range(0, n, batch_size):
        batch = [examples[k][start:start + batch_size] for k in names]
        rows = batch[0].shape[0]
        if rows < batch_size:  # same shape as every other batch: pad with empty rows
            batch = [np.concatenate([b, np.zeros((batch_size - rows,) + b.shape[1:], b.dtype)]) for b in batch]
        sums, counts = row_nll(params, config, *(jnp.asarray(b) for b in batch))
        nll[start:start + rows] = np.asarray(sums, np.float64)[:rows]
        count[start:start + rows] = np.asarray(counts)[:rows]
    return nll, count


def perplexity_of_examples(params: t5.Params, config: t5.T5Config, examples: Mapping[str, np.ndarray],
                           batch_size: int = 16) -> Perplexity:
    """Perplexity over precomputed `heldout_examples` (reuse them across models and checkpoints)."""
    nll, count = score_examples(params, config, examples, batch_size)
    tokens = int(count.sum())
    if tokens == 0:
        raise HeldoutPerplexityError("no target tokens to score")
    mean = float(nll.sum() / tokens)
    return Perplexity(perplexity=math.exp(mean), nll_per_token=mean, tokens=tokens, examples=int(nll.size),
                      documents=int(np.unique(examples["document"]).size))


def check_vocabulary(config: t5.T5Config, vocabulary: Any) -> None:
    """HeldoutPerplexityError unless the model's output vocabulary covers the tokenizer's (sentinels included)."""
    if int(vocabulary.vocab_size) > config.vocab_size:
        raise HeldoutPerplexityError(f"vocabulary has {vocabulary.vocab_size} ids but the model outputs only "
                              f"{config.vocab_size}: they were not trained together")


def perplexity(params: t5.Params, config: t5.T5Config, vocabulary: Any, texts: Sequence[str],
               eval_config: HeldoutPerplexityConfig = HeldoutPerplexityConfig()) -> Perplexity:
    """Span-corruption perplexity of a T5 on texts (see the module docstring for the definition)."""
    check_vocabulary(config, vocabulary)
    examples = heldout_examples(texts, vocabulary, eval_config)
    return perplexity_of_examples(params, config, examples, eval_config.batch_size)
