"""The job kit: what every gristmill Beam job shares, so a scorer is a pure module plus a few lines.

    work items (files, done chunks) --ReadUnits--> (ref, record) ---scorer---> (ref, scored record)
                                           \\--> unit infos, reader dead letters      \\--> scorer dead letters
    all of them ------------------------------------------------------------------> WriteUnits
        -> DIR/units/<unit>.tfrecord, .dead.jsonl, .json (marker, last)  --Finalize--> dead_letters.jsonl,
                                                                                      manifest.json (last)

`ref` is (unit key, record number). WriteUnits buffers one unit at a time per bundle and writes it
when every item of the unit has arrived, so memory per worker is bounded by the unit size, not the
corpus, and no group holds a shard of the corpus. The reader emits a whole unit from one call,
and everything from the reader to the writer is element-wise (fused into one stage by every
runner), so a unit never spans bundles; a bundle that ends with an unfinished unit fails loudly
and is retried by the runner.

The kit owns option parsing (flags derived from the scorer's config dataclass), reading, units
(resume and incremental runs, see `units.py`), writing, dead letters, the manifest and `--limit`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from gristmill import documents, flags, io, lease, records
from gristmill.pipelines import units

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
COUNTER_NAMESPACE = "gristmill"
DEAD_LETTER_NAMESPACE = "gristmill.dead_letters"
DEAD_LETTER_FILE = "dead_letters.jsonl"
MANIFEST_FILE = records.MANIFEST_FILE
MANIFESTS_DIR = "manifests"  # an immutable copy of every finished run's manifest
VERSIONS_DIR = "versions"  # files of one output version (dead letters, plans, sketches, re-scored units)
INFERENCE_ERROR = "inference_error"
PROGRESS_SECONDS = 10.0
log = logging.getLogger(__name__)


class UsageError(ValueError):
    """A job was started with missing or contradictory flags."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobOptions:
    """Flags every job takes: where it reads and writes, how it parses, how it cuts work into units."""

    input: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "Input file globs, local or gs://, or a gristmill output directory (read through its manifest)"})
    output: Optional[str] = dataclasses.field(default=None, metadata={"help": "Output directory, local or gs://"})
    format: str = dataclasses.field(default="auto", metadata={
        "help": "Input format: json (C4 / JSON lines; .gz and .zst ok), lines, tfrecord, parquet, or auto by name",
        "choices": documents.FORMATS})
    text_field: str = dataclasses.field(default="text", metadata={"help": "JSON key holding the document text"})
    keep_fields: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "JSON fields to carry into the records as features (e.g. label,lang)"})
    max_document_bytes: int = dataclasses.field(default=1_000_000, metadata={
        "help": "Documents larger than this (UTF-8 bytes) are dead-lettered as too_large"})
    unit_records: int = dataclasses.field(default=units.DEFAULT_UNIT_RECORDS, metadata={
        "help": "Records of an input file per work unit (the unit of resume and of memory)"})
    unit_bytes: int = dataclasses.field(default=units.DEFAULT_UNIT_BYTES, metadata={
        "help": "A unit closes early once its records' raw bytes reach this: bounds a worker's memory"})
    resume: bool = dataclasses.field(default=True, metadata={
        "help": "Reuse finished units of an earlier run of the same configuration (--noresume redoes them)"})
    overwrite: bool = dataclasses.field(default=False, metadata={
        "help": "Remove everything in --output first"})
    verify_inputs: bool = dataclasses.field(default=False, metadata={
        "help": "Make each input file's CRC32C part of its identity (read once locally; free on GCS), so an "
                "input rewritten with the same size and modification time is noticed and redone"})
    limit: int = dataclasses.field(default=0, metadata={
        "help": "Read only the first N records of the input (files in sorted order); 0 reads everything"})
    workers: int = dataclasses.field(default=0, metadata={
        "help": "Local runs: N worker processes (multi-processing FnApiRunner)"})
    accelerator: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Dataflow accelerator for the model step only, e.g. 'type:nvidia-l4;count:1;install-nvidia-driver'"})

    def reader_config(self) -> documents.ReaderConfig:
        """How the input is parsed."""
        kwargs: dict[str, Any] = {"format": self.format, "text_field": self.text_field,
                                  "max_document_bytes": self.max_document_bytes}
        if self.keep_fields:
            kwargs["keep_fields"] = tuple(self.keep_fields)
        return documents.ReaderConfig(**kwargs)


# ------------------------------------------------------------------------------------ options


def with_runner_defaults(argv: list[str], workers: int = 0) -> list[str]:
    """Fills in gristmill's runner defaults around the user's Beam flags.

    - No `--runner`: Beam's in-process FnApiRunner, named explicitly (no Prism download).
    - workers > 0: that runner in multi-processing mode with that many worker processes.
    - `--job_endpoint=embed` without `--environment_type`: LOOPBACK, since the embedded job
      server would otherwise try to start SDK workers in Docker.
    - `--runner dask` (or DaskRunner, any case): gristmill's fixed DaskRunner with one input file
      per partition (`gristmill.runners.dask.runner_args`); without `--dask_client_address` Dask
      starts a LocalCluster.
    """
    args = list(argv)
    dask_names = ("dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner",
                  "gristmill.runners.dask.daskrunner")
    if (_flag_value(args, "--runner") or "").lower() in dask_names:
        try:
            from gristmill.runners import dask as dask_engine
        except ModuleNotFoundError as err:
            if err.name not in ("dask", "distributed") and not (err.name or "").startswith("dask."):
                raise
            raise UsageError(f"--runner dask needs Dask ({err.name} is not installed): "
                             f"pip install 'gristmill[dask]'") from err
        args = dask_engine.runner_args(args)
    names = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if "--runner" not in names:
        args.append(f"--runner={LOCAL_RUNNER}")
    if workers > 0 and "--direct_running_mode" not in names:
        args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    if _flag_value(args, "--job_endpoint") == "embed" and "--environment_type" not in names:
        args.append("--environment_type=LOOPBACK")
    return args


def _flag_value(args: list[str], name: str) -> Optional[str]:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def parse(argv: Optional[list[str]], config_class: type[Any], description: str,
          defaults: Optional[dict[str, Any]] = None) -> tuple[JobOptions, Any, PipelineOptions]:
    """Parses the kit's flags, the job's config flags and pass-through Beam flags.

    Returns (job options, the job's config dataclass, Beam pipeline options with runner defaults).
    """
    parser = flags.Parser(description=description,
                          epilog="Beam's pipeline options pass through (--runner, --project, --temp_location, ...).")
    flags.add_flags(parser, JobOptions)
    flags.add_flags(parser, config_class, defaults)
    namespace, rest = flags.parse(parser, sys.argv[1:] if argv is None else argv, beam=True)
    options = flags.from_namespace(namespace, JobOptions)
    options = dataclasses.replace(options, output=options.output and absolute(options.output),
                                  input=tuple(",".join(absolute(p.strip()) if p.strip() else p for p in spec.split(","))
                                              for spec in options.input))
    if not options.input:
        raise UsageError("--input is required (a file glob, local or gs://, or a gristmill output directory)")
    if not options.output:
        raise UsageError("--output is required (a directory, local or gs://)")
    if options.unit_records < 1:
        raise UsageError(f"--unit_records must be at least 1, got {options.unit_records}")
    if options.accelerator:
        from gristmill.pipelines import resources
        resources.parse_accelerator(options.accelerator)
    try:
        config = flags.from_namespace(namespace, config_class)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from err
    flags.checkpoint()
    return options, config, PipelineOptions(with_runner_defaults(rest, options.workers))


def model_step_hints(options: JobOptions) -> dict[str, Any]:
    """Resource hints for the model step (the accelerator), empty without --accelerator."""
    if not options.accelerator:
        return {}
    from gristmill.pipelines import resources
    return resources.model_step_hints(options.accelerator)


# ------------------------------------------------------------------------------------ inputs


def input_files(options: JobOptions) -> list[units.InputFile]:
    """The input files with their identities; with --limit, only the files and records it covers."""
    paths = documents.expand_patterns(options.input)
    log.info("input: %d file(s)", len(paths))
    files = []
    remaining = options.limit
    for path in paths:
        stat = io.stat(path)
        crc = (stat.crc32c or io.file_checksum(path)) if options.verify_inputs else None
        if options.limit <= 0:
            files.append(units.InputFile(path, stat.size, stat.mtime, crc32c=crc))
            continue
        if remaining <= 0:
            break
        count = _count_records(path, options.reader_config(), remaining)
        files.append(units.InputFile(path, stat.size, stat.mtime, max_records=remaining, crc32c=crc))
        remaining -= count
    return files


def documents_in(options: JobOptions) -> Optional[int]:
    """The records the input holds when known without reading it (None when not): --limit, or the
    manifests of gristmill output directories given as --input. For progress totals only."""
    if options.limit > 0:
        return options.limit
    total = 0
    for pattern in options.input:
        for part in (p.strip() for p in pattern.split(",") if p.strip()):
            if any(ch in part for ch in "*?[") or not io.exists(io.join(part, MANIFEST_FILE)):
                return None
            total += records.read_manifest(part)["counts"]["written"]
    return total


def _count_records(path: str, reader: documents.ReaderConfig, cap: int) -> int:
    """Records of a file up to cap (a --limit trial reads this little twice)."""
    return sum(1 for _ in documents.read_numbered(path, reader, max_records=cap))


# ------------------------------------------------------------------------------------ items


class UnitInfo(NamedTuple):
    """What the reader knows of one unit: how many items (documents + its dead letters) it emitted."""

    key: str
    file: units.InputFile
    chunk: int
    last: bool
    documents: int
    unreadable: int


class Item(NamedTuple):
    """What WriteUnits consumes. kind: unit | record | dead | excluded."""

    kind: str
    unit: str
    number: int
    value: Any


UNIT, RECORD, DEAD, EXCLUDED = "unit", "record", "dead", "excluded"


def duration(seconds: float) -> str:
    """A short human duration: 45 s, 3 min 12 s, 2 h 05 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Logs count, total, percentage, rate and ETA at a steady interval while a worker processes elements.

    The rate is measured from the first element, not from setup (model loading), so the ETA is
    the time the remaining elements take at the current pace. total: the elements expected in the
    whole job when known (None: the count and rate only). Each worker process logs its own count.
    """

    def __init__(self, what: str, total: Optional[int] = None, every_seconds: float = PROGRESS_SECONDS):
        self.what = what
        self.total = total
        self.every = every_seconds
        self.count = self.first = 0
        self.start: Optional[float] = None
        self.last = time.monotonic()

    def tick(self, n: int = 1) -> None:
        """Counts n more elements and logs when the interval has passed."""
        now = time.monotonic()
        if self.start is None:
            self.start, self.first = now, n
        self.count += n
        if now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        """The progress line: `documents read: 1,200 of 10,000 (12.0%) at 40.1/s, ETA 3 min 40 s`."""
        now = time.monotonic() if now is None else now
        elapsed = now - (self.start or now)
        rate = (self.count - self.first) / elapsed if elapsed >= 1.0 else 0.0  # from the first element on
        pace = f" at {rate:.1f}/s" if rate > 0 else ""
        if not self.total:
            return f"{self.what}: {self.count:,}{pace}"
        left = max(self.total - self.count, 0)
        eta = f", ETA {duration(left / rate)}" if rate > 0 and left else ""
        return f"{self.what}: {self.count:,} of {self.total:,} ({100 * self.count / self.total:.1f}%){pace}{eta}"


class _ReadUnitsFn(beam.DoFn):
    """FileWork -> Items: each document, each dead letter and one UnitInfo per unit not done."""

    def __init__(self, reader: documents.ReaderConfig, total: Optional[int] = None):
        self.reader = reader
        self.total = total
        self.read = Metrics.counter(COUNTER_NAMESPACE, "documents_read")
        self.units = Metrics.counter(COUNTER_NAMESPACE, "units_read")

    def setup(self):
        self.progress = Progress("documents read", self.total)
        self.dead = {reason: Metrics.counter(DEAD_LETTER_NAMESPACE, reason) for reason in documents.REASONS}

    def process(self, work: units.FileWork):
        done = work.done_chunks
        chunker = work.chunker()
        pending: list[tuple[int, Any]] = []
        chunk = None
        for number, item in documents.read_numbered(work.file.path, self.reader,
                                                    skip=lambda n, size: chunker.place(n, size) in done,
                                                    max_records=work.file.max_records):
            number = max(number, 1)
            item_chunk = chunker.chunk_of(number)
            if chunk is not None and item_chunk != chunk:
                yield from self._emit(work, chunk, pending, last=False)
                pending = []
            chunk = item_chunk
            pending.append((number, item))
        if chunk is None:  # an empty file, or every chunk done but the last marker missing
            last_chunk = max(done) + 1 if done else 0
            if last_chunk not in done:
                yield from self._emit(work, last_chunk, [], last=True)
        else:
            yield from self._emit(work, chunk, pending, last=True)

    def _emit(self, work: units.FileWork, chunk: int, pending: list[tuple[int, Any]], last: bool):
        key = work.unit_key(chunk)
        n_docs = n_dead = 0
        for number, item in pending:
            if isinstance(item, documents.DeadLetter):
                n_dead += 1
                self.dead[item.reason].inc()
                yield Item(DEAD, key, number, item)
            else:
                n_docs += 1
                self.progress.tick()
                yield Item(RECORD, key, number, item)
        self.read.inc(n_docs)
        self.units.inc()
        yield Item(UNIT, key, 0, UnitInfo(key, work.file, chunk, last, n_docs, n_dead))


class ReadUnits(beam.PTransform):
    """FileWork items -> one stream of Items: unit infos, documents (`record`) and dead letters.

    Scorers map `record` Items and pass every other Item through, so a unit's Items stay in one
    fused stage from the reader to the writer. Example: a two-record JSONL file with
    `unit_records=1` gives units `f.jsonl.00000.<h>` and `f.jsonl.00001.<h>`, each with a `unit`
    Item and one `record` Item.
    """

    def __init__(self, reader: documents.ReaderConfig, total: Optional[int] = None):
        super().__init__()
        self.reader = reader
        self.total = total

    def expand(self, work):
        return (work
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadAndValidate" >> beam.ParDo(_ReadUnitsFn(self.reader, self.total)))


def map_records(fn: Callable[[records.Record], Any]) -> Callable[[Item], Item]:
    """Lifts a record -> record function to Items: records are mapped, every other Item passes.

    fn may return a record, or a `documents.DeadLetter` to dead-letter the document, or a
    string to exclude it with that reason.
    """
    def apply(item: Item) -> Item:
        if item.kind != RECORD:
            return item
        return as_item(item, fn(item.value))
    return apply


def as_item(item: Item, result: Any) -> Item:
    """The Item a scorer's result for a record Item becomes (record, DeadLetter or exclusion reason)."""
    if isinstance(result, documents.DeadLetter):
        return Item(DEAD, item.unit, item.number, result)
    if isinstance(result, str):
        return Item(EXCLUDED, item.unit, item.number, result)
    return item._replace(value=result)


def dead_letter(item: Item, reason: str, detail: str) -> Item:
    """The dead-letter Item of a document that failed after reading (a scorer's dead letter)."""
    record = item.value
    return Item(DEAD, item.unit, item.number, documents.DeadLetter(
        record.get(records.SOURCE, ""), item.number, reason, f"document {record.get(records.ID, '?')}: {detail}",
        str(record.get(records.TEXT, ""))[:documents.EXCERPT_CHARS]))


# ------------------------------------------------------------------------------------ writing


def write_file(output_dir: str, relative_path: str, data: bytes) -> dict[str, dict[str, Any]]:
    """Writes output_dir/relative_path atomically; returns {relative_path: {"size", "crc32c"}} for a marker."""
    return {relative_path: io.atomic_write(io.join(output_dir, relative_path), data)}


def write_once(output_dir: str, relative_path: str, data: bytes) -> dict[str, dict[str, Any]]:
    """Writes a version's file unless it is there already (a rerun of the same version), which is
    never rewritten; returns {relative_path: {"size", "crc32c"}} of the file as it stands."""
    path = io.join(output_dir, relative_path)
    if io.create_exclusive(path, data):
        return {relative_path: io.file_info(data)}
    found = io.stat(path)
    return {relative_path: {"size": found.size, "crc32c": found.crc32c or io.file_checksum(path)}}


def write_unit(output_dir: str, info: UnitInfo, items: list[Item],
               extra_files: Optional[Callable[[str, UnitInfo, list[Item]], dict[str, Any]]] = None) -> dict[str, Any]:
    """Writes one finished unit (records, dead letters, then its marker) and returns the marker.

    extra_files(output_dir, info, items) may write more files of the unit; it returns marker fields,
    with the files it wrote under "files" (as `write_file` returns them).
    """
    items = sorted(items, key=lambda it: (it.number, it.kind))
    extra = dict(extra_files(output_dir, info, items)) if extra_files else {}
    files = dict(extra.pop("files", {}))
    recs = [it.value for it in items if it.kind == RECORD]
    dead = [it.value for it in items if it.kind == DEAD]
    excluded: dict[str, int] = {}
    for it in items:
        if it.kind == EXCLUDED:
            excluded[it.value] = excluded.get(it.value, 0) + 1
    if recs:
        files.update(write_file(output_dir, units.relative_unit_path(info.key, units.RECORDS_SUFFIX),
                                records.tfrecord_bytes(recs)))
    if dead:
        files.update(write_file(output_dir, units.relative_unit_path(info.key, units.DEAD_SUFFIX),
                                b"".join(d.to_json().encode("utf-8") + b"\n" for d in dead)))
    by_reason: dict[str, int] = {}
    for d in dead:
        by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
    marker = units.marker(info.key, info.file, info.chunk, info.last, info.documents, info.unreadable,
                          len(recs), by_reason, excluded, extra, files)
    io.write_json(units.unit_path(output_dir, info.key, units.MARKER_SUFFIX), marker)
    return marker


class _WriteUnitsFn(beam.DoFn):
    """Items -> unit markers: buffers each unit until all its items arrived, then writes it."""

    def __init__(self, output_dir: str, extra_files=None):
        self.output_dir = output_dir
        self.extra_files = extra_files
        self.units_written = Metrics.counter(COUNTER_NAMESPACE, "units_written")
        self.written = Metrics.counter(COUNTER_NAMESPACE, "documents_written")

    def start_bundle(self):
        self.buffers: dict[str, list[Item]] = {}
        self.infos: dict[str, UnitInfo] = {}

    def process(self, item: Item):
        if item.kind == UNIT:
            self.infos[item.unit] = item.value
            self.buffers.setdefault(item.unit, [])
        else:
            self.buffers.setdefault(item.unit, []).append(item)
        info = self.infos.get(item.unit)
        if info is not None and len(self.buffers[item.unit]) == info.documents + info.unreadable:
            marker = write_unit(self.output_dir, info, self.buffers.pop(item.unit), self.extra_files)
            del self.infos[item.unit]
            self.units_written.inc()
            self.written.inc(marker["written"])
            log.info("unit %s: %d written, %d dead-lettered", info.key, marker["written"], marker["dead_lettered"])
            yield marker

    def finish_bundle(self):
        unfinished = {k: len(v) for k, v in self.buffers.items() if v or k in self.infos}
        if unfinished:
            expected = {k: info.documents + info.unreadable for k, info in self.infos.items()}
            detail = ", ".join(f"{k} ({n} of {expected.get(k, '?')})" for k, n in list(unfinished.items())[:3])
            raise RuntimeError(f"units left unfinished at the end of a bundle: {detail}; a unit's Items must stay "
                               f"in one fused read-score-write stage (no Flatten, GroupByKey or Reshuffle between)")


class WriteUnits(beam.PTransform):
    """Items (unit infos, records, dead letters, exclusions) -> one marker dict per unit written."""

    def __init__(self, output_dir: str, extra_files=None):
        super().__init__()
        self.output_dir = output_dir
        self.extra_files = extra_files

    def expand(self, items):
        return items | "WriteUnit" >> beam.ParDo(_WriteUnitsFn(self.output_dir, self.extra_files))


# ------------------------------------------------------------------------------------ manifest


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a run's results, for the manifest."""
    import importlib.metadata
    import platform
    versions = {"python": platform.python_version()}
    for name in ("gristmill", "apache-beam", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "flax", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def utc_now() -> str:
    """The current UTC time in ISO 8601, for manifests."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class IncompleteJobError(RuntimeError):
    """Units of a job never arrived (a lost bundle, a dead worker): no manifest is written."""


def output_version(base: dict[str, Any], markers: Iterable[dict[str, Any]]) -> str:
    """16 hex digits naming one finished version of an output: the job's fingerprint and its units."""
    keys = sorted(m["key"] for m in markers)
    return units.fingerprint("version", {"fingerprint": base.get("fingerprint"), "units": keys})[:16]


def version_path(version: str, name: str) -> str:
    """A version's own file, `versions/<version>/<name>`, relative to the output directory."""
    return f"{VERSIONS_DIR}/{version}/{name}"


def check_complete(base: dict[str, Any], markers: list[dict[str, Any]]) -> None:
    """Raises IncompleteJobError naming the missing units unless every input file is covered."""
    files = [units.InputFile(**identity) for identity in base.get("inputs", [])]
    missing = units.missing_units(files, int(base["options"]["unit_records"]), base["fingerprint"], markers)
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise IncompleteJobError(
            f"{len(missing)} unit(s) of the input never arrived, so no manifest was written: {shown}. The runner "
            f"lost work; rerun the job (finished units are reused) and check the runner's logs")


def listed_files(output_dir: str, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "crc32c"}} of files a job wrote itself (plan, sketch, ...), read back once."""
    listing = io.list_stats(output_dir)
    infos = {}
    for rel in names:
        path = io.join(output_dir, rel)
        found = listing.get(path)
        if found is None:
            raise FileNotFoundError(f"{path}: a file of this run is missing before its manifest")
        infos[rel] = {"size": found.size, "crc32c": found.crc32c or io.file_checksum(path)}
    return infos


def build_manifest(base: dict[str, Any], markers: Iterable[dict[str, Any]], reused: int,
                   files: Optional[dict[str, str]] = None,
                   infos: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """The run manifest from the unit markers: counts that reconcile, the units and the output files.

    read = documents + records the reader dead-lettered, and read = written + dead_lettered +
    excluded, where dead_lettered also holds documents that failed later (a scorer's dead letters)
    and excluded counts documents a job leaves out on purpose (a selection's not-selected ones).
    `files` lists every file this version references with its size and CRC32C: the markers' files
    and `infos` (the job's own files). Readers verify against it; nothing it lists is ever rewritten.
    """
    markers = sorted(markers, key=lambda m: (m["source"], m["chunk"]))
    dead_by_reason: dict[str, int] = {}
    excluded: dict[str, int] = {}
    for m in markers:
        for reason, n in m["dead_lettered_by_reason"].items():
            dead_by_reason[reason] = dead_by_reason.get(reason, 0) + n
        for reason, n in m["excluded"].items():
            excluded[reason] = excluded.get(reason, 0) + n
    read = sum(m["read"] for m in markers)
    written = sum(m["written"] for m in markers)
    dead = sum(dead_by_reason.values())
    manifest = dict(base)
    manifest["finished_at"] = utc_now()
    manifest["counts"] = {
        "read": read, "documents": sum(m["documents"] for m in markers), "written": written,
        "dead_lettered": dead, "dead_lettered_by_reason": dict(sorted(dead_by_reason.items())),
        "excluded": dict(sorted(excluded.items())), "units_total": len(markers), "units_reused": reused,
    }
    manifest["reconciled"] = read == written + dead + sum(excluded.values())
    manifest["units"] = [{k: m[k] for k in ("key", "source", "chunk", "read", "written", "dead_lettered")}
                         for m in markers]
    manifest["outputs"] = {"records": [m["records"] for m in markers if m.get("records")],
                           "dead_letters": DEAD_LETTER_FILE, **(files or {})}
    listed: dict[str, dict[str, Any]] = {}
    for m in markers:
        listed.update(m.get("files", {}))
    listed.update(infos or {})
    manifest["files"] = dict(sorted(listed.items()))
    return manifest


def finalize(output_dir: str, base: dict[str, Any], markers: list[dict[str, Any]], reused: int,
             files: Optional[dict[str, str]] = None, manifest_generation: Optional[int] = None) -> dict[str, Any]:
    """Checks every unit arrived, writes the merged dead letters and then, last, the manifest.

    The merged dead letters and the manifest's history copy go under `versions/<version>/` and
    `manifests/`, never replaced; the top-level `dead_letters.jsonl` and `manifest.json` are the
    latest run's copies. manifest_generation: replace manifest.json only if it is still the one
    the job saw when it started (0: none yet), so a writer that lost its lease cannot overwrite.
    """
    check_complete(base, markers)
    dead_lines = []
    for m in sorted(markers, key=lambda m: (m["source"], m["chunk"])):
        if m.get("dead_letters"):
            dead_lines.append(io.read_bytes(io.join(output_dir, m["dead_letters"])))
    version = output_version(base, markers)
    dead_letters = version_path(version, DEAD_LETTER_FILE)
    infos = write_once(output_dir, dead_letters, b"".join(dead_lines))
    # Bookkeeping for the next run's resume, not an output: it records this machine's file
    # generations, so it is named in `outputs` but not checksummed in `files` (resume checks each
    # entry against the listing). Created once per version, like every file of a version.
    index = version_path(version, units.INDEX_FILE)
    if not io.exists(io.join(output_dir, index)):
        io.create_exclusive(io.join(output_dir, index),
                            units.index_bytes(output_dir, markers, io.list_stats(output_dir)))
    io.atomic_write(io.join(output_dir, DEAD_LETTER_FILE), b"".join(dead_lines))
    infos.update(listed_files(output_dir, [rel for rel in (files or {}).values() if rel]))
    manifest = build_manifest(base, markers, reused,
                              {**(files or {}), "dead_letters": dead_letters, "units_index": index}, infos)
    manifest["output_version"] = version
    stamp = manifest["finished_at"].replace("-", "").replace(":", "").split("+")[0]
    manifest["history"] = f"{MANIFESTS_DIR}/{stamp}-{version}.json"
    data = io.json_bytes(manifest)
    io.atomic_write(io.join(output_dir, manifest["history"]), data)
    io.atomic_write(io.join(output_dir, MANIFEST_FILE), data, if_generation=manifest_generation)
    counts = manifest["counts"]
    seconds = (datetime.datetime.fromisoformat(manifest["finished_at"])
               - datetime.datetime.fromisoformat(base["started_at"])).total_seconds()
    rate = "" if counts["units_reused"] else f" at {counts['read'] / max(seconds, 1e-9):.1f}/s"
    log.info("done in %s: read %d%s, written %d, dead-lettered %d, excluded %d; units %d (%d reused)%s; %s",
             duration(seconds), counts["read"], rate, counts["written"], counts["dead_lettered"],
             sum(counts["excluded"].values()), counts["units_total"], counts["units_reused"],
             "" if manifest["reconciled"] else " (COUNTS DO NOT RECONCILE)",
             io.join(output_dir, MANIFEST_FILE))
    return manifest


class Finalize(beam.PTransform):
    """New unit markers + reused ones -> the manifest, written after every unit and every `after` output."""

    def __init__(self, output_dir: str, base: dict[str, Any], reused: list[dict[str, Any]],
                 files: Optional[dict[str, str]] = None, after: Iterable[Any] = (),
                 markers_include_reused: bool = False, manifest_generation: Optional[int] = None):
        super().__init__()
        self.output_dir, self.base, self.reused, self.files = output_dir, base, reused, files
        self.after = list(after)
        self.markers_include_reused = markers_include_reused
        self.manifest_generation = manifest_generation

    def expand(self, markers):
        pipeline = markers.pipeline
        if not self.markers_include_reused:
            reused = pipeline | "ReusedUnits" >> beam.Create(self.reused)
            markers = (markers, reused) | "AllUnits" >> beam.Flatten()
        all_markers = markers | "ListUnits" >> beam.combiners.ToList()
        waits = [beam.pvalue.AsList(pc) for pc in self.after]
        output_dir, base, n_reused, files = self.output_dir, self.base, len(self.reused), self.files
        generation = self.manifest_generation
        return all_markers | "WriteManifest" >> beam.Map(
            lambda ms, *_: finalize(output_dir, base, ms, n_reused, files, generation), *waits)


# ------------------------------------------------------------------------------------ a job


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A job ready to build: its options, config, inputs, work, and the manifest's known parts."""

    options: JobOptions
    config: Any
    pipeline_options: PipelineOptions
    files: list[units.InputFile]
    work: list[units.FileWork]
    reused: list[dict[str, Any]]
    base: dict[str, Any]
    manifest_generation: int = 0  # manifest.json's generation when the job started (0: none)
    fresh: bool = False  # the output held no job before this one: a failure before any unit undoes the start
    documents: Optional[int] = None  # the input's records when known up front (progress totals)


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str)) if dataclasses.is_dataclass(config) \
        else dict(config or {})


def prepare(job: str, options: JobOptions, config: Any, pipeline_options: PipelineOptions,
            fingerprint_extra: Optional[dict[str, Any]] = None,
            files: Optional[list[units.InputFile]] = None, replans: bool = False) -> Prepared:
    """Resolves inputs, checks the output directory and splits the work into units to do and reused ones.

    replans: the job's records depend on its whole input (see units.check_output).
    """
    files = input_files(options) if files is None else files
    described = config_dict(config)
    shaping = {"scorer": described, "reader": config_dict(options.reader_config()),
               "unit_records": options.unit_records, **(fingerprint_extra or {})}
    if options.unit_bytes != units.DEFAULT_UNIT_BYTES:  # so the default keeps earlier outputs' unit keys
        shaping["unit_bytes"] = options.unit_bytes
    fp = units.fingerprint(job, shaping)
    output = options.output
    hold_output(output, f"gristmill {job}")
    try:
        fresh = not io.exists(io.join(output, units.JOB_FILE)) or options.overwrite
        removed = io.remove_temporaries(output)
        if removed:
            log.info("%s: removed %d staging file(s) that killed writes left", output, removed)
        units.check_output(output, job, {**described, "unit_records": options.unit_records,
                                         "text_field": options.text_field, "format": options.format,
                                         "keep_fields": list(options.keep_fields),
                                         "max_document_bytes": options.max_document_bytes}, fp, options.overwrite,
                           replans)
        manifest_path = io.join(output, MANIFEST_FILE)
        generation = io.stat(manifest_path).generation if io.exists(manifest_path) else 0
        previous = io.read_json(manifest_path) if generation and options.resume else None
        markers = units.resume_markers(output, previous) if options.resume else {}
    except BaseException:
        release_output(output)
        raise
    work, reused = units.plan_work(files, options.unit_records, fp, markers, options.unit_bytes)
    log.info("%s: %d file(s), %d to read, %d unit(s) reused", job, len(files), len(work), len(reused))
    base = {
        "job": job, "command": " ".join(["gristmill", *job.split()] + sys.argv[1:]) if sys.argv else job,
        "config": described, "fingerprint": fp,
        "options": config_dict(options),
        "pipeline_options": pipeline_options.get_all_options(drop_default=True, retain_unknown_options=True),
        "inputs": [f.identity() for f in files], "versions": package_versions(), "started_at": utc_now(),
    }
    total = documents_in(options)
    to_read = None if total is None else max(total - sum(m.get("read", 0) for m in reused), 0)
    return Prepared(options, config, pipeline_options, files, work, reused, base, generation or 0, fresh, to_read)


def new_pipeline(pipeline_options: PipelineOptions, save_main_session: bool, test_pipeline=None) -> beam.Pipeline:
    """The pipeline a job builds on: the test pipeline when given, else one from the options."""
    if test_pipeline is not None:
        return test_pipeline
    pipeline_options.view_as(SetupOptions).save_main_session = save_main_session
    return beam.Pipeline(options=pipeline_options)


def read(pipeline: beam.Pipeline, prepared: Prepared, label: str = "Read"):
    """The Item stream of the units still to do."""
    work = pipeline | f"{label}Work" >> beam.Create(prepared.work)
    return work | label >> ReadUnits(prepared.options.reader_config(), prepared.documents)


def write(prepared: Prepared, items, files: Optional[dict[str, str]] = None, after: Iterable[Any] = (),
          extra_files=None):
    """Writes the units from their Items and, last, the manifest. Returns the manifest PCollection."""
    markers = items | "WriteUnits" >> WriteUnits(prepared.options.output, extra_files)
    return markers | "Finalize" >> Finalize(prepared.options.output, prepared.base, prepared.reused, files, after,
                                            manifest_generation=prepared.manifest_generation)


FLEX_TEMPLATE_PY_FILE = "FLEX_TEMPLATE_PYTHON_PY_FILE"  # set in a flex template launcher image


def staged_only(pipeline_options: PipelineOptions) -> Optional[str]:
    """Why this process only stages or submits the job and must not wait for it, or None when it runs it.

    `--template_location` makes DataflowRunner write the job file and submit nothing; Dataflow's
    flex template launcher passes one (`.../template_launches/<id>/job_object`) and submits the
    file after this process exits. The launcher image runs FLEX_TEMPLATE_PYTHON_PY_FILE, so a
    DataflowRunner job started as that file is a launch even if no template location was passed.
    """
    options = pipeline_options.get_all_options()
    if options.get("dry_run"):
        return None
    if options.get("template_location"):
        return f"staged as a Dataflow template at {options['template_location']}"
    py_file = os.environ.get(FLEX_TEMPLATE_PY_FILE)
    launched = py_file and sys.argv and os.path.abspath(sys.argv[0]) == os.path.abspath(py_file)
    if launched and "Dataflow" in str(options.get("runner")):
        return "submitted by the flex template launcher"
    return None


def run_pipeline(pipeline: beam.Pipeline, prepared: Prepared, is_test: bool) -> Optional[dict[str, Any]]:
    """Runs a built pipeline to completion and returns its manifest (None for a test pipeline run elsewhere).

    A template launch (`staged_only`) returns None once the job is staged or submitted: the
    pipeline's own last step writes the manifest. The job's lease on its output is released at the
    end, whatever happened, so on Dataflow templates it guards the launch only; a test pipeline runs
    after this returns, without the lease.
    """
    output = prepared.options.output
    try:
        if is_test:
            return None
        start = time.monotonic()
        result = pipeline.run()
        if prepared.pipeline_options.get_all_options().get("dry_run"):
            return None
        staged = staged_only(prepared.pipeline_options)
        if staged:
            job_id = result.job_id() if getattr(result, "has_job", False) else None
            log.info("%s: job %s%s; its manifest will be written to %s by the pipeline's last step",
                     prepared.base["job"], staged, f" (Dataflow job {job_id})" if job_id else "",
                     io.join(output, MANIFEST_FILE))
            return None
        result.wait_until_finish()
        log.info("pipeline finished in %.1f s", time.monotonic() - start)
        held = _LEASES.get(output)
        if held is not None:
            held.check()
        manifest = records.read_manifest(output)
        if manifest.get("fingerprint") != prepared.base["fingerprint"] or \
                manifest.get("started_at") != prepared.base["started_at"]:
            raise IncompleteJobError(f"{output}: the pipeline finished but wrote no manifest of this run "
                                     f"(the manifest there is of a run started at {manifest.get('started_at')})")
        check_not_all_dead(manifest, prepared.options)
        return manifest
    except Exception:
        if not is_test:
            undo_failed_start(prepared)
        raise
    finally:
        release_output(output)


def undo_failed_start(prepared: Prepared) -> None:
    """A job that failed before writing any unit into a fresh output leaves the directory as it found it.

    So a corrected command (e.g. select with the right --score) is not refused as a different
    configuration. Once a unit is written, the outputs stay: a rerun resumes from them.
    """
    output = prepared.options.output
    if not prepared.fresh or io.glob(io.join(output, units.UNITS_DIR, "*" + units.MARKER_SUFFIX), allow_empty=True):
        return
    io.delete_tree(output, keep=(lease.LEASE_FILE,))
    log.info("%s: the job failed before its first unit; removed what it had written", output)


# ------------------------------------------------------------------------------------ one writer


_LEASES: dict[str, Any] = {}  # output directory -> the lease this process holds on it (launcher side only)


def absolute(path: str) -> str:
    """A local path made absolute (workers may start elsewhere); URLs unchanged."""
    return path if io.is_remote(path) else os.path.abspath(path)


def hold_output(output_dir: str, what: str):
    """Takes the output directory's lease for this job (see gristmill.lease); returns it."""
    release_output(output_dir)  # a job of this process that failed before run_pipeline
    _LEASES[output_dir] = lease.acquire(output_dir, what)
    return _LEASES[output_dir]


def release_output(output_dir: str) -> None:
    """Releases this process's lease on the output directory, if it holds one."""
    held = _LEASES.pop(output_dir, None)
    if held is not None:
        held.release()


# What to do when every record of a job fell to one reason: the likely cause and the flag to check.
ALL_DEAD_ADVICE = {
    documents.MISSING_TEXT: "pass --text_field naming the field that holds the text",
    documents.INVALID_UTF8: "the input is not UTF-8 text as read: a compressed or binary file (Parquet, zstd) "
                            "under a name that does not say so? Name it .parquet / .zst, or pass --format",
    documents.INVALID_JSON: "the input is not JSON lines: pass --format (lines, tfrecord, parquet) or check the "
                            "file's name (.gz, .zst, .parquet)",
    documents.UNREADABLE_FILE: "no input file could be read (permissions, format, a special file)",
}


def check_not_all_dead(manifest: dict[str, Any], options: JobOptions) -> None:
    """Fails a job whose every record became a dead letter, naming the reasons, quoting one dead letter
    and saying what to check: a wrong --text_field or format is not a result."""
    counts = manifest["counts"]
    reasons = counts["dead_lettered_by_reason"]
    if not counts["read"] or counts["written"] or counts["dead_lettered"] != counts["read"]:
        return
    ranked = sorted(reasons, key=lambda r: (-reasons[r], r))
    lines = io.read_text(io.join(options.output, manifest["outputs"]["dead_letters"])).splitlines()
    first = next(d for d in map(json.loads, lines) if d["reason"] == ranked[0])
    advice = ALL_DEAD_ADVICE.get(ranked[0], "see the dead letters for the detail")
    what = (f"lacks the text field {options.text_field!r}" if ranked == [documents.MISSING_TEXT] else
            "was dead-lettered (" + ", ".join(f"{reasons[r]} {r}" for r in ranked) + ")")
    raise documents.InputError(
        f"every one of the {counts['read']} records {what} ({first['source']} record {first['record']}: "
        f"{first['detail']}); {advice}")


# ------------------------------------------------------------------------------------ scorers


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A one-pass scorer: its job name, config class and a PTransform factory.

    transform(config, options) maps the Item stream: record Items get their score (or become
    dead-letter Items), every other Item passes through unchanged.
    """

    job: str
    config_class: type
    transform: Callable[[Any, JobOptions], beam.PTransform]
    description: str = ""
    check: Callable[[Any], None] = lambda config: None
    fingerprint_extra: Callable[[Any], dict[str, Any]] = lambda config: {}


def run_scorer(scorer: Scorer, argv=None, save_main_session=True, test_pipeline=None):
    """Parses flags, builds read -> score -> write for a one-pass scorer, runs it; returns the manifest."""
    options, config, pipeline_options = parse(argv, scorer.config_class, scorer.description)
    scorer.check(config)
    prepared = prepare(scorer.job, options, config, pipeline_options, scorer.fingerprint_extra(config))
    pipeline = new_pipeline(pipeline_options, save_main_session, test_pipeline)
    items = read(pipeline, prepared)
    write(prepared, items | "Score" >> scorer.transform(config, options))
    return run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
