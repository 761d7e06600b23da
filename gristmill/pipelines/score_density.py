"""`gristmill score density`: the paper's Density score (Algorithm 2) as a two-pass Beam job.

    gristmill score density --input 'c4/*.json.gz' --output out/density \\
        [--embedder minilm|st5:DIR] [--kernel cosine|l2] [--rows 1000] [--hashes_per_row K] [--buckets B]

    units to do --read--> embed (RunInference) --> units/<u>.tfrecord + units/<u>.emb.npy + marker
    every unit without ids --hash its embeddings, once--> units/<u>.<hash digest>.ids.npy
    new units' ids --bincount, CombineGlobally(add counts)--> + the last run's sketch = the sketch, version v
    every unit --gather its ids' counts (side input)--> versions/<v>/<u>.tfrecord with score/density/<embedder>
    the sketch --> versions/<v>/sketch.npz; manifest.json names this version's files

Embed once and hash once, ever: each unit's embeddings are cached beside its records
(`gristmill.pipelines.corpus`), and its bucket ids (R small integers a document, one byte each for
the default sketch) beside them under a digest of the hash functions, so a sketch of another
configuration never reads them. Pass 1 counts ids, pass 2 gathers counts at them; neither hashes a
document whose ids exist, and an input that is a gristmill output with cached embeddings is not
embedded at all. The sketch is the exact sum of every unit's counts, and a document's ids do not
depend on its unit or batch (fixed-size hash chunks), so a corpus scored in batches gets the bytes of
one run over all of it. A batch adds only its new units' counts to the last run's sketch (named by
its manifest, with the units it counted, and verified by CRC32C; if a counted unit is gone or
anything does not verify, the sketch is counted again from every unit's cached ids). Because the
sketch grows, pass 2 scores every unit of the current inputs again, from the cached ids, into a new
version: the files of an earlier batch, which a published selection may name, are never rewritten
(`gristmill gc` removes them once nothing references them). A rerun with nothing new reuses the last
sketch and, through the unit index, each unit's version marker: it reads no ids, embeddings or marker.

Defaults (`gristmill.scoring.density`): the cosine (sign random projection) kernel, which needs no
data-dependent parameter; `--kernel l2` is the paper's p-stable sketch, whose bandwidth is
`--bandwidth` or estimated once from the first units' embeddings and then recorded in
`density_params.json`, so later batches hash with the same functions. `--sketch FILE` scores
against a saved sketch without building one.
"""

from __future__ import annotations

import dataclasses
import io as _bytes_io
import logging
from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np

from gristmill import io, records
from gristmill.pipelines import corpus, kit, units
from gristmill.scoring import density

JOB = "score density"
SCORER = "density"
SKETCH_FILE = "sketch.npz"
PARAMS_FILE = "density_params.json"
IDS_SUFFIX = ".ids.npy"
BANDWIDTH_SAMPLE = 2000
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DensityConfig:
    """The density job: which embedder, the sketch's shape and kernel, and its seed."""

    embedder: str = dataclasses.field(default="minilm", metadata={
        "help": "minilm (bundled all-MiniLM-L6-v2), minilm:DIR or st5:DIR (Sentence-T5, HF layout)"})
    kernel: str = dataclasses.field(default=density.DEFAULT_KERNEL, metadata={
        "help": "cosine (sign random projections) or l2 (the paper's p-stable hash)", "choices": density.KERNELS})
    rows: Optional[int] = dataclasses.field(default=None, metadata={"help": "R: hash functions (sketch rows)"})
    buckets: Optional[int] = dataclasses.field(default=None, metadata={"help": "B: buckets per row"})
    hashes_per_row: Optional[int] = dataclasses.field(default=None, metadata={
        "help": "k concatenated hashes (sign bits for cosine) per row: the kernel is p^k"})
    bandwidth: Optional[float] = dataclasses.field(default=None, metadata={
        "help": "l2 only: p-stable bucket width w (default: estimated once from the data)"})
    bandwidth_quantile: float = dataclasses.field(default=density.DEFAULT_BANDWIDTH_QUANTILE, metadata={
        "help": "l2 only: quantile of pairwise distances used as the estimated bandwidth"})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the hash functions"})
    sketch: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Score against this saved sketch.npz instead of building one"})
    share_model: bool = dataclasses.field(default=False, metadata={
        "help": "Share one embedder copy across a worker's processes (GPU workers)"})

    @property
    def model_name(self) -> str:
        """The embedder's name in the score feature: `minilm`, or the base name of an st5 directory."""
        return corpus.model_name(self.embedder)

    @property
    def feature(self) -> str:
        """The score feature this job writes, `score/density/<embedder>`."""
        return records.score_feature(SCORER, self.model_name)

    def sketch_config(self, dim: int, bandwidth: Optional[float]) -> density.SketchConfig:
        """The sketch configuration for embeddings of `dim` (bandwidth: l2 only)."""
        return density.make_sketch_config(dim, kernel=self.kernel, rows=self.rows, buckets=self.buckets,
                                          hashes_per_row=self.hashes_per_row,
                                          bandwidth=bandwidth if self.kernel == "l2" else None, seed=self.seed)


def sketch_bytes(sketch: density.Sketch) -> bytes:
    """A sketch's .npz file as bytes (the same bytes for the same sketch)."""
    return corpus.saved_bytes(sketch.save, SKETCH_FILE)


def load_sketch(path: str) -> density.Sketch:
    """Reads a sketch saved by `Sketch.save` from a local or gs:// path."""
    with io.local_copy(path) as local:
        return density.Sketch.load(local)


def sketch_digest(sketch: density.Sketch) -> bytes:
    """What identifies a sketch's content (its .npz bytes are not stable across writes)."""
    p = sketch.params
    parts = [sketch.config.to_json().encode(), str(sketch.num_points).encode()] + [
        np.ascontiguousarray(a).tobytes() for a in (sketch.counts, p.projection, p.offsets, p.mult_hi, p.mult_lo)]
    return corpus.version_id(*parts).encode()


def save_version(sketch: density.Sketch, output_dir: str, version: str) -> dict[str, str]:
    """Writes `versions/<v>/sketch.npz` unless that version's sketch is there; returns the outputs."""
    def same(found: bytes) -> bool:
        return sketch_digest(density.Sketch.load(_bytes_io.BytesIO(found))) == sketch_digest(sketch)

    (rel,) = corpus.write_aggregate(output_dir, version, SKETCH_FILE, sketch_bytes(sketch), same)
    return {"sketch": rel}


def _bandwidth(output_dir: str, markers: list[dict], config: DensityConfig) -> Optional[float]:
    """l2: the flag, else the bandwidth recorded by an earlier batch, else one estimated now and recorded."""
    if config.kernel != "l2":
        return None
    if config.bandwidth is not None:
        return config.bandwidth
    params_path = io.join(output_dir, PARAMS_FILE)
    if io.exists(params_path):
        return float(io.read_json(params_path)["bandwidth"])
    sample, seen = [], 0
    for m in sorted(markers, key=lambda m: m["key"]):
        if m.get("embeddings") and seen < BANDWIDTH_SAMPLE:
            x = corpus.load_embeddings(output_dir, m)
            sample.append(x[: BANDWIDTH_SAMPLE - seen])
            seen += len(sample[-1])
    if seen < 2:
        raise ValueError("cannot estimate the bandwidth from fewer than 2 documents; pass --bandwidth")
    bandwidth = density.estimate_bandwidth(np.concatenate(sample), quantile=config.bandwidth_quantile,
                                           seed=config.seed)
    io.write_json(params_path, {"bandwidth": bandwidth, "quantile": config.bandwidth_quantile,
                                "sample": seen})
    log.info("density: bandwidth %.4f (quantile %.2f of pairwise distances, %d embeddings), recorded in %s",
             bandwidth, config.bandwidth_quantile, seen, params_path)
    return bandwidth


def _dimension(output_dir: str, markers: list[dict]) -> int:
    """The embeddings' dimension: recorded in the unit markers (an older marker: its embeddings' shape)."""
    for m in markers:
        if m.get("embeddings"):
            return int(m["dim"]) if m.get("dim") else int(corpus.load_embeddings(output_dir, m).shape[1])
    return 1


def ids_file(key: str, digest: str) -> str:
    """A unit's cached bucket ids under the hash functions `digest` names (`density.hash_digest`),
    relative to the output directory: `units/<u>.<digest>.ids.npy`, [R, N] in `density.ids_dtype`."""
    return units.relative_unit_path(key, f".{digest}{IDS_SUFFIX}")


def load_ids(output_dir: str, marker: dict, rows: int) -> np.ndarray:
    """A unit's cached bucket ids [R, N], verified against the size and CRC32C its marker carries."""
    fields = marker[corpus.DERIVED]
    rel = fields["fields"]["ids"]
    path = io.join(output_dir, rel)
    ids = corpus.load_array(path, fields["files"][rel])
    if ids.ndim != 2 or ids.shape != (rows, marker["written"]):
        raise records.CorruptOutputError(f"{path} holds ids of shape {list(ids.shape)}, expected "
                                         f"[{rows}, {marker['written']}]; delete it to hash the unit again")
    return ids


class _UnitIdsFn(beam.DoFn):
    """Pass 1: a unit marker -> the marker with its cached bucket ids (corpus.DERIVED), hashing its
    embeddings only when no ids file of these hash functions exists: each document is hashed once, ever.

    An ids file a verified version marker of the last run lists (units.VERSIONS_KEY) is trusted
    without a read; one the last run recorded but whose file changed is read and checked against its
    recorded size and CRC32C; one no marker lists (a run killed before its manifest) is read and its
    shape checked (written atomically, so it is whole). Otherwise the unit's embeddings are hashed.
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self._params, self._digest = None, None

    def process(self, marker: dict, params: density.HashParams):
        if not marker.get("embeddings") or not marker.get("written"):
            yield marker
            return
        if params is not self._params:
            self._params, self._digest = params, density.hash_digest(params)
        rel = ids_file(marker["key"], self._digest)
        info = next((vm["files"][rel] for vm in marker.get(units.VERSIONS_KEY, {}).values()
                     if rel in vm.get("files", {})), None)
        if info is None:
            recorded = marker.get(units.INDEXED_VERSION_KEY, {}).get("files", {}).get(rel)
            info = self._existing(rel, marker, params, recorded) or self._hash(rel, marker, params)
        yield {**marker, corpus.DERIVED: {"fields": {"ids": rel}, "files": {rel: info}}}

    def _existing(self, rel: str, marker: dict, params: density.HashParams, recorded: Optional[dict]) -> Optional[dict]:
        path = io.join(self.output_dir, rel)
        if not io.exists(path):
            return None
        data = io.read_bytes(path)
        info = io.file_info(data)
        if recorded is not None and info != recorded:
            log.warning("%s is not the file the last run recorded (size %d, CRC32C %s); hashing the unit again",
                        path, recorded["size"], recorded["crc32c"])
            return None
        try:
            ids = np.load(_bytes_io.BytesIO(data), allow_pickle=False)
        except ValueError:
            ids = None
        want = (params.config.rows, marker["written"])
        if ids is None or ids.shape != want or ids.dtype != density.ids_dtype(params.config):
            log.warning("%s is not the unit's ids (%s); hashing the unit again", path,
                        "unreadable" if ids is None else f"{ids.dtype} {list(ids.shape)}")
            return None
        return info

    def _hash(self, rel: str, marker: dict, params: density.HashParams) -> dict:
        x = corpus.load_embeddings(self.output_dir, marker)
        ids = density.row_bucket_ids(params, x).astype(density.ids_dtype(params.config))
        return corpus.save_array(io.join(self.output_dir, rel), ids)


class _CountFn(beam.CombineFn):
    """Pass 1: unit markers with cached ids -> the sketch of their documents (a bincount per row from
    the ids, no hashing; counts add, so the sum is exact and associative)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def create_accumulator(self, params):
        return None

    def add_input(self, sketch, marker, params):
        if corpus.DERIVED not in marker:
            return sketch
        sketch = sketch or density.Sketch.empty(params)
        return sketch.add_rows(load_ids(self.output_dir, marker, params.config.rows))

    def merge_accumulators(self, sketches, params):
        sketches = [s for s in sketches if s is not None]
        return density.Sketch.merge_all(sketches) if sketches else None

    def extract_output(self, sketch, params):
        return sketch if sketch is not None else density.Sketch.empty(params)


class Previous(NamedTuple):
    """The last run's sketch (relative path, recorded size and CRC32C) and the units it counted."""

    sketch: str
    info: dict
    counted: frozenset


def previous_sketch(output_dir: str, prepared: kit.Prepared, config: DensityConfig) -> Optional[Previous]:
    """The last finished run's sketch, when this run can add to it: same configuration, and every unit
    it counted (the units its manifest lists) is reused as it was. None: build the sketch from every
    unit's cached ids (a counted unit disappeared or is redone, or there is no such run)."""
    path = io.join(output_dir, records.MANIFEST_FILE)
    if config.sketch or not prepared.options.resume or not io.exists(path):
        return None
    try:
        manifest = io.read_json(path)
    except ValueError:
        return None
    rel = manifest.get("outputs", {}).get("sketch")
    info = manifest.get("files", {}).get(rel)
    if manifest.get("fingerprint") != prepared.base["fingerprint"] or not rel or not info:
        return None
    if config.kernel == "l2" and config.bandwidth is None and not io.exists(io.join(output_dir, PARAMS_FILE)):
        return None
    problem = io.verify(io.join(output_dir, rel), info)
    if problem:
        log.warning("density: the last run's sketch %s %s; counting every unit's ids again", rel, problem)
        return None
    counted = frozenset(u["key"] for u in manifest.get("units", []))
    gone = counted - {m["key"] for m in prepared.reused}
    if gone:
        log.info("density: %d unit(s) the last sketch counted are gone or redone; counting every unit's ids again",
                 len(gone))
        return None
    return Previous(rel, info, counted)


def load_previous(prev: Previous, output_dir: str, config: DensityConfig) -> density.Sketch:
    """The last run's sketch, verified by its recorded size and CRC32C and checked to have this
    run's hash functions; CorruptOutputError naming the file otherwise."""
    path = io.join(output_dir, prev.sketch)
    sketch = density.Sketch.load(_bytes_io.BytesIO(corpus.checked_bytes(path, prev.info)))
    want = config.sketch_config(sketch.config.dim, _bandwidth(output_dir, [], config))
    if sketch.config != want or not sketch.params.same_functions(density.make_hash_params(want)):
        raise records.CorruptOutputError(f"{path}: its sketch ({sketch.config}) is not this configuration's "
                                         f"({want}); rerun with --overwrite")
    return sketch


def score_unit(marker: dict, examples: list[bytes], _x, _payload, sketch: density.Sketch, feature: str,
               output_dir: str):
    """Pass 2 (corpus.WriteVersions): a unit's serialised records with their density spliced in, gathered
    from its cached ids."""
    scores = sketch.query_rows(load_ids(output_dir, marker, sketch.config.rows))
    return [records.add_features(example, {feature: float(score)}) for example, score in zip(examples, scores)], {}


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    options, config, pipeline_options = kit.parse(argv, DensityConfig, __doc__)
    corpus.check_embedder(options.input, config.embedder)
    prepared = kit.prepare(JOB, options, config, pipeline_options)
    output = options.output
    prev = previous_sketch(output, prepared, config)
    pipeline = kit.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    every_unit = corpus.every_unit(corpus.write_units(pipeline, prepared, config.embedder, config.share_model))
    listed = every_unit | "ListUnits" >> beam.combiners.ToList()
    if config.sketch:
        given = pipeline | "SketchPath" >> beam.Create([config.sketch]) | "LoadSketch" >> beam.Map(load_sketch)
        params = given | "Params" >> beam.Map(lambda s: s.params)
    elif prev:
        base = (pipeline | "PreviousPath" >> beam.Create([prev.sketch])
                | "LoadPrevious" >> beam.Map(lambda _: load_previous(prev, output, config)))
        params = base | "Params" >> beam.Map(lambda s: s.params)
    else:
        params = listed | "HashParams" >> beam.Map(lambda ms: density.make_hash_params(
            config.sketch_config(_dimension(output, ms), _bandwidth(output, ms, config))))
    with_ids = every_unit | "UnitIds" >> beam.ParDo(_UnitIdsFn(output), beam.pvalue.AsSingleton(params))
    if config.sketch:
        sketch = given
    else:
        counted = prev.counted if prev else frozenset()
        uncounted = with_ids | "NotCounted" >> beam.Filter(lambda m: m["key"] not in counted)
        # one empty element, so the combine never sees an empty input (Beam's default for one does not
        # pass side inputs)
        sketch = ((uncounted, pipeline | "NoUnit" >> beam.Create([{}])) | "WithEmpty" >> beam.Flatten()
                  | "CountIds" >> beam.CombineGlobally(_CountFn(output), beam.pvalue.AsSingleton(params)))
        if prev:
            sketch = sketch | "AddToPrevious" >> beam.Map(
                lambda new, old: old.merge(new) if new.num_points else old, beam.pvalue.AsSingleton(base))
    fingerprint = prepared.base["fingerprint"]
    version = sketch | "Version" >> beam.Map(lambda s: corpus.version_id(sketch_digest(s), fingerprint))
    kept = prev.sketch if prev else None

    def save(s, v):
        if kept and corpus.version_file(v, SKETCH_FILE) == kept:
            return {"sketch": kept}  # the last run's sketch, verified when it was loaded
        return save_version(s, output, v)

    outputs = sketch | "SaveSketch" >> beam.Map(save, beam.pvalue.AsSingleton(version))
    if config.kernel == "l2" and not config.sketch and config.bandwidth is None:
        outputs = outputs | "WithParams" >> beam.Map(lambda o: {**o, "params": PARAMS_FILE})
    scored = (with_ids
              | "Pairs" >> beam.Map(lambda m: (m, None))
              | "Query" >> corpus.WriteVersions(output, beam.pvalue.AsSingleton(version), score_unit,
                                                beam.pvalue.AsSingleton(sketch), config.feature, output,
                                                what="documents scored by density", embeddings=False,
                                                parsed=False))
    _ = scored | "Finalize" >> corpus.Finalize(prepared, beam.pvalue.AsSingleton(outputs))
    return kit.run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
