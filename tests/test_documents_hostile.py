"""Hostile input: every bad record is one dead letter, reading never raises, memory stays bounded.

Run as a module to measure the peak RSS of reading a gzip bomb and a corpus of 1 MB documents
(see BENCHMARKS.md): `python -m tests.test_documents_hostile DIR`.
"""

import gzip
import io
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.example import example_pb2, feature_pb2

from gristmill import documents, records
from gristmill.testing import MAX_BYTES, good_doc

CONFIG = documents.ReaderConfig(max_document_bytes=MAX_BYTES, keep_fields=("lang",))
LINE_LIMIT = documents.record_limit(CONFIG, "json")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _line(obj) -> bytes:
    return json.dumps(obj).encode()  # ensure_ascii: a lone surrogate becomes the escape "\ud800"


def _frame(payload: bytes, length: int | None = None) -> bytes:
    """A TFRecord frame whose header may declare a length other than the payload's (checksum valid)."""
    header = struct.pack("<Q", len(payload) if length is None else length)
    return (header + struct.pack("<I", records._masked_crc(header)) + payload
            + struct.pack("<I", records._masked_crc(payload)))


def _example(**features) -> bytes:
    return example_pb2.Example(features=feature_pb2.Features(feature=features)).SerializeToString()


def _bytes(*values: bytes) -> feature_pb2.Feature:
    return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=list(values)))


def gzip_bomb(path: str, mib: int, after: bytes = b"") -> None:
    """A small .gz expanding to one line of mib MiB (a JSON text), then `after`."""
    member = gzip.compress(b"a" * (1 << 20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(b'{"text": "'))
        for _ in range(mib):
            f.write(member)
        f.write(gzip.compress(b'"}\n' + after))


@pytest.fixture
def hostile(tmp_path):
    """Files of poison records. Returns (dir, expected, documents).

    expected maps (file name, record number) -> reason, one entry per bad record; documents maps
    a file name to its number of good records.
    """
    deep = b'{"text": "deep", "x": ' + b"[" * 1100 + b"]" * 1100 + b"}"
    rows = [
        _line(good_doc(1)),                                        # 1
        _line({"text": "lone \ud800 surrogate"}),                  # 2 invalid_utf8
        _line({"text": "t", "url": "https://x/\udfff"}),           # 3 invalid_utf8
        _line({"text": "t", "lang": ["en", "\ud800"]}),            # 4 invalid_utf8 (a kept field)
        deep,                                                      # 5 invalid_json, not a RecursionError
        _line({"text": "surrogate elsewhere", "other": "\ud800"}),  # 6 kept: a field nobody reads
        _line({"text": "a real pair \U0001F600", "lang": "\U0001F600"}),  # 7 a surrogate pair is fine
        b"this is not json",                                       # 8 invalid_json
        b"[1, 2, 3]",                                              # 9 not_an_object
        _line({"url": "u"}),                                       # 10 missing_text
        _line({"text": 5}),                                        # 11 non_string_text
        _line({"text": "   \t"}),                                  # 12 empty_text
        b'{"text": "bad \xff\xfe bytes"}',                         # 13 invalid_utf8
        _line({"text": "x" * (MAX_BYTES + 1)}),                    # 14 too_large (the text)
        _line({"text": "y" * (LINE_LIMIT + 1)}),                   # 15 too_large (the line, never held)
        b"",                                                       # 16 empty_text (a blank line)
        b'{"text": ' + b"1" * 5000 + b"}",                         # 17 invalid_json (int digits limit)
        _line(good_doc(2)),                                        # 18
    ]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    (tmp_path / "b.txt").write_bytes(b"plain line\n" + b"z" * (MAX_BYTES + 3) + b"\n\xff\xfe\n\n" + b"z" * 50)
    gzip_bomb(str(tmp_path / "c.jsonl.gz"), 4, after=_line(good_doc(3)) + b"\n")
    whole = gzip.compress(b"".join(_line(good_doc(i)) + b"\n" for i in range(10, 60)))
    (tmp_path / "d.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])
    (tmp_path / "e.tfrecord").write_bytes(_frame(b"", 2**40)[:15])
    good_tf = [_frame(records.serialize({"id": f"t{i}", "text": f"tf doc {i}"})) for i in range(3)]
    (tmp_path / "f.tfrecord").write_bytes(b"".join([
        good_tf[0],
        _frame(_example(text=_bytes(b"q" * (LINE_LIMIT + 1)))),                  # 2 too_large, skipped
        _frame(_example(text=_bytes(b"t"), id=feature_pb2.Feature(
            int64_list=feature_pb2.Int64List(value=[7])))),                       # 3 invalid_example
        _frame(_example(txet=_bytes(b"t"))),                                     # 4 missing_text
        _frame(b"\xff\xff\xff\xff"),                                             # 5 invalid_example
        _frame(_example(text=_bytes(b"\xed\xa0\x80"))),                          # 6 invalid_utf8
        _frame(_example(text=_bytes(b"t", b"u"))),                               # 7 non_string_text
        good_tf[1],                                                              # 8
        _frame(b"x" * 10, 2**31 - 2),                                            # 9 corrupt_tfrecord
    ]))
    (tmp_path / "g.tfrecord").write_bytes(good_tf[2] + _frame(b"abc")[:-1])
    os.mkfifo(tmp_path / "h.jsonl")
    (tmp_path / "i.jsonl").mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "j.jsonl"))
    expected = {("a.jsonl", n): r for n, r in [
        (2, "invalid_utf8"), (3, "invalid_utf8"), (4, "invalid_utf8"), (5, "invalid_json"),
        (8, "invalid_json"), (9, "not_an_object"), (10, "missing_text"), (11, "non_string_text"),
        (12, "empty_text"), (13, "invalid_utf8"), (14, "too_large"), (15, "too_large"), (16, "empty_text"),
        (17, "invalid_json")]}
    expected.update({("b.txt", 2): "too_large", ("b.txt", 3): "invalid_utf8", ("b.txt", 4): "empty_text",
                     ("c.jsonl.gz", 1): "too_large", ("d.jsonl.gz", 23): "truncated_gzip",
                     ("e.tfrecord", 1): "corrupt_tfrecord"})
    expected.update({("f.tfrecord", n): r for n, r in [
        (2, "too_large"), (3, "invalid_example"), (4, "missing_text"), (5, "invalid_example"),
        (6, "invalid_utf8"), (7, "non_string_text"), (9, "corrupt_tfrecord")]})
    expected.update({("g.tfrecord", 2): "corrupt_tfrecord", ("h.jsonl", 0): "unreadable_file",
                     ("i.jsonl", 0): "unreadable_file", ("j.jsonl", 0): "unreadable_file"})
    good = {"a.jsonl": 4, "b.txt": 2, "c.jsonl.gz": 1, "d.jsonl.gz": 22, "e.tfrecord": 0, "f.tfrecord": 2,
            "g.tfrecord": 1, "h.jsonl": 0, "i.jsonl": 0, "j.jsonl": 0}
    yield tmp_path, expected, good
    server.close()


def _read(path: str, config: documents.ReaderConfig = CONFIG):
    numbered = list(documents.read_numbered(path, config))
    docs = [(n, i) for n, i in numbered if not isinstance(i, documents.DeadLetter)]
    dead = [i for _, i in numbered if isinstance(i, documents.DeadLetter)]
    return numbered, docs, dead


def test_each_poison_record_is_one_dead_letter(hostile):
    folder, expected, good = hostile
    got, counts = {}, {}
    for name in sorted(good):
        numbered, docs, dead = _read(str(folder / name))
        assert [n for n, _ in numbered] == sorted({n for n, _ in numbered})  # one item per record
        for d in dead:
            assert d.source == str(folder / name) and d.detail
            json.loads(d.to_json().encode("utf-8"))  # a clean message, whatever the input held
            got[(name, d.record)] = d.reason
        counts[name] = len(docs)
        assert len(numbered) == len(docs) + len(dead)  # read = documents + dead letters
    assert got == expected
    assert counts == good
    texts = {d["text"] for _, d in _read(str(folder / "a.jsonl"))[1]}
    assert texts == {good_doc(1)["text"], good_doc(2)["text"], "surrogate elsewhere", "a real pair \U0001F600"}


def test_poison_details_name_the_problem(hostile):
    folder, _, _ = hostile
    dead = {d.record: d for d in _read(str(folder / "a.jsonl"))[2]}
    assert "'url' holds a lone surrogate" in dead[3].detail and "'lang'" in dead[4].detail
    assert "nested too deeply" in dead[5].detail
    assert f"over the limit of {LINE_LIMIT}" in dead[15].detail and dead[15].excerpt.startswith('{"text": "yyy')
    (bomb,) = _read(str(folder / "c.jsonl.gz"))[2]
    assert f"line is {4 * 2**20 + 13} bytes" in bomb.detail
    (huge,) = _read(str(folder / "e.tfrecord"))[2]
    assert f"declares {2**40} bytes" in huge.detail
    assert "not a regular file but a FIFO" in _read(str(folder / "h.jsonl"))[2][0].detail
    assert "a directory" in _read(str(folder / "i.jsonl"))[2][0].detail
    assert "a socket" in _read(str(folder / "j.jsonl"))[2][0].detail


def test_any_parser_error_is_a_dead_letter(tmp_path, monkeypatch):
    def fragile(raw, source, number, config):
        if b"boom" in raw:
            raise KeyError("a bug \ud800")
        return real(raw, source, number, config)

    real = documents.parse_json_line
    monkeypatch.setattr(documents, "parse_json_line", fragile)
    path = tmp_path / "x.jsonl"
    path.write_bytes(_line(good_doc(1)) + b'\n{"text": "boom"}\n' + _line(good_doc(2)) + b"\n")
    numbered, docs, dead = _read(str(path))
    assert [n for n, _ in docs] == [1, 3]
    assert [(d.record, d.reason) for d in dead] == [(2, "parse_error")]
    assert "KeyError" in dead[0].detail and "boom" in dead[0].excerpt
    assert json.loads(dead[0].to_json().encode("utf-8"))["detail"].endswith("\\ud800'")


def test_reader_limits_tfrecord_lengths():
    frames = _frame(b"ok") + _frame(b"x" * 100) + _frame(b"ok2")
    got = list(records.iter_tfrecords(io.BytesIO(frames), max_length=10))
    assert got == [b"ok", records.OversizedRecord(100), b"ok2"]
    assert list(records.iter_tfrecords(io.BytesIO(frames))) == [b"ok", b"x" * 100, b"ok2"]
    with pytest.raises(records.TFRecordError, match="truncated payload \\(14 of 2147483646"):
        list(records.iter_tfrecords(io.BytesIO(_frame(b"x" * 10, 2**31 - 2))))


def test_score_random_completes_on_the_hostile_corpus(hostile, tmp_path_factory):
    from gristmill.pipelines import kit, score_random  # Beam: not imported by the memory-limited child

    folder, expected, good = hostile
    out = str(tmp_path_factory.mktemp("scored") / "out")
    manifest = score_random.run(["--input", str(folder / "*"), "--output", out, "--seed=3",
                                 f"--max_document_bytes={MAX_BYTES}", "--keep_fields=lang"])
    with open(os.path.join(out, kit.DEAD_LETTER_FILE)) as f:
        dead = [json.loads(line) for line in f]
    got = {(os.path.basename(d["source"]), d["record"]): d["reason"] for d in dead}
    special = {"h.jsonl", "i.jsonl", "j.jsonl"}  # the input glob may leave out what is not a regular file
    assert {k: v for k, v in got.items() if k[0] not in special} == {
        k: v for k, v in expected.items() if k[0] not in special}
    assert all(got[k] == "unreadable_file" for k in got if k[0] in special)
    counts = manifest["counts"]
    assert manifest["reconciled"] and counts["read"] == counts["written"] + counts["dead_lettered"]
    assert counts["written"] == sum(good.values()) and counts["dead_lettered"] == len(dead)


# ------------------------------------------------------------------------------ properties


def _check_items(path: str, config: documents.ReaderConfig) -> list:
    """Reads path and checks every item is a well-formed document or dead letter; returns them."""
    numbered = list(documents.read_numbered(path, config))
    numbers = [n for n, _ in numbered]
    assert numbers == sorted(set(numbers))
    for number, item in numbered:
        if isinstance(item, documents.DeadLetter):
            assert item.reason in documents.REASONS and item.source == path and item.record == number
            assert item.detail
            item.to_json().encode("utf-8")
        else:
            assert isinstance(item, dict) and all(isinstance(item[k], str) for k in records.STRING_FEATURES)
            assert item[records.TEXT].strip() and len(item[records.TEXT].encode("utf-8")) <= config.max_document_bytes
            records.serialize(item)  # the writer can store it
    return numbered


_SUFFIXES = (".jsonl", ".txt", ".tfrecord", ".jsonl.gz", ".tfrecord.gz")


def _write(folder: str, suffix: str, data: bytes) -> str:
    path = os.path.join(folder, "input" + suffix)
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if suffix.endswith(".gz") else data)
    return path


@PROPERTY
@given(data=st.binary(max_size=2000), suffix=st.sampled_from(_SUFFIXES), cut=st.integers(0, 100))
def test_arbitrary_bytes_never_raise(data, suffix, cut):
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, suffix, data)
        if cut and suffix.endswith(".gz"):
            raw = open(path, "rb").read()
            open(path, "wb").write(raw[: len(raw) * cut // 100])
        _check_items(path, documents.ReaderConfig(max_document_bytes=64, keep_fields=("lang", "k")))


_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ANY_TEXT, inner, max_size=4),
    max_leaves=12)
_FIELD = st.sampled_from(["text", "url", "lang", "k", "timestamp", "date", "id", "source"])
_OBJECT = st.builds(lambda text, rest: {**rest, "text": text}, _ANY_TEXT | _JSON,
                    st.dictionaries(_FIELD | _ANY_TEXT, _JSON, max_size=5))


@PROPERTY
@given(lines=st.lists(_OBJECT | _JSON, max_size=6),
       ascii_only=st.booleans())
def test_arbitrary_json_never_raises(lines, ascii_only):
    raw = b"".join(json.dumps(v, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass") + b"\n" for v in lines)
    with tempfile.TemporaryDirectory() as folder:
        numbered = _check_items(_write(folder, ".jsonl", raw), documents.ReaderConfig(
            max_document_bytes=64, keep_fields=("lang", "k")))
    assert [n for n, _ in numbered] == list(range(1, len(lines) + 1))


_FEATURE = st.one_of(
    st.builds(lambda v: feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=v)),
              st.lists(st.binary(max_size=20) | _ANY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                       max_size=3)),
    st.builds(lambda v: feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=v)),
              st.lists(st.integers(-2**63, 2**63 - 1), max_size=3)),
    st.builds(lambda v: feature_pb2.Feature(float_list=feature_pb2.FloatList(value=v)),
              st.lists(st.floats(width=32), max_size=3)),
    st.just(feature_pb2.Feature()))
_TEXT_FEATURE = _ANY_TEXT.map(lambda t: _bytes(t.encode("utf-8", "surrogatepass"))) | _FEATURE
_PAYLOAD = st.builds(lambda text, rest: _example(**{**rest, "text": text}), _TEXT_FEATURE,
                     st.dictionaries(_FIELD | st.text(max_size=8), _FEATURE, max_size=5)) | st.binary(max_size=40)
_FRAME = st.tuples(_PAYLOAD, st.sampled_from(["ok", "ok", "ok", "length", "length_crc", "data_crc"]),
                   st.integers(0, 2**64 - 1))


def _framed(payload: bytes, damage: str, number: int) -> bytes:
    frame = _frame(payload, number if damage == "length" else None)
    if damage == "length_crc":
        return frame[:8] + bytes([frame[8] ^ 1]) + frame[9:]
    if damage == "data_crc":
        return frame[:-1] + bytes([frame[-1] ^ 1])
    return frame


@PROPERTY
@given(frames=st.lists(_FRAME, max_size=5), cut=st.integers(0, 100),
       suffix=st.sampled_from([".tfrecord", ".tfrecord.gz"]))
def test_arbitrary_tfrecord_framings_never_raise(frames, cut, suffix):
    data = b"".join(_framed(*frame) for frame in frames)
    data = data[: len(data) * cut // 100] if cut < 100 else data
    with tempfile.TemporaryDirectory() as folder:
        _check_items(_write(folder, suffix, data), documents.ReaderConfig(max_document_bytes=64))


# ------------------------------------------------------------------------------ memory


def read_counts(path: str, max_document_bytes: int = 1_000_000, address_space_mib: int = 0) -> dict:
    """Reads path; with address_space_mib, under an address-space limit that many MiB over the current size."""
    if address_space_mib:
        with open("/proc/self/status") as f:
            vm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
        limit = (vm_kib << 10) + (address_space_mib << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    reasons: dict[str, int] = {}
    config = documents.ReaderConfig(max_document_bytes=max_document_bytes)
    for item in documents.read_file(path, config):
        reason = item.reason if isinstance(item, documents.DeadLetter) else "document"
        reasons[reason] = reasons.get(reason, 0) + 1
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    return {"file": os.path.basename(path), "items": reasons, "peak_rss_mib": peak_mib}


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.test_documents_hostile", *args], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_gzip_bomb_under_a_memory_limit(tmp_path):
    path = str(tmp_path / "bomb.jsonl.gz")
    gzip_bomb(path, 256, after=_line(good_doc(1)) + b"\n")
    assert os.path.getsize(path) < 1 << 20
    got = _child("read", path, "128")
    assert got["items"] == {"too_large": 1, "document": 1}


def main(argv: list[str]) -> None:
    """`read PATH [MiB]`: read one file, print counts and peak RSS; `DIR`: build and measure the benchmark files."""
    if argv[0] == "read":
        print(json.dumps(read_counts(argv[1], address_space_mib=int(argv[2]) if len(argv) > 2 else 0)))
        return
    folder = argv[0]
    os.makedirs(folder, exist_ok=True)
    bomb, large = os.path.join(folder, "bomb.jsonl.gz"), os.path.join(folder, "large.jsonl")
    if not os.path.exists(bomb):
        gzip_bomb(bomb, 1024, after=_line(good_doc(1)) + b"\n")
    if not os.path.exists(large):
        with open(large, "wb") as f:
            for i in range(200):
                f.write(_line({"text": (f"doc {i} " + "word " * 200_000)[:990_000], "url": f"u/{i}"}) + b"\n")
    empty = os.path.join(folder, "one.jsonl")
    with open(empty, "wb") as f:
        f.write(_line(good_doc(1)) + b"\n")
    for path in (empty, bomb, large):
        print(json.dumps({**_child("read", path), "bytes": os.path.getsize(path)}))


if __name__ == "__main__":
    main(sys.argv[1:])
