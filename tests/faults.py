"""Support for the fault tests: a GCS API server, real kills at crash points, snapshots of finished outputs.

Nothing here fakes gristmill: jobs run as `python -m gristmill.cli` subprocesses (to be killed) or
in this process through the same `run(argv)` functions the command calls (to rerun them), against
local directories or a real GCS API server (`tests/gcs_server.py`: gcp-storage-emulator with
`ifGenerationMatch` enforced) reached through `STORAGE_EMULATOR_HOST`.

    server = GcsServer.start()                      # 127.0.0.1:<free port>; GcsServer.start(latency=0.2)
    bucket = server.new_bucket()                    # a fresh, empty bucket
    proc = run_killed(["score", "random", ...], "marker", env=server.env())   # asserts SIGKILL (-9)
    before = snapshot(output_dir)                   # {relative path: bytes} of what its manifest lists
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io as _bytes_io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Any, Iterator, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GCS_SERVER = os.path.join(REPO, "tests", "gcs_server.py")
CRASH_ENV = "GRISTMILL_CRASH_AT"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
KILLED = -signal.SIGKILL
SUBPROCESS_TIMEOUT = 600  # a hang guard only: no assertion depends on how long anything takes
TEMP_MARK = ".tmp-"


# ------------------------------------------------------------------------------------ GCS API server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsServer:
    """A running `tests/gcs_server.py` (in memory) on 127.0.0.1."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: str):
        self.proc, self.port, self.log_path = proc, port, log_path
        self.host = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, latency: float = 0.0, log_dir: Optional[str] = None) -> GcsServer:
        """Starts a server on a free port and waits until it answers."""
        for _ in range(3):  # another process may take the free port before the server binds it
            port = free_port()
            log_path = os.path.join(log_dir or "/tmp", f"gcs-server-{port}.log")
            log = open(log_path, "wb")
            proc = subprocess.Popen([sys.executable, GCS_SERVER, str(port), str(latency)], stdout=log,
                                    stderr=subprocess.STDOUT, cwd=REPO)
            log.close()
            server = cls(proc, port, log_path)
            if server._wait_ready():
                return server
            server.stop()
        raise RuntimeError(f"the GCS API server did not start; its log: {server.log()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
            time.sleep(0.05)
        return False

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            return f.read()[-4000:].decode("utf-8", "replace")
        return ""

    def stop(self) -> None:
        """Stops the server."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def env(self) -> dict[str, str]:
        """What a process needs to reach this server through google-cloud-storage."""
        return {EMULATOR_ENV: self.host}

    def client(self):
        """A google-cloud-storage client of this server (anonymous credentials)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        return storage.Client(project="gristmill-test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.host})

    def new_bucket(self) -> str:
        """Creates a fresh, empty bucket; returns its name."""
        name = f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(name)
        return name


# ------------------------------------------------------------------------------------ running jobs


def command(argv: list[str]) -> list[str]:
    """The `gristmill ...` command line, as this interpreter runs it."""
    return [sys.executable, "-m", "gristmill.cli", *argv]


def child_env(env: Optional[dict[str, str]] = None, crash_at: Optional[str] = None) -> dict[str, str]:
    """The environment of a gristmill subprocess: ours, plus env, plus the crash point (or none)."""
    out = {**os.environ, **(env or {})}
    out.pop(CRASH_ENV, None)
    out.setdefault("JAX_PLATFORMS", "cpu")
    out.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if crash_at:
        out[CRASH_ENV] = crash_at
    return out


def start(argv: list[str], env: Optional[dict[str, str]] = None, crash_at: Optional[str] = None,
          log_path: Optional[str] = None) -> subprocess.Popen:
    """Starts `gristmill argv` as a subprocess; its stdout and stderr go to log_path (or a pipe)."""
    out = open(log_path, "wb") if log_path else subprocess.PIPE
    try:
        return subprocess.Popen(command(argv), env=child_env(env, crash_at), cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        if log_path:
            out.close()


def finish(proc: subprocess.Popen, log_path: Optional[str] = None) -> subprocess.CompletedProcess:
    """Waits for a started job; returns its exit status and output."""
    if log_path:
        proc.wait(timeout=SUBPROCESS_TIMEOUT)
        with open(log_path, "rb") as f:
            output = f.read()
    else:
        output, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output.decode("utf-8", "replace"), "")


def tail(text: str, lines: int = 25) -> str:
    """The last lines of a job's output, for assertion messages."""
    return "\n".join(text.splitlines()[-lines:])


def check_killed(result: subprocess.CompletedProcess, crash_at: str) -> subprocess.CompletedProcess:
    """Asserts the job killed itself with SIGKILL at its crash point (not a clean exit, not an error)."""
    assert result.returncode == KILLED, (
        f"GRISTMILL_CRASH_AT={crash_at}: expected the job to be SIGKILLed (returncode {KILLED}), got "
        f"{result.returncode}; the crash point was {'never reached' if result.returncode == 0 else 'not reached'}."
        f"\n{tail(result.stdout)}")
    return result


def run_killed(argv: list[str], crash_at: str, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Runs `gristmill argv` with GRISTMILL_CRASH_AT=crash_at and asserts it was SIGKILLed."""
    return check_killed(finish(start(argv, env, crash_at)), crash_at)


def run_command(argv: list[str], env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Runs `gristmill argv` as a subprocess to its end (no crash point)."""
    return finish(start(argv, env))


def run_in_process(argv: list[str]) -> Any:
    """Runs `gristmill argv` in this process through the function the command calls; returns its result.

    Exceptions propagate (with their traceback), unlike `cli.main`, which prints user errors.
    """
    from gristmill import cli
    for words, (module, function, _) in sorted(cli.COMMANDS.items(), key=lambda kv: -len(kv[0])):
        if tuple(argv[:len(words)]) == words:
            os.environ.pop(CRASH_ENV, None)
            cli._configure_logging()
            return getattr(importlib.import_module(module), function)(list(argv[len(words):]))
    raise ValueError(f"no gristmill command {argv[:2]}")


def main_outcome(argv: list[str], capsys=None) -> tuple[int, str]:
    """(exit code, error text) of `gristmill argv` run in this process as the command would be.

    An exception cli.main re-raises (not a user error) counts as exit code 1 with its message.
    """
    from gristmill import cli
    try:
        code = cli.main(list(argv))
        text = ""
    except Exception as err:  # noqa: BLE001 (an uncaught exception: the command would exit 1)
        code, text = 1, f"{type(err).__name__}: {err}"
    if capsys is not None:
        captured = capsys.readouterr()
        text = captured.err + captured.out + text
    return code, text


# ------------------------------------------------------------------------------------ files, local or gs://


def _split_gcs(path: str) -> tuple[str, str]:
    bucket, _, name = path[len("gs://"):].partition("/")
    return bucket, name


def _gcs_client():
    from gristmill import io
    return io._gcs_client(os.environ.get(EMULATOR_ENV))


def join(base: str, rel: str) -> str:
    """base/rel for a local or gs:// base."""
    return base.rstrip("/") + "/" + rel if base.startswith("gs://") else os.path.join(base, rel)


def read(path: str) -> bytes:
    """A file's bytes, local or gs:// (FileNotFoundError when missing)."""
    if path.startswith("gs://"):
        bucket, name = _split_gcs(path)
        blob = _gcs_client().bucket(bucket).get_blob(name)
        if blob is None:
            raise FileNotFoundError(path)
        return blob.download_as_bytes()
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes) -> None:
    """Replaces a file's bytes, local or gs:// (for damaging a unit on purpose)."""
    if path.startswith("gs://"):
        bucket, name = _split_gcs(path)
        _gcs_client().bucket(bucket).blob(name).upload_from_string(data)
        return
    with open(path, "wb") as f:
        f.write(data)


def remove(path: str) -> None:
    """Deletes a file, local or gs://."""
    if path.startswith("gs://"):
        bucket, name = _split_gcs(path)
        _gcs_client().bucket(bucket).blob(name).delete()
    else:
        os.remove(path)


def exists(path: str) -> bool:
    """True when a file exists, local or gs://."""
    if path.startswith("gs://"):
        bucket, name = _split_gcs(path)
        return _gcs_client().bucket(bucket).get_blob(name) is not None
    return os.path.exists(path)


def listing(directory: str) -> dict[str, int]:
    """Every file under directory (relative path -> generation: mtime_ns locally, the object generation on GCS)."""
    directory = directory.rstrip("/")
    if directory.startswith("gs://"):
        bucket, prefix = _split_gcs(directory + "/")
        return {b.name[len(prefix):]: int(b.generation) for b in _gcs_client().list_blobs(bucket, prefix=prefix)}
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory).replace(os.sep, "/")] = os.stat(path).st_mtime_ns
    return found


def temporaries(directory: str) -> list[str]:
    """Staging files (`.tmp-`) under directory."""
    return sorted(rel for rel in listing(directory) if TEMP_MARK in rel.rsplit("/", 1)[-1])


# ------------------------------------------------------------------------------------ manifests and snapshots

MANIFEST = "manifest.json"
# What may differ between two runs that produced the same outputs: when, how they were invoked, where.
VOLATILE_KEYS = ("started_at", "finished_at", "published_at", "command", "options", "pipeline_options", "seconds",
                 "argv", "lease", "history")


def manifest(output_dir: str) -> dict[str, Any]:
    """The finished manifest of a job's output directory."""
    return json.loads(read(join(output_dir, MANIFEST)))


def _paths_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _paths_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _paths_in(v)


def listed_files(found: dict[str, Any]) -> list[str]:
    """The relative paths a manifest lists: its `files` and every file named in its `outputs`."""
    names = set(found.get("files") or {})
    names.update(_paths_in(found.get("outputs") or {}))
    return sorted(names)


def snapshot(output_dir: str, found: Optional[dict[str, Any]] = None) -> dict[str, bytes]:
    """{relative path: bytes} of every file the directory's finished manifest (or `found`) lists.

    A listed file that is missing is an assertion failure naming it.
    """
    found = manifest(output_dir) if found is None else found
    out = {}
    for rel in listed_files(found):
        try:
            out[rel] = read(join(output_dir, rel))
        except FileNotFoundError:
            raise AssertionError(f"{output_dir}: the manifest lists {rel}, which is missing") from None
    return out


def generations(output_dir: str, rels) -> dict[str, Optional[int]]:
    """The generation (local: mtime_ns) of each relative path; None for a missing one."""
    found = listing(output_dir)
    return {rel: found.get(rel) for rel in rels}


def _strip(value: Any, directory: str) -> Any:
    if isinstance(value, dict):
        return {_strip(k, directory): _strip(v, directory) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v, directory) for v in value]
    if isinstance(value, str):
        return value.replace(directory.rstrip("/"), "<DIR>")
    return value


def comparable_manifest(found: dict[str, Any], directory: str) -> dict[str, Any]:
    """A manifest without what differs between equal runs: timestamps, the command, options, the
    output directory's name, and how many units were reused (a resumed run reuses more)."""
    out = _strip(found, directory)
    counts = dict(out.get("counts") or {})
    counts.pop("units_reused", None)
    out["counts"] = counts
    return out


HASH_NAME = re.compile(r"(?<![0-9a-f])[0-9a-f]{16}(?![0-9a-f])")


def _by_content_name(files: dict[str, bytes]) -> dict[str, bytes]:
    renamed = {HASH_NAME.sub("<hash>", rel): data for rel, data in files.items()}
    assert len(renamed) == len(files), "two listed files differ only in a hash"
    return renamed


def _describe_difference(rel: str, mine: bytes, theirs: bytes) -> str:
    if rel.endswith(".npy"):
        import numpy as np
        a, b = np.load(_bytes_io.BytesIO(mine)), np.load(_bytes_io.BytesIO(theirs))
        if a.shape == b.shape:
            biggest = np.abs(a.astype(np.float64) - b).max()
            return f"{rel} (max |difference| {biggest:.3g}, {int((a != b).sum())} values)"
    return f"{rel} ({len(mine)} vs {len(theirs)} bytes)"


# An embedding cache is compared byte for byte like every other file (the embedder is called per
# padding bucket, so an embedding does not depend on its batch-mates). A tolerance > 0 compares
# .emb.npy arrays to within it instead, should an embedder ever be only reproducible to rounding.
EMBEDDING_TOLERANCE = 0.0
EMBEDDING_SUFFIX = ".emb.npy"


def _close_embeddings(rel: str, mine: bytes, theirs: bytes) -> bool:
    if not rel.endswith(EMBEDDING_SUFFIX) or not EMBEDDING_TOLERANCE:
        return False
    import numpy as np
    a, b = np.load(_bytes_io.BytesIO(mine)), np.load(_bytes_io.BytesIO(theirs))
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.abs(a.astype(np.float64) - b).max()
                                                              <= EMBEDDING_TOLERANCE)


def assert_same_output(actual_dir: str, expected_dir: str, names_by_content: bool = False) -> None:
    """The two directories' finished manifests list the same files with the same bytes, and agree.

    names_by_content: compare files by their names with 16-hex hashes left out, and the manifests
    by counts only: for a job whose unit keys hash its input files' identities (select reading
    another job's output directory), which differ between two directories of equal content.
    """
    actual_manifest, expected_manifest = manifest(actual_dir), manifest(expected_dir)
    actual, expected = snapshot(actual_dir, actual_manifest), snapshot(expected_dir, expected_manifest)
    if names_by_content:
        actual, expected = _by_content_name(actual), _by_content_name(expected)
    assert sorted(actual) == sorted(expected), (
        f"{actual_dir} lists other files than the uninterrupted run: only in it {sorted(set(actual) - set(expected))}, "
        f"missing {sorted(set(expected) - set(actual))}")
    differ = [_describe_difference(rel, actual[rel], expected[rel]) for rel in sorted(actual)
              if actual[rel] != expected[rel] and not _close_embeddings(rel, actual[rel], expected[rel])]
    assert not differ, f"{actual_dir}: files differ from the uninterrupted run's: {differ}"
    mine = comparable_manifest(actual_manifest, actual_dir)
    theirs = comparable_manifest(expected_manifest, expected_dir)
    if names_by_content:
        keys = ("counts", "reconciled", "config", "job")
        mine, theirs = {k: mine.get(k) for k in keys}, {k: theirs.get(k) for k in keys}
    differ = {k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}
    assert not differ, f"{actual_dir}: its manifest differs from the uninterrupted run's: {str(differ)[:2000]}"


def assert_unchanged(output_dir: str, before: dict[str, bytes], before_generations: dict[str, Optional[int]],
                     what: str) -> None:
    """Every file of a snapshot is still there with the same bytes and was not rewritten (same generation)."""
    missing = [rel for rel in sorted(before) if not exists(join(output_dir, rel))]
    assert not missing, f"{what}: files of the previous finished output were deleted: {missing}"
    changed = [rel for rel in sorted(before) if read(join(output_dir, rel)) != before[rel]]
    assert not changed, f"{what}: files of the previous finished output changed: {changed}"
    now = generations(output_dir, before_generations)
    rewritten = [rel for rel in sorted(before_generations) if now[rel] != before_generations[rel]]
    assert not rewritten, f"{what}: files of the previous finished output were rewritten (same bytes): {rewritten}"


# ------------------------------------------------------------------------------------ corpora


def c4_lines(start: int, count: int) -> list[str]:
    """`count` real C4 documents (JSON lines) from the bundled sample, from document `start`."""
    from gristmill.testing import EMBEDDED_C4
    with gzip.open(EMBEDDED_C4, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines[start:start + count]


def write_corpus(path: str, start: int, count: int, bad: dict[int, str]) -> None:
    """A JSON-lines file of real documents with bad lines inserted at the given 0-based line positions."""
    lines = c4_lines(start, count)
    for position in sorted(bad):
        lines.insert(position, bad[position])
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Sets environment variables for the duration (restoring the previous values)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
