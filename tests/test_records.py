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


def test_serialized_bytes_equal_tensorflows_own_example():
    """gristmill.example_proto declares tf.train.Example without TensorFlow: the bytes must be TF's bytes."""
    from tensorflow.core.example import example_pb2, feature_pb2

    def tf_feature(value):
        values = value if isinstance(value, list) else [value]
        if isinstance(values[0], (str, bytes)):
            raw = [v.encode() if isinstance(v, str) else v for v in values]
            return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=raw))
        if isinstance(values[0], int):
            return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values))
        return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values))

    rng = np.random.default_rng(0)
    # text lengths around the varint size steps (1, 2 and 3 bytes) of each nested length prefix
    lengths = [0, 1, 40, 60, 61, 62, 63, 64, 8186, 8187, 8188, 8189, 8190, 8191, 8192, 70000]
    for i in range(300):
        text = "é" * lengths[i % len(lengths)] + "x" * (i % 3)
        record = {"id": f"{i:032x}", "text": text, "url": "https://x/" + str(i), "big": 1e40, "nan": float("nan"),
                  "score/a/b": float(rng.random()), "tokens/t": int(rng.integers(-5, 10**12)),
                  "multi": [float(x) for x in rng.random(int(rng.integers(1, 5)))], "raw": b"\x00\xff",
                  "i": [-1, 2**63 - 1, -2**63], "t": [1e40, -0.0, float("nan")], "tex": "", "ä": 3}
        ours = records.serialize(record)
        theirs = example_pb2.Example(features=feature_pb2.Features(
            feature={k: tf_feature(v) for k, v in record.items()})).SerializeToString(deterministic=True)
        assert ours == theirs
        assert ours == records.to_example(record).SerializeToString(deterministic=True)


def test_add_features_equals_writing_the_record_again():
    """The splice gives serialize's bytes for the merged record: new names in map order, a name already
    there replaced, a None value removes it; an Example in another map order is parsed and written again."""
    rng = np.random.default_rng(1)
    names = ["score/density/minilm", "a", "id", "i", "zz", "score/random/seed-0", "ä", "text", "tokens/t"]
    for i in range(300):
        record = {"id": f"{i:032x}", "text": "é" * int(rng.integers(0, 9000)), "url": "https://x/" + str(i),
                  "score/random/seed-0": float(rng.random()), "tokens/t": int(rng.integers(0, 10**6))}
        added = {str(rng.choice(names)): float(rng.random()) for _ in range(int(rng.integers(1, 4)))}
        if i % 7 == 0:
            added["tokens/t"] = None
        added.pop("id", None), added.pop("text", None)
        example = records.serialize(record)
        expected = records.serialize({**record, **added})  # a None value: the feature is absent
        assert records.add_features(example, added) == expected
    record = {"id": "x", "text": "t", "url": "u"}
    reversed_order = b"".join(  # a valid Example whose map entries are not in serialize's order
        b"\x0a" + records._varint(len(e)) + e for e in
        [records._key_field(k) + records._varint(len(f)) + f for k, f in
         ((k, records._encode_feature(k, v)) for k, v in sorted(record.items(), reverse=True))])
    example = b"\x0a" + records._varint(len(reversed_order)) + reversed_order
    assert records.deserialize(example) == record
    assert records.add_features(example, {"s": 1.5}) == records.serialize({**record, "s": 1.5})
