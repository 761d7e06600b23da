"""One file layer for every stage: local paths, `gs://` (Cloud Storage) and any other scheme Beam opens.

Beam jobs, training, the experiment runner and the report all read and write through these
functions, so a path that works for `gristmill score` works for `gristmill train --plan`,
`experiment` and `report` too. Local paths use the operating system, `gs://` paths the Cloud
Storage client (a GCS API server such as an emulator when `STORAGE_EMULATOR_HOST` is set), and
other schemes Beam's `FileSystems`, imported only then.

Writes are atomic everywhere, and never delete before they write: locally, data goes to a temporary
name beside the target and is renamed over it; on GCS one upload to the final name is atomic by
itself (the object appears whole when its upload finishes, replacing the previous generation).
`create_exclusive` and generation preconditions give the compare-and-swap a lease needs.

Every write returns the file's size and CRC32C (as 8 hex digits, the checksum GCS keeps for each
object), which markers and manifests record so that resume and readers can verify what they read.

Fault tests set `GRISTMILL_CRASH_AT=<label>[:<n>]`: the process then kills itself (SIGKILL) at
the n-th write of that label, after staging the data and before publishing it (`crash_label`
names the labels).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import functools
import glob as _glob
import json
import os
import re
import shutil
import signal
import tempfile
import uuid
from typing import Any, BinaryIO, Iterator, Optional

TEMP_MARK = ".tmp-"
CRASH_ENV = "GRISTMILL_CRASH_AT"
GCS = "gs://"
_READ_CHUNK = 8 << 20


@dataclasses.dataclass(frozen=True)
class FileStat:
    """One version of a file: path, size, modification time, and on GCS its CRC32C and generation."""

    path: str
    size: int
    mtime: float
    crc32c: Optional[str] = None
    generation: Optional[int] = None


# ------------------------------------------------------------------------------------ paths


def is_remote(path: str) -> bool:
    """True for URLs such as `gs://bucket/x`, False for local paths."""
    return "://" in str(path)


def _is_gcs(path: str) -> bool:
    return str(path).startswith(GCS)


def join(base: str, *names: str) -> str:
    """Joins a directory and names, local or remote."""
    base = str(base)
    if not names:
        return base
    if not is_remote(base):
        return os.path.join(base, *names)
    for name in names:
        base = base.rstrip("/") + "/" + str(name).lstrip("/")
    return base


def dirname(path: str) -> str:
    """The directory part of a local or remote path."""
    path = str(path)
    if not is_remote(path):
        return os.path.dirname(path)
    head = path.rstrip("/").rsplit("/", 1)[0]
    return head if "://" in head and not head.endswith(":/") else path


def basename(path: str) -> str:
    """The last component of a local or remote path."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def relative(path: str, base: str) -> str:
    """path relative to the directory base, with '/' separators (as manifests list files)."""
    path, base = str(path), str(base).rstrip("/")
    if not path.startswith(base + "/") and not (not is_remote(base) and path.startswith(base + os.sep)):
        raise ValueError(f"{path} is not under {base}")
    return path[len(base) + 1:].replace(os.sep, "/")


def is_temporary(path: str) -> bool:
    """True for the staging files of atomic writes (never listed, removed by the next run)."""
    return TEMP_MARK in basename(path)


# ------------------------------------------------------------------------------------ checksums


def checksum(data: bytes) -> str:
    """CRC32C of data as 8 lowercase hex digits."""
    import google_crc32c  # here, not at the top: model loading on machines without it reads through this module
    return f"{google_crc32c.value(bytes(data)):08x}"


def file_checksum(path: str) -> str:
    """CRC32C of a file's bytes (streamed)."""
    import google_crc32c
    crc = google_crc32c.Checksum()
    with open_read(path) as f:
        for chunk in iter(lambda: f.read(_READ_CHUNK), b""):
            crc.update(chunk)
    return crc.digest().hex()


def file_info(data: bytes) -> dict[str, Any]:
    """What a marker or manifest records of a file: {"size", "crc32c"}."""
    return {"size": len(data), "crc32c": checksum(data)}


def verify(path: str, expected: dict[str, Any], found: Optional[FileStat] = None) -> Optional[str]:
    """None when the file at path has the expected size and CRC32C, else why not (one phrase).

    found: the file's stat from a listing (saves a request; on GCS it carries the CRC32C, so
    nothing is downloaded). Without a listed CRC32C the file is read to compute it.
    """
    if found is None:
        try:
            found = stat(path)
        except FileNotFoundError:
            return "is missing"
    if found.size != expected["size"]:
        return f"has {found.size} bytes, expected {expected['size']}"
    crc = found.crc32c or file_checksum(path)
    if crc != expected["crc32c"]:
        return f"has CRC32C {crc}, expected {expected['crc32c']} (corrupt)"
    return None


# ------------------------------------------------------------------------------------ crash points


def crash_label(path: str) -> str:
    """The fault-injection label of a write to path (see the module docstring)."""
    path = str(path).replace(os.sep, "/")
    name = basename(path)
    if "/selections/" in path:
        return "publish"
    fixed = {"manifest.json": "manifest", "job.json": "job", "plan.json": "plan", "sketch.npz": "sketch",
             "centroids.npy": "centroids", "head.npz": "head", "dead_letters.jsonl": "dead_letters",
             "report.json": "report"}
    if name in fixed:
        return fixed[name]
    if name.endswith(".emb.npy"):
        return "embeddings"
    if name.endswith(".dead.jsonl"):
        return "unit_dead_letters"
    if name.endswith(".tfrecord"):
        return "unit_records"
    if name.endswith(".json") and ("/units/" in path or "/versions/" in path):
        return "marker"
    return name


_crash_counts: dict[str, int] = {}


def crash_point(label: str) -> None:
    """Kills this process with SIGKILL when GRISTMILL_CRASH_AT names this label and occurrence."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != label:
        return
    _crash_counts[label] = _crash_counts.get(label, 0) + 1
    if _crash_counts[label] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------ Cloud Storage


@functools.lru_cache(maxsize=4)
def _gcs_client(emulator: Optional[str]):
    from google.cloud import storage
    if emulator:
        from google.auth.credentials import AnonymousCredentials
        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "gristmill-test"),
                              credentials=AnonymousCredentials())
    return storage.Client()


def _gcs_blob(path: str):
    bucket, _, name = str(path)[len(GCS):].partition("/")
    return _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST")).bucket(bucket).blob(name)


def _gcs_stat(blob) -> FileStat:
    crc = base64.b64decode(blob.crc32c).hex() if blob.crc32c else None
    mtime = blob.updated.timestamp() if blob.updated else 0.0
    return FileStat(f"{GCS}{blob.bucket.name}/{blob.name}", int(blob.size or 0), mtime, crc,
                    int(blob.generation) if blob.generation else None)


def _gcs_list(prefix_path: str) -> Iterator[FileStat]:
    bucket, _, prefix = str(prefix_path)[len(GCS):].partition("/")
    client = _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST"))
    for blob in client.list_blobs(bucket, prefix=prefix):
        if not blob.name.endswith("/"):
            yield _gcs_stat(blob)


def _precondition_failed(err: Exception) -> bool:
    from google.api_core import exceptions
    return isinstance(err, exceptions.PreconditionFailed)


# ------------------------------------------------------------------------------------ other schemes


def _beam():
    from apache_beam.io.filesystems import FileSystems
    return FileSystems


def _beam_uncompressed():
    from apache_beam.io.filesystem import CompressionTypes
    return CompressionTypes.UNCOMPRESSED


# ------------------------------------------------------------------------------------ reading


def exists(path: str) -> bool:
    """True when a file (or local directory) exists at path."""
    path = str(path)
    if not is_remote(path):
        return os.path.exists(path)
    if _is_gcs(path):
        return _gcs_blob(path).exists()
    return _beam().exists(path)


def is_dir(path: str) -> bool:
    """True for a local directory, or a remote prefix that holds objects under `path/`."""
    path = str(path)
    if not is_remote(path):
        return os.path.isdir(path)
    if _is_gcs(path):
        return next(iter(_gcs_list(path.rstrip("/") + "/")), None) is not None
    return bool(glob(join(path, "*"), allow_empty=True))


def _pattern_regex(pattern: str) -> re.Pattern:
    """A glob as a regex: `*` and `?` stay within one path segment, `**` crosses segments."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                out.append("[" + pattern[i + 1:end].replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def glob(pattern: str, allow_empty: bool = False) -> list[str]:
    """The sorted files a glob matches (staging files of atomic writes are never listed).

    Raises FileNotFoundError naming the pattern when it matches nothing, unless allow_empty.
    """
    pattern = str(pattern)
    try:
        if not is_remote(pattern):
            # anything but a directory: a FIFO or socket is the reader's `unreadable_file`, never silently left out
            paths = [p for p in _glob.glob(pattern, recursive=True) if not os.path.isdir(p)]
        elif _is_gcs(pattern):
            literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
            regex = _pattern_regex(pattern)
            paths = [s.path for s in _gcs_list(literal) if regex.match(s.path)]
        else:
            paths = [m.path for m in _beam().match([pattern])[0].metadata_list if not m.path.endswith("/")]
    except Exception as err:  # listing failures of any backend
        if allow_empty:
            return []
        raise FileNotFoundError(f"cannot list {pattern!r}: {err}") from err
    paths = sorted(p for p in paths if not is_temporary(p))
    if not paths and not allow_empty:
        raise FileNotFoundError(f"{pattern!r} matches no file")
    return paths


def list_stats(directory: str) -> dict[str, FileStat]:
    """Every file under directory (recursively) with its stat, from one listing, by path.

    On GCS each stat carries the object's CRC32C and generation. Staging files are included
    (the clean-up finds them here); a missing directory lists as empty.
    """
    directory = str(directory).rstrip("/")
    if _is_gcs(directory):
        return {s.path: s for s in _gcs_list(directory + "/")}
    if is_remote(directory):
        return {p: stat(p) for p in glob(join(directory, "**"), allow_empty=True)}
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            found[path] = FileStat(path, st.st_size, st.st_mtime, None, _local_generation(st))
    return found


def stat(path: str) -> FileStat:
    """Size and modification time of one file (on GCS also its CRC32C and generation)."""
    path = str(path)
    if not is_remote(path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        return FileStat(path, st.st_size, st.st_mtime, None, _local_generation(st))
    if _is_gcs(path):
        bucket, _, name = path[len(GCS):].partition("/")
        blob = _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST")).bucket(bucket).get_blob(name)
        if blob is None:
            raise FileNotFoundError(f"{path}: no such file")
        return _gcs_stat(blob)
    metadata = _beam().match([path])[0].metadata_list
    if not metadata:
        raise FileNotFoundError(f"{path}: no such file")
    m = metadata[0]
    return FileStat(m.path, int(m.size_in_bytes), float(m.last_updated_in_seconds or 0.0))


def open_read(path: str) -> BinaryIO:
    """Opens a file for reading bytes, without decompressing it."""
    path = str(path)
    if not is_remote(path):
        return open(path, "rb")
    if _is_gcs(path):
        from google.api_core import exceptions
        blob = _gcs_blob(path)
        try:
            blob.reload()
        except exceptions.NotFound:
            raise FileNotFoundError(f"{path}: no such file") from None
        return blob.open("rb", chunk_size=_READ_CHUNK)
    return _beam().open(path, compression_type=_beam_uncompressed())


def read_bytes(path: str) -> bytes:
    """The whole content of a file."""
    path = str(path)
    if _is_gcs(path):
        from google.api_core import exceptions
        try:
            return _gcs_blob(path).download_as_bytes()
        except exceptions.NotFound:
            raise FileNotFoundError(f"{path}: no such file") from None
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


# ------------------------------------------------------------------------------------ writing


def makedirs(path: str) -> None:
    """Creates a local directory and its parents (a no-op for object stores, which have none)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def _stage_local(path: str, data: bytes) -> str:
    makedirs(dirname(path) or ".")
    temp = f"{path}{TEMP_MARK}{uuid.uuid4().hex}"
    with open(temp, "wb") as f:
        f.write(data)
    return temp


def _local_generation(st: os.stat_result) -> int:
    """A local file's generation: its inode and modification time (a replace gives the path a new inode)."""
    return (st.st_ino << 64) | st.st_mtime_ns


@contextlib.contextmanager
def _directory_lock(path: str) -> Iterator[None]:
    """An exclusive flock on a local file's directory: makes a check-and-replace atomic between processes."""
    fd = os.open(dirname(path) or ".", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, if_generation: Optional[int] = None) -> dict[str, Any]:
    """Writes data to path so that readers see either the old file or the whole new one.

    if_generation: replace only when the file is still that generation (0: only when it does not
    exist); raises FileExistsError otherwise. Returns {"size", "crc32c"} of the data.
    """
    path, data = str(path), bytes(data)
    label = crash_label(path)
    if not is_remote(path):
        temp = _stage_local(path, data)
        crash_point(label)
        try:
            if if_generation is None:
                os.replace(temp, path)  # atomic on POSIX, and replaces an existing file
            else:
                with _directory_lock(path):
                    current = _local_generation(os.stat(path)) if os.path.exists(path) else 0
                    if current != if_generation:
                        raise FileExistsError(f"{path} changed since generation {if_generation} (now {current})")
                    os.replace(temp, path)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
        return file_info(data)
    crash_point(label)
    if _is_gcs(path):
        kwargs = {} if if_generation is None else {"if_generation_match": if_generation}
        try:
            _gcs_blob(path).upload_from_string(data, content_type="application/octet-stream", **kwargs)
        except Exception as err:
            if _precondition_failed(err):
                raise FileExistsError(f"{path} changed since generation {if_generation}") from err
            raise
        return file_info(data)
    if if_generation is not None:
        raise ValueError(f"{path}: generation preconditions need a local or gs:// path")
    with _beam().create(path, compression_type=_beam_uncompressed()) as out:  # one upload to the final name
        out.write(data)
    return file_info(data)


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates path holding data unless it exists, atomically; False when it already existed."""
    path, data = str(path), bytes(data)
    if not is_remote(path):
        temp = _stage_local(path, data)
        try:
            os.link(temp, path)  # fails when path exists; the content appears whole
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(temp)
    try:
        atomic_write(path, data, if_generation=0)
        return True
    except FileExistsError:
        return False


def write_text(path: str, text: str) -> dict[str, Any]:
    """Atomically writes UTF-8 text; returns its {"size", "crc32c"}."""
    return atomic_write(path, text.encode("utf-8"))


def json_bytes(obj: Any) -> bytes:
    """An object as indented, key-sorted JSON (stable bytes for equal objects)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode("utf-8")


def write_json(path: str, obj: Any) -> dict[str, Any]:
    """Atomically writes an object as indented, key-sorted JSON; returns its {"size", "crc32c"}."""
    return atomic_write(path, json_bytes(obj))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def delete(paths: list[str], if_generation: Optional[int] = None) -> None:
    """Deletes files (and local directories, recursively); missing ones are ignored.

    if_generation (one path only): delete only while the file is still that generation.
    """
    for path in map(str, paths):
        if not is_remote(path):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif if_generation is not None:
                with _directory_lock(path):
                    if os.path.exists(path) and _local_generation(os.stat(path)) == if_generation:
                        os.remove(path)
            elif os.path.lexists(path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        elif _is_gcs(path):
            from google.api_core import exceptions
            kwargs = {} if if_generation is None else {"if_generation_match": if_generation}
            with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
                _gcs_blob(path).delete(**kwargs)
        elif exists(path):
            _beam().delete([path])


def delete_tree(directory: str, keep: tuple[str, ...] = ()) -> None:
    """Deletes everything under a directory, local or remote, except the files named in keep.

    A kill part-way leaves some files; the caller (`--overwrite`) is rerun to finish.
    """
    directory = str(directory)
    found = sorted(p for p in list_stats(directory) if basename(p) not in keep)
    for i, path in enumerate(found):
        if i == len(found) // 2:
            crash_point("overwrite")
        delete([path])
    if not is_remote(directory):
        for root, dirs, _ in os.walk(directory, topdown=False):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, name))


def remove_temporaries(directory: str) -> int:
    """Removes the staging files that killed writes left under directory; returns how many."""
    leftovers = [p for p in list_stats(directory) if is_temporary(p)]
    delete(leftovers)
    return len(leftovers)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file path holding the content of `path` (the path itself when it is local).

    For libraries that only take local paths (numpy's npz loader, orbax, SentencePiece, memory-mapped
    checkpoints). The copy is streamed, so a checkpoint larger than memory can be copied.
    """
    if not is_remote(path):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="gristmill-") as tmp:
        local = os.path.join(tmp, basename(path))
        with open_read(path) as src, open(local, "wb") as f:
            shutil.copyfileobj(src, f, _READ_CHUNK)
        yield local


@contextlib.contextmanager
def local_output(path: str) -> Iterator[str]:
    """A local path to write to; on exit its content is written atomically to `path`."""
    with tempfile.TemporaryDirectory(prefix="gristmill-") as tmp:
        local = os.path.join(tmp, basename(path))
        yield local
        with open(local, "rb") as f:
            atomic_write(path, f.read())
