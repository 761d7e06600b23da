"""Writing units: each finished unit's records, dead letters and, last, its marker (`WriteUnits`)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from gristmill import documents, io, records
from gristmill.pipelines import units
from gristmill.pipelines.items import (
    COUNTER_NAMESPACE,
    DEAD,
    EXCLUDED,
    RECORD,
    UNIT,
    Item,
    ReadUnitsFn,
    UnitInfo,
    map_records,
)

log = logging.getLogger("gristmill.pipelines.kit")


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


class WriteUnitsFn(beam.DoFn):
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
        return items | "WriteUnit" >> beam.ParDo(WriteUnitsFn(self.output_dir, self.extra_files))


class _ReadScoreWriteFn(beam.DoFn):
    """FileWork -> unit markers: ReadUnitsFn, the scorer's record function and WriteUnitsFn in one step,
    calling each other directly (what Beam would do per record for three fused DoFns, without its
    per-element cost)."""

    def __init__(self, reader: documents.ReaderConfig, total: Optional[int], fn: Callable, output_dir: str):
        self.reader = ReadUnitsFn(reader, total)
        self.apply = map_records(fn)
        self.writer = WriteUnitsFn(output_dir)

    def setup(self):
        self.reader.setup()

    def start_bundle(self):
        self.writer.start_bundle()

    def process(self, work):
        apply, write = self.apply, self.writer.process
        for item in self.reader.process(work):
            yield from write(apply(item))

    def finish_bundle(self):
        self.writer.finish_bundle()


class ReadScoreWriteUnits(beam.PTransform):
    """FileWork -> one marker dict per unit written, scoring each record with fn on the way
    (`items.MapRecords`'s function): ReadUnits | Map | WriteUnits as one step."""

    def __init__(self, reader: documents.ReaderConfig, total: Optional[int], fn: Callable, output_dir: str):
        super().__init__()
        self.reader, self.total, self.fn, self.output_dir = reader, total, fn, output_dir

    def expand(self, work):
        return (work
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadScoreWrite" >> beam.ParDo(_ReadScoreWriteFn(self.reader, self.total, self.fn, self.output_dir)))
