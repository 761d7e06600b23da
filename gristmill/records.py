"""The scored-record schema: feature names, tf.train.Example (de)serialisation and TFRecord framing.

Feature names are the interface between gristmill's stages, so every name lives here:

| feature                          | type  | meaning                                               |
|----------------------------------|-------|-------------------------------------------------------|
| `id`                             | bytes | stable document id: hex of a 128-bit hash of url, text |
| `text`, `url`, `timestamp`       | bytes | as read from the corpus                               |
| `source`                         | bytes | the input file the document came from                 |
| `score/<scorer>/<model>`         | float | e.g. `score/askllm/flan-t5-xl`, `score/density/minilm` |
| `logp/<scorer>/<model>/<token>`  | float | e.g. `logp/askllm/flan-t5-xl/yes`                     |
| `tokens/<tokenizer>`             | int64 | token count of the text under a tokenizer             |
| `truncated/<scorer>`             | int64 | 1 when the scorer saw a cut document                  |
| `cluster/<name>`, `dist/<name>`  | int64, float | clustering baselines                           |

A record travels through Beam as a plain `dict[str, value]`: `str` for the text-like features
above, `bytes` for any other bytes feature, `float` / `int` for scalars and lists of those for
multi-valued features. Scorers add keys and keep every other key, so scorers chain.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, NamedTuple

import google_crc32c
import numpy as np

from gristmill import example_proto as pb

ID = "id"
TEXT = "text"
URL = "url"
TIMESTAMP = "timestamp"
SOURCE = "source"
STRING_FEATURES = (ID, TEXT, URL, TIMESTAMP, SOURCE)

Record = dict[str, Any]


def score_feature(scorer: str, model: str) -> str:
    """Name of the score a scorer gives under a model, e.g. `score/askllm/flan-t5-xl`."""
    return f"score/{scorer}/{model}"


def logp_feature(scorer: str, model: str, token: str) -> str:
    """Name of a stored log-probability, e.g. `logp/askllm/flan-t5-xl/yes`."""
    return f"logp/{scorer}/{model}/{token}"


def tokens_feature(tokenizer: str) -> str:
    """Name of the token count of the text under a tokenizer, e.g. `tokens/smollm2-135m-instruct`."""
    return f"tokens/{tokenizer}"


def truncated_feature(scorer: str) -> str:
    """Name of the flag set when a scorer had to cut the document, e.g. `truncated/askllm`."""
    return f"truncated/{scorer}"


def cluster_feature(name: str) -> str:
    """Name of a cluster assignment of the clustering baselines."""
    return f"cluster/{name}"


def dist_feature(name: str) -> str:
    """Name of a distance feature of the clustering baselines."""
    return f"dist/{name}"


def _feature(name: str, value: Any) -> pb.Feature:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"feature {name!r} has an empty list: its type cannot be written")
    first = values[0]
    if isinstance(first, (str, bytes)):
        raw = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        return pb.Feature(bytes_list=pb.BytesList(value=raw))
    if isinstance(first, bool) or isinstance(first, int):
        return pb.Feature(int64_list=pb.Int64List(value=[int(v) for v in values]))
    if isinstance(first, float) or hasattr(first, "dtype"):
        if hasattr(first, "dtype") and first.dtype.kind in "iub":
            return pb.Feature(int64_list=pb.Int64List(value=[int(v) for v in values]))
        return pb.Feature(float_list=pb.FloatList(value=[float(v) for v in values]))
    raise TypeError(f"feature {name!r} has unsupported type {type(first).__name__}")


def to_example(record: Mapping[str, Any]) -> pb.Example:
    """Builds a tf.train.Example from a record dict; `id` and `text` are required."""
    for required in (ID, TEXT):
        if required not in record:
            raise ValueError(f"record has no {required!r} feature (keys: {sorted(record)})")
    features = {name: _feature(name, value) for name, value in record.items() if value is not None}
    return pb.Example(features=pb.Features(feature=features))


def serialize(record: Mapping[str, Any]) -> bytes:
    """Serialises a record dict to tf.train.Example bytes, features in sorted order (stable bytes).

    The protobuf wire format is written directly: building messages cost more than everything
    else a light job does per record. A str feature and a single float, the common cases, take
    a fast path whose lengths are computed, so each record is joined once. The bytes are those
    of `to_example(record).SerializeToString(deterministic=True)` (tests/test_records.py checks
    both against TensorFlow's own classes).
    """
    if ID not in record or TEXT not in record:
        missing = ID if ID not in record else TEXT
        raise ValueError(f"record has no {missing!r} feature (keys: {sorted(record)})")
    parts = [b""]  # the Example's own tag and length, once the features' size is known
    size = 0
    for name in _sorted_names(tuple(record)):
        value = record[name]
        if type(value) is str:  # every record has four or five of these: _entry's str case, inlined
            raw = value.encode("utf-8")
            n = len(raw)
            if n < _INLINE_LENGTH:  # every length prefix below fits 2 bytes: table lookups, no calls
                n_prefix = _SMALL_VARINTS[n]
                body = n + 1 + len(n_prefix)
                body_prefix = _SMALL_VARINTS[body]
                feature = body + 1 + len(body_prefix)
                feature_prefix = _SMALL_VARINTS[feature]
                key = _key_field(name)
                head = b"".join((b"\x0a", _varint(len(key) + len(feature_prefix) + feature), key, feature_prefix,
                                 b"\x0a", body_prefix, b"\x0a", n_prefix))
                parts += (head, raw)
                size += len(head) + n
                continue
        if value is not None:
            part = _entry(name, value)
            parts.append(part)
            size += len(part)
    parts[0] = b"\x0a" + _varint(size)
    return b"".join(parts)


def _entry(name: str, value: Any) -> bytes:
    """One map entry of Features (field 1: key, value Feature) with its tag and length."""
    kind = type(value)
    if kind is str:
        raw = value.encode("utf-8")
        n = len(raw)
        body = n + 1 + _varint_size(n)            # BytesList: field 1, length, bytes
        feature = body + 1 + _varint_size(body)    # Feature: bytes_list (field 1), length, BytesList
        key = _key_field(name)
        entry = len(key) + _varint_size(feature) + feature
        return b"".join((b"\x0a", _varint(entry), key, _varint(feature), b"\x0a", _varint(body), b"\x0a",
                         _varint(n), raw))
    if kind is float:
        try:
            return _float_prefix(name) + _PACK_F32(value)
        except (OverflowError, struct.error):  # beyond float32's range: the general path stores +-inf
            pass
    feature = _encode_feature(name, value)
    entry = _key_field(name) + _varint(len(feature)) + feature
    return b"\x0a" + _varint(len(entry)) + entry


_PACK_F32 = struct.Struct("<f").pack


@functools.lru_cache(maxsize=4096)
def _float_prefix(name: str) -> bytes:
    """Everything of a single-float feature's map entry before its 4 value bytes."""
    key = _key_field(name)
    feature = b"\x12\x06\x0a\x04"  # float_list (field 2), 6 bytes: packed values (field 1), 4 bytes
    return b"\x0a" + _varint(len(key) + 1 + len(feature) + 4) + key + _varint(len(feature) + 4) + feature


@functools.lru_cache(maxsize=1024)
def _sorted_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """A record's feature names in deterministic protobuf's map order (records share a few key sets)."""
    return tuple(sorted(names, key=_map_order))


def _varint_size(n: int) -> int:
    """Bytes in the varint of n (n >= 0)."""
    return 1 if n < 0x80 else 2 if n < 0x4000 else (n.bit_length() + 6) // 7


def add_features(example: bytes, features: Mapping[str, Any]) -> bytes:
    """`serialize(deserialize(example) | features)` for an Example `serialize` wrote, without parsing it.

    Pass 2 of the corpus jobs adds one score to every record it rewrites: splicing the new map
    entries into the sorted entries costs a few varint reads a record, where parsing and writing
    every value again cost several times more. An Example not in `serialize`'s form (another
    writer's map order) is parsed and written again, so the result is the same either way.
    """
    try:
        entries = _map_entries(example)
    except ValueError:  # a varint past the end: parsing names the problem
        entries = None
    if entries is None:
        return serialize({**deserialize(example), **features})
    new = {name: _entry(name, value) for name, value in features.items() if value is not None}
    kept = [(name, span) for name, span in entries if name not in features]
    names = _sorted_names(tuple(name for name, _ in kept) + tuple(new))
    spans = dict(kept)
    parts = [new[name] if name in new else example[spans[name][0]:spans[name][1]] for name in names]
    body = b"".join(parts)
    return b"\x0a" + _varint(len(body)) + body if body else b"\x0a\x00"


def _map_entries(example: bytes) -> list[tuple[str, tuple[int, int]]] | None:
    """(feature name, (start, end) of its whole map entry) in order, or None if not serialize's form."""
    size = len(example)
    if size < 2 or example[0] != 0x0A:
        return None
    body_length, at = _read_varint(example, 1)
    if at + body_length != size:
        return None
    out, previous = [], None
    while at < size:
        start = at
        if example[at] != 0x0A:
            return None
        length, at = _read_varint(example, at + 1)
        end = at + length
        if end > size or example[at] != 0x0A:
            return None
        key_length = example[at + 1]
        if key_length >= 0x80:  # a name of 128 bytes or more
            key_length, key_at = _read_varint(example, at + 1)
        else:
            key_at = at + 2
        if key_at + key_length > end:
            return None
        name = _key_name(example[key_at:key_at + key_length])
        order = _map_order(name) if name is not None else None
        if order is None or (previous is not None and order <= previous):
            return None
        out.append((name, (start, end)))
        previous, at = order, end
    return out


@functools.lru_cache(maxsize=4096)
def _key_name(key: bytes) -> str | None:
    """A map key's name (None for bytes that are not UTF-8); records share a few names."""
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at data[at:] and the offset after it."""
    if at < len(data) and data[at] < 0x80:
        return data[at], at + 1
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("a varint runs past the end of the message")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


@functools.lru_cache(maxsize=4096)
def _key_field(name: str) -> bytes:
    """A map entry's key field and the value field's tag (feature names repeat in every record)."""
    key = name.encode("utf-8")
    return b"\x0a" + _varint(len(key)) + key + b"\x12"


@functools.lru_cache(maxsize=4096)
def _map_order(name: str) -> bytes:
    """Deterministic protobuf's map-key order (upb): by UTF-8 bytes, but a key before its own prefixes
    ("id" before "i"). UTF-8 never holds 0xFF, so the sentinel sorts after every real byte."""
    return name.encode("utf-8") + b"\xff"


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int below 2**64."""
    if n < 0x4000:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7)) for n in range(0x4000)]
_INLINE_LENGTH = 0x4000 - 8  # a text this long or longer may need a 3-byte prefix somewhere: the general path
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _encode_feature(name: str, value: Any) -> bytes:
    """One tf.train.Feature's bytes: bytes_list (1), float_list (2, packed) or int64_list (3, packed)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"feature {name!r} has an empty list: its type cannot be written")
    first = values[0]
    if isinstance(first, (str, bytes)):
        parts = []
        for v in values:
            raw = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            parts.append(b"\x0a" + _varint(len(raw)) + raw)
        body, field = b"".join(parts), b"\x0a"
    elif isinstance(first, (bool, int)) or (hasattr(first, "dtype") and first.dtype.kind in "iub"):
        ints = [int(v) for v in values]
        if any(not _INT64_MIN <= v <= _INT64_MAX for v in ints):
            raise ValueError(f"feature {name!r}: value out of range for int64")
        packed = b"".join(_varint(v & 0xFFFFFFFFFFFFFFFF) for v in ints)
        body, field = b"\x0a" + _varint(len(packed)) + packed, b"\x1a"
    elif isinstance(first, float) or hasattr(first, "dtype"):
        try:
            packed = struct.pack(f"<{len(values)}f", *values)
        except (OverflowError, struct.error):  # beyond float32's range: protobuf stores +-inf
            with np.errstate(over="ignore"):
                packed = np.asarray([float(v) for v in values], dtype=np.float64).astype("<f4").tobytes()
        body, field = b"\x0a" + _varint(len(packed)) + packed, b"\x12"
    else:
        raise TypeError(f"feature {name!r} has unsupported type {type(first).__name__}")
    return field + _varint(len(body)) + body


def from_example(example: pb.Example) -> Record:
    """Turns a tf.train.Example into a record dict (single values unwrapped, lists kept as lists)."""
    record: Record = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            values: list[Any] = list(feature.bytes_list.value)
            if name in STRING_FEATURES:
                values = [v.decode("utf-8") for v in values]
        elif kind == "float_list":
            values = list(feature.float_list.value)
        elif kind == "int64_list":
            values = list(feature.int64_list.value)
        else:
            values = []
        record[name] = values[0] if len(values) == 1 else values
    return record


def deserialize(data: bytes) -> Record:
    """Parses tf.train.Example bytes into a record dict."""
    return from_example(pb.Example.FromString(data))


# --- TFRecord framing -----------------------------------------------------------------------
# Each record: uint64 length, uint32 masked crc32c(length), data, uint32 masked crc32c(data).

class TFRecordError(Exception):
    """A TFRecord file is truncated or fails its checksums."""


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    return _mask(google_crc32c.value(data))


def encode_tfrecord(data: bytes) -> bytes:
    """Frames one record in the TFRecord format that tf.data.TFRecordDataset reads."""
    return b"".join(_framed(data))


def _framed(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    length = _PACK_U64(len(data))
    return length, _PACK_U32(_masked_crc(length)), data, _PACK_U32(_masked_crc(data))


_PACK_U64, _PACK_U32 = struct.Struct("<Q").pack, struct.Struct("<I").pack


def tfrecord_bytes(recs: Iterable[Mapping[str, Any] | bytes]) -> bytes:
    """Records (dicts, or tf.train.Examples already serialised) as the bytes of a TFRecord file
    (how every output file is written), joined once."""
    parts: list[bytes] = []
    for record in recs:
        parts += _framed(record if isinstance(record, bytes) else serialize(record))
    return b"".join(parts)


MAX_TFRECORD_BYTES = 2**31 - 1  # the most a serialised protobuf (a tf.train.Example) can hold
_READ_CHUNK = 1 << 20


class OversizedRecord(NamedTuple):
    """Stands for a record that iter_tfrecords verified but did not keep: its payload is over max_length."""

    length: int


def _read_payload(stream: BinaryIO, length: int, keep: bool, index: int) -> tuple[bytes, int]:
    """Reads a payload in pieces of at most 1 MiB: (its bytes, or b"" unless keep; its crc32c)."""
    crc, pieces, left = 0, [], length
    while left:
        piece = stream.read(min(left, _READ_CHUNK))
        if not piece:
            raise TFRecordError(f"record {index}: truncated payload ({length - left} of {length} bytes)")
        crc = google_crc32c.extend(crc, piece)
        if keep:
            pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces), crc


def iter_tfrecords(stream: BinaryIO, max_length: int | None = None) -> Iterator[bytes | OversizedRecord]:
    """Yields the payloads of a TFRecord stream, checking both checksums of every record.

    Payloads are read in bounded pieces, so a header declaring more bytes than the stream holds
    costs no memory. A payload over max_length is verified without being kept and yielded as an
    OversizedRecord. Raises TFRecordError at the first truncated or corrupt record, or one
    declaring over MAX_TFRECORD_BYTES; the framing cannot be resynchronised after that, so the
    rest of the stream is unreadable.
    """
    index = 0
    while True:
        header = stream.read(12)
        if not header:
            return
        index += 1
        if len(header) < 12:
            raise TFRecordError(f"record {index}: truncated length header ({len(header)} of 12 bytes)")
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:])
        if _masked_crc(header[:8]) != length_crc:
            raise TFRecordError(f"record {index}: length checksum mismatch")
        if length > MAX_TFRECORD_BYTES:
            raise TFRecordError(f"record {index}: declares {length} bytes, over the {MAX_TFRECORD_BYTES} "
                                f"a TFRecord of tf.train.Example can hold")
        keep = max_length is None or length <= max_length
        data, crc = _read_payload(stream, length, keep, index)
        trailer = stream.read(4)
        if len(trailer) < 4:
            raise TFRecordError(f"record {index}: truncated payload checksum ({len(trailer)} of 4 bytes)")
        if _mask(crc) != struct.unpack("<I", trailer)[0]:
            raise TFRecordError(f"record {index}: payload checksum mismatch")
        yield data if keep else OversizedRecord(length)


# --- Reading scored outputs back (outside Beam: training, evaluation, reports, tests) ---------

MANIFEST_FILE = "manifest.json"


class IncompleteRunError(FileNotFoundError):
    """A gristmill output directory has no manifest: its job did not finish."""


class CorruptOutputError(ValueError):
    """A file a manifest lists is missing, short or changed since its run wrote it."""


def read_manifest(output_dir: str) -> dict[str, Any]:
    """The manifest a job wrote into output_dir (its last file)."""
    from gristmill import io
    path = io.join(output_dir, MANIFEST_FILE)
    if not io.exists(path):
        raise IncompleteRunError(
            f"{output_dir} has no {MANIFEST_FILE}: the run that writes there did not finish "
            f"(or it is not a gristmill output directory); rerun the job to complete it")
    return io.read_json(path)


def record_files(spec: str) -> list[str]:
    """The scored TFRecord files a path names: a gristmill output directory or a file glob.

    A directory is read through its manifest, which lists exactly the files of the finished run,
    so stale shards of an earlier run and partial files of a running one are never read; each
    file is checked against the size and CRC32C the manifest records (`verify_listed`).
    """
    from gristmill import io
    spec = str(spec)
    if not any(ch in spec for ch in "*?[") and io.is_dir(spec):
        manifest = read_manifest(spec)
        names = manifest.get("outputs", {}).get("records", [])
        verify_listed(spec, manifest, names)
        return [io.join(spec, name) for name in names]
    return io.glob(spec)


def verify_listed(output_dir: str, manifest: dict[str, Any], names: list[str]) -> None:
    """Raises CorruptOutputError naming the first of `names` that is not as the manifest records it.

    One listing of the directory gives every size (and on GCS every CRC32C); locally the files
    are read once to check their CRC32C. A manifest of an older gristmill (no `files`) is trusted.
    """
    from gristmill import io
    expected = manifest.get("files")
    if expected is None:
        return
    listing = io.list_stats(output_dir)
    for name in names:
        path = io.join(output_dir, name)
        if name not in expected:
            raise CorruptOutputError(f"{path}: the manifest of {output_dir} lists it without a checksum")
        problem = io.verify(path, expected[name], listing.get(path)) if path in listing else "is missing"
        if problem:
            raise CorruptOutputError(
                f"{path} {problem}: it is not the file the run that wrote {output_dir} finished with; rerun that "
                f"job (it redoes the unit) before reading it")


def iter_scored_records(spec: str) -> Iterator[Record]:
    """Reads scored records back as dicts from an output directory or a glob, in file order."""
    from gristmill import io
    for path in record_files(spec):
        with io.open_read(path) as f:
            for data in iter_tfrecords(f):
                yield deserialize(data)
