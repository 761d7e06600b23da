"""BERT encoder vs transformers' BertModel (recorded by tests/fixtures/make_minilm_fixture.py)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from gristmill.models import bert, checkpoints
from gristmill.models.checkpoints import CheckpointError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "minilm")
TINY_DIR = os.path.join(FIXTURES, "bert_tiny")


def reference(name):
    with np.load(os.path.join(FIXTURES, name)) as z:
        return {k: z[k] for k in z.files}


def assert_close_on_tokens(got, ref, atol):
    mask = ref["mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(got)[mask], ref["hidden"][mask], atol=atol, rtol=0)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_tiny_bert_matches_transformers(scan_layers):
    ref = reference("bert_tiny_reference.npz")
    config, params = bert.load_hf(TINY_DIR, scan_layers=scan_layers)
    assert config == bert.preset("tiny", scan_layers=scan_layers)
    got = bert.encode(params, config, ref["input_ids"], ref["mask"], ref["token_type_ids"])
    assert_close_on_tokens(got, ref, atol=1e-5)


def test_minilm_matches_transformers():
    ref = reference("bert_reference.npz")
    config, params = bert.load_preset("all-MiniLM-L6-v2")
    got = bert.encode(params, config, ref["input_ids"], ref["mask"])
    assert_close_on_tokens(got, ref, atol=2e-5)
    # Mean pooling = masked mean of those states.
    pooled = np.asarray(bert.mean_pooled_encoding(params, config, ref["input_ids"], ref["mask"]))
    m = ref["mask"][..., None]
    np.testing.assert_allclose(pooled, (ref["hidden"] * m).sum(1) / m.sum(1), atol=2e-5, rtol=0)


def test_padding_does_not_change_real_tokens():
    config, params = bert.load_hf(TINY_DIR)
    ids = np.array([[5, 9, 17, 33, 2, 0, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    other_pad = ids.copy()
    other_pad[0, 5:] = [77, 12, 3]
    a = np.asarray(bert.encode(params, config, ids, mask))[0, :5]
    b = np.asarray(bert.encode(params, config, other_pad, mask))[0, :5]
    c = np.asarray(bert.encode(params, config, ids[:, :5], mask[:, :5]))[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_preset_shapes_match_checkpoint_without_allocating():
    shapes = checkpoints.flatten_tree(bert.param_shapes(bert.preset("all_minilm_l6_v2")))
    tensors = checkpoints.read_safetensors(bert.checkpoint_dir("all_minilm_l6_v2"))
    used = sum(t.size for n, t in tensors.items() if not n.startswith("pooler.") and n != "embeddings.position_ids")
    assert sum(int(np.prod(s.shape)) for s in shapes.values()) == used
    assert shapes["layers/attention/query/kernel"].shape == (6, 384, 384)
    assert shapes["layers/mlp/intermediate/kernel"].shape == (6, 384, 1536)


def tiny_tensors():
    return {k: np.array(v) for k, v in checkpoints.read_safetensors(TINY_DIR).items()}


def test_loader_fails_closed():
    config = bert.preset("tiny")
    good = tiny_tensors()
    bert.params_from_hf_tensors(good, config)  # the fixture itself loads

    missing = dict(good)
    del missing["encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.attention\.self\.key\.bias"):
        bert.params_from_hf_tensors(missing, config)

    extra = dict(good, **{"cls.predictions.bias": np.zeros(120, np.float32)})
    with pytest.raises(CheckpointError, match=r"cls\.predictions\.bias"):
        bert.params_from_hf_tensors(extra, config)

    wrong = dict(good)
    for i in range(2):  # as if stored [in, out]
        wrong[f"encoder.layer.{i}.intermediate.dense.weight"] = np.zeros((24, 40), np.float32)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*layers/mlp/intermediate/kernel"):
        bert.params_from_hf_tensors(wrong, config)
    wrong["encoder.layer.1.intermediate.dense.weight"] = np.zeros((40, 24), np.float32)
    with pytest.raises(CheckpointError, match=r"intermediate\.dense\.weight: layers disagree in shape"):
        bert.params_from_hf_tensors(wrong, config)

    shifted = dict(good, **{"embeddings.position_ids": np.arange(1, 65)[None]})
    with pytest.raises(CheckpointError, match="position_ids"):
        bert.params_from_hf_tensors(shifted, config)
    bert.params_from_hf_tensors(dict(good, **{"embeddings.position_ids": np.arange(64)[None]}), config)


def test_config_rejects_what_the_network_does_not_implement(tmp_path):
    with open(os.path.join(TINY_DIR, "config.json")) as f:
        base = json.load(f)
    for change, message in (({"model_type": "roberta"}, "not 'bert'"),
                            ({"position_embedding_type": "relative_key"}, "absolute only"),
                            ({"hidden_act": "relu"}, "gelu only")):
        with pytest.raises(CheckpointError, match=message):
            bert.BertConfig.from_hf({**base, **change})
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    shutil.copy(os.path.join(TINY_DIR, "config.json"), model_dir)
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickled"):
        bert.load_hf(str(model_dir))


def test_init_params_have_the_loaded_structure():
    config = bert.preset("tiny")
    fresh = jax.tree.map(lambda x: x.shape, bert.init_params(config, jax.random.key(0)))
    _, loaded = bert.load_hf(TINY_DIR)
    assert fresh == jax.tree.map(lambda x: x.shape, loaded)
