"""The record schema and TFRecord framing, checked against TensorFlow's own reader and writer."""

import io

import numpy as np
import pytest
import tensorflow as tf

from gristmill import records


def test_feature_names():
    assert records.score_feature("askllm", "flan-t5-xl") == "score/askllm/flan-t5-xl"
    assert records.logp_feature("askllm", "m", "yes") == "logp/askllm/m/yes"
    assert records.tokens_feature("t5") == "tokens/t5"
    assert records.truncated_feature("askllm") == "truncated/askllm"


def test_round_trip_through_tf_data(tmp_path):
    record = {"id": "abc", "text": "héllo wörld", "url": "https://x", "score/a/b": 0.25, "tokens/t": 7,
              "multi": [1.0, 2.0]}
    path = tmp_path / "r.tfrecord"
    path.write_bytes(records.encode_tfrecord(records.serialize(record)))
    spec = {"id": tf.io.FixedLenFeature([], tf.string), "text": tf.io.FixedLenFeature([], tf.string),
            "score/a/b": tf.io.FixedLenFeature([], tf.float32), "tokens/t": tf.io.FixedLenFeature([], tf.int64),
            "multi": tf.io.FixedLenFeature([2], tf.float32)}
    (raw,) = list(tf.data.TFRecordDataset([str(path)]))
    parsed = tf.io.parse_single_example(raw, spec)
    assert parsed["text"].numpy().decode() == "héllo wörld"
    assert float(parsed["score/a/b"]) == 0.25 and int(parsed["tokens/t"]) == 7
    np.testing.assert_array_equal(parsed["multi"].numpy(), [1.0, 2.0])
    assert records.deserialize(raw.numpy()) == record


def test_reads_files_written_by_tensorflow(tmp_path):
    path = str(tmp_path / "tf.tfrecord")
    payloads = [b"one", b"", b"three" * 1000]
    with tf.io.TFRecordWriter(path) as writer:
        for p in payloads:
            writer.write(p)
    with open(path, "rb") as f:
        assert list(records.iter_tfrecords(f)) == payloads


@pytest.mark.parametrize("cut", [3, 12, 20])
def test_truncated_or_corrupt_framing_raises(cut):
    data = records.encode_tfrecord(b"payload-bytes")
    with pytest.raises(records.TFRecordError, match="record 1"):
        list(records.iter_tfrecords(io.BytesIO(data[:cut])))
    flipped = data[:14] + bytes([data[14] ^ 1]) + data[15:]
    with pytest.raises(records.TFRecordError, match="checksum"):
        list(records.iter_tfrecords(io.BytesIO(flipped)))


def test_missing_required_feature():
    with pytest.raises(ValueError, match="'text'"):
        records.serialize({"id": "x"})
