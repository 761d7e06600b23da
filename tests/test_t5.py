"""T5 numerics against HF transformers fixtures (recorded by tests/fixtures/make_fixtures.py), and
real-size shapes under jax.eval_shape."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gristmill.models import batching, checkpoints, t5

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "t5")
MODELS = ("tiny_v1_1", "tiny_t5_1_0_tied")


def _reference(name):
    return dict(np.load(os.path.join(FIXTURES, f"{name}_reference.npz")))


def _load(name, scan):
    config, params = t5.load_hf(os.path.join(FIXTURES, name), scan_layers=scan)
    return config, params, _reference(name)


@pytest.fixture(scope="module", params=MODELS)
def loaded(request):
    return _load(request.param, scan=True)


@pytest.fixture(scope="module", params=[(m, scan) for m in MODELS for scan in (True, False)],
                ids=lambda p: f"{p[0]}-{'scanned' if p[1] else 'unrolled'}")
def loaded_both_layouts(request):
    return _load(*request.param)


def test_encoder_matches_hf(loaded):
    config, params, ref = loaded
    out = t5.encode(params, config, ref["input_ids"], ref["input_mask"])
    np.testing.assert_allclose(out, ref["encoder_hidden"], rtol=1e-4, atol=1e-4)


def test_first_step_logprobs_match_hf(loaded):
    config, params, ref = loaded
    out = t5.first_step_logprobs(params, config, ref["input_ids"], ref["input_mask"])
    assert out.shape == (len(ref["input_ids"]), config.vocab_size)
    np.testing.assert_allclose(out, ref["first_step_logprobs"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(out, axis=-1), 0.0, atol=1e-5)


def test_teacher_forced_logits_match_hf(loaded_both_layouts):
    config, params, ref = loaded_both_layouts
    out = t5.logits(params, config, ref["input_ids"], ref["input_mask"], ref["decoder_input_ids"], ref["decoder_mask"])
    np.testing.assert_allclose(out, ref["logits"], rtol=1e-4, atol=1e-4)


def test_mean_pooled_encoding_averages_real_tokens(loaded):
    config, params, ref = loaded
    mask = ref["input_mask"][..., None]
    expected = (ref["encoder_hidden"] * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(t5.mean_pooled_encoding(params, config, ref["input_ids"], ref["input_mask"]),
                               expected, rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_is_close(name="tiny_v1_1"):
    config, params = t5.load_hf(os.path.join(FIXTURES, name), dtype="bfloat16")
    ref = _reference(name)
    assert jax.tree.leaves(params)[0].dtype == jnp.float32  # params stay fp32, compute is bf16
    out = t5.first_step_logprobs(params, config, ref["input_ids"], ref["input_mask"])
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref["first_step_logprobs"], atol=0.15)
    assert np.corrcoef(np.ravel(out), np.ravel(ref["first_step_logprobs"]))[0, 1] > 0.999
    full = t5.logits(params, config, ref["input_ids"], ref["input_mask"], ref["decoder_input_ids"], ref["decoder_mask"])
    real = ref["decoder_mask"].astype(bool)
    assert np.mean(np.argmax(full, -1)[real] == np.argmax(ref["logits"], -1)[real]) >= 0.9


def test_relative_position_buckets_match_hf():
    table = np.load(os.path.join(FIXTURES, "hf_buckets.npz"))
    rel = table["relative_position"]
    for nb, md in ((32, 128), (16, 24)):
        for bidi in (True, False):
            ours = t5.relative_position_bucket(rel, bidirectional=bidi, num_buckets=nb, max_distance=md)
            np.testing.assert_array_equal(ours, table[f"b{nb}_d{md}_{'bidi' if bidi else 'causal'}"])


def test_from_hf_reads_fixture_configs():
    v11 = t5.T5Config.from_hf(checkpoints.read_hf_config(os.path.join(FIXTURES, "tiny_v1_1")))
    assert v11 == t5.preset("tiny")
    tied = t5.T5Config.from_hf(checkpoints.read_hf_config(os.path.join(FIXTURES, "tiny_t5_1_0_tied")))
    assert tied.tie_word_embeddings and not tied.is_gated and (tied.num_layers, tied.num_decoder_layers) == (1, 2)
    with pytest.raises(checkpoints.CheckpointError, match="model_type"):
        t5.T5Config.from_hf({"model_type": "llama"})


def test_real_presets_shapes_without_allocating():
    with open(os.path.join(FIXTURES, "hf_param_counts.json")) as f:
        hf_counts = json.load(f)
    for name, count in hf_counts.items():
        assert t5.count_params(t5.preset(name)) == count, name
    xxl = t5.param_shapes(t5.preset("flan_t5_xxl"))
    assert xxl["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (24, 4096, 4096)
    assert xxl["decoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (24, 4096, 10240)
    assert xxl["logits_dense"]["kernel"].shape == (4096, 32128)
    xl = t5.param_shapes(t5.preset("t5_1_1_xl", scan_layers=False))
    assert xl["decoder"]["layers_23"]["encoder_decoder_attention"]["out"]["kernel"].shape == (2048, 2048)
    assert xl["encoder"]["relpos_bias"]["rel_embedding"].shape == (32, 32)


@pytest.mark.parametrize("name", ["t5_1_1_xl", "t5_1_1_xxl"])
@pytest.mark.parametrize("scan", [True, False])
def test_loader_table_covers_real_presets(name, scan):
    config = t5.preset(name, scan_layers=scan)
    want = set(checkpoints.flatten_tree(t5.param_shapes(config)))
    targets = set()
    for rule in t5.hf_rules(config):
        n = config.num_layers if rule.layers == "encoder" else config.num_decoder_layers
        targets |= {rule.target.format(i=i) for i in range(n)} if "{i}" in rule.target else {rule.target}
    assert targets == want


def test_bf16_scoring_shapes_of_xl_trace_without_allocating():
    config = t5.preset("flan_t5_xl", dtype="bfloat16")
    ids = jax.ShapeDtypeStruct((4, 512), jnp.int32)
    out = jax.eval_shape(t5.first_step_logprobs, t5.param_shapes(config), config, ids, ids)
    assert out.shape == (4, 32128) and out.dtype == jnp.float32


def test_dropout_is_random_only_when_not_deterministic():
    config, params = t5.load_hf(os.path.join(FIXTURES, "tiny_v1_1"))
    ref = _reference("tiny_v1_1")
    args = (params, config, ref["input_ids"], ref["input_mask"], ref["decoder_input_ids"], ref["decoder_mask"])
    a = t5.logits(*args, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = t5.logits(*args, deterministic=False, rngs={"dropout": jax.random.key(1)})
    c = t5.logits(*args, deterministic=False, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, ref["logits"], atol=1e-3)


def test_remat_does_not_change_outputs_and_every_param_gets_a_gradient():
    ref = _reference("tiny_v1_1")
    config, params = t5.load_hf(os.path.join(FIXTURES, "tiny_v1_1"))
    remat = config.replace(remat_policy="dots")
    args = (ref["input_ids"], ref["input_mask"], ref["decoder_input_ids"], ref["decoder_mask"])

    def loss(p):
        out = t5.logits(p, remat, *args)
        return jax.nn.log_softmax(out)[..., 7].mean(), out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(params)
    np.testing.assert_allclose(out, ref["logits"], rtol=1e-4, atol=1e-4)
    for path, g in checkpoints.flatten_tree(grads).items():
        assert np.all(np.isfinite(g)) and np.any(g != 0), path


def test_init_follows_t5_scheme():
    config = t5.preset("tiny", d_model=64, d_kv=32, num_heads=4, d_ff=256, vocab_size=2048)
    p = t5.init_params(config, jax.random.key(0))
    attn = p["encoder"]["layers"]["attention"]
    assert np.std(attn["query"]["kernel"]) == pytest.approx((64 * 32) ** -0.5, rel=0.1)
    assert np.std(attn["key"]["kernel"]) == pytest.approx(64 ** -0.5, rel=0.1)
    assert np.std(attn["out"]["kernel"]) == pytest.approx(128 ** -0.5, rel=0.1)
    assert np.std(p["token_embedder"]["embedding"]) == pytest.approx(1.0, rel=0.05)
    np.testing.assert_array_equal(p["decoder"]["decoder_norm"]["scale"], 1.0)
    layers = attn["query"]["kernel"]
    assert not np.allclose(layers[0], layers[1])  # scanned layers get distinct init
    assert jax.tree.map(lambda x: x.shape, p) == jax.tree.map(lambda x: x.shape, t5.param_shapes(config))


def test_bucket_length_and_pad_batch():
    assert [batching.bucket_length(n) for n in (0, 1, 64, 65, 512, 513)] == [64, 64, 64, 128, 512, 1024]
    with pytest.raises(ValueError, match="exceeds"):
        batching.bucket_length(9000)
    ids, mask = batching.pad_batch([[5, 6, 7], [8]], pad_id=0, buckets=(4, 8), batch_size=3)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError):
        batching.pad_batch([[1]] * 3, pad_id=0, batch_size=2)


def test_padding_to_a_bucket_does_not_change_scores():
    config, params = t5.load_hf(os.path.join(FIXTURES, "tiny_v1_1"))
    ref = _reference("tiny_v1_1")
    rows = [list(r[m.astype(bool)]) for r, m in zip(ref["input_ids"], ref["input_mask"])]
    ids, mask = batching.pad_batch(rows, pad_id=config.pad_id, buckets=(64,), batch_size=4)
    out = t5.first_step_logprobs(params, config, ids, mask)[:3]
    np.testing.assert_allclose(out, ref["first_step_logprobs"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_export_round_trips_to_the_hf_tensors(name):
    model_dir = os.path.join(FIXTURES, name)
    original = checkpoints.read_safetensors(model_dir)
    for scan in (True, False):
        config, params = t5.load_hf(model_dir, scan_layers=scan)
        exported = t5.to_hf_tensors(params, config)
        assert set(exported) == set(original)
        for key, value in exported.items():
            np.testing.assert_array_equal(value, original[key], err_msg=key)
    assert t5.T5Config.from_hf(t5.to_hf_config(config)) == config.replace(scan_layers=True)
