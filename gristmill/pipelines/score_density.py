"""`gristmill score density`: the paper's Density score (Algorithm 2) as a two-pass Beam job.

    gristmill score density --input 'c4/*.json.gz' --output out/density \\
        [--embedder minilm|st5:DIR] [--rows 1000] [--buckets 20000] [--bandwidth W] [--kernel l2|cosine]

    documents -> embed (once) -> (record, embedding)
                                   |-- pass 1: hash, CombineGlobally(partial sketches) -> sketch
                                   '-- pass 2: hash, query the sketch (side input) -> score/density/<embedder>

Embed once: pass 1 and pass 2 share the embedding computed in one step, and pass 2 hashes it
again rather than carrying the R bucket ids: the embedding is smaller (384 or 768 floats against
R = 1,000 int32 ids, 1.5-3 KB against 4 KB a document, which Beam materialises between the
passes), and re-hashing is one small matmul, cheap next to the embedder. The hash functions are
drawn from `--seed` alone, so both passes (and every worker) use the same ones.

Kernel sharpness: `--hashes_per_row 2` by default (each row concatenates k = 2 p-stable hashes, so
the kernel is p(c)^2). Sentence embeddings of web text have concentrated pairwise distances
(MiniLM on C4: 1%/50%/95% quantiles 1.19/1.39/1.47), so with k = 1 every pair collides with
probability 0.32-0.39 and scores vary by a few percent; k = 2 doubles the contrast in log terms
and brought IPS samples closer to uniform on clustered data (total-variation distance 0.34
against 0.43 for k = 1 and 0.49 for a random sample; benchmarks/density_accuracy.py).
The paper does not state k; `--hashes_per_row 1` gives the plain p-stable kernel.

Bandwidth: `--bandwidth W`, or by default estimated from the data (a quantile of pairwise
distances on a sample of up to 2,000 embeddings; `density.estimate_bandwidth`). The sketch and its
parameters are saved as `sketch.npz` beside the outputs; `--sketch FILE` scores new documents
against a saved sketch without rebuilding it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
import uuid
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from gristmill import records
from gristmill.pipelines import job, transforms
from gristmill.pipelines.transforms import Progress
from gristmill.scoring import density

SCORER = "density"
SKETCH_FILE = "sketch.npz"
BANDWIDTH_SAMPLE = 2000
EMBED_BATCH = 64
HASH_BATCH = 1024
# Character lengths that split batches into groups of similar token length (about 4 characters a
# token), so the embedder pads each batch to a short bucket instead of the longest document.
EMBED_LENGTH_BOUNDARIES = [128, 256, 512, 1024]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DensityConfig:
    """The density job: which embedder, the sketch's shape and kernel, and its seed."""

    embedder: str = "minilm"
    rows: int = 1000
    buckets: int = 20000
    hashes_per_row: int = 2
    bandwidth: Optional[float] = None
    bandwidth_quantile: float = 0.05
    kernel: str = "l2"
    seed: int = 0
    sketch: Optional[str] = None

    @property
    def model_name(self) -> str:
        """The embedder's name in the score feature: `minilm`, or the base name of an st5 directory."""
        kind, _, path = self.embedder.partition(":")
        return kind if not path else os.path.basename(path.rstrip("/"))

    @property
    def feature(self) -> str:
        """The score feature this job writes, `score/density/<embedder>`."""
        return records.score_feature(SCORER, self.model_name)

    def sketch_config(self, dim: int, bandwidth: Optional[float]) -> density.SketchConfig:
        """The sketch configuration for embeddings of `dim` at `bandwidth` (None for cosine)."""
        return density.SketchConfig(dim=dim, rows=self.rows, buckets=self.buckets,
                                    hashes_per_row=self.hashes_per_row,
                                    bandwidth=bandwidth if self.kernel == "l2" else None,
                                    kernel=self.kernel, seed=self.seed)


def _text_length(record: records.Record) -> int:
    return len(record[records.TEXT])


class _EmbedFn(beam.DoFn):
    """Batches of records -> (record, float32 embedding) pairs, the embedder loaded once per worker."""

    def __init__(self, spec: str):
        self.spec = spec

    def setup(self):
        from gristmill.scoring.embeddings import make_embedder
        start = time.monotonic()
        self.embedder = make_embedder(self.spec)
        log.info("density: loaded embedder %s in %.1f s", self.spec, time.monotonic() - start)
        self.progress = Progress("documents embedded")

    def process(self, batch):
        vectors = self.embedder.embed([r[records.TEXT] for r in batch])
        self.progress.tick(len(batch))
        for record, vector in zip(batch, vectors):
            yield record, vector


class _SketchCombineFn(beam.CombineFn):
    """Pass 1: partial sketches over embeddings, merged by adding counts (exact, associative).

    Embeddings are buffered and hashed HASH_BATCH at a time (one matmul each). The sketch
    configuration arrives as a side input because the bandwidth may be estimated from the data.
    """

    def create_accumulator(self, sketch_config):
        return [], None

    def _flush(self, acc, sketch_config):
        buffered, sketch = acc
        if buffered:
            sketch = sketch or density.Sketch.empty(sketch_config)
            sketch.add_embeddings(np.stack(buffered))
        return [], sketch

    def add_input(self, acc, vector, sketch_config):
        buffered, sketch = acc
        buffered.append(vector)
        if len(buffered) >= HASH_BATCH:
            return self._flush((buffered, sketch), sketch_config)
        return buffered, sketch

    def merge_accumulators(self, accs, sketch_config):
        sketches = [self._flush(acc, sketch_config)[1] for acc in accs]
        sketches = [s for s in sketches if s is not None]
        return [], (density.Sketch.merge_all(sketches) if sketches else None)

    def extract_output(self, acc, sketch_config):
        sketch = self._flush(acc, sketch_config)[1]
        return sketch if sketch is not None else density.Sketch.empty(sketch_config)


class _QueryFn(beam.DoFn):
    """Pass 2: batches of (record, embedding) -> records with the density score added."""

    def __init__(self, feature: str):
        self.feature = feature

    def setup(self):
        self.progress = Progress("documents scored by density")

    def process(self, batch, sketch: density.Sketch):
        scores = sketch.query_embeddings(np.stack([vector for _, vector in batch]))
        self.progress.tick(len(batch))
        for (record, _), score in zip(batch, scores):
            scored = dict(record)
            scored[self.feature] = float(score)
            yield scored


def _bandwidth(sample: list[np.ndarray], config: DensityConfig) -> Optional[float]:
    if config.kernel != "l2":
        return None
    if config.bandwidth is not None:
        return config.bandwidth
    if len(sample) < 2:
        raise ValueError("cannot estimate the bandwidth from fewer than 2 documents; pass --bandwidth")
    bandwidth = density.estimate_bandwidth(np.stack(sample), quantile=config.bandwidth_quantile, seed=config.seed)
    log.info("density: bandwidth %.4f (quantile %.2f of pairwise distances, %d embeddings)",
             bandwidth, config.bandwidth_quantile, len(sample))
    return bandwidth


def save_sketch(sketch: density.Sketch, path: str) -> None:
    """Writes a sketch (counts, config, hash parameters) to a local or gs:// path."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, SKETCH_FILE)
        sketch.save(local)
        temp = path + f".tmp-{uuid.uuid4().hex}"
        with open(local, "rb") as src, FileSystems.create(temp) as dst:
            dst.write(src.read())
        FileSystems.rename([temp], [path])


def load_sketch(path: str) -> density.Sketch:
    """Reads a sketch saved by `save_sketch` from a local or gs:// path."""
    if "://" not in path:
        return density.Sketch.load(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, SKETCH_FILE)
        with FileSystems.open(path) as src, open(local, "wb") as dst:
            dst.write(src.read())
        return density.Sketch.load(local)


class ScoreDensity(beam.PTransform):
    """Documents -> documents with `score/density/<embedder>`, and the sketch (single element).

    Example: on a corpus where 900 documents are near-copies of one page and 100 are unique,
    the copies score about 900 (their neighbourhood is crowded) and the unique ones a few.
    """

    def __init__(self, config: DensityConfig):
        super().__init__()
        self.config = config

    def expand(self, docs):
        config = self.config
        embedded = (docs
                    | "BatchForEmbedding" >> beam.BatchElements(
                        min_batch_size=EMBED_BATCH, max_batch_size=EMBED_BATCH, length_fn=_text_length,
                        bucket_boundaries=EMBED_LENGTH_BOUNDARIES)
                    | "Embed" >> beam.ParDo(_EmbedFn(config.embedder)))
        if config.sketch:
            sketch = docs.pipeline | "LoadSketch" >> beam.Create([config.sketch]) | beam.Map(load_sketch)
        else:
            vectors = embedded | "Vectors" >> beam.Map(lambda pair: pair[1])
            sample = vectors | "SampleForBandwidth" >> beam.combiners.Sample.FixedSizeGlobally(BANDWIDTH_SAMPLE)
            sketch_config = (sample
                             | "SketchConfig" >> beam.Map(
                                 lambda s: config.sketch_config(int(s[0].shape[0]) if s else 1, _bandwidth(s, config))))
            sketch = vectors | "BuildSketch" >> beam.CombineGlobally(
                _SketchCombineFn(), beam.pvalue.AsSingleton(sketch_config))
        scored = (embedded
                  | "BatchForQuery" >> beam.BatchElements(min_batch_size=1, max_batch_size=HASH_BATCH)
                  | "Query" >> beam.ParDo(_QueryFn(config.feature), beam.pvalue.AsSingleton(sketch)))
        return scored, sketch


class ScoreDensityOptions(PipelineOptions):
    """Flags of `gristmill score density`."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--embedder", default="minilm",
                            help="minilm (bundled all-MiniLM-L6-v2), minilm:DIR or st5:DIR (Sentence-T5, HF layout).")
        parser.add_argument("--rows", type=int, default=1000, help="R: hash functions (sketch rows).")
        parser.add_argument("--buckets", type=int, default=20000, help="B: buckets per row.")
        parser.add_argument("--hashes_per_row", type=int, default=2,
                            help="k concatenated hashes per row (kernel p(c)^k; 2 by default, see the module doc).")
        parser.add_argument("--bandwidth", type=float, default=None,
                            help="p-stable bucket width w (default: estimated from a sample of the data).")
        parser.add_argument("--bandwidth_quantile", type=float, default=0.05,
                            help="Quantile of pairwise distances used as the estimated bandwidth.")
        parser.add_argument("--kernel", default="l2", choices=density.KERNELS, help="l2 (p-stable) or cosine (SRP).")
        parser.add_argument("--sketch", default=None, help="Score against this saved sketch.npz instead of building one.")


def density_config(opts: ScoreDensityOptions, seed: int) -> DensityConfig:
    """The DensityConfig the flags describe."""
    return DensityConfig(embedder=opts.embedder, rows=opts.rows, buckets=opts.buckets,
                         hashes_per_row=opts.hashes_per_row, bandwidth=opts.bandwidth,
                         bandwidth_quantile=opts.bandwidth_quantile, kernel=opts.kernel, seed=seed, sketch=opts.sketch)


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    pipeline_options, corpus, opts = job.parse_options(argv, ScoreDensityOptions)
    config = density_config(opts, corpus.seed)
    pipeline = job.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    files, docs, dead = job.read_corpus(pipeline, corpus)
    scored, sketch = docs | "Density" >> ScoreDensity(config)
    if not config.sketch:
        sketch_path = transforms.join(corpus.output, SKETCH_FILE)
        _ = sketch | "SaveSketch" >> beam.Map(save_sketch, sketch_path)
    base = job.manifest_base("score density", config, pipeline_options, files)
    job.write_outputs(pipeline, corpus.output, corpus.num_shards, base, docs, scored, dead)
    return job.run_pipeline(pipeline, corpus.output, is_test=test_pipeline is not None)
