"""Tests of the p-stable LSH density sketch against brute force and exact integer arithmetic."""

import math
import pickle

import numpy as np
import pytest
import scipy.integrate
import scipy.spatial.distance
import scipy.stats

from gristmill.scoring import density as D


def gaussian_mixture(seed, dim, sizes, separation, scale=1.0):
    """Points, cluster labels and the log of the true mixture density (isotropic clusters)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), dim)) * separation
    x = np.concatenate([c + scale * rng.standard_normal((n, dim)) for c, n in zip(centers, sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    weights = np.asarray(sizes, np.float64) / sum(sizes)
    sq = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    log_comp = np.log(weights) - 0.5 * sq / scale**2 - 0.5 * dim * math.log(2 * math.pi * scale**2)
    return x.astype(np.float32), labels, np.logaddexp.reduce(log_comp, axis=1)


def python_universal_hash(mult_hi, mult_lo, keys, buckets):
    """((m_0 + sum_j m_j key_j) mod 2^64) >> 32 mod B with Python integers."""
    m = [(int(hi) << 32) | int(lo) for hi, lo in zip(mult_hi, mult_lo)]
    v = (m[0] + sum(mj * int(k) for mj, k in zip(m[1:], keys))) % 2**64
    return (v >> 32) % buckets


# --------------------------------------------------------------------------- hashing

def test_universal_hash_equals_64bit_integer_arithmetic():
    rng = np.random.default_rng(1)
    n, rows, k = 40, 6, 3
    keys = rng.integers(0, 2**32, (n, rows, k), dtype=np.uint64).astype(np.uint32)
    keys[0] = 0xFFFFFFFF  # all-ones words exercise every carry
    mh = rng.integers(0, 2**32, (rows, k + 1), dtype=np.uint64).astype(np.uint32)
    ml = rng.integers(0, 2**32, (rows, k + 1), dtype=np.uint64).astype(np.uint32)
    ml[0] = 0xFFFFFFFF
    got = np.asarray(D._universal_hash(keys.transpose(1, 2, 0), mh, ml, 20011)).T  # [R, K, N] layout
    want = np.array([[python_universal_hash(mh[r], ml[r], keys[i, r], 20011) for r in range(rows)] for i in range(n)])
    np.testing.assert_array_equal(got, want)


def test_l2_bucket_ids_equal_float64_reference():
    cfg = D.SketchConfig(dim=16, rows=40, buckets=1009, hashes_per_row=2, bandwidth=0.7, seed=3)
    params = D.make_hash_params(cfg)
    x = np.random.default_rng(0).standard_normal((30, 16)).astype(np.float32)
    got = D.bucket_ids(params, x)
    z = (x.astype(np.float64) @ params.projection.astype(np.float64) + params.offsets) / cfg.bandwidth
    h = np.floor(z).astype(np.int64)
    on_boundary = np.abs(z - np.round(z)) < 1e-4  # float32 vs float64 may floor differently there
    checked = 0
    for i in range(30):
        for r in range(cfg.rows):
            hr = h[i, 2 * r:2 * r + 2]
            if on_boundary[i, 2 * r:2 * r + 2].any():
                continue
            keys = [int(v) % 2**32 for v in hr]
            assert got[i, r] == python_universal_hash(params.mult_hi[r], params.mult_lo[r], keys, cfg.buckets)
            checked += 1
    assert checked > 0.95 * 30 * cfg.rows


def test_cosine_bucket_ids_equal_sign_bit_reference():
    cfg = D.SketchConfig(dim=12, rows=30, buckets=997, hashes_per_row=5, kernel="cosine", seed=4)
    params = D.make_hash_params(cfg)
    x = np.random.default_rng(0).standard_normal((20, 12)).astype(np.float32)
    got = D.bucket_ids(params, x)
    z = x.astype(np.float64) @ params.projection.astype(np.float64)
    for i in range(20):
        for r in range(cfg.rows):
            zr = z[i, 5 * r:5 * r + 5]
            if np.abs(zr).min() < 1e-5:
                continue
            key = sum(int(b) << j for j, b in enumerate(zr >= 0))
            assert got[i, r] == python_universal_hash(params.mult_hi[r], params.mult_lo[r], [key], cfg.buckets)


def test_bucket_ids_shape_range_and_batch_independence():
    cfg = D.SketchConfig(dim=8, rows=50, buckets=300, bandwidth=0.5)
    params = D.make_hash_params(cfg)
    x = np.random.default_rng(0).standard_normal((2600, 8))  # > one 1024-row chunk; float64 input
    ids = D.bucket_ids(params, x)
    assert ids.dtype == np.int32 and ids.shape == (2600, 50)
    assert ids.min() >= 0 and ids.max() < 300
    pieces = np.concatenate([D.bucket_ids(params, part) for part in (x[:5], x[5:1500], x[1500:])])
    np.testing.assert_array_equal(ids, pieces)
    assert D.bucket_ids(params, x[:0]).shape == (0, 50)
    np.testing.assert_array_equal(D.row_bucket_ids(params, x), ids.T)


# --------------------------------------------------------------------------- kernel

def test_pstable_kernel_closed_form_equals_datar_integral():
    # Datar et al. 2004: p(c) = int_0^w (1/c) f_2(t/c) (1 - t/w) dt, f_2 the density of |N(0,1)|.
    w = 1.3
    for c in (0.1, 0.5, 1.3, 3.0, 20.0):
        integral, _ = scipy.integrate.quad(lambda t, c=c: (2 / c) * scipy.stats.norm.pdf(t / c) * (1 - t / w), 0, w)
        assert D.pstable_collision_probability(c, w) == pytest.approx(integral, rel=1e-9)
    assert D.pstable_collision_probability(0.0, w) == 1.0
    p = D.pstable_collision_probability(np.linspace(0.01, 50, 200), w)
    assert np.all(np.diff(p) < 0)
    p_k = D.pstable_collision_probability([1.0, 2.0], 1.0) ** 3
    np.testing.assert_allclose(D.pstable_collision_probability([1.0, 2.0], 1.0, 3), p_k)
    assert p_k[0] == pytest.approx(0.3687**3, rel=1e-3)


def test_collision_rates_match_kernel():
    """Monte Carlo over 4000 rows: the fraction of rows where a pair shares a bucket is p(c) + (1 - p(c)) / B,
    or exactly p(c) when the cosine sign word is the bucket (B = 2^k)."""
    dim = 24
    rng = np.random.default_rng(5)
    base = rng.standard_normal(dim)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    for kernel, k, buckets in (("l2", 1, 50), ("l2", 2, 50), ("cosine", 3, 50), ("cosine", 3, 8)):
        cfg = D.SketchConfig(dim=dim, rows=4000, buckets=buckets, hashes_per_row=k,
                             bandwidth=1.0 if kernel == "l2" else None, kernel=kernel, seed=11)
        params = D.make_hash_params(cfg)
        others = base + np.outer([0.3, 1.0, 2.5], direction)
        ids = D.bucket_ids(params, np.vstack([base, others]))
        rates = (ids[1:] == ids[0]).mean(axis=1)
        p = D.collision_probability(cfg, base[None], others)[0]
        expected = p + (1 - p) / cfg.buckets if buckets == 50 else p
        sd = np.sqrt(expected * (1 - expected) / cfg.rows)
        assert np.all(np.abs(rates - expected) < 4.5 * sd + 1e-3), (kernel, k, rates, expected)


# --------------------------------------------------------------------------- accuracy

@pytest.fixture(scope="module")
def mixture_scores():
    x, labels, log_density = gaussian_mixture(0, 64, [1600, 1000, 700, 400, 200, 100], separation=1.0)
    cfg = D.SketchConfig(dim=64, rows=1000, buckets=20000, bandwidth=D.estimate_bandwidth(x), seed=7)
    sketch = D.Sketch.empty(cfg)
    ids = D.bucket_ids(sketch.params, x)
    sketch.add(ids)
    n = x.shape[0]
    kernel_sum = D.exact_scores(cfg, x, x)
    expected = kernel_sum + (n - kernel_sum) / cfg.buckets
    return dict(x=x, log_density=log_density, cfg=cfg, ids=ids, sketch=sketch, expected=expected)


def test_sketch_score_ranks_like_exact_kernel_sum(mixture_scores):
    m = mixture_scores
    scores = m["sketch"].query(m["ids"])
    rho = scipy.stats.spearmanr(scores, m["expected"])[0]
    assert rho >= 0.9, rho
    # The kernel density itself follows the true mixture density (reported by the benchmark).
    assert scipy.stats.spearmanr(scores, m["log_density"])[0] > 0.4  # 0.51 here; 0.51 for the exact KDE too


def test_error_shrinks_with_more_rows(mixture_scores):
    m = mixture_scores
    full = m["sketch"].query(m["ids"])
    small_cfg = D.SketchConfig(**{**m["cfg"].__dict__, "rows": 50})
    small = D.Sketch.empty(small_cfg)
    small_ids = D.bucket_ids(small.params, m["x"])
    np.testing.assert_array_equal(small_ids, m["ids"][:, :50])  # rows are a prefix of the same functions
    small.add(small_ids)
    def err(s):
        return np.mean(np.abs(s - m["expected"]) / m["expected"])

    err_50, err_1000 = err(small.query(small_ids)), err(full)
    # Lemma A.1: error ~ 1/sqrt(R), so about sqrt(20) = 4.5x smaller.
    assert err_1000 < 0.4 * err_50, (err_50, err_1000)
    assert err_1000 < 0.03


def test_ips_on_scores_flattens_cluster_histogram():
    """Theorem A.2: keeping x with probability proportional to 1/score evens out unequal clusters."""
    x, labels, _ = gaussian_mixture(1, 32, [3000, 1000, 300, 100, 30], separation=3.0)
    cfg = D.SketchConfig(dim=32, rows=1000, hashes_per_row=2, bandwidth=D.estimate_bandwidth(x), seed=1)
    sketch = D.Sketch.empty(cfg)
    ids = D.bucket_ids(sketch.params, x)
    scores = sketch.add(ids).query(ids)
    target = 300
    keep_p = np.minimum(1.0, target * (1 / scores) / np.sum(1 / scores))
    rng = np.random.default_rng(0)
    kept = rng.random(x.shape[0]) < keep_p
    random_pick = rng.choice(x.shape[0], kept.sum(), replace=False)
    k = labels.max() + 1
    def tv(picked):
        return 0.5 * np.abs(np.bincount(labels[picked], minlength=k) / len(picked) - 1 / k).sum()

    tv_ips, tv_random = tv(np.flatnonzero(kept)), tv(random_pick)
    assert tv_ips < 0.75 * tv_random, (tv_ips, tv_random)
    # Every cluster's share rises from its corpus share toward 1/k, the smallest the most.
    share = np.bincount(labels[kept], minlength=k) / kept.sum()
    corpus_share = np.bincount(labels) / labels.size
    assert share[-1] > 2 * corpus_share[-1] and share[0] < corpus_share[0]


# --------------------------------------------------------------------------- merge, save, determinism

def small_sketch_setup(seed=0):
    cfg = D.SketchConfig(dim=16, rows=64, buckets=500, bandwidth=2.0, seed=seed)
    x = np.random.default_rng(seed).standard_normal((900, 16)).astype(np.float32)
    return cfg, x


@pytest.mark.parametrize("kernel", ["l2", "cosine"])
def test_merge_of_shards_equals_whole_exactly(kernel):
    cfg, x = small_sketch_setup()
    if kernel == "cosine":  # the default kind: sign words as buckets, nothing estimated from the data
        cfg = D.make_sketch_config(16, rows=64)
    whole = D.build_sketch(cfg, [x])
    a, b, c = (D.build_sketch(cfg, [part]) for part in (x[:100], x[100:550], x[550:]))
    merged = a.merge(b).merge(c)
    assert np.array_equal(merged.counts, whole.counts) and merged.num_points == 900
    assert np.array_equal(a.merge(b.merge(c)).counts, merged.counts)  # associative
    assert np.array_equal(c.merge(a).merge(b).counts, merged.counts)  # commutative
    assert np.array_equal(D.Sketch.merge_all([c, b, a]).counts, merged.counts)
    assert whole.counts.sum() == 900 * cfg.rows
    # merge does not modify its inputs
    assert a.counts.sum() == 100 * cfg.rows


def test_merge_rejects_other_hash_functions():
    cfg, x = small_sketch_setup()
    other = D.SketchConfig(**{**cfg.__dict__, "seed": 1})
    with pytest.raises(D.SketchError, match="different hash functions"):
        D.Sketch.empty(cfg).merge(D.Sketch.empty(other))


def test_save_load_round_trip(tmp_path):
    cfg, x = small_sketch_setup()
    sketch = D.build_sketch(cfg, [x])
    path = tmp_path / "sketch.npz"
    sketch.save(path)
    loaded = D.Sketch.load(path)
    assert loaded.config == cfg and loaded.num_points == 900
    assert loaded.params.same_functions(sketch.params)
    new_docs = np.random.default_rng(9).standard_normal((50, 16))
    np.testing.assert_array_equal(loaded.query_embeddings(new_docs), sketch.query_embeddings(new_docs))
    np.testing.assert_array_equal(loaded.merge(sketch).counts, 2 * sketch.counts)


def test_sketch_pickles_for_beam():
    cfg, x = small_sketch_setup()
    sketch = D.build_sketch(cfg, [x])
    again = pickle.loads(pickle.dumps(sketch))
    np.testing.assert_array_equal(again.query_embeddings(x[:10]), sketch.query_embeddings(x[:10]))


def test_hash_params_derive_from_seed_only():
    cfg, _ = small_sketch_setup()
    a, b = D.make_hash_params(cfg), D.make_hash_params(D.SketchConfig(**cfg.__dict__))
    assert a.same_functions(b)
    c = D.make_hash_params(D.SketchConfig(**{**cfg.__dict__, "seed": 2}))
    assert not np.array_equal(a.projection, c.projection) and not np.array_equal(a.mult_lo, c.mult_lo)
    assert np.all((a.offsets >= 0) & (a.offsets < cfg.bandwidth))


def test_estimate_bandwidth_is_a_distance_quantile():
    x = np.arange(11, dtype=np.float64)[:, None] * np.array([[3.0, 4.0]])  # distances 5 * |i - j|
    distances = np.array([5.0 * (j - i) for i in range(11) for j in range(i + 1, 11)])
    assert D.estimate_bandwidth(x, quantile=0.3) == pytest.approx(np.quantile(distances, 0.3))
    with pytest.raises(D.SketchError):
        D.estimate_bandwidth(np.zeros((5, 2)))


# --------------------------------------------------------------------------- bad input

def test_bad_inputs_raise_clear_errors(tmp_path):
    cfg, x = small_sketch_setup()
    sketch = D.Sketch.empty(cfg)
    with pytest.raises(ValueError, match=r"shape \[N, 16\]"):
        sketch.add_embeddings(x[:, :8])
    with pytest.raises(ValueError, match=r"shape \[N, 16\]"):
        sketch.add_embeddings(x[0])
    bad = x[:10].copy()
    bad[3, 2] = np.nan
    bad[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"rows \[3, 7\].*NaN or inf"):
        sketch.query_embeddings(bad)
    with pytest.raises(ValueError, match=r"\[0, 500\)"):
        sketch.add(np.full((2, cfg.rows), 500))
    with pytest.raises(ValueError, match="integer"):
        sketch.add(np.zeros((2, cfg.rows), np.float32))
    with pytest.raises(ValueError, match="bandwidth is required"):
        D.SketchConfig(dim=4)
    with pytest.raises(ValueError, match="kernel"):
        D.SketchConfig(dim=4, kernel="l1", bandwidth=1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        D.SketchConfig(dim=4, bandwidth=float("nan"))
    full = D.Sketch.empty(cfg)
    full.num_points = 2**31 - 5
    with pytest.raises(ValueError, match="overflow"):
        full.add_embeddings(x[:10])
    junk = tmp_path / "junk.npz"
    np.savez(junk, counts=np.zeros(3))
    with pytest.raises(D.SketchError, match="junk.npz"):
        D.Sketch.load(junk)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(D.SketchError, match="text.npz"):
        D.Sketch.load(tmp_path / "text.npz")


def test_universal_hash_spreads_distinct_keys_evenly():
    keys = np.arange(200_000, dtype=np.uint32).reshape(1, 1, -1)
    mh, ml = (np.random.default_rng(s).integers(0, 2**32, (1, 2), dtype=np.uint64).astype(np.uint32) for s in (1, 2))
    load = np.bincount(np.asarray(D._universal_hash(keys, mh, ml, 20000)).ravel(), minlength=20000)
    # 10 keys per bucket on average (Poisson(10) stays in [1, 35) over 20000 buckets; a linear hash
    # of consecutive keys spreads even more evenly).
    assert load.min() >= 1 and load.max() < 35


def test_row_layout_paths_equal_point_layout_paths():
    cfg, x = small_sketch_setup()
    params = D.make_hash_params(cfg)
    ids = D.bucket_ids(params, x)
    by_points = D.Sketch.empty(params).add(ids)
    by_rows = D.Sketch.empty(params).add_rows(D.row_bucket_ids(params, x))
    by_embeddings = D.Sketch.empty(params).add_embeddings(x)
    assert np.array_equal(by_points.counts, by_rows.counts) and np.array_equal(by_points.counts, by_embeddings.counts)
    np.testing.assert_array_equal(by_points.query(ids), by_points.query_rows(ids.T))
    np.testing.assert_array_equal(by_points.query(ids), by_points.query_embeddings(x))
    with pytest.raises(D.SketchError, match=r"\[64, N\]"):
        by_points.query_rows(ids)


def test_accelerator_path_agrees_with_cpu_path():
    """On CPU the projection is a numpy matmul; accelerators run one XLA program. Same buckets
    except where float32 rounding of the two matmuls straddles a floor boundary."""
    cfg = D.SketchConfig(dim=64, rows=200, buckets=20000, hashes_per_row=2, bandwidth=1.5, seed=5)
    params = D.make_hash_params(cfg)
    x = np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32)
    device = np.asarray(D._bucket_ids_jit(x, *params.device_arrays, kernel="l2", hashes_per_row=2, buckets=20000,
                                          rows_first=False))
    assert (device == D.bucket_ids(params, x)).mean() > 0.999


# --------------------------------------------------------------------------- defaults

def test_make_sketch_config_defaults_and_kernel_specific_fields():
    cfg = D.make_sketch_config(384)
    assert (cfg.kernel, cfg.hashes_per_row, cfg.rows, cfg.buckets, cfg.bandwidth) == (
        D.DEFAULT_KERNEL, D.DEFAULT_BITS, D.DEFAULT_ROWS, D.DEFAULT_BUCKETS, None)
    assert cfg.buckets == 2 ** cfg.hashes_per_row and cfg.direct_buckets and cfg.bucket_collision_rate == 0.0
    assert cfg.sketch_bytes == cfg.rows * 2 ** cfg.hashes_per_row * 4
    assert D.make_sketch_config(8, hashes_per_row=6).buckets == 64  # B follows k
    hashed = D.make_sketch_config(8, hashes_per_row=20)  # 2^20 buckets a row would be too many: hashed instead
    assert hashed.buckets == D.L2_BUCKETS and not hashed.direct_buckets and hashed.bucket_collision_rate == 1 / 20000
    l2 = D.make_sketch_config(8, kernel="l2", bandwidth=1.5)
    assert (l2.hashes_per_row, l2.buckets, l2.bandwidth) == (D.L2_HASHES_PER_ROW, D.L2_BUCKETS, 1.5)
    with pytest.raises(D.SketchError, match="needs a bandwidth"):
        D.make_sketch_config(8, kernel="l2")
    with pytest.raises(D.SketchError, match="l2' only"):
        D.make_sketch_config(8, bandwidth=1.0)


def test_direct_buckets_are_the_sign_words():
    cfg = D.make_sketch_config(12, rows=30, hashes_per_row=5, seed=4)
    assert cfg.buckets == 32 and cfg.direct_buckets
    params = D.make_hash_params(cfg)
    x = np.random.default_rng(0).standard_normal((20, 12)).astype(np.float32)
    got = D.bucket_ids(params, x)
    z = x.astype(np.float64) @ params.projection.astype(np.float64)
    checked = 0
    for i in range(20):
        for r in range(cfg.rows):
            zr = z[i, 5 * r:5 * r + 5]
            if np.abs(zr).min() < 1e-5:
                continue
            assert got[i, r] == sum(int(b) << j for j, b in enumerate(zr >= 0))
            checked += 1
    assert checked > 0.95 * 20 * cfg.rows


def test_gaussian_equivalent_bandwidth_matches_log_slopes():
    # Cosine at right angles: h = sqrt(pi / 2k).
    for k in (1, 4, 8, 16):
        cfg = D.make_sketch_config(4, hashes_per_row=k)
        assert D.gaussian_equivalent_bandwidth(cfg) == pytest.approx(math.sqrt(math.pi / (2 * k)), rel=1e-12)
    # Elsewhere: the slope of log p(c) by central differences of the kernels written out independently.
    eps = 1e-5
    def srp(c, k):  # log of the k-bit kernel at chord c between unit vectors
        return k * np.log(1 - np.arccos(1 - c * c / 2) / np.pi)

    def datar(c, w):  # Datar et al. 2004: p(c) = int_0^w (1/c) f_2(t/c) (1 - t/w) dt
        return scipy.integrate.quad(lambda t: (2 / c) * scipy.stats.norm.pdf(t / c) * (1 - t / w), 0, w)[0]

    for c in (0.5, 1.2, 1.39, 1.8):
        cfg = D.make_sketch_config(4, hashes_per_row=8)
        slope = -(srp(c + eps, 8) - srp(c - eps, 8)) / (2 * eps)
        assert D.log_kernel_slope(cfg, c) == pytest.approx(slope, rel=1e-6)
        assert D.gaussian_equivalent_bandwidth(cfg, c) == pytest.approx(math.sqrt(c / slope), rel=1e-6)
        l2 = D.make_sketch_config(4, kernel="l2", hashes_per_row=3, bandwidth=1.26)
        slope = -3 * (math.log(datar(c + eps, 1.26)) - math.log(datar(c - eps, 1.26))) / (2 * eps)
        assert D.log_kernel_slope(l2, c) == pytest.approx(slope, rel=1e-5)
    with pytest.raises(D.SketchError, match=r"\(0, 2\)"):
        D.log_kernel_slope(D.make_sketch_config(4), 2.5)


def test_v1_sketch_files_load_unless_their_buckets_changed_meaning(tmp_path):
    def as_v1(sketch, path):
        sketch.save(path)
        with np.load(path) as z:
            arrays = {name: z[name] for name in z.files}
        arrays["format"] = np.array("gristmill-density-sketch-v1")
        np.savez(path, **arrays)

    cfg, x = small_sketch_setup()
    l2 = D.build_sketch(cfg, [x])
    as_v1(l2, tmp_path / "l2.npz")
    np.testing.assert_array_equal(D.Sketch.load(tmp_path / "l2.npz").counts, l2.counts)
    hashed = D.build_sketch(D.make_sketch_config(16, rows=8, buckets=500), [x])
    as_v1(hashed, tmp_path / "hashed.npz")
    np.testing.assert_array_equal(D.Sketch.load(tmp_path / "hashed.npz").query_embeddings(x),
                                  hashed.query_embeddings(x))
    as_v1(D.build_sketch(D.make_sketch_config(16, rows=8), [x]), tmp_path / "direct.npz")
    with pytest.raises(D.SketchError, match="direct.npz.*rebuild"):
        D.Sketch.load(tmp_path / "direct.npz")


# --------------------------------------------------------------------------- defaults on real documents

TEST_DOCS, TEST_CHARS, TEST_TOKENS = 250, 300, 64


@pytest.fixture(scope="module")
def c4_embeddings():
    """MiniLM embeddings of 250 documents of the embedded C4 sample, cut to 300 characters; those that
    still exceed 64 tokens are skipped, so the test embeds short batches only (a few seconds)."""
    from gristmill import documents, records
    from gristmill.scoring.embeddings import make_embedder
    from gristmill.testing import EMBEDDED_C4
    embedder = make_embedder("minilm")
    texts = [d[records.TEXT][:TEST_CHARS] for d in documents.read_documents(EMBEDDED_C4)
             if not isinstance(d, documents.DeadLetter)]
    texts = [t for t, ids in zip(texts, embedder.token_ids(texts)) if len(ids) <= TEST_TOKENS][:TEST_DOCS]
    assert len(texts) == TEST_DOCS
    return embedder.embed(texts)


def test_default_sketch_ranks_like_exact_gaussian_kde_on_real_documents(c4_embeddings):
    """The defaults' scores against a brute-force Gaussian KDE over the same embeddings, at the bandwidth the
    k-bit cosine kernel is equivalent to, h = sqrt(pi / 2k) (0.44 for 8 bits; BENCHMARKS.md has the sweep)."""
    x = c4_embeddings
    sq = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(x.astype(np.float64), "sqeuclidean"))
    h = math.sqrt(math.pi / (2 * D.DEFAULT_BITS))
    kde = np.exp(-sq / (2 * h * h)).sum(axis=1)
    assert kde.max() > 1.2 * kde.min()  # the KDE itself spreads the documents out

    def scores(cfg):
        sketch = D.Sketch.empty(cfg)
        ids = D.bucket_ids(sketch.params, x)
        return sketch.add(ids).query(ids)

    rho = scipy.stats.spearmanr(scores(D.make_sketch_config(x.shape[1])), kde).statistic
    assert rho >= 0.9, rho
    # The former job default (p-stable l2, k = 2, w = 5% distance quantile) ranks further from it.
    former = D.make_sketch_config(x.shape[1], kernel="l2", hashes_per_row=2, bandwidth=D.estimate_bandwidth(x))
    assert scipy.stats.spearmanr(scores(former), kde).statistic < rho - 0.05


# --------------------------------------------------------------------------- cached ids

def test_a_documents_ids_do_not_depend_on_the_documents_hashed_with_it():
    """Each document's ids are the same hashed alone, in a unit of any size or at any offset: the
    projection runs in fixed 256-row chunks, so no document's matmul shape depends on its unit."""
    cfg = D.make_sketch_config(384)
    params = D.make_hash_params(cfg)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((700, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    whole = D.row_bucket_ids(params, x)
    for start, stop in ((0, 1), (3, 4), (250, 260), (255, 513), (699, 700), (1, 700)):
        np.testing.assert_array_equal(D.row_bucket_ids(params, x[start:stop]), whole[:, start:stop])
    shuffled = rng.permutation(700)
    np.testing.assert_array_equal(D.row_bucket_ids(params, x[shuffled]), whole[:, shuffled])


def test_small_id_dtypes_count_and_gather_like_int32():
    assert D.ids_dtype(D.make_sketch_config(384)) == np.uint8  # 256 buckets: a byte a row
    assert D.ids_dtype(D.make_sketch_config(384, buckets=4096)) == np.uint16
    assert D.ids_dtype(D.make_sketch_config(384, buckets=65536)) == np.uint16
    assert D.ids_dtype(D.make_sketch_config(384, buckets=65537)) == np.uint32
    cfg = D.make_sketch_config(16, rows=64)
    params = D.make_hash_params(cfg)
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    ids = D.row_bucket_ids(params, x)
    small = ids.astype(D.ids_dtype(cfg))
    np.testing.assert_array_equal(small, ids)  # nothing lost: every id is below 256
    a, b = D.Sketch.empty(params).add_rows(ids), D.Sketch.empty(params).add_rows(small)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.query_rows(small), a.query_rows(ids))


def test_hash_digest_names_the_functions():
    cfg = D.make_sketch_config(16, rows=64)
    same = D.hash_digest(D.make_hash_params(cfg))
    assert same == D.hash_digest(D.make_hash_params(D.make_sketch_config(16, rows=64)))
    others = {D.hash_digest(D.make_hash_params(c)) for c in (
        D.make_sketch_config(16, rows=64, seed=1), D.make_sketch_config(16, rows=65),
        D.make_sketch_config(16, rows=64, hashes_per_row=7), D.make_sketch_config(17, rows=64),
        D.make_sketch_config(16, rows=64, kernel="l2", bandwidth=1.0))}
    assert len(others) == 5 and same not in others
    params = D.make_hash_params(cfg)
    changed = D.HashParams(config=cfg, projection=params.projection.copy(), offsets=params.offsets,
                           mult_hi=params.mult_hi, mult_lo=params.mult_lo)
    changed.projection[0, 0] += 1.0  # same config, other functions (a sketch file from elsewhere)
    assert D.hash_digest(changed) != same
