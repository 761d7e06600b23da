"""Distilled Ask-LLM head: known linear targets, leave-one-out against brute-force refits,
penalty selection, save/load, and agreement on hand-worked values."""

import numpy as np
import pytest

from gristmill.scoring import heads


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _linear(n=400, d=24, noise=0.0, seed=0):
    """Unit-norm embeddings, a known weight vector and bias, and their log-odds target."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, d))).astype(np.float32)
    w, b = 3.0 * rng.standard_normal(d), -0.7
    y = x.astype(np.float64) @ w + b
    return x, w, b, y + noise * rng.standard_normal(n), y


def _brute_force_loo(x, y, alpha):
    """Refit ridge without each row (normal equations with an unpenalised intercept)."""
    n, d = x.shape
    a = np.hstack([np.ones((n, 1)), x.astype(np.float64)])
    penalty = np.diag([0.0] + [alpha * n] * d)  # the same total penalty n alpha as the full fit
    errors = []
    for i in range(n):
        keep = np.arange(n) != i
        theta = np.linalg.solve(a[keep].T @ a[keep] + penalty, a[keep].T @ y[keep])
        errors.append((y[i] - a[i] @ theta) ** 2)
    return float(np.mean(errors))


def test_ridge_reproduces_a_known_linear_target():
    x, w, b, y, clean = _linear(noise=0.01)
    head = heads.fit_ridge(x, y, embedder="minilm", model="smollm2")
    assert head.kind == "ridge" and head.n_train == 400 and (head.embedder, head.model) == ("minilm", "smollm2")
    np.testing.assert_allclose(head.predict(x), clean, atol=0.01)
    np.testing.assert_allclose(head.weights, w, rtol=0.02, atol=0.02 * np.abs(w).max())
    assert head.bias == pytest.approx(b, abs=0.02)
    assert head.alpha <= 1e-5  # little noise: little shrinkage
    fresh, _, _, _, fresh_clean = _linear(noise=0.0, seed=0)
    np.testing.assert_allclose(head.predict(fresh), fresh_clean, atol=0.01)


def test_leave_one_out_closed_form_matches_refits():
    x, _, _, y, _ = _linear(n=40, d=6, noise=0.5, seed=1)
    alphas = [1e-4, 1e-2, 0.3]
    np.testing.assert_allclose(heads.ridge_loo_errors(x, y, alphas), [_brute_force_loo(x, y, a) for a in alphas],
                               rtol=1e-8)


def test_penalty_follows_the_signal():
    rng = np.random.default_rng(2)
    x, _, _, _, _ = _linear(n=200, d=24, seed=2)
    noise_only = heads.fit_ridge(x, rng.standard_normal(200))
    assert noise_only.alpha == max(heads.DEFAULT_ALPHAS)  # nothing to learn: shrink all the way
    assert np.abs(noise_only.weights).max() < 0.5


def test_logistic_recovers_the_log_odds():
    x, w, b, y, _ = _linear(n=300, d=8, seed=3)
    y = y / 3  # log-odds mostly in [-4, 4], not saturated
    head = heads.fit_head(x, y, heads.HeadConfig(kind="logistic", alphas=(1e-8, 1e-3, 1e-1), folds=3))
    assert head.kind == "logistic" and head.alpha == 1e-8
    np.testing.assert_allclose(head.predict(x), y, atol=0.02)
    np.testing.assert_allclose(head.weights, w / 3, atol=0.05)
    assert head.heldout_error == pytest.approx(heads.soft_cross_entropy(y, y), abs=1e-3)  # = the labels' entropy


def test_save_load_round_trip(tmp_path):
    x, _, _, y, _ = _linear(noise=0.1, seed=4)
    head = heads.fit_ridge(x, y, embedder="minilm", model="flan-t5-xl")
    path = str(tmp_path / "sub" / "head.npz")
    head.save(path)
    back = heads.AskLLMHead.load(path)
    np.testing.assert_array_equal(back.predict(x), head.predict(x))
    for field in ("bias", "kind", "alpha", "heldout_error", "n_train", "embedder", "model"):
        assert getattr(back, field) == getattr(head, field)
    np.save(str(tmp_path / "other.npy"), np.zeros(3))
    with pytest.raises(heads.HeadError, match="not a gristmill Ask-LLM head"):
        heads.AskLLMHead.load(str(tmp_path / "other.npy"))
    with pytest.raises(heads.HeadError, match=r"\[n, 24\]"):
        head.predict(x[:, :10])


def test_agreement_hand_worked():
    # One swapped pair among 5: sum d^2 = 2, Spearman = 1 - 6*2/(5*24) = 0.9; Kendall (9 - 1)/10.
    a = heads.agreement([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], top=0.4)
    assert (a.spearman, a.kendall, a.top_overlap, a.k, a.n) == (pytest.approx(0.9), pytest.approx(0.8), 1.0, 2, 5)
    assert heads.agreement([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], top=0.2).top_overlap == 0.0  # top 1: index 4 vs 3
    r = heads.agreement([5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], top=0.5)
    assert (r.spearman, r.kendall, r.top_overlap, r.k) == (pytest.approx(-1), pytest.approx(-1), 0.0, 3)
    ten = heads.agreement(np.arange(10.0), [0, 1, 2, 3, 4, 5, 6, 9, 7, 8], top=0.2)
    assert (ten.k, ten.top_overlap) == (2, 0.5)  # head's top {9, 8}, LLM's top {7, 9}
    with pytest.raises(heads.HeadError):
        heads.agreement([1, 2], [1, 2, 3])


def test_held_out_split_ignores_order():
    ids = [f"doc{i}" for i in range(2000)]
    mask = heads.held_out_split(ids, 0.2)
    assert 0.17 < mask.mean() < 0.23
    np.testing.assert_array_equal(heads.held_out_split(ids[::-1], 0.2), mask[::-1])
    assert not np.array_equal(heads.held_out_split(ids, 0.2, seed=1), mask)
