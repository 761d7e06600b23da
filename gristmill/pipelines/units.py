"""Work units: chunks of input files whose outputs are written atomically and recorded.

A unit is a run of consecutive records of one input file (record numbers as the reader counts
them, bad records included): `unit_records` of them, or fewer when their raw bytes reach
`unit_bytes` first (`Chunker`), so units are the same whatever the runner or worker count, and a
unit's memory is bounded even when its documents are huge. Its key hashes the file's identity
(path, size, modification time or generation), the chunk, the unit size and the job's
configuration fingerprint:

    units/<file base name>.<chunk>.<16 hex of the key hash>.tfrecord     the unit's records
    units/<...>.dead.jsonl                                               its dead letters
    units/<...>.json                                                     its marker, written last

Resume and incremental runs are the same mechanism: a unit whose marker exists, and whose files are
there with the size and CRC32C the marker records, is not done again (a unit whose files were
deleted, truncated or changed is redone, and the log says why); a file all of whose units are
marked (the last one says so) is not even opened. Before the manifest, `missing_units` checks that
every input file's units run from chunk 0 to the one marked last with no gap.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import re
from typing import Any, Iterable, Optional

from gristmill import io
from gristmill.lease import LEASE_FILE

UNITS_DIR = "units"
JOB_FILE = "job.json"
DEFAULT_UNIT_RECORDS = 10_000
DEFAULT_UNIT_BYTES = 64 << 20
RECORDS_SUFFIX = ".tfrecord"
DEAD_SUFFIX = ".dead.jsonl"
MARKER_SUFFIX = ".json"
INDEX_FILE = "units.jsonl"  # versions/<v>/units.jsonl: every marker of a finished run, one a line
MARKER_READERS = 16  # markers no index lists are read this many at a time (each a request on GCS)
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
    crc32c: Optional[str] = None  # with --verify_inputs: the content's checksum is part of the identity

    def identity(self) -> dict[str, Any]:
        """What makes two reads of the file the same read."""
        found = {"path": self.path, "size": self.size, "mtime": self.mtime, "max_records": self.max_records}
        return {**found, "crc32c": self.crc32c} if self.crc32c else found


@dataclasses.dataclass(frozen=True)
class FileWork:
    """A file to read and the chunks of it that are already done (and so are skipped)."""

    file: InputFile
    unit_records: int
    fingerprint: str
    done_chunks: frozenset[int] = frozenset()
    unit_bytes: int = DEFAULT_UNIT_BYTES

    def chunker(self) -> Chunker:
        """A fresh Chunker for reading this file from its first record."""
        return Chunker(self.unit_records, self.unit_bytes)

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


class Chunker:
    """Places a file's records into chunks in file order: a chunk closes after `unit_records` records,
    or after the record that brings its raw bytes to `unit_bytes`.

    >>> c = Chunker(unit_records=3, unit_bytes=100)
    >>> [c.place(n, size) for n, size in enumerate([10, 10, 10, 10, 95, 10, 1], start=1)]
    [0, 0, 0, 1, 1, 2, 2]
    """

    def __init__(self, unit_records: int, unit_bytes: int = DEFAULT_UNIT_BYTES):
        self.unit_records, self.unit_bytes = unit_records, unit_bytes
        self.chunk, self.count, self.bytes, self.last_number = 0, 0, 0, 0

    def place(self, number: int, size: int) -> int:
        """The chunk of record `number` (called once per record, in order) with `size` raw bytes."""
        if self.count >= self.unit_records or (self.count and self.bytes >= self.unit_bytes):
            self.chunk, self.count, self.bytes = self.chunk + 1, 0, 0
        self.count, self.bytes, self.last_number = self.count + 1, self.bytes + size, number
        return self.chunk

    def chunk_of(self, number: int) -> int:
        """The chunk of a record already placed, or of one the reader numbered past the last (a
        dead letter for where reading stopped), which joins the current chunk with no bytes."""
        return self.chunk if number <= self.last_number else self.place(number, 0)


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


def check_files(output_dir: str, files: dict[str, dict[str, Any]],
                listing: Optional[dict[str, io.FileStat]] = None) -> Optional[str]:
    """None when every file (relative path -> {"size", "crc32c"}) is there as recorded, else why not.

    listing: `io.list_stats` of output_dir, so that no file is looked up one by one (on GCS it
    carries every CRC32C, so nothing is downloaded).
    """
    for rel, expected in sorted(files.items()):
        path = io.join(output_dir, rel)
        found = listing.get(path) if listing is not None else None
        if listing is not None and found is None:
            return f"{rel} is missing"
        problem = io.verify(path, expected, found)
        if problem:
            return f"{rel} {problem}"
    return None


def verified_markers(output_dir: str, markers: dict[str, dict[str, Any]],
                     listing: Optional[dict[str, io.FileStat]] = None) -> dict[str, dict[str, Any]]:
    """The markers whose files are all there with their recorded size and CRC32C.

    A marker of an older gristmill (no `files`) or with a missing, truncated or changed file is left
    out, so its unit is redone; the log names the file and what is wrong with it.
    """
    if listing is None:
        listing = io.list_stats(output_dir) if markers else {}
    good = {}
    for key, found in markers.items():
        if "files" not in found:
            log.warning("unit %s: its marker records no file checksums (an older run); redoing it", key)
            continue
        problem = check_files(output_dir, found["files"], listing)
        if problem:
            log.warning("unit %s: %s; redoing it", key, problem)
            continue
        good[key] = found
    return good


VERSIONS_KEY = "_versions"  # a resumed unit marker's verified version markers, {version: marker} (transient)
INDEXED_VERSION_KEY = "_indexed_version"  # its version marker as the index recorded it, verified or not


def index_bytes(output_dir: str, markers: Iterable[dict[str, Any]], listing: dict[str, io.FileStat],
                unit_markers: Optional[dict[str, dict[str, Any]]] = None) -> bytes:
    """The unit index a finished run leaves beside its manifest: each unit marker (as in `units/`), one
    JSON a line, with the generation every file of it had when the run finished (`resume_markers`
    trusts a file that still has it).

    Two-pass jobs hand over version markers (`versions/<v>/<u>.json`); with unit_markers (key -> the
    unit's own marker) each line holds the unit marker and, under "version", the version marker, with
    the generations of both markers' files, so a rerun with the same version reads neither marker.
    A version marker without its unit marker is left out (resume reads that unit's marker)."""
    lines = []
    for marker in sorted(markers, key=lambda m: m["key"]):
        entry: dict[str, Any] = {"marker": marker}
        if "version" in marker:
            unit = (unit_markers or {}).get(marker["key"])
            if unit is None:
                continue  # a two-pass job's version marker, not the unit's own: resume reads that one
            entry = {"marker": unit, "version": marker}
        files = {**entry["marker"].get("files", {}), **entry.get("version", {}).get("files", {})}
        stamps = {}
        for rel in sorted(files):
            found = listing.get(io.join(output_dir, rel))
            if found is not None and found.generation is not None:
                stamps[rel] = found.generation
        entry = {k: {f: v for f, v in m.items() if not f.startswith("_")} for k, m in entry.items()}
        lines.append(json.dumps({**entry, "generations": stamps}, sort_keys=True) + "\n")
    return "".join(lines).encode("utf-8")


def _unchanged(output_dir: str, marker: dict[str, Any], stamps: dict[str, int],
               listing: dict[str, io.FileStat]) -> bool:
    """Whether every file of an indexed marker is listed with its recorded size and, from the listing
    alone, its CRC32C (GCS) or the generation the index recorded (local: same inode and mtime)."""
    for rel, expected in marker.get("files", {}).items():
        found = listing.get(io.join(output_dir, rel))
        if found is None or found.size != expected["size"]:
            return False
        if found.crc32c is not None:
            if found.crc32c != expected["crc32c"]:
                return False
        elif found.generation is None or stamps.get(rel) != found.generation:
            return False
    return True


def read_index(output_dir: str, manifest: Optional[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict]]:
    """key -> (marker, file generations) from the unit index the manifest names (empty without one)."""
    return {key: (marker, stamps) for key, (marker, stamps, _) in _index_entries(output_dir, manifest).items()}


def _index_entries(output_dir: str, manifest: Optional[dict[str, Any]]) -> dict[str, tuple[dict, dict, Optional[dict]]]:
    """key -> (unit marker, file generations, version marker or None) from the manifest's unit index."""
    rel = (manifest or {}).get("bookkeeping", {}).get("units_index")
    if not rel:
        return {}
    entries = {}
    try:
        for line in io.read_text(io.join(output_dir, rel)).splitlines():
            entry = json.loads(line)
            entries[entry["marker"]["key"]] = (entry["marker"], entry["generations"], entry.get("version"))
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError) as err:
        log.warning("%s: unreadable unit index %s (%s); reading the markers instead", output_dir, rel, err)
        return {}
    return entries


def resume_markers(output_dir: str, manifest: Optional[dict[str, Any]] = None) -> dict[str, dict[str, Any]]:
    """The verified markers of output_dir, from one listing, the last run's unit index and only the
    markers that index does not list (read in parallel): O(listings), not one read per unit.

    An indexed unit whose files the listing shows unchanged is trusted without reading anything;
    one whose files changed is verified by CRC32C (or redone), as `verified_markers` does. A two-pass
    job's indexed version marker comes with the unit's marker under INDEXED_VERSION_KEY (what was
    recorded, e.g. the checksums of files derived from the unit) and, when its files are all unchanged
    too, under VERSIONS_KEY ({version: version marker}), so that version's pass 2 reuses it unread.
    """
    listing = io.list_stats(output_dir)
    marker_dir = io.join(output_dir, UNITS_DIR) + "/"
    present = {path[len(marker_dir):-len(MARKER_SUFFIX)]: path for path in listing
               if path.startswith(marker_dir) and path.endswith(MARKER_SUFFIX) and "/" not in path[len(marker_dir):]}
    index = _index_entries(output_dir, manifest)
    good, to_check = {}, {}
    for key, (marker, stamps, version) in index.items():
        if key not in present:
            continue  # its marker is gone: the unit is redone
        if _unchanged(output_dir, marker, stamps, listing):
            good[key] = marker
            if version is not None:
                verified = {version["version"]: version} if _unchanged(output_dir, version, stamps, listing) else {}
                good[key] = {**marker, VERSIONS_KEY: verified, INDEXED_VERSION_KEY: version}
        else:
            to_check[key] = marker
    unread = [key for key in present if key not in index]
    if unread:
        with concurrent.futures.ThreadPoolExecutor(MARKER_READERS) as pool:
            for key, marker in zip(unread, pool.map(lambda k: _read_marker(present[k]), unread)):
                if marker is not None:
                    to_check[key] = marker
    good.update(verified_markers(output_dir, to_check, listing))
    log.info("%s: %d unit(s) done (%d from the unit index, %d marker(s) read)", output_dir, len(good),
             len(index), len(unread))
    return good


def _read_marker(path: str) -> Optional[dict[str, Any]]:
    try:
        return io.read_json(path)
    except (ValueError, FileNotFoundError):
        return None  # a marker is written atomically; an unparseable one is not ours


def plan_work(files: Iterable[InputFile], unit_records: int, config_fingerprint: str,
              markers: dict[str, dict[str, Any]],
              unit_bytes: int = DEFAULT_UNIT_BYTES) -> tuple[list[FileWork], list[dict[str, Any]]]:
    """Splits the inputs into files to read (with their done chunks) and markers of reused units.

    A file is complete, and not read at all, when its chunks 0..L all have markers and chunk L's
    marker says it is the file's last. Pass markers through `verified_markers` first.
    """
    work, reused = [], []
    by_source = _by_source(markers)
    for file in files:
        done = {c: m for c, (key, m) in by_source.get(file.path, {}).items()
                if key == unit_key(file, c, unit_records, config_fingerprint)}
        reused.extend(done[c] for c in sorted(done))
        last = [c for c, m in done.items() if m.get("last")]
        if not (last and len(done) == last[0] + 1):
            work.append(FileWork(file, unit_records, config_fingerprint, frozenset(done), unit_bytes))
    return work, reused


def _by_source(markers: dict[str, dict[str, Any]]) -> dict[str, dict[int, tuple[str, dict[str, Any]]]]:
    by_source: dict[str, dict[int, tuple[str, dict[str, Any]]]] = {}
    for key, found in markers.items():
        by_source.setdefault(found.get("source"), {})[found.get("chunk")] = (key, found)
    return by_source


def missing_units(files: Iterable[InputFile], unit_records: int, config_fingerprint: str,
                  markers: Iterable[dict[str, Any]]) -> list[str]:
    """What is missing for every input file to be covered: chunks 0..L, L marked last, no gap.

    Returns one phrase per missing unit (file, chunk and key), empty when the job is complete.
    A runner that lost a bundle, or a worker that died without its work being retried, leaves a gap.
    """
    by_source = _by_source({m["key"]: m for m in markers})
    missing = []
    for file in files:
        mine = {c: m for c, (key, m) in by_source.get(file.path, {}).items()
                if key == unit_key(file, c, unit_records, config_fingerprint)}
        last = sorted(c for c, m in mine.items() if m.get("last"))
        end = last[0] if last else (max(mine) + 1 if mine else 0)
        for chunk in range(end):
            if chunk not in mine:
                key = unit_key(file, chunk, unit_records, config_fingerprint)
                missing.append(f"{file.path} chunk {chunk} (unit {key})")
        if not last:
            key = unit_key(file, end, unit_records, config_fingerprint)
            missing.append(f"{file.path}: no unit after chunk {end - 1} is marked the file's last, so its end "
                           f"never arrived (chunk {end}, unit {key}, or a later one)" if mine
                           else f"{file.path}: no unit arrived")
    return missing


def check_output(output_dir: str, job: str, config: dict[str, Any], config_fingerprint: str,
                 overwrite: bool, replans: bool = False) -> None:
    """Prepares output_dir: refuses outputs of another configuration, or removes them with overwrite.

    The job file (`job.json`) records which job and configuration own the directory; a rerun with
    the same configuration resumes, any other is refused with the differences named. A replanning
    job (one whose every record depends on the whole input, like select) whose inputs changed
    writes a new version beside its earlier run (new unit keys; nothing of that run is touched, a
    published selection may still read it; `gristmill gc` removes it later). The caller holds the
    directory's lease.
    """
    job_path = io.join(output_dir, JOB_FILE)
    record = {"job": job, "config": config, "fingerprint": config_fingerprint}
    if overwrite and io.is_dir(output_dir):
        io.delete_tree(output_dir, keep=(LEASE_FILE,))
    if io.exists(job_path):
        owner = io.read_json(job_path)
        if owner.get("fingerprint") == config_fingerprint:
            return
        if replans and owner.get("job") == job and owner.get("config") == json.loads(json.dumps(config, default=str)):
            log.info("%s: the input changed since the run in %s; planning a new version beside it", job, output_dir)
            io.write_json(job_path, record)
            return
        raise OutputConflictError(
            f"{output_dir} holds outputs of a different configuration ({describe_difference(owner, job, config)}); "
            f"use another --output, or --overwrite to remove them first")
    existing = [p for p in io.glob(io.join(output_dir, "*"), allow_empty=True)
                if io.basename(p) != LEASE_FILE] if io.is_dir(output_dir) else []
    if existing:
        names = ", ".join(io.basename(p) for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise OutputConflictError(
            f"{output_dir} already holds files of another run ({names}); use another --output, "
            f"or --overwrite to remove them first")
    io.write_json(job_path, record)


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
           extra: Optional[dict[str, Any]] = None, files: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """A unit's marker: where it came from, counts that reconcile (read = written + dead + excluded)
    and the size and CRC32C of every file it wrote (`files`, relative path -> {"size", "crc32c"})."""
    dead = sum(dead_by_reason.values())
    return {"key": key, "source": file.path, "chunk": chunk, "last": last,
            "read": documents + reader_dead, "documents": documents, "unreadable": reader_dead,
            "written": written, "dead_lettered": dead, "dead_lettered_by_reason": dict(sorted(dead_by_reason.items())),
            "excluded": dict(sorted((excluded or {}).items())),
            "records": relative_unit_path(key, RECORDS_SUFFIX) if written else None,
            "dead_letters": relative_unit_path(key, DEAD_SUFFIX) if dead else None,
            "files": dict(sorted((files or {}).items())),
            **(extra or {})}
