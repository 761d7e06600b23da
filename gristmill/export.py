"""`gristmill export`: a gristmill output or published selection as JSON lines or Parquet, for other tools.

    gristmill export --input out/top20 --output export/top20 --format parquet [--features id,text,score/*]

The input is a gristmill output directory (a scorer's or select's, read through its manifest), a
published curate selection (`WORKDIR/selections/<id>`), or a curate work directory (its LATEST
selection). Every record file the input lists becomes one output file, in sorted path order:
`part-00000-of-00004.parquet` (or `.jsonl`, `.jsonl.zst`). HF datasets, DataTrove, NeMo Curator,
pandas, DuckDB and Spark read these directly.

Columns: `--features` names them in order (`fnmatch` patterns such as `score/*` expand to the
matching features, sorted); by default every string feature (`id`, `text`, `url`, `timestamp`,
`source`, those present) and every `score/...` feature. Types are fixed for the whole export by a
first pass over the input: bytes -> string, floats -> float32, int64 -> int64 (ints in some
records and floats in others -> float64), and a feature that holds other than one value in any
record -> a list column of that type (a one-value record gives a list of one). A record without
a chosen feature is an error naming the file, record and feature, unless `--allow_missing` (then
null). In JSON lines, floats are written exactly (the float32 value as a double) and NaN /
infinity as null.

Outputs are written like every gristmill output: each file atomically (`gristmill.io`, local or
gs://), then its marker `.export/<file>.json` (rows, size, CRC32C, the source file's checksum),
and last `export_manifest.json` (the source's identity, the columns, per-file rows / size /
CRC32C, counts read = written). A rerun with the same flags skips every file whose marker and
bytes verify and rewrites nothing; a killed export resumes. Other flags into the same directory
are refused (the difference named) unless `--overwrite`. Source files are checked against their
manifest's size and CRC32C as they are read. Each output file is built in memory (it holds one
unit of the source, at most `--unit_records` records), Parquet in row groups of `--row_group_rows`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io as _bytes_io
import json
import logging
import math
import os
import time
from typing import Any, Iterable, Iterator, Optional

import google_crc32c

from gristmill import errors, flags, io, lease, provenance, records
from gristmill.pipelines import units

JOB = "export"
EXPORT_FORMAT = 1  # bump when the same flags would write different bytes
MANIFEST_FILE = "export_manifest.json"
MARKERS_DIR = ".export"
FORMATS = {"parquet": ".parquet", "jsonl": ".jsonl", "jsonl.zst": ".jsonl.zst"}
STRING, FLOAT, INT, FLOAT64 = "string", "float32", "int64", "float64"
NUMBERS = frozenset({FLOAT, INT, FLOAT64})
SELECTIONS_DIR, LATEST_FILE = "selections", "LATEST"
PROGRESS_SECONDS = 10.0
log = logging.getLogger(__name__)


class ExportError(errors.UsageError):
    """The input cannot be exported with these flags (a missing feature, a type conflict, non-UTF-8 bytes)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """`gristmill export`'s flags."""

    input: str = dataclasses.field(metadata={
        "help": "A gristmill output directory, a published selection (WORKDIR/selections/<id>) or a curate "
                "work directory (its LATEST selection); local or gs://"})
    output: str = dataclasses.field(metadata={"help": "Export directory, local or gs://"})
    format: str = dataclasses.field(default="parquet", metadata={
        "choices": tuple(FORMATS), "help": "parquet, jsonl or jsonl.zst"})
    features: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "Columns in order; fnmatch patterns expand (score/*). Default: the string features and every score"})
    allow_missing: bool = dataclasses.field(default=False, metadata={
        "help": "Write null where a record lacks a chosen feature (default: an error naming it)"})
    row_group_rows: int = dataclasses.field(default=10_000, metadata={"help": "Rows per Parquet row group"})
    zstd_level: int = dataclasses.field(default=3, metadata={"help": "zstd level of .jsonl.zst and of Parquet pages"})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "Remove everything in --output first"})

    def __post_init__(self):
        if self.row_group_rows < 1:
            raise errors.UsageError(f"--row_group_rows must be at least 1, got {self.row_group_rows}")
        if not 1 <= self.zstd_level <= 22:
            raise errors.UsageError(f"--zstd_level must be in 1..22, got {self.zstd_level}")
        if len(set(self.features)) != len(self.features):
            raise errors.UsageError(f"--features names a feature twice: {','.join(self.features)}")


# ------------------------------------------------------------------------------------ the source


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One record file of the source and the size and CRC32C its manifest records (None: an older manifest)."""

    path: str
    expected: Optional[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Source:
    """What is exported: the record files in order, how many records the manifest says they hold, its identity."""

    directory: str
    files: tuple[SourceFile, ...]
    records: Optional[int]
    about: dict[str, Any]

    def digest(self) -> str:
        """A hash of the record files and their checksums: the same digest, the same records."""
        listed = [[f.path, f.expected] for f in self.files]
        return hashlib.sha256(json.dumps(listed, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def absolute(path: str) -> str:
    """A local path made absolute, without a trailing slash; URLs unchanged."""
    path = str(path).rstrip("/") or "/"
    return path if io.is_remote(path) else os.path.abspath(path)


def open_source(spec: str) -> Source:
    """The source a path names: an output directory, a published selection or a curate work directory."""
    directory = absolute(spec)
    if not io.exists(io.join(directory, records.MANIFEST_FILE)):
        latest = io.join(directory, SELECTIONS_DIR, LATEST_FILE)
        if io.exists(latest):
            directory = io.join(directory, SELECTIONS_DIR, io.read_text(latest).strip())
    manifest = records.read_manifest(directory)
    if "selection" in manifest and "outputs" not in manifest:
        return _selection_source(directory, manifest)
    return _output_source(directory, manifest)


def _output_source(directory: str, manifest: dict[str, Any]) -> Source:
    listed = manifest.get("files")
    files = []
    for rel in manifest.get("outputs", {}).get("records", []):
        if listed is not None and rel not in listed:
            raise records.CorruptOutputError(f"{io.join(directory, rel)}: the manifest of {directory} lists it "
                                             f"without a checksum")
        files.append(SourceFile(io.join(directory, rel), listed[rel] if listed is not None else None))
    about = {"kind": "output", "directory": directory, "job": manifest.get("job"),
             "fingerprint": manifest.get("fingerprint"), "output_version": manifest.get("output_version"),
             "manifest": io.join(directory, manifest.get("history") or records.MANIFEST_FILE),
             "finished_at": manifest.get("finished_at")}
    return Source(directory, tuple(sorted(files, key=lambda f: f.path)), manifest.get("counts", {}).get("written"),
                  about)


def _selection_source(directory: str, manifest: dict[str, Any]) -> Source:
    selection = manifest["selection"]
    listed = selection.get("files", {})
    files = sorted((SourceFile(p, listed.get(p)) for p in selection.get("selected_records", [])),
                   key=lambda f: f.path)
    about = {"kind": "selection", "directory": directory, "name": manifest.get("name"),
             "run_id": manifest.get("run_id"), "step": selection.get("step"),
             "manifest": io.join(directory, records.MANIFEST_FILE),
             "select_manifest": selection.get("select_manifest"), "published_at": manifest.get("published_at")}
    return Source(directory, tuple(files), (selection.get("counts") or {}).get("written"), about)


class _Checksummed:
    """A read stream that keeps the CRC32C and size of what was read through it."""

    def __init__(self, stream):
        self.stream, self.crc, self.size = stream, 0, 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.crc = google_crc32c.extend(self.crc, data)
        self.size += len(data)
        return data


def read_source_file(file: SourceFile) -> Iterator[tuple[int, records.Record]]:
    """(record number from 1, record) of one source file; raises CorruptOutputError, naming the file, when it
    is missing, unreadable as TFRecords, or (once read to its end) not the size and CRC32C its manifest records."""
    try:
        stream = io.open_read(file.path)
    except FileNotFoundError:
        raise records.CorruptOutputError(f"{file.path} is missing: it is not the file the source's manifest "
                                         f"lists; rerun the job that wrote it") from None
    with stream:
        checked = _Checksummed(stream)
        try:
            for number, data in enumerate(records.iter_tfrecords(checked), start=1):
                yield number, records.deserialize(data)
        except records.TFRecordError as err:
            raise records.CorruptOutputError(f"{file.path}: {err}; rerun the job that wrote it") from None
    found = {"size": checked.size, "crc32c": f"{checked.crc:08x}"}
    if file.expected is not None and found != {k: file.expected[k] for k in ("size", "crc32c")}:
        raise records.CorruptOutputError(
            f"{file.path} has {found['size']} bytes and CRC32C {found['crc32c']}, expected {file.expected['size']} "
            f"and {file.expected['crc32c']}: it is not the file the source's manifest lists; rerun the job that "
            f"wrote it")


# ------------------------------------------------------------------------------------ columns


@dataclasses.dataclass(frozen=True)
class Column:
    """One exported feature: its name, its type (string, float32, int64, float64), and whether it is a list."""

    name: str
    type: str
    list: bool

    def to_json(self) -> dict[str, Any]:
        """The column as the manifest records it."""
        return {"name": self.name, "type": self.type, "list": self.list}


@dataclasses.dataclass
class FeatureStats:
    """What the first pass saw of one feature."""

    type: Optional[str]  # None while only empty lists were seen
    list: bool
    first: tuple[str, int]
    present: int = 0
    first_lacking: Optional[tuple[str, int]] = None
    conflict: Optional[str] = None


def value_type(value: Any) -> tuple[Optional[str], bool]:
    """(string / float32 / int64 / None for an empty list, is a list) of a record value."""
    is_list = isinstance(value, list)
    values = value if is_list else [value]
    if not values:
        return None, True
    first = values[0]
    if isinstance(first, (str, bytes)):
        return STRING, is_list
    if isinstance(first, float):
        return FLOAT, is_list
    if isinstance(first, int):
        return INT, is_list
    raise ExportError(f"a value of type {type(first).__name__} cannot be exported")


@dataclasses.dataclass
class Survey:
    """The first pass over the source: every feature's stats and the record count."""

    features: dict[str, FeatureStats] = dataclasses.field(default_factory=dict)
    records: int = 0
    first: Optional[tuple[str, int]] = None

    def add(self, record: records.Record, where: tuple[str, int]) -> None:
        """Counts one record's features (types, list-ness, where each is first missing)."""
        if self.first is None:
            self.first = where
        for name, stats in self.features.items():
            if name not in record and stats.first_lacking is None:
                stats.first_lacking = where
        for name, value in record.items():
            kind, is_list = value_type(value)
            stats = self.features.get(name)
            if stats is None:
                stats = self.features[name] = FeatureStats(kind, is_list, where,
                                                           first_lacking=self.first if self.records else None)
            elif kind is not None and stats.type is not None and kind != stats.type and {kind, stats.type} <= NUMBERS:
                stats.type = FLOAT64  # ints in some records, floats in others: exact as doubles
            elif kind is not None and stats.type is not None and kind != stats.type and stats.conflict is None:
                stats.conflict = (f"feature {name!r} is {kind} in {where[0]} record {where[1]} but {stats.type} in "
                                  f"{stats.first[0]} record {stats.first[1]}")
            stats.type = stats.type or kind
            stats.list = stats.list or is_list
            stats.present += 1
        self.records += 1


def survey(source: Source, progress: Progress) -> Survey:
    """The first pass: reads (and verifies) every source file once, records no values."""
    found = Survey()
    for file in source.files:
        before = found.records
        for number, record in read_source_file(file):
            found.add(record, (file.path, number))
        progress.tick(1, found.records - before)
    return found


def choose_columns(found: Survey, requested: tuple[str, ...], allow_missing: bool) -> list[Column]:
    """The columns to export, checked against what the first pass saw; raises ExportError naming a problem."""
    names = _expand(found, requested) if requested else default_features(found)
    if not names:
        raise ExportError("the source has no string or score feature to export; name some with --features")
    columns = []
    for name in names:
        stats = found.features[name]
        if stats.conflict:
            raise ExportError(f"{stats.conflict}: one column cannot hold both; leave it out of --features")
        if stats.present < found.records and not allow_missing:
            path, number = stats.first_lacking or found.first or ("?", 0)
            raise ExportError(f"{path} record {number} has no feature {name!r} ({found.records - stats.present} of "
                              f"{found.records} records lack it); pass --allow_missing to write null there, or leave "
                              f"it out of --features")
        columns.append(Column(name, stats.type or STRING, stats.list))
    return columns


def default_features(found: Survey) -> list[str]:
    """Every string feature present, in the schema's order, then every score feature, sorted."""
    scores = sorted(name for name in found.features if name.startswith("score/"))
    return [name for name in records.STRING_FEATURES if name in found.features] + scores


def _expand(found: Survey, requested: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for want in requested:
        if any(ch in want for ch in "*?["):
            matched = sorted(name for name in found.features if fnmatch.fnmatchcase(name, want))
            if not matched:
                raise ExportError(f"--features {want!r} matches no feature of the source "
                                  f"(it has {', '.join(sorted(found.features))})")
        elif want not in found.features:
            near = flags.near(want, list(found.features))
            hint = f"; did you mean {near!r}?" if near else f" (it has {', '.join(sorted(found.features))})"
            raise ExportError(f"--features {want!r}: no record of the source has it{hint}")
        else:
            matched = [want]
        names.extend(name for name in matched if name not in names)
    return names


# ------------------------------------------------------------------------------------ rows


def cell(column: Column, value: Any, where: tuple[str, int], allow_missing: bool) -> Any:
    """A record value as the column holds it (str, float, int, a list of those, or None when missing)."""
    if value is None:
        if allow_missing:
            return None
        raise ExportError(f"{where[0]} record {where[1]} has no feature {column.name!r}; pass --allow_missing to "
                          f"write null there, or leave it out of --features")
    values = [_scalar(column, v, where) for v in (value if isinstance(value, list) else [value])]
    if column.list:
        return values
    if len(values) != 1:
        raise ExportError(f"{where[0]} record {where[1]}: feature {column.name!r} holds {len(values)} values, but "
                          f"the first pass found one in every record (the source changed while exporting?)")
    return values[0]


def _scalar(column: Column, value: Any, where: tuple[str, int]) -> Any:
    kind, _ = value_type(value)
    if column.type == FLOAT64 and kind in NUMBERS:
        return float(value)
    if kind != column.type:
        raise ExportError(f"{where[0]} record {where[1]}: feature {column.name!r} is {kind}, its column {column.type}")
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ExportError(f"{where[0]} record {where[1]}: feature {column.name!r} is not UTF-8 text; leave it "
                              f"out of --features") from None
    return value


def rows(file: SourceFile, columns: list[Column], allow_missing: bool, counter: list[int]) -> Iterator[list[Any]]:
    """The rows of one source file (each a list of cells in column order); counter[0] counts records read."""
    for number, record in read_source_file(file):
        counter[0] += 1
        yield [cell(c, record.get(c.name), (file.path, number), allow_missing) for c in columns]


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def jsonl_bytes(batch: Iterable[list[Any]], columns: list[Column], zstd_level: Optional[int]) -> tuple[bytes, int]:
    """(the JSON lines of the rows, zstd-compressed when a level is given; the number of rows)."""
    compressor = None
    if zstd_level is not None:
        import zstandard
        compressor = zstandard.ZstdCompressor(level=zstd_level).compressobj()
    out, n = [], 0
    for row in batch:
        line = json.dumps({c.name: _json_value(v) for c, v in zip(columns, row)}, ensure_ascii=False,
                          separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
        out.append(compressor.compress(line) if compressor else line)
        n += 1
    if compressor:
        out.append(compressor.flush())
    return b"".join(out), n


def arrow_schema(columns: list[Column]):
    """The Parquet schema of the columns: string, float32, int64, float64, or a list of one of those."""
    import pyarrow as pa
    types = {STRING: pa.string(), FLOAT: pa.float32(), INT: pa.int64(), FLOAT64: pa.float64()}
    return pa.schema([pa.field(c.name, pa.list_(types[c.type]) if c.list else types[c.type]) for c in columns])


def parquet_bytes(batch: Iterable[list[Any]], columns: list[Column], row_group_rows: int,
                  zstd_level: int) -> tuple[bytes, int]:
    """(a Parquet file of the rows, in row groups of row_group_rows, zstd pages; the number of rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = arrow_schema(columns)
    sink, n, pending = _bytes_io.BytesIO(), 0, []

    def flush(writer):
        table = pa.table({c.name: [row[i] for row in pending] for i, c in enumerate(columns)}, schema=schema)
        writer.write_table(table, row_group_size=row_group_rows)
        pending.clear()

    with pq.ParquetWriter(sink, schema, compression="zstd", compression_level=zstd_level) as writer:
        for row in batch:
            pending.append(row)
            n += 1
            if len(pending) == row_group_rows:
                flush(writer)
        if pending or not n:
            flush(writer)
    return sink.getvalue(), n


# ------------------------------------------------------------------------------------ the export


class Progress:
    """Logs files and records done against their totals, at most every PROGRESS_SECONDS (and at the end)."""

    def __init__(self, what: str, files: int, records_total: Optional[int]):
        self.what, self.files, self.total = what, files, records_total
        self.done_files, self.done_records, self.last = 0, 0, time.monotonic()

    def tick(self, files: int, records_done: int) -> None:
        """Adds files and records done; logs when due."""
        self.done_files += files
        self.done_records += records_done
        if self.done_files == self.files or time.monotonic() - self.last >= PROGRESS_SECONDS:
            total = f"/{self.total}" if self.total is not None else ""
            log.info("export: %s %d/%d files, %d%s records", self.what, self.done_files, self.files,
                     self.done_records, total)
            self.last = time.monotonic()


def file_name(index: int, count: int, fmt: str) -> str:
    """`part-00002-of-00010.parquet`: the export file of the index-th source file (sorted by path)."""
    return f"part-{index:05d}-of-{count:05d}{FORMATS[fmt]}"


def marker_path(output: str, name: str) -> str:
    """Where the marker of an export file goes."""
    return io.join(output, MARKERS_DIR, name + ".json")


def described(config: ExportConfig, source: Source) -> dict[str, Any]:
    """What shapes the export's bytes (the job file and the fingerprint record it; a change is refused)."""
    return {"input": source.directory, "source_digest": source.digest(), "format": config.format,
            "features": list(config.features), "allow_missing": config.allow_missing,
            "row_group_rows": config.row_group_rows, "zstd_level": config.zstd_level, "export_format": EXPORT_FORMAT}


def verified_markers(output: str, fingerprint: str, names: list[str], source: Source) -> dict[str, dict[str, Any]]:
    """The markers of this export whose file is there with its recorded size and CRC32C, by file name."""
    listing = io.list_stats(output)
    good = {}
    for name, file in zip(names, source.files):
        path = marker_path(output, name)
        if path not in listing:
            continue
        try:
            marker = io.read_json(path)
        except ValueError:
            continue
        if marker.get("fingerprint") != fingerprint or marker.get("source") != file.path:
            continue
        target = io.join(output, name)
        problem = io.verify(target, marker, listing.get(target)) if target in listing else "is missing"
        if problem:
            log.warning("export: %s %s; writing it again", target, problem)
            continue
        good[name] = marker
    return good


def finished_manifest(output: str, fingerprint: str) -> Optional[dict[str, Any]]:
    """The export's manifest when it is of this export and every file it lists verifies, else None."""
    path = io.join(output, MANIFEST_FILE)
    if not io.exists(path):
        return None
    manifest = io.read_json(path)
    if manifest.get("fingerprint") != fingerprint:
        return None
    listing = io.list_stats(output)
    for name, info in manifest.get("files", {}).items():
        target = io.join(output, name)
        if target not in listing or io.verify(target, info, listing[target]):
            return None
    return manifest


def write_file(config: ExportConfig, file: SourceFile, columns: list[Column], output: str, name: str,
               fingerprint: str) -> dict[str, Any]:
    """Exports one source file to output/name, then its marker; returns the marker."""
    counter = [0]
    batch = rows(file, columns, config.allow_missing, counter)
    if config.format == "parquet":
        data, n = parquet_bytes(batch, columns, config.row_group_rows, config.zstd_level)
    else:
        data, n = jsonl_bytes(batch, columns, config.zstd_level if config.format == "jsonl.zst" else None)
    info = io.atomic_write(io.join(output, name), data)
    marker = {"file": name, "fingerprint": fingerprint, "source": file.path, "source_file": file.expected,
              "read": counter[0], "rows": n, **info, "schema": [c.to_json() for c in columns]}
    io.write_json(marker_path(output, name), marker)
    return marker


def build_manifest(config: ExportConfig, source: Source, fingerprint: str, columns: list[Column],
                   markers: list[dict[str, Any]], reused: int, started_at: str) -> dict[str, Any]:
    """The export manifest: the source's identity, the columns, every file (rows, size, CRC32C) and counts."""
    read, written = sum(m["read"] for m in markers), sum(m["rows"] for m in markers)
    return {
        "job": JOB, "config": described(config, source), "fingerprint": fingerprint, "source": source.about,
        "format": config.format, "columns": [c.to_json() for c in columns],
        "outputs": {"records": [m["file"] for m in markers]},
        "files": {m["file"]: {"size": m["size"], "crc32c": m["crc32c"], "rows": m["rows"], "source": m["source"]}
                  for m in markers},
        "counts": {"read": read, "written": written, "source_records": source.records, "files": len(markers),
                   "files_reused": reused},
        "reconciled": read == written and source.records in (None, read),
        "versions": provenance.package_versions(("gristmill", "pyarrow", "zstandard")), "started_at": started_at,
        "finished_at": provenance.utc_now(),
    }


def check_paths(output: str, source: Source) -> None:
    """Refuses an --output that is the input, lies inside it, or holds any of its files (--overwrite would
    delete them)."""
    inside = lambda path, folder: path == folder or path.startswith(folder.rstrip("/") + "/")  # noqa: E731
    if inside(output, source.directory) or inside(source.directory, output) or \
            any(inside(f.path, output) for f in source.files):
        raise errors.UsageError(f"--output {output} overlaps the input {source.directory}; export elsewhere")


def export(config: ExportConfig) -> dict[str, Any]:
    """Exports the input into config.output (see the module docstring); returns the export manifest."""
    source = open_source(config.input)
    output = absolute(config.output)
    check_paths(output, source)
    fingerprint = units.fingerprint(JOB, described(config, source))
    log.info("export: %s (%s, %d record file(s), %s records) -> %s as %s", source.directory,
             source.about["kind"], len(source.files), source.records, output, config.format)
    with lease.acquire(output, f"gristmill {JOB}"):
        removed = io.remove_temporaries(output) if io.is_dir(output) else 0
        if removed:
            log.info("export: removed %d staging file(s) that killed writes left", removed)
        fresh = config.overwrite or not io.exists(io.join(output, units.JOB_FILE))
        units.check_output(output, JOB, described(config, source), fingerprint, config.overwrite)
        try:
            return _export(config, source, output, fingerprint)
        except Exception:
            if fresh and not io.glob(marker_path(output, "*"), allow_empty=True):
                io.delete_tree(output, keep=(lease.LEASE_FILE,))  # a corrected command is not refused
            raise


def _export(config: ExportConfig, source: Source, output: str, fingerprint: str) -> dict[str, Any]:
    finished = finished_manifest(output, fingerprint)
    if finished is not None:
        log.info("export: %s is complete (%d files, %d rows); nothing to do", output,
                 finished["counts"]["files"], finished["counts"]["written"])
        return finished
    started_at = provenance.utc_now()
    names = [file_name(i, len(source.files), config.format) for i in range(len(source.files))]
    done = verified_markers(output, fingerprint, names, source)
    if done:
        columns = [Column(**c) for c in next(iter(done.values()))["schema"]]
    else:
        found = survey(source, Progress("first pass", len(source.files), source.records))
        if not found.records:
            raise ExportError(f"{source.directory} holds no records: there is nothing to export")
        columns = choose_columns(found, config.features, config.allow_missing)
    log.info("export: %d column(s): %s; %d of %d file(s) already written", len(columns),
             ", ".join(f"{c.name} ({c.type}{'[]' if c.list else ''})" for c in columns), len(done), len(names))
    progress = Progress("wrote", len(names), source.records)
    markers = []
    for name, file in zip(names, source.files):
        marker = done.get(name) or write_file(config, file, columns, output, name, fingerprint)
        markers.append(marker)
        progress.tick(1, marker["rows"])
    manifest = build_manifest(config, source, fingerprint, columns, markers, len(done), started_at)
    io.write_json(io.join(output, MANIFEST_FILE), manifest)
    counts = manifest["counts"]
    log.info("export: %s: read %d, written %d rows in %d file(s) (%d reused)%s", io.join(output, MANIFEST_FILE),
             counts["read"], counts["written"], counts["files"], counts["files_reused"],
             "" if manifest["reconciled"] else " (COUNTS DO NOT RECONCILE with the source's manifest)")
    return manifest


def run(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """`gristmill export --input DIR --output DIR [--format parquet|jsonl|jsonl.zst] [--features F,...]`."""
    config = flags.parse_config(ExportConfig, list(argv or []), "gristmill export", __doc__)
    flags.checkpoint()
    return export(config)
