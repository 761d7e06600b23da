"""Checkpoint reading and the fail-closed loader table, on the HF-written T5 fixture."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import safetensors.numpy
from apache_beam.io.localfilesystem import LocalFileSystem

from gristmill import io
from gristmill.models import checkpoints, t5
from gristmill.models.checkpoints import CheckpointError, Rule

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "t5")
V11 = os.path.join(FIXTURES, "tiny_v1_1")


class FakeRemoteFileSystem(LocalFileSystem):
    """A Beam filesystem with its own scheme, so the gs:// code path runs without a bucket."""
    PREFIX = "fakegs://"

    @classmethod
    def scheme(cls):
        return "fakegs"

    def _local(self, path):
        assert path.startswith(self.PREFIX), path
        return path[len(self.PREFIX):]

    def join(self, basepath, *paths):
        return self.PREFIX + os.path.join(self._local(basepath), *paths)

    def exists(self, path):
        return super().exists(self._local(path))

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)


@pytest.fixture(scope="module")
def tensors():
    return checkpoints.read_safetensors(V11)


@pytest.fixture(scope="module")
def config():
    return t5.T5Config.from_hf(checkpoints.read_hf_config(V11))


def _copy_model(tmp_path, name="model"):
    out = tmp_path / name
    out.mkdir()
    shutil.copy(os.path.join(V11, "config.json"), out)
    return out


def test_reads_hf_written_safetensors(tensors):
    assert len(tensors) == 52  # what transformers' save_pretrained wrote for 2 + 2 layers, untied
    assert tensors["shared.weight"].shape == (512, 48) and tensors["shared.weight"].dtype == np.float32
    assert tensors["encoder.block.0.layer.0.SelfAttention.q.weight"].shape == (64, 48)


def test_bf16_f16_and_int_tensors():
    got = checkpoints.read_safetensors(os.path.join(FIXTURES, "bf16_sample.safetensors"))
    want = np.load(os.path.join(FIXTURES, "bf16_sample.npz"))
    assert got["w_bf16"].dtype == np.float32 and got["w_f16"].dtype == np.float16
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_missing_tensor_is_named(tensors, config):
    broken = dict(tensors)
    del broken["decoder.block.1.layer.1.EncDecAttention.k.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): decoder\.block\.1\.layer\.1\.EncDecAttention\.k"):
        t5.params_from_hf_tensors(broken, config, origin="fixture")


def test_unexpected_tensor_is_named(tensors, config):
    extra = dict(tensors, **{"encoder.block.0.layer.0.SelfAttention.qq.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(CheckpointError, match=r"fixture: unexpected tensors.*SelfAttention\.qq\.weight"):
        t5.params_from_hf_tensors(extra, config, origin="fixture")


def test_shape_mismatch_against_eval_shape(tensors, config):
    wrong = dict(tensors, **{"lm_head.weight": np.zeros((500, 48), np.float32)})
    with pytest.raises(CheckpointError, match=r"shape mismatches.*logits_dense/kernel: checkpoint \(48, 500\) vs model \(48, 512\)"):
        t5.params_from_hf_tensors(wrong, config)
    # a config that disagrees with the checkpoint is caught the same way
    with pytest.raises(CheckpointError, match="shape mismatches"):
        t5.params_from_hf_tensors(tensors, config.replace(d_ff=128))


def test_embedding_aliases_accepted_only_when_equal(tensors, config):
    same = dict(tensors, **{"encoder.embed_tokens.weight": tensors["shared.weight"].copy(),
                            "decoder.embed_tokens.weight": tensors["shared.weight"].copy()})
    t5.params_from_hf_tensors(same, config)
    different = dict(same, **{"decoder.embed_tokens.weight": tensors["shared.weight"] + 1})
    with pytest.raises(CheckpointError, match="decoder.embed_tokens.weight differs from shared.weight"):
        t5.params_from_hf_tensors(different, config)


def test_untied_config_needs_lm_head(tensors, config):
    no_head = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        t5.params_from_hf_tensors(no_head, config)


def test_apply_rules_stacks_unrolls_and_hooks():
    src = {f"l.{i}.w": np.full((2, 3), i, np.float32) for i in range(3)} | {"top": np.ones(4, np.float32)}
    stacked = checkpoints.apply_rules(src, [Rule("a/w", "l.{i}.w", (checkpoints.transpose,)), Rule("b", "top")], 3)
    assert stacked["a"]["w"].shape == (3, 3, 2) and stacked["a"]["w"][2, 0, 0] == 2
    unrolled = checkpoints.apply_rules(src, [Rule("a_{i}/w", "l.{i}.w", (checkpoints.scale(2.0),)),
                                             Rule("b", "top", (checkpoints.reshape(2, 2),))], 3)
    assert unrolled["a_1"]["w"][0, 0] == 2.0 and unrolled["b"].shape == (2, 2)
    ignored = checkpoints.apply_rules(src, [Rule("b", "top")], ignore=[r"l\.\d+\.w"])
    assert set(ignored) == {"b"}
    with pytest.raises(CheckpointError, match=r"no rule produces \(1\): c"):
        checkpoints.apply_rules(src, [Rule("a/w", "l.{i}.w"), Rule("b", "top")], 3,
                                expected={"a": {"w": np.zeros((3, 2, 3))}, "b": np.zeros(4), "c": np.zeros(1)})


def test_truncated_safetensors_names_the_file(tmp_path):
    out = _copy_model(tmp_path)
    with open(os.path.join(V11, "model.safetensors"), "rb") as f:
        data = f.read()
    (out / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated safetensors file: tensor '.*' ends at byte"):
        t5.load_hf(str(out))
    (out / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated safetensors file"):
        checkpoints.read_safetensors(str(out))
    (out / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(64))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        checkpoints.read_safetensors(str(out))


def test_pickled_pytorch_checkpoint_is_refused_without_unpickling(tmp_path):
    out = _copy_model(tmp_path)
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (out / "pytorch_model.bin").write_bytes(pickle.dumps(Trap()))
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refusing a pickled"):
        t5.load_hf(str(out))
    with pytest.raises(CheckpointError, match="refusing a pickled"):
        checkpoints.read_safetensors(str(out / "pytorch_model.bin"))
    assert not marker.exists()


def _write_sharded(tensors, out, shards=3):
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: np.ascontiguousarray(tensors[n]) for n in names[s::shards]}
        safetensors.numpy.save_file(part, str(out / shard))
        weight_map.update({n: shard for n in part})
    (out / checkpoints.SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_sharded_index_loads_the_same_model(tmp_path, tensors):
    out = _copy_model(tmp_path)
    _write_sharded(tensors, out)
    config, params = t5.load_hf(str(out))
    ref = np.load(os.path.join(FIXTURES, "tiny_v1_1_reference.npz"))
    out_logprobs = t5.first_step_logprobs(params, config, ref["input_ids"], ref["input_mask"])
    np.testing.assert_allclose(out_logprobs, ref["first_step_logprobs"], rtol=1e-4, atol=1e-4)
    sharded = checkpoints.read_safetensors(str(out / checkpoints.SAFETENSORS_INDEX))
    assert set(sharded) == set(tensors)


def test_sharded_index_inconsistencies(tmp_path, tensors):
    out = _copy_model(tmp_path)
    weight_map = _write_sharded(tensors, out)
    index = out / checkpoints.SAFETENSORS_INDEX
    moved = dict(weight_map)
    moved["shared.weight"] = next(s for s in set(weight_map.values()) if s != weight_map["shared.weight"])
    index.write_text(json.dumps({"weight_map": moved}))
    with pytest.raises(CheckpointError, match="'shared.weight'"):
        checkpoints.read_safetensors(str(out))
    index.write_text(json.dumps(dict(weight_map=dict(weight_map, extra="model-00009-of-00009.safetensors"))))
    with pytest.raises(CheckpointError, match=r"shard .*model-00009-of-00009\.safetensors not found"):
        checkpoints.read_safetensors(str(out))
    index.write_text("{}")
    with pytest.raises(CheckpointError, match="weight_map"):
        checkpoints.read_safetensors(str(out))


def test_bad_paths_give_clear_errors(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"nope/config\.json: file not found"):
        checkpoints.read_hf_config(missing)
    with pytest.raises(CheckpointError, match="nope: no such model directory"):
        checkpoints.read_safetensors(missing)
    empty = _copy_model(tmp_path, "empty")
    with pytest.raises(CheckpointError, match="neither model.safetensors nor model.safetensors.index.json"):
        t5.load_hf(str(empty))
    (empty / "config.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        checkpoints.read_hf_config(str(empty))
    with pytest.raises(CheckpointError, match="file not found"):
        checkpoints.read_safetensors_file(str(tmp_path / "x.safetensors"))


def test_remote_paths_go_through_beam_filesystems():
    remote = FakeRemoteFileSystem.PREFIX + os.path.abspath(V11)
    assert checkpoints.read_hf_config(remote)["d_model"] == 48
    with io.local_copy(io.join(remote, "config.json")) as local:
        assert os.path.exists(local) and not local.startswith(FakeRemoteFileSystem.PREFIX)
    assert not os.path.exists(local)  # the temporary copy is removed
    config, params = t5.load_hf(remote)
    assert config == t5.preset("tiny")
    np.testing.assert_array_equal(params["token_embedder"]["embedding"],
                                  checkpoints.read_safetensors(V11)["shared.weight"])


def test_unused_t5_1_0_cross_attention_bias_is_ignored_like_hf(tensors, config):
    legacy = dict(tensors, **{"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight":
                              np.zeros((16, 4), np.float32)})
    t5.params_from_hf_tensors(legacy, config)


def test_encoder_only_checkpoint(tmp_path, tensors, config):
    out = _copy_model(tmp_path)
    encoder_tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items() if not k.startswith(("decoder.", "lm_head"))}
    safetensors.numpy.save_file(encoder_tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensors"):
        t5.load_hf(str(out))
    cfg, params = t5.load_hf(str(out), encoder_only=True)
    assert set(params) == {"token_embedder", "encoder"}
    ref = np.load(os.path.join(FIXTURES, "tiny_v1_1_reference.npz"))
    np.testing.assert_allclose(t5.encode(params, cfg, ref["input_ids"], ref["input_mask"]), ref["encoder_hidden"],
                               rtol=1e-4, atol=1e-4)
    _, from_full = t5.load_hf(V11, encoder_only=True)  # decoder tensors of a full checkpoint are skipped
    assert set(from_full) == {"token_embedder", "encoder"}
    with pytest.raises(CheckpointError, match="unexpected tensors.*encoder.block.0.extra"):
        t5.params_from_hf_tensors(dict(encoder_tensors, **{"encoder.block.0.extra": np.zeros(1)}), config,
                                  encoder_only=True)
