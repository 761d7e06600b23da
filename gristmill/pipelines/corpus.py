"""The corpus-pass kit: what a job whose scores depend on the whole corpus shares.

    units to do --read--> embeddings (the input's cache, else the embedder)
        --> units/<u>.tfrecord (records as read) + units/<u>.emb.npy + units/<u>.json    (once per unit)
    every unit --the job's combine--> an aggregate (sketch, centroids, head), version v
    every unit + the aggregate --score--> versions/<v>/<u>.tfrecord + versions/<v>/<u>.json
    the aggregate --> versions/<v>/<name>; the version markers --> manifest.json (outputs, files)

Files under `units/` are written once and never rewritten: a unit's key hashes its input and the
job's configuration. Scores that depend on the whole corpus go to `versions/<v>/`, where v is 16
hex digits of a hash of the aggregate and the job's configuration, so a later batch (another
sketch, other centroids) writes new files beside the old ones, and a selection published over the
old ones reads the same bytes forever. A rerun whose aggregate is unchanged finds each unit's
version marker, verifies the files it lists and reuses them by reference, writing nothing.

A job built on this module is its pure scoring module plus a short job module: `write_units`,
a combine over `read_unit`, `write_aggregate`, `WriteVersions` with a score function, `Finalize`.
`gristmill gc` removes versions no manifest or published selection references.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import io as _bytes_io
import json
import logging
import os
import tempfile
import zipfile
from typing import Any, Callable, NamedTuple, Optional

import apache_beam as beam
import numpy as np

from gristmill import io, records
from gristmill.models import batching
from gristmill.pipelines import inference, kit, units

EMBEDDING = "_embedding"  # the record key an embedding travels under until its unit is written
EMBEDDINGS_SUFFIX = ".emb.npy"
VERSIONS_DIR = kit.VERSIONS_DIR
DEFAULT_EMBEDDER = "minilm"
EMBED_BATCH = 32  # documents per Beam batch; the embedder picks its rows per model call
# Token lengths that split batches into groups of similar length (the embedders' own padding buckets,
# up to Sentence-T5's 512, plus one: Beam's boundaries are lower-inclusive). Beam applies them only in
# its stateful batching; `PerBucket` gives the same grouping to every batch.
EMBED_LENGTH_BOUNDARIES = tuple(b + 1 for b in batching.length_buckets(512, smallest=32)[:-1])
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ embedder


def model_name(embedder: str) -> str:
    """An embedder's name in score features: `minilm`, or the base name of a `minilm:DIR` / `st5:DIR`."""
    kind, _, path = embedder.partition(":")
    return kind if not path else io.basename(path.rstrip("/"))


class PerBucket:
    """An embedder called once per padding bucket of a batch, so each document is padded to its own
    bucket and its embedding does not depend on its batch-mates (a 72-token document padded to 256
    with longer ones moves by ~1e-7): two runs cache the same bytes whatever Beam's batches were."""

    def __init__(self, model):
        self.model = model

    def score_encoded(self, batch: list) -> list:
        buckets = getattr(self.model, "buckets", None)
        if not buckets:
            return self.model.score_encoded(batch)
        groups: dict[int, list[int]] = {}
        for i, encoded in enumerate(batch):
            groups.setdefault(batching.bucket_length(min(encoded.length, max(buckets)), buckets), []).append(i)
        out: list = [None] * len(batch)
        for members in groups.values():
            for i, vector in zip(members, self.model.score_encoded([batch[i] for i in members])):
                out[i] = vector
        return out


def embed_spec(embedder: str, share_model: bool, options: kit.JobOptions) -> inference.ModelSpec:
    """The model spec of an embedder: records get their embedding under EMBEDDING."""
    from gristmill.scoring import embeddings

    return inference.ModelSpec(
        name="embed", load_model=lambda: PerBucket(embeddings.make_embedder(embedder)),
        load_encoder=lambda: embeddings.make_encoder(embedder),
        attach=lambda record, vector: {**record, EMBEDDING: vector},
        batch_size=EMBED_BATCH, batches_per_call=2, length_boundaries=EMBED_LENGTH_BOUNDARIES,
        share_model=share_model, resource_hints=kit.model_step_hints(options))


def input_embedder(inputs: tuple[str, ...]) -> Optional[str]:
    """The embedder an input run recorded in its configuration (a density or clusters output), if any."""
    for spec in inputs:
        for part in (p.strip() for p in spec.split(",")):
            if part and io.is_dir(part) and io.exists(io.join(part, records.MANIFEST_FILE)):
                embedder = records.read_manifest(part).get("config", {}).get("embedder")
                if embedder:
                    return str(embedder)
    return None


def check_embedder(inputs: tuple[str, ...], embedder: str) -> None:
    """Refuses an input directory whose cached embeddings came from another embedder."""
    theirs = input_embedder(inputs)
    if theirs and theirs != embedder:
        raise kit.UsageError(f"the input holds embeddings of {theirs!r}, not --embedder {embedder!r}; "
                             f"pass --embedder {theirs}")


# ------------------------------------------------------------------------------------ arrays


def array_bytes(array: np.ndarray) -> bytes:
    """A .npy file's bytes (deterministic for equal arrays)."""
    buffer = _bytes_io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def saved_bytes(save: Callable[[str], Any], name: str) -> bytes:
    """The bytes an object's `save(path)` writes (an .npz archive), with fixed archive timestamps."""
    with tempfile.TemporaryDirectory(prefix="gristmill-") as tmp:
        path = os.path.join(tmp, name)
        save(path)
        with open(path, "rb") as f:
            return stable_archive(f.read())


def stable_archive(data: bytes) -> bytes:
    """An .npz (a zip) rewritten with fixed timestamps, so equal content gives equal bytes in every run."""
    out = _bytes_io.BytesIO()
    with zipfile.ZipFile(_bytes_io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            dst.writestr(fixed, src.read(info.filename))
    return out.getvalue()


def save_array(path: str, array: np.ndarray) -> dict[str, Any]:
    """Writes a .npy atomically (local or gs://); returns its {"size", "crc32c"}."""
    return io.atomic_write(path, array_bytes(array))


def load_array(path: str, expected: Optional[dict[str, Any]] = None) -> np.ndarray:
    """Reads a .npy, checked against its recorded {"size", "crc32c"} when given."""
    return np.load(_bytes_io.BytesIO(checked_bytes(path, expected)), allow_pickle=False)


def checked_bytes(path: str, expected: Optional[dict[str, Any]]) -> bytes:
    """A file's bytes; records.CorruptOutputError naming the file when they are not what was recorded."""
    data = io.read_bytes(path)
    if expected:
        found = io.file_info(data)
        if found["size"] != expected["size"]:
            reason = f"has {found['size']} bytes, expected {expected['size']}"
        elif found["crc32c"] != expected["crc32c"]:
            reason = f"has CRC32C {found['crc32c']}, expected {expected['crc32c']} (corrupt)"
        else:
            return data
        raise records.CorruptOutputError(f"{path} {reason}; rerun the job that wrote it to redo the unit")
    return data


# ------------------------------------------------------------------------------------ units


def embeddings_file(key: str) -> str:
    """A unit's embedding cache, relative to the output directory."""
    return units.relative_unit_path(key, EMBEDDINGS_SUFFIX)


class Cache(NamedTuple):
    """The embedding cache of an input file: rows in record order."""

    path: str
    expected: Optional[dict[str, Any]]
    embedder: Optional[str]


def input_cache(records_path: str) -> Optional[Cache]:
    """The cached embeddings of an input file written by a gristmill job, else None.

    The file's marker (`<u>.json` beside `<u>.tfrecord`, under `units/` or `versions/<v>/`) names
    the cache and records its size and CRC32C; an older output has `<u>.emb.npy` beside the records.
    """
    if not records_path.endswith(units.RECORDS_SUFFIX):
        return None
    stem = records_path[: -len(units.RECORDS_SUFFIX)]
    marker_path = stem + units.MARKER_SUFFIX
    if io.exists(marker_path):
        try:
            marker = io.read_json(marker_path)
        except ValueError:
            marker = {}
        rel, own = marker.get("embeddings"), marker.get("records")
        if rel and own and records_path.replace("\\", "/").endswith("/" + own):
            root = records_path[: -len(own) - 1]
            return Cache(io.join(root, rel), marker.get("files", {}).get(rel), marker.get("embedder"))
    legacy = stem + EMBEDDINGS_SUFFIX
    return Cache(legacy, None, None) if io.exists(legacy) else None


def split_work(work: list[units.FileWork], embedder: str) -> tuple[list[units.FileWork], list[units.FileWork]]:
    """Files whose embeddings are cached by the input run, and files to embed."""
    cached, uncached = [], []
    for w in work:
        cache = input_cache(w.file.path)
        if cache and cache.embedder and cache.embedder != embedder:
            raise kit.UsageError(f"{w.file.path}: its cached embeddings are {cache.embedder!r}, not "
                                 f"--embedder {embedder!r}; pass --embedder {cache.embedder}")
        (cached if cache else uncached).append(w)
    log.info("%d file(s) with cached embeddings, %d to embed", len(cached), len(uncached))
    return cached, uncached


class _EmbeddingsHook:
    """WriteUnits hook: the unit's embeddings (the embedder's, or rows of the input's cache) into its cache."""

    def __init__(self, embedder: str):
        self.embedder = embedder

    def __call__(self, output_dir: str, info: kit.UnitInfo, items: list) -> dict[str, Any]:
        vectors, cache, embedded = [], None, False
        for item in items:
            if item.kind != kit.RECORD:
                continue
            vector = item.value.pop(EMBEDDING, None)
            if vector is None:
                if cache is None:
                    found = input_cache(info.file.path)
                    cache = load_array(found.path, found.expected)
                if item.number > cache.shape[0]:
                    raise ValueError(f"{info.file.path}: record {item.number} but its cache has {cache.shape[0]} "
                                     f"rows: the cache does not belong to these records")
                vector = cache[item.number - 1]
            else:
                embedded = True
            vectors.append(np.asarray(vector, np.float32))
        fields: dict[str, Any] = {"embeddings": None, "embedded": embedded, "embedder": self.embedder}
        if vectors:
            rel = embeddings_file(info.key)
            stacked = np.stack(vectors)
            fields["embeddings"], fields["dim"] = rel, int(stacked.shape[1])
            fields["files"] = {rel: save_array(io.join(output_dir, rel), stacked)}
        return fields


def write_units(pipeline: beam.Pipeline, prepared: kit.Prepared, embedder: str, share_model: bool = False):
    """Pass 1: every unit of the input written with its embeddings; returns every unit's marker (reused too).

    Files whose input run cached embeddings are not embedded again; the embedder loads only when
    some file has no cache.
    """
    output = prepared.options.output
    cached, uncached = split_work(prepared.work, embedder)
    hook = _EmbeddingsHook(embedder)
    written = [pipeline | "ReusedUnits" >> beam.Create(prepared.reused)]
    if cached:
        written.append(kit.read(pipeline, dataclasses.replace(prepared, work=cached), "ReadCached")
                       | "WriteCachedUnits" >> kit.WriteUnits(output, hook))
    if uncached:
        written.append(kit.read(pipeline, dataclasses.replace(prepared, work=uncached), "ReadToEmbed")
                       | "Embed" >> inference.RunModel(embed_spec(embedder, share_model, prepared.options))
                       | "WriteEmbeddedUnits" >> kit.WriteUnits(output, hook))
    return tuple(written) | "EveryUnit" >> beam.Flatten()


def load_embeddings(output_dir: str, marker: dict[str, Any]) -> np.ndarray:
    """A written unit's embeddings (rows in record order), verified against its marker."""
    rel = marker["embeddings"]
    return load_array(io.join(output_dir, rel), marker.get("files", {}).get(rel))


def read_unit(output_dir: str, marker: dict[str, Any], embeddings: bool = True,
              parsed: bool = True) -> tuple[list, Optional[np.ndarray]]:
    """A written unit's records and embeddings (None with embeddings=False), verified against its
    marker; ([], empty) for none. parsed=False: the records as their serialised tf.train.Examples."""
    if not marker.get("records"):
        return [], np.zeros((0, 0), np.float32)
    rel = marker["records"]
    data = checked_bytes(io.join(output_dir, rel), marker.get("files", {}).get(rel))
    recs = list(records.iter_tfrecords(_bytes_io.BytesIO(data)))
    if parsed:
        recs = [records.deserialize(payload) for payload in recs]
    if not embeddings:
        return recs, None
    x = load_embeddings(output_dir, marker)
    if x.shape[0] != len(recs):
        raise records.CorruptOutputError(f"unit {marker['key']}: {len(recs)} records but {x.shape[0]} embeddings")
    return recs, x


def every_unit(markers, label: str = "Units"):
    """The unit markers spread over the workers (after pass 1 finished: one list, then a reshuffle)."""
    return (markers
            | f"{label}List" >> beam.combiners.ToList()
            | f"{label}Each" >> beam.FlatMap(lambda ms: ms)
            | f"{label}Spread" >> beam.Reshuffle())


# ------------------------------------------------------------------------------------ the sample


def smallest_sample(unit_markers, output_dir: str, n: int,
                    candidates: Callable[[dict, list, np.ndarray], list[tuple[Any, Any]]], label: str = "Sample"):
    """The n documents with the smallest keys over the corpus: one list of (key, payload), ascending.

    candidates(marker, records, embeddings) -> (sort key, payload) per document, keys unique (e.g.
    a hash of the id, then the id). Each unit offers only its own n smallest, and the global
    Top.Smallest holds n tuples, so memory is bounded by n whatever the corpus; the sample is the
    same whatever the units or workers.
    """
    def unit_candidates(marker):
        recs, x = read_unit(output_dir, marker)
        return heapq.nsmallest(n, candidates(marker, recs, x), key=lambda c: c[0]) if recs else []

    return (unit_markers
            | f"{label}Candidates" >> beam.FlatMap(unit_candidates)
            | f"{label}Smallest" >> beam.combiners.Top.Smallest(n, key=lambda c: c[0]))


# ------------------------------------------------------------------------------------ versions


def version_id(*parts: Any) -> str:
    """16 hex digits of a hash of an aggregate's content and the configuration it scores with."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode("utf-8")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def version_file(version: str, name: str) -> str:
    """A file of a version, relative to the output directory: `versions/<v>/<name>`."""
    return kit.version_path(version, name)


def write_aggregate(output_dir: str, version: str, name: str, data: bytes,
                    same: Callable[[bytes], bool] = lambda found: False) -> dict[str, dict[str, Any]]:
    """Writes `versions/<v>/<name>` unless it is there already; returns {its relative path: info}.

    same(bytes found) says whether an existing file holds this version's aggregate (an archive's
    bytes may differ between two writes of the same content); an existing identical file is kept.
    """
    rel = version_file(version, name)
    path = io.join(output_dir, rel)
    if io.exists(path):
        found = io.read_bytes(path)
        if found == data or _holds(same, found):
            return {rel: io.file_info(found)}
        log.warning("%s does not hold version %s's %s; writing it again", path, version, name)
    return {rel: io.atomic_write(path, data)}


def _holds(same: Callable[[bytes], bool], found: bytes) -> bool:
    try:
        return bool(same(found))
    except Exception:  # noqa: BLE001 (an unreadable file does not hold the aggregate)
        return False


def reuse_version(output_dir: str, version: str, key: str) -> Optional[dict[str, Any]]:
    """A unit's version marker when every file it lists under versions/<v>/ verifies, else None."""
    path = io.join(output_dir, version_file(version, key + units.MARKER_SUFFIX))
    if not io.exists(path):
        return None
    try:
        marker = io.read_json(path)
    except ValueError:
        return None
    prefix = version_file(version, "")
    for rel, expected in marker.get("files", {}).items():
        if rel.startswith(prefix):
            reason = io.verify(io.join(output_dir, rel), expected)
            if reason:
                log.info("unit %s: %s %s; scoring it again", key, rel, reason)
                return None
    return marker


# A unit marker's transient {"fields": {...}, "files": {rel: info}}: files a job derived from the unit
# after it was written (density's bucket ids). They go into its version markers and the manifest,
# never into the unit's own marker, so losing one never redoes the unit.
DERIVED = "_derived"


def unit_marker(marker: dict[str, Any]) -> dict[str, Any]:
    """A unit's own marker, as in `units/<u>.json`: the marker without transient (`_`) fields."""
    return {k: v for k, v in marker.items() if not k.startswith("_")}


def write_version(output_dir: str, version: str, marker: dict[str, Any], scored: list[records.Record]) -> dict:
    """Writes a unit's scored records and then its version marker; returns the version marker.

    The version marker is the unit marker with its DERIVED fields and files, the version's records
    (`records`; the unit's own stay `unit_records`) and every file's size and CRC32C.
    """
    rel = version_file(version, marker["key"] + units.RECORDS_SUFFIX)
    files = kit.write_file(output_dir, rel, records.tfrecord_bytes(scored))
    derived = marker.get(DERIVED, {})
    own = unit_marker(marker)
    out = {**own, **derived.get("fields", {}), "records": rel, "unit_records": own["records"], "version": version,
           "files": {**own.get("files", {}), **derived.get("files", {}), **files}}
    io.write_json(io.join(output_dir, version_file(version, marker["key"] + units.MARKER_SUFFIX)), out)
    return out


Score = Callable[..., tuple[list[records.Record], dict[str, Any]]]


UNIT = "_unit"  # a version marker's transient copy of its unit's own marker, for the unit index


class _VersionFn(beam.DoFn):
    """(unit marker, payload) -> its version marker: reused when verified, else scored and written.

    A version marker the last run's unit index holds (units.VERSIONS_KEY, its files verified from the
    listing at resume) is reused without a read; one the index lacks is read and verified.
    """

    def __init__(self, output_dir: str, score: Score, what: str, embeddings: bool = True, parsed: bool = True):
        self.output_dir, self.score, self.what, self.embeddings = output_dir, score, what, embeddings
        self.parsed = parsed

    def setup(self):
        self.progress = kit.Progress(self.what)

    def process(self, element, version: str, *sides):
        marker, payload = element
        own = unit_marker(marker)
        if not marker.get("records"):
            yield {**own, **marker.get(DERIVED, {}).get("fields", {}), "version": version, UNIT: own}
            return
        reused = marker.get(units.VERSIONS_KEY, {}).get(version) or reuse_version(self.output_dir, version,
                                                                                   marker["key"])
        if reused is not None:
            yield {**reused, UNIT: own}
            return
        recs, x = read_unit(self.output_dir, marker, self.embeddings, self.parsed)
        scored, transient = self.score(marker, recs, x, payload, *sides)
        if len(scored) != len(recs):
            raise ValueError(f"unit {marker['key']}: {len(recs)} records but {len(scored)} scored")
        self.progress.tick(len(scored))
        yield {**write_version(self.output_dir, version, marker, scored), **transient, UNIT: own}


class WriteVersions(beam.PTransform):
    """Pass 2: (unit marker, payload) pairs -> version markers, each unit's scores in versions/<v>/.

    version: a side input (AsSingleton) of the version id. score(marker, records, embeddings,
    payload, *sides) -> (scored records in the same order, transient marker fields that reach
    Finalize but are not written, e.g. timings). Keys starting with `_` are transient by convention.
    embeddings=False: score gets None for the embeddings, which are not read (density scores from
    its cached bucket ids). parsed=False: score gets and returns serialised tf.train.Examples
    (bytes), for a score that only adds features (`records.add_features`, no parse and rewrite).
    """

    def __init__(self, output_dir: str, version, score: Score, *sides, what: str = "documents scored",
                 embeddings: bool = True, parsed: bool = True):
        super().__init__()
        self.output_dir, self.version, self.score, self.sides, self.what = output_dir, version, score, sides, what
        self.embeddings, self.parsed = embeddings, parsed

    def expand(self, pairs):
        fn = _VersionFn(self.output_dir, self.score, self.what, self.embeddings, self.parsed)
        return pairs | "ScoreUnit" >> beam.ParDo(fn, self.version, *self.sides)


# ------------------------------------------------------------------------------------ the manifest


class Finalize(beam.PTransform):
    """Version markers of every unit + the job's own files -> the manifest (kit.finalize), written last.

    outputs: a side input (AsSingleton) of {name: relative path} naming the aggregate and the job's
    other files (`versions/<v>/sketch.npz`, ...); the manifest lists them under `outputs` and, with
    their size and CRC32C, under `files`, beside every unit's and version's files.
    """

    def __init__(self, prepared: kit.Prepared, outputs, after=()):
        super().__init__()
        self.prepared, self.outputs, self.after = prepared, outputs, list(after)

    def expand(self, version_markers):
        prepared = self.prepared
        output, base, n_reused = prepared.options.output, prepared.base, len(prepared.reused)
        generation = prepared.manifest_generation
        waits = [beam.pvalue.AsList(pc) for pc in self.after]

        def finalize(markers, outputs, *_):
            clean = [unit_marker(m) for m in markers]
            own = {m["key"]: m[UNIT] for m in markers if UNIT in m}
            return kit.finalize(output, base, clean, n_reused, outputs, generation, unit_markers=own)

        return (version_markers
                | "ListVersions" >> beam.combiners.ToList()
                | "WriteManifest" >> beam.Map(finalize, self.outputs, *waits))
