"""Beam transforms shared by every gristmill job: read with dead letters, write, manifest.

    files --ReadDocuments--> documents ----(a scorer)----> WriteScoredRecords -> DIR/scored-SSSSS-of-NNNNN.tfrecord
                      \\--> dead letters --------------------> WriteDeadLetters  -> DIR/dead_letters.jsonl
    counts of both -------------------------------------------> WriteManifest     -> DIR/manifest.json (last)

Outputs are deterministic: a record's shard is a hash of its id and each shard is sorted by id,
so the same input gives byte-identical files on any runner and any number of workers, and a
retried bundle rewrites the same file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
import uuid
from typing import Any, Callable, Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from gristmill import documents, records

DOCUMENTS = "documents"
DEAD_LETTERS = "dead_letters"
COUNTER_NAMESPACE = "gristmill"
DEAD_LETTER_NAMESPACE = "gristmill.dead_letters"
SCORED_PREFIX = "scored"
DEAD_LETTER_FILE = "dead_letters.jsonl"
MANIFEST_FILE = "manifest.json"
PROGRESS_SECONDS = 10.0
log = logging.getLogger(__name__)


def join(directory: str, name: str) -> str:
    """Joins an output directory and a file name, local or gs://."""
    return FileSystems.join(directory, name)


def scored_glob(output_dir: str) -> str:
    """The glob of the scored TFRecord shards a job writes into output_dir."""
    return join(output_dir, f"{SCORED_PREFIX}-*.tfrecord")


class Progress:
    """Logs counts and rate every few seconds while a worker processes elements."""

    def __init__(self, what: str, every_seconds: float = PROGRESS_SECONDS):
        self.what = what
        self.every = every_seconds
        self.count = 0
        self.start = self.last = time.monotonic()

    def tick(self, n: int = 1) -> None:
        """Counts n more elements and logs when the interval has passed."""
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s: %d so far (%.1f/s)", self.what, self.count, self.count / max(now - self.start, 1e-9))


class _ReadFileFn(beam.DoFn):
    def __init__(self, config: documents.ReaderConfig):
        self.config = config
        self.read = Metrics.counter(COUNTER_NAMESPACE, "documents_read")
        self.files = Metrics.counter(COUNTER_NAMESPACE, "files_read")

    def setup(self):
        self.progress = Progress("documents read")
        self.dead = {reason: Metrics.counter(DEAD_LETTER_NAMESPACE, reason) for reason in documents.REASONS}

    def process(self, path: str):
        for item in documents.read_file(path, self.config):
            if isinstance(item, documents.DeadLetter):
                self.dead[item.reason].inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, item)
            else:
                self.read.inc()
                self.progress.tick()
                yield item
        self.files.inc()


class ReadDocuments(beam.PTransform):
    """Reads files into documents, with every unreadable record as a dead letter.

    Input: the pipeline root. Output: a tuple with `documents` (record dicts in the schema of
    `gristmill.records`, with a stable `id`) and `dead_letters` (`documents.DeadLetter`).
    Example: a JSON-lines file with `{"text": "Hi", "url": "u"}` and a line `oops` gives one
    document `{"id": ..., "text": "Hi", "url": "u", ...}` and one dead letter with reason
    `invalid_json` at record 2.
    """

    def __init__(self, files: list[str], config: documents.ReaderConfig):
        super().__init__()
        self.files = list(files)
        self.config = config

    def expand(self, pbegin):
        return (pbegin
                | "ListFiles" >> beam.Create(self.files)
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadAndValidate" >> beam.ParDo(_ReadFileFn(self.config)).with_outputs(DEAD_LETTERS, main=DOCUMENTS))


def shard_of(key: str, num_shards: int) -> int:
    """The output shard of a record: a stable hash of its id, independent of the runner."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


class _WriteShardFn(beam.DoFn):
    def __init__(self, path_of_shard: Callable[[int], str], frame: Callable[[bytes], bytes]):
        self.path_of_shard = path_of_shard
        self.frame = frame

    def process(self, element):
        shard, items = element
        payloads = sorted(item for item in items if item is not None)
        path = self.path_of_shard(shard)
        temp = path + f".tmp-{uuid.uuid4().hex}"
        with FileSystems.create(temp) as out:
            for _, payload in payloads:
                out.write(self.frame(payload))
        FileSystems.rename([temp], [path])
        yield len(payloads)


class WriteSortedShards(beam.PTransform):
    """Writes (sort_key, payload) pairs into a fixed number of files, each sorted by sort_key.

    Input: `(shard_key, payload_bytes)` pairs. Output: one int per shard, the records it holds.
    Every shard file exists, even an empty one, so `-of-N` names are always complete.
    """

    def __init__(self, path_of_shard: Callable[[int], str], num_shards: int, frame: Callable[[bytes], bytes]):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}")
        self.path_of_shard = path_of_shard
        self.num_shards = num_shards
        self.frame = frame

    def expand(self, pairs):
        n = self.num_shards
        keyed = pairs | "KeyByShard" >> beam.Map(lambda kv: (shard_of(kv[0], n), kv))
        every_shard = pairs.pipeline | "EveryShard" >> beam.Create([(s, None) for s in range(n)])
        return ((keyed, every_shard)
                | "Join" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteShardFn(self.path_of_shard, self.frame)))


def _shard_path(output_dir: str, prefix: str, num_shards: int) -> Callable[[int], str]:
    return lambda shard: join(output_dir, f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord")


def _line(payload: bytes) -> bytes:
    return payload + b"\n"


class WriteScoredRecords(beam.PTransform):
    """Writes record dicts as tf.train.Example TFRecords `DIR/<prefix>-SSSSS-of-NNNNN.tfrecord`.

    Output: the total number of records written, as a single-element PCollection.
    """

    def __init__(self, output_dir: str, num_shards: int = 1, prefix: str = SCORED_PREFIX):
        super().__init__()
        self.path_of_shard = _shard_path(output_dir, prefix, num_shards)
        self.num_shards = num_shards

    def expand(self, scored):
        return (scored
                | "Serialize" >> beam.Map(lambda r: (r[records.ID], records.serialize(r)))
                | "WriteShards" >> WriteSortedShards(self.path_of_shard, self.num_shards, records.encode_tfrecord)
                | "CountWritten" >> beam.CombineGlobally(sum))


class WriteDeadLetters(beam.PTransform):
    """Writes dead letters as one JSON-lines file `DIR/dead_letters.jsonl`, sorted by file and record."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.path = join(output_dir, DEAD_LETTER_FILE)

    def expand(self, dead_letters):
        path = self.path
        return (dead_letters
                | "Encode" >> beam.Map(lambda d: (f"{d.source}\x00{d.record:012d}", d.to_json().encode("utf-8")))
                | "WriteFile" >> WriteSortedShards(lambda _: path, 1, _line))


@beam.ptransform_fn
def CountReasons(dead_letters):  # noqa: N802 (a PTransform)
    """A single-element PCollection: {reason: count} over the dead letters."""
    return (dead_letters
            | "Reason" >> beam.Map(lambda d: (d.reason, 1))
            | "CountPerReason" >> beam.CombinePerKey(sum)
            | "ToDict" >> beam.combiners.ToDict())


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


def build_manifest(base: dict[str, Any], documents_read: int, unreadable: int, written: int,
                   dead_by_reason: dict[str, int], excluded: dict[str, int] | None = None) -> dict[str, Any]:
    """The run manifest: base info plus counts that reconcile.

    read = documents + records the reader dead-lettered (`unreadable`), and
    read = written + dead_lettered + excluded, where dead_lettered also holds documents that
    failed later (a scorer's dead letters) and excluded counts documents a job leaves out on
    purpose (such as those a selection does not keep).
    """
    excluded = dict(excluded or {})
    dead_total = sum(dead_by_reason.values())
    read = documents_read + unreadable
    manifest = dict(base)
    manifest["finished_at"] = utc_now()
    manifest["counts"] = {
        "read": read,
        "documents": documents_read,
        "written": written,
        "dead_lettered": dead_total,
        "dead_lettered_by_reason": dict(sorted(dead_by_reason.items())),
        "excluded": excluded,
    }
    manifest["reconciled"] = read == written + dead_total + sum(excluded.values())
    return manifest


def _write_manifest(_, output_dir, base, documents_read, unreadable, written, dead_by_reason, excluded):
    manifest = build_manifest(base, documents_read, unreadable, written, dead_by_reason, excluded)
    path = join(output_dir, MANIFEST_FILE)
    temp = path + f".tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temp) as out:
        out.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n")
    FileSystems.rename([temp], [path])
    counts = manifest["counts"]
    log.info("manifest %s: read %d, written %d, dead-lettered %d%s", path, counts["read"], counts["written"],
                 counts["dead_lettered"], "" if manifest["reconciled"] else " (COUNTS DO NOT RECONCILE)")
    yield manifest


class WriteManifest(beam.PTransform):
    """Writes `DIR/manifest.json` once every count is known, so it is the job's last output.

    Inputs are single-element PCollections: the document count, the count of records the reader
    dead-lettered, the written count, the {reason: count} dict of all dead letters, and optionally
    {name: count} of excluded documents.
    """

    def __init__(self, output_dir: str, base: dict[str, Any], documents_read, unreadable, written, dead_by_reason,
                 excluded=None):
        super().__init__()
        self.output_dir = output_dir
        self.base = base
        self.inputs = (documents_read, unreadable, written, dead_by_reason, excluded)

    def expand(self, pbegin):
        documents_read, unreadable, written, dead_by_reason, excluded = self.inputs
        pipeline = documents_read.pipeline
        excluded_side = (beam.pvalue.AsSingleton(excluded) if excluded is not None
                         else beam.pvalue.AsSingleton(pipeline | "NoExclusions" >> beam.Create([{}])))
        return (pbegin
                | "Start" >> beam.Create([None])
                | "Write" >> beam.FlatMap(_write_manifest, self.output_dir, self.base,
                                          beam.pvalue.AsSingleton(documents_read), beam.pvalue.AsSingleton(unreadable),
                                          beam.pvalue.AsSingleton(written),
                                          beam.pvalue.AsSingleton(dead_by_reason), excluded_side))


def read_manifest(output_dir: str) -> dict[str, Any]:
    """Reads the manifest a job wrote into output_dir."""
    with FileSystems.open(join(output_dir, MANIFEST_FILE)) as f:
        return json.loads(f.read().decode("utf-8"))


def iter_scored_records(pattern: str) -> Iterable[records.Record]:
    """Reads scored TFRecords back into record dicts, outside Beam (tests, reports, demo)."""
    for path in documents.expand_patterns([pattern]):
        with FileSystems.open(path) as f:
            for data in records.iter_tfrecords(f):
                yield records.deserialize(data)
