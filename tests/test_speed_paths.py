"""The speed paths of the models (causal query blocks, fused attention, bfloat16, HF export)
against HF transformers reference outputs and brute-force numpy, never against themselves."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from gristmill.models import llama, t5

LLAMA = os.path.join(os.path.dirname(__file__), "fixtures", "llama")
T5 = os.path.join(os.path.dirname(__file__), "fixtures", "t5")
LOGITS = jax.jit(llama.logits, static_argnums=1)


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2_bias"])
@pytest.mark.parametrize("block", [3, 5, None])
def test_causal_query_blocks_match_transformers(name, block):
    # The fixture rows are 12 tokens: blocks of 3 and 5 split them in 4 and 3 (ragged) blocks.
    config, params = llama.load_hf(os.path.join(LLAMA, name))
    config = config.replace(attention_block=block)
    ref = dict(np.load(os.path.join(LLAMA, name, "reference.npz")))
    real = ref["mask"].astype(bool)
    out = np.asarray(LOGITS(params, config, jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])))
    np.testing.assert_allclose(out[real], ref["logits"][real], atol=1e-4, rtol=0)


def test_causal_blocks_cover_every_query_once():
    for length, block in [(512, 128), (300, 128), (7, 3), (5, None), (4, 8)]:
        blocks = llama.causal_blocks(length, block)
        assert [i for a, b in blocks for i in range(a, b)] == list(range(length))


def _numpy_gqa(q, k, v, allowed):
    """Brute-force reference: repeat the key/value heads, masked softmax per (row, head)."""
    b, t, h, dh = q.shape
    g = h // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(dh)
    scores = np.where(allowed[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", weights, v)


def test_blocked_gqa_attention_matches_numpy():
    rng = np.random.default_rng(0)
    b, t, h, kv, dh = 2, 11, 6, 2, 8
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(b, t, h, dh), (b, t, kv, dh), (b, t, kv, dh)])
    mask = np.ones((b, t), np.int32)
    mask[1, 8:] = 0  # right padding in row 1
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    bias = llama.attention_bias(jnp.asarray(mask), jnp.asarray(positions), None)
    allowed = np.tril(np.ones((t, t), bool))[None] & mask.astype(bool)[:, None, :]
    want = _numpy_gqa(q, k, v, allowed)
    for block in (4, None):
        got = np.asarray(llama.dot_product_attention(*map(jnp.asarray, (q, k, v)), bias, block))
        np.testing.assert_allclose(got[mask.astype(bool)], want[mask.astype(bool)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2_bias"])
def test_hf_export_round_trips_the_checkpoint(name):
    config, params = llama.load_hf(os.path.join(LLAMA, name))
    exported = llama.to_hf_tensors(params, config)
    original = load_file(os.path.join(LLAMA, name, "model.safetensors"))
    if config.tie_word_embeddings:
        original.pop("lm_head.weight", None)
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    exported_config = llama.LlamaConfig.from_hf(llama.to_hf_config(config))
    assert exported_config == config.replace(dtype="float32")


def test_llama_bfloat16_last_logprobs_close_to_transformers():
    config, params = llama.load_hf(os.path.join(LLAMA, "llama_gqa"), dtype=jnp.bfloat16)
    ref = dict(np.load(os.path.join(LLAMA, "llama_gqa", "reference.npz")))
    lp = np.asarray(jax.jit(llama.last_position_logprobs, static_argnums=1)(
        params, config.replace(attention_block=4), jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])))
    np.testing.assert_allclose(lp, ref["last_logprobs"], atol=0.25, rtol=0)


def test_t5_fused_attention_call_matches_the_xla_path():
    """The arguments the cuDNN path passes (unscaled logits, bias, bool mask), run through
    jax.nn.dot_product_attention's XLA backend, give the T5 attention."""
    rng = np.random.default_rng(1)
    b, q_len, s_len, h, d = 2, 5, 7, 3, 4
    q = jnp.asarray(rng.standard_normal((b, q_len, h, d)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, s_len, h, d)), jnp.float32) for _ in range(2))
    bias = jnp.asarray(rng.standard_normal((1, h, q_len, s_len)), jnp.float32)
    mask = jnp.asarray(np.arange(s_len)[None, :] < np.array([[7], [4]]))[:, None, None, :]  # [B, 1, 1, S]
    want = t5.dot_product_attention(q, k, v, bias, mask, lambda w: w, "xla")
    got = t5.fused_attention(q, k, v, bias, mask, backend="xla")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    # And against brute force numpy.
    scores = np.einsum("bqhk,bshk->bhqs", q, k) + np.asarray(bias)
    scores = np.where(np.asarray(mask), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(want), np.einsum("bhqs,bshk->bqhk", weights, v), atol=1e-5, rtol=0)


def test_t5_rejects_unknown_attention_impl():
    with pytest.raises(ValueError, match="attention_impl"):
        t5.preset("tiny", attention_impl="flash")


def test_t5_bfloat16_encoder_close_to_transformers():
    config, params = t5.load_hf(os.path.join(T5, "tiny_v1_1"), dtype="bfloat16")
    ref = dict(np.load(os.path.join(T5, "tiny_v1_1_reference.npz")))
    out = np.asarray(t5.encode(params, config, ref["input_ids"], ref["input_mask"]))
    real = ref["input_mask"].astype(bool)
    scale = np.abs(ref["encoder_hidden"][real]).mean()
    assert np.abs(out[real] - ref["encoder_hidden"][real]).mean() < 0.05 * scale
