"""One file layer for every stage: local paths and anything Beam's `FileSystems` opens (`gs://`).

Beam jobs, training, the experiment runner and the report all read and write through these
functions, so a path that works for `gristmill score` works for `gristmill train --plan`,
`experiment` and `report` too. Writes are atomic: data goes to a temporary name beside the
target and is renamed into place, so a reader never sees a partial file (on GCS the object
appears whole when its upload finishes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, BinaryIO, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

TEMP_MARK = ".tmp-"


@dataclasses.dataclass(frozen=True)
class FileStat:
    """What identifies one version of a file: its path, size and modification time (or generation)."""

    path: str
    size: int
    mtime: float


def is_remote(path: str) -> bool:
    """True for URLs such as `gs://bucket/x`, False for local paths."""
    return "://" in str(path)


def join(base: str, *names: str) -> str:
    """Joins a directory and names, local or remote."""
    return FileSystems.join(str(base), *names) if names else str(base)


def dirname(path: str) -> str:
    """The directory part of a local or remote path."""
    return FileSystems.split(str(path))[0]


def basename(path: str) -> str:
    """The last component of a local or remote path."""
    return FileSystems.split(str(path).rstrip("/"))[1]


def exists(path: str) -> bool:
    """True when a file (or local directory) exists at path."""
    return FileSystems.exists(str(path))


def is_dir(path: str) -> bool:
    """True for a local directory, or a remote prefix that holds objects under `path/`."""
    path = str(path)
    if not is_remote(path):
        return os.path.isdir(path)
    return bool(glob(join(path, "*"), allow_empty=True))


def glob(pattern: str, allow_empty: bool = False) -> list[str]:
    """The sorted files a glob matches (temporary files of atomic writes are never listed).

    Raises FileNotFoundError naming the pattern when it matches nothing, unless allow_empty.
    """
    try:
        metadata = FileSystems.match([str(pattern)])[0].metadata_list
    except Exception as err:  # Beam wraps listing failures in BeamIOError
        if allow_empty:
            return []
        raise FileNotFoundError(f"cannot list {pattern!r}: {err}") from err
    paths = sorted(m.path for m in metadata if not m.path.endswith("/") and TEMP_MARK not in basename(m.path))
    if not paths and not allow_empty:
        raise FileNotFoundError(f"{pattern!r} matches no file")
    return paths


def stat(path: str) -> FileStat:
    """Size and modification time of one file (the generation's time on GCS)."""
    metadata = FileSystems.match([str(path)])[0].metadata_list
    if not metadata:
        raise FileNotFoundError(f"{path}: no such file")
    m = metadata[0]
    return FileStat(path=m.path, size=int(m.size_in_bytes), mtime=float(m.last_updated_in_seconds or 0.0))


def open_read(path: str) -> BinaryIO:
    """Opens a file for reading bytes, without decompressing it."""
    return FileSystems.open(str(path), compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str) -> bytes:
    """The whole content of a file."""
    with open_read(path) as f:
        return f.read()


def read_text(path: str) -> str:
    """The whole content of a UTF-8 text file."""
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    """Parses a JSON file; the error names the file."""
    try:
        return json.loads(read_text(path))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err


def makedirs(path: str) -> None:
    """Creates a local directory and its parents (a no-op for object stores, which have none)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def atomic_write(path: str, data: bytes) -> None:
    """Writes data to path so that readers see either the old file or the whole new one."""
    path = str(path)
    makedirs(dirname(path))
    temp = f"{path}{TEMP_MARK}{uuid.uuid4().hex}"
    with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as out:
        out.write(data)
    if not is_remote(path):
        os.replace(temp, path)  # atomic on POSIX, and replaces an existing file
        return
    if exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temp], [path])


def write_text(path: str, text: str) -> None:
    """Atomically writes UTF-8 text."""
    atomic_write(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    """Atomically writes an object as indented, key-sorted JSON (stable bytes for equal objects)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def delete(paths: list[str]) -> None:
    """Deletes files (and local directories, recursively); missing ones are ignored."""
    for path in paths:
        if not is_remote(path) and os.path.isdir(path):
            shutil.rmtree(path)
        elif exists(path):
            FileSystems.delete([path])


def delete_tree(directory: str) -> None:
    """Deletes a directory and everything under it, local or remote."""
    if not is_remote(directory):
        shutil.rmtree(directory, ignore_errors=True)
        return
    found = glob(join(directory, "**"), allow_empty=True)
    if found:
        FileSystems.delete(found)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file path holding the content of `path` (the path itself when it is local).

    For libraries that only take local paths (numpy's npz loader, orbax, SentencePiece).
    """
    if not is_remote(path):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="gristmill-") as tmp:
        local = os.path.join(tmp, basename(path))
        with open(local, "wb") as f:
            f.write(read_bytes(path))
        yield local


@contextlib.contextmanager
def local_output(path: str) -> Iterator[str]:
    """A local path to write to; on exit its content is written atomically to `path`."""
    with tempfile.TemporaryDirectory(prefix="gristmill-") as tmp:
        local = os.path.join(tmp, basename(path))
        yield local
        with open(local, "rb") as f:
            atomic_write(path, f.read())
