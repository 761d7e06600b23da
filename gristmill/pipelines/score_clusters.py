"""`gristmill score clusters`: the SemDeDup and SSL Prototypes baselines (docs/paper.md §3.1 rows 3-4).

    gristmill score clusters --input out/density --output out/clusters --k 10000 \\
        [--sample 200000] [--iterations 20] [--eps 0.05] [--name NAME] [--embedder minilm|st5:DIR]

    units --read--> embeddings (the input's cache, else the embedder)
          --> units/<u>.tfrecord + units/<u>.emb.npy + marker                     (per unit, resumable)
    every unit --(hash(id), doc)--> Top.Smallest(N) --fit k-means, one worker--> centroids, version v
    every unit --assign (centroids side input)--> (cluster, block pair) -> members  (GroupByKey)
          --exact SemDeDup maxima per block pair--> max over pairs per document      (CombinePerKey)
          --> (unit -> per-document results) joined with the markers (CoGroupByKey)
          --> versions/<v>/<u>.tfrecord with the features + version marker        --> manifest
    the centroids --> versions/<v>/centroids.npy

Embeddings (`gristmill.pipelines.corpus`): an input that is a gristmill output with cached
embeddings (a `score density` output, or an earlier `score clusters` output) is used as it is, with
no second embedding pass; a file without a cache is embedded with `--embedder`. Either way this job
keeps a copy beside its own units, so its output is again an input with cached embeddings
(re-cluster at another k without embedding). The version v hashes the centroids, the set of units
and the configuration (SemDeDup's scores depend on every member of a cluster), so a later batch
writes a new version and never rewrites files a published selection names.

Design and memory bound (C4: 364M documents, k = 10,000):
- The fit is k-means++ and Lloyd rounds (`gristmill.scoring.clusters.fit_kmeans`) on a bounded,
  deterministic sample in ONE worker: the N documents with the smallest BLAKE2b hash of their id
  (ties by id, source, unit, row), taken with a combine whose accumulators hold N small tuples.
  Worker memory: `clusters.fit_memory_bytes(N, d, k)` (N = 1M, d = 768, k = 10,000: about 3.6 GB).
- Assignment is per unit (`clusters.assign`, exact and independent of batching), so it scales
  with the workers; memory: one unit's embeddings plus block_rows x k similarities.
- SemDeDup is exact within a cluster, which needs a cluster's members together. A cluster of S
  members is cut into b = ceil(S / block_members) blocks by member hash, and each of the
  b (b + 1) / 2 block pairs is one group of at most 2 x block_members embeddings (so at most
  2 x block_members x d x 4 bytes plus block_size^2 similarities in a worker, never the whole
  cluster). Each group computes its members' maximum similarity to any other member
  (`semdedup_scores`) and to any EARLIER member in SemDeDup's order (`semdedup_earlier_max`;
  the order is by distance to the centroid, then a unique member key, so it is the same in every
  group); maxima over the groups a member is in combine by max, which gives the exact
  whole-cluster values. No cluster is ever dropped or truncated.
- The keep decision is SemDeDup's (`semdedup_keep`): removed when the maximum similarity to an
  earlier member exceeds 1 - eps; with `--keep hard` (their default) the member farthest from
  the centroid of each near-duplicate group stays.
- The last pass groups the small per-document results by unit (a unit's size) and writes each unit's
  version.

Outputs are identical in-process and on any number of workers, and across reshardings of the
input (another --unit_records): nothing depends on the order documents arrive in.

Features (`records` names): `cluster/<name>` (int), `dist/<name>` (1 - cos to its centroid),
`score/prototypes/<embedder>` = -cos to the centroid, `score/semdedup/<embedder>` = -max cos to
another member of the cluster (+1 alone in its cluster), `keep/semdedup/<embedder>` (int 1 = kept).
SemDeDup's subset is the documents with keep 1: `gristmill select --rule topk --score
keep/semdedup/<embedder> --rate <their fraction>` selects exactly them (the fraction of 1s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from typing import Optional

import apache_beam as beam
import numpy as np

from gristmill import records
from gristmill.pipelines import corpus, kit
from gristmill.scoring import clusters

JOB = "score clusters"
CENTROIDS_FILE = "centroids.npy"
PROTOTYPES, SEMDEDUP = "prototypes", "semdedup"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClustersConfig:
    """One clustering of the embeddings and the two baselines' parameters."""

    k: Optional[int] = dataclasses.field(default=None, metadata={"help": "Number of k-means centroids (required)"})
    sample: int = dataclasses.field(default=200_000, metadata={
        "help": "Documents the k-means fit uses (those with the smallest id hash), in one worker"})
    iterations: int = dataclasses.field(default=20, metadata={"help": "Lloyd rounds at most"})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the k-means++ initialisation"})
    eps: float = dataclasses.field(default=0.05, metadata={
        "help": "SemDeDup: a document more similar than 1 - eps to an earlier one of its cluster is removed"})
    keep: str = dataclasses.field(default=clusters.KEEP_HARD, metadata={
        "help": "SemDeDup: which member of a near-duplicate group stays: hard (farthest from the centroid) "
                "or easy (closest)", "choices": (clusters.KEEP_HARD, clusters.KEEP_EASY)})
    name: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Name of the cluster/ and dist/ features (default <embedder>-k<k>)"})
    embedder: str = dataclasses.field(default="minilm", metadata={
        "help": "The embeddings' embedder (names the scores; embeds files without a cache): minilm, "
                "minilm:DIR or st5:DIR"})
    block_members: int = dataclasses.field(default=20_000, metadata={
        "help": "SemDeDup: clusters larger than this are split into blocks of about this many members"})
    share_model: bool = dataclasses.field(default=False, metadata={
        "help": "Share one embedder copy across a worker's processes (GPU workers)"})

    def __post_init__(self):
        if self.k is None or self.k < 1:
            raise ValueError("--k is required (the number of centroids, at least 1)")
        if self.sample < self.k or self.iterations < 0 or self.block_members < 1:
            raise ValueError(f"need --sample >= --k, --iterations >= 0, --block_members >= 1; got {self}")
        if not 0 <= self.eps <= 2:
            raise ValueError(f"--eps must be in [0, 2], got {self.eps}")

    @property
    def model_name(self) -> str:
        """The embedder's name in the score features, e.g. `minilm`."""
        return corpus.model_name(self.embedder)

    @property
    def features(self) -> dict[str, str]:
        """Feature names this job writes: cluster, dist, prototypes, semdedup, keep."""
        name = self.name or f"{self.model_name}-k{self.k}"
        return {"cluster": records.cluster_feature(name), "dist": records.dist_feature(name),
                "prototypes": records.score_feature(PROTOTYPES, self.model_name),
                "semdedup": records.score_feature(SEMDEDUP, self.model_name),
                "keep": keep_feature(SEMDEDUP, self.model_name)}


def keep_feature(scorer: str, model: str) -> str:
    """Name of a de-duplication keep decision (int 1 kept, 0 removed), e.g. `keep/semdedup/minilm`."""
    return f"keep/{scorer}/{model}"


def id_hash(doc_id: str) -> int:
    """The sample order of a document: the first 8 bytes of BLAKE2b(id) as an unsigned integer."""
    return int.from_bytes(hashlib.blake2b(str(doc_id).encode("utf-8"), digest_size=8).digest(), "big")


def member_key(doc_id: str, embedding: np.ndarray, source: str, unit: str, row: int) -> str:
    """A document's unique, order-giving key inside a cluster: its id, then a digest of its embedding,
    so the order is the same under any resharding (only byte-identical copies of one document fall
    back to unit and row, and they are interchangeable)."""
    digest = hashlib.blake2b(np.ascontiguousarray(embedding, np.float32).tobytes(), digest_size=8).hexdigest()
    return f"{doc_id}\x00{digest}\x00{source}\x00{unit}\x00{row:012d}"


def _keys(marker: dict, recs: list[records.Record], x: np.ndarray) -> list[str]:
    return [member_key(r[records.ID], x[row], r.get(records.SOURCE, ""), marker["key"], row)
            for row, r in enumerate(recs)]


# ------------------------------------------------------------------------------------ the fit


def sample_candidates(marker: dict, recs: list[records.Record], x: np.ndarray) -> list[tuple]:
    """A unit's documents as sample candidates: ((id hash, member key), (unit, row))."""
    return [((id_hash(recs[row][records.ID]), key), (marker["key"], row))
            for row, key in enumerate(_keys(marker, recs, x))]


def fit_centroids(chosen: list[tuple], markers: list[dict], output_dir: str, config: ClustersConfig) -> np.ndarray:
    """The sample's rows loaded unit by unit -> k-means centroids (k x d float32, unit norm)."""
    if len(chosen) < config.k:
        raise ValueError(f"--k {config.k} needs at least {config.k} documents; the input has {len(chosen)}")
    by_unit: dict[str, list[int]] = {}
    for _, (unit, row) in chosen:
        by_unit.setdefault(unit, []).append(row)
    marker_of = {m["key"]: m for m in markers}
    parts, keys = [], []
    for unit in sorted(by_unit):
        rows = sorted(by_unit[unit])
        parts.append(corpus.load_embeddings(output_dir, marker_of[unit])[rows])
        keys.extend((unit, row) for row in rows)
    key_of = {place: key for (_, key), place in chosen}
    sample = np.concatenate(parts).astype(np.float32)
    fit = clusters.fit_kmeans(sample, config.k, config.iterations, config.seed,
                              ids=[key_of[k] for k in keys])
    log.info("clusters: k-means on %d documents (d = %d, k = %d): %d Lloyd rounds, %s", sample.shape[0],
             sample.shape[1], config.k, fit.iterations, "converged" if fit.converged else "not converged")
    return fit.centroids


def save_version(centroids: np.ndarray, output_dir: str, version: str) -> dict[str, str]:
    """Writes `versions/<v>/centroids.npy` unless it is there; returns the outputs."""
    (rel,) = corpus.write_aggregate(output_dir, version, CENTROIDS_FILE, corpus.array_bytes(centroids))
    return {"centroids": rel}


# ------------------------------------------------------------------------------------ SemDeDup


def blocks_of(size: int, block_members: int) -> int:
    """How many blocks a cluster of `size` members is cut into."""
    return max(1, math.ceil(size / block_members))


def block_of(key: str, n_blocks: int) -> int:
    """A member's block: a hash of its key, so a block's content does not depend on arrival order."""
    return id_hash(key) % n_blocks


def assign_unit(marker: dict, output_dir: str, centroids: np.ndarray):
    """A unit marker -> (cluster, member) for each of its documents, member = (key, unit, row,
    embedding float32 [d], cos to the centroid float64)."""
    recs, x = corpus.read_unit(output_dir, marker)
    if not recs:
        return
    labels, _ = clusters.assign(x, centroids)
    cos = -clusters.prototypes_score(x, centroids, labels)
    for row, key in enumerate(_keys(marker, recs, x)):
        yield int(labels[row]), (key, marker["key"], row, x[row], float(cos[row]))


def to_block_pairs(assigned: tuple, sizes: dict, block_members: int):
    """(cluster, member) -> ((cluster, i, j), member) for every block pair i <= j its block joins."""
    c, member = assigned
    n_blocks = blocks_of(sizes[c], block_members)
    b = block_of(member[0], n_blocks)
    for other in range(n_blocks):
        yield (c, min(b, other), max(b, other)), member


def pair_maxima(group: tuple, centroids: np.ndarray, keep: str) -> list[tuple]:
    """One block pair of one cluster -> ((unit, row), (cluster, cos, max sim, max sim to an earlier member)).

    Exact over the pair's members; the maxima over all pairs a member is in are its cluster's.
    """
    (c, _, _), members = group
    unique = sorted(members, key=lambda m: m[0])  # each member reaches a pair once
    keys = [m[0] for m in unique]
    x = np.stack([m[3] for m in unique]).astype(np.float32)
    nearest = -clusters.semdedup_scores(x)
    earlier = clusters.semdedup_earlier_max(x, centroids[c], keys, keep)
    return [((m[1], m[2]), (c, m[4], float(nearest[i]), float(earlier[i]))) for i, m in enumerate(unique)]


def _max_result(results):
    results = list(results)
    c, cos = results[0][0], results[0][1]
    return c, cos, max(r[2] for r in results), max(r[3] for r in results)


class SemDeDup(beam.PTransform):
    """(cluster, member) -> ((unit, row), (cluster, cos to centroid, max cos to another member,
    max cos to an earlier member in SemDeDup's order)), exact over each whole cluster.

    member = (key, unit, row, embedding float32 [d], cos to the centroid). Clusters are cut into
    blocks of about `block_members` (by member hash); each block pair is one group. Example: a
    cluster of 5 members with block_members=2 makes 3 blocks and 6 pair groups, each of at most
    about 4 members; a member's results are the max over the 3 groups it is in.
    """

    def __init__(self, centroids, block_members: int, keep: str):
        super().__init__()
        self.centroids, self.block_members, self.keep = centroids, block_members, keep

    def expand(self, assigned):
        sizes = (assigned
                 | "ClusterOf" >> beam.Map(lambda kv: kv[0])
                 | "ClusterSizes" >> beam.combiners.Count.PerElement())
        return (assigned
                | "BlockPairs" >> beam.FlatMap(to_block_pairs, beam.pvalue.AsDict(sizes), self.block_members)
                | "GroupBlockPairs" >> beam.GroupByKey()
                | "PairMaxima" >> beam.FlatMap(pair_maxima, self.centroids, self.keep)
                | "MaxOverPairs" >> beam.CombinePerKey(_max_result))


# ------------------------------------------------------------------------------------ the job


def score_unit(marker: dict, recs: list, x: np.ndarray, results: dict, features: dict, eps: float):
    """The last pass (corpus.WriteVersions): a unit's records with their cluster features."""
    if len(results) != len(recs):
        raise ValueError(f"unit {marker['key']}: {len(recs)} records but {len(results)} cluster results")
    for row, record in enumerate(recs):
        c, cos, nearest, earlier = results[row]
        record[features["cluster"]] = int(c)
        record[features["dist"]] = float(1.0 - cos)
        record[features["prototypes"]] = float(-cos)
        record[features["semdedup"]] = float(-nearest)
        record[features["keep"]] = int(earlier <= 1.0 - eps)  # clusters.semdedup_keep's rule
    return recs, {}


def _joined(element) -> tuple[dict, dict]:
    """(unit, {marker: [m], results: [{row: result}, ...]}) -> (m, {row: result})."""
    _, joined = element
    (marker,) = joined["marker"]
    results: dict[int, tuple] = {}
    for by_row in joined["results"]:
        results.update(by_row)
    return marker, results


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    options, config, pipeline_options = kit.parse(argv, ClustersConfig, __doc__)
    corpus.check_embedder(options.input, config.embedder)
    prepared = kit.prepare(JOB, options, config, pipeline_options)
    output = options.output
    pipeline = kit.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    every_unit = corpus.every_unit(corpus.write_units(pipeline, prepared, config.embedder, config.share_model))
    listed = beam.pvalue.AsSingleton(every_unit | "ListUnits" >> beam.combiners.ToList())

    chosen = corpus.smallest_sample(every_unit, output, config.sample, sample_candidates)
    centroids = chosen | "FitKMeans" >> beam.Map(fit_centroids, listed, output, config)
    fingerprint = prepared.base["fingerprint"]
    version = centroids | "Version" >> beam.Map(
        lambda c, ms: corpus.version_id(corpus.array_bytes(c), sorted(m["key"] for m in ms), fingerprint), listed)
    outputs = centroids | "SaveCentroids" >> beam.Map(save_version, output, beam.pvalue.AsSingleton(version))
    centroids_side = beam.pvalue.AsSingleton(centroids)

    assigned = every_unit | "Assign" >> beam.FlatMap(assign_unit, output, centroids_side)
    by_unit = (assigned
               | "SemDeDup" >> SemDeDup(centroids_side, config.block_members, config.keep)
               | "ByUnit" >> beam.Map(lambda kv: (kv[0][0], {kv[0][1]: kv[1]})))
    markers = every_unit | "KeyUnits" >> beam.Map(lambda m: (m["key"], m))
    scored = ({"marker": markers, "results": by_unit}
              | "JoinUnits" >> beam.CoGroupByKey()
              | "Joined" >> beam.Map(_joined)
              | "WriteVersions" >> corpus.WriteVersions(output, beam.pvalue.AsSingleton(version), score_unit,
                                                        config.features, config.eps,
                                                        what="documents written by clusters"))
    _ = scored | "Finalize" >> corpus.Finalize(prepared, beam.pvalue.AsSingleton(outputs))
    return kit.run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)
