"""Over-scaling, speed-up, Kendall tau-b and histograms against hand-computed values and scipy.

Expected over-scaling and speed-up numbers are worked out by hand in the comments (the paper's
definition, docs/paper.md §5.4 and §6.3); Kendall tau-b is checked against scipy.stats.kendalltau.
"""

import math

import numpy as np
import pytest
from scipy import stats

from gristmill.eval import metrics as M

ACC, PPL = "accuracy", "perplexity/hq"


def table(sampled_acc=81.0, sampled_ppl=19.0):
    """T5-L full: acc 80, ppl 20; T5-XL full: acc 84, ppl 16; T5-L on a 20% sample: given."""
    rows = [
        M.Result(model="large", sampler="full", rate=1.0, metric=ACC, value=80.0),
        M.Result(model="large", sampler="full", rate=1.0, metric=PPL, value=20.0),
        M.Result(model="xl", sampler="full", rate=1.0, metric=ACC, value=84.0),
        M.Result(model="xl", sampler="full", rate=1.0, metric=PPL, value=16.0),
        M.Result(model="large", sampler="askllm", rate=0.2, metric=ACC, value=sampled_acc),
        M.Result(model="large", sampler="askllm", rate=0.2, metric=PPL, value=sampled_ppl),
    ]
    return rows


def over(rows, metrics=(ACC, PPL), sampler="askllm", **kw):
    return M.over_scaling(rows, model="large", sampler=sampler, next_model="xl", metrics=list(metrics),
                          lower_is_better={PPL}, **kw)


def test_over_scaling_hand_computed():
    rows = table(sampled_acc=81.0, sampled_ppl=19.0)
    # accuracy: (81 - 80) / (84 - 80) = 1/4 -> 25%
    assert over(rows, [ACC]) == pytest.approx(25.0)
    # perplexity, lower is better: -(19 - 20) / -(16 - 20) = 1/4 -> 25%
    assert over(rows, [PPL]) == pytest.approx(25.0)
    assert over(rows) == pytest.approx(25.0)
    # accuracy 82 -> 50%; perplexity 21 (worse than full) -> -(21 - 20) / 4 = -25%; mean 12.5%
    rows = table(sampled_acc=82.0, sampled_ppl=21.0)
    terms = M.over_scaling_terms(rows, model="large", sampler="askllm", next_model="xl", metrics=[ACC, PPL],
                                 lower_is_better={PPL})
    assert terms == {ACC: pytest.approx(50.0), PPL: pytest.approx(-25.0)}
    assert over(rows) == pytest.approx(12.5)


def test_over_scaling_zero_for_full_and_hundred_at_next_size():
    # "the standard T5-Large model would have an over-scaling of 0%"
    assert over(table(), sampler="full") == 0.0
    # "a T5-Large variant with 100% over-scaling performs at the same level as T5-XL"
    assert over(table(sampled_acc=84.0, sampled_ppl=16.0)) == pytest.approx(100.0)
    # dict rows (a results.jsonl) work the same
    rows = [dict(model=r.model, sampler=r.sampler, rate=r.rate, metric=r.metric, value=r.value) for r in table()]
    assert over(rows) == pytest.approx(25.0)


def test_over_scaling_flip_fixes_meaning_not_value():
    # Negating both gains leaves the ratio (-1) / (-4) unchanged, so the flip cannot change the
    # number; what it changes is the premise check: read as higher-is-better, xl's perplexity 16
    # is worse than large's 20, and the definition (100% = as good as the next size) fails.
    rows = table()
    with pytest.raises(M.MetricError, match="not better"):
        M.over_scaling(rows, model="large", sampler="askllm", next_model="xl", metrics=[PPL], lower_is_better=())
    assert over(rows, [PPL]) == pytest.approx(25.0)


def test_over_scaling_refuses_undefined_and_missing():
    rows = table()
    rows[3] = M.Result(model="xl", sampler="full", rate=1.0, metric=PPL, value=20.0)  # xl no better
    with pytest.raises(M.MetricError, match="undefined on 'perplexity/hq'"):
        over(rows)
    with pytest.raises(M.MetricError, match="no result for model 'large', sampler 'density'"):
        over(table(), sampler="density")
    two_rates = table() + [M.Result(model="large", sampler="askllm", rate=0.4, metric=ACC, value=83.0),
                           M.Result(model="large", sampler="askllm", rate=0.4, metric=PPL, value=18.0)]
    with pytest.raises(M.MetricError, match="name the rate"):
        over(two_rates)
    # 0.4: acc (83 - 80) / 4 = 75%, ppl (20 - 18) / 4 = 50% -> 62.5%
    assert over(two_rates, rate=0.4) == pytest.approx(62.5)


def test_over_scaling_uses_the_last_checkpoint():
    rows = table()
    rows.append(M.Result(model="large", sampler="askllm", rate=0.2, metric=ACC, value=99.0, step=10))
    rows[4] = M.Result(model="large", sampler="askllm", rate=0.2, metric=ACC, value=81.0, step=20)
    assert over(rows, [ACC]) == pytest.approx(25.0)


def test_speed_up_hand_made_curves():
    full = [(100, 10.0), (200, 8.0), (400, 6.0)]           # target 6.0 at 400 tokens
    sampled = [(100, 9.0), (200, 7.0), (300, 5.0)]         # crosses 6.0 half way: 250 tokens
    s = M.speed_up(sampled, full, lower_is_better=True)
    assert s.tokens_needed == pytest.approx(250.0) and s.tokens_full == 400 and s.target == 6.0
    assert s.percent == pytest.approx(100 * (1 - 250 / 400))  # 37.5%
    # the full curve against itself: 0%
    assert M.speed_up(full, full, lower_is_better=True).percent == pytest.approx(0.0)
    # never reached
    never = M.speed_up([(100, 9.0), (400, 7.0)], full, lower_is_better=True)
    assert never.percent is None and never.tokens_needed is None
    # higher is better (accuracy): full ends at 70 with 1000 tokens; sampled reaches 70 at 400
    s = M.speed_up([(200, 60.0), (600, 80.0)], [(500, 50.0), (1000, 70.0)], lower_is_better=False)
    assert s.tokens_needed == pytest.approx(400.0) and s.percent == pytest.approx(60.0)
    # already there at the first logged point: that point's tokens; points may come unsorted
    s = M.speed_up([(300, 5.0), (100, 5.5)], full, lower_is_better=True)
    assert s.tokens_needed == 100 and s.percent == pytest.approx(75.0)
    # slower than full: negative
    assert M.speed_up([(500, 7.0), (600, 6.0)], full, lower_is_better=True).percent == pytest.approx(-50.0)
    with pytest.raises(M.MetricError, match="same token count"):
        M.speed_up([(1, 1.0), (1, 2.0)], full, lower_is_better=True)


@pytest.mark.parametrize("n, ties", [(2, False), (7, False), (100, True), (1000, False), (3001, True)])
def test_kendall_tau_matches_scipy(n, ties):
    rng = np.random.default_rng(n)
    a = rng.normal(size=n)
    b = 0.3 * a + rng.normal(size=n)
    if ties:
        a, b = np.round(a * 2), np.round(b)
    expected = stats.kendalltau(a, b, variant="b").statistic
    assert M.kendall_tau(a, b) == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_extremes():
    x = np.arange(10.0)
    assert M.kendall_tau(x, x) == pytest.approx(1.0)
    assert M.kendall_tau(x, -x) == pytest.approx(-1.0)
    assert math.isnan(M.kendall_tau(x, np.ones(10)))
    assert math.isnan(M.kendall_tau([1.0], [2.0]))
    with pytest.raises(M.MetricError, match="same length"):
        M.kendall_tau([1, 2], [1, 2, 3])


def test_rank_correlation_matrix_pairs_documents_having_both_scores():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + 0.5 * rng.normal(size=200)
    c = rng.normal(size=200)
    c[:150] = np.nan  # scored only on a subset
    m = M.rank_correlation_matrix({"a": a, "b": b, "c": c})
    assert m.names == ["a", "b", "c"]
    assert m.pairs.tolist() == [[200, 200, 50], [200, 200, 50], [50, 50, 50]]
    assert np.allclose(np.diag(m.tau), 1.0)
    assert m.tau[0, 1] == pytest.approx(stats.kendalltau(a, b).statistic)
    assert m.tau[2, 0] == pytest.approx(stats.kendalltau(a[150:], c[150:]).statistic)
    assert np.array_equal(m.tau, m.tau.T, equal_nan=True)


def test_histogram_ignores_missing():
    counts, edges = M.histogram([0.0, 0.5, 1.0, np.nan, 1.0], bins=2)
    assert counts.tolist() == [1, 3] and edges.tolist() == [0.0, 0.5, 1.0]
    counts, edges = M.histogram([np.nan], bins=4)
    assert counts.tolist() == [0, 0, 0, 0] and len(edges) == 5
