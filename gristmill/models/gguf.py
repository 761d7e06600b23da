"""Load a llama.cpp GGUF file (e.g. SmolLM2-135M-Instruct) as a Llama config, float params and tokenizer.

Weights: every tensor is dequantised to float32 with `gguf.quants.dequantize` (F32, F16, BF16,
Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and the K-quants), then mapped onto `gristmill.models.llama`'s tree with
a declarative rule table (`checkpoints.apply_rules`, which fails closed on unmapped, missing or
wrongly shaped tensors).

Q/K un-permutation: llama.cpp's `convert_hf_to_gguf.py` (LlamaModel.permute) reorders the rows
of q_proj/k_proj for the `llama` architecture so that its interleaved RoPE (pairs 2i, 2i+1)
computes what HF's rotate_half RoPE (pairs i, i + Dh/2) computes:

    w.reshape(n_head, 2, Dh // 2, D).swapaxes(1, 2).reshape(w.shape)

We undo it (`unpermute_qk`) so the HF-convention RoPE in llama.py applies. The `qwen2`
architecture is written without that permutation (llama.cpp runs it with NEOX RoPE), so it is
loaded as is.

Tokenizer: only byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is supported. It is rebuilt with
the `tokenizers` library from `tokenizer.ggml.tokens` / `merges`, with the pre-tokenizer llama.cpp
uses for `tokenizer.ggml.pre` (llama-vocab.cpp): for `smollm` (and the StarCoder family) that is
"split every digit" (`\\p{N}`) followed by the GPT-2 regex, i.e. HF's
`Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False)])`, which is what
SmolLM2's own tokenizer.json declares. Tokens the file marks CONTROL (type 3, e.g. `<|im_start|>`)
are registered as special tokens so a rendered chat template keeps them whole.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gristmill.models import checkpoints as ckpt
from gristmill.models import llama

GGUF_MAGIC = b"GGUF"
_CONTROL = 3  # llama.cpp token type CONTROL
_USER_DEFINED = 4
# Architectures whose converter permutes Q/K rows (see module docstring).
_ARCHITECTURES = {"llama": True, "qwen2": False}
# tokenizer.ggml.pre -> whether digits are split one by one before the GPT-2 regex (llama-vocab.cpp).
_PRE_TOKENIZERS = {
    "gpt2": False, "mpt": False, "olmo": False, "jais": False,
    "smollm": True, "starcoder": True, "refact": True, "codeshell": True, "command-r": True,
}


def _dequantizable() -> set[str]:
    from gguf import GGMLQuantizationType as Q
    names = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
    return {n for n in names if hasattr(Q, n)}


def open_reader(path: str):
    """A `gguf.GGUFReader` for `path`, or CheckpointError naming the file and what is wrong with it."""
    from gguf import GGUFReader

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ckpt.CheckpointError(f"{path}: GGUF file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ckpt.CheckpointError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/IndexError/KeyError on bad bytes
        size = os.path.getsize(path)
        raise ckpt.CheckpointError(f"{path}: truncated or corrupt GGUF file ({size} bytes): {e}") from e
    size = os.path.getsize(path)
    for t in reader.tensors:
        end = t.data_offset + t.n_bytes
        if end > size or t.data.nbytes != t.n_bytes:
            raise ckpt.CheckpointError(
                f"{path}: truncated GGUF file: tensor {t.name!r} ends at byte {end}, file has {size}")
    return reader


def metadata(reader) -> dict[str, Any]:
    """All key/value fields except the big tokenizer arrays, as plain Python values."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                              "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        out[key] = field.contents()
    return out


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def dequantize(reader, path: str = "gguf") -> dict[str, np.ndarray]:
    """Every tensor of the file as a float32 numpy array in numpy (row-major, HF `[out, in]`) order."""
    from gguf import quants

    allowed = _dequantizable()
    out = {}
    for t in reader.tensors:
        qtype = t.tensor_type.name
        if qtype not in allowed:
            raise ckpt.CheckpointError(
                f"{path}: tensor {t.name!r} has quantisation type {qtype}, which gristmill does not "
                f"dequantise (supported: {', '.join(sorted(allowed))})")
        try:
            x = quants.dequantize(t.data, t.tensor_type)
        except (NotImplementedError, ValueError) as e:
            raise ckpt.CheckpointError(f"{path}: tensor {t.name!r} ({qtype}): cannot dequantise ({e})") from e
        shape = tuple(reversed([int(d) for d in t.shape]))
        out[t.name] = np.asarray(x, dtype=np.float32).reshape(shape)
    return out


def _f32(x) -> float:
    """A float32 metadata value as the decimal it was written from (9.9999997e-06 -> 1e-05)."""
    return float(f"{float(x):.7g}")


def config_from_metadata(reader, path: str = "gguf", dtype: Any = jnp.float32) -> llama.LlamaConfig:
    """LlamaConfig from `<arch>.*` keys; tied head when the file has no `output.weight`."""
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise ckpt.CheckpointError(
            f"{path}: general.architecture={arch!r} is not supported (supported: {sorted(_ARCHITECTURES)})")

    def key(name, default=None, required=True):
        value = _field(reader, f"{arch}.{name}", default)
        if value is None and required:
            raise ckpt.CheckpointError(f"{path}: metadata key {arch}.{name} is missing")
        return value

    scaling = key("rope.scaling.type", "none", required=False)
    if scaling not in ("none", None):
        raise ckpt.CheckpointError(f"{path}: {arch}.rope.scaling.type={scaling!r} is not supported")
    names = {t.name for t in reader.tensors}
    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = key("vocab_size", None, required=False) or (len(tokens) if tokens is not None else None)
    if vocab is None:
        raise ckpt.CheckpointError(f"{path}: neither {arch}.vocab_size nor tokenizer.ggml.tokens is present")
    return llama.LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv", heads)),
        head_dim=int(key("attention.key_length", None, required=False) or key("rope.dimension_count", hidden // heads)),
        rope_theta=_f32(key("rope.freq_base", 10000.0)),
        rms_norm_eps=_f32(key("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(key("context_length", 2048)),
        attention_bias="blk.0.attn_q.bias" in names,
        dtype=dtype,
    )


def unpermute_qk(n_head: int) -> ckpt.Hook:
    """Hook: undo llama.cpp's Q/K row permutation of a [n_head*Dh, D] weight (see module docstring)."""

    def hook(w: np.ndarray) -> np.ndarray:
        w = np.asarray(w)
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    return hook


def gguf_rules(config: llama.LlamaConfig, permuted: bool) -> list[ckpt.Rule]:
    """Loader table from llama.cpp tensor names to llama.py's tree (layers stacked)."""
    h, k, dh = config.num_heads, config.num_kv_heads, config.head_dim
    q_hooks = (unpermute_qk(h),) if permuted else ()
    k_hooks = (unpermute_qk(k),) if permuted else ()
    blk = "blk.{i}."
    rules = [
        ckpt.Rule("embedder/embedding", "token_embd.weight"),
        ckpt.Rule("final_norm/scale", "output_norm.weight"),
        ckpt.Rule("layers/pre_attention_layer_norm/scale", blk + "attn_norm.weight"),
        ckpt.Rule("layers/pre_mlp_layer_norm/scale", blk + "ffn_norm.weight"),
        ckpt.Rule("layers/self_attention/query/kernel", blk + "attn_q.weight",
                  q_hooks + (llama.split_heads_in(h, dh),)),
        ckpt.Rule("layers/self_attention/key/kernel", blk + "attn_k.weight", k_hooks + (llama.split_heads_in(k, dh),)),
        ckpt.Rule("layers/self_attention/value/kernel", blk + "attn_v.weight", (llama.split_heads_in(k, dh),)),
        ckpt.Rule("layers/self_attention/out/kernel", blk + "attn_output.weight", (llama.split_heads_out(h, dh),)),
        ckpt.Rule("layers/mlp/gate/kernel", blk + "ffn_gate.weight", (ckpt.transpose,)),
        ckpt.Rule("layers/mlp/up/kernel", blk + "ffn_up.weight", (ckpt.transpose,)),
        ckpt.Rule("layers/mlp/down/kernel", blk + "ffn_down.weight", (ckpt.transpose,)),
    ]
    if config.attention_bias:
        if permuted:  # llama.cpp has no defined bias permutation we could verify; refuse rather than guess
            raise ckpt.CheckpointError("attention biases in a permuted (llama-architecture) GGUF are not supported")
        rules += [
            ckpt.Rule("layers/self_attention/query/bias", blk + "attn_q.bias", (llama.split_heads_bias(h, dh),)),
            ckpt.Rule("layers/self_attention/key/bias", blk + "attn_k.bias", (llama.split_heads_bias(k, dh),)),
            ckpt.Rule("layers/self_attention/value/bias", blk + "attn_v.bias", (llama.split_heads_bias(k, dh),)),
        ]
    if not config.tie_word_embeddings:
        rules.append(ckpt.Rule("lm_head/kernel", "output.weight", (ckpt.transpose,)))
    return rules


def build_hf_tokenizer(reader, path: str = "gguf"):
    """A `tokenizers.Tokenizer` (byte-level BPE) equivalent to llama.cpp's for this file."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ckpt.CheckpointError(
            f"{path}: tokenizer.ggml.model={kind!r} is not supported (only byte-level BPE 'gpt2')")
    pre = _field(reader, "tokenizer.ggml.pre", "gpt2")
    if pre not in _PRE_TOKENIZERS:
        raise ckpt.CheckpointError(
            f"{path}: tokenizer.ggml.pre={pre!r} is not supported (supported: {sorted(_PRE_TOKENIZERS)})")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = _field(reader, "tokenizer.ggml.merges")
    if merges is None:
        raise ckpt.CheckpointError(f"{path}: byte-level BPE without tokenizer.ggml.merges")
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ckpt.CheckpointError(f"{path}: tokenizer.ggml.tokens has duplicate entries")
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if _PRE_TOKENIZERS[pre]:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == _CONTROL]
    added = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(added)
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ckpt.CheckpointError(f"{path}: tokenizer vocabulary grew while adding special tokens")
    return tok


def load_tokenizer(reader, path: str = "gguf", name: str | None = None):
    """gristmill `Tokenizer` (byte-level BPE, special ids, chat template) from the GGUF's tokenizer.* keys."""
    from gristmill.models.tokenizers import Tokenizer

    hf = build_hf_tokenizer(reader, path)
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    pad = _field(reader, "tokenizer.ggml.padding_token_id", eos)
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    return Tokenizer.from_hf_tokenizer(
        hf, pad_id=None if pad is None else int(pad), eos_id=None if eos is None else int(eos),
        bos_id=None if bos is None else int(bos), chat_template=_field(reader, "tokenizer.chat_template"),
        name=name or os.path.splitext(os.path.basename(path))[0])


def load_params(reader, config: llama.LlamaConfig, path: str = "gguf") -> llama.Params:
    """Dequantised, un-permuted parameters for `config` (dtype config.dtype), failing closed."""
    arch = _field(reader, "general.architecture")
    tensors = dequantize(reader, path)
    flat = ckpt.apply_rules(tensors, gguf_rules(config, permuted=_ARCHITECTURES[arch]), config.num_layers,
                            expected=llama.abstract_params(config),
                            origin=path)
    return jax.tree.map(jnp.asarray, flat)


def load_gguf(path: str, dtype: Any = jnp.float32):
    """(LlamaConfig, params, Tokenizer) from a local GGUF file."""
    path = os.fspath(path)
    reader = open_reader(path)
    config = config_from_metadata(reader, path, dtype)
    params = load_params(reader, config, path)
    return config, params, load_tokenizer(reader, path)
