"""Reading corpora: C4 / JSON lines (plain or gzip), plain text lines and TFRecords of tf.train.Example.

Every input record comes out either as a document (a record dict in the schema of
`gristmill.records`, with a stable `id`) or as a `DeadLetter` naming the file, the record number
and the reason, so nothing disappears: read = documents + dead letters.

Record numbers are 1-based: the line number for JSON lines and text lines, the record ordinal for
TFRecords. Files are opened through Beam's `FileSystems`, so local paths and `gs://` both work.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import zlib
from typing import Any, BinaryIO, Iterable, Iterator, Union

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2

from gristmill import records

# Dead-letter reason codes (also the Beam counter names under the `gristmill.dead_letters` namespace).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TEXT = "missing_text"
NON_STRING_TEXT = "non_string_text"
EMPTY_TEXT = "empty_text"
INVALID_UTF8 = "invalid_utf8"
TOO_LARGE = "too_large"
TRUNCATED_GZIP = "truncated_gzip"
CORRUPT_TFRECORD = "corrupt_tfrecord"
INVALID_EXAMPLE = "invalid_example"
UNREADABLE_FILE = "unreadable_file"
REASONS = (INVALID_JSON, NOT_AN_OBJECT, MISSING_TEXT, NON_STRING_TEXT, EMPTY_TEXT, INVALID_UTF8,
           TOO_LARGE, TRUNCATED_GZIP, CORRUPT_TFRECORD, INVALID_EXAMPLE, UNREADABLE_FILE)

FORMATS = ("auto", "json", "lines", "tfrecord")
EXCERPT_CHARS = 200


class InputError(Exception):
    """The corpus cannot be read at all (for example, a glob that matches no file)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReaderConfig:
    """How to read a corpus.

    format: `json` (C4 and any JSON lines), `lines` (one document per line of plain text),
        `tfrecord` (tf.train.Example with a `text` feature), or `auto` (by file name: `.tfrecord*`
        is TFRecord, `.txt`/`.utf8` is lines, anything else JSON lines).
    text_field: the JSON key holding the document text.
    url_field: the JSON key holding the url, if any.
    timestamp_fields: JSON keys tried in order for the timestamp (C4 uses `timestamp`; some
        copies of C4 call it `date`).
    max_document_bytes: documents whose UTF-8 text is longer become `too_large` dead letters.
    """

    format: str = "auto"
    text_field: str = "text"
    url_field: str = "url"
    timestamp_fields: tuple[str, ...] = ("timestamp", "date")
    max_document_bytes: int = 1_000_000

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown input format {self.format!r}; expected one of {FORMATS}")
        if self.max_document_bytes <= 0:
            raise ValueError(f"max_document_bytes must be positive, got {self.max_document_bytes}")


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An input record that could not become a document, and why."""

    source: str
    record: int
    reason: str
    detail: str
    excerpt: str = ""

    def to_json(self) -> str:
        """One JSON line for the dead-letter file."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)


Item = Union[records.Record, DeadLetter]


def document_id(url: str, text: str) -> str:
    """Stable document id: hex of a 128-bit BLAKE2b hash of the url and the text.

    The same (url, text) always gives the same id, on any machine and in any shard.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(url.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def _excerpt(value: Any) -> str:
    if isinstance(value, bytes):
        value = value[:EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    return str(value)[:EXCERPT_CHARS]


def make_document(text: str, url: str, timestamp: str, source: str, doc_id: str | None = None,
                  extra: dict[str, Any] | None = None) -> records.Record:
    """Builds a document record in the scored schema (extra features kept, e.g. earlier scores)."""
    record: records.Record = dict(extra or {})
    record.update({records.ID: doc_id or document_id(url, text), records.TEXT: text,
                   records.URL: url, records.TIMESTAMP: timestamp, records.SOURCE: source})
    return record


def _check_text(text: Any, source: str, number: int, config: ReaderConfig, raw: Any) -> DeadLetter | None:
    if text is None:
        return DeadLetter(source, number, MISSING_TEXT, f"no {config.text_field!r} field", _excerpt(raw))
    if not isinstance(text, str):
        return DeadLetter(source, number, NON_STRING_TEXT,
                          f"{config.text_field!r} is {type(text).__name__}, not a string", _excerpt(raw))
    if not text.strip():
        return DeadLetter(source, number, EMPTY_TEXT, "text is empty or whitespace only", _excerpt(raw))
    size = len(text.encode("utf-8"))
    if size > config.max_document_bytes:
        return DeadLetter(source, number, TOO_LARGE,
                          f"text is {size} bytes, over the limit of {config.max_document_bytes}", _excerpt(text))
    return None


def parse_json_line(raw: bytes, source: str, number: int, config: ReaderConfig) -> Item:
    """Parses one JSON line into a document or a dead letter."""
    if len(raw) > 8 * config.max_document_bytes + 65536:
        return DeadLetter(source, number, TOO_LARGE, f"line is {len(raw)} bytes", _excerpt(raw))
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return DeadLetter(source, number, INVALID_UTF8, str(err), _excerpt(raw))
    try:
        obj = json.loads(line)
    except ValueError as err:
        return DeadLetter(source, number, INVALID_JSON, str(err), _excerpt(line))
    if not isinstance(obj, dict):
        return DeadLetter(source, number, NOT_AN_OBJECT, f"JSON value is {type(obj).__name__}, not an object",
                          _excerpt(line))
    text = obj.get(config.text_field)
    problem = _check_text(text, source, number, config, line)
    if problem:
        return problem
    url = obj.get(config.url_field) or ""
    timestamp = next((obj[k] for k in config.timestamp_fields if obj.get(k)), "")
    return make_document(text, str(url), str(timestamp), source)


def parse_text_line(raw: bytes, source: str, number: int, config: ReaderConfig) -> Item:
    """Parses one line of a plain-text corpus (one document per line) into a document or a dead letter."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        return DeadLetter(source, number, INVALID_UTF8, str(err), _excerpt(raw))
    problem = _check_text(text, source, number, config, text)
    return problem or make_document(text, "", "", source)


def parse_example(data: bytes, source: str, number: int, config: ReaderConfig) -> Item:
    """Parses one serialised tf.train.Example into a document (all its features kept) or a dead letter."""
    try:
        example = example_pb2.Example.FromString(data)
    except DecodeError as err:
        return DeadLetter(source, number, INVALID_EXAMPLE, f"not a tf.train.Example: {err}", _excerpt(data))
    features = example.features.feature
    text_feature = features.get(config.text_field)
    if text_feature is None:
        return DeadLetter(source, number, MISSING_TEXT, f"no {config.text_field!r} feature", "")
    if text_feature.WhichOneof("kind") != "bytes_list" or len(text_feature.bytes_list.value) != 1:
        return DeadLetter(source, number, NON_STRING_TEXT,
                          f"{config.text_field!r} is not a single bytes value", "")
    raw_text = text_feature.bytes_list.value[0]
    try:
        text = raw_text.decode("utf-8")
        extra = records.from_example(example)
    except UnicodeDecodeError as err:
        return DeadLetter(source, number, INVALID_UTF8, str(err), _excerpt(raw_text))
    problem = _check_text(text, source, number, config, text)
    if problem:
        return problem
    url = str(extra.pop(records.URL, "") or "")
    timestamp = str(extra.pop(records.TIMESTAMP, "") or "")
    doc_id = extra.pop(records.ID, None) or None
    original_source = extra.pop(records.SOURCE, None) or source
    extra.pop(config.text_field, None)
    return make_document(text, url, timestamp, original_source, doc_id=doc_id, extra=extra)


def resolve_format(path: str, config: ReaderConfig) -> str:
    """The format a file is read in: the configured one, or one guessed from the file name."""
    if config.format != "auto":
        return config.format
    name = path.lower().removesuffix(".gz")
    if ".tfrecord" in name:
        return "tfrecord"
    if name.endswith((".txt", ".utf8", ".text")):
        return "lines"
    return "json"


def _open(path: str) -> BinaryIO:
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw


def _iter_lines(stream: BinaryIO) -> Iterator[bytes]:
    while True:
        line = stream.readline()
        if not line:
            return
        yield line


def read_file(path: str, config: ReaderConfig) -> Iterator[Item]:
    """Yields every record of one file as a document or a dead letter, in file order.

    A truncated gzip member or a corrupt TFRecord ends the file with one dead letter for the
    record at which reading stopped; the records before it are kept.
    """
    fmt = resolve_format(path, config)
    number = 0
    try:
        stream = _open(path)
    except Exception as err:  # FileSystems raises various errors for missing/forbidden files
        yield DeadLetter(path, 0, UNREADABLE_FILE, f"cannot open: {err}")
        return
    try:
        if fmt == "tfrecord":
            try:
                for number, data in enumerate(records.iter_tfrecords(stream), start=1):
                    yield parse_example(data, path, number, config)
            except records.TFRecordError as err:
                yield DeadLetter(path, number + 1, CORRUPT_TFRECORD, f"{err}; the rest of the file is unreadable")
            return
        parse = parse_text_line if fmt == "lines" else parse_json_line
        for number, line in enumerate(_iter_lines(stream), start=1):
            if fmt == "json" and not line.strip():
                yield DeadLetter(path, number, EMPTY_TEXT, "blank line", "")
                continue
            yield parse(line, path, number, config)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        yield DeadLetter(path, number + 1, TRUNCATED_GZIP,
                         f"gzip stream ends early or is corrupt after record {number}: {err}")
    except OSError as err:
        yield DeadLetter(path, number + 1, UNREADABLE_FILE, f"read failed after record {number}: {err}")
    finally:
        stream.close()


def expand_patterns(patterns: Iterable[str]) -> list[str]:
    """Expands comma-separated globs (local or gs://) into a sorted list of files.

    Raises InputError naming the pattern when a pattern matches nothing, so a typo fails the
    job before it starts rather than producing an empty output.
    """
    files: list[str] = []
    for pattern in patterns:
        for part in (p.strip() for p in pattern.split(",")):
            if not part:
                continue
            try:
                results = FileSystems.match([part])[0].metadata_list
            except Exception as err:
                raise InputError(f"cannot list input {part!r}: {err}") from err
            matched = sorted(m.path for m in results if not m.path.endswith("/"))
            if not matched:
                raise InputError(f"input pattern {part!r} matches no file")
            files.extend(matched)
    return sorted(set(files))


def read_documents(patterns: Iterable[str] | str, config: ReaderConfig = ReaderConfig()) -> Iterator[Item]:
    """Reads every file of the patterns in order, outside Beam (tests, notebooks, small tools)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    for path in expand_patterns(patterns):
        yield from read_file(path, config)
