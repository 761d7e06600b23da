"""The bounded-memory exact planner gives the in-memory exact planner's plan, byte for byte."""

import numpy as np
import pytest

from gristmill import sampling, threshold_search


def _bounded_plan(rule, ids, scores, tokens, rate, seed, rate_by):
    u = sampling.uniform_from_ids(ids, seed)
    s = None if scores is None else np.asarray(scores, dtype=np.float32).astype(np.float64)
    weights_total = int(np.sum(tokens)) if rate_by == sampling.TOKENS else len(ids)
    found, kept_docs, kept_tokens = threshold_search.plan_rows(
        rule, s, u, np.asarray(tokens), rate_by == sampling.TOKENS, rate * weights_total)
    return threshold_search.to_plan(rule, found, kept_docs, kept_tokens, num_documents=len(ids),
                                    num_tokens=int(np.sum(tokens)), rate=rate, seed=seed, rate_by=rate_by,
                                    score_feature=None if rule == "random" else "score/x/y",
                                    tokens_feature=sampling.PROXY_TOKENS, num_missing=0,
                                    missing=sampling.MissingScorePolicy.ERROR)


def _corpus(rng, n, kind):
    ids = [f"doc-{rng.integers(0, n * 4)}" if kind == "duplicates" else f"doc-{i}" for i in range(n)]
    if kind == "ties":
        scores = rng.integers(0, 3, n).astype(float) * 0.25          # three values, a third each
    elif kind == "signed":
        scores = np.concatenate([[0.0, -0.0], rng.normal(size=max(n - 2, 0)) * 1e3])[:n]
    elif kind == "tiny":
        scores = rng.random(n) * 1e-30
    else:
        scores = rng.random(n)
    tokens = rng.integers(1, 2000, n)
    return ids, scores, tokens


@pytest.mark.parametrize("kind", ["uniform", "ties", "signed", "tiny", "duplicates"])
@pytest.mark.parametrize("rule", ["topk", "bottomk", "random"])
@pytest.mark.parametrize("rate_by", [sampling.DOCUMENTS, sampling.TOKENS])
def test_bounded_plan_equals_the_in_memory_exact_plan(kind, rule, rate_by):
    rng = np.random.default_rng(hash((kind, rule, rate_by)) % 2**32)
    for n, rate, seed in [(1, 0.5, 0), (2, 0.5, 1), (50, 0.2, 2), (3000, 0.37, 3), (3000, 0.999, 4), (3000, 1.0, 5),
                          (3000, 1e-4, 6)]:
        ids, scores, tokens = _corpus(rng, n, kind)
        expected = sampling.plan_from_scores(rule, ids, scores, rate=rate, seed=seed, tokens=tokens, rate_by=rate_by,
                                             score_feature=None if rule == "random" else "score/x/y",
                                             tokens_feature=sampling.PROXY_TOKENS)
        got = _bounded_plan(rule, ids, None if rule == "random" else scores, tokens, rate, seed, rate_by)
        assert got.to_json() == expected.to_json(), (kind, rule, rate_by, n, rate)


def test_sort_keys_rank_like_a_sort_by_key_then_u():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(size=500), [0.0, -0.0, np.float32(1e-40), -np.float32(1e-40)]])
    u = sampling.uniform_from_ids([str(i) for i in range(len(scores))], 0)
    for rule, key in [("topk", scores), ("bottomk", -scores), ("random", -u)]:
        key32, m = threshold_search.sort_keys(rule, scores, u)
        ours = sorted(range(len(u)), key=lambda i: (int(key32[i]), int(m[i])), reverse=True)
        k = np.asarray(key, dtype=np.float32).astype(np.float64) if rule != "random" else key
        theirs = list(np.lexsort((-u, -k)) if rule != "random" else np.lexsort((-k,)))
        assert ours == theirs


def test_one_document_at_a_time_gives_the_array_keys():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(size=200), [0.0, -0.0]]).astype(np.float32).astype(np.float64)
    u = sampling.uniform_from_ids([str(i) for i in range(len(scores))], 3)
    for rule in ("topk", "bottomk", "random"):
        key32, m = threshold_search.sort_keys(rule, scores, u)
        for i in range(len(u)):
            row = threshold_search.search_row(rule, float(scores[i]), float(u[i]), 1)
            assert row[:2] == (int(key32[i]), int(m[i]))
            for level in range(threshold_search.LEVELS):
                assert threshold_search.row_bits(row, level) == int(threshold_search.level_bits(key32, m, level)[i])


# --- exact IPS -----------------------------------------------------------------------------------

def _ips_scores(rng, n, kind):
    if kind == "ties":
        scores = rng.integers(1, 4, n) * 0.5                             # three values, heavily tied
    elif kind == "equal":
        scores = np.full(n, 3.0)
    elif kind == "adjacent":  # consecutive float32 values: one top-16-bit bin, s_j found by pass 2
        scores = np.nextafter(np.float32(1.0), np.float32(2.0)) + rng.integers(0, 50, n) * np.float32(2.0**-23)
    elif kind == "capped":  # a few tiny scores, capped at pi = 1 for any rate above a few percent
        scores = np.where(rng.random(n) < 0.1, rng.random(n) * 1e-6 + 1e-9, rng.lognormal(0.0, 1.0, n))
    elif kind == "wide":
        scores = np.exp(rng.uniform(-80, 80, n))
    else:
        scores = rng.lognormal(0.0, 1.0, n)
    return np.asarray(scores, dtype=np.float32).astype(np.float64)


def _bounded_ips_plan(ids, scores, tokens, rate, seed, rate_by):
    by_tokens = rate_by == sampling.TOKENS
    target = rate * (int(np.sum(tokens)) if by_tokens else len(ids))
    c, expected_documents, expected_tokens = threshold_search.ips_plan_rows(scores, tokens, by_tokens, target)
    return threshold_search.ips_to_plan(c, expected_documents, expected_tokens, num_documents=len(ids),
                                        num_tokens=int(np.sum(tokens)), rate=rate, seed=seed, rate_by=rate_by,
                                        score_feature="score/x/y", tokens_feature=sampling.PROXY_TOKENS,
                                        num_missing=0, missing=sampling.MissingScorePolicy.ERROR)


@pytest.mark.parametrize("kind", ["lognormal", "ties", "equal", "adjacent", "capped", "wide"])
@pytest.mark.parametrize("rate_by", [sampling.DOCUMENTS, sampling.TOKENS])
def test_bounded_ips_plan_equals_the_in_memory_exact_plan(kind, rate_by):
    rng = np.random.default_rng(hash((kind, rate_by, "ips")) % 2**32)
    cases = [(1, 0.5), (1, 1.0), (2, 0.5), (7, 0.9), (60, 0.2), (3000, 0.37), (3000, 0.97), (3000, 1.0),
             (3000, 1e-4), (3000, float(rng.random()))]
    for n, rate in cases:
        ids = [f"doc-{i}" for i in range(n)]
        scores = _ips_scores(rng, n, kind)
        tokens = rng.integers(0 if n % 2 else 1, 2000, n)  # some corpora have zero-token documents
        if rate_by == sampling.TOKENS and tokens.sum() == 0:
            tokens[0] = 1
        expected = sampling.plan_from_scores("ips", ids, scores, rate=rate, seed=3, tokens=tokens,
                                             rate_by=rate_by, score_feature="score/x/y",
                                             tokens_feature=sampling.PROXY_TOKENS)
        got = _bounded_ips_plan(ids, scores, tokens, rate, 3, rate_by)
        assert got.to_json() == expected.to_json(), (kind, rate_by, n, rate)


def test_bounded_ips_histograms_merge_like_the_whole():
    rng = np.random.default_rng(5)
    scores, tokens = _ips_scores(rng, 5000, "lognormal"), rng.integers(1, 2000, 5000)
    whole = threshold_search.ips_histogram(scores, tokens, True)
    parts = [threshold_search.ips_histogram(scores[p], tokens[p], True) for p in np.array_split(np.arange(5000), 3)]
    merged = threshold_search.ips_merge(threshold_search.ips_merge(parts[2], parts[0]), parts[1])
    assert (merged[0] == whole[0]).all() and merged[1] == whole[1]
    assert int(whole[0][0].sum()) == 5000 and int(whole[0][1].sum()) == int(tokens.sum())
