"""Spherical k-means, Prototypes and SemDeDup against brute-force numpy/scipy references, and
SemDeDup on real near-duplicate documents (tests/fixtures/clusters/near_duplicates.jsonl)."""

import json
import os

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist, squareform

from gristmill.scoring import clusters

HERE = os.path.dirname(__file__)


def _unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _planted(n=300, d=16, k=6, spread=0.35, seed=0):
    """n unit vectors around k random unit centres, and each row's true centre."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((k, d)))
    truth = rng.integers(k, size=n)
    return _unit(centres[truth] + spread * rng.standard_normal((n, d))), truth


def _reference_lloyd(x, init, iterations):
    """Spherical Lloyd with scipy cosine distances: nearest centroid, normalised member mean."""
    c = init.astype(np.float64)
    for _ in range(iterations):
        labels = cdist(x, c, "cosine").argmin(axis=1)
        for j in range(c.shape[0]):
            members = x[labels == j].astype(np.float64)
            if len(members):
                c[j] = members.sum(0) / np.linalg.norm(members.sum(0))
    return c, cdist(x, c, "cosine").argmin(axis=1)


def test_assign_matches_brute_force():
    x, _ = _planted()
    centroids = _unit(np.random.default_rng(1).standard_normal((9, 16)))
    labels, sims = clusters.assign(x, centroids, block_rows=37)
    dist = cdist(x.astype(np.float64), centroids.astype(np.float64), "cosine")
    np.testing.assert_array_equal(labels, dist.argmin(axis=1))
    np.testing.assert_allclose(sims, 1 - dist.min(axis=1), atol=1e-12)
    one_by_one = [clusters.assign(x[i:i + 1], centroids) for i in range(0, 300, 29)]
    np.testing.assert_array_equal([lab[0] for lab, _ in one_by_one], labels[::29])
    np.testing.assert_array_equal([s[0] for _, s in one_by_one], sims[::29])  # bit-identical alone


def test_exact_ties_go_to_the_lower_centroid():
    c = _unit(np.eye(4, dtype=np.float32)[:3])
    x = _unit(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0]], np.float32))
    labels, _ = clusters.assign(x, np.concatenate([c, c]))  # every centroid twice
    np.testing.assert_array_equal(labels, [0, 1, 0])


def test_partial_sums_merge_exactly_and_update_is_the_normalised_mean():
    x, _ = _planted()
    k = 6
    labels = np.random.default_rng(2).integers(k - 1, size=len(x))  # centroid 5 gets no member
    whole = clusters.partial_sums(x, labels, k)
    rng = np.random.default_rng(3)
    perm = rng.permutation(len(x))
    shards = np.array_split(perm, 4)
    merged = clusters.merge_sums([clusters.partial_sums(x[s], labels[s], k) for s in reversed(shards)])
    np.testing.assert_array_equal(merged.sums, whole.sums)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_array_equal(whole.counts, np.bincount(labels, minlength=k))
    np.testing.assert_array_equal(clusters.partial_sums(x, labels, k, block_rows=7).sums, whole.sums)
    old = _unit(rng.standard_normal((k, 16)))
    new = clusters.update(merged, old)
    for j in range(k - 1):
        mean = x[labels == j].astype(np.float64).sum(0)
        np.testing.assert_allclose(new[j], mean / np.linalg.norm(mean), atol=1e-7)
    np.testing.assert_array_equal(new[k - 1], old[k - 1])  # empty: stays where it was
    assert (clusters.LloydSums.zeros(k, 16) + whole).counts.sum() == len(x)


def test_lloyd_matches_reference_from_the_same_start():
    x, _ = _planted(seed=4)
    init = clusters.kmeans_plus_plus(x, 6, seed=5)
    c = init
    for _ in range(4):
        labels, _ = clusters.assign(x, c)
        c = clusters.update(clusters.partial_sums(x, labels, 6), c)
    want_c, want_labels = _reference_lloyd(x, init, 4)
    np.testing.assert_allclose(c, want_c, atol=1e-6)
    np.testing.assert_array_equal(clusters.assign(x, c)[0], want_labels)


def test_kmeans_plus_plus_is_seeded_and_spreads_over_separated_clusters():
    x, truth = _planted(spread=0.05, seed=6)
    a, b = clusters.kmeans_plus_plus(x, 6, seed=7), clusters.kmeans_plus_plus(x, 6, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, clusters.kmeans_plus_plus(x, 6, seed=8))
    rows = [int(np.flatnonzero((x == c).all(axis=1))[0]) for c in a]  # every centroid is a data row
    assert sorted(truth[rows]) == list(range(6))  # one per well-separated cluster
    dup = np.repeat(x[:2], 5, axis=0)  # 2 distinct rows, k = 4: the rest is drawn uniformly
    assert len({tuple(r) for r in clusters.kmeans_plus_plus(dup, 4, seed=0)}) == 2


def test_fit_recovers_planted_clusters_and_ignores_row_order():
    x, truth = _planted(spread=0.1, seed=9)
    ids = [f"id{i:04d}" for i in range(len(x))]
    fit = clusters.fit_kmeans(x, 6, iterations=50, seed=0, ids=ids)
    assert fit.converged and fit.centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fit.centroids, axis=1), 1, atol=1e-6)
    pairs = set(zip(truth.tolist(), fit.assignment.tolist()))
    assert len(pairs) == 6 and len({t for t, _ in pairs}) == 6  # a bijection truth <-> cluster
    perm = np.random.default_rng(10).permutation(len(x))
    again = clusters.fit_kmeans(x[perm], 6, iterations=50, seed=0, ids=[ids[i] for i in perm])
    np.testing.assert_array_equal(again.centroids, fit.centroids)
    np.testing.assert_array_equal(again.assignment, fit.assignment[perm])
    labels, sims = clusters.assign(x, fit.centroids)
    np.testing.assert_array_equal(labels, fit.assignment)
    np.testing.assert_array_equal(sims, fit.similarity)


def test_prototypes_score_is_minus_cosine_to_the_assigned_centroid():
    x, _ = _planted()
    centroids = _unit(np.random.default_rng(11).standard_normal((5, 16)))
    labels = np.random.default_rng(12).integers(5, size=len(x))  # any assignment, not only the nearest
    want = -(1 - cdist(x, centroids, "cosine"))[np.arange(len(x)), labels]
    np.testing.assert_allclose(clusters.prototypes_score(x, centroids, labels), want, atol=1e-12)


def test_semdedup_scores_match_brute_force_blocked_or_not():
    x, _ = _planted(n=250, spread=0.2)
    sim = 1 - squareform(pdist(x.astype(np.float64), "cosine"))
    np.fill_diagonal(sim, -np.inf)
    want = -sim.max(axis=1)
    np.testing.assert_allclose(clusters.semdedup_scores(x), want, atol=1e-12)
    np.testing.assert_allclose(clusters.semdedup_scores(x, block_size=7), clusters.semdedup_scores(x), atol=1e-12)
    assert clusters.semdedup_scores(x[:1]).tolist() == [1.0]  # alone in its cluster
    assert clusters.semdedup_scores(np.zeros((0, 16), np.float32)).shape == (0,)
    pair = np.concatenate([x[:1], x[:1]])
    np.testing.assert_allclose(clusters.semdedup_scores(pair), [-1, -1], atol=1e-6)


def test_block_max_similarity_splits_a_cluster_over_member_blocks():
    x, _ = _planted(n=120)
    ids = np.arange(120)
    whole = clusters.block_max_similarity(x, ids, x, ids)
    parts = [clusters.block_max_similarity(x, ids, x[s], ids[s], block_size=16) for s in np.array_split(ids, 3)]
    np.testing.assert_allclose(np.maximum.reduce(parts), whole, atol=1e-12)


def _reference_semdedup_keep(x, centroid, ids, eps, hard=True):
    """The rule as facebookresearch/SemDeDup runs it: sort by cosine distance to the centroid
    (descending when keeping hard examples), full similarity matrix with a zero diagonal, upper
    triangle, max over rows, remove where > 1 - eps."""
    dist = cdist(x, centroid[None], "cosine")[:, 0]
    order = sorted(range(len(x)), key=lambda i: ((-dist[i] if hard else dist[i]), ids[i]))
    y = x[order].astype(np.float64)
    sim = y @ y.T
    np.fill_diagonal(sim, 0.0)
    removed = np.triu(sim, k=1).max(axis=0) > 1 - eps
    keep = np.empty(len(x), bool)
    keep[order] = ~removed
    return keep


@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_semdedup_rule_matches_the_reference(keep):
    base, _ = _planted(n=200, spread=0.2, seed=13)
    rng = np.random.default_rng(14)
    near = _unit(base[:40] + 0.02 * rng.standard_normal((40, 16)))  # planted near-copies
    x = np.concatenate([base, near, base[:5]])  # and 5 exact copies
    ids = [f"d{i:03d}" for i in rng.permutation(len(x))]
    centroid = _unit(x.mean(0, keepdims=True))[0]
    for eps in (0.002, 0.01, 0.05):
        want = _reference_semdedup_keep(x, centroid, ids, eps, hard=keep == "hard")
        got = clusters.semdedup_keep(x, centroid, ids, eps, keep=keep)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(clusters.semdedup_keep(x, centroid, ids, eps, keep=keep, block_size=9), want)
    removed = ~clusters.semdedup_keep(x, centroid, ids, 0.01, keep=keep)
    for i in range(5):  # exact copies are equally far from the centroid: the higher id goes
        assert removed[i if ids[i] > ids[240 + i] else 240 + i]
    assert removed.sum() >= 45  # every planted copy or its original


def test_semdedup_keeps_the_member_farthest_from_the_centroid():
    centroid = np.array([1, 0, 0], np.float32)
    near = _unit(np.array([[1, 0.10, 0], [1, 0.11, 0.001], [1, 0.5, 0]], np.float32))  # 0, 1 near-copies
    keep_hard = clusters.semdedup_keep(near, centroid, ["a", "b", "c"], eps=0.01)
    keep_easy = clusters.semdedup_keep(near, centroid, ["a", "b", "c"], eps=0.01, keep="easy")
    assert keep_hard.tolist() == [False, True, True]  # b is farther from the centroid
    assert keep_easy.tolist() == [True, False, True]
    assert clusters.semdedup_keep(near[:1], centroid, ["a"], eps=0.5).tolist() == [True]


def test_real_near_duplicates_are_found_and_one_copy_stays():
    from gristmill.scoring import embeddings

    with open(os.path.join(HERE, "fixtures", "clusters", "near_duplicates.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    x = embeddings.make_embedder("minilm", batch_size=48).embed([r["text"] for r in rows])
    ids = [r["id"] for r in rows]
    fit = clusters.fit_kmeans(x, 3, iterations=20, seed=0, ids=ids)
    groups = {}
    for i, r in enumerate(rows):
        if r["group"]:
            groups.setdefault(r["group"], []).append(i)
    assert len(groups) == 10
    kept = np.zeros(len(rows), bool)
    score = np.zeros(len(rows))
    for j in range(3):
        members = np.flatnonzero(fit.assignment == j)
        score[members] = clusters.semdedup_scores(x[members])
        kept[members] = clusters.semdedup_keep(x[members], fit.centroids[j], [ids[i] for i in members], eps=0.1)
    for name, members in groups.items():
        assert len(set(fit.assignment[members])) == 1, name  # copies share a cluster
        assert (score[members] < -0.94).all(), (name, score[members])
        assert kept[members].sum() == 1, name
    singles = [i for i, r in enumerate(rows) if not r["group"]]
    assert kept[singles].all() and (score[singles] > -0.9).all()
