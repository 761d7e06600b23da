"""The T5 model wrapper for training: packed-attention forward, span-corruption loss, FLOPs.

CONTRIBUTING.md style rule 1: `gristmill.models.t5` holds the network (it only computes logits); this module owns
the loss, taking ``params`` explicitly; `training.step` owns the state. Scoring a T5 (target
log-probabilities) is `t5.target_logprobs`.

Packing. `t5.logits` masks keys only (``[B, L]`` masks), which cannot keep packed examples apart,
so `EncoderDecoderModel.logits` calls `t5.T5` with full segment-aware masks (t5.py's
`encoder_self_mask`, `decoder_self_mask`, `cross_mask`), as T5X does:

    encoder self-attention   q, k in the same segment, k not padding      [B, 1, L, L]
    decoder self-attention   causal, same segment, k not padding          [B, 1, T, T]
    cross-attention          decoder segment == encoder segment, not pad  [B, 1, T, L]

It is the same network and parameter tree, so trained parameters load into every `t5` function.
Positions restart at 0 in each segment, but T5's relative-position bias only needs
``key_index - query_index``, which is the same within a contiguous segment, so the bias is
computed over the whole row and the ``*_positions`` features are not needed (T5X ignores them
too). Unpacked batches get segment ids ``tokens > 0`` and then compute exactly what `t5.logits`
computes (tested).

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

import jax
import jax.numpy as jnp

from gristmill.models import t5
from gristmill.models.t5 import cross_mask, decoder_self_mask, encoder_self_mask

Batch = Mapping[str, jax.Array]
_f32 = jnp.float32


def segment_ids(batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(encoder, decoder) segment ids: the packed features, or ``tokens > 0`` for unpacked batches."""
    if "encoder_segment_ids" in batch:
        return batch["encoder_segment_ids"], batch["decoder_segment_ids"]
    return ((batch["encoder_input_tokens"] > 0).astype(jnp.int32),
            (batch["decoder_target_tokens"] > 0).astype(jnp.int32))


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
    """T5 span-corruption model: the loss over data.py batches, params passed explicitly.

    Hashable (frozen config), so jitted functions can close over it.
    """

    config: t5.T5Config
    z_loss: float = 1e-4

    def logits(self, params: Any, batch: Batch, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
        """Teacher-forced float32 logits [B, T, V]; dropout on iff ``dropout_rng`` is given."""
        enc_seg, dec_seg = segment_ids(batch)
        deterministic = dropout_rng is None or self.config.dropout_rate == 0
        rngs = None if deterministic else {"dropout": dropout_rng}
        return t5.T5(self.config, deterministic).apply(
            {"params": params}, batch["encoder_input_tokens"], enc_seg > 0, batch["decoder_input_tokens"],
            dec_seg > 0, encoder_attention_mask=encoder_self_mask(enc_seg),
            decoder_self_attention_mask=decoder_self_mask(dec_seg), cross_attention_mask=cross_mask(dec_seg, enc_seg),
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
