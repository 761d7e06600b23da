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
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Union

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
    keep_fields: JSON keys carried into the record as features of the same name (e.g. `label`,
        `lang`), converted by `kept_feature`; a key a line lacks (or holds null) is simply absent.
    """

    format: str = "auto"
    text_field: str = "text"
    url_field: str = "url"
    timestamp_fields: tuple[str, ...] = ("timestamp", "date")
    max_document_bytes: int = 1_000_000
    keep_fields: tuple[str, ...] = ()

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown input format {self.format!r}; expected one of {FORMATS}")
        if self.max_document_bytes <= 0:
            raise ValueError(f"max_document_bytes must be positive, got {self.max_document_bytes}")
        object.__setattr__(self, "keep_fields", tuple(self.keep_fields))
        clash = sorted(set(self.keep_fields) & {*records.STRING_FEATURES, self.text_field})
        if clash or not all(self.keep_fields):
            raise ValueError(f"keep_fields cannot name the record's own features {clash or ['']} "
                             f"(id, text, url, timestamp, source are always kept)")


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


_INT64 = (-2**63, 2**63 - 1)


def kept_feature(value: Any) -> Any:
    """A JSON value as a record feature value (see `ReaderConfig.keep_fields`).

    str -> bytes feature (UTF-8), bool / int -> int64 (true = 1), float -> float, and lists of
    one of those kinds (ints mixed with floats are floats); None (JSON null) -> None, i.e. absent.
    Anything else (objects, mixed or empty lists, integers beyond int64) becomes its JSON text, a
    bytes feature, so no value is lost. Examples: "en" -> b"en", true -> 1, [1, 2.5] -> [1.0, 2.5],
    {"a": 1} -> b'{"a": 1}'.
    """
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(v, str) for v in items):
        converted: Any = [v.encode("utf-8") for v in items]
    elif items and all(isinstance(v, (bool, int)) and _INT64[0] <= v <= _INT64[1] for v in items):
        converted = [int(v) for v in items]
    elif items and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items) and any(
            isinstance(v, float) for v in items):
        converted = [float(v) for v in items]
    else:
        return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return converted if isinstance(value, list) else converted[0]


def _kept(obj: dict[str, Any], config: ReaderConfig) -> dict[str, Any]:
    kept = {name: kept_feature(obj.get(name)) for name in config.keep_fields}
    return {name: value for name, value in kept.items() if value is not None}


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
    if text is None:
        return DeadLetter(source, number, MISSING_TEXT,
                          f"no {config.text_field!r} field (fields: {', '.join(sorted(obj)) or 'none'})",
                          _excerpt(line))
    problem = _check_text(text, source, number, config, line)
    if problem:
        return problem
    url = obj.get(config.url_field) or ""
    timestamp = next((obj[k] for k in config.timestamp_fields if obj.get(k)), "")
    return make_document(text, str(url), str(timestamp), source, extra=_kept(obj, config))


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
        return DeadLetter(source, number, MISSING_TEXT,
                          f"no {config.text_field!r} feature (features: {', '.join(sorted(features)) or 'none'})", "")
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


def read_file(path: str, config: ReaderConfig, skip: Callable[[int], bool] | None = None,
              max_records: int = 0) -> Iterator[Item]:
    """Yields every record of one file as a document or a dead letter, in file order (see read_numbered)."""
    for _, item in read_numbered(path, config, skip, max_records):
        yield item


def read_numbered(path: str, config: ReaderConfig, skip: Callable[[int], bool] | None = None,
                  max_records: int = 0) -> Iterator[tuple[int, Item]]:
    """Yields (record number, document or dead letter) for every record of one file, in file order.

    A truncated gzip member or a corrupt TFRecord ends the file with one dead letter for the
    record at which reading stopped; the records before it are kept. skip(number) True leaves a
    record out unparsed (a resumed job's finished units); max_records > 0 stops after that record.
    """
    skip = skip or (lambda _: False)
    fmt = resolve_format(path, config)
    number = 0
    try:
        stream = _open(path)
    except Exception as err:  # FileSystems raises various errors for missing/forbidden files
        yield 0, DeadLetter(path, 0, UNREADABLE_FILE, f"cannot open: {err}")
        return
    try:
        if fmt == "tfrecord":
            try:
                for number, data in enumerate(records.iter_tfrecords(stream), start=1):
                    if max_records and number > max_records:
                        return
                    if not skip(number):
                        yield number, parse_example(data, path, number, config)
            except records.TFRecordError as err:
                yield number + 1, DeadLetter(path, number + 1, CORRUPT_TFRECORD,
                                             f"{err}; the rest of the file is unreadable")
            return
        parse = parse_text_line if fmt == "lines" else parse_json_line
        for number, line in enumerate(_iter_lines(stream), start=1):
            if max_records and number > max_records:
                return
            if skip(number):
                continue
            if fmt == "json" and not line.strip():
                yield number, DeadLetter(path, number, EMPTY_TEXT, "blank line", "")
                continue
            yield number, parse(line, path, number, config)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        yield number + 1, DeadLetter(path, number + 1, TRUNCATED_GZIP,
                         f"gzip stream ends early or is corrupt after record {number}: {err}")
    except OSError as err:
        yield number + 1, DeadLetter(path, number + 1, UNREADABLE_FILE, f"read failed after record {number}: {err}")
    finally:
        stream.close()


def expand_patterns(patterns: Iterable[str]) -> list[str]:
    """Expands comma-separated globs or gristmill output directories (local or gs://) into sorted files.

    A directory is read through its manifest (`records.record_files`): exactly the files of the
    finished run, never stale or partial ones; a directory without a manifest is an error saying
    the run did not finish. Raises InputError naming the pattern when a pattern matches nothing,
    so a typo fails the job before it starts rather than producing an empty output.
    """
    files: list[str] = []
    for pattern in patterns:
        for part in (p.strip() for p in pattern.split(",")):
            if not part:
                continue
            try:
                matched = records.record_files(part)
            except records.IncompleteRunError as err:
                raise InputError(str(err)) from err
            except FileNotFoundError as err:
                raise InputError(f"input pattern {part!r} matches no file") from err
            except Exception as err:
                raise InputError(f"cannot list input {part!r}: {err}") from err
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
