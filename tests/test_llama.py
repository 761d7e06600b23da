"""Llama-family decoder against HF transformers reference logits (recorded in tests/fixtures/llama/)."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gristmill.models import llama
from gristmill.models.checkpoints import CheckpointError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "llama")
VARIANTS = ["llama_gqa", "qwen2_bias"]
# Jitted once per (config, shape): op-by-op dispatch of a whole model is slow on a shared CPU.
LAST_LOGPROBS = jax.jit(llama.last_position_logprobs, static_argnums=1)


def _load(name, **kw):
    config, params = llama.load_hf(os.path.join(FIXTURES, name), **kw)
    ref = dict(np.load(os.path.join(FIXTURES, name, "reference.npz")))
    return config, params, ref


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("scan", [True, False])
def test_logits_match_transformers(name, scan):
    config, params, ref = _load(name)
    config = config.replace(scan_layers=scan)
    real = ref["mask"].astype(bool)
    out = np.asarray(jax.jit(llama.logits, static_argnums=1)(params, config, jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])))
    np.testing.assert_allclose(out[real], ref["logits"][real], atol=1e-4, rtol=0)
    lp = np.asarray(LAST_LOGPROBS(params, config, jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])))
    np.testing.assert_allclose(lp, ref["last_logprobs"], atol=1e-4, rtol=0)


def test_fixture_shapes_exercise_gqa_bias_and_tying():
    gqa, _, _ = _load("llama_gqa")
    qwen, qwen_params, _ = _load("qwen2_bias")
    assert gqa.num_kv_heads < gqa.num_heads and not gqa.tie_word_embeddings
    assert qwen.attention_bias and qwen.tie_word_embeddings and "lm_head" not in qwen_params
    assert np.abs(np.asarray(qwen_params["layers"]["self_attention"]["query"]["bias"])).max() > 0.01


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_does_not_change_results(name):
    config, params, ref = _load(name)
    batched = np.asarray(LAST_LOGPROBS(params, config, jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])))
    for row, n in enumerate(ref["mask"].sum(1)):
        ids = ref["ids"][row:row + 1, :n]
        alone = LAST_LOGPROBS(params, config, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)))
        np.testing.assert_allclose(np.asarray(alone)[0], batched[row], atol=1e-5, rtol=0)
        # The same row left-padded to 16 and right-padded to 16 with different pad ids.
        for left in (True, False):
            pad = 16 - n
            full = np.concatenate([np.full(pad, 7), ids[0]]) if left else np.concatenate([ids[0], np.full(pad, 7)])
            mask = np.concatenate([np.zeros(pad), np.ones(n)]) if left else np.concatenate([np.ones(n), np.zeros(pad)])
            out = LAST_LOGPROBS(params, config, jnp.asarray(full[None]), jnp.asarray(mask[None]))
            np.testing.assert_allclose(np.asarray(out)[0], batched[row], atol=1e-5, rtol=0)


def test_fully_padded_row_is_finite():
    config, params, ref = _load("llama_gqa")
    ids = np.zeros((2, 8), np.int32)
    mask = np.array([[1] * 8, [0] * 8])
    out = np.asarray(LAST_LOGPROBS(params, config, jnp.asarray(ids), jnp.asarray(mask)))
    assert np.isfinite(out).all()


def test_bfloat16_close_to_float32():
    config, params, ref = _load("llama_gqa", dtype=jnp.bfloat16)
    assert config.dtype == "bfloat16"
    assert params["layers"]["mlp"]["up"]["kernel"].dtype == jnp.bfloat16
    lp = np.asarray(LAST_LOGPROBS(params, config, jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])))
    assert lp.dtype == np.float32
    np.testing.assert_allclose(lp, ref["last_logprobs"], atol=0.25, rtol=0)


def test_smollm2_preset_shapes_without_allocating():
    shapes = llama.abstract_params(llama.PRESETS["smollm2_135m"].config)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert n == 134_515_008  # SmolLM2-135M's published parameter count (tied head)
    assert shapes["layers"]["self_attention"]["key"]["kernel"].shape == (30, 576, 3, 64)
    out = jax.eval_shape(lambda p: llama.logits(p, llama.SMOLLM2_135M, jnp.zeros((2, 16), jnp.int32),
                                                jnp.ones((2, 16), jnp.int32)), shapes)
    assert out.shape == (2, 16, 49152) and out.dtype == jnp.float32


def test_tiny_preset_runs():
    params = llama.init_params(0, llama.TINY)
    ids = jnp.arange(10).reshape(2, 5)
    out = LAST_LOGPROBS(params, llama.TINY, ids, jnp.ones_like(ids))
    np.testing.assert_allclose(np.exp(np.asarray(out)).sum(-1), 1.0, rtol=1e-5)


def test_from_hf_refuses_rope_scaling():
    cfg = {"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 2, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    with pytest.raises(ValueError, match="RoPE scaling"):
        llama.LlamaConfig.from_hf(cfg)
    with pytest.raises(ValueError, match="not a Llama-family"):
        llama.LlamaConfig.from_hf(dict(cfg, model_type="t5", rope_scaling=None))


def test_load_hf_fails_closed(tmp_path):
    src = os.path.join(FIXTURES, "llama_gqa")
    for extra, missing, match in [("model.layers.0.mlp.extra.weight", None, "no rule maps"),
                                  (None, "model.layers.1.mlp.up_proj.weight", "missing tensors")]:
        d = tmp_path / (extra or missing)
        shutil.copytree(src, d)
        tensors = dict(load_file(str(d / "model.safetensors")))
        if extra:
            tensors[extra] = np.zeros((2, 2), np.float32)
        if missing:
            del tensors[missing]
        save_file(tensors, str(d / "model.safetensors"))
        with pytest.raises(CheckpointError, match=match):
            llama.load_hf(str(d))
