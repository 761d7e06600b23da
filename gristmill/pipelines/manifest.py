"""The run manifest: counts that reconcile, the files of this version with their checksums, written
last (`Finalize`), and the checks a finished job makes of it."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any, Iterable, Optional

import apache_beam as beam

from gristmill import documents, io, provenance, records
from gristmill.pipelines import units
from gristmill.pipelines.items import duration
from gristmill.pipelines.job_options import JobOptions
from gristmill.pipelines.unit_io import write_once

DEAD_LETTER_FILE = "dead_letters.jsonl"
MANIFEST_FILE = records.MANIFEST_FILE
MANIFESTS_DIR = "manifests"  # an immutable copy of every finished run's manifest
VERSIONS_DIR = "versions"  # files of one output version (dead letters, plans, sketches, re-scored units)
log = logging.getLogger("gristmill.pipelines.kit")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a job's outputs (`gristmill.provenance`)."""
    return provenance.package_versions()


def utc_now() -> str:
    """The current UTC time in ISO 8601, for manifests."""
    return provenance.utc_now()


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
             files: Optional[dict[str, str]] = None, manifest_generation: Optional[int] = None,
             unit_markers: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """Checks every unit arrived, writes the merged dead letters and then, last, the manifest.

    The merged dead letters and the manifest's history copy go under `versions/<version>/` and
    `manifests/`, never replaced; the top-level `dead_letters.jsonl` and `manifest.json` are the
    latest run's copies. manifest_generation: replace manifest.json only if it is still the one
    the job saw when it started (0: none yet), so a writer that lost its lease cannot overwrite.
    unit_markers: a two-pass job's unit markers by key, for the unit index (`units.index_bytes`).
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
    # generations, so it is named under `bookkeeping`, not in `outputs` or `files` (resume checks
    # each entry against the listing). Created once per version, like every file of a version.
    index = version_path(version, units.INDEX_FILE)
    if not io.exists(io.join(output_dir, index)):
        io.create_exclusive(io.join(output_dir, index),
                            units.index_bytes(output_dir, markers, io.list_stats(output_dir), unit_markers))
    io.atomic_write(io.join(output_dir, DEAD_LETTER_FILE), b"".join(dead_lines))
    infos.update(listed_files(output_dir, [rel for rel in (files or {}).values() if rel]))
    manifest = build_manifest(base, markers, reused, {**(files or {}), "dead_letters": dead_letters}, infos)
    manifest["bookkeeping"] = {"units_index": index}
    manifest["output_version"] = version
    stamp = manifest["finished_at"].replace("-", "").replace(":", "").split("+")[0]
    manifest["history"] = f"{MANIFESTS_DIR}/{stamp}-{version}.json"
    data = io.json_bytes(manifest)
    io.atomic_write(io.join(output_dir, manifest["history"]), data)
    io.atomic_write(io.join(output_dir, MANIFEST_FILE), data, if_generation=manifest_generation)
    counts = manifest["counts"]
    seconds = (datetime.datetime.fromisoformat(manifest["finished_at"])
               - datetime.datetime.fromisoformat(base["started_at"])).total_seconds()
    rate = "" if counts["units_reused"] or seconds < 1 else f" at {counts['read'] / seconds:.1f}/s"
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
