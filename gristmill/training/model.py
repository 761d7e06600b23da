"""The T5 model wrapper for training: packed-attention forward, span-corruption loss, scoring, FLOPs.

STYLE rule 1: `gristmill.models.t5` holds the network (it only computes logits); this module owns
the loss and scoring, each taking ``params`` explicitly; `training.train` owns the state.

Packing. `t5.logits` masks keys only (``[B, L]`` masks), which cannot keep packed examples apart,
so `PackedT5` re-assembles the same network from t5.py's own blocks (`t5.EncoderLayer`,
`t5.DecoderLayer`, `t5.RMSNorm`, `t5.RelativePositionBias`) with segment-aware masks, as T5X does:

    encoder self-attention   q, k in the same segment, k not padding      [B, 1, L, L]
    decoder self-attention   causal, same segment, k not padding          [B, 1, T, T]
    cross-attention          decoder segment == encoder segment, not pad  [B, 1, T, L]

Its parameter tree is exactly `t5.init_params`' (tested), so trained parameters load into every
`t5` function. Positions restart at 0 in each segment, but T5's relative-position bias only
needs ``key_index - query_index``, which is the same within a contiguous segment, so the
``*_positions`` features are not needed (T5X ignores them too). Unpacked batches get segment
ids ``tokens > 0`` and then compute exactly what `t5.logits` computes (tested).

Loss: token cross-entropy of the decoder targets weighted by ``decoder_loss_weights`` and divided
by the sum of the weights (the mean over real target tokens of the global batch), plus T5X's
auxiliary z-loss ``z_loss * log(Z)^2`` (1e-4) that keeps the softmax normaliser near 1. (T5X's
T5 v1.1 pre-training divides the summed loss by a constant, 233472 = 2048 x 114, instead; with
concatenate-and-split rows nearly full, the two differ by a near-constant factor that Adafactor's
normalised updates absorb.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gristmill.models import t5

Batch = Mapping[str, jax.Array]
_f32 = jnp.float32


# ----------------------------------------------------------------------------- masks (pure)

def encoder_self_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, L] segment ids (0 = padding) -> bool [B, 1, L, L]: same segment, key not padding."""
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


def segment_ids(batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(encoder, decoder) segment ids: the packed features, or ``tokens > 0`` for unpacked batches."""
    if "encoder_segment_ids" in batch:
        return batch["encoder_segment_ids"], batch["decoder_segment_ids"]
    return ((batch["encoder_input_tokens"] > 0).astype(jnp.int32),
            (batch["decoder_target_tokens"] > 0).astype(jnp.int32))


# ----------------------------------------------------------------------------- network with packed masks

class _PackedEncoder(nn.Module):
    config: t5.T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, embedded: jax.Array, mask: jax.Array) -> jax.Array:
        """embedded [B, L, D], mask bool [B, 1, L, L] -> [B, L, D]."""
        cfg = self.config
        length = embedded.shape[1]
        bias = t5.RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(length, length)
        drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
        x = t5._run_layers(t5.EncoderLayer, cfg, cfg.num_layers, self.deterministic, drop(embedded), bias, mask)
        return drop(t5.RMSNorm(cfg, name="encoder_norm")(x))


class _PackedDecoder(nn.Module):
    config: t5.T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, embedded: jax.Array, encoded: jax.Array, self_mask: jax.Array,
                 encoder_decoder_mask: jax.Array) -> jax.Array:
        """embedded [B, T, D], encoded [B, L, D], masks [B, 1, T, T] / [B, 1, T, L] -> [B, T, D]."""
        cfg = self.config
        length = embedded.shape[1]
        bias = t5.RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")(length, length)
        drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
        x = t5._run_layers(t5.DecoderLayer, cfg, cfg.num_decoder_layers, self.deterministic, drop(embedded),
                           encoded, bias, self_mask, encoder_decoder_mask)
        return drop(t5.RMSNorm(cfg, name="decoder_norm")(x))


class PackedT5(nn.Module):
    """`t5.T5` with segment-aware attention masks; same parameter names and shapes."""
    config: t5.T5Config
    deterministic: bool = True

    def setup(self):
        cfg = self.config
        self.token_embedder = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nn.initializers.normal(1.0),
                                       dtype=cfg.compute_dtype, param_dtype=_f32)
        self.encoder = _PackedEncoder(cfg, self.deterministic)
        self.decoder = _PackedDecoder(cfg, self.deterministic)
        if not cfg.tie_word_embeddings:
            self.logits_dense = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=_f32,
                                         kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"))

    def __call__(self, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array,
                 encoder_segment_ids: jax.Array, decoder_segment_ids: jax.Array) -> jax.Array:
        """Token ids and segment ids -> float32 logits [B, T, V]."""
        encoded = self.encoder(self.token_embedder(encoder_input_tokens), encoder_self_mask(encoder_segment_ids))
        y = self.decoder(self.token_embedder(decoder_input_tokens), encoded, decoder_self_mask(decoder_segment_ids),
                         cross_mask(decoder_segment_ids, encoder_segment_ids))
        if self.config.tie_word_embeddings:
            return self.token_embedder.attend(y * (self.config.d_model ** -0.5)).astype(_f32)
        return self.logits_dense(y).astype(_f32)


# ----------------------------------------------------------------------------- loss (pure)

def cross_entropy_with_z_loss(logits: jax.Array, targets: jax.Array, z_loss: float) -> tuple[jax.Array, jax.Array]:
    """Per-token (cross-entropy, z-loss) of float32 logits [B, T, V] against targets [B, T].

    cross-entropy = log Z - logit[target]; z-loss = z_loss * (log Z)^2 (T5X), both [B, T].
    """
    assert logits.ndim == 3 and targets.shape == logits.shape[:2], (logits.shape, targets.shape)
    logits = logits.astype(_f32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return log_z - target_logit, z_loss * jnp.square(log_z)


# ----------------------------------------------------------------------------- the model wrapper

@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel:
    """T5 span-corruption model: loss and scoring over data.py batches, params passed explicitly.

    Hashable (frozen config), so jitted functions can close over it.
    """

    config: t5.T5Config
    z_loss: float = 1e-4

    def logits(self, params: Any, batch: Batch, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
        """Teacher-forced float32 logits [B, T, V]; dropout on iff ``dropout_rng`` is given."""
        enc_seg, dec_seg = segment_ids(batch)
        deterministic = dropout_rng is None or self.config.dropout_rate == 0
        rngs = None if deterministic else {"dropout": dropout_rng}
        return PackedT5(self.config, deterministic).apply(
            {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"], enc_seg, dec_seg,
            rngs=rngs)

    def loss_fn(self, params: Any, batch: Batch, dropout_rng: Optional[jax.Array] = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss to minimise, metrics): weighted mean cross-entropy + z-loss over real target tokens.

        Metrics (scalars): ``loss`` (cross-entropy only, nats per target token), ``z_loss``,
        ``accuracy`` (argmax == target), ``target_tokens`` (sum of the loss weights).
        """
        logits = self.logits(params, batch, dropout_rng)
        targets = batch["decoder_target_tokens"]
        weights = batch["decoder_loss_weights"].astype(_f32)
        ce, zl = cross_entropy_with_z_loss(logits, targets, self.z_loss)
        denom = jnp.maximum(weights.sum(), 1.0)
        loss = (ce * weights).sum() / denom
        z = (zl * weights).sum() / denom
        accuracy = ((jnp.argmax(logits, -1) == targets) * weights).sum() / denom
        return loss + z, {"loss": loss, "z_loss": z, "accuracy": accuracy, "target_tokens": weights.sum()}

    def token_logprobs(self, params: Any, batch: Batch) -> jax.Array:
        """log P(target token) [B, T] under the model (no dropout); zero where the loss weight is 0."""
        logits = self.logits(params, batch)
        ce, _ = cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"], 0.0)
        return -ce * batch["decoder_loss_weights"].astype(_f32)

    def score_batch(self, params: Any, batch: Batch) -> jax.Array:
        """Per-row sum of target log-likelihoods [B] (one example per row: use unpacked batches)."""
        return self.token_logprobs(params, batch).sum(axis=-1)


def init_params(config: t5.T5Config, rng: jax.Array) -> Any:
    """Fresh T5-initialised float32 parameters; the same tree and values as `t5.init_params`."""
    return t5.init_params(config, rng)


# ----------------------------------------------------------------------------- FLOPs

def flops_per_sequence(config: t5.T5Config, inputs_length: int, targets_length: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one (inputs, targets) row.

    With d = d_model, a = num_heads * d_kv, f = d_ff, g = 3 gated / 2 plain MLP matrices,
    V = vocab_size, Le / Ld layers, I / T the input / target lengths:

        matmul weights applied per encoder token  Ne = Le (4 d a + g d f) + Ld (2 d a)   [cross-attn k, v]
        matmul weights applied per decoder token  Nd = Ld (4 d a + 2 d a + g d f) + d V  [self, cross q/o, lm head]
        attention (QK^T and AV)                   Ae = Le 4 I^2 a,  Ad = Ld 4 (T^2 + T I) a
        training FLOPs = 3 (2 (I Ne + T Nd) + Ae + Ad) = 6 (I Ne + T Nd) + 12 a (Le I^2 + Ld (T^2 + T I))

    i.e. the usual "6N per token plus attention", with each weight counted against the stream it
    is applied to. Embedding lookups, norms, softmax and other elementwise work are not counted;
    causal and packing masks are not discounted (all positions of a row are computed).
    """
    d, a, f, v = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.vocab_size
    g = 3 if config.is_gated else 2
    le, ld, i, t = config.num_layers, config.num_decoder_layers, inputs_length, targets_length
    per_encoder_token = le * (4 * d * a + g * d * f) + ld * 2 * d * a
    per_decoder_token = ld * (6 * d * a + g * d * f) + d * v
    attention = 4 * a * (le * i * i + ld * (t * t + t * i))
    return float(3 * (2 * (i * per_encoder_token + t * per_decoder_token) + attention))
