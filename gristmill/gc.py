"""`gristmill gc DIR [--keep N] [--dry_run]`: remove what no finished run or published selection uses.

A job never deletes: a later batch writes new units and new versions (`versions/<v>/`) beside the
old ones, so a selection published over the old files keeps reading the same bytes. gc removes,
under `units/`, `versions/` and `manifests/` of an output directory, every file that none of these
references:

- the latest manifest (`manifest.json`) and the N newest history manifests (`manifests/*.json`,
  default N = 1; older history manifests are removed too);
- every published selection (`selections/*/manifest.json`: `selection.data`,
  `selection.selected_records`, `selection.files`, the plan) of DIR, and of WORKDIR when DIR is a
  curate step `WORKDIR/steps/<name>`.

A unit's files stay while a kept manifest lists the unit (so a manifest of an older gristmill,
without `files`, keeps all it needs); a version's marker stays while a file of its key stays.
Files at the top of DIR (job.json, the bandwidth, latest copies) are never touched; staging
leftovers of killed writes (`.tmp-`) anywhere are removed. Given a curate work directory, gc
cleans each of its steps. It holds the directory's lease while it runs, so it never races a job;
files of an unfinished run (no manifest yet) are removed, and that run redoes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from typing import Any, Iterable, Optional

from gristmill import io, lease, records

UNITS_DIR, VERSIONS_DIR, MANIFESTS_DIR = "units", "versions", "manifests"
SELECTIONS_DIR, STEPS_DIR = "selections", "steps"
CLEANED = (UNITS_DIR, VERSIONS_DIR, MANIFESTS_DIR)
_UNIT_KEY = re.compile(r"^(.+\.\d{5}\.[0-9a-f]{16})\.")  # units.unit_key: <base>.<chunk>.<16 hex>
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Collection:
    """What gc found in one output directory: files to remove (relative path -> bytes) and kept count."""

    directory: str
    remove: dict[str, int]
    kept: int

    @property
    def bytes(self) -> int:
        """Bytes the removal frees."""
        return sum(self.remove.values())


def manifest_references(manifest: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(relative paths a manifest references, unit keys it lists)."""
    refs = set(manifest.get("files", {}))
    for value in [*manifest.get("outputs", {}).values(), *manifest.get("bookkeeping", {}).values()]:
        refs.update([value] if isinstance(value, str) else [v for v in value or () if isinstance(v, str)])
    return refs, {u["key"] for u in manifest.get("units", []) if "key" in u}


def selection_references(directory: str) -> set[str]:
    """Paths under directory that a published selection names (of directory, or of its curate work directory)."""
    directory = _absolute(directory)
    roots = [directory]
    parent = io.dirname(directory)
    if io.basename(parent) == STEPS_DIR:
        roots.append(io.dirname(parent))
    refs: set[str] = set()
    for root in roots:
        for path in io.glob(io.join(root, SELECTIONS_DIR, "*", records.MANIFEST_FILE), allow_empty=True):
            selection = io.read_json(path).get("selection", {})
            named = list(selection.get("data", [])) + list(selection.get("selected_records", []))
            named += list(selection.get("files", {}))
            if isinstance(selection.get("select_manifest"), str):  # the select run's history manifest
                named.append(selection["select_manifest"])
            if isinstance(selection.get("plan"), str):
                named.append(io.join(io.dirname(path), selection["plan"]))
            for p in map(_absolute, named):
                if p.startswith(directory + "/"):
                    refs.add(io.relative(p, directory))
    return refs


def collect(directory: str, keep: int = 1) -> Collection:
    """What gc would remove from one output directory (it needs a finished run: manifest.json)."""
    directory = _absolute(directory)
    latest = records.read_manifest(directory)
    listing = {io.relative(path, directory): stat.size for path, stat in io.list_stats(directory).items()}
    history = sorted(p for p in listing if p.startswith(MANIFESTS_DIR + "/") and p.endswith(".json")
                     and not io.is_temporary(p))
    kept_history = history[-keep:] if keep > 0 else []
    refs, unit_keys = manifest_references(latest)
    for rel in kept_history:
        more, keys = manifest_references(io.read_json(io.join(directory, rel)))
        refs |= more
        unit_keys |= keys
    refs |= selection_references(directory)
    remove = {}
    for rel, size in listing.items():
        if io.is_temporary(rel):
            remove[rel] = size
        elif rel.split("/", 1)[0] in CLEANED and "/" in rel and rel not in refs and rel not in kept_history \
                and not _marker_kept(rel, refs, unit_keys):
            remove[rel] = size
    return Collection(directory, dict(sorted(remove.items())), len(listing) - len(remove))


def _marker_kept(rel: str, refs: set[str], unit_keys: set[str]) -> bool:
    """A unit's file (`units/<key>.*`) stays while a kept manifest lists the unit; a version's marker
    (`versions/<v>/<key>.json`) while a file of its key stays."""
    folder, name = io.dirname(rel), io.basename(rel)
    unit = _UNIT_KEY.match(name)
    if folder == UNITS_DIR and unit and unit.group(1) in unit_keys:
        return True
    if not name.endswith(".json") or folder.startswith(MANIFESTS_DIR):
        return False
    prefix = f"{folder}/{name[: -len('.json')]}."
    return any(r.startswith(prefix) for r in refs)


def _absolute(path: str) -> str:
    path = str(path).rstrip("/")
    return path if io.is_remote(path) else os.path.abspath(path)


def output_dirs(directory: str) -> list[str]:
    """The output directories gc cleans: DIR itself, or each step of a curate work directory."""
    if io.exists(io.join(directory, records.MANIFEST_FILE)):
        return [directory]
    steps = sorted({io.dirname(p) for p in io.glob(io.join(directory, STEPS_DIR, "*", records.MANIFEST_FILE),
                                                   allow_empty=True)})
    if not steps:
        raise records.IncompleteRunError(f"{directory} has no {records.MANIFEST_FILE} and no finished curate step: "
                                         f"gc cleans only finished outputs")
    return steps


def gc(directory: str, keep: int = 1, dry_run: bool = False, out=None) -> list[Collection]:
    """Removes (or, dry_run, lists) what no kept manifest or published selection references; prints
    what it removed to out (default stdout)."""
    out = out or sys.stdout
    if keep < 0:
        raise ValueError(f"--keep must be at least 0, got {keep}")
    done = []
    for target in output_dirs(directory):
        with lease.acquire(target, "gristmill gc"):
            found = collect(target, keep)
            if dry_run:
                for rel in found.remove:
                    print(f"would remove {io.join(target, rel)}", file=out)
            else:
                for rel in found.remove:
                    log.info("gc: removing %s", io.join(target, rel))
                io.delete([io.join(target, rel) for rel in found.remove])
                _remove_empty_folders(target)
        print(f"{target}: {'would remove' if dry_run else 'removed'} {len(found.remove)} file(s), "
              f"{_size(found.bytes)}; kept {found.kept}", file=out)
        done.append(found)
    return done


def _remove_empty_folders(directory: str) -> None:
    """Local directories left empty under units/, versions/ and manifests/ (object stores have none)."""
    if io.is_remote(directory):
        return
    for name in CLEANED:
        for root, _, _ in sorted(os.walk(os.path.join(directory, name)), reverse=True):
            if root != os.path.join(directory, name) and not os.listdir(root):
                os.rmdir(root)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(argv: Optional[Iterable[str]] = None) -> list[Collection]:
    """`gristmill gc DIR [--keep N] [--dry_run]`."""
    parser = argparse.ArgumentParser(prog="gristmill gc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="A gristmill output directory or a curate work directory, local or gs://")
    parser.add_argument("--keep", type=int, default=1, help="History manifests (newest first) whose files stay")
    parser.add_argument("--dry_run", action="store_true", help="List what would be removed; remove nothing")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return gc(args.directory, args.keep, args.dry_run)
