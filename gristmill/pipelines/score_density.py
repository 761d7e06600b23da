"""`gristmill score density`: the paper's Density score (Algorithm 2) as a two-pass Beam job.

    gristmill score density --input 'c4/*.json.gz' --output out/density \\
        [--embedder minilm|st5:DIR] [--kernel cosine|l2] [--rows 1000] [--hashes_per_row K] [--buckets B]

    units to do --read--> embed (RunInference) --> units/<u>.tfrecord + units/<u>.emb.npy + marker
    every unit's embeddings --hash, CombineGlobally(add counts)--> sketch (sketch.npz)
    every unit --query the sketch (side input)--> units/<u>.tfrecord with score/density/<embedder>

Embed once, ever: each unit's embeddings are cached beside its records, so pass 2, resumed runs and
later incremental batches never re-embed. The sketch of a batch is the exact sum of every unit's
counts (counts add), so a corpus scored in batches gets the sketch of one run over all of it.
Because the sketch grows with the corpus, pass 2 re-scores every unit of the current inputs,
from the cached embeddings (hashing only).

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
from typing import Any, Optional

import apache_beam as beam
import numpy as np

from gristmill import io, records
from gristmill.models import batching
from gristmill.pipelines import inference, kit, units
from gristmill.scoring import density

SCORER = "density"
SKETCH_FILE = "sketch.npz"
PARAMS_FILE = "density_params.json"
EMBEDDINGS_SUFFIX = ".emb.npy"
BANDWIDTH_SAMPLE = 2000
EMBED_BATCH = 32  # documents per Beam batch; the embedder picks its rows per model call
# Token lengths that split batches into groups of similar length, so the embedder pads each batch
# to a short bucket instead of the longest document: the embedders' own buckets (up to Sentence-T5's 512).
EMBED_LENGTH_BOUNDARIES = batching.length_buckets(512, smallest=32)[:-1]
EMBEDDING = "_embedding"  # the record key an embedding travels under until the unit is written
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
        kind, _, path = self.embedder.partition(":")
        return kind if not path else io.basename(path.rstrip("/"))

    @property
    def feature(self) -> str:
        """The score feature this job writes, `score/density/<embedder>`."""
        return records.score_feature(SCORER, self.model_name)

    def sketch_config(self, dim: int, bandwidth: Optional[float]) -> density.SketchConfig:
        """The sketch configuration for embeddings of `dim` (bandwidth: l2 only)."""
        return density.make_sketch_config(dim, kernel=self.kernel, rows=self.rows, buckets=self.buckets,
                                          hashes_per_row=self.hashes_per_row,
                                          bandwidth=bandwidth if self.kernel == "l2" else None, seed=self.seed)


def embedding_path(output_dir: str, key: str) -> str:
    """Where a unit's embedding cache lives."""
    return units.unit_path(output_dir, key, EMBEDDINGS_SUFFIX)


def save_array(path: str, array: np.ndarray) -> None:
    """Writes a .npy atomically (local or gs://)."""
    buffer = _bytes_io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    io.atomic_write(path, buffer.getvalue())


def load_array(path: str) -> np.ndarray:
    """Reads a .npy written by save_array."""
    return np.load(_bytes_io.BytesIO(io.read_bytes(path)), allow_pickle=False)


def save_sketch(sketch: density.Sketch, path: str) -> None:
    """Writes a sketch (counts, config, hash parameters) to a local or gs:// path."""
    with io.local_output(path) as local:
        sketch.save(local)


def load_sketch(path: str) -> density.Sketch:
    """Reads a sketch saved by `save_sketch` from a local or gs:// path."""
    with io.local_copy(path) as local:
        return density.Sketch.load(local)


def _write_embeddings(output_dir: str, info: kit.UnitInfo, items: list) -> dict[str, Any]:
    """WriteUnits hook: moves each record's embedding into the unit's cache (record order)."""
    vectors = []
    for item in items:
        if item.kind == kit.RECORD:
            vectors.append(np.asarray(item.value.pop(EMBEDDING), np.float32))
    if vectors:
        save_array(embedding_path(output_dir, info.key), np.stack(vectors))
    return {"embeddings": units.relative_unit_path(info.key, EMBEDDINGS_SUFFIX) if vectors else None}


def embed_spec(config: DensityConfig, options: kit.JobOptions) -> inference.ModelSpec:
    """The kit's model handler spec for the embedder: records get their embedding under EMBEDDING."""
    from gristmill.scoring import embeddings

    spec = config.embedder
    return inference.ModelSpec(
        name="embed", load_model=lambda: embeddings.make_embedder(spec),
        load_encoder=lambda: embeddings.make_encoder(spec),
        attach=lambda record, vector: {**record, EMBEDDING: vector},
        batch_size=EMBED_BATCH, batches_per_call=2, length_boundaries=EMBED_LENGTH_BOUNDARIES,
        share_model=config.share_model, resource_hints=kit.model_step_hints(options))


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
            x = load_array(io.join(output_dir, m["embeddings"]))
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
    for m in markers:
        if m.get("embeddings"):
            return int(load_array(io.join(output_dir, m["embeddings"])).shape[1])
    return 1


class _SketchCombineFn(beam.CombineFn):
    """Pass 1: unit markers -> the sketch of every unit's embeddings (counts add: exact, associative)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def create_accumulator(self, sketch_config):
        return None

    def add_input(self, sketch, marker, sketch_config):
        if not marker.get("embeddings"):
            return sketch
        sketch = sketch or density.Sketch.empty(sketch_config)
        sketch.add_embeddings(load_array(io.join(self.output_dir, marker["embeddings"])))
        return sketch

    def merge_accumulators(self, sketches, sketch_config):
        sketches = [s for s in sketches if s is not None]
        return density.Sketch.merge_all(sketches) if sketches else None

    def extract_output(self, sketch, sketch_config):
        return sketch if sketch is not None else density.Sketch.empty(sketch_config)


class _QueryUnitFn(beam.DoFn):
    """Pass 2: a unit marker -> its records rewritten with the density score; yields the marker."""

    def __init__(self, output_dir: str, feature: str):
        self.output_dir = output_dir
        self.feature = feature

    def setup(self):
        self.progress = kit.Progress("documents scored by density")

    def process(self, marker: dict, sketch: density.Sketch):
        if marker.get("records"):
            path = io.join(self.output_dir, marker["records"])
            with io.open_read(path) as f:
                recs = [records.deserialize(data) for data in records.iter_tfrecords(f)]
            scores = sketch.query_embeddings(load_array(io.join(self.output_dir, marker["embeddings"])))
            if len(scores) != len(recs):
                raise ValueError(f"unit {marker['key']}: {len(recs)} records but {len(scores)} cached embeddings")
            for record, score in zip(recs, scores):
                record[self.feature] = float(score)
            io.atomic_write(path, b"".join(records.encode_tfrecord(records.serialize(r)) for r in recs))
            self.progress.tick(len(recs))
        yield marker


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    options, config, pipeline_options = kit.parse(argv, DensityConfig, __doc__)
    prepared = kit.prepare("score density", options, config, pipeline_options)
    output = options.output
    pipeline = kit.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    embedded = (kit.read(pipeline, prepared)
                | "Embed" >> inference.RunModel(embed_spec(config, options))
                | "WriteUnits" >> kit.WriteUnits(output, _write_embeddings))
    reused = pipeline | "ReusedUnits" >> beam.Create(prepared.reused)
    every_unit = (embedded, reused) | "EveryUnit" >> beam.Flatten()
    listed = every_unit | "ListUnits" >> beam.combiners.ToList()
    if config.sketch:
        sketch = pipeline | "SketchPath" >> beam.Create([config.sketch]) | "LoadSketch" >> beam.Map(load_sketch)
        saved = []
    else:
        sketch_config = listed | "SketchConfig" >> beam.Map(
            lambda ms: config.sketch_config(_dimension(output, ms), _bandwidth(output, ms, config)))
        sketch = (listed
                  | "UnitsToHash" >> beam.FlatMap(lambda ms: ms)
                  | "SpreadUnits" >> beam.Reshuffle()
                  | "BuildSketch" >> beam.CombineGlobally(_SketchCombineFn(output),
                                                          beam.pvalue.AsSingleton(sketch_config)))
        saved = [sketch | "SaveSketch" >> beam.Map(save_sketch, io.join(output, SKETCH_FILE))]
    queried = (listed
               | "UnitsToQuery" >> beam.FlatMap(lambda ms: ms)
               | "SpreadQueries" >> beam.Reshuffle()
               | "Query" >> beam.ParDo(_QueryUnitFn(output, config.feature), beam.pvalue.AsSingleton(sketch)))
    files = {} if config.sketch else {"sketch": SKETCH_FILE}
    _ = queried | "Finalize" >> kit.Finalize(output, prepared.base, prepared.reused, files, after=saved,
                                             markers_include_reused=True)
    return kit.run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
