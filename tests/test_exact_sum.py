"""Exact sums: the correctly rounded sum (math.fsum is the independent reference), whatever the order and
the split into partial sums."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest

from gristmill import exact_sum


def _terms(rng, n):
    terms = rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, size=n)
    return np.concatenate([terms, [5e-324, -5e-324, 2.0**-1022, 1e300, -1e300, 0.0, -0.0]])


def test_total_is_the_correctly_rounded_sum():
    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 300, 5000):
        terms = _terms(rng, n)
        exact = exact_sum.total(terms)
        assert exact_sum.to_float(exact) == math.fsum(terms)
        assert exact_sum.to_fraction(exact) == sum(Fraction(t) for t in terms.tolist())
    assert exact_sum.to_float(exact_sum.total([0.1, 0.2, 0.3])) == 0.6 != (0.1 + 0.2) + 0.3


def test_partial_sums_merge_to_the_same_pair_in_any_order():
    rng = np.random.default_rng(1)
    terms = _terms(rng, 2000)
    whole = exact_sum.total(terms)
    shuffled = terms[rng.permutation(len(terms))]
    parts = [exact_sum.total(part) for part in np.array_split(shuffled, 7)]
    random.Random(0).shuffle(parts)
    assert exact_sum.add_all(parts) == whole
    assert exact_sum.scaled(whole) == exact_sum.to_fraction(whole) * 2**-exact_sum.MIN_EXPONENT


def test_grouped_sums_each_group_exactly_and_merges_by_group():
    rng = np.random.default_rng(2)
    terms = _terms(rng, 3000)
    keys = rng.integers(0, 40, len(terms)) * 1000
    grouped = exact_sum.grouped(keys, terms)
    for key in np.unique(keys).tolist():
        assert exact_sum.to_float(grouped.get(key, exact_sum.ZERO)) == math.fsum(terms[keys == key])
    halves = [exact_sum.grouped(keys[part], terms[part]) for part in (slice(0, 1234), slice(1234, None))]
    assert exact_sum.merge(*halves) == grouped


def test_many_large_mantissas_do_not_overflow():
    terms = np.full(1 << 20, np.nextafter(2.0, 0.0))  # the largest 53-bit mantissa, a million times
    assert exact_sum.to_fraction(exact_sum.total(terms)) == Fraction(np.nextafter(2.0, 0.0)) * (1 << 20)


def test_non_finite_terms_are_refused():
    with pytest.raises(exact_sum.ExactSumError, match="finite terms"):
        exact_sum.total([1.0, math.inf])
    with pytest.raises(exact_sum.ExactSumError, match="2 group keys for 3 terms"):
        exact_sum.grouped([0, 1], [1.0, 2.0, 3.0])
