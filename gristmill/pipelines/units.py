"""Work units: chunks of input files whose outputs are written atomically and recorded.

A unit is records [chunk * unit_records + 1, (chunk + 1) * unit_records] of one input file (record
numbers as the reader counts them, bad records included), so units are the same whatever the
runner or worker count. Its key hashes the file's identity (path, size, modification time or
generation), the chunk, the unit size and the job's configuration fingerprint:

    units/<file base name>.<chunk>.<16 hex of the key hash>.tfrecord     the unit's records
    units/<...>.dead.jsonl                                               its dead letters
    units/<...>.json                                                     its marker, written last

Resume and incremental runs are the same mechanism: a unit whose marker exists is not done again,
and a file all of whose units are marked (the last one says so) is not even opened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from typing import Any, Iterable, Optional

from gristmill import io

UNITS_DIR = "units"
JOB_FILE = "job.json"
DEFAULT_UNIT_RECORDS = 10_000
RECORDS_SUFFIX = ".tfrecord"
DEAD_SUFFIX = ".dead.jsonl"
MARKER_SUFFIX = ".json"
log = logging.getLogger(__name__)


class OutputConflictError(ValueError):
    """The output directory holds outputs of a different job or configuration."""


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file as a job saw it, and the records of it the job covers."""

    path: str
    size: int
    mtime: float
    max_records: int = 0  # 0: the whole file; else only records 1..max_records (--limit)

    def identity(self) -> dict[str, Any]:
        """What makes two reads of the file the same read."""
        return {"path": self.path, "size": self.size, "mtime": self.mtime, "max_records": self.max_records}


@dataclasses.dataclass(frozen=True)
class FileWork:
    """A file to read and the chunks of it that are already done (and so are skipped)."""

    file: InputFile
    unit_records: int
    fingerprint: str
    done_chunks: frozenset[int] = frozenset()

    def unit_key(self, chunk: int) -> str:
        """The key of one chunk of this file."""
        return unit_key(self.file, chunk, self.unit_records, self.fingerprint)


def fingerprint(job: str, config: dict[str, Any]) -> str:
    """A hash of everything that shapes a job's records: its name and its full configuration."""
    text = json.dumps({"job": job, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def unit_key(file: InputFile, chunk: int, unit_records: int, config_fingerprint: str) -> str:
    """`<base name>.<chunk>.<hash>`: readable, and unique for (file identity, chunk, unit size, config)."""
    payload = json.dumps([file.identity(), chunk, unit_records, config_fingerprint], sort_keys=True)
    digest = hashlib.blake2b(payload.encode("utf-8"), digest_size=8).hexdigest()
    # a unit file of an earlier job (`<base>.<chunk>.<hash>.tfrecord`) keeps its base and chunk
    base = re.sub(r"\.[0-9a-f]{16}\.tfrecord$", "", io.basename(file.path))
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base)[:80]
    return f"{base}.{chunk:05d}.{digest}"


def chunk_of(record_number: int, unit_records: int) -> int:
    """The chunk (0-based) holding a 1-based record number."""
    return (record_number - 1) // unit_records


def unit_path(output_dir: str, key: str, suffix: str) -> str:
    """Path of one of a unit's files."""
    return io.join(output_dir, UNITS_DIR, key + suffix)


def relative_unit_path(key: str, suffix: str) -> str:
    """A unit file's path relative to the output directory, as the manifest lists it."""
    return f"{UNITS_DIR}/{key}{suffix}"


def read_markers(output_dir: str, suffix: str = MARKER_SUFFIX) -> dict[str, dict[str, Any]]:
    """Every unit marker in output_dir, by unit key."""
    markers = {}
    for path in io.glob(io.join(output_dir, UNITS_DIR, "*" + suffix), allow_empty=True):
        try:
            markers[io.basename(path)[: -len(suffix)]] = io.read_json(path)
        except ValueError:
            continue  # a marker is written atomically; an unparseable one is not ours
    return markers


def plan_work(files: Iterable[InputFile], unit_records: int, config_fingerprint: str,
              markers: dict[str, dict[str, Any]]) -> tuple[list[FileWork], list[dict[str, Any]]]:
    """Splits the inputs into files to read (with their done chunks) and markers of reused units.

    A file is complete, and not read at all, when its chunks 0..L all have markers and chunk L's
    marker says it is the file's last.
    """
    work, reused = [], []
    by_source: dict[str, dict[int, tuple[str, dict[str, Any]]]] = {}
    for key, found in markers.items():
        by_source.setdefault(found.get("source"), {})[found.get("chunk")] = (key, found)
    for file in files:
        done = {c: m for c, (key, m) in by_source.get(file.path, {}).items()
                if key == unit_key(file, c, unit_records, config_fingerprint)}
        reused.extend(done[c] for c in sorted(done))
        last = [c for c, m in done.items() if m.get("last")]
        if not (last and len(done) == last[0] + 1):
            work.append(FileWork(file, unit_records, config_fingerprint, frozenset(done)))
    return work, reused


def check_output(output_dir: str, job: str, config: dict[str, Any], config_fingerprint: str,
                 overwrite: bool, replans: bool = False) -> None:
    """Prepares output_dir: refuses outputs of another configuration, or removes them with overwrite.

    The job file (`job.json`) records which job and configuration own the directory; a rerun with
    the same configuration resumes, any other is refused with the differences named. A replanning
    job (one whose every record depends on the whole input, like select) replaces its own earlier
    run when only its inputs changed: that run is out of date, not foreign.
    """
    job_path = io.join(output_dir, JOB_FILE)
    if not overwrite and replans and io.exists(job_path):
        owner = io.read_json(job_path)
        overwrite = (owner.get("fingerprint") != config_fingerprint and owner.get("job") == job
                     and owner.get("config") == json.loads(json.dumps(config, default=str)))
        if overwrite:
            log.info("%s: the input changed since the run in %s; replacing that run", job, output_dir)
    if overwrite and io.is_dir(output_dir):
        io.delete_tree(output_dir)
    if io.exists(job_path):
        owner = io.read_json(job_path)
        if owner.get("fingerprint") == config_fingerprint:
            return
        raise OutputConflictError(
            f"{output_dir} holds outputs of a different configuration ({describe_difference(owner, job, config)}); "
            f"use another --output, or --overwrite to remove them first")
    existing = io.glob(io.join(output_dir, "*"), allow_empty=True) if io.is_dir(output_dir) else []
    if existing:
        names = ", ".join(io.basename(p) for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise OutputConflictError(
            f"{output_dir} already holds files of another run ({names}); use another --output, "
            f"or --overwrite to remove them first")
    io.write_json(job_path, {"job": job, "config": config, "fingerprint": config_fingerprint})


def describe_difference(owner: dict[str, Any], job: str, config: dict[str, Any]) -> str:
    """A short 'key: old -> new' list of what differs between a recorded job and this one."""
    if owner.get("job") != job:
        return f"job: {owner.get('job')!r} -> {job!r}"
    old = owner.get("config", {})
    keys = sorted(set(old) | set(config))
    diffs = [f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in keys if old.get(k) != config.get(k)]
    return "; ".join(diffs) or "same flags, different gristmill version or template content"


def marker(key: str, file: InputFile, chunk: int, last: bool, documents: int, reader_dead: int, written: int,
           dead_by_reason: dict[str, int], excluded: Optional[dict[str, int]] = None,
           extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A unit's marker: where it came from and counts that reconcile (read = written + dead + excluded)."""
    dead = sum(dead_by_reason.values())
    return {"key": key, "source": file.path, "chunk": chunk, "last": last,
            "read": documents + reader_dead, "documents": documents, "unreadable": reader_dead,
            "written": written, "dead_lettered": dead, "dead_lettered_by_reason": dict(sorted(dead_by_reason.items())),
            "excluded": dict(sorted((excluded or {}).items())),
            "records": relative_unit_path(key, RECORDS_SUFFIX) if written else None,
            "dead_letters": relative_unit_path(key, DEAD_SUFFIX) if dead else None,
            **(extra or {})}
