"""The Item stream of a job: reading input files unit by unit (`ReadUnits`), the Items scorers map,
and progress lines.

A unit's Items (its documents, its reader's dead letters and one `UnitInfo`) come from one call of
the reader, so a unit never spans bundles; scorers map `record` Items and pass the rest through.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from gristmill import documents, io, records
from gristmill.pipelines import units
from gristmill.pipelines.job_options import JobOptions

COUNTER_NAMESPACE = "gristmill"
DEAD_LETTER_NAMESPACE = "gristmill.dead_letters"
INFERENCE_ERROR = "inference_error"
PROGRESS_SECONDS = 10.0
log = logging.getLogger("gristmill.pipelines.kit")


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
            if any(ch in part for ch in "*?[") or not io.exists(io.join(part, records.MANIFEST_FILE)):
                return None
            total += records.read_manifest(part)["counts"]["written"]
    return total


def _count_records(path: str, reader: documents.ReaderConfig, cap: int) -> int:
    """Records of a file up to cap (a --limit trial reads this little twice)."""
    return sum(1 for _ in documents.read_numbered(path, reader, max_records=cap))


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


class ReadUnitsFn(beam.DoFn):
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
                | "ReadAndValidate" >> beam.ParDo(ReadUnitsFn(self.reader, self.total)))


class MapRecords(beam.PTransform):
    """Items -> Items with fn applied to every record (`map_records`): a scorer that needs no model
    batching. `kit.run_scorer` runs such a scorer inside the step that reads and writes the units
    (`unit_io.ReadScoreWriteUnits`), so no record travels as a Beam element of its own."""

    def __init__(self, fn: Callable[[records.Record], Any]):
        super().__init__()
        self.fn = fn

    def expand(self, items):
        return items | beam.Map(map_records(self.fn))


def map_records(fn: Callable[[records.Record], Any]) -> Callable[[Item], Item]:
    """Lifts a record -> record function to Items: records are mapped, every other Item passes.

    fn may return a record, or a `documents.DeadLetter` to dead-letter the document, or a
    string to exclude it with that reason.
    """
    def apply(item: Item) -> Item:
        if item.kind != RECORD:
            return item
        result = fn(item.value)
        if type(result) is dict:  # the common case, without as_item's checks
            return Item(RECORD, item.unit, item.number, result)
        return as_item(item, result)
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
