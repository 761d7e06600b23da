"""Reading corpora: C4 / JSON lines and plain text lines (plain, gzip or zstd), Parquet (FineWeb's
format) and TFRecords of tf.train.Example.

Every input record comes out either as a document (a record dict in the schema of
`gristmill.records`, with a stable `id`) or as a `DeadLetter` naming the file, the record number
and the reason, so nothing disappears: read = documents + dead letters.

Record numbers are 1-based: the line number for JSON lines and text lines, the record ordinal for
TFRecords, the row number (across row groups) for Parquet. Files are opened through
`gristmill.io`, so local paths and `gs://` both work.

Memory is bounded per record: a line or TFRecord payload over `record_limit` bytes is skipped as
`too_large` in pieces of at most 64 KiB (1 MiB for TFRecords), never held whole, so a gzip bomb
that expands to one huge line costs no more than a normal record. A parser error on one record is
a dead letter, never a failed job; a file that cannot be read (missing, a directory, a FIFO)
is one `unreadable_file` dead letter.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import io as pyio
import json
import os
import re
import stat
import zlib
from typing import Any, BinaryIO, Callable, Iterable, Iterator, NamedTuple, Union

import orjson
from google.protobuf.message import DecodeError
from isal import isal_zlib

from gristmill import example_proto, io, records

# Dead-letter reason codes (also the Beam counter names under the `gristmill.dead_letters` namespace).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TEXT = "missing_text"
NON_STRING_TEXT = "non_string_text"
EMPTY_TEXT = "empty_text"
INVALID_UTF8 = "invalid_utf8"
TOO_LARGE = "too_large"
TRUNCATED_GZIP = "truncated_gzip"
TRUNCATED_ZSTD = "truncated_zstd"
CORRUPT_TFRECORD = "corrupt_tfrecord"
INVALID_EXAMPLE = "invalid_example"
UNREADABLE_FILE = "unreadable_file"
PARSE_ERROR = "parse_error"
REASONS = (INVALID_JSON, NOT_AN_OBJECT, MISSING_TEXT, NON_STRING_TEXT, EMPTY_TEXT, INVALID_UTF8,
           TOO_LARGE, TRUNCATED_GZIP, TRUNCATED_ZSTD, CORRUPT_TFRECORD, INVALID_EXAMPLE, UNREADABLE_FILE,
           PARSE_ERROR)

FORMATS = ("auto", "json", "lines", "tfrecord", "parquet")
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
PARQUET_BATCH_ROWS = 1024
EXCERPT_CHARS = 200


def embedded_corpus() -> str:
    """The glob of the C4 sample shipped inside the package (1,000 real C4 `en` documents)."""
    return str(importlib.resources.files("gristmill") / "data" / "c4-olmo" / "c4-sample.*.json.gz")


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

    def __post_init__(self):
        for name in ("source", "detail", "excerpt"):
            object.__setattr__(self, name, _printable(getattr(self, name)))

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


def _printable(text: str) -> str:
    """text with lone surrogates (from `\\ud800` escapes or undecodable file names) spelled as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


def _kept(obj: dict[str, Any], config: ReaderConfig) -> dict[str, Any] | None:
    if not config.keep_fields:
        return None
    kept = {name: kept_feature(obj.get(name)) for name in config.keep_fields}
    return {name: value for name, value in kept.items() if value is not None}


def _check_text(text: Any, source: str, number: int, config: ReaderConfig, raw: Any) -> DeadLetter | None:
    if text is None:
        return DeadLetter(source, number, MISSING_TEXT, f"no {config.text_field!r} field", _excerpt(raw))
    if not isinstance(text, str):
        return DeadLetter(source, number, NON_STRING_TEXT,
                          f"{config.text_field!r} is {type(text).__name__}, not a string", _excerpt(raw))
    if not text or text.isspace():
        return DeadLetter(source, number, EMPTY_TEXT, "text is empty or whitespace only", _excerpt(raw))
    # a code point is at most 4 UTF-8 bytes: only a text that might be over the limit is encoded to count
    size = len(text.encode("utf-8")) if 4 * len(text) > config.max_document_bytes else 0
    if size > config.max_document_bytes:
        return DeadLetter(source, number, TOO_LARGE,
                          f"text is {size} bytes, over the limit of {config.max_document_bytes}", _excerpt(text))
    return None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unencodable_field(raw: bytes, obj: dict[str, Any], config: ReaderConfig) -> str | None:
    """The first field the record keeps that holds a lone surrogate (`"\\ud800"`), which UTF-8 cannot encode."""
    if not _SURROGATE_ESCAPE.search(raw):
        return None
    names = (config.text_field, config.url_field, *config.timestamp_fields, *config.keep_fields)
    return next((name for name in names if name in obj and not _encodable(obj[name])), None)


def parse_json_line(raw: bytes, source: str, number: int, config: ReaderConfig) -> Item:
    """Parses one JSON line into a document or a dead letter.

    Most lines take `_fast_document` (orjson, several times faster than json); anything it does
    not accept as a plain document goes through the full checks below, which name the problem.
    """
    document = _fast_document(raw, source, number, config)
    if document is not None:
        return document
    if len(raw) > record_limit(config, "json"):
        return DeadLetter(source, number, TOO_LARGE, f"line is {len(raw)} bytes", _excerpt(raw))
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return DeadLetter(source, number, INVALID_UTF8, str(err), _excerpt(raw))
    try:
        obj = json.loads(line)
    except ValueError as err:
        return DeadLetter(source, number, INVALID_JSON, str(err), _excerpt(line))
    except RecursionError:
        return DeadLetter(source, number, INVALID_JSON, "JSON nested too deeply to parse", _excerpt(line))
    if not isinstance(obj, dict):
        return DeadLetter(source, number, NOT_AN_OBJECT, f"JSON value is {type(obj).__name__}, not an object",
                          _excerpt(line))
    if obj.get(config.text_field) is not None:
        field = _unencodable_field(raw, obj, config)
        if field is not None:
            return DeadLetter(source, number, INVALID_UTF8,
                              f"{field!r} holds a lone surrogate escape (such as \\ud800), which is not valid UTF-8",
                              _excerpt(raw))
    return document_from_object(obj, source, number, config, line)


def _fast_document(raw: bytes, source: str, number: int, config: ReaderConfig) -> records.Record | None:
    """The document of a well-formed line, exactly as the full path would build it; None for anything else.

    orjson rejects what json accepts with a dead letter or a special value (invalid UTF-8, lone
    surrogates, NaN, 1e400, deep nesting) but reads integers beyond 64 bits as floats, so only
    lines whose used fields are all strings, with no `keep_fields`, are taken here.
    """
    if config.keep_fields or len(raw) > record_limit(config, "json"):
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or type(obj.get(config.text_field)) is not str:
        return None
    for name in (config.url_field, *config.timestamp_fields):
        if obj.get(name) is not None and type(obj[name]) is not str:
            return None
    document = document_from_object(obj, source, number, config, raw)
    return None if isinstance(document, DeadLetter) else document


def document_from_object(obj: dict[str, Any], source: str, number: int, config: ReaderConfig, raw: Any) -> Item:
    """A parsed record (a JSON object, a Parquet row) -> a document or a dead letter; raw is for excerpts."""
    text = obj.get(config.text_field)
    if text is None:
        return DeadLetter(source, number, MISSING_TEXT,
                          f"no {config.text_field!r} field (fields: {', '.join(sorted(obj)) or 'none'})",
                          _excerpt(raw))
    problem = _check_text(text, source, number, config, raw)
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
        example = example_proto.Example.FromString(data)
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
        extra = {k: v for k, v in records.from_example(example).items() if v != []}  # no values: no type to write
    except UnicodeDecodeError as err:
        return DeadLetter(source, number, INVALID_UTF8, str(err), _excerpt(raw_text))
    problem = _check_text(text, source, number, config, text)
    if problem:
        return problem
    odd = [name for name in records.STRING_FEATURES if name in extra and not isinstance(extra[name], str)]
    if odd:
        return DeadLetter(source, number, INVALID_EXAMPLE, f"{odd[0]!r} is not a single bytes value", "")
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
    name = path.lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if ".tfrecord" in name:
        return "tfrecord"
    if name.endswith((".txt", ".utf8", ".text")):
        return "lines"
    return "json"


def record_limit(config: ReaderConfig, fmt: str) -> int:
    """The most bytes of one raw record read into memory; a longer one is skipped as `too_large`.

    For plain text lines that is the text and its line end; a JSON line or TFRecord payload may
    also hold escapes (up to 6 bytes per character of text), the url and other fields.
    """
    if fmt == "lines":
        return config.max_document_bytes + 2
    return 8 * config.max_document_bytes + 65536


_LINE_CHUNK = 1 << 16
_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


class _LongLine(NamedTuple):
    """A line over the limit, skipped: its length and its first bytes."""

    size: int
    head: bytes


def _open(path: str) -> BinaryIO:
    """Opens a file's raw bytes, buffered; a local file that is not a regular file is refused.

    Opening a FIFO would block until a writer came, so the type is checked before opening.
    """
    if not io.is_remote(path):
        kind = stat.S_IFMT(os.stat(path).st_mode)
        if kind != stat.S_IFREG:
            raise OSError(f"not a regular file but {_FILE_KINDS.get(kind, 'a special file')}")
    raw = io.open_read(path)
    if not hasattr(raw, "peek"):  # readline on an unbuffered stream reads a byte at a time
        raw = pyio.BufferedReader(raw, _LINE_CHUNK)
    return raw


def _iter_lines(stream: BinaryIO, limit: int) -> Iterator[bytes | _LongLine]:
    """Yields each line (with its line end), or a _LongLine for one over limit bytes, read in bounded pieces."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit:
            yield line
            continue
        size, ended = len(line), line.endswith(b"\n")
        while not ended:
            piece = stream.readline(_LINE_CHUNK)
            size += len(piece)
            ended = not piece or piece.endswith(b"\n")
        yield _LongLine(size, line[:EXCERPT_CHARS * 4])


def _guarded(parse: Callable[[Any, str, int, ReaderConfig], Item], data: Any, source: str, number: int,
             config: ReaderConfig) -> Item:
    """parse(data, ...), with any error it raises turned into a `parse_error` dead letter."""
    try:
        return parse(data, source, number, config)
    except Exception as err:  # one record's problem never stops the file
        return DeadLetter(source, number, PARSE_ERROR, f"{type(err).__name__}: {err}", _excerpt(data))


def read_file(path: str, config: ReaderConfig, skip: Callable[[int, int], bool] | None = None,
              max_records: int = 0) -> Iterator[Item]:
    """Yields every record of one file as a document or a dead letter, in file order (see read_numbered)."""
    for _, item in read_numbered(path, config, skip, max_records):
        yield item


def read_numbered(path: str, config: ReaderConfig, skip: Callable[[int, int], bool] | None = None,
                  max_records: int = 0) -> Iterator[tuple[int, Item]]:
    """Yields (record number, document or dead letter) for every record of one file, in file order.

    A truncated gzip member or a corrupt TFRecord ends the file with one dead letter for the
    record at which reading stopped; the records before it are kept. skip(number, raw bytes) is
    called for every record in file order and True leaves it out unparsed (a resumed job's
    finished units); max_records > 0 stops after that record. A file that cannot be opened gives
    one `unreadable_file` dead letter numbered 0.
    """
    skip = skip or (lambda number, size: False)
    fmt = resolve_format(path, config)
    limit = record_limit(config, fmt)
    number = 0
    try:
        raw = _open(path)
    except Exception as err:  # missing, forbidden, not a regular file, or a storage error
        yield 0, DeadLetter(path, 0, UNREADABLE_FILE, f"cannot open: {err}")
        return
    if fmt == "parquet":
        try:
            yield from _read_parquet(raw, path, config, skip, max_records)
        finally:
            raw.close()
        return
    stream = _decompressed(raw, path)
    try:
        if fmt == "tfrecord":
            try:
                for number, data in enumerate(records.iter_tfrecords(stream, limit), start=1):
                    if max_records and number > max_records:
                        return
                    size = data.length if isinstance(data, records.OversizedRecord) else len(data)
                    if not skip(number, size):
                        yield number, _parse_payload(data, path, number, config, limit)
            except records.TFRecordError as err:
                yield number + 1, DeadLetter(path, number + 1, CORRUPT_TFRECORD,
                                             f"{err}; the rest of the file is unreadable")
            return
        parse = parse_text_line if fmt == "lines" else parse_json_line
        for number, line in enumerate(_iter_lines(stream, limit), start=1):
            if max_records and number > max_records:
                return
            if not skip(number, line.size if isinstance(line, _LongLine) else len(line)):
                yield number, _parse_line(line, parse, fmt, path, number, config, limit)
    except (EOFError, zlib.error, isal_zlib.error, gzip.BadGzipFile) as err:
        yield number + 1, DeadLetter(path, number + 1, TRUNCATED_GZIP,
                                     f"gzip stream ends early or is corrupt after record {number}: {err}")
    except _zstd_error() as err:
        yield number + 1, DeadLetter(path, number + 1, TRUNCATED_ZSTD,
                                     f"zstd stream ends early or is corrupt after record {number}: {err}")
    except Exception as err:  # an I/O or storage error mid-file
        yield number + 1, DeadLetter(path, number + 1, UNREADABLE_FILE,
                                     f"read failed after record {number}: {type(err).__name__}: {err}")
    finally:
        stream.close()
        raw.close()  # a GzipFile leaves the file it was given open


class TruncatedZstd(Exception):
    """A zstd stream ends inside a frame."""


class TruncatedGzip(EOFError):
    """A gzip stream ends inside a member."""


def _zstd_error() -> tuple[type[Exception], ...]:
    import zstandard
    return (zstandard.ZstdError, TruncatedZstd)


class _Frames(pyio.RawIOBase):
    """The decompressed bytes of a file of one or more compressed frames (gzip members, zstd frames).

    Fed a bounded piece of compressed input per call, so one call yields a bounded output even for a
    bomb (a decompressobj has no output cap of its own). A stream that ends inside a frame raises
    `truncated` after every byte decoded before the cut, so the reader keeps the records before it
    and dead-letters the rest of the file (zstandard's own reader ends quietly there).
    """

    def __init__(self, raw: BinaryIO, new_frame: Callable[[], Any], truncated: Callable[[str], Exception],
                 feed: int):
        self._raw, self._new_frame, self._truncated, self._feed = raw, new_frame, truncated, feed
        self._frame, self._started = new_frame(), False
        self._pending, self._offset = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset >= len(self._pending):
            chunk = self._raw.read(self._feed)
            if not chunk:
                if self._started and not self._frame.eof:
                    raise self._truncated("the stream ends inside a compressed frame")
                return 0
            out = []
            while chunk:
                self._started = True
                out.append(self._frame.decompress(chunk))
                chunk = self._frame.unused_data if self._frame.eof else b""
                if self._frame.eof:
                    self._frame, self._started = self._new_frame(), bool(chunk)
            self._pending, self._offset = b"".join(out), 0
        n = min(len(buffer), len(self._pending) - self._offset)
        buffer[:n] = memoryview(self._pending)[self._offset:self._offset + n]
        self._offset += n
        return n


def _zstd_frames(raw: BinaryIO) -> _Frames:
    import zstandard
    context = zstandard.ZstdDecompressor()
    # zstd expands a block at most ~32,000x: 1 KiB of input yields at most ~32 MB
    return _Frames(raw, context.decompressobj, TruncatedZstd, feed=1024)


def _gzip_members(raw: BinaryIO) -> _Frames:
    # ISA-L inflates about 4x faster than zlib; deflate expands at most ~1,032x: 32 KiB yields <= 33 MB
    return _Frames(raw, lambda: isal_zlib.decompressobj(isal_zlib.MAX_WBITS | 16), TruncatedGzip, feed=32 * 1024)


def _decompressed(raw: BinaryIO, path: str) -> BinaryIO:
    """The decompressed stream of a file by its name (`.gz`, `.zst` / `.zstd`), else the file itself."""
    lower = path.lower()
    if lower.endswith(".gz"):
        return pyio.BufferedReader(_gzip_members(raw), _LINE_CHUNK)
    if lower.endswith((".zst", ".zstd")):
        return pyio.BufferedReader(_zstd_frames(raw), _LINE_CHUNK)
    return raw


def _parquet_value(value: Any) -> Any:
    """A Parquet cell as the JSON-like value the reader expects (timestamps and dates as ISO text)."""
    return value.isoformat() if hasattr(value, "isoformat") else value


def _read_parquet(raw: BinaryIO, path: str, config: ReaderConfig, skip: Callable[[int, int], bool],
                  max_records: int) -> Iterator[tuple[int, Item]]:
    """Rows of a Parquet file, row group by row group in batches, reading only the columns the job uses.

    A file pyarrow cannot open is one `unreadable_file` dead letter naming the format; a row group
    that fails to decode ends the file with one dead letter for the row where reading stopped.
    """
    import pyarrow.parquet as pq
    number = 0
    try:
        parquet = pq.ParquetFile(raw)
    except Exception as err:  # not Parquet, truncated footer, unsupported encoding
        yield 0, DeadLetter(path, 0, UNREADABLE_FILE, f"cannot read as Parquet: {type(err).__name__}: {err}")
        return
    wanted = (config.text_field, config.url_field, *config.timestamp_fields, *config.keep_fields)
    columns = [name for name in parquet.schema_arrow.names if name in wanted]
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            for row in batch.to_pylist():
                number += 1
                if max_records and number > max_records:
                    return
                text = row.get(config.text_field)
                size = len(text.encode("utf-8", "replace")) if isinstance(text, str) else 0
                if not skip(number, size):
                    obj = {k: _parquet_value(v) for k, v in row.items()}
                    yield number, _guarded(lambda o, *a: document_from_object(o, *a, raw=o), obj, path, number,
                                           config)
    except Exception as err:  # a corrupt page or row group
        yield number + 1, DeadLetter(path, number + 1, UNREADABLE_FILE,
                                     f"Parquet read failed after row {number}: {type(err).__name__}: {err}")


def _parse_payload(data: bytes | records.OversizedRecord, path: str, number: int, config: ReaderConfig,
                   limit: int) -> Item:
    if isinstance(data, records.OversizedRecord):
        return DeadLetter(path, number, TOO_LARGE, f"record is {data.length} bytes, over the limit of {limit}")
    return _guarded(parse_example, data, path, number, config)


def _parse_line(line: bytes | _LongLine, parse: Callable[..., Item], fmt: str, path: str, number: int,
                config: ReaderConfig, limit: int) -> Item:
    if isinstance(line, _LongLine):
        return DeadLetter(path, number, TOO_LARGE, f"line is {line.size} bytes, over the limit of {limit}",
                          _excerpt(line.head))
    if fmt == "json" and not line.strip():
        return DeadLetter(path, number, EMPTY_TEXT, "blank line", "")
    return _guarded(parse, line, path, number, config)


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
