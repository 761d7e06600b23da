"""The Beam clusters job: SemDeDup / Prototypes equal the pure module and brute force on the density
job's cached embeddings; in-process == 2 workers == resharded == blocks; planted near-duplicates."""

import collections
import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from gristmill import records
from gristmill.pipelines import corpus, score_clusters, score_density, select
from gristmill.scoring import clusters

NEAR_DUPLICATES = os.path.join(os.path.dirname(__file__), "fixtures", "clusters", "near_duplicates.jsonl")
K, EPS = 4, 0.1  # every planted pair has cosine >= 0.95, every other pair <= 0.43 (PROVENANCE.md)
FLAGS = ["--k", str(K), "--eps", str(EPS), "--sample", "1000"]
F = {"cluster": "cluster/minilm-k4", "dist": "dist/minilm-k4", "prototypes": "score/prototypes/minilm",
     "semdedup": "score/semdedup/minilm", "keep": "keep/semdedup/minilm"}


@pytest.fixture(scope="module")
def density_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("density") / "out")
    score_density.run(["--input", NEAR_DUPLICATES, "--output", out, "--unit_records", "16", "--keep_fields", "group",
                       "--rows=16", "--buckets=256"])
    return out


@pytest.fixture(scope="module")
def clustered(density_out, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("clusters") / "out")
    manifest = score_clusters.run(["--input", density_out, "--output", out, *FLAGS])
    return out, manifest


def _embedded(directory):
    """(records, embeddings) of an output directory, read through its manifest and the caches."""
    manifest = records.read_manifest(directory)
    recs = list(records.iter_scored_records(directory))
    x = np.concatenate([np.load(corpus.input_cache(os.path.join(directory, p)).path)
                        for p in manifest["outputs"]["records"]])
    return recs, x


def _version(directory):
    """The version every record file of a finished output is in (one per run)."""
    (version,) = {p.split("/")[1] for p in records.read_manifest(directory)["outputs"]["records"]}
    return version


def _centroids(directory):
    return np.load(os.path.join(directory, records.read_manifest(directory)["outputs"]["centroids"]))


def _rows(directory):
    """Multiset of every document's job features, by id (copies of one document share an id)."""
    return sorted((r["id"], r[F["cluster"]], r[F["dist"]], r[F["prototypes"]], r[F["semdedup"]], r[F["keep"]])
                  for r in records.iter_scored_records(directory))


def test_scores_equal_pure_module_and_brute_force(density_out, clustered):
    out, manifest = clustered
    assert manifest["reconciled"] and manifest["counts"]["written"] == 44
    assert manifest["outputs"]["centroids"] == f"versions/{_version(out)}/centroids.npy"
    centroids = np.load(os.path.join(out, manifest["outputs"]["centroids"]))
    assert centroids.shape == (K, 384) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-6)
    markers = [json.load(open(p)) for p in glob.glob(os.path.join(out, "units", "*.json"))
               if not p.endswith(".dead.json")]
    assert markers and not any(m["embedded"] for m in markers)  # the density cache, no second embedding pass

    recs, x = _embedded(density_out)  # the density job's own embeddings
    labels, _ = clusters.assign(x, centroids)
    proto = clusters.prototypes_score(x, centroids, labels)
    x64 = x.astype(np.float64)
    sims = x64 @ x64.T
    np.fill_diagonal(sims, -np.inf)
    expected = []
    for c in range(K):
        members = np.flatnonzero(labels == c)
        semdedup = clusters.semdedup_scores(x[members])
        brute = -np.max(np.where(labels[None, members] == c, sims[members][:, members], -np.inf), axis=1,
                        initial=-np.inf)
        np.testing.assert_allclose(semdedup, np.where(np.isfinite(brute), brute, 1.0), rtol=0, atol=1e-12)
        keep = clusters.semdedup_keep(x[members], centroids[c], [recs[i]["id"] for i in members], EPS)
        for j, i in enumerate(members):
            expected.append((recs[i]["id"], c, 1.0 + proto[i], proto[i], semdedup[j], int(keep[j])))
    got = _rows(out)
    assert [(g[0], g[1], g[5]) for g in got] == [(e[0], e[1], e[5]) for e in sorted(expected)]
    # Features are tf.train.Example floats (float32): the job's values are the reference's, rounded once.
    np.testing.assert_array_equal(np.array([g[2:5] for g in got], np.float32),
                                  np.array([e[2:5] for e in sorted(expected)]).astype(np.float32))


def test_planted_near_duplicates_keep_one_copy(clustered):
    out, _ = clustered
    by_group = collections.defaultdict(list)
    for r in records.iter_scored_records(out):
        by_group[r.get("group", b"").decode()].append(r)
    singles = by_group.pop("")
    assert len(by_group) == 10 and len(singles) == 24
    for group, members in by_group.items():
        assert len({m[F["cluster"]] for m in members}) == 1, group
        assert all(m[F["semdedup"]] <= -0.95 for m in members), group
        assert sorted(m[F["keep"]] for m in members) == [0, 1], group
    assert all(r[F["keep"]] == 1 and r[F["semdedup"]] > -0.5 for r in singles)


def test_selection_keeps_exactly_one_copy_of_each_group(clustered, tmp_path):
    out, _ = clustered
    scored = list(records.iter_scored_records(out))
    kept = sum(r[F["keep"]] for r in scored)
    subset = str(tmp_path / "subset")  # top-k on the 0/1 keep decision at its kept fraction = the kept documents
    select.run(["--input", out, "--output", subset, "--rule", "topk", "--score", F["keep"],
                "--rate", repr(kept / len(scored))])
    chosen = list(records.iter_scored_records(subset))
    groups = collections.Counter(r["group"].decode() for r in chosen if "group" in r)
    assert len(chosen) == kept == 34 and len(groups) == 10 and set(groups.values()) == {1}
    assert sum("group" not in r for r in chosen) == 24


def test_two_workers_blocks_and_resharding_give_identical_outputs(density_out, clustered, tmp_path):
    out, _ = clustered
    again = str(tmp_path / "again")  # other units (5 records), clusters split in blocks, two worker processes
    score_clusters.run(["--input", density_out, "--output", again, *FLAGS, "--unit_records", "5",
                        "--block_members", "3", "--workers", "2"])
    np.testing.assert_array_equal(_centroids(again), _centroids(out))
    assert _rows(again) == _rows(out)


def test_uncached_input_is_embedded_and_resharded(clustered, tmp_path):
    out, _ = clustered
    raw = str(tmp_path / "raw")
    score_clusters.run(["--input", NEAR_DUPLICATES, "--output", raw, *FLAGS, "--unit_records", "7"])
    markers = [json.load(open(p)) for p in glob.glob(os.path.join(raw, "units", "*.json"))]
    assert len(markers) == 7 and all(m["embedded"] for m in markers)
    got, want = _rows(raw), _rows(out)
    # The embedder batches by length, so its float32 rows move by ~1e-7 with the batch; decisions do not.
    assert [(g[0], g[1], g[5]) for g in got] == [(w[0], w[1], w[5]) for w in want]
    np.testing.assert_allclose([g[2:5] for g in got], [w[2:5] for w in want], rtol=0, atol=1e-5)


def _brute_semdedup(x, keys, labels, centroids):
    """Per member: (max cos to another member, max cos to an earlier member in SemDeDup's order)."""
    out = {}
    x64 = x.astype(np.float64)
    for c in np.unique(labels):
        members = [i for i in range(len(x)) if labels[i] == c]
        dist = {i: 1.0 - float(x64[i] @ centroids[c].astype(np.float64)) for i in members}
        order = sorted(members, key=lambda i: (-dist[i], keys[i]))
        for pos, i in enumerate(order):
            others = [float(x64[i] @ x64[j]) for j in members if j != i]
            earlier = [float(x64[i] @ x64[j]) for j in order[:pos]]
            out[i] = (max(others, default=-1.0), max(earlier, default=-1.0))
    return out


def test_semdedup_transform_in_blocks_equals_brute_force():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(23, 8)).astype(np.float32)
    x[5] = x[2] + 0.01
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids = x[[0, 9]].copy()
    labels, cos = clusters.assign(x, centroids)
    keys = [f"doc{i:02d}" for i in range(len(x))]
    assigned = [(int(labels[i]), (keys[i], "u", i, x[i], float(cos[i]))) for i in range(len(x))]
    brute = _brute_semdedup(x, keys, labels, centroids)
    with TestPipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Centroids" >> beam.Create([centroids]))
        got = (p | beam.Create(assigned) | score_clusters.SemDeDup(side, block_members=4, keep=clusters.KEEP_HARD)
               | beam.Map(lambda kv: (kv[0][1], kv[1][0], round(kv[1][2], 9), round(kv[1][3], 9))))
        assert_that(got, equal_to([(i, int(labels[i]), round(brute[i][0], 9), round(brute[i][1], 9))
                                   for i in range(len(x))]))
