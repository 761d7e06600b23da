"""`gristmill score density`: the paper's Density score (Algorithm 2) as a two-pass Beam job.

    gristmill score density --input 'c4/*.json.gz' --output out/density \\
        [--embedder minilm|st5:DIR] [--kernel cosine|l2] [--rows 1000] [--hashes_per_row K] [--buckets B]

    units to do --read--> embed (RunInference) --> units/<u>.tfrecord + units/<u>.emb.npy + marker
    every unit's embeddings --hash, CombineGlobally(add counts)--> sketch, version v (a hash of it)
    every unit --query the sketch (side input)--> versions/<v>/<u>.tfrecord with score/density/<embedder>
    the sketch --> versions/<v>/sketch.npz; manifest.json names this version's files

Embed once, ever: each unit's embeddings are cached beside its records (`gristmill.pipelines.corpus`),
so pass 2, resumed runs and later incremental batches never re-embed, and an input that is a
gristmill output with cached embeddings is not embedded at all. The sketch of a batch is the exact
sum of every unit's counts (counts add), so a corpus scored in batches gets the sketch of one run
over all of it. Because the sketch grows with the corpus, pass 2 scores every unit of the current
inputs again, from the cached embeddings (hashing only), into a new version: the files of an
earlier batch, which a published selection may name, are never rewritten (`gristmill gc` removes
them once nothing references them). A rerun with the same sketch reuses its version's files.

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
from typing import Optional

import apache_beam as beam
import numpy as np

from gristmill import io, records
from gristmill.pipelines import corpus, kit
from gristmill.scoring import density

JOB = "score density"
SCORER = "density"
SKETCH_FILE = "sketch.npz"
PARAMS_FILE = "density_params.json"
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
    for m in markers:
        if m.get("embeddings"):
            return int(corpus.load_embeddings(output_dir, m).shape[1])
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
        sketch.add_embeddings(corpus.load_embeddings(self.output_dir, marker))
        return sketch

    def merge_accumulators(self, sketches, sketch_config):
        sketches = [s for s in sketches if s is not None]
        return density.Sketch.merge_all(sketches) if sketches else None

    def extract_output(self, sketch, sketch_config):
        return sketch if sketch is not None else density.Sketch.empty(sketch_config)


def score_unit(marker: dict, recs: list, x: np.ndarray, _, sketch: density.Sketch, feature: str):
    """Pass 2 (corpus.WriteVersions): a unit's records with their density under the sketch."""
    for record, score in zip(recs, sketch.query_embeddings(x)):
        record[feature] = float(score)
    return recs, {}


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    options, config, pipeline_options = kit.parse(argv, DensityConfig, __doc__)
    corpus.check_embedder(options.input, config.embedder)
    prepared = kit.prepare(JOB, options, config, pipeline_options)
    output = options.output
    pipeline = kit.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    every_unit = corpus.every_unit(corpus.write_units(pipeline, prepared, config.embedder, config.share_model))
    listed = every_unit | "ListUnits" >> beam.combiners.ToList()
    if config.sketch:
        sketch = pipeline | "SketchPath" >> beam.Create([config.sketch]) | "LoadSketch" >> beam.Map(load_sketch)
    else:
        sketch_config = listed | "SketchConfig" >> beam.Map(
            lambda ms: config.sketch_config(_dimension(output, ms), _bandwidth(output, ms, config)))
        sketch = every_unit | "BuildSketch" >> beam.CombineGlobally(_SketchCombineFn(output),
                                                                    beam.pvalue.AsSingleton(sketch_config))
    fingerprint = prepared.base["fingerprint"]
    version = sketch | "Version" >> beam.Map(lambda s: corpus.version_id(sketch_digest(s), fingerprint))
    outputs = sketch | "SaveSketch" >> beam.Map(save_version, output, beam.pvalue.AsSingleton(version))
    if config.kernel == "l2" and not config.sketch and config.bandwidth is None:
        outputs = outputs | "WithParams" >> beam.Map(lambda o: {**o, "params": PARAMS_FILE})
    scored = (every_unit
              | "Pairs" >> beam.Map(lambda m: (m, None))
              | "Query" >> corpus.WriteVersions(output, beam.pvalue.AsSingleton(version), score_unit,
                                                beam.pvalue.AsSingleton(sketch), config.feature,
                                                what="documents scored by density"))
    _ = scored | "Finalize" >> corpus.Finalize(prepared, beam.pvalue.AsSingleton(outputs))
    return kit.run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
