"""T5 v1.1 / FLAN-T5 encoder-decoder in Flax linen, with an HF-layout checkpoint loader.

The network follows T5X's ``examples/t5/network.py`` (names, T5 initialisation, scanned layers)
and reproduces Hugging Face ``T5ForConditionalGeneration`` numerically (verified against
fixtures recorded with transformers, ``tests/test_t5.py``):

* RMSNorm without mean subtraction or bias (``T5LayerNorm``), pre-norm residual blocks;
* attention logits are NOT scaled by ``1/sqrt(d_kv)``: T5 folds that into the query init;
* one bucketed relative-position bias per stack (HF keeps it in block 0), shared by all layers:
  bidirectional in the encoder, causal in the decoder; cross-attention has none;
* gated-GELU MLP (``wi_0``, ``wi_1``, ``wo``; tanh-approximate GELU = HF ``gelu_new``) for v1.1,
  ReLU MLP (``wi``, ``wo``) for T5 1.0 configs;
* optional full attention masks (:class:`T5` keyword arguments) replace the padding masks, e.g.
  segment-aware masks (:func:`encoder_self_mask`, ...) for packed training rows;
* untied ``lm_head`` without rescaling (v1.1), or tied embeddings with the decoder output scaled
  by ``d_model**-0.5`` (T5 1.0).

Initialisation follows T5X (so the module also serves pre-training): token embedding N(0, 1);
attention query N(0, (d_model*d_kv)^-1) (the folded 1/sqrt(d_kv)), key/value N(0, d_model^-1),
output N(0, (heads*d_kv)^-1); MLP and untied logits kernels truncated-normal with variance
1/fan_in; relative-position table uniform variance-scaling over fan_avg; norm scales 1.

The module only computes activations and logits (CONTRIBUTING.md style rule 1). Public functions take
``params`` (the tree under flax's ``"params"`` collection) explicitly and are jitted with the
frozen :class:`T5Config` static. Parameters are float32; ``config.dtype`` picks the compute dtype.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gristmill.models import checkpoints
from gristmill.models.checkpoints import CheckpointError, Rule, transpose

Params = Mapping[str, Any]

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
}
_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture and numerics of one T5; hashable so jitted functions take it as a static arg.

    ``feed_forward_proj`` uses HF's spelling: ``"gated-gelu"`` (v1.1, FLAN-T5), ``"relu"`` (T5 1.0),
    or ``"[gated-]{relu,gelu,gelu_new,silu}"``. ``dtype`` is the compute dtype (params stay
    float32). ``scan_layers`` stacks each stack's layers on a leading axis (production); False
    unrolls them as ``layers_{i}`` (debugging). ``remat_policy``: ``"none"``, ``"full"``,
    ``"dots"`` or ``"dots_with_no_batch_dims"``. ``attention_impl``: ``"xla"`` (any device) or
    ``"cudnn"`` (GPU: fused attention with the position bias, used where dropout is off).
    """
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_heads: int = 6
    num_layers: int = 8
    num_decoder_layers: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "xla"
    decoder_start_token_id: int = 0
    pad_id: int = 0
    eos_id: int = 1

    def __post_init__(self):
        _ = self.activation  # validates feed_forward_proj
        jnp.dtype(self.dtype)
        if self.attention_impl not in ("xla", "cudnn"):
            raise ValueError(f"unknown attention_impl {self.attention_impl!r}; choose xla or cudnn")
        if self.remat_policy != "none" and self.remat_policy not in _REMAT_POLICIES:
            raise ValueError(f"unknown remat_policy {self.remat_policy!r}; "
                             f"choose none or one of {sorted(_REMAT_POLICIES)}")

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> Callable[[jax.Array], jax.Array]:
        name = self.feed_forward_proj.removeprefix("gated-")
        if self.feed_forward_proj == "gated-gelu":
            name = "gelu_new"  # HF maps gated-gelu to the tanh approximation
        if name not in _ACTIVATIONS:
            raise ValueError(f"unsupported feed_forward_proj {self.feed_forward_proj!r}")
        return _ACTIVATIONS[name]

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> T5Config:
        """A copy with some fields changed, e.g. ``cfg.replace(dtype="bfloat16")``."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **overrides) -> T5Config:
        """Builds a config from a HF ``config.json`` dict (T5 v1.1, FLAN-T5, T5 1.0, mT5)."""
        model_type = config.get("model_type", "t5")
        if model_type not in ("t5", "mt5"):
            raise CheckpointError(f"config.json: model_type {model_type!r} is not a T5 (t5, mt5)")
        num_layers = config["num_layers"]
        fields = dict(
            vocab_size=config["vocab_size"],
            d_model=config["d_model"],
            d_kv=config["d_kv"],
            d_ff=config["d_ff"],
            num_heads=config["num_heads"],
            num_layers=num_layers,
            num_decoder_layers=config.get("num_decoder_layers") or num_layers,
            relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
            dropout_rate=config.get("dropout_rate", 0.1),
            layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6),
            feed_forward_proj=config.get("feed_forward_proj", "relu"),
            tie_word_embeddings=config.get("tie_word_embeddings", True),
            decoder_start_token_id=config.get("decoder_start_token_id", 0) or 0,
            pad_id=config.get("pad_token_id", 0),
            eos_id=config.get("eos_token_id", 1),
        )
        fields.update(overrides)
        try:
            return cls(**fields)
        except ValueError as e:
            raise CheckpointError(f"config.json: {e}") from e


def _preset(**kw) -> T5Config:
    return T5Config(vocab_size=32128, d_kv=64, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, **kw)


# T5 v1.1 sizes (google/t5-v1_1-*); FLAN-T5 (google/flan-t5-*) has the same shapes.
PRESETS: dict[str, T5Config] = {
    "t5_1_1_small": _preset(d_model=512, d_ff=1024, num_heads=6, num_layers=8, num_decoder_layers=8),
    "t5_1_1_base": _preset(d_model=768, d_ff=2048, num_heads=12, num_layers=12, num_decoder_layers=12),
    "t5_1_1_large": _preset(d_model=1024, d_ff=2816, num_heads=16, num_layers=24, num_decoder_layers=24),
    "t5_1_1_xl": _preset(d_model=2048, d_ff=5120, num_heads=32, num_layers=24, num_decoder_layers=24),
    "t5_1_1_xxl": _preset(d_model=4096, d_ff=10240, num_heads=64, num_layers=24, num_decoder_layers=24),
    # Tests only: inner dim (num_heads * d_kv = 64) differs from d_model to catch transposes.
    "tiny": T5Config(vocab_size=512, d_model=48, d_kv=16, d_ff=96, num_heads=4, num_layers=2,
                     num_decoder_layers=2, relative_attention_num_buckets=16,
                     relative_attention_max_distance=24, feed_forward_proj="gated-gelu"),
}
# The public Hugging Face checkpoint each size was released as (same shapes, FLAN-tuned weights).
CHECKPOINTS: dict[str, str] = {
    "flan_t5_small": "google/flan-t5-small", "flan_t5_base": "google/flan-t5-base",
    "flan_t5_large": "google/flan-t5-large", "flan_t5_xl": "google/flan-t5-xl",
    "flan_t5_xxl": "google/flan-t5-xxl",
}


def preset(name: str, **overrides) -> T5Config:
    """A named size, ``t5_1_1_{small,base,large,xl,xxl}`` (``flan_t5_*`` are aliases) or ``tiny``."""
    key = name.replace("-", "_").replace("flan_t5_", "t5_1_1_")
    if key not in PRESETS:
        raise KeyError(f"unknown T5 preset {name!r}; known: {sorted(PRESETS)} and flan_t5_*")
    return PRESETS[key].replace(**overrides)


# ----------------------------------------------------------------------------- pure functions


def relative_position_bucket(relative_position: np.ndarray, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
    """T5's bucket of ``memory_position - query_position`` (Mesh TF / HF ``_relative_position_bucket``).

    Half the buckets are exact small distances, the rest logarithmic up to ``max_distance``;
    bidirectional splits the buckets between the two directions, causal maps the future to 0.
    Computed in numpy at trace time (shapes are static) with the reference's float32 maths.
    """
    rp = np.asarray(relative_position, dtype=np.int64)
    buckets = np.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        buckets += (rp > 0).astype(np.int64) * num_buckets
        rp = np.abs(rp)
    else:
        rp = -np.minimum(rp, 0)
    max_exact = num_buckets // 2
    is_small = rp < max_exact
    with np.errstate(divide="ignore"):
        scaled = (np.log(np.maximum(rp, 1).astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
    large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
    return buckets + np.where(is_small, rp, large)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: Optional[jax.Array],
                          mask: jax.Array, dropout: Callable[[jax.Array], jax.Array],
                          implementation: str = "xla") -> jax.Array:
    """Softmax attention as T5 does it: no 1/sqrt(d) scaling, additive position bias, fp32 softmax.

    q [B, Q, H, K], k and v [B, S, H, K], bias [1|B, H, Q, S] or None, mask bool broadcastable
    to [B, H, Q, S] (True = may attend). Returns [B, Q, H, K] in q's dtype.

    ``implementation="xla"``: scores and softmax in float32, the softmax normalised after the
    weighted sum (dropout of the unnormalised weights then division equals dropout of the
    softmax), values laid out [B, H, S, K] first (the layout XLA:CPU's matmul runs fastest).
    ``"cudnn"``: one fused kernel (``jax.nn.dot_product_attention``, GPU only, bias and mask
    folded into one additive bias, float32 softmax statistics); no dropout, so callers use it
    only when deterministic.
    """
    assert q.ndim == k.ndim == v.ndim == 4, (q.shape, k.shape, v.shape)
    assert q.shape[0] == k.shape[0] and q.shape[2:] == k.shape[2:] and k.shape == v.shape, (q.shape, k.shape)
    assert mask.ndim == 4, mask.shape
    if implementation == "cudnn":
        return fused_attention(q, k, v, bias, mask, "cudnn")
    if implementation != "xla":
        raise ValueError(f"unknown attention implementation {implementation!r} (xla, cudnn)")
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)  # [B, H, Q, S]
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    total = jnp.sum(weights, axis=-1, keepdims=True)  # [B, H, Q, 1]
    weights = dropout(weights.astype(q.dtype))
    out = jnp.einsum("bhqs,bhsk->bhqk", weights, jnp.transpose(v, (0, 2, 1, 3)),
                     preferred_element_type=jnp.float32) / total
    return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: Optional[jax.Array], mask: jax.Array,
                    backend: str = "cudnn") -> jax.Array:
    """T5 attention through ``jax.nn.dot_product_attention`` (unscaled logits, the position bias
    in q's dtype, the bool mask); ``backend="cudnn"`` is the fused GPU kernel, ``"xla"`` the same
    call on any device (tests check the argument mapping with it)."""
    fused_bias = None if bias is None else bias.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=fused_bias, mask=mask, scale=1.0, implementation=backend)


def encoder_self_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, L] segment ids (0 = padding) -> bool [B, 1, L, L]: same segment, key not padding.

    Segment-aware masks keep the examples of a packed row apart (T5X packing); with one segment
    per row (ids ``tokens > 0``) they allow what the padding masks of :class:`T5` allow.
    """
    assert segment_ids.ndim == 2, segment_ids.shape
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, Q, K]
    return (same & (segment_ids[:, None, :] > 0))[:, None]


def decoder_self_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, T] decoder segment ids -> bool [B, 1, T, T]: causal, same segment, key not padding."""
    assert segment_ids.ndim == 2, segment_ids.shape
    length = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))[None]  # [1, T, T]
    return (encoder_self_mask(segment_ids)[:, 0] & causal)[:, None]


def cross_mask(decoder_segment_ids: jax.Array, encoder_segment_ids: jax.Array) -> jax.Array:
    """[B, T] and [B, L] segment ids -> bool [B, 1, T, L]: decoder position sees its own example's encoder."""
    assert decoder_segment_ids.ndim == encoder_segment_ids.ndim == 2, (decoder_segment_ids.shape,
                                                                       encoder_segment_ids.shape)
    assert decoder_segment_ids.shape[0] == encoder_segment_ids.shape[0]
    same = decoder_segment_ids[:, :, None] == encoder_segment_ids[:, None, :]  # [B, T, L]
    return (same & (encoder_segment_ids[:, None, :] > 0))[:, None]


# ----------------------------------------------------------------------------- modules

_f32 = jnp.float32


class RMSNorm(nn.Module):
    """T5LayerNorm: ``x / rms(x) * scale``; no mean subtraction, no bias; statistics in float32."""
    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), _f32)
        x32 = x.astype(_f32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.layer_norm_epsilon)
        return (x32 * scale).astype(self.config.compute_dtype)


class RelativePositionBias(nn.Module):
    """Bucketed relative-position bias ``[1, H, Q, S]``; ``rel_embedding`` is ``[buckets, H]`` (HF layout)."""
    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, q_len: int, s_len: int) -> jax.Array:
        cfg = self.config
        table = self.param("rel_embedding", nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                           (cfg.relative_attention_num_buckets, cfg.num_heads), _f32)
        rel = np.arange(s_len)[None, :] - np.arange(q_len)[:, None]  # memory - query, [Q, S]
        buckets = relative_position_bucket(rel, bidirectional=self.bidirectional,
                                           num_buckets=cfg.relative_attention_num_buckets,
                                           max_distance=cfg.relative_attention_max_distance)
        bias = jnp.take(table, jnp.asarray(buckets, jnp.int32), axis=0)  # [Q, S, H]
        return jnp.transpose(bias, (2, 0, 1))[None]


class _Dense(nn.Dense):
    """``nn.Dense`` accumulating in float32 and returning the compute dtype: XLA:CPU's fast
    bfloat16 matmul needs a float32 result type (for float32 nothing changes)."""
    dot_general: Callable = functools.partial(jax.lax.dot_general, preferred_element_type=_f32)

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        return super().__call__(inputs).astype(self.dtype or inputs.dtype)


class Attention(nn.Module):
    """Multi-head attention with T5X init: q ~ N(0, (d_model*d_kv)^-1), k,v ~ N(0, d_model^-1),
    o ~ N(0, (H*d_kv)^-1). Kernels are ``[in, out]`` with heads flattened (``H*d_kv``)."""
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, memory: jax.Array, bias: Optional[jax.Array], mask: jax.Array) -> jax.Array:
        cfg = self.config
        inner, normal = cfg.num_heads * cfg.d_kv, nn.initializers.normal
        dense = functools.partial(_Dense, use_bias=False, dtype=cfg.compute_dtype, param_dtype=_f32)

        def split(t: jax.Array) -> jax.Array:  # [B, L, H*K] -> [B, L, H, K]
            return t.reshape(t.shape[:2] + (cfg.num_heads, cfg.d_kv))

        q = split(dense(inner, kernel_init=normal((cfg.d_model * cfg.d_kv) ** -0.5), name="query")(x))
        k = split(dense(inner, kernel_init=normal(cfg.d_model ** -0.5), name="key")(memory))
        v = split(dense(inner, kernel_init=normal(cfg.d_model ** -0.5), name="value")(memory))
        dropout = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
        fused = cfg.attention_impl if self.deterministic or cfg.dropout_rate == 0 else "xla"
        y = dot_product_attention(q, k, v, bias, mask, dropout, fused)  # [B, Q, H, K]
        y = y.reshape(y.shape[:2] + (inner,))
        return dense(cfg.d_model, kernel_init=normal(inner ** -0.5), name="out")(y)


class Mlp(nn.Module):
    """Gated (``wi_0``, ``wi_1``) or plain (``wi``) feed-forward block, then ``wo``."""
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        dense = functools.partial(_Dense, use_bias=False, dtype=cfg.compute_dtype, param_dtype=_f32,
                                  kernel_init=init)
        if cfg.is_gated:
            h = cfg.activation(dense(cfg.d_ff, name="wi_0")(x)) * dense(cfg.d_ff, name="wi_1")(x)
        else:
            h = cfg.activation(dense(cfg.d_ff, name="wi")(x))
        h = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)(h)
        return dense(cfg.d_model, name="wo")(h)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + MLP; ``(x, None)`` out so it can be scanned."""
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array):
        cfg, det = self.config, self.deterministic
        drop = nn.Dropout(cfg.dropout_rate, deterministic=det)
        h = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
        x = x + drop(Attention(cfg, det, name="attention")(h, h, bias, mask))
        h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
        x = x + drop(Mlp(cfg, det, name="mlp")(h))
        return x, None


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention to the encoder, MLP; scannable."""
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, encoded: jax.Array, self_bias: jax.Array, self_mask: jax.Array,
                 cross_mask: jax.Array):
        cfg, det = self.config, self.deterministic
        drop = nn.Dropout(cfg.dropout_rate, deterministic=det)
        h = RMSNorm(cfg, name="pre_self_attention_layer_norm")(x)
        x = x + drop(Attention(cfg, det, name="self_attention")(h, h, self_bias, self_mask))
        h = RMSNorm(cfg, name="pre_cross_attention_layer_norm")(x)
        x = x + drop(Attention(cfg, det, name="encoder_decoder_attention")(h, encoded, None, cross_mask))
        h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
        x = x + drop(Mlp(cfg, det, name="mlp")(h))
        return x, None


def _run_layers(layer_cls, cfg: T5Config, n: int, deterministic: bool, x: jax.Array, *shared: jax.Array) -> jax.Array:
    """Applies ``n`` layers, scanned (params ``layers/...`` with a leading layer axis) or unrolled (``layers_{i}``)."""
    if cfg.remat_policy != "none":
        layer_cls = nn.remat(layer_cls, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        scanned = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                          in_axes=(nn.broadcast,) * len(shared), length=n)
        return scanned(cfg, deterministic, name="layers")(x, *shared)[0]
    for i in range(n):
        x = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, *shared)[0]
    return x


class Encoder(nn.Module):
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, embedded: jax.Array, mask: jax.Array, *,
                 attention_mask: Optional[jax.Array] = None) -> jax.Array:
        """embedded [B, L, D], mask [B, L] (1 = token) -> [B, L, D].

        ``attention_mask`` (bool [B, 1, L, L], True = may attend), when given, replaces the
        key-padding mask built from ``mask`` (packed rows: see :func:`encoder_self_mask`).
        """
        cfg = self.config
        length = embedded.shape[1]
        bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(length, length)
        if attention_mask is None:
            attention_mask = mask.astype(bool)[:, None, None, :]  # [B, 1, 1, L]: keys only, as HF
        drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
        x = _run_layers(EncoderLayer, cfg, cfg.num_layers, self.deterministic, drop(embedded), bias, attention_mask)
        return drop(RMSNorm(cfg, name="encoder_norm")(x))


class Decoder(nn.Module):
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, embedded: jax.Array, encoded: jax.Array, encoder_mask: jax.Array,
                 decoder_mask: jax.Array, *, self_attention_mask: Optional[jax.Array] = None,
                 cross_attention_mask: Optional[jax.Array] = None) -> jax.Array:
        """embedded [B, T, D], encoded [B, L, D], masks [B, L] / [B, T] -> normed output [B, T, D].

        ``self_attention_mask`` (bool [B, 1, T, T]) and ``cross_attention_mask`` (bool [B, 1, T, L]),
        when given, replace the masks built from ``decoder_mask`` / ``encoder_mask``.
        """
        cfg = self.config
        length = embedded.shape[1]
        bias = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")(length, length)
        if self_attention_mask is None:
            causal = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, T, T]
            self_attention_mask = causal & decoder_mask.astype(bool)[:, None, None, :]  # [B, 1, T, T]
        if cross_attention_mask is None:
            cross_attention_mask = encoder_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, L]
        drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
        x = _run_layers(DecoderLayer, cfg, cfg.num_decoder_layers, self.deterministic, drop(embedded),
                        encoded, bias, self_attention_mask, cross_attention_mask)
        return drop(RMSNorm(cfg, name="decoder_norm")(x))


class T5(nn.Module):
    """The encoder-decoder network: token ids in, activations or float32 logits out."""
    config: T5Config
    deterministic: bool = True

    def setup(self):
        cfg = self.config
        self.token_embedder = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nn.initializers.normal(1.0),
                                       dtype=cfg.compute_dtype, param_dtype=_f32)
        self.encoder = Encoder(cfg, self.deterministic)
        self.decoder = Decoder(cfg, self.deterministic)
        if not cfg.tie_word_embeddings:
            self.logits_dense = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=_f32,
                kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"))

    def encode(self, input_ids: jax.Array, mask: jax.Array, *,
               attention_mask: Optional[jax.Array] = None) -> jax.Array:
        return self.encoder(self.token_embedder(input_ids), mask, attention_mask=attention_mask)

    def decode(self, encoded: jax.Array, encoder_mask: jax.Array, decoder_input_ids: jax.Array,
               decoder_mask: jax.Array, *, self_attention_mask: Optional[jax.Array] = None,
               cross_attention_mask: Optional[jax.Array] = None) -> jax.Array:
        y = self.decoder(self.token_embedder(decoder_input_ids), encoded, encoder_mask, decoder_mask,
                         self_attention_mask=self_attention_mask, cross_attention_mask=cross_attention_mask)
        if self.config.tie_word_embeddings:
            y = y * (self.config.d_model ** -0.5)  # T5 1.0 rescales before the shared embedding
            return self.token_embedder.attend(y).astype(_f32)
        return self.logits_dense(y).astype(_f32)

    def __call__(self, encoder_ids, encoder_mask, decoder_input_ids, decoder_mask, *,
                 encoder_attention_mask=None, decoder_self_attention_mask=None, cross_attention_mask=None):
        """Token ids and ``[B, L]`` / ``[B, T]`` padding masks -> float32 logits [B, T, V].

        The optional full bool masks (``[B, 1, L, L]``, ``[B, 1, T, T]``, ``[B, 1, T, L]``; True =
        may attend) replace the ones built from the padding masks, e.g. segment-aware masks for
        packed rows (:func:`encoder_self_mask`, :func:`decoder_self_mask`, :func:`cross_mask`).
        """
        encoded = self.encode(encoder_ids, encoder_mask, attention_mask=encoder_attention_mask)
        return self.decode(encoded, encoder_mask, decoder_input_ids, decoder_mask,
                           self_attention_mask=decoder_self_attention_mask, cross_attention_mask=cross_attention_mask)


# ----------------------------------------------------------------------------- public functions


@functools.partial(jax.jit, static_argnames=("config",))
def init_params(config: T5Config, rng: jax.Array) -> Params:
    """Fresh T5-initialised float32 parameters (the tree under flax's ``"params"``)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return T5(config).init({"params": rng}, ids, ids, ids, ids)["params"]


def param_shapes(config: T5Config) -> Params:
    """``jax.ShapeDtypeStruct`` tree of the parameters, without allocating (works for XXL on a laptop)."""
    return jax.eval_shape(init_params, config, jax.random.key(0))


def count_params(config: T5Config) -> int:
    """Number of parameters of ``config``, from shapes alone."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(param_shapes(config)))


@functools.partial(jax.jit, static_argnames=("config",))
def encode(params: Params, config: T5Config, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Encoder output [B, L, D] (float32) of ``input_ids`` [B, L] with ``mask`` [B, L] (1 = token)."""
    return T5(config).apply({"params": params}, input_ids, mask, method=T5.encode).astype(_f32)


@functools.partial(jax.jit, static_argnames=("config",))
def first_step_logprobs(params: Params, config: T5Config, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Full-vocabulary log-softmax [B, V] of the first decoder token, given the encoder input.

    The Ask-LLM score: encode the prompt, run the decoder ONE position from
    ``decoder_start_token_id`` and read log P(token | prompt) for every token.
    """
    model = T5(config)
    batch = input_ids.shape[0]
    start = jnp.full((batch, 1), config.decoder_start_token_id, jnp.int32)
    encoded = model.apply({"params": params}, input_ids, mask, method=T5.encode)
    logits = model.apply({"params": params}, encoded, mask, start, jnp.ones((batch, 1), jnp.int32),
                         method=T5.decode)
    return jax.nn.log_softmax(logits[:, 0, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("config", "deterministic"))
def logits(params: Params, config: T5Config, encoder_ids: jax.Array, encoder_mask: jax.Array,
           decoder_input_ids: jax.Array, decoder_mask: jax.Array, *, deterministic: bool = True,
           rngs: Optional[Mapping[str, jax.Array]] = None) -> jax.Array:
    """Teacher-forced float32 logits [B, T, V] (training and full scoring).

    ``decoder_input_ids`` are the targets shifted right with ``decoder_start_token_id`` first.
    With ``deterministic=False`` dropout is on and ``rngs={"dropout": key}`` is required.
    """
    return T5(config, deterministic).apply({"params": params}, encoder_ids, encoder_mask, decoder_input_ids,
                                           decoder_mask, rngs=rngs)


@functools.partial(jax.jit, static_argnames=("config",))
def target_logprobs(params: Params, config: T5Config, encoder_ids: jax.Array, encoder_mask: jax.Array,
                    targets: jax.Array, target_mask: jax.Array) -> jax.Array:
    """log P(targets[:, t] | encoder input, targets[:, :t]), [B, T] float32: the one T5 scoring path.

    Teacher forcing: the decoder reads the targets shifted right behind ``decoder_start_token_id``;
    masks are 1 on real tokens. The log-probability is ``logit[target] - logsumexp(logits)``, the
    same expression as the training loss and `llama.next_token_logprobs`. Entries where
    ``target_mask`` is 0 are junk: weight them out. Used by the perplexity scorer and held-out
    perplexity.
    """
    start = jnp.full((targets.shape[0], 1), config.decoder_start_token_id, targets.dtype)
    decoder_inputs = jnp.concatenate([start, targets[:, :-1]], axis=1)
    lg = logits(params, config, encoder_ids, encoder_mask, decoder_inputs, target_mask)  # [B, T, V]
    return jnp.take_along_axis(lg, targets[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(lg, axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def mean_pooled_encoding(params: Params, config: T5Config, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of the encoder outputs over real tokens, [B, D] float32 (Sentence-T5's pooling)."""
    encoded = T5(config).apply({"params": params}, input_ids, mask, method=T5.encode).astype(_f32)
    m = mask.astype(_f32)[..., None]
    return (encoded * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


# ----------------------------------------------------------------------------- HF checkpoint loading


def _attention_rules(target: str, source: str, layers: str) -> list[Rule]:
    return [Rule(f"{target}/{t}/kernel", f"{source}.{s}.weight", (transpose,), layers)
            for t, s in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))]


def _mlp_rules(config: T5Config, target: str, source: str, layers: str) -> list[Rule]:
    names = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
    return [Rule(f"{target}/{n}/kernel", f"{source}.{n}.weight", (transpose,), layers) for n in names]


def hf_rules(config: T5Config) -> list[Rule]:
    """Loader table: our parameter path <- HF ``T5ForConditionalGeneration`` tensor name.

    Torch ``Linear`` weights are ``[out, in]`` and get transposed; per-layer tensors are stacked
    when ``config.scan_layers``.
    """
    layer = "layers" if config.scan_layers else "layers_{i}"
    enc, dec = f"encoder/{layer}", f"decoder/{layer}"
    eb, db = "encoder.block.{i}.layer", "decoder.block.{i}.layer"
    rules = [
        Rule("token_embedder/embedding", "shared.weight"),
        Rule("encoder/relpos_bias/rel_embedding",
             "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        Rule(f"{enc}/pre_attention_layer_norm/scale", f"{eb}.0.layer_norm.weight", (), "encoder"),
        *_attention_rules(f"{enc}/attention", f"{eb}.0.SelfAttention", "encoder"),
        Rule(f"{enc}/pre_mlp_layer_norm/scale", f"{eb}.1.layer_norm.weight", (), "encoder"),
        *_mlp_rules(config, f"{enc}/mlp", f"{eb}.1.DenseReluDense", "encoder"),
        Rule("encoder/encoder_norm/scale", "encoder.final_layer_norm.weight"),
        Rule("decoder/relpos_bias/rel_embedding",
             "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        Rule(f"{dec}/pre_self_attention_layer_norm/scale", f"{db}.0.layer_norm.weight", (), "decoder"),
        *_attention_rules(f"{dec}/self_attention", f"{db}.0.SelfAttention", "decoder"),
        Rule(f"{dec}/pre_cross_attention_layer_norm/scale", f"{db}.1.layer_norm.weight", (), "decoder"),
        *_attention_rules(f"{dec}/encoder_decoder_attention", f"{db}.1.EncDecAttention", "decoder"),
        Rule(f"{dec}/pre_mlp_layer_norm/scale", f"{db}.2.layer_norm.weight", (), "decoder"),
        *_mlp_rules(config, f"{dec}/mlp", f"{db}.2.DenseReluDense", "decoder"),
        Rule("decoder/decoder_norm/scale", "decoder.final_layer_norm.weight"),
    ]
    if not config.tie_word_embeddings:
        rules.append(Rule("logits_dense/kernel", "lm_head.weight", (transpose,)))
    return rules


# Original T5 1.0 checkpoints carry a cross-attention position bias that T5 never uses (HF ignores it too).
_UNUSED_HF_TENSORS = (r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",)
_ENCODER_PARTS = ("token_embedder", "encoder")


def params_from_hf_tensors(tensors: Mapping[str, np.ndarray], config: T5Config, *, encoder_only: bool = False,
                           origin: str = "checkpoint") -> Params:
    """Maps HF T5 tensors onto this module's parameters, failing closed (see ``checkpoints.apply_rules``).

    ``encoder.embed_tokens.weight`` / ``decoder.embed_tokens.weight`` (and ``lm_head.weight`` for
    tied configs) are accepted as copies of ``shared.weight`` and must equal it. With
    ``encoder_only`` only the embedding and encoder are built (Sentence-T5 / ``T5EncoderModel``
    checkpoints; any decoder tensors are skipped, and a checkpoint that kept only
    ``encoder.embed_tokens.weight`` of the tied names uses it as ``shared.weight``), which is
    enough for ``encode`` and ``mean_pooled_encoding``.
    """
    aliases = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
    if config.tie_word_embeddings:
        aliases["lm_head.weight"] = "shared.weight"
    rules, expected, ignore = hf_rules(config), param_shapes(config), list(_UNUSED_HF_TENSORS)
    if encoder_only:
        if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
            tensors = dict(tensors)
            tensors["shared.weight"] = tensors.pop("encoder.embed_tokens.weight")  # safetensors kept one tied name
        rules = [r for r in rules if r.target.split("/")[0] in _ENCODER_PARTS]
        expected = {k: v for k, v in expected.items() if k in _ENCODER_PARTS}
        ignore += [r"decoder\..*", r"lm_head\.weight"]
        aliases = {"encoder.embed_tokens.weight": "shared.weight"}
    return checkpoints.apply_rules(
        tensors, rules, {"encoder": config.num_layers, "decoder": config.num_decoder_layers},
        expected=expected, aliases=aliases, ignore=ignore, origin=origin)


def load_hf(model_dir: str, dtype: str = "float32", *, scan_layers: bool = True, encoder_only: bool = False,
            **overrides) -> tuple[T5Config, Params]:
    """Loads a HF-layout T5 directory (local or gs://): ``config.json`` + safetensors.

    Returns the config (with compute ``dtype`` and ``scan_layers`` applied) and float32
    parameters as jax arrays. Any tensor that does not fit raises ``CheckpointError``.
    ``encoder_only`` loads just the embedding and encoder (see ``params_from_hf_tensors``).
    """
    config = T5Config.from_hf(checkpoints.read_hf_config(model_dir), dtype=dtype, scan_layers=scan_layers,
                              **overrides)
    params = params_from_hf_tensors(checkpoints.read_safetensors(model_dir), config, encoder_only=encoder_only,
                                    origin=str(model_dir))
    return config, jax.tree.map(jnp.asarray, params)


def to_hf_tensors(params: Params, config: T5Config) -> dict[str, np.ndarray]:
    """Inverse of :func:`params_from_hf_tensors`: HF tensor names -> float32 numpy arrays.

    Exports a trained (or freshly initialised) model for transformers; every hook in
    :func:`hf_rules` is a transpose, which is its own inverse.
    """
    flat = {k: np.asarray(v, np.float32) for k, v in checkpoints.flatten_tree(params).items()}
    out = {}
    for rule in hf_rules(config):
        undo = (lambda x: x.T) if transpose in rule.hooks else (lambda x: x)
        if "{i}" not in rule.source:
            out[rule.source] = np.ascontiguousarray(undo(flat[rule.target]))
            continue
        n = config.num_layers if rule.layers == "encoder" else config.num_decoder_layers
        for i in range(n):
            value = flat[rule.target.format(i=i)] if "{i}" in rule.target else flat[rule.target][i]
            out[rule.source.format(i=i)] = np.ascontiguousarray(undo(value))
    return out


def to_hf_config(config: T5Config) -> dict:
    """A HF ``config.json`` dict for ``config`` (``T5Config.from_hf`` reads it back unchanged)."""
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
        "vocab_size": config.vocab_size, "d_model": config.d_model, "d_kv": config.d_kv, "d_ff": config.d_ff,
        "num_heads": config.num_heads, "num_layers": config.num_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
        "feed_forward_proj": config.feed_forward_proj, "tie_word_embeddings": config.tie_word_embeddings,
        "decoder_start_token_id": config.decoder_start_token_id, "pad_token_id": config.pad_id,
        "eos_token_id": config.eos_id,
    }
