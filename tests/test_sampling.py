"""Selection plans: exact sizes, IPS statistics, order independence, summaries, bad inputs.

References are independent of the code under test: hashlib for the uniform, brute-force sorting
for top-k, bisection for the IPS normaliser, binomial statistics over many seeds for IPS.
"""

import dataclasses
import hashlib
import json
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from gristmill import sampling as S

FEATURE = "score/test/model"


def make_corpus(n, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    ids = [f"{rng.integers(2**63):016x}{i:06d}" for i in range(n)]
    scores = rng.lognormal(0.0, 1.0, n).astype(np.float32)
    if ties:
        scores = np.round(scores * 2).astype(np.float32) + 1  # few distinct values
    tokens = rng.integers(1, 2000, n)
    return ids, scores, tokens


def bisect_c(scores, weights, target):
    lo, hi = 0.0, float(np.max(scores)) * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.sum(weights * np.minimum(1, mid / scores)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# --- the hash uniform ------------------------------------------------------------------------

def test_uniform_from_id_matches_keyed_blake2b_and_is_uniform():
    digest = hashlib.blake2b(b"doc-1", digest_size=8, key=(7).to_bytes(8, "little")).digest()
    assert S.uniform_from_id("doc-1", 7) == (int.from_bytes(digest, "big") >> 11) / 2**53
    assert S.uniform_from_id(b"doc-1", 7) == S.uniform_from_id("doc-1", 7)
    assert S.uniform_from_id("doc-1", 8) != S.uniform_from_id("doc-1", 7)
    ids = [f"id{i}" for i in range(20000)]
    u = S.uniform_from_ids(ids, 7)
    assert u.dtype == np.float64 and u.shape == (20000,)
    assert all(u[i] == S.uniform_from_id(ids[i], 7) for i in range(0, 20000, 997))
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_uniform_rejects_bad_seed_and_id():
    with pytest.raises(ValueError, match="seed"):
        S.uniform_from_id("a", -1)
    with pytest.raises(ValueError, match="seed"):
        S.uniform_from_ids(["a"], 2**64)
    with pytest.raises(ValueError, match="document id"):
        S.uniform_from_id(12, 0)


# --- exact plans -----------------------------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("rate", [0.01, 0.1, 0.37, 0.5, 0.999])
def test_topk_realised_size_is_exact_and_brute_force(rate, ties):
    ids, scores, _ = make_corpus(1000, seed=1, ties=ties)
    plan = S.plan_from_scores("topk", ids, scores, rate=rate, seed=5, score_feature=FEATURE)
    kept = S.keep_mask(plan, ids, scores)
    k = int(np.floor(rate * 1000 + 0.5 - 1e-9))  # closest integer, halves down
    assert kept.sum() == k == plan.expected_documents
    u = S.uniform_from_ids(ids, 5)
    order = sorted(range(1000), key=lambda i: (float(scores[i]), u[i]), reverse=True)
    assert set(np.flatnonzero(kept)) == set(order[:k])
    assert [S.keep(plan, ids[i], float(scores[i])) for i in range(1000)] == list(kept)


def test_bottomk_is_topk_of_negated_scores():
    ids, scores, _ = make_corpus(500, seed=2, ties=True)
    bottom = S.plan_from_scores("bottomk", ids, scores, rate=0.3, seed=1, score_feature=FEATURE)
    top = S.plan_from_scores("topk", ids, -scores, rate=0.3, seed=1, score_feature=FEATURE)
    kept = S.keep_mask(bottom, ids, scores)
    assert kept.sum() == 150
    assert (kept == S.keep_mask(top, ids, -scores)).all()
    assert scores[kept].max() <= scores[~kept].min()


def test_topk_by_tokens_keeps_the_closest_prefix():
    ids, scores, tokens = make_corpus(400, seed=3)
    plan = S.plan_from_scores("topk", ids, scores, rate=0.25, seed=0, tokens=tokens, rate_by="tokens",
                              score_feature=FEATURE, tokens_feature="tokens/t5")
    kept = S.keep_mask(plan, ids, scores)
    order = np.argsort(-scores.astype(np.float64), kind="stable")  # distinct scores: no ties
    cum = np.concatenate([[0], np.cumsum(tokens[order])])
    k = int(np.argmin(np.abs(cum - 0.25 * tokens.sum())))
    assert set(np.flatnonzero(kept)) == set(order[:k])
    assert plan.expected_tokens == tokens[kept].sum()
    assert plan.num_tokens == tokens.sum() and plan.tokens_feature == "tokens/t5"


def test_random_exact_size_and_uniform_over_scores():
    ids, scores, _ = make_corpus(1000, seed=4)
    plan = S.plan_from_scores("random", ids, None, rate=0.2, seed=9)
    kept = S.keep_mask(plan, ids)
    assert kept.sum() == 200 and plan.score_feature is None
    assert abs(plan.rule.threshold - 0.2) < 0.05
    assert (kept == (S.uniform_from_ids(ids, 9) < plan.rule.threshold)).all()


@pytest.mark.parametrize("rule", sorted(S.RULES))
def test_rate_one_keeps_everything(rule):
    ids, scores, _ = make_corpus(100, seed=5)
    plan = S.plan_from_scores(rule, ids, scores, rate=1.0, seed=0, score_feature=FEATURE)
    assert S.keep_mask(plan, ids, scores).all()


def test_duplicate_ids_are_never_split():
    ids = ["a", "a", "b", "c"]
    plan = S.plan_from_scores("topk", ids, [2.0, 2.0, 1.0, 3.0], rate=0.5, seed=0, score_feature=FEATURE)
    kept = S.keep_mask(plan, ids, [2.0, 2.0, 1.0, 3.0])
    assert kept[0] == kept[1]


# --- IPS -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate_by", ["documents", "tokens"])
@pytest.mark.parametrize("rate", [0.05, 0.3, 0.8])
def test_ips_normaliser_matches_bisection(rate, rate_by):
    ids, scores, tokens = make_corpus(2000, seed=6)
    plan = S.plan_from_scores("ips", ids, scores, rate=rate, seed=0, tokens=tokens, rate_by=rate_by,
                              score_feature=FEATURE)
    s = scores.astype(np.float64)
    w = tokens if rate_by == "tokens" else np.ones(2000)
    c_ref = bisect_c(s, w, rate * w.sum())
    assert plan.rule.c == pytest.approx(c_ref, rel=1e-9)
    pi = np.minimum(1, plan.rule.c / s)
    assert np.sum(w * pi) == pytest.approx(rate * w.sum(), rel=1e-9)
    expected = plan.expected_tokens if rate_by == "tokens" else plan.expected_documents
    assert expected == pytest.approx(rate * w.sum(), rel=1e-9)
    if rate == 0.8:  # low scores are capped at 1 and the others share the remainder
        assert (pi == 1).sum() > 0


def test_ips_worked_examples_from_the_docstring():
    plan = S.plan_from_scores("ips", list("abcd"), [1, 1, 2, 4], rate=0.5, seed=0, score_feature=FEATURE)
    assert plan.rule.c == pytest.approx(2 / 2.75)
    plan = S.plan_from_scores("ips", list("abcd"), [0.1, 1, 1, 1], rate=0.5, seed=0, score_feature=FEATURE)
    assert plan.rule.c == pytest.approx(1 / 3)
    assert S.inclusion_probability(plan, [0.1, 1.0]) == pytest.approx([1.0, 1 / 3])


def test_ips_realised_size_within_three_sd_over_many_seeds():
    ids, scores, _ = make_corpus(3000, seed=7)
    target = 0.2 * 3000
    plan = S.plan_from_scores("ips", ids, scores, rate=0.2, seed=0, score_feature=FEATURE)
    other = S.plan_from_scores("ips", ids, scores, rate=0.2, seed=1, score_feature=FEATURE)
    assert other.rule == plan.rule  # c depends on the scores only, not on the seed
    pi = S.inclusion_probability(plan, scores)
    sd = np.sqrt(np.sum(pi * (1 - pi)))
    counts = np.asarray([S.keep_mask(dataclasses.replace(plan, seed=seed), ids, scores).sum()
                         for seed in range(200)])
    assert np.mean(np.abs(counts - target) > 3 * sd) < 0.02
    assert abs(counts.mean() - target) < 3 * sd / np.sqrt(len(counts))
    assert 0.7 < counts.std() / sd < 1.3


def test_ips_keep_frequency_matches_inclusion_probability():
    ids, scores, _ = make_corpus(300, seed=8)
    plan0 = S.plan_from_scores("ips", ids, scores, rate=0.3, seed=0, score_feature=FEATURE)
    pi = S.inclusion_probability(plan0, scores)
    n_seeds = 2000
    hits = np.zeros(300)
    for seed in range(n_seeds):
        hits += S.keep_mask(dataclasses.replace(plan0, seed=seed), ids, scores)
    free = pi < 1
    assert (hits[~free] == n_seeds).all()  # capped documents are always kept
    z = (hits[free] - n_seeds * pi[free]) / np.sqrt(n_seeds * pi[free] * (1 - pi[free]))
    chi2 = float(np.sum(z**2))
    assert stats.chi2.sf(chi2, df=free.sum()) > 1e-3
    assert np.abs(z).max() < 5
    # the design: keep probability proportional to 1/score among uncapped documents
    assert np.corrcoef(hits[free] / n_seeds, 1 / scores[free])[0, 1] > 0.95


# --- order and sharding independence --------------------------------------------------------

@pytest.mark.parametrize("rule", sorted(S.RULES))
def test_plans_identical_for_shuffled_and_resharded_inputs(rule):
    ids, scores, tokens = make_corpus(1500, seed=9, ties=(rule != "ips"))
    kwargs = dict(rate=0.33, seed=4, tokens=tokens, rate_by="tokens", score_feature=FEATURE)
    plan = S.plan_from_scores(rule, ids, scores, **kwargs)
    perm = np.random.default_rng(0).permutation(1500)
    shuffled = S.plan_from_scores(rule, [ids[i] for i in perm], scores[perm], **{**kwargs, "tokens": tokens[perm]})
    assert shuffled == plan and shuffled.to_json() == plan.to_json()
    whole = S.keep_mask(plan, ids, scores)
    shards = np.array_split(perm, 7)
    union = set()
    for shard in shards:
        mask = S.keep_mask(plan, [ids[i] for i in shard], scores[shard])
        union |= {ids[i] for i, k in zip(shard, mask) if k}
    assert union == {ids[i] for i in np.flatnonzero(whole)}


def test_json_round_trip_and_scores_compared_as_float32():
    ids, scores, _ = make_corpus(300, seed=10)
    scores64 = scores.astype(np.float64) + 1e-12  # rounds back to the same float32
    plan = S.plan_from_scores("topk", ids, scores64, rate=0.4, seed=1, score_feature=FEATURE)
    again = S.Plan.from_json(plan.to_json())
    assert again == plan
    assert json.loads(plan.to_json())["rule"]["name"] == "topk"
    assert (S.keep_mask(again, ids, scores) == S.keep_mask(plan, ids, scores64)).all()


# --- summaries for corpora too big for memory ------------------------------------------------

@pytest.mark.parametrize("rule", ["topk", "bottomk"])
@pytest.mark.parametrize("ties", [False, True])
def test_plan_from_quantiles_close_to_the_rate(rule, ties):
    ids, scores, _ = make_corpus(20000, seed=11, ties=ties)
    m = 100
    q = np.quantile(scores.astype(np.float64), np.linspace(0, 1, m + 1), method="inverted_cdf")
    plan = S.plan_from_quantiles(rule, q, rate=0.3, seed=2, num_documents=20000, score_feature=FEATURE)
    kept = S.keep_mask(plan, ids, scores).sum()
    assert plan.expected_error == 20000 / m
    sd = np.sqrt(20000 * 0.25)  # tie fraction kept by the hash: binomial noise
    assert abs(kept - 6000) <= plan.expected_error + 4 * sd


def test_plan_from_quantiles_random_and_rejects_ips():
    ids, _, _ = make_corpus(5000, seed=12)
    plan = S.plan_from_quantiles("random", None, rate=0.25, seed=3, num_documents=5000)
    assert plan.rule.threshold == 0.25
    assert abs(S.keep_mask(plan, ids).sum() - 1250) < 4 * np.sqrt(5000 * 0.25 * 0.75)
    with pytest.raises(ValueError, match="plan_from_histogram"):
        S.plan_from_quantiles("ips", [1.0, 2.0], rate=0.2, seed=0, num_documents=10, score_feature=FEATURE)


@pytest.mark.parametrize("rate_by", ["documents", "tokens"])
@pytest.mark.parametrize("rate", [0.02, 0.3, 0.9])
def test_plan_from_histogram_within_its_error_bound(rate, rate_by):
    ids, scores, tokens = make_corpus(5000, seed=13)
    s = scores.astype(np.float64)
    w = tokens if rate_by == "tokens" else np.ones(5000, dtype=np.int64)
    edges = np.geomspace(s.min(), s.max() * 1.0001, 200)
    halves = [S.ips_histogram(scores[part], w[part], edges) for part in np.array_split(np.arange(5000), 3)]
    weight_sums = sum(h[0] for h in halves)  # accumulators merge by addition
    inverse_sums = sum(h[1] for h in halves)
    plan = S.plan_from_histogram(edges, weight_sums, inverse_sums, rate=rate, seed=0, num_documents=5000,
                                 rate_by=rate_by, score_feature=FEATURE)
    target = rate * w.sum()
    expected = np.sum(w * np.minimum(1, plan.rule.c / s))
    assert expected >= target * (1 - 1e-9)
    assert expected - target <= plan.expected_error + 1e-6
    assert plan.expected_error < 0.02 * target
    exact = S.plan_from_scores("ips", ids, scores, rate=rate, seed=0, tokens=tokens, rate_by=rate_by,
                               score_feature=FEATURE)
    assert plan.rule.c == pytest.approx(exact.rule.c, rel=0.05)


def test_histogram_exact_when_nothing_is_capped_and_rejects_out_of_range():
    scores = np.array([1.0, 2.0, 4.0])
    edges = [1.0, 3.0, 5.0]
    ws, inv = S.ips_histogram(scores, np.ones(3), edges)
    c, error = S.ips_normaliser_from_histogram(edges, ws, inv, 0.5)
    assert error == 0 and c == pytest.approx(0.5 / 1.75)
    with pytest.raises(ValueError, match="outside the histogram range"):
        S.ips_histogram([6.0], [1], edges)


# --- missing scores and bad inputs -----------------------------------------------------------

def test_missing_score_policies():
    ids = ["a", "b", "c", "d"]
    scores = [3.0, None, 1.0, float("nan")]
    with pytest.raises(S.MissingScoreError, match=r"'b'.*score/test/model"):
        S.plan_from_scores("topk", ids, scores, rate=0.5, seed=0, score_feature=FEATURE)
    for policy, expect in (("drop", False), ("keep", True)):
        plan = S.plan_from_scores("topk", ids, scores, rate=0.5, seed=0, score_feature=FEATURE, missing=policy)
        assert plan.num_documents == 2 and plan.num_missing == 2
        assert list(S.keep_mask(plan, ids, scores)) == [True, expect, False, expect]
        assert S.keep(plan, "b", None) is expect
    plan = S.plan_from_scores("topk", ["a", "c"], [3.0, 1.0], rate=0.5, seed=0, score_feature=FEATURE)
    with pytest.raises(S.MissingScoreError, match=r"'zz'.*score/test/model"):
        S.keep(plan, "zz", None)


def test_bad_inputs_raise_clear_errors():
    ids, scores = ["a", "b"], [1.0, 2.0]
    with pytest.raises(ValueError, match="unknown selection rule 'best'"):
        S.plan_from_scores("best", ids, scores, rate=0.5, seed=0, score_feature=FEATURE)
    for rate in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="rate must be a fraction in"):
            S.plan_from_scores("topk", ids, scores, rate=rate, seed=0, score_feature=FEATURE)
    with pytest.raises(ValueError, match=r"ips: scores must be > 0.*document 'b'"):
        S.plan_from_scores("ips", ids, [1.0, 0.0], rate=0.5, seed=0, score_feature=FEATURE)
    with pytest.raises(ValueError, match=r"ips: scores must be > 0.*'a'"):
        S.plan_from_scores("ips", ids, [-1.0, 2.0], rate=0.5, seed=0, score_feature=FEATURE)
    with pytest.raises(ValueError, match="non-finite score"):
        S.plan_from_scores("topk", ids, [1.0, float("inf")], rate=0.5, seed=0, score_feature=FEATURE)
    with pytest.raises(ValueError, match="needs token counts"):
        S.plan_from_scores("topk", ids, scores, rate=0.5, seed=0, rate_by="tokens", score_feature=FEATURE)
    with pytest.raises(ValueError, match="rate_by"):
        S.plan_from_scores("topk", ids, scores, rate=0.5, seed=0, rate_by="bytes", score_feature=FEATURE)
    with pytest.raises(ValueError, match="needs score_feature"):
        S.plan_from_scores("topk", ids, scores, rate=0.5, seed=0)
    with pytest.raises(ValueError, match="3 values for 2 ids"):
        S.plan_from_scores("topk", ids, [1.0, 2.0, 3.0], rate=0.5, seed=0, score_feature=FEATURE)
    ips = S.plan_from_scores("ips", ids, scores, rate=0.5, seed=0, score_feature=FEATURE)
    with pytest.raises(ValueError, match=r"ips: scores must be > 0.*'x'"):
        S.keep(ips, "x", -3.0)
    with pytest.raises(ValueError, match="not a gristmill selection plan"):
        S.Plan.from_json('{"version": 1, "rule": {"name": "topk"}}')
    with pytest.raises(ValueError, match="version"):
        S.Plan.from_json(ips.to_json().replace('"version": 1', '"version": 99'))
    with pytest.raises(ValueError, match="threshold_u"):
        S.TopK(threshold_score=1.0, threshold_u=2.0)


def test_approx_token_count():
    assert S.approx_token_count("") == 1
    assert S.approx_token_count("abcd") == 1
    assert S.approx_token_count("abcde") == 2
    assert S.approx_token_count("é" * 4) == 2  # UTF-8 bytes, not characters


# --- the exact IPS normaliser against a brute force in rational arithmetic --------------------------

def brute_force_c(scores, weights, target):
    """The exact real c with sum w min(1, c/s) = target (Fractions): try each set of capped scores."""
    s = [Fraction(float(x)) for x in scores]
    w = [Fraction(int(x)) for x in weights]
    target = Fraction(target)
    for cap in sorted(set(s)):  # documents with score < cap are capped at 1
        below = sum((wi for si, wi in zip(s, w) if si < cap), Fraction(0))
        inverse = sum((wi / si for si, wi in zip(s, w) if si >= cap), Fraction(0))
        if inverse == 0:
            continue
        c = (target - below) / inverse
        if c <= cap and (below == 0 or c >= max(si for si in s if si < cap)):
            assert sum(wi * min(1, c / si) for si, wi in zip(s, w)) == target
            return c
    raise AssertionError("no exact solution")


@pytest.mark.parametrize("rate_by", ["documents", "tokens"])
def test_ips_normaliser_against_a_rational_brute_force(rate_by):
    rng = np.random.default_rng(11)
    for trial in range(60):
        n = int(rng.integers(1, 12))
        scores = rng.lognormal(0.0, 2.0, n).astype(np.float32)
        if trial % 3 == 0:
            scores[: n // 2] = scores[-1]                               # ties
        tokens = rng.integers(1, 3000, n) if rate_by == "tokens" else np.ones(n, dtype=np.int64)
        rate = float(rng.choice([0.05, 0.3, 0.7, 0.95]))
        plan = S.plan_from_scores("ips", [str(i) for i in range(n)], scores, rate=rate, seed=0, tokens=tokens,
                                  rate_by=rate_by, score_feature=FEATURE)
        target = rate * int(tokens.sum())
        c_exact = brute_force_c(scores, tokens, target)
        # each term w/s is rounded once, c once: a few units in the last place at most
        assert abs(Fraction(plan.rule.c) - c_exact) <= c_exact * Fraction(8, 2**53), (trial, plan.rule.c)


def test_ips_normaliser_is_the_correctly_rounded_exact_value_when_the_terms_are_exact():
    """With power-of-two scores every term w/s is exact, so c is the exact solution rounded once."""
    rng = np.random.default_rng(12)
    for _ in range(60):
        n = int(rng.integers(1, 12))
        scores = 2.0 ** rng.integers(-20, 20, n)
        tokens = rng.integers(1, 3000, n)
        rate = float(rng.random()) * 0.99 + 0.005
        plan = S.plan_from_scores("ips", [str(i) for i in range(n)], scores, rate=rate, seed=0, tokens=tokens,
                                  rate_by="tokens", score_feature=FEATURE)
        assert plan.rule.c == float(brute_force_c(scores, tokens, rate * int(tokens.sum())))
    plan = S.plan_from_scores("ips", list("abcd"), [1, 1, 2, 4], rate=0.5, seed=0, score_feature=FEATURE)
    assert plan.rule.c == float(Fraction(8, 11)) and plan.expected_documents == 2.0
