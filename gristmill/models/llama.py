"""Llama-family decoder-only transformer (Llama, SmolLM, Qwen2, Mistral) in plain JAX.

One file holds the whole network, written as pure functions over a nested dict of parameters:

    params = {
      "embedder": {"embedding": [V, D]},
      "layers": {                                   # every leaf has a leading layer axis L
        "pre_attention_layer_norm": {"scale": [L, D]},
        "self_attention": {"query": {"kernel": [L, D, H, Dh], "bias": [L, H, Dh]},   # bias optional
                           "key":   {"kernel": [L, D, K, Dh], "bias": [L, K, Dh]},
                           "value": {"kernel": [L, D, K, Dh], "bias": [L, K, Dh]},
                           "out":   {"kernel": [L, H, Dh, D]}},
        "pre_mlp_layer_norm": {"scale": [L, D]},
        "mlp": {"gate": {"kernel": [L, D, F]}, "up": {"kernel": [L, D, F]}, "down": {"kernel": [L, F, D]}},
      },
      "final_norm": {"scale": [D]},
      "lm_head": {"kernel": [D, V]},                # absent when tie_word_embeddings
    }

Axes: B batch, T query positions, S key positions, D hidden, H query heads, K key/value heads,
G = H // K query heads per key/value head, Dh head dim, F MLP width, V vocabulary.

RoPE follows the HF `rotate_half` convention: the head dim is split into two halves and
(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). Checkpoints in the Meta / llama.cpp interleaved
order must be un-permuted before they get here (gguf.py does that for GGUF files).

Padding: `logits` and `last_position_logprobs` take a 0/1 mask. Position ids are the running
count of real tokens (cumsum(mask) - 1) and padded keys are masked out, so left and right padding
give the same numbers for the real tokens. The Ask-LLM scorer uses right padding; the scored
position is the last real token of each row.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gristmill.models import checkpoints as ckpt
from gristmill.models.zoo import LLAMA_MODEL_TYPES

Params = dict[str, Any]

# A large finite negative number instead of -inf, so that a fully masked row gives a uniform
# softmax rather than NaN.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a Llama-family decoder.

    `dtype` is the name of the parameter and activation dtype ("float32", "bfloat16"): the
    inputs of every matmul and of attention. The residual stream, norms, softmax and the output
    logits are always float32 (in bfloat16 this halves the largest P("yes") error against float32,
    from 0.013 to 0.007 on 64 C4 prompts, at no measurable speed cost on CPU).
    `scan_layers` runs the layer stack with `lax.scan` (one compiled layer); False unrolls it
    in Python, which is slower to compile but easier to debug. Both use the same parameters.
    `attention_block` is the query block of the causal attention (see `causal_blocks`; None:
    one block), a speed setting that does not change the numbers beyond float rounding.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    attention_bias: bool = False
    sliding_window: int | None = None
    dtype: str = "float32"
    scan_layers: bool = True
    attention_block: int | None = 128

    def __post_init__(self):
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

    def replace(self, **changes) -> LlamaConfig:
        """A copy with some fields changed (e.g. dtype or scan_layers)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], dtype: Any = "float32") -> LlamaConfig:
        """Build from a HF `config.json` dict of a Llama, Qwen2 or Mistral model.

        Raises ValueError for settings this implementation does not compute (RoPE scaling,
        a non-SiLU activation), rather than silently producing different numbers.
        """
        model_type = config.get("model_type")
        if model_type not in LLAMA_MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not a Llama-family decoder")
        rope_parameters = config.get("rope_parameters") or {}  # transformers 5 moved RoPE settings here
        if config.get("rope_scaling") or rope_parameters.get("rope_type", "default") != "default":
            raise ValueError(f"RoPE scaling {config.get('rope_scaling') or rope_parameters!r} is not supported")
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={config['hidden_act']!r} is not supported (only silu)")
        if config.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported")
        heads = config["num_attention_heads"]
        hidden = config["hidden_size"]
        if model_type == "qwen2" and config.get("use_sliding_window"):
            raise ValueError("Qwen2 use_sliding_window=True (per-layer windows) is not supported")
        sliding = config.get("sliding_window") if model_type == "mistral" else None
        rope_theta = config.get("rope_theta", rope_parameters.get("rope_theta", 10000.0))
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=hidden,
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            rope_theta=float(rope_theta),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            attention_bias=bool(config.get("attention_bias", model_type == "qwen2")),
            sliding_window=sliding,
            dtype=dtype,
        )


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named size: its config and the checkpoint (a zoo name) it is usually loaded from."""

    config: LlamaConfig
    checkpoint: str | None = None


SMOLLM2_135M = LlamaConfig(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
    num_kv_heads=3, head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    max_position_embeddings=8192,
)
TINY = LlamaConfig(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=128,
)
PRESETS: dict[str, Preset] = {
    "smollm2_135m": Preset(SMOLLM2_135M, checkpoint="smollm2-135m-instruct"),
    "tiny": Preset(TINY),
}


# ----------------------------------------------------------------------------------------------
# Blocks.


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32: x / sqrt(mean(x^2) + eps) * scale, cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding, HF rotate_half convention. x: [B, T, N, Dh], positions: [B, T]."""
    assert x.ndim == 4 and positions.shape == x.shape[:2], (x.shape, positions.shape)
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1]))  # [Dh/2]
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq  # [B, T, Dh/2]
    cos = jnp.cos(angles)[:, :, None, :]  # [B, T, 1, Dh/2]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention_bias(mask: jax.Array, positions: jax.Array, sliding_window: int | None) -> jax.Array:
    """[B, 1, T, S] float32 additive bias: 0 where query t may attend key s (causal, key is real,
    inside the window), a large negative number elsewhere. Built once, shared by every layer."""
    assert mask.ndim == 2 and positions.shape == mask.shape, (mask.shape, positions.shape)
    t = mask.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))  # [T, S]
    allowed = causal[None] & mask.astype(bool)[:, None, :]  # [B, T, S]
    if sliding_window is not None:
        allowed &= (positions[:, :, None] - positions[:, None, :]) < sliding_window
    return jnp.where(allowed, 0.0, _MASK_VALUE).astype(jnp.float32)[:, None]


def causal_blocks(length: int, block: int | None) -> list[tuple[int, int]]:
    """Query blocks [(start, stop), ...] of a causal self-attention over `length` positions.

    Block i attends only to keys [0, stop_i), so the masked upper triangle is never computed:
    with 4 blocks the score work is 10/16 of the full square.

    >>> causal_blocks(300, 128), causal_blocks(64, None)
    ([(0, 128), (128, 256), (256, 300)], [(0, 64)])
    """
    step = length if not block else block
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
                          block: int | None = None) -> jax.Array:
    """Causal grouped-query attention. q: [B, T, H, Dh]; k, v: [B, T, K, Dh]; bias: [B, 1, T, T].

    Query head h uses key/value head h // G, as HF's repeat_kv does. Scores and softmax are
    float32; the softmax is normalised after the weighted sum (one division per output element
    instead of one per score). `block` splits the queries into causal blocks (see
    `causal_blocks`); None computes the whole square.
    """
    b, t, h, dh = q.shape
    kv_heads = k.shape[2]
    assert h % kv_heads == 0 and k.shape == v.shape and k.shape[:2] == (b, t), (q.shape, k.shape, v.shape)
    assert bias.shape == (b, 1, t, t), bias.shape
    q = (q * (1.0 / math.sqrt(dh))).astype(q.dtype).reshape(b, t, kv_heads, h // kv_heads, dh)  # [B, T, K, G, Dh]
    values = jnp.transpose(v, (0, 2, 1, 3))  # [B, K, S, Dh]: the layout XLA:CPU's matmul runs fastest
    outs = []
    for start, stop in causal_blocks(t, block):
        # Axes in the order dot_general emits them ([batch, lhs free, rhs free]), so no transposes.
        scores = jnp.einsum("btkgd,bskd->bktgs", q[:, start:stop], k[:, :stop],
                            preferred_element_type=jnp.float32)  # [B, K, Tb, G, Sb]
        scores = scores + bias[:, :, start:stop, None, :stop]
        weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        total = jnp.sum(weights, axis=-1, keepdims=True)  # [B, K, Tb, G, 1]
        out = jnp.einsum("bktgs,bksd->bktgd", weights.astype(v.dtype), values[:, :, :stop],
                         preferred_element_type=jnp.float32)  # [B, K, Tb, G, Dh]
        outs.append((out / total).astype(v.dtype))
    out = jnp.transpose(outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2), (0, 2, 1, 3, 4))
    return out.reshape(b, t, h, dh)


def _matmul(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """einsum accumulated in float32 and cast back to x's dtype (XLA:CPU's fast bf16 kernels need
    a float32 result type; for float32 inputs this is a plain einsum)."""
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _project(x: jax.Array, p: Params) -> jax.Array:
    """x: [B, T, D] @ kernel [D, N, Dh] (+ bias [N, Dh]) -> [B, T, N, Dh]."""
    y = _matmul("btd,dnh->btnh", x, p["kernel"])
    if "bias" in p:
        y = y + p["bias"]
    return y


def _fused_qkv(x: jax.Array, p: Params, config: LlamaConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Query, key and value projections as ONE matmul over the concatenated kernels (one pass over x)."""
    h, k = config.num_heads, config.num_kv_heads
    names = ("query", "key", "value")
    kernel = jnp.concatenate([p[n]["kernel"] for n in names], axis=1)  # [D, H + 2K, Dh]
    y = _matmul("btd,dnh->btnh", x, kernel)  # [B, T, H + 2K, Dh]
    if "bias" in p["query"]:
        y = y + jnp.concatenate([p[n]["bias"] for n in names], axis=0)
    return y[:, :, :h], y[:, :, h:h + k], y[:, :, h + k:]


def self_attention(x: jax.Array, p: Params, positions: jax.Array, bias: jax.Array, config: LlamaConfig) -> jax.Array:
    """Causal GQA self-attention with RoPE on queries and keys. x: [B, T, D] -> [B, T, D]."""
    q, k, v = _fused_qkv(x, p, config)
    q = rope(q, positions, config.rope_theta)  # [B, T, H, Dh]
    k = rope(k, positions, config.rope_theta)  # [B, T, K, Dh]
    out = dot_product_attention(q, k, v, bias, config.attention_block)  # [B, T, H, Dh]
    return _matmul("bthd,hdD->btD", out, p["out"]["kernel"])


def mlp(x: jax.Array, p: Params) -> jax.Array:
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up as one matmul. x: [B, T, D] -> [B, T, D]."""
    width = p["gate"]["kernel"].shape[-1]
    gate_up = _matmul("btd,df->btf", x, jnp.concatenate([p["gate"]["kernel"], p["up"]["kernel"]], axis=-1))
    gate, up = gate_up[..., :width], gate_up[..., width:]
    return _matmul("btf,fd->btd", jax.nn.silu(gate) * up, p["down"]["kernel"])


def decoder_layer(x: jax.Array, p: Params, positions: jax.Array, bias: jax.Array, config: LlamaConfig) -> jax.Array:
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""
    h = rms_norm(x, p["pre_attention_layer_norm"]["scale"], config.rms_norm_eps).astype(config.dtype)
    x = x + self_attention(h, p["self_attention"], positions, bias, config)
    h = rms_norm(x, p["pre_mlp_layer_norm"]["scale"], config.rms_norm_eps).astype(config.dtype)
    return x + mlp(h, p["mlp"])


# ----------------------------------------------------------------------------------------------
# Network.


def hidden_states(params: Params, config: LlamaConfig, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Final-norm hidden states [B, T, D] for token ids [B, T] with a 0/1 mask [B, T]."""
    assert ids.ndim == 2 and mask.shape == ids.shape, (ids.shape, mask.shape)
    if config.sliding_window is not None and ids.shape[1] > config.sliding_window:
        raise ValueError(f"sequence length {ids.shape[1]} exceeds sliding_window={config.sliding_window}")
    mask = mask.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)  # [B, T]
    bias = attention_bias(mask, positions, config.sliding_window)
    x = params["embedder"]["embedding"][ids].astype(jnp.float32)  # [B, T, D]: the float32 residual stream

    def body(x, layer_params):
        return decoder_layer(x, layer_params, positions, bias, config), None

    if config.scan_layers:
        x, _ = jax.lax.scan(body, x, params["layers"])
    else:
        for i in range(config.num_layers):
            x, _ = body(x, jax.tree.map(lambda a, i=i: a[i], params["layers"]))
    return rms_norm(x, params["final_norm"]["scale"], config.rms_norm_eps).astype(config.dtype)


def _head(params: Params, config: LlamaConfig, h: jax.Array) -> jax.Array:
    """Hidden states [..., D] -> float32 logits [..., V] (tied embedding or separate lm_head)."""
    if config.tie_word_embeddings:
        return jnp.einsum("...d,vd->...v", h, params["embedder"]["embedding"], preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", h, params["lm_head"]["kernel"], preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("config",))
def logits(params: Params, config: LlamaConfig, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Next-token logits [B, T, V] (float32) at every position; rows at padded positions are junk."""
    return _head(params, config, hidden_states(params, config, ids, mask))


def last_real_index(mask: jax.Array) -> jax.Array:
    """Index [B] of the last position whose mask is 1 (works for left and right padding)."""
    t = mask.shape[1]
    return t - 1 - jnp.argmax(mask[:, ::-1].astype(jnp.int32), axis=1)


@functools.partial(jax.jit, static_argnames=("config",))
def last_position_logprobs(params: Params, config: LlamaConfig, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Full-vocabulary log-softmax [B, V] of the next token after each row's last real token.

    Only the gathered position goes through the output projection, so the cost of the head is
    B x D x V rather than B x T x D x V.
    """
    h = hidden_states(params, config, ids, mask)  # [B, T, D]
    idx = last_real_index(mask)
    last = jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]  # [B, D]
    return jax.nn.log_softmax(_head(params, config, last), axis=-1)


# ----------------------------------------------------------------------------------------------
# Parameters.


def param_shapes(config: LlamaConfig) -> Params:
    """The parameter tree as shapes (tuples), the single source of truth for init and loaders."""
    L, D, H, K, Dh, F, V = (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
                            config.head_dim, config.intermediate_size, config.vocab_size)
    attn = {
        "query": {"kernel": (L, D, H, Dh)},
        "key": {"kernel": (L, D, K, Dh)},
        "value": {"kernel": (L, D, K, Dh)},
        "out": {"kernel": (L, H, Dh, D)},
    }
    if config.attention_bias:
        attn["query"]["bias"] = (L, H, Dh)
        attn["key"]["bias"] = (L, K, Dh)
        attn["value"]["bias"] = (L, K, Dh)
    shapes = {
        "embedder": {"embedding": (V, D)},
        "layers": {
            "pre_attention_layer_norm": {"scale": (L, D)},
            "self_attention": attn,
            "pre_mlp_layer_norm": {"scale": (L, D)},
            "mlp": {"gate": {"kernel": (L, D, F)}, "up": {"kernel": (L, D, F)}, "down": {"kernel": (L, F, D)}},
        },
        "final_norm": {"scale": (D,)},
    }
    if not config.tie_word_embeddings:
        shapes["lm_head"] = {"kernel": (D, V)}
    return shapes


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def init_params(seed: int, config: LlamaConfig, scale: float = 0.02) -> Params:
    """Random parameters for tests: normal(0, scale) weights and unit norm scales, from a numpy seed
    (host-side, so no per-shape XLA compilation)."""
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return jnp.ones(shape, config.dtype)
        return jnp.asarray(scale * rng.standard_normal(shape, dtype=np.float32), config.dtype)

    return jax.tree_util.tree_map_with_path(leaf, param_shapes(config), is_leaf=_is_shape)


def abstract_params(config: LlamaConfig) -> Params:
    """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating (for loaders and shape tests)."""
    dtype = jnp.dtype(config.dtype)
    return jax.tree.map(lambda shape: jax.ShapeDtypeStruct(shape, dtype), param_shapes(config), is_leaf=_is_shape)


# ----------------------------------------------------------------------------------------------
# HF checkpoint loading (declarative rule table, see checkpoints.apply_rules).


def split_heads_in(num_heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """Hook: torch Linear weight [N*Dh, D] -> kernel [D, N, Dh]."""

    def hook(w: np.ndarray) -> np.ndarray:
        return np.asarray(w).T.reshape(-1, num_heads, head_dim)

    return hook


def split_heads_bias(num_heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """Hook: bias [N*Dh] -> [N, Dh]."""

    def hook(b: np.ndarray) -> np.ndarray:
        return np.asarray(b).reshape(num_heads, head_dim)

    return hook


def split_heads_out(num_heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """Hook: o_proj weight [D, H*Dh] -> kernel [H, Dh, D]."""

    def hook(w: np.ndarray) -> np.ndarray:
        return np.asarray(w).T.reshape(num_heads, head_dim, -1)

    return hook


def hf_rules(config: LlamaConfig) -> list[ckpt.Rule]:
    """The loader table from HF `LlamaForCausalLM`-style tensor names to this module's tree.

    Per-layer tensors (`{i}`) are stacked on a leading layer axis.
    """
    h, k, dh = config.num_heads, config.num_kv_heads, config.head_dim
    pre = "model.layers.{i}."
    attn = pre + "self_attn."
    rules = [
        ckpt.Rule("embedder/embedding", "model.embed_tokens.weight"),
        ckpt.Rule("final_norm/scale", "model.norm.weight"),
        ckpt.Rule("layers/pre_attention_layer_norm/scale", pre + "input_layernorm.weight"),
        ckpt.Rule("layers/pre_mlp_layer_norm/scale", pre + "post_attention_layernorm.weight"),
        ckpt.Rule("layers/self_attention/query/kernel", attn + "q_proj.weight", (split_heads_in(h, dh),)),
        ckpt.Rule("layers/self_attention/key/kernel", attn + "k_proj.weight", (split_heads_in(k, dh),)),
        ckpt.Rule("layers/self_attention/value/kernel", attn + "v_proj.weight", (split_heads_in(k, dh),)),
        ckpt.Rule("layers/self_attention/out/kernel", attn + "o_proj.weight", (split_heads_out(h, dh),)),
        ckpt.Rule("layers/mlp/gate/kernel", pre + "mlp.gate_proj.weight", (ckpt.transpose,)),
        ckpt.Rule("layers/mlp/up/kernel", pre + "mlp.up_proj.weight", (ckpt.transpose,)),
        ckpt.Rule("layers/mlp/down/kernel", pre + "mlp.down_proj.weight", (ckpt.transpose,)),
    ]
    if config.attention_bias:
        rules += [
            ckpt.Rule("layers/self_attention/query/bias", attn + "q_proj.bias", (split_heads_bias(h, dh),)),
            ckpt.Rule("layers/self_attention/key/bias", attn + "k_proj.bias", (split_heads_bias(k, dh),)),
            ckpt.Rule("layers/self_attention/value/bias", attn + "v_proj.bias", (split_heads_bias(k, dh),)),
        ]
    if not config.tie_word_embeddings:
        rules.append(ckpt.Rule("lm_head/kernel", "lm_head.weight", (ckpt.transpose,)))
    return rules


def load_hf(model_dir: str, dtype: Any = jnp.float32) -> tuple[LlamaConfig, Params]:
    """Load a HF Llama / Qwen2 / Mistral checkpoint directory (local or gs://, safetensors only).

    Fails closed (CheckpointError) on missing, unmapped or wrongly shaped tensors.
    """
    raw = ckpt.read_hf_config(model_dir)
    try:
        config = LlamaConfig.from_hf(raw, dtype=dtype)
    except (KeyError, ValueError) as e:
        raise ckpt.CheckpointError(f"{model_dir}/config.json: cannot build a LlamaConfig ({e!r})") from e
    tensors = ckpt.read_safetensors(model_dir)
    aliases = {"lm_head.weight": "model.embed_tokens.weight"} if config.tie_word_embeddings else None
    flat = ckpt.apply_rules(
        tensors, hf_rules(config), config.num_layers, expected=abstract_params(config), aliases=aliases,
        ignore=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",), origin=str(model_dir))
    return config, jax.tree.map(jnp.asarray, flat)


@functools.partial(jax.jit, static_argnames=("config", "chunk"))
def next_token_logprobs(params: Params, config: LlamaConfig, ids: jax.Array, mask: jax.Array,
                        chunk: int = 128) -> jax.Array:
    """log P(ids[:, t + 1] | ids[:, :t + 1]) for t < T - 1: [B, T - 1] float32, for perplexity.

    Entries whose target is padding are junk (weight them by mask[:, 1:]). The output projection
    and log-softmax run over `chunk` positions at a time, so the peak is B x chunk x V floats
    rather than B x T x V (16 x 512 x 49152 floats are 1.6 GB).
    """
    h = hidden_states(params, config, ids, mask)[:, :-1]  # [B, T-1, D]
    targets = ids[:, 1:]
    b, n, d = h.shape
    if n == 0:
        return jnp.zeros((b, 0), jnp.float32)
    c = min(chunk, n)
    pad = -n % c
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, c, d).swapaxes(0, 1)  # [N, B, c, D]
    targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, -1, c).swapaxes(0, 1)  # [N, B, c]

    def one_chunk(args):
        hc, tc = args
        lg = _head(params, config, hc)  # [B, c, V]
        return jnp.take_along_axis(lg, tc[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(lg, axis=-1)

    out = jax.lax.map(one_chunk, (h, targets))  # [N, B, c]
    return out.swapaxes(0, 1).reshape(b, -1)[:, :n]


def to_hf_tensors(params: Params, config: LlamaConfig) -> dict[str, np.ndarray]:
    """Inverse of `load_hf`'s table: HF `LlamaForCausalLM` tensor names -> float32 numpy arrays.

    Exports a model (e.g. SmolLM2 read from GGUF) for transformers, so benchmarks and checks can
    run the reference implementation on exactly these weights. Tied models carry no lm_head.
    """
    flat = {k: np.asarray(v, np.float32) for k, v in ckpt.flatten_tree(params).items()}
    out = {}
    for rule in hf_rules(config):
        value = flat[rule.target]
        if "{i}" not in rule.source:
            out[rule.source] = np.ascontiguousarray(_hf_layout(rule, value))
            continue
        for i in range(config.num_layers):
            out[rule.source.format(i=i)] = np.ascontiguousarray(_hf_layout(rule, value[i]))
    return out


def _hf_layout(rule: ckpt.Rule, w: np.ndarray) -> np.ndarray:
    """One tensor of `hf_rules`' table back in HF's layout (the inverse of the rule's hooks)."""
    if rule.target.endswith(("query/kernel", "key/kernel", "value/kernel")):
        return w.reshape(w.shape[0], -1).T  # [D, N, Dh] -> [N*Dh, D]
    if rule.target.endswith("out/kernel"):
        return w.reshape(-1, w.shape[-1]).T  # [H, Dh, D] -> [D, H*Dh]
    if rule.target.endswith("/bias"):
        return w.reshape(-1)
    if rule.hooks:
        return w.T
    return w


def to_hf_config(config: LlamaConfig) -> dict:
    """A HF `config.json` dict of a `llama` model with `config`'s shapes (`LlamaConfig.from_hf`
    reads it back to the same shapes); Qwen2 biases export as `attention_bias`."""
    if config.sliding_window is not None:
        raise ValueError("sliding-window configs have no plain llama config.json")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
        "rope_theta": config.rope_theta, "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings, "attention_bias": config.attention_bias,
        "mlp_bias": False,
    }
